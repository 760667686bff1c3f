"""User-facing errors.

Anything a user can cause (bad file, bad flag, bad checkpoint) raises ``PlmkitError``.
The CLI turns it into one line on stderr and exit code 1; no traceback. Programming
errors are left to propagate as ordinary exceptions, so bugs stay visible.
"""
from __future__ import annotations

from pathlib import Path


class PlmkitError(Exception):
    """An error caused by input; its message is shown to the user as is."""


class InputError(PlmkitError):
    """Bad content in a user file, located by file and (when known) line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def a_or_an(word: str) -> str:
    """``word`` with its indefinite article, for messages: "an encoder", "a decoder"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
