"""The table of runners: for each kind of row (``Variant``, bench/rows.py), which model
directories it measures and how the worker loads and times it.

    runner = RUNNERS[variant.kind]
    model, params = runner.load(variant, threads)        # in the worker process
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..loading import Saved, load, peek
from ..tasks import TASKS, load_finetuned
from .peers import PEERS
from .rows import Settings, Variant, bench_task, hf_export


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
    return kind_of(peek(path)), bench_task(path)


def make_variant(path: str, precision: str) -> Variant:
    p = Path(path)
    kind, task = task_of_dir(p)
    fixed = RUNNERS[kind].precision
    return Variant(p.name, str(p), kind, fixed(peek(p)) if fixed else precision, task, str(p))
