"""Extractive QA (SQuAD): split long contexts into overlapping windows, and map span
predictions back to answer text.

Each feature is one window: "[CLS] question [SEP] context-window [SEP]" (the layout comes
from the tokenizer's own pair template). Consecutive windows of one context overlap by
``doc_stride`` tokens (the HF ``run_qa`` meaning of doc_stride), so an answer cut by one
window boundary lies whole inside a neighbouring window. Training targets are token
positions of the first gold answer in the window, or index 0 (CLS) when the answer is not
wholly inside it. ``offset_mapping`` keeps each context token's character span in the
original context (None elsewhere) so predictions map back to exact context text.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

from ..errors import PlmkitError
from .features import configured
from .readers import QAExample

NO_ANSWER = 0  # position of [CLS]: the target when the answer is not in a window


def _truncate_question(tok: Tokenizer, question: str, max_query_length: int) -> str:
    """Cut the question text after its first ``max_query_length`` tokens."""
    enc = tok.encode(question, add_special_tokens=False)
    if len(enc.ids) <= max_query_length:
        return question
    return question[:enc.offsets[max_query_length - 1][1]]


def prepare_qa_features(tok: Tokenizer, examples: Sequence[QAExample], max_length: int,
                        doc_stride: int, max_query_length: int = 64) -> list[dict[str, Any]]:
    """Windowed features, in example order (one example may give several features).

    Keys: input_ids, attention_mask, token_type_ids, start_positions, end_positions,
    offset_mapping (list of (start, end) or None), example_id.
    """
    if not examples:
        return []
    plain = configured(tok, None)
    questions = [_truncate_question(plain, ex.question.lstrip(), max_query_length) for ex in examples]
    specials = tok.post_processor.num_special_tokens_to_add(True) if tok.post_processor else 0
    longest_q = max(len(e.ids) for e in plain.encode_batch(questions, add_special_tokens=False))
    window = max_length - longest_q - specials
    if window <= doc_stride:
        raise PlmkitError(f"max_length {max_length} leaves {window} context tokens per window after a "
                          f"{longest_q}-token question; that must exceed doc_stride {doc_stride} "
                          f"(raise max_length or lower doc_stride/max_query_length)")
    windowed = configured(tok, max_length, stride=doc_stride, strategy="only_second")
    encodings = windowed.encode_batch(list(zip(questions, [ex.context for ex in examples])))
    features = []
    for ex, enc in zip(examples, encodings):
        for win in [enc, *enc.overflowing]:
            features.append(_window_feature(ex, win))
    return features


def _window_feature(ex: QAExample, win: Encoding) -> dict[str, Any]:
    offsets = [off if seq == 1 else None for off, seq in zip(win.offsets, win.sequence_ids)]
    start = end = NO_ANSWER
    if ex.answers:
        ans = ex.answers[0]
        s_char = ans["answer_start"]
        e_char = s_char + len(ans["text"])  # exclusive
        ctx = [i for i, off in enumerate(offsets) if off is not None]
        if ctx and offsets[ctx[0]][0] <= s_char and offsets[ctx[-1]][1] >= e_char:
            # First token ending after the answer start; last token starting before its end.
            start = next(i for i in ctx if offsets[i][1] > s_char)
            end = next(i for i in reversed(ctx) if offsets[i][0] < e_char)
    return {"input_ids": win.ids, "attention_mask": win.attention_mask, "token_type_ids": win.type_ids,
            "start_positions": start, "end_positions": end, "offset_mapping": offsets,
            "example_id": ex.id}


def postprocess_qa(examples: Sequence[QAExample], features: Sequence[Mapping[str, Any]],
                   start_logits: Sequence[Any], end_logits: Sequence[Any], n_best: int = 20,
                   max_answer_length: int = 30) -> dict[str, str]:
    """Best answer text per example id, searched over all of the example's windows.

    start_logits/end_logits: one row per feature (list, numpy array or CPU tensor); rows may
    be padded past the feature's length. A span is valid when both ends are context tokens,
    start <= end and it spans at most ``max_answer_length`` tokens; its score is
    start_logit + end_logit. An example with no valid span gets "".
    """
    if not (len(features) == len(start_logits) == len(end_logits)):
        raise ValueError(f"{len(features)} features but {len(start_logits)} start / "
                         f"{len(end_logits)} end logit rows")
    by_example: dict[str, list[int]] = defaultdict(list)
    for i, feat in enumerate(features):
        by_example[feat["example_id"]].append(i)
    answers = {}
    for ex in examples:
        best_score, best_text = -np.inf, ""
        for i in by_example.get(ex.id, []):
            score, start, end = best_span(features[i]["offset_mapping"], np.asarray(start_logits[i], dtype=np.float64),
                                          np.asarray(end_logits[i], dtype=np.float64), n_best, max_answer_length)
            if start is not None and score > best_score:
                best_score, best_text = score, ex.context[start:end]
        answers[ex.id] = best_text
    return answers


def best_span(offsets: Sequence[Any], starts: np.ndarray, ends: np.ndarray, n_best: int = 20,
              max_answer_length: int = 30) -> tuple[float, int | None, int | None]:
    """(start score + end score, char start, char end) of the best context span of one window
    (-inf, None, None when it has none). ``offsets``: the window's offset_mapping (None off the
    context); ``starts``/``ends``: its rows of scores, possibly padded past its length."""
    n = len(offsets)
    starts, ends = starts[:n], ends[:n]
    is_ctx = np.array([off is not None for off in offsets])
    # Score the n_best x n_best grid of candidate (start, end) pairs at once.
    s_idx = np.argsort(-starts, kind="stable")[:n_best]
    e_idx = np.argsort(-ends, kind="stable")[:n_best]
    length = e_idx[None, :] - s_idx[:, None] + 1  # [n_best, n_best]
    valid = is_ctx[s_idx][:, None] & is_ctx[e_idx][None, :] & (length >= 1) & (length <= max_answer_length)
    if not valid.any():
        return -np.inf, None, None
    scores = np.where(valid, starts[s_idx][:, None] + ends[e_idx][None, :], -np.inf)
    si, ei = np.unravel_index(np.argmax(scores), scores.shape)
    return float(scores[si, ei]), offsets[s_idx[si]][0], offsets[e_idx[ei]][1]
