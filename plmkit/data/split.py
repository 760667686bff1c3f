"""Carve a dev slice out of a training file, in the file's own format.

A line-based file (TSV/CSV/JSONL classification, CoNLL or JSONL NER) is cut at the lines its reader
says each example starts on (``TextExample.line``, ``TokenExample.line``): example i owns its lines
up to the next example's, lines before the first example (a header, a ``-DOCSTART-``) go to both
parts, and CoNLL sentences keep one blank line after each. A SQuAD file is cut by paragraph, so
the questions on one context never end up on both sides. The parts read back with the same reader
as the examples they hold, with nothing dropped or repeated.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

from ..errors import PlmkitError


def sample_dev(n: int, k: int, seed: int) -> set[int]:
    """``k`` of the indices ``0..n-1``, drawn with ``seed``."""
    if not 0 < k < n:
        raise PlmkitError(f"cannot hold out {k} of {n} examples for the dev slice (it needs 1 to {n - 1})")
    return set(random.Random(seed).sample(range(n), k))


def split_lines(lines: Sequence[str], starts: Sequence[int], dev: set[int],
                blank_separated: bool) -> tuple[list[str], list[str]]:
    """(train lines, dev lines). ``starts``: the 1-based line each example starts on, ascending.
    ``blank_separated``: examples are blocks ended by a blank line (CoNLL)."""
    if any(b <= a for a, b in zip(starts, starts[1:])):
        raise ValueError("example start lines must ascend")
    bounds = [s - 1 for s in starts] + [len(lines)]
    prefix = list(lines[:bounds[0]])
    train, held = list(prefix), list(prefix)
    if blank_separated and prefix and prefix[-1].strip():
        train.append("")
        held.append("")
    for i in range(len(starts)):
        span = list(lines[bounds[i]:bounds[i + 1]])
        if blank_separated:
            while span and not span[-1].strip():
                span.pop()
            span.append("")
        (held if i in dev else train).extend(span)
    return train, held


def squad_paragraphs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(article title, paragraph) pairs of a SQuAD document (already read by ``read_squad``)."""
    return [(str(a.get("title", "")), p) for a in doc["data"] for p in a["paragraphs"]]


def split_squad(doc: dict[str, Any], questions: int, seed: int | None) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(rest, held-out part, questions in it): whole paragraphs, drawn with ``seed`` (None: in file
    order) until the held-out part holds at least ``questions`` questions. The rest may be empty."""
    paras = squad_paragraphs(doc)
    order = list(range(len(paras)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    held, count = set(), 0
    for i in order:
        if count >= questions:
            break
        held.add(i)
        count += len(paras[i][1].get("qas", []))

    def part(inside: bool) -> dict[str, Any]:
        data = [{"title": t, "paragraphs": [p]} for i, (t, p) in enumerate(paras) if (i in held) == inside]
        return {"version": doc.get("version", "plmkit-split"), "data": data}

    return part(False), part(True), count
