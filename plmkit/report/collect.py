"""Read what a run left on disk into plain dicts for the report.

A run is a directory of stage outputs: ``RUN/<stage>/`` as ``plmkit run`` lays them out, or
any directory whose sub-directories are plmkit checkpoints / stage outputs. Nothing here
loads a model: the report reads only JSON files and safetensors headers, so it is fast and
works on a machine without the run's Python environment quirks.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PlmkitError
from ..io import read_json

STAMP = ".recipe-stage.json"          # written by the recipe runner when a stage completes
ANALYSIS_FILES = ("similarity.json", "landscape.json")


@dataclass
class Stage:
    name: str
    path: Path
    kind: str                          # pretrain, finetune, ..., or "" when unknown
    meta: dict[str, Any] = field(default_factory=dict)       # plmkit.json
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl
    stamp: dict[str, Any] = field(default_factory=dict)      # recipe runner's record
    extra: dict[str, Any] = field(default_factory=dict)      # bench.json, similarity.json, ... by file name


@dataclass
class Run:
    path: Path
    stages: list[Stage]
    recipe: dict[str, Any] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[Stage]:
        return [s for s in self.stages if s.kind == kind]

    def find(self, file_name: str) -> list[tuple[Stage, Any]]:
        return [(s, s.extra[file_name]) for s in self.stages if file_name in s.extra]

    def by_path(self, path: str | None) -> Stage | None:
        if not path:
            return None
        target = Path(path).resolve()
        return next((s for s in self.stages if s.path.resolve() == target), None)


def collect(run_dir: str | Path) -> Run:
    """All stage outputs under ``run_dir`` (one level down), in recipe order when known."""
    root = Path(run_dir)
    if not root.is_dir():
        raise PlmkitError(f"{root}: run directory not found")
    recipe = _read_optional(root / ".recipe" / "state.json") or {}
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    stages = [s for s in (_read_stage(p, root) for p in candidates) if s is not None]
    order = {name: i for i, name in enumerate(recipe.get("order", []))}
    stages.sort(key=lambda s: (order.get(s.name, len(order)), s.name))
    if not stages:
        raise PlmkitError(f"{root}: no stage outputs found (expected sub-directories with plmkit.json, "
                          "metrics.jsonl or bench.json)")
    return Run(root, stages, recipe)


def _read_stage(path: Path, root: Path) -> Stage | None:
    meta = _read_optional(path / "plmkit.json") or {}
    _check_objects(path / "plmkit.json", meta, ("metrics", "pruning", "strategy", "size_bytes"))
    stamp = _read_optional(path / STAMP) or {}
    extra = {}
    for name in ("bench.json", "compress.json", *ANALYSIS_FILES):
        found = _read_optional(path / name)
        if found is not None:
            extra[name] = found
    if "bench.json" in extra:
        _check_bench(path / "bench.json", extra["bench.json"])
    if "compress.json" in extra:
        _check_rows(path / "compress.json", extra["compress.json"], "candidates", _COMPRESS_NUMBERS)
    records = _read_metrics(path / "metrics.jsonl")
    if not (meta or records or extra or stamp):
        return None
    name = path.name if path != root else (meta.get("stage") or path.name)
    kind = meta.get("stage") or stamp.get("stage") or ("bench" if "bench.json" in extra else "")
    return Stage(name, path, kind, meta, records, stamp, extra)


# bench.json row fields the report reads as numbers (each may be null: not measured).
_BENCH_NUMBERS = ("params", "size_mb", "latency_p50_ms", "latency_p95_ms", "throughput", "metric", "speedup",
                  "batch_size")


def _check_objects(path: Path, data: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise PlmkitError(f"{path}: '{key}' must be a JSON object, found {type(data[key]).__name__}")


# compress.json candidate fields the report reads as numbers
_COMPRESS_NUMBERS = ("params", "size_mb", "score", "drop_points", "latency_ms", "throughput", "speedup")


def _check_bench(path: Path, bench: dict[str, Any]) -> None:
    """The shape the report relies on: ``rows`` a list of objects with a name and numbers."""
    _check_objects(path, bench, ("machine",))
    _check_rows(path, bench, "rows", _BENCH_NUMBERS)


def _check_rows(path: Path, data: dict[str, Any], key: str, numbers: tuple[str, ...]) -> None:
    rows = data.get(key, [])
    if not isinstance(rows, list):
        raise PlmkitError(f"{path}: '{key}' must be a list of result rows, found {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise PlmkitError(f"{path}: {key}[{i}] must be an object with a 'name' string")
        for field_name in numbers:
            value = row.get(field_name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise PlmkitError(f"{path}: {key}[{i}].{field_name} must be a number, found {value!r}")


def _read_optional(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records; a line cut short by a kill is skipped, as the training loop does."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():   # a bad line is skipped
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            records.append(rec)
    return records


def safetensors_params(path: Path) -> int | None:
    """Parameter count from a safetensors header (8-byte length + JSON), without loading weights."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        try:
            header = json.loads(f.read(min(n, 100 << 20)))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None                       # not a safetensors file: the size is unknown, not an error
    if not isinstance(header, dict):
        return None
    total = 0
    for name, info in header.items():
        if name != "__metadata__" and isinstance(info, dict):
            count = 1
            for d in info.get("shape", []):
                count *= d
            total += count
    return total


def dir_size_mb(path: Path) -> float:
    """Size of the model files in a checkpoint directory (weights and graphs, not logs)."""
    names = ("model.safetensors", "adapter.safetensors", "model.onnx", "model.onnx.data", "pytorch_model.bin")
    return sum((path / n).stat().st_size for n in names if (path / n).is_file()) / 2**20
