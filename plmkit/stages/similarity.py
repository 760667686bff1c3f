"""Contextual-embedding cosine similarity of one word across sentences (fruit vs company "apple").

Reads top to bottom: the sentences (default: the shipped apple/Apple example) -> model and
tokenizer -> the word's vector in each sentence at every layer (the mean of its sub-word
vectors; plmkit/analysis/similarity.py) -> cosine matrices -> files in --out:

    similarity.json  {"word", "sentences", "layers": {"0": [[...]], ..., "L": [[...]]},
                      "static_layer": 0, "contextual_layer": l}   (every layer 0..L is included)
    similarity.svg   static (layer 0) and contextual (--layer) heatmaps side by side
    similarity.yaml  the resolved config

and the two matrices as a table on stdout. A sentence without the word is an error naming its
file:line, before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..analysis.embed import load_for_analysis
from ..analysis.similarity import (DEFAULT_SENTENCES, first_without, format_table, read_sentences,
                                   similarity_result, similarity_svg)
from ..config import dump_yaml, option
from ..errors import InputError
from ..io import atomic_dir, atomic_write_text, check_out_dir, write_json


@dataclass
class Config:
    model: str = option(help="model directory (plmkit checkpoint or local HF BERT/GPT-2)")
    word: str = option("apple", help="the word to follow (whole word, case-insensitive)")
    sentences: str | None = option(None, help="text file, one sentence per line, each containing the word "
                                   "(default: the shipped apple fruit / Apple company sentences)")
    layer: int = option(-1, help="the contextual layer shown beside layer 0 (1..L, -1 = last)")
    out: str = option("similarity", help="output directory")
    overwrite: bool = option(False, help="replace an existing output directory")
    batch_size: int = option(32, help="sentences per batch")
    max_length: int = option(512, help="tokens per sentence; longer sentences are truncated")


def check_inputs(cfg: Config, pending: Callable[[str], bool]) -> None:
    """``plmkit run`` calls this before any stage: the sentences parse and each has the word."""
    source = cfg.sentences or str(DEFAULT_SENTENCES)
    if pending(source):
        return
    missing = first_without(read_sentences(source), cfg.word)
    if missing is not None:
        raise InputError(source, f"the word {cfg.word!r} is not in this sentence as a whole word: "
                                 f"{missing.text[:80]!r}", missing.line)


def run(cfg: Config) -> int:
    check_out_dir(cfg.out, cfg.overwrite)
    source = cfg.sentences or str(DEFAULT_SENTENCES)
    sentences = read_sentences(source)
    model, tok = load_for_analysis(cfg.model)
    result = similarity_result(model, tok, sentences, cfg.word, source=source, layer=cfg.layer,
                               batch_size=cfg.batch_size, max_length=cfg.max_length)
    svg = similarity_svg(result)
    with atomic_dir(cfg.out, overwrite=cfg.overwrite) as tmp:
        write_json(tmp / "similarity.json", result)
        atomic_write_text(tmp / "similarity.svg", svg + "\n")
        atomic_write_text(tmp / "similarity.yaml", dump_yaml(cfg))
    print(format_table(result))
    print(f"\nwrote {cfg.out}/similarity.json and similarity.svg")
    return 0
