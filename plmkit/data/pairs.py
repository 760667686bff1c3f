"""Sentence-embedding data: text pairs, triplets, scored pairs, and SQuAD as a retrieval set.

    anchor <TAB> positive                   a pair: the positive is what the anchor should find
    anchor <TAB> positive <TAB> negative    a triplet: plus a hard negative it should not
    text <TAB> text <TAB> score             scored pairs (a number in the third column, or a score
                                            column: score, similarity, label, Quality)
    SQuAD v1.1 JSON                          each question -> its paragraph (the article title is the
                                            example's group, so articles can be held out whole)

TSV, CSV and JSONL; a header row names the columns (detected, as for classification), JSONL
objects name them always. Every positive and negative of a file has a key (a ``passage_id`` /
``positive_id`` column, a SQuAD paragraph's title and index, else the text itself): equal keys
are the same passage, which retrieval evaluation counts once in the corpus and in-batch ranking
never counts as a negative of itself. A one-column file is texts to embed (predict only).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from tokenizers import Tokenizer

from ..errors import InputError, PlmkitError
from ..io import read_json
from .features import ENCODE_CHUNK, configured
from .readers import _fmt, _json_objects, _pick, _rows, read_lines


@dataclass(slots=True)
class PairExample:
    """One anchor and what it is compared with; ``positive`` None: a text to embed only."""
    anchor: str
    positive: str | None = None
    negative: str | None = None
    score: float | None = None       # scored pairs: the gold similarity of (anchor, positive)
    positive_key: str | None = None  # the positive's passage key (None: its text)
    negative_key: str | None = None
    group: str | None = None         # what is held out together (a SQuAD article)
    line: int = 0
    source: str = ""


# Column names recognised without being told, in order of preference.
ANCHOR_COLUMNS = ("anchor", "query", "question", "sentence1", "text", "sentence", "#1 String", "question1",
                  "premise")
POSITIVE_COLUMNS = ("positive", "passage", "document", "context", "sentence2", "text_pair", "#2 String",
                    "question2", "hypothesis")
NEGATIVE_COLUMNS = ("negative", "hard_negative")
SCORE_COLUMNS = ("score", "similarity", "label", "Quality", "relevance")
KEY_COLUMNS = ("passage_id", "positive_id", "doc_id", "pid")
NEGATIVE_KEY_COLUMNS = ("negative_id",)
KNOWN = set(ANCHOR_COLUMNS + POSITIVE_COLUMNS + NEGATIVE_COLUMNS + SCORE_COLUMNS + KEY_COLUMNS
            + NEGATIVE_KEY_COLUMNS)


def is_squad_file(path: str | Path) -> bool:
    """A .json file holding one object with a "data" list (SQuAD), not JSON lines."""
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"{") and b'"data"' in head and b"\n{" not in head.strip()


def read_pairs(path: str | Path, *, anchor_column: str | None = None, positive_column: str | None = None,
               score_column: str | None = None, header: bool | None = None,
               require_pairs: bool = True) -> list[PairExample]:
    """Embedding examples of a SQuAD JSON file or a TSV/CSV/JSONL table (see the module doc).

    ``require_pairs``: a one-column file (texts only) is refused, naming the file.
    """
    path = Path(path)
    if is_squad_file(path):
        return read_squad_retrieval(path)
    fmt = _fmt(path, None)
    lines = read_lines(path)
    named = {"anchor": anchor_column, "positive": positive_column, "score": score_column}
    records = _json_objects(path, lines) if fmt == "jsonl" else _table(path, lines, fmt, header, named)
    examples, cols = [], None
    for line, rec in records:
        if cols is None:
            cols = _columns(path, list(rec), named, fmt)
        examples.append(_example(path, line, rec, cols))
    if not examples:
        raise PlmkitError(f"{path}: no examples (only a header?)")
    if cols["positional_third"] is not None:
        _third_column(examples)
    if require_pairs and examples[0].positive is None:
        raise PlmkitError(f"{path}: one text per row; sentence embeddings train and evaluate on pairs "
                          "(anchor, positive), triplets (anchor, positive, negative) or scored pairs "
                          "(text, text, score)")
    return examples


def _table(path: Path, lines: list[str], fmt: str, header: bool | None,
           named: dict[str, str | None]) -> Iterator[tuple[int, dict[str, str]]]:
    rows = _rows(path, lines, fmt)
    first = next(rows, None)
    if first is None:
        raise PlmkitError(f"{path}: file is empty")
    cells = [c.strip() for c in first[1]]
    if header is None:
        header = any(c in KNOWN or c in named.values() for c in cells)
    if header:
        names = cells
    else:
        names = [str(i) for i in range(len(cells))]
        rows = itertools.chain([first], rows)
        if len(cells) > 3:
            raise PlmkitError(f"{path}: {len(cells)} columns and no header; a header row names the anchor, "
                              "positive, negative and score columns")
    for line, row in rows:
        if len(row) != len(names):
            raise InputError(path, f"expected {len(names)} columns, found {len(row)}", line)
        yield line, dict(zip(names, row))


def _columns(path: Path, found: list[str], named: dict[str, str | None], fmt: str) -> dict[str, str | None]:
    """Which column holds what; a headerless table is anchor, positive, then a negative or a score."""
    if found[0] == "0" and fmt != "jsonl":
        third = "2" if len(found) == 3 else None
        return {"anchor": "0", "positive": "1" if len(found) > 1 else None, "negative": third,
                "score": None, "key": None, "negative_key": None, "positional_third": third}
    return {"anchor": _pick(found, named["anchor"], ANCHOR_COLUMNS, "anchor", "--text-column", path, True),
            "positive": _pick(found, named["positive"], POSITIVE_COLUMNS, "positive", "--text-pair-column",
                              path, False),
            "negative": _pick(found, None, NEGATIVE_COLUMNS, "negative", "", path, False),
            "score": _pick(found, named["score"], SCORE_COLUMNS, "score", "--label-column", path, False),
            "key": _pick(found, None, KEY_COLUMNS, "passage id", "", path, False),
            "negative_key": _pick(found, None, NEGATIVE_KEY_COLUMNS, "negative id", "", path, False),
            "positional_third": None}


def _example(path: Path, line: int, rec: dict[str, Any], cols: dict[str, str | None]) -> PairExample:
    def get(key: str, kind: str = "text") -> Any:
        col = cols[key]
        if col is None:
            return None
        if col not in rec:
            raise InputError(path, f"missing key {col!r}", line)
        value = rec[col]
        if kind == "text" and not isinstance(value, str):
            raise InputError(path, f"{key} must be a string, got {type(value).__name__}", line)
        return value

    anchor, positive, negative = get("anchor"), get("positive"), get("negative")
    score = get("score", "number")
    for name, value in (("anchor", anchor), ("positive", positive), ("negative", negative)):
        if value is not None and not value.strip():
            raise InputError(path, f"empty {name} text", line)
    if score is not None:
        if negative is not None:
            raise InputError(path, "a row has both a score and a negative: scored pairs or triplets, not both", line)
        number = _number(score)
        if number is None:
            raise InputError(path, f"score must be a number, got {score!r}", line)
        score = number
    key, neg_key = get("key", "id"), get("negative_key", "id")
    return PairExample(anchor, positive, negative, score, None if key is None else str(key),
                       None if neg_key is None else str(neg_key), line=line, source=str(path))


def _third_column(examples: list[PairExample]) -> None:
    """A headerless third column of numbers only is a score, else a negative."""
    numbers = [_number(ex.negative) for ex in examples]
    if all(n is not None for n in numbers):
        for ex, n in zip(examples, numbers):
            ex.score, ex.negative = n, None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_squad_retrieval(path: str | Path) -> list[PairExample]:
    """Every SQuAD question with its paragraph as the positive; the key of a paragraph is its
    article title and index, the group its article."""
    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise InputError(path, "expected SQuAD JSON: {\"data\": [{\"title\", \"paragraphs\": [...]}]}")
    examples = []
    for a, article in enumerate(doc["data"]):
        title = str(article.get("title", a)) if isinstance(article, dict) else str(a)
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise InputError(path, f"article {title!r} has no valid 'paragraphs'")
        for p, para in enumerate(paragraphs):
            context = para.get("context") if isinstance(para, dict) else None
            qas = para.get("qas") if isinstance(para, dict) else None
            if not isinstance(context, str) or not isinstance(qas, list):
                raise InputError(path, f"article {title!r}, paragraph {p}: expected 'context' and 'qas'")
            for qa in qas:
                question = qa.get("question") if isinstance(qa, dict) else None
                if not isinstance(question, str) or not question.strip():
                    raise InputError(path, f"article {title!r}, paragraph {p}: a question without text")
                examples.append(PairExample(question.strip(), context, positive_key=f"{title}#{p}",
                                            group=title, source=str(path)))
    if not examples:
        raise PlmkitError(f"{path}: no questions found")
    return examples


# ----------------------------------------------------------------------------- features

def passage_keys(examples: Sequence[PairExample]) -> tuple[list[int | None], list[int | None]]:
    """Integer keys of every positive and negative (equal ints: the same passage), in first-seen order."""
    ids: dict[str, int] = {}

    def key(given: str | None, text: str | None) -> int | None:
        if text is None:
            return None
        name = given if given is not None else "\x00" + text      # ids and texts never collide
        return ids.setdefault(name, len(ids))
    pos = [key(ex.positive_key, ex.positive) for ex in examples]
    neg = [key(ex.negative_key, ex.negative) for ex in examples]
    return pos, neg


def encode_pairs(tok: Tokenizer, examples: Sequence[PairExample], max_length: int) -> list[dict[str, Any]]:
    """[CLS] text [SEP] for every text of every example, each cut to ``max_length`` tokens.

    A feature is the anchor's input (``input_ids`` ...), its positive and negative as
    ``pair_input_ids`` ... (one list each), ``labels`` their passage keys (ranking pairs and
    triplets) or ``scores`` (scored pairs), and ``distinct_key`` the positive's key (batches of
    in-batch negatives avoid repeating it). Each distinct text is tokenised once.
    """
    texts = list(dict.fromkeys(t for ex in examples for t in (ex.anchor, ex.positive, ex.negative) if t is not None))
    enc = configured(tok, max_length)
    ids: dict[str, tuple[list[int], list[int]]] = {}
    for start in range(0, len(texts), ENCODE_CHUNK):
        chunk = texts[start:start + ENCODE_CHUNK]
        for text, e in zip(chunk, enc.encode_batch(chunk)):
            ids[text] = (e.ids, e.type_ids)
    pos_keys, neg_keys = passage_keys(examples)
    features = []
    for ex, pk, nk in zip(examples, pos_keys, neg_keys):
        feat = _text_feature(*ids[ex.anchor])
        others = [t for t in (ex.positive, ex.negative) if t is not None]
        if others:
            feat.update({f"pair_{k}": [_text_feature(*ids[t])[k] for t in others]
                         for k in ("input_ids", "attention_mask", "token_type_ids")})
            if ex.score is not None:
                feat["scores"] = ex.score
            else:
                feat["labels"] = [k for k in (pk, nk) if k is not None]
                feat["distinct_key"] = pk
        features.append(feat)
    _check_uniform(examples, features)
    return features


def _text_feature(input_ids: list[int], type_ids: list[int]) -> dict[str, list[int]]:
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "token_type_ids": [0] * len(type_ids)}


def _check_uniform(examples: Sequence[PairExample], features: list[dict[str, Any]]) -> None:
    """A batch stacks its examples' texts: all must have as many, of one kind (scored or ranked)."""
    def shape(f: dict[str, Any]) -> tuple[int, bool]:
        return len(f.get("pair_input_ids", ())), "scores" in f
    first = shape(features[0]) if features else None
    for ex, f in zip(examples, features):
        if shape(f) != first:
            kinds = {(0, False): "a text alone", (1, False): "a pair", (2, False): "a triplet",
                     (1, True): "a scored pair"}
            raise InputError(ex.source or "<data>", f"{kinds.get(shape(f), 'a row')} among rows of "
                             f"{kinds.get(first, 'another kind')}: every row needs the same columns", ex.line or None)
