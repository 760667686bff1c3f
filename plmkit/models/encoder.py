"""A BERT-family encoder (post-LN as BERT, or pre-LN), readable in one sitting.

Shapes: B batch, T tokens, H hidden, E embedding width (E == H unless ALBERT-factorised),
h heads in a layer, d head width, F FFN width in a layer. Per-layer h and F come from the
config, so a pruned model is physically smaller. Attention runs through
``F.scaled_dot_product_attention``; the explicit softmax path is used when a caller asks for
attention probabilities (distillation, analysis), under ONNX export, and for attention dropout
on CPU (with plmkit's cheaper dropout mask, models/dropout.py).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import EncoderConfig
from .dropout import Dropout
from .dropout import dropout as drop

ACTIVATIONS = {
    "gelu": F.gelu,                                             # exact erf GELU, as BERT
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),        # GPT-2's tanh approximation
    "relu": F.relu,
    "silu": F.silu,
}


@dataclass
class EncoderOutput:
    last_hidden_state: Tensor                 # [B, T, H]
    pooled: Tensor | None = None              # [B, H], tanh(dense(h[:, 0]))
    hidden_states: tuple[Tensor, ...] | None = None   # embeddings + every layer: L+1 x [B, T, H]
    attentions: tuple[Tensor, ...] | None = None      # L x [B, h_l, T, T]


def padding_mask(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """[B, T] of 1 (keep) / 0 (pad) -> additive mask [B, 1, 1, T], or None when nothing is padded.

    Returning None lets SDPA pick its fastest kernel on unpadded batches.
    """
    if attention_mask is None:
        return None
    if not torch.compiler.is_compiling() and bool(attention_mask.all()):
        return None     # eager only: the check is a data-dependent branch a compiled graph avoids
    # (1 - m) * min, written as BERT writes it: ONNX Runtime's attention fusion looks for this form.
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float,
           is_causal: bool = False, want_probs: bool = False) -> tuple[Tensor, Tensor | None]:
    """q, k, v: [B, h, T, d] -> context [B, h, T, d] (and probabilities [B, h, T, T] on request)."""
    # The ONNX exporter gets the explicit form: it is the pattern ONNX Runtime fuses into one
    # Attention kernel (the exporter's own SDPA decomposition is not recognised). With dropout on
    # CPU, SDPA would take its own explicit path anyway, with the slow per-element Bernoulli.
    cpu_dropout = dropout > 0 and q.device.type == "cpu"
    if not want_probs and not cpu_dropout and not torch.onnx.is_in_onnx_export():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                              is_causal=is_causal), None
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    if is_causal:
        T, S = scores.shape[-2:]
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1)
    return drop(probs, dropout, training=dropout > 0) @ v, probs


def linear(n_in: int, n_out: int) -> nn.Linear:
    """nn.Linear that accepts a zero size (a fully pruned sub-layer) without torch's init warning."""
    if n_in and n_out:
        return nn.Linear(n_in, n_out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return nn.Linear(n_in, n_out)


class Projections(nn.Module):
    """q, k, v: H -> h*d and o: h*d -> H, shared by encoder and decoder attention."""

    def __init__(self, hidden: int, n_heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = n_heads, head_dim, dropout
        inner = n_heads * head_dim
        self.q = linear(hidden, inner)
        self.k = linear(hidden, inner)
        self.v = linear(hidden, inner)
        self.o = linear(inner, hidden)


class SelfAttention(Projections):
    """Multi-head self-attention with ``n_heads`` heads of width ``head_dim`` (n_heads may be 0)."""

    def forward(self, x: Tensor, mask: Tensor | None, want_probs: bool = False) -> tuple[Tensor, Tensor | None]:
        B, T, _ = x.shape
        if self.n_heads == 0:  # every head pruned away: the sub-layer contributes only its bias
            return self.o(x.new_zeros(B, T, 0)), x.new_zeros(B, 0, T, T) if want_probs else None
        split = lambda t: t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        p = self.dropout if self.training else 0.0
        ctx, probs = attend(split(self.q(x)), split(self.k(x)), split(self.v(x)), mask, p, want_probs=want_probs)
        return self.o(ctx.transpose(1, 2).reshape(B, T, -1)), probs


class FeedForward(nn.Module):
    def __init__(self, hidden: int, width: int, activation: str):
        super().__init__()
        self.fc1 = linear(hidden, width)
        self.fc2 = linear(width, hidden)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Post-LN block (BERT): x = LN(x + Attn(x)); x = LN(x + FFN(x)).

    Pre-LN block (``cfg.pre_ln``): x = x + Attn(LN(x)); x = x + FFN(LN(x)). The residual path
    is never normalised, so gradients reach early layers undamped; GPT-2 and most recent
    encoders use it for stable training at high learning rates. (In plmkit's 5-minute BERT-mini
    probes at lr 1e-3 it learned as fast as post-LN: benchmarks/RESULTS.md.)
    """

    def __init__(self, cfg: EncoderConfig, n_heads: int, ffn_width: int):
        super().__init__()
        H = cfg.hidden_size
        self.attn = SelfAttention(H, n_heads, cfg.head_dim, cfg.attention_dropout)
        self.attn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(H, ffn_width, cfg.activation)
        self.ffn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.drop = Dropout(cfg.hidden_dropout)
        self.pre_ln = cfg.pre_ln

    def forward(self, x: Tensor, mask: Tensor | None, want_probs: bool = False) -> tuple[Tensor, Tensor | None]:
        if self.pre_ln:
            a, probs = self.attn(self.attn_norm(x), mask, want_probs)
            x = x + self.drop(a)
            return x + self.drop(self.ffn(self.ffn_norm(x))), probs
        a, probs = self.attn(x, mask, want_probs)
        x = self.attn_norm(x + self.drop(a))
        x = self.ffn_norm(x + self.drop(self.ffn(x)))
        return x, probs


class Embeddings(nn.Module):
    """word + position + segment, LayerNorm, dropout; ALBERT projects E -> H afterwards."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        E = cfg.embedding_size or cfg.hidden_size
        self.word = nn.Embedding(cfg.vocab_size, E, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position, E)
        self.segment = nn.Embedding(cfg.type_vocab_size, E)
        self.norm = nn.LayerNorm(E, eps=cfg.layer_norm_eps)
        self.proj = nn.Linear(E, cfg.hidden_size) if E != cfg.hidden_size else None
        self.drop = Dropout(cfg.hidden_dropout)
        self.register_buffer("position_ids", torch.arange(cfg.max_position), persistent=False)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        T = input_ids.size(1)
        x = self.word(input_ids) + self.position(self.position_ids[:T])
        if token_type_ids is None:
            x = x + self.segment.weight[0]
        else:
            x = x + self.segment(token_type_ids)
        x = self.drop(self.norm(x))
        return self.proj(x) if self.proj is not None else x


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        n_modules = 1 if cfg.share_layers else cfg.num_layers  # ALBERT: one set of weights, reused
        self.layers = nn.ModuleList(EncoderLayer(cfg, cfg.heads[i], cfg.ffn[i]) for i in range(n_modules))
        # Pre-LN leaves the last block's output un-normalised; the final LN gives heads BERT's scale.
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.pre_ln else None
        self.pooler = Pooler(cfg.hidden_size) if cfg.use_pooler else None
        self.apply(init_weights)

    def layer(self, i: int) -> EncoderLayer:
        return self.layers[0 if self.config.share_layers else i]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> EncoderOutput:
        x = self.embeddings(input_ids, token_type_ids)              # [B, T, H]
        mask = padding_mask(attention_mask, x.dtype)                # [B, 1, 1, T] or None
        hidden = [x] if output_hidden_states else None
        attns = [] if output_attentions else None
        for i in range(self.config.num_layers):
            x, probs = self.layer(i)(x, mask, output_attentions)
            if hidden is not None:
                hidden.append(x)
            if attns is not None:
                attns.append(probs)
        if self.final_norm is not None:
            x = self.final_norm(x)
            if hidden is not None:
                hidden[-1] = x                                      # as GPT-2: the last entry is normalised
        pooled = self.pooler(x) if self.pooler is not None else None
        return EncoderOutput(x, pooled, tuple(hidden) if hidden else None, tuple(attns) if attns else None)


class Pooler(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT/GPT-2 initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
