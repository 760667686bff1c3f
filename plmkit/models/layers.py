"""The small modules a backbone is assembled from, each owning one architecture choice.

Shapes: B batch, T new tokens, S keys (cached + new), H hidden, E embedding width, h query
heads, g key/value heads (h = g x group), d head width, F FFN width. models/config.py names what
builds each config choice (``NORMS``, ``FFN_KINDS``, ``POSITIONS``, ``ACTIVATIONS``, ``ROPE_KINDS``)
and ``implementation`` looks it up here, so a choice's name exists once and no family name appears.

Attention runs through ``F.scaled_dot_product_attention``. The explicit softmax path is taken
when a caller asks for attention probabilities (distillation, analysis), under ONNX export
(the explicit pattern is what ONNX Runtime fuses into one Attention kernel; the exporter's own
SDPA decomposition is not recognised), and for attention dropout on CPU (SDPA would draw its
mask with the slow per-element Bernoulli; ours is cheaper, models/dropout.py).
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ACTIVATIONS, FFN_KINDS, NORMS, POSITIONS, ROPE_KINDS, ModelConfig
from .dropout import Dropout
from .dropout import dropout as drop


def implementation(table: dict[str, str | None], choice: str) -> Any:
    """What builds ``choice`` of a config field: the class or function of this module that
    models/config.py names for it (None where it names none)."""
    name = table[choice]
    return None if name is None else globals()[name]


# ----------------------------------------------------------------------------- activations

gelu = F.gelu                      # exact erf GELU, as BERT
relu = F.relu
silu = F.silu                      # SwiGLU's gate (Llama)
tanh = torch.tanh


def gelu_tanh(x: Tensor) -> Tensor:
    """GPT-2's tanh approximation of GELU ("gelu_new")."""
    return F.gelu(x, approximate="tanh")


def activation(name: str) -> Any:
    return implementation(ACTIVATIONS, name)


