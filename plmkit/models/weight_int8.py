"""Weights for decoding: fp32, bf16, or weight-only INT8 (``plmkit generate --weights``, ``plmkit serve``).

Greedy decoding at batch 1 reads every weight once per token, so its speed is memory bandwidth
over bytes of weights: bf16 halves those bytes, INT8 quarters them. ``use_weights`` converts a
loaded model in place, the same way for every family (it walks the modules; the backbone is shared):

  bf16: the whole model cast to bf16 (activations and the KV cache follow: they are the layers'
        outputs).
  int8: every Linear (attention, FFN, the LM head, also when tied to the word embeddings) replaced
        by ``Int8Linear`` (quantised from the saved fp32 weights): int8 weights [N, K] with one bf16
        scale per output channel (symmetric, max |w| / 127), run by
        ``torch.ops.aten._weight_int8pack_mm``; everything else cast to bf16. The embedding table
        stays bf16: a step reads only its B rows of it.

Why bf16 activations for INT8 (measured on this repo's 2-core AVX512-BF16 CPU, torch 2.13, one
thread, SmolLM2-135M's matrix shapes): the kernel with fp32 activations and scales is 2.4-12x
*slower* than an fp32 matmul (a reference loop); with bf16 activations and scales it is the fastest
at one token per step (the 49152 x 576 LM head: 3.6 ms, against bf16 6.4 ms and fp32 9.6 ms; at 8
tokens a step bf16's matmul was faster, 8.1 against 11.1 ms). It needs the activations and the scales
in the same dtype.
Why the ``K % 16`` check: with an input width K not a multiple of 16 the kernel returns wrong numbers,
or crashes, on this build (measured for K = 1..96); such a Linear stays in bf16. Real decoders
(GPT-2, Llama, Qwen2/3, SmolLM2) have every width a multiple of 16.
Per-group scales are not offered: torch has no CPU kernel for per-group INT8 (only for INT4), and
dequantising per call costs more than the bytes it saves.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import PlmkitError

# --weights choice -> (dtype of everything that is not an int8 weight, whether Linears become int8)
WEIGHTS: dict[str, tuple[torch.dtype, bool]] = {"fp32": (torch.float32, False), "bf16": (torch.bfloat16, False),
                                                "int8": (torch.bfloat16, True)}
DEFAULT = "fp32"
HELP = ("weights while decoding: fp32 (as saved); bf16 (half the bytes read per token); int8 (weight-only, "
        "one scale per output channel, bf16 activations: a quarter of the bytes)")
KERNEL_K = 16           # the int8 kernel is wrong for input widths that are not a multiple of this
QMAX = 127              # symmetric: -127..127, so -w and w quantise alike
ROWS = 4096             # rows quantised at a time (bounds the float temporaries)


def quantize_rows(w: Tensor, dtype: torch.dtype = torch.bfloat16) -> tuple[Tensor, Tensor]:
    """w [N, K] float -> (q int8 [N, K], scales [N] in ``dtype``) with |q * s - w| <= s / 2.

    The scale is rounded *up* to ``dtype`` before quantising, so max |w| / s <= 127 and no value is
    clipped (rounding it to nearest could put the row's largest weight at 127.5 -> clip). ``ROWS`` rows
    at a time: the float temporaries of a whole 49,152-row LM head would be several times its size,
    at the moment the loaded fp32 model is still in memory (the peak of ``--weights int8``)."""
    w = w.detach()
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    scales = torch.empty(w.size(0), dtype=dtype, device=w.device)
    for i in range(0, w.size(0), ROWS):
        block = w[i:i + ROWS].float()
        peak = block.abs().amax(dim=1)
        exact = torch.where(peak > 0, peak / QMAX, torch.ones_like(peak))      # an all-zero row: any scale
        s = exact.to(dtype)
        s = torch.where(s.float() < exact, torch.nextafter(s, torch.full_like(s, float("inf"))), s)
        q[i:i + ROWS] = torch.round(block / s.float()[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
        scales[i:i + ROWS] = s
    return q, scales


class Int8Linear(nn.Module):
    """y = x (q * s)^T + b: an nn.Linear's weight as int8 with one scale per output row.

    Runs in the scales' dtype (bf16: the fast kernel path) and returns the input's dtype."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scales = quantize_rows(linear.weight, dtype)
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).to(self.scales.dtype).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)          # [M, N]
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantizable(linear: nn.Linear) -> bool:
    """Whether the int8 kernel computes this Linear correctly (a pruned, zero-width one has nothing to read)."""
    return linear.out_features > 0 and linear.in_features > 0 and linear.in_features % KERNEL_K == 0


def to_int8(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace every quantizable nn.Linear of ``model`` by an ``Int8Linear``, in place; returns how many."""
    swaps = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear and quantizable(child)]
    for parent, name in swaps:      # names, not modules: each fp32 weight is freed once swapped (unless tied)
        setattr(parent, name, Int8Linear(getattr(parent, name), dtype))
    return len(swaps)


def use_weights(model: nn.Module, weights: str) -> nn.Module:
    """Convert a loaded (fp32) model, in place, for decoding with ``weights``; returns it in eval mode."""
    if weights not in WEIGHTS:
        raise PlmkitError(f"unknown weights '{weights}' (choose {', '.join(WEIGHTS)})")
    dtype, int8 = WEIGHTS[weights]
    if int8:               # before the cast: the scales come from the saved fp32 weights, not bf16-rounded ones
        to_int8(model, dtype)
    return model.to(dtype).eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights a decoding step reads: every parameter and buffer once (tied ones once),
    less the embedding tables, of which a step reads only its tokens' rows."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]
               if id(t) not in tables or id(t) in linear_weights}       # a tied LM head reads the whole table
    return sum(t.numel() * t.element_size() for t in tensors.values())
