"""Train a BERT WordPiece or a GPT-2 byte-level BPE tokenizer with HF ``tokenizers``.

Two pipelines, one registry (kind -> spec):

* ``wordpiece`` (BERT): BertNormalizer (clean text, CJK characters split unless told not to,
  lowercase + strip accents), BertPreTokenizer, a WordPiece model (greedy longest-match, "##" continuation
  pieces) trained by ``trainers.WordPieceTrainer``, WordPiece decoder, and a
  TemplateProcessing post-processor ``[CLS] A [SEP] (B [SEP])`` with segment ids 0/1.
  Special tokens first, so [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.
  (Like every HF WordPiece, the trainer picks its vocabulary by BPE-style pair counts; the
  model type, "##" pieces and inference are WordPiece.)
* ``bpe`` (GPT-2): ByteLevel pre-tokenizer (add_prefix_space=False, the GPT-2 regex) and
  decoder over a BPE model seeded with the 256-byte alphabet, so there is no [UNK] and
  ``decode(encode(x)) == x``. Specials: <|endoftext|>=0 (and <|pad|>=1 when asked).

The corpus is streamed line by line in batches through ``train_from_iterator``; memory
holds a few batches of lines (at most ~1 M characters each; a line over 64 KiB comes in
pieces, since the trainer buffers 256 sequences ahead) plus the trainer's word counts, never a
whole file.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from ..errors import PlmkitError
from ..data.corpus import check_text_files, iter_lines

BERT_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                 "sep_token": "[SEP]", "mask_token": "[MASK]"}
GPT_EOS = "<|endoftext|>"
GPT_PAD = "<|pad|>"

_BATCH_LINES = 1000  # lines per batch handed to the Rust trainer ...
_BATCH_CHARS = 1 << 20  # ... and at most about this many characters


def bert_pipeline(tok: Tokenizer, lowercase: bool, split_cjk: bool = True) -> None:
    """Set BERT's normaliser, pre-tokeniser and decoder on ``tok`` (model already set).

    ``split_cjk``: BERT's rule, every CJK character a word of its own. Without it, a run of Chinese
    or Japanese characters between punctuation is one pre-token, so the trainer learns multi-character
    pieces (words: 失望, 不错) that the PPMI start and a small model use better (benchmarks/RESULTS.md).
    """
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=split_cjk,
                                                strip_accents=lowercase, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")


def bert_post_processor(tok: Tokenizer) -> None:
    """``[CLS] A [SEP]`` for one text, ``[CLS] A [SEP] B [SEP]`` (B and its [SEP] in segment 1) for pairs."""
    cls, sep = BERT_SPECIALS["cls_token"], BERT_SPECIALS["sep_token"]
    ids = {t: tok.token_to_id(t) for t in (cls, sep)}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise PlmkitError(f"tokenizer vocabulary lacks {', '.join(missing)}")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, ids[cls]), (sep, ids[sep])])


def gpt_pipeline(tok: Tokenizer, lowercase: bool) -> None:
    """GPT-2's byte-level pipeline (no normaliser unless lowercasing was asked for)."""
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False like GPT-2: offsets cover the leading space ("Ġ") of a word.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)


@dataclass(frozen=True)
class TrainOptions:
    vocab_size: int
    lowercase: bool
    min_frequency: int
    limit_alphabet: int | None  # keep at most this many initial characters (None: all)
    bpe_pad: bool  # bpe only: add <|pad|>
    show_progress: bool
    split_cjk: bool = True  # wordpiece only: each CJK character its own word (BERT's rule)


def _wordpiece(o: TrainOptions) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.WordPiece(unk_token=BERT_SPECIALS["unk_token"], max_input_chars_per_word=100))
    bert_pipeline(tok, o.lowercase, o.split_cjk)
    # The trainer takes "no limit" as an absent argument, not None.
    limit = {} if o.limit_alphabet is None else {"limit_alphabet": o.limit_alphabet}
    trainer = trainers.WordPieceTrainer(
        vocab_size=o.vocab_size, min_frequency=o.min_frequency, show_progress=o.show_progress,
        special_tokens=list(BERT_SPECIALS.values()), continuing_subword_prefix="##",
        **limit)
    return tok, trainer


