"""Token and sentence vectors of texts, to .npy + JSONL.

Reads top to bottom: texts (a plain file one per line, or a TSV/CSV/JSONL text column) -> model
and tokenizer -> hidden states of one layer, pooled per text (plmkit/analysis/embed.py) -> files.

    OUT.npy         [N, H] float32 sentence vectors, row i = text i
    OUT.tokens.npy  [sum of T_i, H] float32 token vectors, texts one after another (--tokens)
    OUT.jsonl       one row per text: index, line, text, n_tokens (+ tokens, token_rows: the
                    [start, end) rows of OUT.tokens.npy, char_spans: each token's characters)

``--out vectors`` and ``--out vectors.npy`` both name OUT = vectors. Each file is written
atomically; the JSONL last, so its presence means the arrays beside it are complete.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analysis.embed import POOLINGS, Embeddings, embed_texts, load_for_analysis, read_texts
from ..config import option
from ..io import atomic_write_bytes, atomic_write_text


@dataclass
class Config:
    model: str = option(help="model directory (plmkit checkpoint or local HF BERT/GPT-2)")
    input: str = option(help="texts: a text file (one per line) or a TSV/CSV/JSONL with a text column")
    out: str = option(help="output stem: writes OUT.npy and OUT.jsonl (and OUT.tokens.npy with --tokens)")
    pooling: str = option("mean", help="sentence vector: mean of the text's tokens, or its first ([CLS]) "
                          "token (a decoder: its last token)", choices=list(POOLINGS))
    layer: int = option(-1, help="which hidden states: 0 = embedding output, 1..L = after block l, -1 = last")
    normalize: bool = option(False, help="scale every vector to unit length")
    tokens: bool = option(False, help="also write the token vectors (OUT.tokens.npy)")
    text_column: str | None = option(None, help="text column of a TSV/CSV/JSONL file (default: detected)")
    batch_size: int = option(32, help="texts per batch")
    max_length: int = option(512, help="tokens per text; longer texts are truncated")


def _stem(out: str) -> Path:
    path = Path(out)
    return path.with_suffix("") if path.suffix == ".npy" else path


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _rows(texts: list, emb: Embeddings) -> list[dict]:
    rows, start = [], 0
    for i, (t, enc) in enumerate(zip(texts, emb.encoded)):
        row = {"index": i, "line": t.line, "text": t.text, "n_tokens": len(enc.input_ids)}
        if emb.tokens:
            row.update(tokens=enc.tokens, token_rows=[start, start + len(enc.input_ids)],
                       char_spans=[list(o) for o in enc.offsets])
            start += len(enc.input_ids)
        rows.append(row)
    return rows


def run(cfg: Config) -> int:
    texts = read_texts(cfg.input, cfg.text_column)
    model, tok = load_for_analysis(cfg.model)
    emb = embed_texts(model, tok, [t.text for t in texts], pooling=cfg.pooling, layer=cfg.layer,
                      normalize=cfg.normalize, keep_tokens=cfg.tokens, batch_size=cfg.batch_size,
                      max_length=cfg.max_length, progress="embed")
    stem = _stem(cfg.out)
    atomic_write_bytes(f"{stem}.npy", _npy_bytes(emb.sentences.numpy().astype(np.float32)))
    if cfg.tokens:
        atomic_write_bytes(f"{stem}.tokens.npy", _npy_bytes(torch.cat(emb.tokens).numpy().astype(np.float32)))
    rows = _rows(texts, emb)
    atomic_write_text(f"{stem}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    wrote = f"{stem}.npy" + (f", {stem}.tokens.npy" if cfg.tokens else "") + f", {stem}.jsonl"
    print(f"embedded {len(texts)} texts at layer {emb.layer} ({cfg.pooling} pooling, "
          f"{emb.sentences.shape[1]} dims): {wrote}")
    return 0
