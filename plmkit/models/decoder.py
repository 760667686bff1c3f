"""A GPT-2-family decoder (pre-LN) with a KV cache.

Shapes: B batch, T new tokens, P cached tokens, H hidden, h heads, d head width.
The cache is a tuple of per-layer (k, v), each [B, h, P, d]; a step appends T positions.
Positions continue from P, so cached and uncached decoding see identical inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import DecoderConfig
from .dropout import Dropout
from .encoder import FeedForward, Projections, attend, init_weights

KVCache = tuple[tuple[Tensor, Tensor], ...]


@dataclass
class DecoderOutput:
    last_hidden_state: Tensor                         # [B, T, H] after the final LayerNorm
    past_key_values: KVCache | None = None
    hidden_states: tuple[Tensor, ...] | None = None   # embeddings + every layer
    attentions: tuple[Tensor, ...] | None = None


class CausalSelfAttention(Projections):
    """Causal multi-head attention over the cached and the new positions."""

    def forward(self, x: Tensor, pad_mask: Tensor | None, past: tuple[Tensor, Tensor] | None,
                want_probs: bool = False) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None]:
        B, T, _ = x.shape
        split = lambda t: t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))   # [B, h, T, d]
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # [B, h, P+T, d]
        p = self.dropout if self.training else 0.0
        S = k.size(2)
        if pad_mask is None and (T == 1 or T == S):
            # No padding: a single new token sees everything; a fresh block is plain causal.
            ctx, probs = attend(q, k, v, None, p, is_causal=T > 1, want_probs=want_probs)
        else:
            ctx, probs = attend(q, k, v, causal_mask(T, S, pad_mask, x), p, want_probs=want_probs)
        return self.o(ctx.transpose(1, 2).reshape(B, T, -1)), (k, v), probs


def causal_mask(T: int, S: int, pad_mask: Tensor | None, x: Tensor) -> Tensor:
    """Additive mask [B|1, 1, T, S]: query t (absolute S-T+t) sees keys <= itself that are not padding."""
    keep = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)[None, None]
    if pad_mask is not None:
        keep = keep & pad_mask[:, None, None, :].bool()                  # pad_mask: [B, S]
    mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
    return mask.masked_fill_(~keep, torch.finfo(x.dtype).min)


class DecoderLayer(nn.Module):
    """Pre-LN block: x = x + Attn(LN(x)); x = x + MLP(LN(x))."""

    def __init__(self, cfg: DecoderConfig, n_heads: int, width: int):
        super().__init__()
        H = cfg.hidden_size
        self.ln_1 = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(H, n_heads, cfg.head_dim, cfg.attention_dropout)
        self.ln_2 = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(H, width, cfg.activation)
        self.drop = Dropout(cfg.hidden_dropout)

    def forward(self, x: Tensor, pad_mask: Tensor | None, past: tuple[Tensor, Tensor] | None,
                want_probs: bool = False) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None]:
        a, kv, probs = self.attn(self.ln_1(x), pad_mask, past, want_probs)
        x = x + self.drop(a)
        x = x + self.drop(self.ffn(self.ln_2(x)))
        return x, kv, probs


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.wpe = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.drop = Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(DecoderLayer(cfg, cfg.heads[i], cfg.ffn[i]) for i in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.apply(init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2L) so the residual stream stays O(1).
        for name, p in self.named_parameters():
            if name.endswith(("attn.o.weight", "ffn.fc2.weight")):
                nn.init.normal_(p, std=0.02 / (2 * cfg.num_layers) ** 0.5)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                output_hidden_states: bool = False, output_attentions: bool = False) -> DecoderOutput:
        B, T = input_ids.shape
        P = past_key_values[0][0].size(2) if past_key_values else 0
        if P + T > self.config.max_position:
            raise ValueError(f"sequence of {P + T} tokens exceeds max_position {self.config.max_position}")
        pos = torch.arange(P, P + T, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))            # [B, T, H]
        # attention_mask covers cached + new positions, [B, P+T]; None when nothing is padded.
        pad = None if attention_mask is None or bool(attention_mask.all()) else attention_mask
        hidden = [x] if output_hidden_states else None
        attns = [] if output_attentions else None
        cache = []
        for i, layer in enumerate(self.layers):
            x, kv, probs = layer(x, pad, past_key_values[i] if past_key_values else None, output_attentions)
            cache.append(kv)
            if hidden is not None:
                hidden.append(x)
            if attns is not None:
                attns.append(probs)
        x = self.ln_f(x)
        return DecoderOutput(x, tuple(cache) if use_cache else None,
                             tuple(hidden) if hidden else None, tuple(attns) if attns else None)
