"""One transformer backbone for every family, readable in one sitting.

    x = Embeddings(input_ids, token_type_ids, positions)          [B, T, H]
    for each layer: x = Block(x)                                   pre- or post-LN, local or global,
                                                                   causal or not, rotary or not
    x = final norm (pre-LN only);  pooled = tanh(dense(x[:, 0])) (BERT's pooler, when present)

What differs between BERT, RoBERTa, ALBERT, ModernBERT, GPT-2 and Llama lives in the config
(models/config.py) and in the module each choice picks (models/layers.py); the forward pass
below is the same for all of them. Decoders (``config.causal``) keep a KV cache: a tuple of
per-layer (k, v), each [B, g, P, d]; a step appends T positions, and positions continue from P
(or, with a padding mask, count the real tokens), so cached and uncached decoding see
identical inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .layers import Block, Context, Embeddings, Transform, init_weights, make_norm

KVCache = tuple[tuple[Tensor, Tensor], ...]


@dataclass
class BackboneOutput:
    last_hidden_state: Tensor                         # [B, T, H] (after the final norm of pre-LN models)
    pooled: Tensor | None = None                      # [B, H], tanh(dense(h[:, 0])) when the model has a pooler
    hidden_states: tuple[Tensor, ...] | None = None   # embeddings + every layer: L+1 x [B, T, H]; the last
                                                      # entry equals last_hidden_state (normalised)
    attentions: tuple[Tensor, ...] | None = None      # L x [B, h_l, T, S]
    past_key_values: KVCache | None = None


def keep_mask(attention_mask: Tensor | None) -> Tensor | None:
    """The attention mask when something is padded, else None (SDPA's fastest kernels then).

    The all-ones check is a data-dependent branch: a compiled or traced graph keeps the mask.
    """
    if attention_mask is None:
        return None
    if not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export() and bool(attention_mask.all()):
        return None
    return attention_mask


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        n_modules = 1 if cfg.share_layers else cfg.num_layers   # ALBERT: one set of weights, reused
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(n_modules))
        # Pre-LN leaves the last block's output un-normalised; the final norm gives heads a sane scale.
        self.final_norm = make_norm(cfg.hidden_size, cfg) if cfg.pre_ln else None
        self.pooler = Transform(cfg, cfg.hidden_size, cfg.hidden_size, "tanh", norm=False) if cfg.use_pooler else None
        self.apply(init_weights)
        if cfg.causal:
            # GPT-2: scale residual projections by 1/sqrt(2L) so the residual stream stays O(1).
            for name, p in self.named_parameters():
                if name.endswith(("attn.o.weight", "ffn.fc2.weight")):
                    nn.init.normal_(p, std=0.02 / (2 * cfg.num_layers) ** 0.5)

    def layer(self, i: int) -> Block:
        return self.layers[0 if self.config.share_layers else i]

    def positions(self, attention_mask: Tensor | None, keep: Tensor | None, P: int, T: int,
                  device: torch.device) -> Tensor:
        """Position ids [B|1, T]. A padded decoder batch (left-padded prompts) numbers each row's real
        tokens from 0, as HF's generate does; everything else counts P .. P+T-1."""
        if self.config.causal and keep is not None:
            return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, P:P + T]   # mask: [B, P+T]
        return torch.arange(P, P + T, device=device)[None]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, past_key_values: KVCache | None = None,
                use_cache: bool = False, output_hidden_states: bool = False,
                output_attentions: bool = False) -> BackboneOutput:
        cfg = self.config
        B, T = input_ids.shape
        P = past_key_values[0][0].size(2) if past_key_values else 0
        if P + T > cfg.max_position:
            raise ValueError(f"sequence of {P + T} tokens exceeds max_position {cfg.max_position}")
        keep = keep_mask(attention_mask)                                  # [B, P+T] or None
        pos = self.positions(attention_mask, keep, P, T, input_ids.device)
        x = self.embeddings(input_ids, token_type_ids, pos)               # [B, T, H]
        ctx = Context(cfg, keep, pos, T, P + T, x.dtype, output_attentions)
        hidden = [x] if output_hidden_states else None
        attns: list[Tensor] | None = [] if output_attentions else None
        cache = []
        for i in range(cfg.num_layers):
            x, kv, probs = self.layer(i)(x, ctx, past_key_values[i] if past_key_values else None)
            if use_cache:       # else each layer's keys and values are freed with the layer's other activations
                cache.append(kv)
            if hidden is not None:
                hidden.append(x)
            if attns is not None:
                attns.append(probs)
        if self.final_norm is not None:
            x = self.final_norm(x)
            if hidden is not None:
                hidden[-1] = x                                            # as GPT-2: the last entry is normalised
        pooled = self.pooler(x[:, 0]) if self.pooler is not None else None
        return BackboneOutput(x, pooled, tuple(hidden) if hidden else None, tuple(attns) if attns else None,
                              tuple(cache) if use_cache else None)
