"""BERT masked-LM corruption, drawn at batch time (dynamic masking, as in RoBERTa).

Each non-special position is *selected* with probability ``mlm_prob`` (per token, or per
word with whole-word masking). A selected position becomes [MASK] with ``mask_frac``,
a random non-special id with ``random_frac``, and stays as is otherwise; its label is the
original id. Unselected positions get label -100 (ignored by the loss).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from ..errors import PlmkitError

IGNORE_INDEX = -100


def is_continuation(vocab: Mapping[str, int], prefix: str = "##") -> Tensor:
    """[V] bool: True for WordPiece continuation pieces (``##ing``) - they never start a word."""
    table = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    for token, i in vocab.items():
        table[i] = token.startswith(prefix) and len(token) > len(prefix)
    return table


def word_starts(input_ids: Tensor, continuation: Tensor) -> Tensor:
    """[B, T] bool: True where a token begins a word (it is not a continuation piece)."""
    return ~continuation.to(input_ids.device)[input_ids]


def _selection(input_ids: Tensor, special_mask: Tensor, mlm_prob: float, generator: torch.Generator,
               word_starts: Tensor | None) -> Tensor:
    """[B, T] bool of positions to predict."""
    draws = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    if word_starts is not None:
        # Every token takes the draw of the start of its word: index of the latest start
        # at or before it (cummax over start positions), so a word is selected as a whole.
        # Special tokens count as starts, so a word never borrows the draw of [CLS]/[SEP].
        starts = word_starts | special_mask
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        owner = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
        draws = draws.gather(1, owner)
    return (draws < mlm_prob) & ~special_mask


def mask_tokens(input_ids: Tensor, special_mask: Tensor, vocab_size: int, mask_id: int,
                generator: torch.Generator, mlm_prob: float = 0.15, mask_frac: float = 0.8,
                random_frac: float = 0.1, word_starts: Tensor | None = None,
                special_ids: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
    """Corrupt ``input_ids`` [B, T] for MLM; returns ``(masked_ids, labels)``, both [B, T] int64.

    ``special_mask`` [B, T] bool marks positions never selected ([CLS], [SEP], [PAD]).
    Random replacements exclude ``mask_id``, ``special_ids`` and every id found at a
    special position. ``word_starts`` [B, T] bool turns on whole-word masking.
    Deterministic given ``generator``'s state, which is what makes resume exact.
    """
    if not (0.0 <= mlm_prob <= 1.0 and mask_frac >= 0 and random_frac >= 0 and mask_frac + random_frac <= 1):
        raise PlmkitError(f"bad masking rates: mlm_prob={mlm_prob} mask_frac={mask_frac} random_frac={random_frac}")
    special_mask = special_mask.bool()
    selected = _selection(input_ids, special_mask, mlm_prob, generator, word_starts)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    # One uniform per position splits the selected ones into [MASK] / random / keep.
    how = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    to_mask = selected & (how < mask_frac)
    to_random = selected & (how >= mask_frac) & (how < mask_frac + random_frac)

    banned = torch.zeros(vocab_size, dtype=torch.bool, device=input_ids.device)
    banned[input_ids[special_mask]] = True
    banned[mask_id] = True
    if special_ids:
        banned[torch.as_tensor(list(special_ids), device=input_ids.device)] = True
    allowed = (~banned).nonzero().squeeze(1)  # [V'] candidate replacement ids
    pick = torch.randint(len(allowed), input_ids.shape, generator=generator, device=input_ids.device)

    out = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    out = torch.where(to_random, allowed[pick], out)
    return out, labels
