"""The rows a benchmark measures (``Variant``), its settings, and what every kind of row shares:
the task a directory is benched on, its encoding, the HF export of the baselines, the result row.
Below both ``runners.py`` (the table of row kinds) and ``peers.py`` (the peer engines it lists).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PlmkitError
from ..loading import load, peek
from ..models.checkpoint import export_hf
from ..tasks import BENCH_TASKS, TASKS, Prep, TaskSpec, prep_of, task_of
from ..tokenizer import load_tokenizer

WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx.data", ".bin")
EVAL_BATCH = 64          # plmkit evaluate's default batch size: same batches, same metric
# What bench times: the tasks with a transformers baseline, and sentence embeddings (plmkit's rows
# only: transformers has no head class that computes them, so no baseline or peer rows).
TIMED_TASKS = (*BENCH_TASKS, "embed")


@dataclass
class Variant:
    name: str
    path: str                     # the directory the row measures
    kind: str                     # a key of RUNNERS: transformers | torch | onnx | openvino-ir | optimum-ort | openvino
    precision: str                # fp32 | bf16 | int8
    task: str                     # classify | ner | qa | embed
    features_from: str            # checkpoint whose tokenizer and preprocessing encode the data
    baseline: bool = False


@dataclass
class Settings:
    data: str
    batch_sizes: list[int]
    repeats: int = 3
    warmup: int = 3
    latency_examples: int = 200
    max_examples: int | None = None
    threads: int = 1
    precision: str = "bf16"        # torch rows: plmkit's inference precision as resolved (bf16 or fp32)
    peer_python: str | None = None   # peer rows: the python of the peers' virtual environment
    calibration: str | None = None   # peer rows that calibrate (OpenVINO): labelled file of the task (default: data)
    calibration_examples: int = 300  # its first N examples (optimum's default sample count)
    peer_input: str = "hf"           # what the peers quantize: the HF export, or plmkit's fp32 ONNX export (onnx)
    unit_stats: bool = False         # plmkit rows: also each example's score (the task's unit_stats)


def hf_export(source: Path, work: Path, settings: Settings | None = None) -> Path:
    """An HF directory transformers loads: ``source`` itself if it is one, else an export of it
    (made once per work directory: the transformers row and the peers share it)."""
    if peek(source).format == "huggingface":
        return source
    out = work / "hf-baseline"
    if out.is_dir():
        return out
    export_hf(load(source, needs_torch="the transformers baseline"), out, load_tokenizer(source))
    return out


def bench_task(path: Path) -> str:
    """The task a model directory is benchmarked on, from its config files alone (nothing loaded)."""
    saved = peek(path)
    task = task_of(path, saved.task, saved.head_config)
    if task is None or task.name not in TIMED_TASKS:
        raise PlmkitError(f"{path}: a '{saved.task}' model has no task to benchmark (fine-tune it first; "
                          f"bench runs {', '.join(TIMED_TASKS)} models)")
    return task.name


def weights_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def row_of(v: Variant, s: Settings, by_batch: dict[str, dict[str, float]], params: int, size_bytes: int,
           rss_kb: int, metrics: dict[str, Any], metric: str, examples: int) -> dict[str, Any]:
    """One result row, from what a worker measured (plmkit's or a peer's)."""
    small, large = by_batch[str(min(s.batch_sizes))], by_batch[str(max(s.batch_sizes))]
    return {"name": v.name, "path": v.path, "kind": v.kind, "precision": v.precision,
            "params": int(params), "size_mb": round(size_bytes / 2**20, 3),
            "latency_p50_ms": small["latency_p50_ms"], "latency_p95_ms": small["latency_p95_ms"],
            "throughput": large["throughput"], "peak_rss_mb": round(rss_kb / 1024, 1),
            "metric": float(metrics[metric]), "metric_name": metric, "metrics": metrics, "baseline": v.baseline,
            "speedup": None, "examples": examples, "by_batch": by_batch}


def encoding(path: str, task_name: str) -> tuple[TaskSpec, Prep, Any, dict[str, Any]]:
    """(task, preprocessing settings, tokenizer, head_config) stored in a checkpoint; no weights loaded.

    The same values ``load_finetuned`` gives ``plmkit evaluate``, so the features are the same.
    """
    head_config = peek(path).head_config
    return TASKS[task_name], prep_of(path, head_config), load_tokenizer(path), head_config
