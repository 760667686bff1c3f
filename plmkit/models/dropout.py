"""Inverted dropout with a cheap random mask on CPU.

torch's CPU dropout draws one Bernoulli sample per element from the MT19937 generator: on a
2-core machine that is ~25% of a BERT-mini training step (13 dropout calls a step, 1-2M
elements each). Here each 64-bit draw of the same generator is cut into four 16-bit uniforms,
which is ~10x cheaper. The drop probability is rounded to a multiple of 1/65536 (0.1 becomes
0.100006). The draws come from torch's default generator, so ``torch.manual_seed`` and a
checkpoint's saved RNG state reproduce them exactly. On other devices this is ``F.dropout``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 1 << 16


def keep_mask(shape: torch.Size, p: float) -> Tensor:
    """Bool tensor of ``shape``, each element True with probability 1 - p (to 1/65536)."""
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64)
    words.random_(-(1 << 63), (1 << 63) - 1)                   # all 64 bits uniform
    u = words.view(torch.int16)[:n].view(shape)                 # uniform on [-32768, 32767]
    return u >= round(p * _LEVELS) - (_LEVELS >> 1)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0 or torch.onnx.is_in_onnx_export():
        return F.dropout(x, p, training=True)
    # One multiply by a {0, 1/(1-p)} tensor: cheaper forward and backward than torch.where.
    return x * (keep_mask(x.shape, p).to(x.dtype) * (1.0 / (1.0 - p)))


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` using :func:`dropout`."""

    def __init__(self, p: float = 0.1):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
