"""LoRA (Hu et al. 2021): a frozen Linear plus a trainable low-rank update.

    y = W x + b + (alpha / r) * B A dropout(x)       A: [r, in], B: [out, r]

B starts at zero, so a freshly wrapped model computes exactly what the parent did. Only
A and B train; ``merge_lora`` folds ``W += (alpha / r) * B @ A`` back in and unwraps the
module, leaving a plain model with the parent's parameter names.

The helpers that find and replace target Linears live here too; the Houlsby adapters use
them with the same target names.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import PlmkitError
from ..models.dropout import Dropout

# Short target names -> module path inside a transformer layer (the naming contract).
TARGETS: dict[str, str] = {
    "q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o",
    "fc1": "ffn.fc1", "fc2": "ffn.fc2",
}


class LoraLinear(nn.Module):
    """Wraps ``base_layer`` (frozen by the strategy) with a rank-``r`` update."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        self.base_layer = base_layer
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        w = base_layer.weight
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=w.device, dtype=w.dtype)
        self.lora_dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        # Same init as the LoRA reference code / PEFT: A ~ kaiming-uniform, B = 0 (so B A = 0).
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: Tensor) -> Tensor:       # x: [..., in] -> [..., out]
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> Tensor:
        """The update as a dense [out, in] matrix: scaling * B @ A."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}"


def check_targets(targets: list[str]) -> None:
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise PlmkitError(f"unknown adapter target(s) {unknown or targets!r}: choose from {', '.join(TARGETS)}")


def target_linears(model: nn.Module, targets: list[str]) -> list[tuple[str, nn.Linear]]:
    """(name, module) for every plain nn.Linear at ``backbone.layers.<i>.<TARGETS[t]>``."""
    check_targets(targets)
    suffixes = tuple("." + TARGETS[t] for t in targets)
    found = [(name, mod) for name, mod in model.named_modules()
             if name.startswith("backbone.layers.") and name.endswith(suffixes)
             and type(mod) is nn.Linear]
    if not found:
        raise PlmkitError(f"no target modules {targets} found under backbone.layers (already wrapped?)")
    return found


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Set the submodule at dotted path ``name`` (e.g. backbone.layers.0.attn.q) to ``new``."""
    parent_name, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, leaf, new)


def inject_lora(model: nn.Module, targets: list[str], r: int, alpha: float, dropout: float) -> list[str]:
    """Wrap each target Linear in a LoraLinear, in place; returns the wrapped module names."""
    if r < 1:
        raise PlmkitError(f"LoRA rank must be >= 1, got {r}")
    if not 0.0 <= dropout < 1.0:
        raise PlmkitError(f"LoRA dropout must be in [0, 1), got {dropout}")
    found = target_linears(model, targets)
    for name, linear in found:
        replace_module(model, name, LoraLinear(linear, r, alpha, dropout))
    return [name for name, _ in found]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoraLinear into its base Linear (W += scaling * B @ A) and unwrap it, in place.

    The result has the parent's module and parameter names, so it saves and loads as a plain
    model. Returns ``model`` for chaining.
    """
    wrapped = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, LoraLinear)]
    for name, mod in wrapped:
        base = mod.base_layer
        base.weight += mod.delta_weight().to(base.weight.dtype)
        replace_module(model, name, base)
    return model
