"""The rows a benchmark measures (``Variant``), its settings, and the table of runners: for each
kind of row, which model directories it measures and how the worker loads and times it.

    runner = RUNNERS[variant.kind]
    model, params = runner.load(variant, threads)        # in the worker process
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import PlmkitError
from ..loading import Saved, load, peek
from ..models.checkpoint import export_hf
from ..tasks import BENCH_TASKS, TASKS, Prep, TaskSpec, load_finetuned, prep_of, task_of
from ..tokenizer import load_tokenizer
from .peers import PEERS


@dataclass
class Variant:
    name: str
    path: str                     # the directory the row measures
    kind: str                     # a key of RUNNERS: transformers | torch | onnx | openvino-ir | optimum-ort | openvino
    precision: str                # fp32 | bf16 | int8
    task: str                     # classify | ner | qa
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


class HFRunner:
    """A transformers model behind the ``model(**batch) -> .logits`` interface the task code calls."""

    def __init__(self, path: str, task: str):
        import torch
        import transformers
        from torch import nn

        from ..models.heads import ModelOutput

        auto = getattr(transformers, TASKS[task].hf_auto)
        self.model = auto.from_pretrained(path, attn_implementation="eager", dtype=torch.float32,
                                          use_safetensors=True).eval()
        self.output, self.anchor = ModelOutput, nn.Parameter(torch.zeros(0))

    def parameters(self):              # forward_batches asks the first parameter for the device
        yield self.anchor

    def eval(self) -> "HFRunner":
        return self

    def __call__(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Any:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        if hasattr(out, "start_logits"):
            return self.output(start_logits=out.start_logits, end_logits=out.end_logits)
        return self.output(logits=out.logits)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


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


def _load_transformers(v: Variant, threads: int) -> tuple[Any, int]:
    model = HFRunner(v.path, v.task)
    return model, model.num_parameters()


def _load_torch(v: Variant, threads: int) -> tuple[Any, int]:
    model = load_finetuned(v.path, v.task)[0]
    return model, model.num_parameters()


def _load_onnx(v: Variant, threads: int) -> tuple[Any, int]:
    model = load(v.path, threads=threads)
    return model, model.source_parameters()      # the count of the model it was exported from


def plmkit_worker(v: Variant, s: Settings, spec: Path, out: Path) -> list[str]:
    """The command of a row measured by plmkit's own worker (``plmkit/bench/worker.py``)."""
    return [sys.executable, "-m", "plmkit.bench", "--worker", str(spec), str(out)]


@dataclass(frozen=True)
class Runner:
    """One kind of row."""
    formats: tuple[str, ...]       # model directory formats (loading.peek) measured as this kind
    load: Callable[[Variant, int], tuple[Any, int]] | None    # worker: (model, parameter count), given threads
    autocast: bool                 # timed under plmkit's autocast at the row's precision (else in its own)
    precision: Callable[[Saved], str] | None = None    # the precision the directory fixes (else --precision)
    prepare: Callable[[Path, Path, Settings], Path] | None = None  # parent: the directory the worker loads,
    #                                                     made from ``features_from`` in a work directory
    command: Callable[[Variant, Settings, Path, Path], list[str]] = plmkit_worker   # parent: the worker
    #                                                     process, given (variant, settings, spec, out)
    finish: Callable[[dict[str, Any], Variant, Settings], dict[str, Any]] | None = None   # parent: the
    #                                                     worker's result -> the row (peers: the metric)
    baseline: str | None = None    # the --baselines name that adds this row (never picked by format)


RUNNERS: dict[str, Runner] = {
    # the baseline: an HF layout of the original model in transformers, fp32 eager (never picked by format)
    "transformers": Runner((), _load_transformers, autocast=False, prepare=hf_export, baseline="hf"),
    "torch": Runner(("plmkit", "huggingface", "adapter"), _load_torch, autocast=True),
    "onnx": Runner(("onnx",), _load_onnx, autocast=False,
                   precision=lambda saved: str(saved.meta.get("precision", "fp32"))),
    # plmkit's own OpenVINO export (quantize --engine openvino); "openvino" is the peer optimum-intel
    "openvino-ir": Runner(("openvino",), _load_onnx, autocast=False,
                          precision=lambda saved: str(saved.meta.get("precision", "int8"))),
    # the peers: the same HF export, quantized and timed in the peers' own virtual environment
    # (benchmarks/peers_env.py) on token ids plmkit encoded; plmkit scores their logits (bench/peers.py)
    **{engine.kind: Runner((), None, autocast=False, prepare=engine.prepare,
                           command=engine.command, finish=engine.finish, baseline=engine.kind)
       for engine in PEERS},
}
BASELINES = {r.baseline: kind for kind, r in RUNNERS.items() if r.baseline}   # --baselines name -> row kind


def kind_of(saved: Saved) -> str:
    return next(kind for kind, r in RUNNERS.items() if saved.format in r.formats)


def task_of_dir(path: Path) -> tuple[str, str]:
    """(kind, task name) of a model directory, from its config files alone (nothing loaded)."""
    saved = peek(path)
    task = task_of(path, saved.task, saved.head_config)
    if task is None or task.name not in BENCH_TASKS:
        raise PlmkitError(f"{path}: a '{saved.task}' model has no task to benchmark (fine-tune it first; "
                          f"bench runs {', '.join(BENCH_TASKS)} models)")
    return kind_of(saved), task.name


def make_variant(path: str, precision: str) -> Variant:
    p = Path(path)
    kind, task = task_of_dir(p)
    fixed = RUNNERS[kind].precision
    return Variant(p.name, str(p), kind, fixed(peek(p)) if fixed else precision, task, str(p))


def row_of(v: Variant, s: Settings, by_batch: dict[str, dict[str, float]], params: int, size_bytes: int,
           rss_kb: int, metrics: dict[str, Any], metric: str, examples: int) -> dict[str, Any]:
    """One result row, from what a worker measured (plmkit's or a peer's)."""
    small, large = by_batch[str(min(s.batch_sizes))], by_batch[str(max(s.batch_sizes))]
    return {"name": v.name, "path": v.path, "kind": v.kind, "precision": v.precision,
            "params": int(params), "size_mb": round(size_bytes / 2**20, 3),
            "latency_p50_ms": small["latency_p50_ms"], "latency_p95_ms": small["latency_p95_ms"],
            "throughput": large["throughput"], "peak_rss_mb": round(rss_kb / 1024, 1),
            "metric": float(metrics[metric]), "metrics": metrics, "baseline": v.baseline, "speedup": None,
            "examples": examples, "by_batch": by_batch}


def encoding(path: str, task_name: str) -> tuple[TaskSpec, Prep, Any, dict[str, Any]]:
    """(task, preprocessing settings, tokenizer, head_config) stored in a checkpoint; no weights loaded.

    The same values ``load_finetuned`` gives ``plmkit evaluate``, so the features are the same.
    """
    head_config = peek(path).head_config
    return TASKS[task_name], prep_of(path, head_config), load_tokenizer(path), head_config
