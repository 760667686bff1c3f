"""Houlsby bottleneck adapters (Houlsby et al. 2019).

Each adapter sits on a sub-layer's output projection (``attn.o`` and ``ffn.fc2``), before
the residual add:

    y = base(x)                     [..., H]
    y = y + up(act(down(y)))        down: H -> m, up: m -> H, m = bottleneck size

``up`` starts at zero (weights and bias), so a freshly wrapped model computes exactly what
the parent did. The adapter is non-linear in ``y``, so unlike LoRA it cannot be folded into
the base weights: an exported adapter model keeps its ``AdapterLinear`` modules, and loading
one means re-applying the strategy (``restore_strategy``) before loading the state dict.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from ..errors import PlmkitError
from .lora import replace_module, target_linears

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU,
}

# Houlsby's placement: after the attention output projection and after the FFN output.
ADAPTER_TARGETS = ["o", "fc2"]


class Bottleneck(nn.Module):
    """down -> act -> up; [..., H] -> [..., H]; starts as the zero function."""

    def __init__(self, hidden: int, size: int, activation: str, like: Tensor):
        super().__init__()
        self.down = nn.Linear(hidden, size, device=like.device, dtype=like.dtype)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, hidden, device=like.device, dtype=like.dtype)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: Tensor) -> Tensor:
        return self.up(self.act(self.down(y)))


class AdapterLinear(nn.Module):
    """Wraps ``base_layer`` (frozen by the strategy): y = base(x); y + adapter(y)."""

    def __init__(self, base_layer: nn.Linear, size: int, activation: str):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = Bottleneck(base_layer.out_features, size, activation, base_layer.weight)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        return y + self.adapter(y)


def inject_adapters(model: nn.Module, size: int, activation: str) -> list[str]:
    """Wrap every ``attn.o`` and ``ffn.fc2`` in an AdapterLinear, in place; returns their names."""
    if size < 1:
        raise PlmkitError(f"adapter size must be >= 1, got {size}")
    if activation not in ACTIVATIONS:
        raise PlmkitError(f"unknown adapter activation '{activation}' (choose {', '.join(ACTIVATIONS)})")
    found = target_linears(model, ADAPTER_TARGETS)
    for name, linear in found:
        replace_module(model, name, AdapterLinear(linear, size, activation))
    return [name for name, _ in found]
