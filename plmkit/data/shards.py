"""Tokenised corpus cache: one flat array of token ids plus segment and document indices.

Layout of a shard directory (all little-endian raw arrays, described by ``meta.json``)::

    tokens.bin    [N]    uint16 (vocab <= 65536) or uint32   token ids, no special tokens
    segments.bin  [S, 2] int64   [start, end) into tokens, one row per segment (line)
    docs.bin      [D, 2] int64   [first, last + 1) into segments, one row per document
    meta.json     counts, dtype, the split point, what the cache key was made of

Segments of a document are contiguous in ``tokens`` and documents follow each other, so
any run of consecutive segments or documents is one contiguous token slice. The last
``val_fraction`` of documents (at least one) is the validation split, or the last ``val_fraction``
of the lines when documents are too few for that (``val_split``: a one-sentence-per-line file).

The directory name is a hash of (file paths, sizes, mtimes; tokenizer.json; settings), so
a rerun with the same inputs reuses it and any change builds a new one. It is written
into a temporary sibling and renamed into place, so a half-written cache is never seen.
Tokenisation uses ``Tokenizer.encode_batch`` on chunks of a few MB of text: it runs in
Rust threads (no pickling, unlike a process pool; ~2x faster than ``encode`` on 2 cores)
and the chunking keeps memory bounded, whatever the corpus size.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from ..errors import PlmkitError
from ..io import atomic_dir, read_json, write_json
from .corpus import check_text_files, iter_segments

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNK_CHARS = 4_000_000  # text per encode_batch call: bounds memory, keeps all threads busy
SPLITS = ("train", "val")


@dataclasses.dataclass(frozen=True)
class TokenShards:
    """One split of a shard directory. ``tokens``/``segments`` cover every split (memmaps);
    ``docs`` holds only this split's documents, so all lookups go through it."""

    tokens: np.ndarray  # [N] uint16|uint32
    segments: np.ndarray  # [S, 2] int64 token [start, end)
    docs: np.ndarray  # [D, 2] int64 segment [first, last + 1), this split only
    vocab_size: int
    split: str
    path: Path

    @property
    def n_docs(self) -> int:
        return len(self.docs)

    @property
    def n_segments(self) -> int:
        return int(self.docs[-1, 1] - self.docs[0, 0]) if self.n_docs else 0

    @property
    def doc_tokens(self) -> np.ndarray:
        """[D, 2] int64 token [start, end) of each document of this split."""
        if not self.n_docs:
            return np.zeros((0, 2), dtype=np.int64)
        return np.stack([self.segments[self.docs[:, 0], 0], self.segments[self.docs[:, 1] - 1, 1]], 1)

    @property
    def n_tokens(self) -> int:
        bounds = self.doc_tokens
        return int(bounds[-1, 1] - bounds[0, 0]) if len(bounds) else 0

    def doc_segments(self, d: int) -> np.ndarray:
        """[k, 2] token ranges of the segments of document ``d`` (index within this split)."""
        first, last = self.docs[d]
        return np.asarray(self.segments[first:last])


def _progress(total: int, desc: str) -> tqdm:
    quiet = os.environ.get("PLMKIT_QUIET") == "1" or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=quiet)


