"""Train-state checkpoints: save, find, rotate, and restore for exact resume.

Layout of ``out_dir/checkpoints/step-N/`` (each written whole via ``atomic_dir``, so a
directory named ``step-N`` is always complete; a kill mid-write leaves only a hidden
``.step-N.tmp-*`` directory, removed on the next resume; a file cut short later, e.g. by a full
disk or a copy, makes the resume fall back to the checkpoint before, see ``check_readable``):

* model weights, written by the caller's ``save_fn`` (default ``model.safetensors``);
* ``train_state.pt``: optimizer, scheduler, per-rank RNG states, per-rank data-source
  states, loop counters. Only tensors and plain Python values, so it loads with
  ``torch.load(weights_only=True)`` (no pickle code execution);
* ``train_config.json`` (the resolved TrainArgs) and ``fingerprint.json`` (what must
  match to resume);
* under FSDP, ``optimizer.pt``: the full (unsharded) optimizer state keyed by parameter
  name, apart from ``train_state.pt`` so that only rank 0 reads it. The weights are the
  same ``model.safetensors`` as without FSDP.
"""
from __future__ import annotations

import contextlib
import json
import pickle
import random
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import safetensors.torch
import torch
from torch import nn

from ..errors import PlmkitError
from ..io import atomic_dir, read_json, write_json

STATE_FILE = "train_state.pt"
OPTIM_FILE = "optimizer.pt"
FINGERPRINT_FILE = "fingerprint.json"
CONFIG_FILE = "train_config.json"
MODEL_FILE = "model.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")

SaveFn = Callable[[nn.Module, Path], None]
LoadFn = Callable[[nn.Module, Path], None]


# ---- RNG states as tensors / primitives (weights_only-loadable) ----

def rng_state() -> dict[str, Any]:
    """Torch (CPU + CUDA), Python and NumPy generator states."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["mt"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (e.g. evaluation) without disturbing the training RNG streams."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- run directories ----

def run_dir(out: Path, stage: str, resume: bool, overwrite: bool) -> Path:
    """The hidden run directory ``.OUT.STAGE`` beside ``out`` (checkpoints, metrics); only
    ``resume`` may reuse an existing one, ``overwrite`` removes it."""
    work = out.with_name(f".{out.name}.{stage}")
    if work.exists() and not resume:
        if not overwrite:
            raise PlmkitError(f"{work}: an interrupted run of this output exists; continue it with --resume, "
                              "or start over with --overwrite")
        shutil.rmtree(work)
    return work


# ---- model weights ----

TRAINABLE_FILE = "trainable.safetensors"   # save_trainable's checkpoints: only what trains


def save_trainable(model: nn.Module, directory: Path) -> None:
    """A ``save_fn`` for runs that train part of a model: frozen weights equal the parent's."""
    safetensors.torch.save_file({n: p.detach().contiguous() for n, p in model.named_parameters()
                                 if p.requires_grad}, str(directory / TRAINABLE_FILE))


@torch.no_grad()
def load_trainable(model: nn.Module, directory: Path) -> None:
    """The ``load_fn`` of ``save_trainable``."""
    state = safetensors.torch.load_file(str(directory / TRAINABLE_FILE))
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise PlmkitError(f"{directory / TRAINABLE_FILE}: weights {unknown[:3]} do not belong to this model")
    for name, value in state.items():
        params[name].copy_(value)


def save_safetensors(model: nn.Module, directory: Path) -> None:
    """Default ``save_fn``: the full state dict as ``model.safetensors`` (tied weights once)."""
    safetensors.torch.save_model(model, str(directory / MODEL_FILE))


def load_safetensors(model: nn.Module, directory: Path) -> None:
    """Default ``load_fn``: strict load of ``model.safetensors`` onto the model's device."""
    path = directory / MODEL_FILE
    if not path.is_file():
        raise PlmkitError(f"{directory}: no {MODEL_FILE}; pass a load_fn matching the save_fn")
    device = next(model.parameters()).device
    dev = device.index if device.type == "cuda" else "cpu"
    check_safetensors(path)
    try:
        safetensors.torch.load_model(model, str(path), strict=True, device=dev)
    except RuntimeError as e:
        raise PlmkitError(f"{path}: weights do not match the model ({e})") from None


