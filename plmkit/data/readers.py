"""Readers for fine-tuning data: classification, NER, SQuAD-style QA, prompt/completion.

Every reader returns small dataclasses that remember the line they came from, so a
problem found later (an unknown label in eval data, say) can still point at the file.
Bad content raises ``InputError`` ("file:line: what is wrong"); a file that cannot be
used at all (missing column, empty) raises ``PlmkitError``. No reader pads, tokenizes
or shuffles: that is ``features.py``'s job.

Formats are chosen by suffix (``.jsonl``/``.json`` -> JSON lines, ``.csv`` -> CSV,
anything else -> TSV) unless ``fmt`` is given. TSV is read with ``csv.QUOTE_NONE``
because GLUE TSVs contain unbalanced double quotes that are part of the text.
"""
from __future__ import annotations

import csv
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import InputError, PlmkitError
from ..io import check_input_file, read_json


@dataclass(slots=True)      # slots: a million examples cost ~100 bytes each less
class TextExample:
    """One classification example (single sentence or sentence pair)."""
    text: str
    text_pair: str | None = None
    label: str | None = None  # always a string name ("0", "positive"); ids come from a label map
    line: int = 0
    source: str = ""  # file it came from, for error messages


@dataclass(slots=True)
class TokenExample:
    """One pre-tokenized sentence with one tag per token (tags None when unlabelled)."""
    tokens: list[str]
    tags: list[str] | None = None
    line: int = 0  # line of the first token
    source: str = ""


@dataclass
class QAExample:
    """One SQuAD question. ``answers`` holds ``{"text", "answer_start"}`` dicts (empty when impossible)."""
    id: str
    question: str
    context: str
    answers: list[dict[str, Any]] = field(default_factory=list)
    line: int | None = None
    is_impossible: bool = False


@dataclass
class GenExample:
    prompt: str
    completion: str
    line: int = 0


# Column names recognised without being told, in order of preference.
TEXT_COLUMNS = ("sentence", "text", "sentence1", "#1 String", "question1", "premise", "question")
PAIR_COLUMNS = ("sentence2", "text_pair", "#2 String", "question2", "hypothesis")
LABEL_COLUMNS = ("label", "Quality", "gold_label", "labels")


# ---------------------------------------------------------------------------
# Low-level line access


