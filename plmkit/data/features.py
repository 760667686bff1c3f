"""Turn reader examples into token features, batch them, and bucket them by length.

A feature is a dict of plain Python lists/ints, unpadded: padding happens per batch in
``collate`` (dynamic padding), so a batch of short sentences costs little. Keys match the
model's batch keys (``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``,
``start_positions``, ``end_positions``); extra keys (``word_ids``, ``offset_mapping``,
``example_id``) are bookkeeping for post-processing and are left out by ``collate``.
"""
from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

import torch
from tokenizers import Tokenizer

from ..errors import InputError, PlmkitError
from .readers import GenExample, TextExample, TokenExample

IGNORE = -100  # label value the losses skip (torch CrossEntropyLoss ignore_index)

# How each model key is padded in a batch; keys absent here are not model inputs.
PAD_VALUES = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "labels": IGNORE}
SCALAR_KEYS = ("labels", "start_positions", "end_positions", "next_sentence_label")

LabelMap = Sequence[str] | Mapping[str, int]


def configured(tok: Tokenizer, max_length: int | None, *, stride: int = 0,
               strategy: str = "longest_first") -> Tokenizer:
    """A copy of ``tok`` with padding off and the given truncation.

    A copy, because tokenizer.json files often carry padding/truncation settings
    (all-MiniLM pads to 128) and mutating the caller's tokenizer would surprise it.
    """
    tok = Tokenizer.from_str(tok.to_str())
    tok.no_padding()
    if max_length is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length, stride=stride, strategy=strategy)
    return tok


def label_ids(label_map: LabelMap) -> dict[str, int]:
    """Accept label names (index = id, as ``build_label_map`` gives) or a name -> id mapping."""
    if isinstance(label_map, Mapping):
        return dict(label_map)
    return {name: i for i, name in enumerate(label_map)}


def _label_id(ids: dict[str, int], name: str, source: str, line: int) -> int:
    if name not in ids:
        raise InputError(source or "<data>", f"unknown label {name!r} (known labels: {sorted(ids)})", line)
    return ids[name]


def encode_classification(tok: Tokenizer, examples: Sequence[TextExample], label_map: LabelMap | None,
                          max_length: int) -> list[dict[str, Any]]:
    """[CLS] text [SEP] (text_pair [SEP]) truncated to ``max_length``; ``labels`` is an int.

    Examples without a label (prediction data) get no ``labels`` key.
    """
    tok = configured(tok, max_length)
    ids = label_ids(label_map) if label_map is not None else {}
    singles = [i for i, ex in enumerate(examples) if ex.text_pair is None]
    pairs = [i for i, ex in enumerate(examples) if ex.text_pair is not None]
    encodings: list[Any] = [None] * len(examples)
    for i, enc in zip(singles, tok.encode_batch([examples[i].text for i in singles])):
        encodings[i] = enc
    for i, enc in zip(pairs, tok.encode_batch([(examples[i].text, examples[i].text_pair) for i in pairs])):
        encodings[i] = enc
    features = []
    for ex, enc in zip(examples, encodings):
        feat: dict[str, Any] = {"input_ids": enc.ids, "attention_mask": enc.attention_mask,
                                "token_type_ids": enc.type_ids}
        if ex.label is not None and label_map is not None:
            feat["labels"] = _label_id(ids, ex.label, ex.source, ex.line)
        features.append(feat)
    return features


def encode_ner(tok: Tokenizer, examples: Sequence[TokenExample], label_map: LabelMap | None,
               max_length: int) -> list[dict[str, Any]]:
    """Tokenize pre-split words; label only the first sub-word of each word.

    Later sub-words and special tokens get -100 so the loss and the metric count each
    word once. ``word_ids`` (None for specials) is kept for mapping predictions back
    (``word_predictions``). Words cut off by ``max_length`` get no label.
    """
    tok = configured(tok, max_length)
    ids = label_ids(label_map) if label_map is not None else {}
    encodings = tok.encode_batch([ex.tokens for ex in examples], is_pretokenized=True)
    features = []
    for ex, enc in zip(examples, encodings):
        word_ids = enc.word_ids
        feat: dict[str, Any] = {"input_ids": enc.ids, "attention_mask": enc.attention_mask,
                                "token_type_ids": enc.type_ids, "word_ids": word_ids}
        if ex.tags is not None and label_map is not None:
            tag_ids = [_label_id(ids, t, ex.source, ex.line) for t in ex.tags]
            labels, prev = [], None
            for w in word_ids:
                labels.append(tag_ids[w] if w is not None and w != prev else IGNORE)
                prev = w
            feat["labels"] = labels
        features.append(feat)
    return features