def shard_key(paths: Sequence[Path], tokenizer: Tokenizer, settings: dict) -> str:
    """Cache key: what the output depends on. Files by (path, size, mtime) so a hit costs no
    read; the tokenizer by the hash of its tokenizer.json text."""
    files = []
    for p in paths:
        st = Path(p).stat()
        files.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    tok_hash = hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()
    blob = json.dumps({"v": FORMAT_VERSION, "files": files, "tokenizer": tok_hash, "settings": settings},
                      sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def _encode(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    # encode_batch_fast (tokenizers >= 0.20) skips offset tracking, which we do not need.
    fn = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return [e.ids for e in fn(texts, add_special_tokens=False)]


class _Writer:
    """Appends tokenised segments to the three raw files; counts what it wrote.

    A document may span several chunks, so its row is written once the next one starts.
    """

    def __init__(self, out: Path, dtype: np.dtype):
        self.dtype = dtype
        self.files: dict[str, BinaryIO] = {n: open(out / f"{n}.bin", "wb") for n in ("tokens", "segments", "docs")}
        self.n_tokens = self.n_segments = self.n_docs = 0
        self.open_doc, self.open_first = -1, 0  # number and first segment of the open document

    def add(self, ids: list[list[int]], doc_of: list[int]) -> None:
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        self.files["tokens"].write(np.fromiter((t for x in ids for t in x), dtype=self.dtype,
                                               count=int(lens.sum())).tobytes())
        keep = lens > 0  # a segment can tokenise to nothing (e.g. only control characters)
        kept, docs = lens[keep], np.asarray(doc_of, dtype=np.int64)[keep]
        ends = self.n_tokens + np.cumsum(kept)
        self.files["segments"].write(np.stack([ends - kept, ends], 1).astype(np.int64).tobytes())
        # Runs of equal document numbers; a new number closes the open document.
        for i in np.flatnonzero(np.diff(docs, prepend=self.open_doc)):
            self._close_doc(self.n_segments + int(i))
            self.open_doc, self.open_first = int(docs[i]), self.n_segments + int(i)
        self.n_tokens += int(lens.sum())
        self.n_segments += len(kept)

    def _close_doc(self, end: int) -> None:
        """Write the open document's row, [first, end) segments (a document left with no
        non-empty segment never opens)."""
        if end > self.open_first:
            self.files["docs"].write(np.array([self.open_first, end], dtype=np.int64).tobytes())
            self.n_docs += 1
            self.open_first = end

    def close(self) -> None:
        self._close_doc(self.n_segments)
        for f in self.files.values():
            f.close()


def _tokenise(files: list[Path], tokenizer: Tokenizer, out: Path, doc_per_file: bool,
              dtype: np.dtype, chunk_chars: int, suffix: str) -> _Writer:
    writer = _Writer(out, dtype)
    texts: list[str] = []
    doc_of: list[int] = []
    chars = 0
    bar = _progress(sum(p.stat().st_size for p in files), "tokenising")
    try:
        for doc, seg in iter_segments(files, doc_per_file):
            texts.append(seg + suffix)
            doc_of.append(doc)
            chars += len(seg) + 1
            if chars >= chunk_chars:
                writer.add(_encode(tokenizer, texts), doc_of)
                bar.update(chars)
                texts, doc_of, chars = [], [], 0
        if texts:
            writer.add(_encode(tokenizer, texts), doc_of)
            bar.update(chars)
    finally:
        writer.close()
        bar.close()
    return writer


def build_shards(paths: Iterable[str | Path], tokenizer: Tokenizer, cache_root: str | Path, *,
                 doc_per_file: bool = False, val_fraction: float = 0.01, newlines: bool = False,
                 chunk_chars: int = CHUNK_CHARS) -> Path:
    """Tokenise ``paths`` into a cached shard directory under ``cache_root``; return it.

    ``newlines`` encodes each segment with its line break: for byte-level BPE (GPT-2,
    CLM), where lines would otherwise run together (``end.Next``). WordPiece drops it.

    Reuses an existing directory for the same inputs. With several processes (DDP), call it
    on rank 0 first and on the others after a barrier, so only one of them tokenises.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise PlmkitError(f"val_fraction must be in [0, 1), got {val_fraction}")
    files = check_text_files(paths, full=False)  # the key needs their stat()
    # "split": the hold-out rule's version (val_split), so caches made under another rule are not reused
    settings = {"doc_per_file": doc_per_file, "val_fraction": val_fraction, "newlines": newlines, "split": 2}
    out = Path(cache_root) / f"shards-{shard_key(files, tokenizer, settings)}"
    if (out / "meta.json").is_file():
        log.info("reusing cached shards in %s", out)
        return out
    check_text_files(files)  # fail on a bad file before spending time on the others
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    log.info("tokenising %d file(s) into %s", len(files), out)
    with atomic_dir(out, overwrite=True) as tmp:
        w = _tokenise(files, tokenizer, tmp, doc_per_file, dtype, chunk_chars, "\n" if newlines else "")
        if w.n_tokens == 0:
            raise PlmkitError(f"corpus produced no tokens: {', '.join(map(str, files))}")
        docs = np.fromfile(tmp / "docs.bin", dtype=np.int64).reshape(-1, 2)
        docs, n_train = val_split(docs, val_fraction)
        docs.tofile(tmp / "docs.bin")
        write_json(tmp / "meta.json", {
            "format_version": FORMAT_VERSION, "dtype": dtype.name, "vocab_size": vocab_size,
            "n_tokens": w.n_tokens, "n_segments": w.n_segments, "n_docs": len(docs),
            "n_train_docs": n_train, "settings": settings,
            "files": [str(p.resolve()) for p in files]})
    log.info("wrote %d tokens, %d segments, %d documents", w.n_tokens, w.n_segments, w.n_docs)
    return out


def val_split(docs: np.ndarray, val_fraction: float) -> tuple[np.ndarray, int]:
    """(documents, number of training documents): the last ``val_fraction`` of documents (at least
    one) are held out, unless they hold more than twice that share of the segments (lines) and more
    than a twentieth of them: a one-sentence-per-line file without blank lines is one document, and
    the last of a few big documents can be most of the text. Then the last ``val_fraction`` of the segments is held out
    instead, the document they start in split in two at a segment boundary.

    docs [D, 2] segment [first, last + 1) rows, contiguous from 0."""
    n_docs = len(docs)
    if val_fraction == 0:
        return docs, n_docs
    n_segments = int(docs[-1, 1])
    want = max(1, round(n_segments * val_fraction))                 # segments to hold out
    n_val = max(1, round(n_docs * val_fraction))
    if n_docs - n_val >= 1 and n_segments - int(docs[n_docs - n_val, 0]) <= max(2 * want, n_segments // 20):
        return docs, n_docs - n_val
    cut = n_segments - want                                         # the first held-out segment
    if cut < 1:
        raise PlmkitError(f"corpus has {n_segments} line(s) of text: too few to hold out a validation split "
                          "(add text, or pass --val-fraction 0)")
    d = int(np.searchsorted(docs[:, 1], cut, side="right"))         # the document segment `cut` is in
    if int(docs[d, 0]) == cut:
        return docs, d
    halves = np.array([[docs[d, 0], cut], [cut, docs[d, 1]]], dtype=np.int64)
    return np.concatenate([docs[:d], halves, docs[d + 1:]]), d + 1


def _memmap(path: Path, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if shape[0] == 0:  # mmap cannot map an empty file
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def open_shards(shard_dir: str | Path, split: str = "train") -> TokenShards:
    """Open one split (``train`` or ``val``) of a shard directory, memory-mapped."""
    shard_dir = Path(shard_dir)
    if split not in SPLITS:
        raise PlmkitError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    meta = read_json(shard_dir / "meta.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise PlmkitError(f"{shard_dir}: shard format {meta.get('format_version')} is not {FORMAT_VERSION}; "
                          "delete the cache to rebuild it")
    tokens = _memmap(shard_dir / "tokens.bin", meta["dtype"], (meta["n_tokens"],))
    segments = _memmap(shard_dir / "segments.bin", "int64", (meta["n_segments"], 2))
    docs = _memmap(shard_dir / "docs.bin", "int64", (meta["n_docs"], 2))
    cut = meta["n_train_docs"]
    docs = np.asarray(docs[:cut] if split == "train" else docs[cut:])
    return TokenShards(tokens=tokens, segments=segments, docs=docs, vocab_size=meta["vocab_size"],
                       split=split, path=shard_dir)


def _token_chunks(shards: TokenShards, chunk: int) -> Iterator[np.ndarray]:
    """This split's tokens, read from the memmap ``chunk`` at a time."""
    if not shards.n_docs:
        return
    bounds = shards.doc_tokens
    a, b = int(bounds[0, 0]), int(bounds[-1, 1])
    for i in range(a, b, chunk):
        yield np.asarray(shards.tokens[i:min(b, i + chunk)])


def token_share(shards: TokenShards, token_id: int, chunk: int = 1 << 24) -> float:
    """The fraction of this split's tokens that are ``token_id`` (e.g. the unknown token: how much
    of a corpus the tokenizer cannot read), counted in chunks of the memmap."""
    hits = sum(int(np.count_nonzero(part == token_id)) for part in _token_chunks(shards, chunk))
    return hits / max(1, shards.n_tokens)


def token_counts(shards: TokenShards, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """[vocab_size] float64: how often each token id occurs in this split, counted in chunks."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    for part in _token_chunks(shards, chunk):
        counts += np.bincount(part, minlength=vocab_size)[:vocab_size]
    return counts
