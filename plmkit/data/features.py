"""Turn reader examples into token features, batch them, and bucket them by length.

A feature is a dict of plain Python lists/ints, unpadded: padding happens per batch in
``collate`` (dynamic padding), so a batch of short sentences costs little. Classification
features live in a ``FeatureTable`` (the token ids of all examples in one compact numpy
array) that hands out those dicts on access: a million examples cost ~100 MB, not GBs of
Python lists and tokenizer ``Encoding`` objects. Keys match the
model's batch keys (``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``,
``start_positions``, ``end_positions``); extra keys (``word_ids``, ``offset_mapping``,
``example_id``) are bookkeeping for post-processing and are left out by ``collate``.
A feature may carry more texts beside its input (sentence embeddings: the positive and hard
negative of an anchor): ``pair_input_ids`` etc. hold one token list per extra text, batched
into one padded block of their own.
"""
from __future__ import annotations

import itertools
import random
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from ..errors import InputError, PlmkitError
from .readers import GenExample, TextExample, TokenExample

IGNORE = -100  # label value the losses skip (torch CrossEntropyLoss ignore_index)

# How each model key is padded in a batch; keys absent here are not model inputs.
PAD_VALUES = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "labels": IGNORE}
SCALAR_KEYS = ("labels", "start_positions", "end_positions", "next_sentence_label")
FLOAT_KEYS = ("scores",)          # one float per feature (scored sentence pairs)
# The extra texts of a feature, one token list each, and the input key each is padded as.
PAIR_KEYS = {"pair_input_ids": "input_ids", "pair_attention_mask": "attention_mask",
             "pair_token_type_ids": "token_type_ids"}

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


ENCODE_CHUNK = 4096  # examples per encode_batch call: bounds the tokenizer's Encoding objects
# How a classification text longer than max_length becomes features (``--long-text``).
LONG_TEXT = ("truncate", "head-tail", "windows")
# head-tail keeps this share of the token budget from the start and the rest from the end:
# Sun et al. 2019 ("How to Fine-Tune BERT for Text Classification?") found 128 head + 382 tail
# tokens of 510 the best way to fit IMDb reviews into 512 positions.
HEAD_SHARE = 128 / 510


class FeatureTable(Sequence[dict[str, Any]]):
    """Unpadded classification features of many examples, stored flat.

    ``ids`` [sum of lengths] holds every feature's token ids back to back (uint16 when the
    vocabulary fits, else int32), ``starts`` [F + 1] where each begins, ``type_ids`` the
    segment ids (uint8, None when all are 0) and ``labels`` [F] (int64, absent for unlabelled
    data). ``n_tokens`` [F] is the full token count of an example that was cut (0: not cut);
    ``example_ids`` [F] the example each feature came from, when long texts are split into
    windows (else None: feature i is example i).
    ``table[i]`` is the same dict of lists the other tasks' features are (attention mask all
    ones: features are unpadded); a slice is a list of such dicts.
    """

    def __init__(self, ids: np.ndarray, starts: np.ndarray, type_ids: np.ndarray | None,
                 labels: np.ndarray | None, n_tokens: np.ndarray | None = None,
                 example_ids: np.ndarray | None = None):
        self.ids, self.starts, self.type_ids, self.labels = ids, starts, type_ids, labels
        self.n_tokens, self.example_ids = n_tokens, example_ids

    def __len__(self) -> int:
        return len(self.starts) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"feature {i} out of range ({n} features)")
        i %= n
        a, b = int(self.starts[i]), int(self.starts[i + 1])
        feat: dict[str, Any] = {"input_ids": self.ids[a:b].tolist(), "attention_mask": [1] * (b - a),
                                "token_type_ids": (self.type_ids[a:b].tolist() if self.type_ids is not None
                                                   else [0] * (b - a))}
        if self.labels is not None:
            feat["labels"] = int(self.labels[i])
        if self.n_tokens is not None and self.n_tokens[i]:
            feat["n_tokens"] = int(self.n_tokens[i])
        if self.example_ids is not None:
            feat["example_id"] = int(self.example_ids[i])
        return feat

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))


def feature_lengths(features: Sequence[Mapping[str, Any]]) -> list[int]:
    """Token count of every feature, its extra texts included (read from the table's offsets
    when it is a FeatureTable)."""
    if isinstance(features, FeatureTable):
        return features.lengths().tolist()
    return [len(f["input_ids"]) + sum(map(len, f.get("pair_input_ids", ()))) for f in features]