# ---- FSDP: full (unsharded) state dicts ----
# Gathering is a collective (every rank calls it); the result lands on rank 0's CPU and the
# other ranks get {}. Loading reads on rank 0 and broadcasts, each rank keeping its shard.

# torch.distributed.checkpoint is imported only here, on first use: it costs ~0.6 s of start-up
# for every command otherwise.

def _dcp() -> Any:
    from torch.distributed.checkpoint import state_dict

    return state_dict


def _options(kind: str) -> Any:
    opts = _dcp().StateDictOptions
    if kind == "gather":
        return opts(full_state_dict=True, cpu_offload=True)
    # Parameters that never received a gradient (e.g. an unused pooler) have no AdamW state.
    return opts(full_state_dict=True, broadcast_from_rank0=True, strict=kind != "scatter_optim")


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """alias name -> kept name for tied parameters, the names ``save_model`` drops/keeps."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return {alias: sorted(names)[0] for names in groups.values() for alias in sorted(names)[1:]}


def gather_model(model: nn.Module) -> dict[str, torch.Tensor]:
    return _dcp().get_model_state_dict(model, options=_options("gather"))


def gather_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return _dcp().get_optimizer_state_dict(model, optimizer, options=_options("gather"))


def full_state_writer(state: dict[str, torch.Tensor], aliases: dict[str, str]) -> SaveFn:
    """A ``save_fn`` writing a gathered state dict exactly as :func:`save_safetensors`
    writes an unsharded model: tied weights once, ``{alias: kept}`` as metadata."""
    def write(_model: nn.Module, directory: Path) -> None:
        kept = {k: v.contiguous() for k, v in state.items() if k not in aliases}
        metadata = {a: k for a, k in aliases.items() if a in state} or None
        safetensors.torch.save_file(kept, str(directory / MODEL_FILE), metadata=metadata)
    return write


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer | None, directory: Path,
                 is_main: bool) -> None:
    """Load ``model.safetensors`` (and ``optimizer.pt``) into an FSDP model: rank 0 reads,
    every rank receives its shards. Every rank must call this."""
    state: dict[str, torch.Tensor] = {}
    if is_main:
        path = directory / MODEL_FILE
        if not path.is_file():
            raise PlmkitError(f"{directory}: no {MODEL_FILE}")
        state = safetensors.torch.load_file(str(path))
        for alias, kept in tied_aliases(model).items():
            if kept in state:
                state.setdefault(alias, state[kept])
    try:
        _dcp().set_model_state_dict(model, state, options=_options("scatter"))
    except (RuntimeError, KeyError) as e:
        raise PlmkitError(f"{directory / MODEL_FILE}: weights do not match the model ({e})") from None
    if optimizer is not None:
        optim = _load(directory / OPTIM_FILE) if is_main else {}
        _dcp().set_optimizer_state_dict(model, optimizer, optim, options=_options("scatter_optim"))


# ---- checkpoint directories ----

def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first. Hidden ``.step-*`` dirs are partial writes."""
    if not ckpt_root.is_dir():
        return []
    found = []
    for d in ckpt_root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / STATE_FILE).is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1][1] if found else None


def remove_partial(ckpt_root: Path) -> None:
    """Delete leftovers of writes interrupted by a crash or kill."""
    if ckpt_root.is_dir():
        for d in ckpt_root.iterdir():
            if d.name.startswith(".step-") and d.is_dir():
                shutil.rmtree(d, ignore_errors=True)


def rotate(ckpt_root: Path, keep_last: int) -> None:
    """Keep only the ``keep_last`` newest checkpoints (0 keeps all)."""
    if keep_last <= 0:
        return
    for _, d in list_checkpoints(ckpt_root)[:-keep_last]:
        shutil.rmtree(d, ignore_errors=True)


