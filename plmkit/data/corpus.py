"""Raw pre-training text -> documents.

A *document* is a list of segments (non-empty, stripped lines). Documents are either
blank-line-separated blocks (the BERT ``create_pretraining_data`` format; whitespace-only
lines count as blank) or, with ``doc_per_file``, one per file. Segments are what NSP/SOP
split documents at, so one sentence or paragraph per line works best.

Files are streamed line by line in binary mode (``iter_segments`` keeps one line in
memory, ``iter_documents`` one document), and every line is checked as it is read: a
NUL byte (binary file) or invalid UTF-8 raises ``InputError`` naming ``file:line``.
A line longer than ``MAX_PIECE_BYTES`` (a whole book on one line) is read in pieces cut
after a space, each its own segment, so memory stays bounded by the piece, not the line.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from ..errors import InputError, PlmkitError
from ..io import check_input_file

_BOM = b"\xef\xbb\xbf"


MAX_PIECE_BYTES = 1 << 16  # longer lines are handed on in pieces of at most this size (64 KiB)


def _check_file(path: Path) -> None:
    """The cheap checks that need no reading: a readable regular file, not empty."""
    try:
        check_input_file(path)
    except PlmkitError as e:
        raise InputError(path, str(e).removeprefix(f"{path}: ")) from None
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")


def _cut(raw: bytes) -> int:
    """Where to cut a piece of an over-long line: after its last space or tab when that keeps
    at least half of it, else at the last UTF-8 character boundary."""
    space = max(raw.rfind(b" "), raw.rfind(b"\t")) + 1
    if space >= len(raw) // 2:
        return space
    i = len(raw) - 1
    while i > 0 and len(raw) - i < 4 and raw[i] & 0xC0 == 0x80:  # back to the last lead byte
        i -= 1
    lead = raw[i]
    need = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    return i if 0 < i and len(raw) - i < need else len(raw)


def _pieces(f: BinaryIO, limit: int) -> Iterator[tuple[bytes, bool]]:
    """(bytes, ends a line): whole lines, or pieces of at most ``limit`` bytes of a longer one."""
    carry = b""
    while True:
        raw = carry + f.readline(max(limit - len(carry), 1))
        if len(raw) == len(carry) and not carry:
            return
        if raw.endswith(b"\n") or len(raw) < limit:
            carry = b""
            yield raw, True
            continue
        cut = _cut(raw)
        raw, carry = raw[:cut], raw[cut:]
        yield raw, False


def iter_lines(path: str | Path, max_bytes: int = MAX_PIECE_BYTES) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` with the line ending removed, validating as we go.

    A line longer than ``max_bytes`` comes as several pieces with the same line number.
    """
    path = Path(path)
    _check_file(path)
    n, first, said = 1, True, False          # said: this line has yielded text
    with path.open("rb") as f:
        for raw, ends in _pieces(f, max_bytes):
            if b"\x00" in raw:
                raise InputError(path, "binary file (NUL byte); expected UTF-8 text", line=n)
            if first and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            first = False
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(path, f"not valid UTF-8 (byte {e.start} of the line)", line=n) from None
            text = text.rstrip("\r\n")
            if text.strip():
                yield n, text
                said = True
            elif ends and not said:      # a blank line, once; a blank piece of a long line is none
                yield n, ""
            if ends:
                n, said = n + 1, False


def iter_segments(paths: Iterable[str | Path], doc_per_file: bool = False) -> Iterator[tuple[int, str]]:
    """Yield ``(document_number, segment)`` in order; numbers count from 0 without gaps.

    Memory is bounded by one line, even for a single huge document (``doc_per_file``).
    A document never spans two files. Validation is lazy (per line as read); call
    ``check_text_files`` first to fail before any expensive work.
    """
    doc = 0
    for p in paths:
        in_doc = has_text = False
        for _, line in iter_lines(p):
            seg = line.strip()
            if seg:
                yield doc, seg
                in_doc = has_text = True
            elif in_doc and not doc_per_file:
                doc, in_doc = doc + 1, False
        if not has_text:
            raise InputError(p, "file contains only blank lines")
        doc += in_doc


def iter_documents(paths: Iterable[str | Path], doc_per_file: bool = False) -> Iterator[list[str]]:
    """Yield documents (lists of segments) from ``paths`` in order; never an empty one."""
    for _, group in itertools.groupby(iter_segments(paths, doc_per_file), key=lambda x: x[0]):
        yield [seg for _, seg in group]


def check_text_files(paths: Iterable[str | Path], full: bool = True) -> list[Path]:
    """Validate the files up front, so a bad file fails in seconds rather than mid-training.

    Always: exists, is a readable regular file, not empty. With ``full`` also: UTF-8, no NUL
    byte, some non-blank text. The full check streams each file in ~1 MiB chunks cut at line
    ends (UTF-8 never splits a character across b"\\n"), so memory stays bounded and a bad
    byte is located by counting the newlines before it.
    """
    out = [Path(p) for p in paths]
    if not out:
        raise PlmkitError("no corpus files given")
    for p in out:
        _check_file(p)
    for p in out if full else ():
        _scan(p)
    return out


_CHUNK = 1 << 20


def _scan(path: Path) -> None:
    has_text = False
    line_no = 1  # line number of the first line in the current chunk
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            chunk += f.readline()  # finish the current line: chunks end at line breaks
            if line_no == 1 and chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
            _scan_chunk(path, chunk, line_no)
            has_text = has_text or bool(chunk.strip())
            line_no += chunk.count(b"\n")
    if not has_text:
        raise InputError(path, "file contains only blank lines")


def _scan_chunk(path: Path, chunk: bytes, first_line: int) -> None:
    nul = chunk.find(b"\x00")
    if nul >= 0:
        raise InputError(path, "binary file (NUL byte; UTF-16/32 text must be converted to UTF-8)",
                         line=first_line + chunk.count(b"\n", 0, nul))
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + chunk.count(b"\n", 0, e.start)
        column = e.start - (chunk.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(path, f"not valid UTF-8 (byte 0x{chunk[e.start]:02x} at column {column}; "
                               "re-encode the file as UTF-8)", line=line) from None