def read_lines(path: str | Path) -> list[str]:
    """Decode a UTF-8 file (a leading BOM is dropped) into lines without newlines.

    Non-UTF-8 bytes raise ``InputError`` with the line they are on.
    """
    path = check_input_file(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise InputError(path, f"not valid UTF-8 (byte 0x{raw[e.start]:02x}); convert the file to UTF-8",
                         line) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if not any(ln.strip() for ln in lines):
        raise PlmkitError(f"{path}: file is empty")
    return lines


def _fmt(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in ("tsv", "csv", "jsonl"):
            raise PlmkitError(f"unknown data format {fmt!r} (choose tsv, csv or jsonl)")
        return fmt
    suffix = path.suffix.lower()
    return {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}.get(suffix, "tsv")


def _rows(path: Path, lines: list[str], fmt: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) for every non-blank CSV/TSV row."""
    # Newlines go back on so a quoted CSV cell spanning lines keeps its line break.
    with_nl = (ln + "\n" for ln in lines)
    if fmt == "tsv":
        reader = csv.reader(with_nl, delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(with_nl)
    start = 1
    try:
        for row in reader:
            # line_num counts physical lines consumed, so a quoted multi-line CSV
            # cell still reports the line its row starts on.
            line, start = start, reader.line_num + 1
            if row and any(c.strip() for c in row):
                yield line, row
    except csv.Error as e:
        raise InputError(path, f"malformed {fmt.upper()} row ({e})", reader.line_num) from None


def _json_objects(path: Path, lines: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError as e:
            raise InputError(path, f"not valid JSON ({e.msg} at column {e.colno})", i) from None
        if not isinstance(obj, dict):
            raise InputError(path, f"expected a JSON object, got {type(obj).__name__}", i)
        yield i, obj


def _pick(found: Sequence[str], named: str | None, candidates: Sequence[str], what: str, flag: str,
          path: Path, required: bool) -> str | None:
    """Choose a column: the one named by the user, else the first known candidate."""
    if named is not None:
        if named not in found:
            raise PlmkitError(f"{path}: {what} column {named!r} not found; columns found: {list(found)}")
        return named
    for c in candidates:
        if c in found:
            return c
    if required:
        raise PlmkitError(f"{path}: no {what} column (looked for {', '.join(candidates)}; name one with "
                          f"{flag}); columns found: {list(found)}")
    return None


# ---------------------------------------------------------------------------
# Classification


def read_classification(path: str | Path, *, text_column: str | None = None,
                        text_pair_column: str | None = None, label_column: str | None = None,
                        header: bool | None = None, fmt: str | None = None,
                        require_labels: bool = True,
                        labels: Sequence[str] | None = None) -> list[TextExample]:
    """Read sentence(-pair) classification data from TSV, CSV or JSONL.

    header: True/False, or None to detect it (a first row holding a known or named column
        name is a header). Without a header, columns are named "0", "1", ...; the default
        layout is ``text label`` (2 columns), ``text text_pair label`` (3), or ``text`` (1).
    labels: the label names of the training set; a label outside them raises InputError
        naming the label and file:line (use for eval data).
    """
    path = Path(path)
    fmt = _fmt(path, fmt)
    lines = read_lines(path)
    named = {"text": text_column, "pair": text_pair_column, "label": label_column}
    if fmt == "jsonl":
        records: Iterable[tuple[int, dict[str, Any]]] = _json_objects(path, lines)
    else:
        records = _table_records(path, lines, fmt, header, named)
    examples = []
    cols: dict[str, str | None] | None = None
    for line, rec in records:
        if cols is None:  # columns are settled by the first record
            cols = _choose_columns(path, list(rec), named, require_labels)
        examples.append(_text_example(path, line, rec, cols))
    if not examples:
        raise PlmkitError(f"{path}: no examples (only a header?)")
    if labels is not None:
        check_labels(examples, labels)
    return examples


# Column layout of a headerless table, by column count: (text, text pair, label).
_POSITIONAL = {1: ("0", None, None), 2: ("0", None, "1"), 3: ("0", "1", "2")}


def _table_records(path: Path, lines: list[str], fmt: str, header: bool | None,
                   named: dict[str, str | None]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows as {column: cell}, one at a time. Fills ``named`` with the positional layout of a
    headerless file before the first row comes out."""
    rows = _rows(path, lines, fmt)
    first = next(rows, None)
    if first is None:
        raise PlmkitError(f"{path}: file is empty")
    cells = first[1]
    if header is None:
        # Named columns count too, except positional ones ("0", "1") that could be cell values.
        known = set(TEXT_COLUMNS + PAIR_COLUMNS + LABEL_COLUMNS) | {
            v for v in named.values() if v and not v.isdigit()}
        header = any(c.strip() in known for c in cells)
    if header:
        names = [c.strip() for c in cells]
    else:
        names = [str(i) for i in range(len(cells))]
        for key, default in zip(("text", "pair", "label"), _POSITIONAL.get(len(cells), (None,) * 3)):
            if named[key] is None:
                named[key] = default
        rows = itertools.chain([first], rows)
    return _checked_records(path, rows, names)


def _checked_records(path: Path, rows: Iterable[tuple[int, list[str]]],
                     names: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    for line, cells in rows:
        if len(cells) != len(names):
            raise InputError(path, f"expected {len(names)} columns, found {len(cells)}", line)
        yield line, dict(zip(names, cells))


def _choose_columns(path: Path, found: list[str], named: dict[str, str | None],
                    require_labels: bool) -> dict[str, str | None]:
    return {
        "text": _pick(found, named["text"], TEXT_COLUMNS, "text", "--text-column", path, True),
        "pair": _pick(found, named["pair"], PAIR_COLUMNS, "text pair", "--text-pair-column", path, False),
        "label": _pick(found, named["label"], LABEL_COLUMNS, "label", "--label-column", path,
                       require_labels),
    }


def _text_example(path: Path, line: int, rec: dict[str, Any], cols: dict[str, str | None]) -> TextExample:
    def get(key: str) -> Any:
        col = cols[key]
        if col is None:
            return None
        if col not in rec:
            raise InputError(path, f"missing key {col!r}", line)
        return rec[col]

    text, pair, label = get("text"), get("pair"), get("label")
    for name, value in (("text", text), ("text pair", pair)):
        if value is not None and not isinstance(value, str):
            raise InputError(path, f"{name} must be a string, got {type(value).__name__}", line)
    if label is not None:
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise InputError(path, f"label must be a name or an integer, got {label!r}", line)
        label = sys.intern(str(label).strip())      # one string per label name, not per row
        if not label:
            raise InputError(path, "empty label", line)
    return TextExample(text=text, text_pair=pair, label=label, line=line, source=str(path))


def build_label_map(examples: Iterable[TextExample | TokenExample]) -> list[str]:
    """Sorted label names (index = label id). Integer-like names sort numerically."""
    names: set[str] = set()
    for ex in examples:
        if isinstance(ex, TokenExample):
            names.update(ex.tags or ())
        elif ex.label is not None:
            names.add(ex.label)
    if not names:
        raise PlmkitError("no labels found in the training data")
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def check_labels(examples: Iterable[TextExample | TokenExample], labels: Sequence[str]) -> None:
    """Raise InputError at the first label (or tag) not in ``labels``."""
    known = set(labels)
    for ex in examples:
        if isinstance(ex, TokenExample):
            found = ex.tags or []
        else:
            found = [] if ex.label is None else [ex.label]
        for name in found:
            if name not in known:
                raise InputError(ex.source or "<data>", f"unknown label {name!r} (labels seen in training: "
                                 f"{sorted(known)})", ex.line)


# ---------------------------------------------------------------------------
# Token classification (NER)


def read_ner(path: str | Path, *, fmt: str | None = None,
             labels: Sequence[str] | None = None) -> list[TokenExample]:
    """Read CoNLL (token first column, tag last; blank line between sentences) or JSONL {tokens, tags}.

    ``fmt``: "conll" or "jsonl"; default by suffix (.jsonl/.json -> jsonl, else conll).
    A CoNLL sentence whose lines all have one column is read as unlabelled (tags None).
    """
    path = Path(path)
    if fmt is None:
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".json") else "conll"
    if fmt not in ("conll", "jsonl"):
        raise PlmkitError(f"unknown NER format {fmt!r} (choose conll or jsonl)")
    lines = read_lines(path)
    examples = _ner_jsonl(path, lines) if fmt == "jsonl" else _ner_conll(path, lines)
    if not examples:
        raise PlmkitError(f"{path}: no sentences found")
    if labels is not None:
        check_labels(examples, labels)
    return examples


def _ner_conll(path: Path, lines: list[str]) -> list[TokenExample]:
    """Sentences of ``TOKEN ... TAG`` lines. The first token line fixes the number of columns
    for the whole file (1: unlabelled); a line with another count is an error, so a shifted
    column (a POS tag read as the label) or a table of sentences cannot pass as NER data."""
    examples: list[TokenExample] = []
    rows: list[list[str]] = []
    first = 0
    width: tuple[int, int] | None = None      # (columns, line that set it)

    def flush() -> None:
        if rows:
            tags = None if width is not None and width[0] == 1 else [r[-1] for r in rows]
            examples.append(TokenExample([r[0] for r in rows], tags, first, str(path)))
            rows.clear()

    for i, ln in enumerate(lines, 1):
        cells = ln.split()
        if not cells or cells[0] == "-DOCSTART-":
            flush()
            continue
        if "\t" in ln and any(" " in c.strip() for c in ln.split("\t")):
            raise InputError(path, "a cell with spaces: this looks like a table of sentences, not CoNLL "
                                   "(one token per line, tag last, blank line between sentences); "
                                   "NER reads CoNLL or JSONL {\"tokens\", \"tags\"}", i)
        if width is None:
            width = (len(cells), i)
        elif len(cells) != width[0]:
            what = ("token without a tag" if len(cells) == 1 else
                    f"{len(cells)} columns where line {width[1]} has {width[0]}")
            raise InputError(path, f"{what}: every token line needs the same columns (token first, "
                                   "tag last)", i)
        if not rows:
            first = i
        rows.append(cells)
    flush()
    return examples


def _ner_jsonl(path: Path, lines: list[str]) -> list[TokenExample]:
    examples = []
    for line, obj in _json_objects(path, lines):
        tokens, tags = obj.get("tokens"), obj.get("tags", obj.get("ner_tags"))
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise InputError(path, "expected 'tokens': a list of strings", line)
        if tags is not None:
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise InputError(path, "expected 'tags': a list of tag strings", line)
            if len(tags) != len(tokens):
                raise InputError(path, f"{len(tokens)} tokens but {len(tags)} tags", line)
        if tokens:
            examples.append(TokenExample(tokens, tags, line, str(path)))
    return examples


# ---------------------------------------------------------------------------
# Extractive QA (SQuAD v1.1; v2 "is_impossible" questions kept with no answers)


def read_squad(path: str | Path) -> list[QAExample]:
    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise InputError(path, "expected SQuAD JSON: {\"data\": [{\"paragraphs\": [...]}]}")
    examples = []
    for article in doc["data"]:
        for para in _field(path, article, "paragraphs", list, "article"):
            context = _field(path, para, "context", str, "paragraph")
            for qa in _field(path, para, "qas", list, "paragraph"):
                examples.append(_qa_example(path, qa, context))
    if not examples:
        raise PlmkitError(f"{path}: no questions found")
    return examples


def _field(path: Path, obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
        raise InputError(path, f"{where} has no valid {key!r}")
    return obj[key]


def _qa_example(path: Path, qa: Any, context: str) -> QAExample:
    qid = str(_field(path, qa, "id", (str, int), "question")) if isinstance(qa, dict) else "?"
    where = f"question {qid}"
    question = _field(path, qa, "question", str, where)
    impossible = bool(qa.get("is_impossible", False))
    answers = [] if impossible else _field(path, qa, "answers", list, where)
    checked = []
    for ans in answers:
        text = _field(path, ans, "text", str, f"{where}: answer")
        start = _field(path, ans, "answer_start", int, f"{where}: answer")
        if context[start:start + len(text)] != text:
            raise InputError(path, f"question {qid}: answer {text!r} is not at answer_start {start} of "
                             f"its context (found {context[start:start + len(text)]!r})")
        checked.append({"text": text, "answer_start": start})
    return QAExample(qid, question, context, checked, None, impossible)


# ---------------------------------------------------------------------------
# Prompt/completion pairs (causal LM fine-tuning)


def read_generation(path: str | Path, *, fmt: str | None = None) -> list[GenExample]:
    """JSONL ``{"prompt", "completion"}`` or TSV ``prompt<TAB>completion`` (header optional)."""
    path = Path(path)
    fmt = _fmt(path, fmt)
    lines = read_lines(path)
    examples = []
    if fmt == "jsonl":
        for line, obj in _json_objects(path, lines):
            prompt, completion = obj.get("prompt"), obj.get("completion")
            if not isinstance(prompt, str) or not isinstance(completion, str):
                raise InputError(path, "expected string fields 'prompt' and 'completion'", line)
            examples.append(GenExample(prompt, completion, line))
    else:
        for line, cells in _rows(path, lines, fmt):
            if [c.strip() for c in cells] == ["prompt", "completion"] and not examples:
                continue  # header
            if len(cells) != 2:
                raise InputError(path, f"expected 2 columns (prompt, completion), found {len(cells)}", line)
            examples.append(GenExample(cells[0], cells[1], line))
    if not examples:
        raise PlmkitError(f"{path}: no examples")
    return examples