def encode_classification(tok: Tokenizer, examples: Sequence[TextExample], label_map: LabelMap | None,
                          max_length: int, long_text: str = "truncate", stride: int = 0) -> FeatureTable:
    """[CLS] text [SEP] (text_pair [SEP]) in at most ``max_length`` tokens; ``labels`` is an int.

    A single text longer than that is cut per ``long_text``: ``truncate`` keeps its start,
    ``head-tail`` its first ``HEAD_SHARE`` and its last tokens, ``windows`` splits it into
    windows of ``max_length`` overlapping by ``stride`` tokens: several features with the same
    ``example_id`` (the example's index), whose predictions the task pools. A cut example's
    feature(s) carry ``n_tokens``, its full length. Pairs are truncated longest-first. Examples
    without a label (prediction data) get no ``labels`` key. Encoded ``ENCODE_CHUNK`` examples
    at a time, each chunk packed into arrays at once.
    """
    if long_text not in LONG_TEXT:
        raise PlmkitError(f"unknown long-text mode '{long_text}' (choose {', '.join(LONG_TEXT)})")
    if long_text != "truncate" and any(ex.text_pair is not None for ex in examples):
        raise PlmkitError(f"--long-text {long_text} is for single texts; sentence pairs are truncated "
                          "longest-first (use --long-text truncate)")
    encoder = _TextEncoder(tok, max_length, long_text, stride)
    dtype = np.uint16 if tok.get_vocab_size(with_added_tokens=True) <= 1 << 16 else np.int32
    id_parts, type_parts, lengths, cut, owner = [], [], [], [], []
    for c in range(0, len(examples), ENCODE_CHUNK):
        feats = encoder.encode(examples[c:c + ENCODE_CHUNK])
        lens = [len(f[1]) for f in feats]
        total = sum(lens)
        id_parts.append(np.fromiter(itertools.chain.from_iterable(f[1] for f in feats), dtype, total))
        type_parts.append(np.fromiter(itertools.chain.from_iterable(f[2] for f in feats), np.uint8, total))
        lengths.extend(lens)
        cut.extend(f[3] for f in feats)
        owner.extend(c + f[0] for f in feats)
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    owners = np.asarray(owner, dtype=np.int64)
    labels = None
    if label_map is not None and any(ex.label is not None for ex in examples):
        ids = label_ids(label_map)
        per_example = np.fromiter((_label_id(ids, ex.label, ex.source, ex.line) for ex in examples), np.int64,
                                  len(examples))
        labels = per_example[owners]
    types = np.concatenate(type_parts) if type_parts else np.zeros(0, np.uint8)
    return FeatureTable(np.concatenate(id_parts) if id_parts else np.zeros(0, dtype), starts,
                        types if types.any() else None, labels,
                        np.asarray(cut, dtype=np.int32) if any(cut) else None,
                        owners if long_text == "windows" else None)


class _TextEncoder:
    """Features of a chunk of examples: (index in the chunk, input ids, type ids, full length if cut else 0)."""

    def __init__(self, tok: Tokenizer, max_length: int, long_text: str, stride: int):
        self.plain, self.cut = configured(tok, None), configured(tok, max_length)
        self.tok, self.max_length, self.long_text, self.stride = tok, max_length, long_text, stride
        self.frame: TextFrame | None = None      # built on the first single text (pairs do not need it)

    def encode(self, examples: Sequence[TextExample]) -> list[tuple[int, list[int], list[int], int]]:
        singles = [i for i, ex in enumerate(examples) if ex.text_pair is None]
        pairs = [i for i, ex in enumerate(examples) if ex.text_pair is not None]
        per_example: list[list[tuple[int, list[int], list[int], int]]] = [[] for _ in examples]
        if singles:
            if self.frame is None:
                self.frame = TextFrame(self.tok, self.max_length)
            texts = [examples[i].text for i in singles]
            for i, enc in zip(singles, self.plain.encode_batch(texts, add_special_tokens=False)):
                per_example[i] = [(i, f["input_ids"], f["token_type_ids"], f.get("n_tokens", 0))
                                  for f in self.frame.features(enc.ids, self.long_text, self.stride)]
        if pairs:
            texts = [(examples[i].text, examples[i].text_pair) for i in pairs]
            for i, enc, whole in zip(pairs, self.cut.encode_batch(texts), self.plain.encode_batch(texts)):
                full = len(whole.ids)
                per_example[i] = [(i, enc.ids, enc.type_ids, full if full > len(enc.ids) else 0)]
        return [f for feats in per_example for f in feats]


