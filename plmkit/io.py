"""Atomic file and directory writes, and the checks every input file goes through.

A reader must never see half an output: we write into a temporary sibling and
``os.replace`` it into place (atomic on POSIX within one filesystem). Files and directories
are fsync'ed before the rename that publishes them, and the parent directory after it, so a
power cut leaves the old output or the new one, never a renamed but empty file.

Temporary siblings are named ``.NAME.tmp-PID-XXXX`` (and a replaced directory waits as
``.NAME.old-PID``): a process killed mid-write leaves one behind, and the next write to
the same path removes those whose process is gone. Scratch space a stage needs while it makes
an output (``work_dir``) is such a sibling too, never a folder in the system temp directory. A
location that cannot be written (read-only, /proc, a full disk) is one ``PlmkitError`` naming
the path, before any work (``check_writable``).
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import PlmkitError


def check_input_file(path: str | Path, what: str = "file") -> Path:
    """Refuse what cannot be read as an input file, before reading: missing, a directory, or
    not a regular file (a device such as /dev/zero, a FIFO, a socket would be read forever or
    block). Symlinks to regular files are fine."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PlmkitError(f"{path}: {what} not found") from None
    except OSError as e:
        raise PlmkitError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a device, pipe or socket"
        raise PlmkitError(f"{path}: not a regular file (it is {kind}); expected a {what}")
    if not os.access(path, os.R_OK):
        raise PlmkitError(f"{path}: {what} is not readable (permission denied)")
    return path


def check_input_dir(path: str | Path, what: str = "directory") -> Path:
    """Refuse a missing input directory, or a file given where a directory is expected."""
    path = Path(path)
    if not path.exists():
        raise PlmkitError(f"{path}: {what} not found")
    if not path.is_dir():
        raise PlmkitError(f"{path}: not a directory; expected a {what}")
    return path


def check_out_dir(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing, non-empty output directory unless ``overwrite``, and a location that
    cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PlmkitError(f"{path}: output path exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise PlmkitError(f"{path}: output directory exists (pass --overwrite to replace it)")
    check_writable(path)
    return path


def check_out_file(path: str | Path, overwrite: bool) -> Path:
    """Refuse an output file path that is a directory, an existing file unless ``overwrite``, and
    a location that cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise PlmkitError(f"{path}: is a directory; give a file path to write")
    if path.exists() and not overwrite:
        raise PlmkitError(f"{path}: file exists (pass --overwrite to replace it)")
    check_writable(path)
    return path


def check_writable(path: Path) -> None:
    """Refuse an output whose location cannot be written (/proc, a read-only directory, a path
    through a file) before any work, naming the output rather than the hidden work directory a
    stage would trip over minutes later: a probe directory is created and removed where the
    output's first missing part would go (named like a temporary sibling, so a kill in between
    leaves nothing ``clean_stale`` keeps)."""
    child = path.absolute()
    while not child.parent.exists() and child.parent != child.parent.parent:
        child = child.parent
    parent = child.parent
    if not parent.is_dir():
        raise PlmkitError(f"{path}: cannot write ({parent} is not a directory)")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=_tmp_prefix(child), dir=parent))
    except OSError as e:
        raise PlmkitError(f"{path}: cannot write ({parent}: {e.strerror or e})") from None


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError while writing ``path`` becomes one line naming it."""
    try:
        yield
    except OSError as e:
        raise PlmkitError(f"{path}: cannot write ({e.strerror or e})") from None


# --------------------------------------------------------------------------- temporary siblings

_TMP_RE = re.compile(r"\.(?:tmp|old)-(\d+)(?:-|$)")


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # exists, owned by another user
        return True
    return True


def clean_stale(path: Path, started: float | None = None) -> None:
    """Remove the temporary siblings of ``path`` a killed writer left: ``.NAME.tmp-PID-*`` and
    ``.NAME.old-PID`` whose process is gone, and older unnamed ones (``.NAME.tmp-XXXX`` from
    before the pid was in the name) last modified before ``started``."""
    parent = path.parent
    if not parent.is_dir():
        return
    for pattern in (f".{glob.escape(path.name)}.tmp-*", f".{glob.escape(path.name)}.old-*"):
        for p in parent.glob(pattern):
            m = _TMP_RE.match(p.name[len(path.name) + 1:])
            if m is not None:
                stale = not _alive(int(m.group(1)))
            else:
                try:
                    stale = started is not None and p.lstat().st_mtime < started
                except OSError:
                    continue
            if not stale:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


# --------------------------------------------------------------------------- durability


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not directory:            # some filesystems refuse fsync on a directory: that is fine
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory bottom-up (``root`` last)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = Path(dirpath, name)
            if not p.is_symlink():
                _fsync_path(p)
        _fsync_path(Path(dirpath), directory=True)


# --------------------------------------------------------------------------- writes


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    started = time.time()
    check_out_dir(path, overwrite)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(path, started)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    try:
        yield tmp
        with _writing(path):
            fsync_tree(tmp)
            replace_dir(tmp, path)
            _fsync_path(path.parent, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def work_dir(path: str | Path, *, libraries: bool = False) -> Iterator[Path]:
    """A scratch directory for the work that makes ``path``, removed when the block ends. It is a
    temporary sibling of ``path`` (``.NAME.tmp-PID-XXXX``), not a folder in the system temp
    directory: a run killed mid-way (``kill -9``) leaves it where the next write of ``path``
    removes it (``clean_stale``), on the output's filesystem and in plain sight. ``libraries``:
    the scratch folders libraries make through ``tempfile`` in the block (ONNX Runtime's and
    NNCF's, hundreds of MB for a large model) go inside it too."""
    path = Path(path)
    started = time.time()
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(path, started)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    previous = tempfile.tempdir
    try:
        if libraries:
            tempfile.tempdir = str(tmp)
        yield tmp
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, swapping out an existing ``dst`` as late as possible."""
    if dst.exists():
        trash = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        if trash.exists():
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    if path.is_dir():
        raise PlmkitError(f"{path}: is a directory; give a file path to write")
    started = time.time()
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(path, started)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_path(path.parent, directory=True)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path, object_only: bool = True) -> Any:
    """A JSON file; its top level must be an object unless ``object_only`` is False."""
    path = check_input_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        line = getattr(e, "lineno", None)
        where = f"{path}:{line}" if line else str(path)
        raise PlmkitError(f"{where}: not valid JSON ({e.__class__.__name__})") from None
    if object_only and not isinstance(data, dict):
        raise PlmkitError(f"{path}: expected a JSON object ({{...}}), found a JSON {_json_type(data)}")
    return data


def _json_type(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)
