"""Train a WordPiece (BERT) or byte-level BPE (GPT) tokenizer on raw UTF-8 text files.

Writes DIR/tokenizer.json, tokenizer_config.json, special_tokens_map.json (loadable by
transformers' AutoTokenizer) and plmkit_tokenizer.yaml (the resolved options, reusable
with --config). Inputs are checked before training; nothing is written on error.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import __version__
from ..config import dump_yaml, option
from ..data.corpus import check_text_files
from ..errors import PlmkitError
from ..io import atomic_dir, atomic_write_text, check_out_dir
from ..tokenizer.load import save_tokenizer
from ..tokenizer.train import KINDS, default_lowercase, train_tokenizer


@dataclass
class Config:
    corpus: list[str] = option(help="UTF-8 text files to train on")
    out: str = option(help="output directory")
    kind: str = option("wordpiece", help="wordpiece (BERT) or bpe (byte-level, GPT-2)", choices=list(KINDS))
    vocab_size: int = option(30000, help="target vocabulary size, special tokens included")
    lowercase: bool | None = option(None, help="lowercase (wordpiece: and strip accents); "
                                               "default: on for wordpiece, off for bpe")
    min_frequency: int = option(2, help="a merge must occur at least this often")
    limit_alphabet: int | None = option(None, help="keep at most this many initial characters "
                                                   "(default: all characters seen)")
    bpe_pad: bool = option(True, help="bpe: add a <|pad|> token (GPT-2 has none)")
    split_cjk: bool = option(True, help="wordpiece: each Chinese/Japanese character is a word of its own "
                             "(BERT's rule); --no-split-cjk learns multi-character pieces (words)")
    model_max_length: int | None = option(None, help="max sequence length recorded for transformers "
                                                     "(default: 512 wordpiece, 1024 bpe)")
    overwrite: bool = option(False, help="replace an existing output directory")


def check_inputs(cfg: Config, pending: Callable[[str], bool]) -> None:
    """``plmkit run`` calls this before any stage: the corpus files are UTF-8 text."""
    ready = [p for p in cfg.corpus if not pending(p)]
    if ready:
        check_text_files(ready)


def run(cfg: Config) -> int:
    check_out_dir(cfg.out, cfg.overwrite)  # fail before a long training run, not after
    if not cfg.split_cjk and cfg.kind != "wordpiece":
        raise PlmkitError("--no-split-cjk is for --kind wordpiece (byte-level BPE never splits characters)")
    if cfg.lowercase is None:
        cfg = dataclasses.replace(cfg, lowercase=default_lowercase(cfg.kind))
    start = time.perf_counter()
    tok = train_tokenizer(cfg.corpus, kind=cfg.kind, vocab_size=cfg.vocab_size, lowercase=cfg.lowercase,
                          min_frequency=cfg.min_frequency, limit_alphabet=cfg.limit_alphabet,
                          bpe_pad=cfg.bpe_pad, split_cjk=cfg.split_cjk)
    seconds = time.perf_counter() - start
    size = tok.get_vocab_size()
    mb = sum(Path(p).stat().st_size for p in cfg.corpus) / 1e6
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        save_tokenizer(tok, tmp, cfg.kind, cfg.model_max_length)
        header = (f"# plmkit {__version__} tokenizer train: {cfg.kind}, vocab {size}, "
                  f"{seconds:.1f} s on {mb:.1f} MB\n")
        atomic_write_text(tmp / "plmkit_tokenizer.yaml", header + dump_yaml(cfg))
    print(f"trained {cfg.kind} tokenizer: vocab {size} in {seconds:.1f} s "
          f"({len(cfg.corpus)} file(s), {mb:.1f} MB) -> {cfg.out}")
    if size > cfg.vocab_size:
        print(f"note: vocabulary is larger than --vocab-size {cfg.vocab_size}: the corpus has more "
              "distinct characters than that; --limit-alphabet caps them")
    elif size < cfg.vocab_size:
        print(f"note: vocabulary is smaller than --vocab-size {cfg.vocab_size}: "
              "the corpus has no more merges at --min-frequency")
    return 0