def linear(n_in: int, n_out: int, bias: bool = True) -> nn.Linear:
    """nn.Linear that accepts a zero size (a fully pruned sub-layer) without torch's init warning."""
    if n_in and n_out:
        return nn.Linear(n_in, n_out, bias=bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return nn.Linear(n_in, n_out, bias=bias)


# ----------------------------------------------------------------------------- norms

class RMSNorm(nn.Module):
    """x / rms(x) * w, computed in fp32 and cast back before the weight (as Llama does)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def layer_norm(dim: int, cfg: ModelConfig) -> nn.Module:
    return nn.LayerNorm(dim, eps=cfg.layer_norm_eps, bias=cfg.norm_bias)


def rms_norm(dim: int, cfg: ModelConfig) -> nn.Module:
    return RMSNorm(dim, eps=cfg.layer_norm_eps)


def make_norm(dim: int, cfg: ModelConfig) -> nn.Module:
    return implementation(NORMS, cfg.norm)(dim, cfg)


# ----------------------------------------------------------------------------- positions
# How a learned position table is indexed ([B|1, T] ids); rotary and none have no table.

def learned_position_ids(input_ids: Tensor, pos: Tensor, cfg: ModelConfig) -> Tensor:
    return pos


def offset_position_ids(input_ids: Tensor, pos: Tensor, cfg: ModelConfig) -> Tensor:
    """RoBERTa's positions: real tokens count from ``position_offset`` (= pad + 1), padding sits at
    the pad row. The numbering comes from the token ids, not the attention mask, as fairseq and HF do."""
    pad = cfg.pad_token_id or 0
    real = input_ids.ne(pad).long()                                           # [B, T]
    return (torch.cumsum(real, 1) + cfg.position_offset - 1) * real + pad * (1 - real)


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None) -> Tensor:
    """Inverse frequencies [d/2] of rotary positions, with HF's ``rope_scaling`` variants."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    return implementation(ROPE_KINDS, (scaling or {}).get("rope_type", "default"))(inv, scaling)


def rope_default(inv: Tensor, scaling: dict | None) -> Tensor:
    return inv


def rope_linear(inv: Tensor, scaling: dict) -> Tensor:
    return inv / float(scaling["factor"])


def rope_llama3(inv: Tensor, scaling: dict) -> Tensor:
    """Llama 3.1: stretch low frequencies by factor, keep high, blend between."""
    factor, low, high = (float(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
    old = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return torch.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def rope_tables(pos: Tensor, head_dim: int, theta: float, scaling: dict | None) -> tuple[Tensor, Tensor]:
    """cos, sin [B|1, 1, T, d] for positions ``pos`` [B|1, T], in fp32 (rotate-half layout)."""
    freqs = pos[..., None].float() * rope_frequencies(head_dim, theta, scaling).to(pos.device)   # [B, T, d/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate [B, h, T, d] by its positions: HF's rotate-half layout, computed in fp32."""
    xf = x.float()
    half = xf.size(-1) // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


# ----------------------------------------------------------------------------- embeddings

class Embeddings(nn.Module):
    """word (+ positions + segments + task types), norm, dropout; an E -> H projection when E < H."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E = cfg.embedding_width
        self.word = nn.Embedding(cfg.vocab_size, E, padding_idx=cfg.pad_token_id)
        self.position_ids = implementation(POSITIONS, cfg.positions)
        pad = cfg.pad_token_id if cfg.positions == "learned_offset" else None
        self.position = (nn.Embedding(cfg.max_position + cfg.position_offset, E, padding_idx=pad)
                         if self.position_ids is not None else None)
        self.cfg = cfg
        self.segment = nn.Embedding(cfg.type_vocab_size, E) if cfg.type_vocab_size else None
        self.task = nn.Embedding(cfg.task_type_vocab_size, E) if cfg.task_type_vocab_size else None
        self.norm = make_norm(E, cfg) if cfg.embedding_norm else None
        self.drop = Dropout(cfg.hidden_dropout)
        self.proj = nn.Linear(E, cfg.hidden_size) if E != cfg.hidden_size else None

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None, pos: Tensor) -> Tensor:
        x = self.word(input_ids)                                            # [B, T, E]
        if self.position is not None:
            x = x + self.position(self.position_ids(input_ids, pos, self.cfg))
        if self.segment is not None:   # no segment ids: every token is segment 0, as HF assumes
            x = x + (self.segment.weight[0] if token_type_ids is None else self.segment(token_type_ids))
        if self.task is not None:      # ERNIE: task type 0 unless told otherwise
            x = x + self.task.weight[0]
        if self.norm is not None:
            x = self.norm(x)
        x = self.drop(x)
        return self.proj(x) if self.proj is not None else x               # [B, T, H]


# ----------------------------------------------------------------------------- attention

def padding_mask(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """[B, T] of 1 (keep) / 0 (pad) -> additive mask [B, 1, 1, T], or None when nothing is padded.

    Returning None lets SDPA pick its fastest kernel on unpadded batches.
    """
    if attention_mask is None:
        return None
    if not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export() and bool(attention_mask.all()):
        return None     # eager only: the check is a data-dependent branch a compiled or traced graph avoids
    # (1 - m) * min, written as BERT writes it: ONNX Runtime's attention fusion looks for this form.
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def causal_mask(T: int, S: int, keep: Tensor | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive mask [B|1, 1, T, S]: query t (absolute S-T+t) sees keys <= itself that are not padding."""
    allowed = torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)[None, None]
    if keep is not None:
        allowed = allowed & keep[:, None, None, :].bool()                    # keep: [B, S]
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)


def band_mask(T: int, half: int, keep: Tensor | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive mask [B|1, 1, T, T] of a local layer: |i - j| <= half, and j not padding."""
    idx = torch.arange(T, device=device)
    allowed = ((idx[:, None] - idx[None, :]).abs() <= half)[None, None]
    if keep is not None:
        allowed = allowed & keep[:, None, None, :].bool()
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float,
           is_causal: bool = False, want_probs: bool = False) -> tuple[Tensor, Tensor | None]:
    """q [B, h, T, d], k/v [B, g, S, d] -> context [B, h, T, d] (and probabilities [B, h, T, S])."""
    cpu_dropout = dropout > 0 and q.device.type == "cpu"
    if not want_probs and not cpu_dropout and not torch.onnx.is_in_onnx_export():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                              enable_gqa=k.size(1) != q.size(1)), None
    if k.size(1) != q.size(1):            # grouped-query: each key/value head serves h / g query heads
        k, v = (t.repeat_interleave(q.size(1) // k.size(1), dim=1) for t in (k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))                 # [B, h, T, S]
    if is_causal:
        scores = scores + causal_mask(q.size(2), k.size(2), None, scores.dtype, q.device)
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1)
    return drop(probs, dropout, training=dropout > 0) @ v, probs


def banded_attend(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, half: int, dropout: float) -> Tensor:
    """Local attention |i - j| <= half in O(T x half) memory: queries in chunks of C = half, each
    against the C + 2 half keys around it. Equal to ``attend`` with ``band_mask``.

    q, k, v [B, h, T, d]; keep [B, T] bool (False: padding) or None.
    """
    B, h, T, d = q.shape
    C = max(half, 1)
    n = -(-T // C)                                       # chunks
    Tp, W = n * C, C + 2 * half                          # padded length, keys per chunk
    qc = F.pad(q, (0, 0, 0, Tp - T)).view(B, h, n, C, d)
    kw = F.pad(k, (0, 0, half, half + Tp - T)).unfold(2, W, C)              # [B, h, n, d, W]
    vw = F.pad(v, (0, 0, half, half + Tp - T)).unfold(2, W, C)
    valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if keep is None else keep.bool()
    kv_ok = F.pad(valid, (half, half + Tp - T)).unfold(1, W, C)              # [B, n, W]: real, unpadded keys
    a = torch.arange(C, device=q.device)[:, None]
    b = torch.arange(W, device=q.device)[None, :]
    band = (b >= a) & (b <= a + 2 * half)                                     # [C, W]: |i - j| <= half
    allowed = band[None, None] & kv_ok[:, :, None, :]                         # [B, n, C, W]
    scores = (qc @ kw) / math.sqrt(d)                                          # [B, h, n, C, W]
    scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
    probs = drop(scores.softmax(-1), dropout, training=dropout > 0)
    ctx = probs @ vw.transpose(-1, -2)                                         # [B, h, n, C, d]
    return ctx.reshape(B, h, Tp, d)[:, :, :T]


class Attention(nn.Module):
    """Self-attention with h query heads sharing g key/value heads of width d (h, g may be 0).

    q: H -> h*d, k and v: H -> g*d, o: h*d -> H. Optional per-head q/k RMSNorm (Qwen3) and rotary
    positions (rotate-half) act on q and k before the keys are cached.
    """

    def __init__(self, cfg: ModelConfig, n_heads: int, n_kv: int, layer: int):
        super().__init__()
        H, d = cfg.hidden_size, cfg.head_dim
        self.n_heads, self.n_kv, self.head_dim = n_heads, n_kv, d
        self.dropout, self.causal = cfg.attention_dropout, cfg.causal
        self.window, self.theta = cfg.window(layer), cfg.theta(layer)
        self.q = linear(H, n_heads * d, cfg.attn_bias)
        self.k = linear(H, n_kv * d, cfg.attn_bias)
        self.v = linear(H, n_kv * d, cfg.attn_bias)
        self.o = linear(n_heads * d, H, cfg.attn_out_bias)
        self.q_norm = RMSNorm(d, cfg.layer_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, cfg.layer_norm_eps) if cfg.qk_norm else None

    def forward(self, x: Tensor, ctx: "Context", past: tuple[Tensor, Tensor] | None
                ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None]:
        B, T, _ = x.shape
        if self.n_heads == 0:  # every head pruned away: the sub-layer contributes only its bias
            empty = x.new_zeros(B, 0, ctx.S, 0)           # a cache of the right length, holding nothing
            return self.o(x.new_zeros(B, T, 0)), (empty, empty), x.new_zeros(B, 0, T, ctx.S) if ctx.want_probs else None
        split = lambda t, n: t.view(B, T, n, self.head_dim).transpose(1, 2)  # noqa: E731  [B, n, T, d]
        q, k, v = split(self.q(x), self.n_heads), split(self.k(x), self.n_kv), split(self.v(x), self.n_kv)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.theta is not None:
            cos, sin = ctx.rope(self.theta)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)   # [B, g, P+T, d]
        p = self.dropout if self.training else 0.0
        if self.window is not None and ctx.banded(T, self.window):
            out, probs = banded_attend(q, k, v, ctx.keep, self.window, p), None
        else:
            mask, is_causal = ctx.mask(self.window, T, k.size(2))
            out, probs = attend(q, k, v, mask, p, is_causal=is_causal, want_probs=ctx.want_probs)
        return self.o(out.transpose(1, 2).reshape(B, T, -1)), (k, v), probs


class Context:
    """What every layer's attention needs from one forward pass, built once and shared: the
    padding, the masks per attention pattern and the rotary tables per base (memoised)."""

    def __init__(self, cfg: ModelConfig, keep: Tensor | None, pos: Tensor, T: int, S: int,
                 dtype: torch.dtype, want_probs: bool):
        self.cfg, self.keep, self.pos, self.T, self.S = cfg, keep, pos, T, S
        self.dtype, self.device, self.want_probs = dtype, pos.device, want_probs
        self._masks: dict[int | None, tuple[Tensor | None, bool]] = {}
        self._rope: dict[float, tuple[Tensor, Tensor]] = {}

    def rope(self, theta: float) -> tuple[Tensor, Tensor]:
        if theta not in self._rope:
            self._rope[theta] = rope_tables(self.pos, self.cfg.head_dim, theta, self.cfg.rope_scaling)
        return self._rope[theta]

    def banded(self, T: int, half: int) -> bool:
        """Long inputs take the chunked local path: the dense mask would cost T x T memory.
        Not under export (unfold with dynamic lengths) nor when probabilities are wanted."""
        return T > 4 * half and not self.want_probs and not torch.onnx.is_in_onnx_export()

    def mask(self, window: int | None, T: int, S: int) -> tuple[Tensor | None, bool]:
        """(additive mask or None, SDPA's is_causal) for a layer with this local window."""
        if window not in self._masks:
            self._masks[window] = self._build(window, T, S)
        return self._masks[window]

    def _build(self, window: int | None, T: int, S: int) -> tuple[Tensor | None, bool]:
        if window is not None:
            return band_mask(T, window, self.keep, self.dtype, self.device), False
        if not self.cfg.causal:
            return padding_mask(self.keep, self.dtype), False
        if self.keep is None and (T == 1 or T == S):
            return None, T > 1     # no padding: one new token sees everything; a fresh block is plain causal
        return causal_mask(T, S, self.keep, self.dtype, self.device), False


# ----------------------------------------------------------------------------- feed-forward

class PlainFFN(nn.Module):
    """fc2(act(fc1(x))): BERT, GPT-2. Neuron j owns row j of fc1 and column j of fc2."""

    def __init__(self, cfg: ModelConfig, width: int):
        super().__init__()
        self.fc1 = linear(cfg.hidden_size, width, cfg.ffn_bias)
        self.fc2 = linear(width, cfg.hidden_size, cfg.ffn_bias)
        self.act = activation(cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GatedFFN(nn.Module):
    """fc2(act(a) * g) with [a; g] = fc1(x), one fused input projection of 2F rows (GeGLU with
    gelu, SwiGLU with silu). Neuron j owns rows j and F + j of fc1 and column j of fc2."""

    def __init__(self, cfg: ModelConfig, width: int):
        super().__init__()
        self.fc1 = linear(cfg.hidden_size, 2 * width, cfg.ffn_bias)
        self.fc2 = linear(width, cfg.hidden_size, cfg.ffn_bias)
        self.act = activation(cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            a, g = self._halves(x)
        else:
            a, g = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(self.act(a) * g)

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Under ONNX export, two projections (the exporter folds each weight half into a constant):
        ONNX Runtime then runs two GEMMs straight into the gate, where one [B, T, 2F] result split in
        two costs two Slice copies (8% of ModernBERT-base's INT8 time), and the INT8 rewrite quantizes
        their common input once."""
        w, b, half = self.fc1.weight, self.fc1.bias, self.fc2.in_features
        return (F.linear(x, w[:half], None if b is None else b[:half]),
                F.linear(x, w[half:], None if b is None else b[half:]))


# ----------------------------------------------------------------------------- the block

class Block(nn.Module):
    """Post-LN (BERT): x = N(x + Attn(x)); x = N(x + FFN(x)).
    Pre-LN (GPT-2, ModernBERT, Llama): x = x + Attn(N(x)); x = x + FFN(N(x)).

    Pre-LN never normalises the residual path, so gradients reach early layers undamped: the usual
    choice for high learning rates. ModernBERT leaves layer 0's attention input unnormalised (its
    embeddings end in a norm already): ``first_attn_norm`` False gives that layer an Identity.
    """

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        H = cfg.hidden_size
        skip_norm = cfg.pre_ln and layer == 0 and not cfg.first_attn_norm
        self.attn_norm = nn.Identity() if skip_norm else make_norm(H, cfg)
        self.attn = Attention(cfg, cfg.heads[layer], cfg.kv_heads[layer], layer)
        self.ffn_norm = make_norm(H, cfg)
        self.ffn = implementation(FFN_KINDS, cfg.ffn_kind)(cfg, cfg.ffn[layer])
        self.drop = Dropout(cfg.hidden_dropout)
        self.pre_ln = cfg.pre_ln

    def forward(self, x: Tensor, ctx: Context, past: tuple[Tensor, Tensor] | None
                ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None]:
        if self.pre_ln:
            a, kv, probs = self.attn(self.attn_norm(x), ctx, past)
            x = x + self.drop(a)
            return x + self.drop(self.ffn(self.ffn_norm(x))), kv, probs
        a, kv, probs = self.attn(x, ctx, past)
        x = self.attn_norm(x + self.drop(a))
        return self.ffn_norm(x + self.drop(self.ffn(x))), kv, probs


class Transform(nn.Module):
    """dense -> activation (-> norm): BERT's pooler (tanh), the MLM transform, the classification
    heads' own dense (RoBERTa, ELECTRA, DistilBERT, ModernBERT)."""

    def __init__(self, cfg: ModelConfig, n_in: int, n_out: int, activation: str, norm: bool, bias: bool = True):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out, bias=bias)
        self.act = implementation(ACTIVATIONS, activation)
        self.norm = make_norm(n_out, cfg) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.dense(x))
        return self.norm(x) if self.norm is not None else x


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT/GPT-2 initialisation: N(0, 0.02) weights, zero biases, unit norms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, (nn.LayerNorm, RMSNorm)):
        nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