def _bpe(o: TrainOptions) -> tuple[Tokenizer, trainers.Trainer]:
    if o.limit_alphabet is not None:
        raise PlmkitError("--limit-alphabet applies to wordpiece only: byte-level BPE needs all 256 bytes")
    specials = [GPT_EOS] + ([GPT_PAD] if o.bpe_pad else [])
    if o.vocab_size < 256 + len(specials):
        raise PlmkitError(f"--vocab-size {o.vocab_size} is too small for byte-level BPE "
                          f"(needs at least 256 bytes + {len(specials)} special tokens)")
    tok = Tokenizer(models.BPE())  # byte-level: every byte is in the alphabet, so no unk token
    gpt_pipeline(tok, o.lowercase)
    trainer = trainers.BpeTrainer(
        vocab_size=o.vocab_size, min_frequency=o.min_frequency, show_progress=o.show_progress,
        special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return tok, trainer


@dataclass(frozen=True)
class KindSpec:
    build: Callable[[TrainOptions], tuple[Tokenizer, trainers.Trainer]]
    lowercase: bool  # default when the caller does not say
    finish: Callable[[Tokenizer], None] | None  # runs after training (needs final ids)


KINDS: dict[str, KindSpec] = {
    "wordpiece": KindSpec(_wordpiece, lowercase=True, finish=bert_post_processor),
    "bpe": KindSpec(_bpe, lowercase=False, finish=None),
}


def default_lowercase(kind: str) -> bool:
    return _spec(kind).lowercase


def _spec(kind: str) -> KindSpec:
    if kind not in KINDS:
        raise PlmkitError(f"unknown tokenizer kind '{kind}' (known: {', '.join(KINDS)})")
    return KINDS[kind]


def iter_line_batches(paths: Iterable[str | Path], batch_lines: int = _BATCH_LINES,
                      batch_chars: int = _BATCH_CHARS) -> Iterator[list[str]]:
    """Yield batches of non-blank lines (newline stripped) from UTF-8 files, one file after another.

    A batch holds at most ``batch_lines`` lines and stops growing past ``batch_chars``
    characters; a line longer than ``corpus.MAX_PIECE_BYTES`` comes in pieces (cut after a
    space), so one huge line costs no more memory than many short ones.
    """
    batch: list[str] = []
    chars = 0
    for path in paths:
        for _, line in iter_lines(path):
            if line.strip():
                batch.append(line)
                chars += len(line)
                if len(batch) >= batch_lines or chars >= batch_chars:
                    yield batch
                    batch, chars = [], 0
    if batch:
        yield batch


def count_sequences(paths: Iterable[str | Path]) -> int:
    """How many sequences ``iter_line_batches`` yields: the length of the progress bar."""
    return sum(len(b) for b in iter_line_batches(paths))


def progress_enabled() -> bool:
    return sys.stderr.isatty() and os.environ.get("PLMKIT_QUIET") != "1"


def train_tokenizer(files: Iterable[str | Path], kind: str = "wordpiece", vocab_size: int = 30000,
                    lowercase: bool | None = None, min_frequency: int = 2,
                    limit_alphabet: int | None = None, bpe_pad: bool = True,
                    show_progress: bool | None = None, split_cjk: bool = True) -> Tokenizer:
    """Train a tokenizer of ``kind`` ("wordpiece" or "bpe") on UTF-8 text files.

    ``lowercase=None`` means the kind's default: True for wordpiece (uncased BERT), False for
    bpe (GPT-2 is cased). ``split_cjk=False`` (wordpiece): pieces may span CJK characters (words);
    byte-level BPE never splits them. Files are validated first (``check_text_files``); bad input raises
    ``PlmkitError`` before any training.
    """
    spec = _spec(kind)
    if vocab_size < len(BERT_SPECIALS) + 1:
        raise PlmkitError(f"--vocab-size must be larger than the special tokens, got {vocab_size}")
    if min_frequency < 1:
        raise PlmkitError(f"--min-frequency must be >= 1, got {min_frequency}")
    if limit_alphabet is not None and limit_alphabet < 1:
        raise PlmkitError(f"--limit-alphabet must be >= 1, got {limit_alphabet}")
    opts = TrainOptions(vocab_size=vocab_size, min_frequency=min_frequency, limit_alphabet=limit_alphabet,
                        lowercase=spec.lowercase if lowercase is None else lowercase, bpe_pad=bpe_pad,
                        split_cjk=split_cjk,
                        show_progress=progress_enabled() if show_progress is None else show_progress)
    tok, trainer = spec.build(opts)  # option errors before the (possibly long) file scan
    paths = check_text_files(files)
    # The trainer's progress bar needs the number of sequences up front (else "N / 0"): one
    # counting pass, only when the bar is shown.
    length = count_sequences(paths) if opts.show_progress else None
    tok.train_from_iterator(iter_line_batches(paths), trainer=trainer, length=length)
    if spec.finish is not None:
        spec.finish(tok)
    return tok