def save_checkpoint(directory: Path, *, model: nn.Module, state: dict[str, Any],
                    config: dict[str, Any], fingerprint: dict[str, Any], save_fn: SaveFn,
                    optimizer: dict[str, Any] | None = None) -> None:
    """Write one complete checkpoint directory atomically (replacing a same-step one).
    ``optimizer`` (FSDP's gathered optimizer state) goes to its own file."""
    with atomic_dir(directory, overwrite=True) as tmp:
        save_fn(model, tmp)
        if optimizer is not None:
            torch.save(optimizer, tmp / OPTIM_FILE)
        torch.save(state, tmp / STATE_FILE)
        write_json(tmp / CONFIG_FILE, config)
        write_json(tmp / FINGERPRINT_FILE, fingerprint)


STATE_KEYS = {"step", "optimizer", "scheduler", "rng", "data", "counters"}


class Unreadable(PlmkitError):
    """A checkpoint file that is cut short or damaged (not one that is unsafe to read)."""


def load_state(directory: Path) -> dict[str, Any]:
    state = _load(directory / STATE_FILE)
    if not isinstance(state, dict) or not STATE_KEYS <= set(state):
        raise PlmkitError(f"{directory / STATE_FILE}: not a plmkit train state (expected the keys "
                          f"{', '.join(sorted(STATE_KEYS))})")
    return state


def _load(path: Path) -> dict[str, Any]:
    """A ``torch.save`` archive of tensors and plain values. Anything else is refused, not
    unpickled: a raw pickle (it could run code), or an archive naming other Python objects."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise Unreadable(f"{path}: cannot read ({e.strerror or e})") from None
    if magic != b"PK\x03\x04":
        raise PlmkitError(f"{path}: not a torch zip archive (a raw pickle?); plmkit never unpickles "
                          "checkpoint files, refusing to load it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise PlmkitError(f"{path}: holds Python objects beyond tensors and plain values; refusing to "
                          f"unpickle it ({first})") from None
    except (OSError, RuntimeError, EOFError) as e:
        raise Unreadable(f"{path}: cannot read train state ({e.__class__.__name__}: {e})") from None


def check_safetensors(path: Path) -> None:
    """Raise ``Unreadable`` when a .safetensors file is cut short: its header must parse and
    the tensors it lists must end where the file ends (cheap: no tensor is read)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
    except (OSError, ValueError) as e:
        raise Unreadable(f"{path}: cannot read ({e})") from None
    if not isinstance(header, dict):
        raise Unreadable(f"{path}: truncated or damaged safetensors header")
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)]
    if 8 + n + max(ends, default=0) != size:
        raise Unreadable(f"{path}: truncated ({size} bytes, the header describes "
                         f"{8 + n + max(ends, default=0)})")


def check_readable(directory: Path) -> dict[str, Any]:
    """Every file of a checkpoint is whole: ``Unreadable`` if one is cut short (the caller falls
    back to an older checkpoint); PlmkitError if a state file is unsafe to load. Returns the
    train state (read here anyway)."""
    state = load_state(directory)
    if (directory / OPTIM_FILE).is_file():   # FSDP's full optimizer state: checked, not loaded twice
        try:
            zipfile.ZipFile(directory / OPTIM_FILE).close()
        except (OSError, zipfile.BadZipFile) as e:
            raise Unreadable(f"{directory / OPTIM_FILE}: truncated or damaged ({e})") from None
    for path in sorted(directory.glob("*.safetensors")):
        check_safetensors(path)
    return state


# ---- fingerprints ----

def fingerprint_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable lines for every key whose value differs (or exists on one side)."""
    lines = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if a != b:
            lines.append(f"{key}: checkpoint has {a!r}, now {b!r}")
    return lines


def check_fingerprint(directory: Path, current: dict[str, Any],
                      ignore_saved: set[str] | frozenset[str] = frozenset()) -> None:
    """Refuse to resume when the run's settings differ from those that wrote ``directory``.
    Keys in ``ignore_saved`` that only the checkpoint has (settings that no longer need to
    match) are left out."""
    saved = read_json(directory / FINGERPRINT_FILE)
    saved = {k: v for k, v in saved.items() if k in current or k not in ignore_saved}
    # JSON turns tuples into lists; compare in JSON form on both sides.
    current = _jsonable(current)
    diff = fingerprint_diff(saved, current)
    if diff:
        raise PlmkitError(f"cannot resume from {directory}: settings differ from the checkpoint:\n  "
                          + "\n  ".join(diff)
                          + "\n(use the original settings, or start a new run in a new directory)")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
