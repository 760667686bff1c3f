"""Pre-training batches from token shards: MLM, MLM+NSP (BERT), MLM+SOP (ALBERT), CLM (GPT).

An *example set* turns a split of ``TokenShards`` into numbered examples for an epoch and
collates a list of them into unmasked tensors. ``PretrainBatches`` orders them per epoch,
cuts batches, gives every rank its share, applies dynamic MLM masking, and can save and
restore its exact position. Every random choice is drawn from a generator seeded by
(seed, epoch[, batch index]), so nothing has to be replayed on resume.

Examples are stored as token ranges into the shared memmap (a few int64 per example),
never as copies of the tokens: an epoch of pairs for a 1M-token corpus is ~100 KB.

Label conventions (those of HF transformers):
  * ``labels`` [B, T]: original id at positions to predict, -100 elsewhere (MLM);
    for CLM ``labels`` == ``input_ids`` and the model head shifts them.
  * ``next_sentence_label`` [B]: NSP 0 = B is the real continuation, 1 = B is random;
    SOP 0 = A, B in the original order, 1 = swapped.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor

from ..errors import PlmkitError
from .masking import is_continuation, mask_tokens, word_starts
from .shards import TokenShards

Batch = dict[str, Tensor]

# Token strings each role may have, BERT/WordPiece first, then RoBERTa/GPT-2 style.
_ROLE_TOKENS = {
    "pad": ("[PAD]", "<pad>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
    "eos": ("<|endoftext|>", "</s>", "[EOS]", "[SEP]"),
}
# Tags that keep the seeded random streams of one epoch apart.
_PAIRS, _ORDER, _MASKS = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class TokenIds:
    """Ids of the special tokens a task needs; ``None`` when the tokenizer lacks one."""

    vocab_size: int
    special: tuple[int, ...]  # every special id: never masked, never a random replacement
    pad: int | None = None
    cls: int | None = None
    sep: int | None = None
    mask: int | None = None
    eos: int | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, eos: int | None = None) -> TokenIds:
        """``eos``: the id the tokenizer's source names EOS (Llama 3: <|end_of_text|>), when known
        (``tokenizer.special_ids``); else the first of the usual names the vocabulary has."""
        roles: dict[str, int | None] = {}
        for role, names in _ROLE_TOKENS.items():
            found = [tokenizer.token_to_id(n) for n in names]
            roles[role] = next((i for i in found if i is not None), None)
        if eos is not None:
            roles["eos"] = eos
        special = tuple(sorted(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special))
        return cls(vocab_size=tokenizer.get_vocab_size(with_added_tokens=True), special=special, **roles)

    def require(self, task: str, *roles: str) -> None:
        missing = [r for r in roles if getattr(self, r) is None]
        if missing:
            wanted = "; ".join(f"{r}: one of {', '.join(_ROLE_TOKENS[r])}" for r in missing)
            raise PlmkitError(f"task {task} needs special tokens the tokenizer lacks ({wanted})")


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (SeedSequence hashes them well)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


# --------------------------------------------------------------------------- streams
class DocStream:
    """A split's documents back to back with ``sep`` after each, in *stream* coordinates.

    Both CLM blocks and packed MLM sequences are ranges of this stream; ``read`` maps a
    range back to the token memmap and puts the separators in.
    """

    def __init__(self, shards: TokenShards, sep: int):
        bounds = shards.doc_tokens  # [D, 2]
        self.tokens, self.sep = shards.tokens, sep
        self.tok_start = bounds[:, 0]
        self.lens = bounds[:, 1] - bounds[:, 0]
        self.start = np.concatenate([[0], np.cumsum(self.lens + 1)[:-1]]).astype(np.int64)
        self.length = int((self.lens + 1).sum())

    def read(self, a: int, b: int) -> np.ndarray:
        """Stream positions [a, b) as int64 token ids."""
        out, d = [], int(np.searchsorted(self.start, a, side="right")) - 1
        while a < b:
            s, n = int(self.start[d]), int(self.lens[d])
            hi = min(b, s + n)
            if a < hi:
                t0 = int(self.tok_start[d]) + a - s
                out.append(np.asarray(self.tokens[t0:t0 + hi - a], dtype=np.int64))
            if b > s + n:  # the range covers this document's separator
                out.append(np.array([self.sep], dtype=np.int64))
            a, d = s + n + 1, d + 1
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _pad_rows(rows: list[np.ndarray], seq_len: int, pad: int) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D id arrays to [B, seq_len]; returns (input_ids, attention_mask)."""
    ids = np.full((len(rows), seq_len), pad, dtype=np.int64)
    att = np.zeros((len(rows), seq_len), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        att[i, :len(r)] = 1
    return torch.from_numpy(ids), torch.from_numpy(att)


# --------------------------------------------------------------------------- example sets
class ExampleSet(Protocol):
    """Numbered examples of one epoch, collated without masking."""

    def start_epoch(self, seed: int, epoch: int) -> int:
        """Prepare ``epoch``; return its number of examples."""
        ...

    def collate(self, idx: np.ndarray) -> Batch:
        """Tensors for examples ``idx`` of the prepared epoch."""
        ...


class ClmBlocks:
    """GPT: the stream of documents joined by ``eos``, cut into blocks of ``seq_len``.

    No padding: the tail shorter than a block is dropped. ``labels`` = ``input_ids``
    (the LM head shifts). No token_type_ids (a decoder has no segments).
    """

    def __init__(self, shards: TokenShards, ids: TokenIds, seq_len: int):
        ids.require("clm", "eos")
        self.stream, self.seq_len = DocStream(shards, ids.eos), seq_len
        self.n = self.stream.length // seq_len
        if self.n == 0:
            raise PlmkitError(f"corpus split '{shards.split}' has {self.stream.length} tokens: "
                              f"smaller than one block of seq_len={seq_len}")

    def start_epoch(self, seed: int, epoch: int) -> int:
        return self.n

    def collate(self, idx: np.ndarray) -> Batch:
        rows = np.stack([self.stream.read(int(i) * self.seq_len, (int(i) + 1) * self.seq_len) for i in idx])
        ids = torch.from_numpy(rows)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class MlmPacked:
    """MLM only (RoBERTa FULL-SENTENCES): whole segments packed greedily into
    [CLS] ... [SEP] of at most ``seq_len``, crossing documents with a [SEP] between them.
    A segment longer than a sequence is split. The packing is fixed; the order and masks
    change per epoch."""

    def __init__(self, shards: TokenShards, ids: TokenIds, seq_len: int):
        ids.require("mlm", "cls", "sep", "pad", "mask")
        if seq_len < 3:
            raise PlmkitError(f"seq_len={seq_len} is too short for [CLS] text [SEP]")
        self.ids, self.seq_len = ids, seq_len
        self.stream = DocStream(shards, ids.sep)
        self.ranges = self._pack(shards, seq_len - 2)  # [E, 2] stream ranges
        if len(self.ranges) == 0:
            raise PlmkitError(f"corpus split '{shards.split}' is empty")

    def _pack(self, shards: TokenShards, cap: int) -> np.ndarray:
        first = int(shards.docs[0, 0])
        seg = np.asarray(shards.segments[first:int(shards.docs[-1, 1])])
        lens = seg[:, 1] - seg[:, 0]
        doc_last = shards.docs[:, 1] - 1 - first
        lens[doc_last] += 1  # a document's last segment carries the separator after it
        ends_doc = np.zeros(len(lens), dtype=bool)
        ends_doc[doc_last] = True
        out: list[tuple[int, int]] = []
        a = cur = 0
        closes_doc = False  # the open sequence ends with a document separator
        for n, at_end in zip(lens.tolist(), ends_doc.tolist()):
            if cur and cur + n - at_end > cap:  # the separator may be dropped at a sequence end
                out.append((a, a + cur - closes_doc))
                a, cur = a + cur, 0
            while n - at_end > cap:
                out.append((a, a + cap))
                a, n = a + cap, n - cap
            cur, closes_doc = cur + n, at_end
        if cur:
            out.append((a, a + cur - closes_doc))
        return np.array([r for r in out if r[1] > r[0]], dtype=np.int64).reshape(-1, 2)

    def start_epoch(self, seed: int, epoch: int) -> int:
        return len(self.ranges)

    def collate(self, idx: np.ndarray) -> Batch:
        cls, sep = self.ids.cls, self.ids.sep
        rows = [np.concatenate([[cls], self.stream.read(*self.ranges[int(i)]), [sep]]) for i in idx]
        ids, att = _pad_rows(rows, self.seq_len, self.ids.pad)
        return {"input_ids": ids, "attention_mask": att, "token_type_ids": torch.zeros_like(ids)}


def _truncate_pair(a0: int, a1: int, b0: int, b1: int, max_tokens: int,
                   rng: np.random.Generator) -> tuple[int, int, int, int]:
    """BERT's truncate_seq_pair on token ranges, in O(1).

    BERT drops one token at a time from the longer side (B on ties), from the front or
    the back by a fair coin. Equivalent: the longer side first loses the difference,
    then B and A alternate (B first); the number taken from the front is binomial.
    """
    la, lb = a1 - a0, b1 - b0
    excess = la + lb - max_tokens
    if excess <= 0:
        return a0, a1, b0, b1
    k = min(excess, abs(la - lb))
    rest = excess - k
    cut_a = (k if la > lb else 0) + rest // 2
    cut_b = (k if lb > la else 0) + rest - rest // 2
    fa, fb = int(rng.binomial(cut_a, 0.5)), int(rng.binomial(cut_b, 0.5))
    return a0 + fa, a1 - (cut_a - fa), b0 + fb, b1 - (cut_b - fb)


class SentencePairs:
    """NSP (BERT) or SOP (ALBERT) examples ``[CLS] A [SEP] B [SEP]``, re-drawn each epoch.

    Follows BERT's create_instances_from_document: a document's segments are gathered
    into chunks of a target length (``seq_len - 3``, or shorter with ``short_seq_prob``);
    A is a random number of leading segments of the chunk. NSP: B is the rest of the
    chunk, or with p=0.5 segments from a random *other* document (then the unused
    segments go back). SOP: B is always the rest; with p=0.5 A and B are swapped. A chunk
    of one segment is split inside the segment, so short-paragraph corpora still get
    true continuations (BERT would force a random B there, skewing the 50/50 split).
    """

    def __init__(self, shards: TokenShards, ids: TokenIds, seq_len: int, order: bool,
                 short_seq_prob: float = 0.1):
        task = "mlm+sop" if order else "mlm+nsp"
        ids.require(task, "cls", "sep", "pad", "mask")
        if seq_len < 5:
            raise PlmkitError(f"seq_len={seq_len} is too short for [CLS] A [SEP] B [SEP]")
        if not order and shards.n_docs < 2:
            raise PlmkitError(f"NSP needs at least 2 documents; split '{shards.split}' has {shards.n_docs}")
        self.ids, self.seq_len, self.order, self.short_seq_prob = ids, seq_len, order, short_seq_prob
        first = int(shards.docs[0, 0]) if shards.n_docs else 0
        self.seg = np.asarray(shards.segments[first:first + shards.n_segments])  # [S, 2] tokens
        self.docs = np.asarray(shards.docs) - first  # [D, 2] into self.seg
        self.tokens = shards.tokens
        self.split = shards.split
        self.epoch: int | None = None
        self.examples = np.zeros((0, 5), dtype=np.int64)  # rows: a0, a1, b0, b1, label

    def start_epoch(self, seed: int, epoch: int) -> int:
        if self.epoch != epoch:
            rng = np.random.default_rng([seed, epoch, _PAIRS])
            rows = [r for d in range(len(self.docs)) for r in self._document(d, rng)]
            self.examples = np.array(rows, dtype=np.int64).reshape(-1, 5)
            self.epoch = epoch
            if len(self.examples) == 0:
                raise PlmkitError(f"corpus split '{self.split}' yields no sentence pairs: it needs "
                                  "documents of at least 2 tokens")
        return len(self.examples)

    def _document(self, d: int, rng: np.random.Generator) -> Iterator[tuple[int, ...]]:
        max_tokens = self.seq_len - 3
        target = max_tokens
        if rng.random() < self.short_seq_prob:
            target = int(rng.integers(2, max_tokens + 1))
        first, last = (int(x) for x in self.docs[d])
        start, length, i = first, 0, first
        while i < last:
            length += int(self.seg[i, 1] - self.seg[i, 0])
            if i == last - 1 or length >= target:
                row, used = self._pair(d, start, i + 1, target, rng)
                if row is not None:
                    yield _truncate_pair(*row[:4], max_tokens, rng) + (row[4],)
                i = start + used - 1  # segments A did not use start the next chunk
                start, length = i + 1, 0
            i += 1

    def _pair(self, d: int, c0: int, c1: int, target: int,
              rng: np.random.Generator) -> tuple[tuple[int, ...] | None, int]:
        """One example from the chunk of segments [c0, c1); returns (row, segments used)."""
        n = c1 - c0
        a_end = c0 + (int(rng.integers(1, n)) if n >= 2 else 1)
        a0, a1 = int(self.seg[c0, 0]), int(self.seg[a_end - 1, 1])
        if not self.order and rng.random() < 0.5:
            b0, b1 = self._random_b(d, target - (a1 - a0), rng)
            return (a0, a1, b0, b1, 1), a_end - c0
        b1 = int(self.seg[c1 - 1, 1])
        if n == 1:  # split inside the only segment
            if a1 - a0 < 2:
                return None, n
            a1 = a0 + int(rng.integers(1, a1 - a0))
        b0 = a1
        if self.order and rng.random() < 0.5:
            return (b0, b1, a0, a1, 1), n
        return (a0, a1, b0, b1, 0), n

    def _random_b(self, d: int, target_b: int, rng: np.random.Generator) -> tuple[int, int]:
        """Consecutive segments of a random other document, from a random one, to ``target_b`` tokens."""
        other = int(rng.integers(len(self.docs) - 1))
        other += other >= d
        first, last = (int(x) for x in self.docs[other])
        j = int(rng.integers(first, last))
        b0 = int(self.seg[j, 0])
        while j < last - 1 and self.seg[j, 1] - b0 < target_b:
            j += 1
        return b0, int(self.seg[j, 1])

    def collate(self, idx: np.ndarray) -> Batch:
        cls, sep = self.ids.cls, self.ids.sep
        rows, types, labels = [], [], []
        for a0, a1, b0, b1, label in self.examples[idx]:
            rows.append(np.concatenate([[cls], self.tokens[a0:a1], [sep], self.tokens[b0:b1], [sep]]))
            types.append(a1 - a0 + 2)  # [CLS] A [SEP] have segment id 0; B [SEP] 1
            labels.append(label)
        ids, att = _pad_rows(rows, self.seq_len, self.ids.pad)
        tt = torch.zeros_like(ids)
        for i, (n_a, row) in enumerate(zip(types, rows)):
            tt[i, n_a:len(row)] = 1
        return {"input_ids": ids, "attention_mask": att, "token_type_ids": tt,
                "next_sentence_label": torch.tensor(labels, dtype=torch.long)}


# --------------------------------------------------------------------------- masking, sources
class MlmMasker:
    """Adds ``labels`` and masks ``input_ids`` of a collated batch (dynamic masking)."""

    def __init__(self, ids: TokenIds, mlm_prob: float = 0.15, mask_frac: float = 0.8,
                 random_frac: float = 0.1, continuation: Tensor | None = None):
        self.ids, self.rates = ids, (mlm_prob, mask_frac, random_frac)
        self.special = torch.zeros(ids.vocab_size, dtype=torch.bool)  # [V]
        self.special[torch.tensor(ids.special, dtype=torch.long)] = True
        self.continuation = continuation  # [V] bool: whole-word masking when given

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        ids = batch["input_ids"]
        starts = None if self.continuation is None else word_starts(ids, self.continuation)
        mlm_prob, mask_frac, random_frac = self.rates
        batch["input_ids"], batch["labels"] = mask_tokens(
            ids, self.special[ids], self.ids.vocab_size, self.ids.mask, generator, mlm_prob=mlm_prob,
            mask_frac=mask_frac, random_frac=random_frac, word_starts=starts, special_ids=self.ids.special)
        return batch


class PretrainBatches:
    """Batches of an ``ExampleSet`` with exact resume and rank sharding
    (a ``plmkit.train.source.BatchSource``).

    Global batch ``g`` of an epoch holds examples ``order[g*B:(g+1)*B]`` (order: a
    permutation seeded by (seed, epoch), or the identity when ``shuffle`` is off); rank
    ``r`` of ``w`` takes the batches with ``g % w == r``. Each epoch has the same number
    of batches on every rank (the last incomplete batch and the last ``< w`` batches are
    dropped), so DDP ranks stay in step. Masks come from a generator seeded by
    (seed, epoch, g), so they do not depend on the rank layout or on resuming.

    ``loop=True`` (training): iteration never ends, epochs follow each other.
    ``loop=False`` (evaluation): each ``iter()`` yields the rest of the current epoch
    and then rewinds to its start, so every pass sees the same batches.
    """

    def __init__(self, examples: ExampleSet, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, loop: bool = True,
                 masker: Callable[[Batch, torch.Generator], Batch] | None = None, name: str = ""):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise PlmkitError(f"bad batching: batch_size={batch_size} rank={rank} world_size={world_size}")
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.loop = rank, world_size, shuffle, loop
        self.masker, self.name = masker, name
        self.epoch = 0
        self.position = 0  # next global batch index of this epoch handed to rank 0
        n = examples.start_epoch(seed, 0)
        if self._n_batches(n) == 0:
            raise PlmkitError(f"corpus too small: {n} example(s), but one step needs batch_size x "
                              f"world_size = {batch_size * world_size}")

    def _n_batches(self, n_examples: int) -> int:
        """Global batches per epoch, a multiple of world_size."""
        return n_examples // self.batch_size // self.world_size * self.world_size

    def __len__(self) -> int:
        """Batches per epoch on this rank, for the current epoch (NSP/SOP epochs differ slightly)."""
        return self._n_batches(self.examples.start_epoch(self.seed, self.epoch)) // self.world_size

    def _order(self, n: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch, _ORDER]).permutation(n)

    def _batch(self, order: np.ndarray, g: int) -> Batch:
        batch = self.examples.collate(order[g * self.batch_size:(g + 1) * self.batch_size])
        if self.masker is not None:
            gen = torch.Generator().manual_seed(_seed(self.seed, self.epoch, _MASKS, g))
            batch = self.masker(batch, gen)
        return batch

    def __iter__(self) -> Iterator[Batch]:
        while True:
            n = self.examples.start_epoch(self.seed, self.epoch)
            total, order = self._n_batches(n), self._order(n)
            while self.position < total:
                batch = self._batch(order, self.position + self.rank)
                self.position += self.world_size  # before yield: state_dict() now means "after this batch"
                yield batch
            self.position = 0
            if not self.loop:
                return
            self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "epoch": self.epoch, "position": self.position,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly after the last batch the saver handed out. The world size may
        change (positions count global batches); seed, batch size and task may not."""
        for key in ("name", "seed", "batch_size"):
            if state.get(key) != getattr(self, key):
                raise PlmkitError(f"cannot resume data position: {key} was {state.get(key)!r}, "
                                  f"now {getattr(self, key)!r}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.position -= self.position % self.world_size  # a world-size change: keep ranks aligned


def _clm(shards: TokenShards, ids: TokenIds, seq_len: int, short_seq_prob: float) -> ExampleSet:
    return ClmBlocks(shards, ids, seq_len)


def _mlm(shards: TokenShards, ids: TokenIds, seq_len: int, short_seq_prob: float) -> ExampleSet:
    return MlmPacked(shards, ids, seq_len)


def _nsp(shards: TokenShards, ids: TokenIds, seq_len: int, short_seq_prob: float) -> ExampleSet:
    return SentencePairs(shards, ids, seq_len, order=False, short_seq_prob=short_seq_prob)


def _sop(shards: TokenShards, ids: TokenIds, seq_len: int, short_seq_prob: float) -> ExampleSet:
    return SentencePairs(shards, ids, seq_len, order=True, short_seq_prob=short_seq_prob)


# Task name (as in PlmModel.task) -> example set builder. "text": MLM's packed sequences, unmasked
# (general distillation: teacher and student read the text as fine-tuning will show it).
EXAMPLE_SETS: dict[str, Callable[[TokenShards, TokenIds, int, float], ExampleSet]] = {
    "mlm": _mlm, "mlm+nsp": _nsp, "mlm+sop": _sop, "clm": _clm, "text": _mlm, "rtd": _mlm,
}
MASKED = ("mlm", "mlm+nsp", "mlm+sop", "rtd")   # tasks whose batches are masked (ELECTRA's generator reads MLM's)


def make_batch_source(task: str, shards: TokenShards, tokenizer: Tokenizer, *, seq_len: int,
                      batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                      shuffle: bool = True, loop: bool = True, short_seq_prob: float = 0.1,
                      mlm_prob: float = 0.15, mask_frac: float = 0.8, random_frac: float = 0.1,
                      whole_word: bool = False, eos: int | None = None) -> PretrainBatches:
    """The batch source for a pre-training ``task`` ("mlm", "mlm+nsp", "mlm+sop", "clm", "rtd", "text");
    ``eos`` as in ``TokenIds.from_tokenizer``."""
    if task not in EXAMPLE_SETS:
        raise PlmkitError(f"unknown pre-training task {task!r} (choose from {', '.join(EXAMPLE_SETS)})")
    ids = TokenIds.from_tokenizer(tokenizer, eos)
    examples = EXAMPLE_SETS[task](shards, ids, seq_len, short_seq_prob)
    masker = None
    if task in MASKED:
        continuation = None
        if whole_word:
            prefix = getattr(tokenizer.model, "continuing_subword_prefix", None) or "##"
            continuation = is_continuation(tokenizer.get_vocab(with_added_tokens=True), prefix)
        masker = MlmMasker(ids, mlm_prob, mask_frac, random_frac, continuation)
    return PretrainBatches(examples, batch_size, seed=seed, rank=rank, world_size=world_size,
                       shuffle=shuffle, loop=loop, masker=masker, name=task)
