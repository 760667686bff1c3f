"""LoRA (Hu et al. 2021): a frozen Linear plus a trainable low-rank update.

    y = W x + b + (alpha / r) * B A dropout(x)       A: [r, in], B: [out, r]

B starts at zero, so a freshly wrapped model computes exactly what the parent did. Only
A and B train; ``merge_lora`` folds ``W += (alpha / r) * B @ A`` back in and unwraps the
module, leaving a plain model with the parent's parameter names.

The helpers that find and replace target Linears live here too; the Houlsby adapters use
them with the same target names.

Gated FFNs (Llama's SwiGLU) keep gate_proj and up_proj fused in one ``ffn.fc1`` = [gate; up].
The targets ``gate`` and ``up`` put a rank-r update on one half each, as PEFT's LoRA on
gate_proj / up_proj does: A = [A_gate; A_up] (2r x in) and B = blockdiag(B_gate, B_up) (2F x 2r),
whose off-diagonal blocks are not parameters (always zero). The output, the merged weights and
the gradients equal PEFT's two separate adapters; the one difference is LoRA dropout, drawn once
for the fused input instead of once per projection (none at all with lora_dropout 0, and none in
evaluation). ``down`` is ``fc2``; ``fc1`` alone is one rank-r update over the whole fused matrix.
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
    "fc1": "ffn.fc1", "fc2": "ffn.fc2", "gate": "ffn.fc1", "up": "ffn.fc1", "down": "ffn.fc2",
}
# Targets that are one block of a fused projection: name -> (block index, blocks). fc1 = [gate; up].
BLOCKS: dict[str, tuple[int, int]] = {"gate": (0, 2), "up": (1, 2)}


class BlockLoraB(nn.Module):
    """LoRA's B for updates on row blocks of a fused projection: ``weight`` [n, F, r] holds one B per
    updated block; the dense [blocks x F, n x r] matrix is block-diagonal, zero elsewhere."""

    def __init__(self, rows: int, r: int, blocks: int, active: tuple[int, ...], device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(len(active), rows // blocks, r, device=device, dtype=dtype))
        self.blocks, self.active = blocks, active

    def dense(self) -> Tensor:
        n, F_, r = self.weight.shape
        rows = []
        for k in range(self.blocks):
            if k in self.active:
                j = self.active.index(k)
                rows.append(torch.nn.functional.pad(self.weight[j], (j * r, (n - 1 - j) * r)))
            else:
                rows.append(self.weight.new_zeros(F_, n * r))
        return torch.cat(rows)                                   # [blocks x F, n x r]

    def forward(self, a: Tensor) -> Tensor:                      # a: [..., n r] -> [..., blocks F]
        return torch.nn.functional.linear(a, self.dense())


class LoraLinear(nn.Module):
    """Wraps ``base_layer`` (frozen by the strategy) with a rank-``r`` update."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float,
                 blocks: tuple[int, tuple[int, ...]] | None = None):
        """``blocks`` = (number of equal row blocks, the blocks updated): one rank-r update per
        updated block (a gated FFN's fc1 [gate; up]); None: one update over the whole matrix."""
        super().__init__()
        self.base_layer = base_layer
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        w = base_layer.weight
        n = len(blocks[1]) if blocks else 1
        self.lora_A = nn.Linear(base_layer.in_features, n * r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = (BlockLoraB(base_layer.out_features, r, blocks[0], blocks[1], w.device, w.dtype) if blocks
                       else nn.Linear(r, base_layer.out_features, bias=False, device=w.device, dtype=w.dtype))
        self.lora_dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        # Same init as the LoRA reference code / PEFT: A ~ kaiming-uniform (fan-in = in, per block alike),
        # B = 0 (so B A = 0).
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: Tensor) -> Tensor:       # x: [..., in] -> [..., out]
        # The scaling multiplies the rank-r activation, not the out-wide update (B is linear): the same
        # product, on r instead of `out` numbers per token, forward and backward.
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x)) * self.scaling)

    def delta_weight(self) -> Tensor:
        """The update as a dense [out, in] matrix: scaling * B @ A."""
        b = self.lora_B.dense() if isinstance(self.lora_B, BlockLoraB) else self.lora_B.weight
        return (b @ self.lora_A.weight) * self.scaling

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


def _block_plan(model: nn.Module, targets: list[str]) -> tuple[int, tuple[int, ...]] | None:
    """(blocks, updated blocks) of fc1 for the gate/up targets; None when neither is asked for."""
    asked = [t for t in targets if t in BLOCKS]
    if not asked:
        return None
    if "fc1" in targets:
        raise PlmkitError("LoRA targets: 'fc1' is the whole fused [gate; up] projection; name either fc1 or "
                          "gate/up, not both")
    cfg = getattr(model.get_submodule("backbone"), "config", None)
    if getattr(cfg, "ffn_kind", "gated") != "gated":
        raise PlmkitError(f"LoRA targets {asked}: gate and up are the halves of a gated FFN (Llama's SwiGLU); "
                          "this model's FFN is plain: target fc1 and fc2 instead")
    return BLOCKS[asked[0]][1], tuple(sorted(BLOCKS[t][0] for t in asked))


def inject_lora(model: nn.Module, targets: list[str], r: int, alpha: float, dropout: float) -> list[str]:
    """Wrap each target Linear in a LoraLinear, in place; returns the wrapped module names."""
    if r < 1:
        raise PlmkitError(f"LoRA rank must be >= 1, got {r}")
    if not 0.0 <= dropout < 1.0:
        raise PlmkitError(f"LoRA dropout must be in [0, 1), got {dropout}")
    blocks = _block_plan(model, targets)
    found = target_linears(model, list(dict.fromkeys(targets)))
    for name, linear in found:
        fused = blocks if blocks is not None and name.endswith("." + TARGETS["gate"]) else None
        replace_module(model, name, LoraLinear(linear, r, alpha, dropout, fused))
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
