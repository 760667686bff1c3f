"""Autoregressive sampling for decoder models, with or without the KV cache.

Greedy decoding (temperature 0) is deterministic, so the cached and uncached paths must
produce identical tokens; a test holds them to that, and another holds greedy decoding to
transformers' ``generate``, token for token, on single prompts and left-padded batches.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ..errors import PlmkitError
from .model import PlmModel

MIN_TEMPERATURE = 0.01      # below it (but above 0: greedy), logits / temperature overflow to inf, then NaN


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


def stop_ids(eos_token_id: int | Sequence[int] | None) -> list[int]:
    """An id, a list of ids (Llama 3 configs carry several) or None -> a list."""
    if eos_token_id is None:
        return []
    return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(i) for i in eos_token_id]


def _next_logits(model: PlmModel, ids: Tensor, mask: Tensor | None, past, use_cache: bool):
    """Logits [B, V] of the last position only (the LM head over every prompt position would cost
    T x V, most of the memory at long contexts), and the new cache."""
    out = model.backbone(ids, mask, None, past, use_cache)
    return model.head.lm_head(out.last_hidden_state[:, -1]).float(), out.past_key_values


@torch.no_grad()
def generate(model: PlmModel, input_ids: Tensor, max_new_tokens: int = 50, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | Sequence[int] | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True,
             attention_mask: Tensor | None = None, on_step: Callable[[Tensor], bool] | None = None) -> Tensor:
    """input_ids [B, T] -> [B, T + n] (n <= max_new_tokens; stops early when every row hit an EOS id).

    A batch of prompts of different lengths is left-padded with ``attention_mask`` [B, T] marking the
    real tokens (positions then count each row's real tokens, as transformers' generate does). A row
    that has finished is filled with its first EOS id until the others finish.

    ``on_step(next_ids [B])`` sees each step's tokens as they are chosen (serve streams them);
    returning True stops the loop (every row met a stop string, or its client left).
    """
    if not getattr(model, "can_generate", False):
        raise PlmkitError(f"generation needs a decoder with a language-model head, got a '{model.task}' "
                          f"{model.family}")
    if 0 < temperature < MIN_TEMPERATURE:
        raise PlmkitError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {temperature:g}")
    limit = model.config.max_position
    if input_ids.size(1) > limit:
        raise PlmkitError(f"the prompt has {input_ids.size(1)} tokens, more than the model's context of "
                          f"{limit} tokens")
    model.eval()
    stops = stop_ids(eos_token_id)
    stop_t = torch.tensor(stops, device=input_ids.device)
    ids, mask, past = input_ids, attention_mask, None
    done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        if ids.size(1) >= limit:
            break
        step_in = ids[:, -1:] if (use_cache and past is not None) else ids
        logits, past = _next_logits(model, step_in, mask, past if use_cache else None, use_cache)
        if temperature <= 0:
            nxt = logits.argmax(-1)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if stops:
            nxt = torch.where(done, torch.full_like(nxt, stops[0]), nxt)
            done |= torch.isin(nxt, stop_t)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
        if on_step is not None and on_step(nxt):
            break
        if stops and bool(done.all()):
            break
    return ids
