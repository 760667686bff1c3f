"""Autoregressive sampling for decoder models, with or without the KV cache.

Greedy decoding (temperature 0) is deterministic, so the cached and uncached paths must
produce identical tokens; a test holds them to that.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .model import PlmModel


def filter_logits(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """logits [B, V] -> logits with everything outside top-k / nucleus top-p set to -inf."""
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p      # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def generate(model: PlmModel, input_ids: Tensor, max_new_tokens: int = 50, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True) -> Tensor:
    """input_ids [B, T] -> [B, T + n] (n <= max_new_tokens; stops early when every row hit EOS)."""
    model.eval()
    limit = model.config.max_position
    ids = input_ids
    past = None
    done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        if ids.size(1) >= limit:
            break
        step_in = ids[:, -1:] if (use_cache and past is not None) else ids
        out = model(step_in, past_key_values=past, use_cache=use_cache)
        past = out.past_key_values if use_cache else None
        logits = out.logits[:, -1].float()                  # [B, V]
        if temperature <= 0:
            nxt = logits.argmax(-1)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if eos_token_id is not None and bool(done.all()):
            break
    return ids
