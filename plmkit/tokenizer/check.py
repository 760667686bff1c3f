"""Up-front checks of raw-text corpus files, so a bad file fails in seconds, not mid-training.

Streaming: each file is read in ~1 MiB chunks cut at line ends (UTF-8 never puts a
multi-byte sequence across b"\\n"), so memory stays bounded however large the file is and a
bad byte is located by counting newlines before it.

NOTE: plmkit/data/corpus.py is the natural home for this (``validate_text_file``); it lives
here until the data module owns it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..errors import InputError, PlmkitError

_CHUNK = 1 << 20


def check_text_files(paths: Iterable[str | Path]) -> list[Path]:
    """Check that every path is a readable, non-empty UTF-8 text file; return them as Paths.

    Raises ``InputError`` ("file:line: message") for the first problem found: missing file,
    a directory, an empty (or whitespace-only) file, a NUL byte (binary data), or bytes
    that are not UTF-8.
    """
    out = [Path(p) for p in paths]
    if not out:
        raise PlmkitError("no corpus files given")
    for path in out:
        _check_one(path)
    return out


def _check_one(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a text file")
    has_text = False
    line_no = 1  # line number of the first line in the current chunk
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                chunk += f.readline()  # finish the current line: chunks end at line breaks
                _check_chunk(path, chunk, line_no)
                has_text = has_text or bool(chunk.strip())
                line_no += chunk.count(b"\n")
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, expected a text file") from None
    if not has_text:
        raise InputError(path, "file is empty (no text to train on)")


def _check_chunk(path: Path, chunk: bytes, first_line: int) -> None:
    nul = chunk.find(b"\x00")
    if nul >= 0:
        line = first_line + chunk.count(b"\n", 0, nul)
        raise InputError(path, "contains a NUL byte: binary file, or UTF-16/32 text "
                               "(convert it to UTF-8)", line=line)
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + chunk.count(b"\n", 0, e.start)
        column = e.start - (chunk.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(path, f"not valid UTF-8 (byte 0x{chunk[e.start]:02x} at column {column}; "
                               "re-encode the file as UTF-8)", line=line) from None
