"""Autoregressive sampling for decoder models, with or without the KV cache.

Greedy decoding (temperature 0) is deterministic, so the cached and uncached paths must
produce identical tokens; a test holds them to that, and another holds greedy decoding to
transformers' ``generate``, token for token, on single prompts and left-padded batches.

One step (``next_logits``, then ``choose``) acts on a ``Decoding`` batch; serve's streams run the
same steps and, between them, ``merge`` newly arrived prompts in and ``select`` the rows still
running (continuous batching). Padding a row on the left changes none of its logits beyond float
noise: the mask hides the padding and positions count each row's real tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import PlmkitError
from .model import PlmModel
from .transformer import KVCache

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


@dataclass
class Decoding:
    """A batch mid-decode, what ``generate`` carries from step to step (serve's streams run the same
    steps and edit the batch between them: rows join, rows leave).

    ids [B, T]: the prompts, left-padded, and the tokens chosen so far; mask [B, T] (1: a real token)
    or None when nothing is padded; past: the KV cache of ``ids[:, :-1]`` (None before the prompt ran).
    """
    ids: Tensor
    mask: Tensor | None = None
    past: KVCache | None = None

    def append(self, nxt: Tensor) -> None:
        """The chosen ids [B] become the last column (the next step feeds them)."""
        self.ids = torch.cat([self.ids, nxt[:, None]], dim=1)
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.size(0), 1)], dim=1)


@torch.no_grad()
def next_logits(model: PlmModel, state: Decoding, use_cache: bool = True) -> Tensor:
    """One forward pass: logits [B, V] of every row's next token; with the cache, only the ids it
    does not hold yet are fed (the whole prompt at first, then one id a row) and it grows."""
    step_in = state.ids[:, -1:] if (use_cache and state.past is not None) else state.ids
    logits, past = _next_logits(model, step_in, state.mask, state.past if use_cache else None, use_cache)
    if use_cache:
        state.past = past
    return logits


def choose(logits: Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """logits [B, V] -> the next ids [B]: the argmax at temperature 0, else a sample of the filtered
    distribution."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def merge(a: Decoding, b: Decoding, pad_id: int) -> Decoding:
    """Two batches mid-decode (both past their prompt) as one, a's rows first. The shorter is
    left-padded along time first: ids with ``pad_id``, mask 0 and zero keys and values, which the
    mask hides; positions count each row's real tokens, so every row's logits stay its own."""
    width = max(a.ids.size(1), b.ids.size(1))
    a, b = _pad_left(a, width, pad_id), _pad_left(b, width, pad_id)
    mask = None if a.mask is None and b.mask is None else torch.cat([_real(a), _real(b)])
    past = tuple((torch.cat([ka, kb]), torch.cat([va, vb])) for (ka, va), (kb, vb) in zip(a.past, b.past))
    return Decoding(torch.cat([a.ids, b.ids]), mask, past)


def select(state: Decoding, rows: Sequence[int]) -> Decoding:
    """Only ``rows`` of a batch mid-decode (the others finished: they stop costing compute), less
    the leading columns that are now padding in every row (they would cost attention and context)."""
    index = torch.tensor(rows, device=state.ids.device)
    ids, mask = state.ids.index_select(0, index), None if state.mask is None else state.mask.index_select(0, index)
    past = tuple((k.index_select(0, index), v.index_select(0, index)) for k, v in state.past)
    if mask is not None:
        cut = int(mask.any(0).int().argmax())           # the first column holding a real token
        ids, mask = ids[:, cut:], mask[:, cut:]
        past = tuple((k[:, :, cut:], v[:, :, cut:]) for k, v in past)
    return Decoding(ids, mask, past)


def _pad_left(state: Decoding, width: int, pad_id: int) -> Decoding:
    n = width - state.ids.size(1)
    if n == 0:
        return state
    rows = state.ids.size(0)
    ids = torch.cat([state.ids.new_full((rows, n), pad_id), state.ids], dim=1)
    real = _real(state)
    mask = torch.cat([real.new_zeros(rows, n), real], dim=1)
    past = tuple((torch.cat([k.new_zeros(*k.shape[:2], n, k.size(3)), k], dim=2),
                  torch.cat([v.new_zeros(*v.shape[:2], n, v.size(3)), v], dim=2)) for k, v in state.past)
    return Decoding(ids, mask, past)


def _real(state: Decoding) -> Tensor:
    """The mask, all ones when nothing is padded."""
    return state.mask if state.mask is not None else torch.ones_like(state.ids)


@torch.no_grad()
def generate(model: PlmModel, input_ids: Tensor, max_new_tokens: int = 50, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | Sequence[int] | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True,
             attention_mask: Tensor | None = None) -> Tensor:
    """input_ids [B, T] -> [B, T + n] (n <= max_new_tokens; stops early when every row hit an EOS id).

    A batch of prompts of different lengths is left-padded with ``attention_mask`` [B, T] marking the
    real tokens (positions then count each row's real tokens, as transformers' generate does). A row
    that has finished is filled with its first EOS id until the others finish.
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
    state = Decoding(input_ids, attention_mask)
    done = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        if state.ids.size(1) >= limit:
            break
        nxt = choose(next_logits(model, state, use_cache), temperature, top_k, top_p, generator)
        if stops:
            nxt = torch.where(done, torch.full_like(nxt, stops[0]), nxt)
            done |= torch.isin(nxt, stop_t)
        state.append(nxt)
        if stops and bool(done.all()):
            break
    return state.ids