def word_predictions(word_ids: Sequence[int | None], token_preds: Sequence[int], n_words: int,
                     id2label: Sequence[str], fill: str = "O") -> list[str]:
    """Per-word tags from per-token predictions (first sub-word wins); truncated words get ``fill``."""
    tags = [fill] * n_words
    prev = None
    for w, p in zip(word_ids, token_preds):
        if w is not None and w != prev:
            tags[w] = id2label[int(p)]
        prev = w
    return tags


def _special_id(tok: Tokenizer, candidates: Sequence[str], what: str) -> int:
    for name in candidates:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    raise PlmkitError(f"tokenizer has no {what} token (looked for {', '.join(candidates)})")


EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]")


def encode_generation(tok: Tokenizer, examples: Sequence[GenExample], max_length: int,
                      sep: str = "\n", eos: str | None = None) -> list[dict[str, Any]]:
    """input = prompt + sep + completion + EOS; ``labels`` = input with prompt and sep set to -100.

    Labels are not shifted: the causal-LM head shifts them. When too long, the prompt loses
    tokens from its start (the end of a prompt matters most); if the completion alone does
    not fit, it is cut at the end.
    """
    tok = configured(tok, None)
    eos_id = tok.token_to_id(eos) if eos else _special_id(tok, EOS_CANDIDATES, "end-of-sequence")
    if eos_id is None:
        raise PlmkitError(f"end-of-sequence token {eos!r} is not in the tokenizer's vocabulary")
    sep_ids = tok.encode(sep, add_special_tokens=False).ids if sep else []
    prompts = tok.encode_batch([ex.prompt for ex in examples], add_special_tokens=False)
    completions = tok.encode_batch([ex.completion for ex in examples], add_special_tokens=False)
    features = []
    for p, c in zip(prompts, completions):
        target = (c.ids + [eos_id])[:max(max_length - len(sep_ids), 1)]
        room = max(max_length - len(sep_ids) - len(target), 0)
        prompt = p.ids[max(len(p.ids) - room, 0):] if room else []
        input_ids = prompt + sep_ids + target
        labels = [IGNORE] * (len(prompt) + len(sep_ids)) + target
        features.append({"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels})
    return features


def collate(features: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the model keys of ``features`` to the longest in the batch: dict of [B, T] / [B] tensors.

    input_ids pad with ``pad_id``, attention_mask/token_type_ids with 0, token labels with -100.
    Scalar labels (classification, span positions) become [B] tensors.
    """
    if not features:
        raise ValueError("collate of an empty batch")
    longest = max(len(f["input_ids"]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    for key, first in features[0].items():
        if key in PAD_VALUES and isinstance(first, list):
            fill = pad_id if PAD_VALUES[key] is None else PAD_VALUES[key]
            rows = [list(f[key]) + [fill] * (longest - len(f[key])) for f in features]
            batch[key] = torch.tensor(rows, dtype=torch.long)
        elif key in SCALAR_KEYS:
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
    return batch


def length_bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                            chunk_batches: int = 100) -> list[list[int]]:
    """Index batches whose members have similar lengths, so padding stays small.

    shuffle=True: shuffle all indices, cut into chunks of ``chunk_batches`` batches, sort each
    chunk by length, cut into batches, then shuffle the batch order. Randomness survives
    (which examples share a chunk, and batch order) while each batch is length-homogeneous.
    shuffle=False: sort everything by length (deterministic; for evaluation).
    Every index appears exactly once; only the last batch may be smaller.
    """
    if batch_size < 1:
        raise PlmkitError(f"batch size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: lengths[i])
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(order)
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    # Chunks hold whole batches, so only the final batch can be short: keep it last.
    last = batches.pop() if batches and len(batches[-1]) < batch_size else None
    rng.shuffle(batches)
    return batches + [last] if last else batches