class TextFrame:
    """The special tokens a tokenizer puts around one text ([CLS] ... [SEP] for BERT, nothing
    for GPT-2), so token slices of a long text can be framed like a whole one."""

    def __init__(self, tok: Tokenizer, max_length: int):
        probe = configured(tok, None).encode("a", add_special_tokens=True)
        mask = probe.special_tokens_mask
        first = next((j for j, m in enumerate(mask) if m == 0), len(mask))          # the text's tokens:
        last = next((j for j in reversed(range(len(mask))) if mask[j] == 0), first - 1)  # [first, last]
        self.prefix, self.suffix = probe.ids[:first], probe.ids[last + 1:]
        self.prefix_types, self.suffix_types = probe.type_ids[:first], probe.type_ids[last + 1:]
        self.content_type = probe.type_ids[first] if first <= last else 0
        self.budget = max_length - len(self.prefix) - len(self.suffix)    # content tokens per feature
        if self.budget < 2:
            raise PlmkitError(f"max_length {max_length} leaves no room for text after the special tokens")

    def feature(self, content: Sequence[int]) -> dict[str, Any]:
        input_ids = [*self.prefix, *content, *self.suffix]
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids),
                "token_type_ids": [*self.prefix_types, *[self.content_type] * len(content), *self.suffix_types]}

    def features(self, ids: list[int], long_text: str, stride: int) -> list[dict[str, Any]]:
        n, size = len(ids), self.budget
        if n <= size:
            return [self.feature(ids)]
        if long_text == "truncate":
            parts = [ids[:size]]
        elif long_text == "head-tail":
            head = max(1, round(size * HEAD_SHARE))
            parts = [ids[:head] + ids[n - (size - head):]]
        else:
            if not 0 <= stride < size:
                raise PlmkitError(f"window overlap (--doc-stride) {stride} must be below the {size} text "
                                  "tokens of a window")
            parts, start = [], 0
            while True:
                parts.append(ids[start:start + size])
                if start + size >= n:
                    break
                start += size - stride
        return [{**self.feature(part), "n_tokens": n} for part in parts]


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
        elif key in FLOAT_KEYS:
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.float32)
        elif key in PAIR_KEYS:     # the extra texts: all first ones, then all second ones, ...
            rows = [f[key][r] for r in range(len(first)) for f in features]
            wide = max(len(row) for row in rows)
            fill = pad_id if PAD_VALUES[PAIR_KEYS[key]] is None else PAD_VALUES[PAIR_KEYS[key]]
            batch[key] = torch.tensor([list(row) + [fill] * (wide - len(row)) for row in rows], dtype=torch.long)
    return batch


def label_norm(features: Sequence[Mapping[str, Any]], n_batches: int) -> float | None:
    """Mean count of labelled positions over ``n_batches`` training batches when labels are per
    token (NER, generation); None when each example has one label.

    Length-bucketed batches put short sentences together. A loss averaged over each batch's own
    labelled tokens then gives a token in a batch of short sentences many times the weight of one
    in a batch of long sentences (the first 3,000 CoNLL-2003 sentences: about 25x), which random
    batches do not. The heads divide a batch's summed token loss by this dataset-wide mean instead
    (``batch["label_norm"]``): every token weighs the same, as with random batches on average, and
    the loss keeps its usual scale.
    """
    if not len(features) or not isinstance(features[0].get("labels"), list) or n_batches < 1:
        return None
    labelled = sum(sum(1 for v in f["labels"] if v != IGNORE) for f in features)
    return max(labelled / n_batches, 1.0)


def length_bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                            chunk_batches: int = 100, keys: Sequence[Any] | None = None) -> list[list[int]]:
    """Index batches whose members have similar lengths, so padding stays small.

    shuffle=True: shuffle all indices, cut into chunks of ``chunk_batches`` batches, sort each
    chunk by length, cut into batches, then shuffle the batch order. Randomness survives
    (which examples share a chunk, and batch order) while each batch is length-homogeneous.
    shuffle=False: sort everything by length (deterministic; for evaluation).
    Every index appears exactly once; only the last batch may be smaller, except with ``keys``:
    indices with equal keys do not share a batch while others can fill it (the same passage twice
    in a batch of in-batch negatives is a wasted negative). What a chunk cannot fill a batch with
    goes on to the next chunk, so only the final chunk may leave a few short batches.
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
    batches: list[list[int]] = []
    carried: list[int] = []            # keys: what a chunk could not fill a batch with goes to the next one
    for start in range(0, len(order), chunk):
        part = sorted(carried + order[start:start + chunk], key=lambda i: lengths[i])
        if keys is None:
            batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
            continue
        cut = _distinct_batches(part, keys, batch_size)
        carried = []
        while start + chunk < len(order) and cut and len(cut[-1]) < batch_size:
            carried.extend(cut.pop())
        batches.extend(cut)
    # Chunks hold whole batches, so only the final batch can be short: keep it last.
    last = batches.pop() if batches and len(batches[-1]) < batch_size and keys is None else None
    rng.shuffle(batches)
    return batches + [last] if last else batches


def _distinct_batches(part: list[int], keys: Sequence[Any], batch_size: int) -> list[list[int]]:
    """Cut the length-sorted ``part`` into batches in order, an index whose key the batch already
    holds waiting for the next batch (so batches stay length-homogeneous)."""
    batches, pending = [], part
    while pending:
        batch, seen, waiting, pos = [], set(), [], 0
        while pos < len(pending) and len(batch) < batch_size:
            i = pending[pos]
            pos += 1
            if keys[i] in seen:
                waiting.append(i)
            else:
                batch.append(i)
                seen.add(keys[i])
        batches.append(batch)
        pending = waiting + pending[pos:]
    return batches
