"""Measure model variants on the same data: size, latency, throughput, peak memory, task metric.

The parent process checks every input (model directories, one task for all, the data file in
that task's format), then runs each variant in a subprocess of its own
(``python -m plmkit.eval.bench --worker SPEC OUT``), so a variant's peak RSS is its own and
one variant's allocator state or thread pools cannot slow the next.

What a worker does, identically for every row:
  * reads FILE and encodes it with the tokenizer and preprocessing settings stored in the
    checkpoint (the transformers baseline uses those of the checkpoint it was exported from,
    so every row sees the same token ids);
  * forms batches of B consecutive examples **in file order** (not sorted by length), each
    padded to its longest member, all collated before timing: the clock covers the model
    call only, not tokenising or padding;
  * per batch size: ``warmup`` untimed batches, then ``repeats`` timed passes; latency
    percentiles are over every timed batch, throughput is examples / median pass time.
    Batch size 1 runs on the first ``latency_examples`` examples; larger batch sizes run on
    all of them;
  * scores the task metric with the task's own ``evaluate`` (batches of 64, as
    ``plmkit evaluate``), so the metric equals what ``plmkit evaluate`` reports.
"""
from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import PlmkitError
from ..io import read_json, write_json

KINDS = ("transformers", "torch", "onnx")
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx.data", ".bin")
EVAL_BATCH = 64          # plmkit evaluate's default batch size: same batches, same metric


@dataclass
class Variant:
    name: str
    path: str                     # the directory the worker loads
    kind: str                     # transformers | torch | onnx
    precision: str                # fp32 | bf16 | int8
    task: str                     # classify | ner | qa
    features_from: str            # checkpoint whose tokenizer and preprocessing encode the data
    baseline: bool = False
    params: int | None = None     # known without loading (ONNX: from the model config)


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


# ------------------------------------------------------------------ the parent: checking inputs


def task_of_dir(path: Path) -> tuple[str, str]:
    """(kind, task name) of a model directory, from its config files alone (nothing loaded)."""
    from ..compress.onnx_model import is_onnx_dir
    from ..models import convert
    from ..models.checkpoint import read_model_config
    from ..tasks import TASK_OF_HEAD

    if not path.is_dir():
        raise PlmkitError(f"{path}: model directory not found")
    if not (path / "config.json").is_file():
        raise PlmkitError(f"{path}: not a model directory (no config.json)")
    kind = "onnx" if is_onnx_dir(path) else "torch"
    raw = read_model_config(path)
    if "plmkit" in raw:
        head, saved = raw.get("task", "base"), raw.get("head_config", {}).get("finetune_task")
    else:
        _, head = convert.hf_family(raw, str(path / "config.json"))
        saved = None
    task = saved or TASK_OF_HEAD.get(head)
    if task not in ("classify", "ner", "qa"):
        raise PlmkitError(f"{path}: a '{head}' model has no task to benchmark (fine-tune it first; "
                          f"bench runs classify, ner and qa models)")
    return kind, task


def make_variant(path: str, precision: str) -> Variant:
    p = Path(path)
    kind, task = task_of_dir(p)
    if kind == "onnx":
        meta = read_json(p / "plmkit.json")
        return Variant(p.name, str(p), "onnx", str(meta.get("precision", "fp32")), task, str(p),
                       params=_onnx_params(p))
    return Variant(p.name, str(p), "torch", precision, task, str(p))


def _onnx_params(path: Path) -> int:
    """The parameter count of the model the graph was exported from (as ``plmkit info``)."""
    import torch

    from ..models.config import config_from_dict
    from ..models.model import PlmModel

    raw = read_json(path / "config.json")
    with torch.device("meta"):      # shapes only: no memory, no initialisation
        model = PlmModel(config_from_dict(raw["model"]), raw.get("task", "base"), raw.get("head_config", {}))
    return model.num_parameters()


def metric_name(task: str) -> str:
    from ..tasks import TASKS

    return TASKS[task].metric


def unique_names(variants: list[Variant]) -> None:
    """Directory names, widened with parent folders where two rows would share one."""
    for depth in range(1, 6):
        names = ["/".join(Path(v.path).resolve().parts[-depth:]) for v in variants]
        if len(set(names)) == len(names):
            break
    for v, n in zip(variants, names):
        v.name = n


def check_data(variant: Variant, data: str, max_examples: int | None) -> int:
    """Read FILE as the variant's task would; a file of another task fails here, in one line."""
    if not Path(data).is_file():
        raise PlmkitError(f"{data}: data file not found")
    task, prep, _, head_config = encoding(variant.features_from, variant.task)
    try:
        examples = task.read(data, prep, labels=head_config.get("labels"))
    except PlmkitError as e:
        raise PlmkitError(f"{data}: does not fit the models' task '{task.name}' (expected {task.help}): {e}") from None
    if not examples:
        raise PlmkitError(f"{data}: no examples")
    return min(len(examples), max_examples or len(examples))


def baseline_source(variants: list[Variant], explicit: str | None) -> Path | None:
    """The checkpoint the transformers row runs: ``explicit``, else the first torch variant, else
    the nearest checkpoint the first ONNX variant came from (plmkit.json ``parent``)."""
    if explicit:
        kind, _ = task_of_dir(Path(explicit))
        if kind != "torch":
            raise PlmkitError(f"{explicit}: the baseline must be a PyTorch checkpoint (plmkit or HF), not ONNX")
        return Path(explicit)
    for v in variants:
        if v.kind == "torch":
            return Path(v.path)
    path = Path(variants[0].path)
    for _ in range(10):                 # lineage chains are short; a cycle must not hang us
        parent = read_json(path / "plmkit.json").get("parent") if (path / "plmkit.json").is_file() else None
        if not parent or not Path(parent).is_dir():
            return None
        path = Path(parent)
        if task_of_dir(path)[0] == "torch":
            return path
    return None


def hf_export(source: Path, work: Path) -> Path:
    """An HF directory transformers loads: ``source`` itself if it is one, else an export of it."""
    from ..models.checkpoint import export_hf, load_model, read_model_config
    from ..tokenizer import load_tokenizer

    if "plmkit" not in read_model_config(source):
        return source
    out = work / "hf-baseline"
    export_hf(load_model(source), out, load_tokenizer(source))
    return out


# ------------------------------------------------------------------ the parent: running workers


def measure(variant: Variant, settings: Settings, work: Path) -> dict[str, Any]:
    """Run one variant in its own process; its result row (a PlmkitError from the worker is re-raised)."""
    spec, out = work / f"spec-{os.getpid()}.json", work / f"result-{os.getpid()}.json"
    write_json(spec, {"variant": asdict(variant), "settings": asdict(settings)})
    out.unlink(missing_ok=True)
    threads = str(settings.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PLMKIT_QUIET": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "plmkit.eval.bench", "--worker", str(spec), str(out)],
                          capture_output=True, text=True, env=env)
    result = read_json(out) if out.is_file() else {}
    if "error" in result:
        raise PlmkitError(result["error"])
    if proc.returncode != 0 or "row" not in result:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PlmkitError(f"{variant.path}: benchmark worker failed (exit {proc.returncode}): {last[:200]}")
    return result["row"]


def add_speedups(rows: list[dict[str, Any]]) -> str:
    """speedup = throughput / the baseline row's (the first row's when there is none); its name."""
    ref = next((r for r in rows if r["baseline"]), rows[0])
    for r in rows:
        r["speedup"] = round(r["throughput"] / ref["throughput"], 3) if ref["throughput"] else None
    return ref["name"]


def machine_info(threads: int) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "threads": threads,
                            "torch": torch.__version__, "load_avg_before": list(os.getloadavg())}
    for mod in ("onnxruntime", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_table(rows: list[dict[str, Any]], metric_name: str, largest: int) -> str:
    head = ["name", "kind", "prec", "params", "size MB", "p50 ms", "p95 ms", f"ex/s @{largest}",
            "speedup", "RSS MB", metric_name]
    body = [[r["name"] + (" *" if r["baseline"] else ""), r["kind"], r["precision"], f"{r['params'] / 1e6:.2f}M",
             f"{r['size_mb']:.1f}", f"{r['latency_p50_ms']:.2f}", f"{r['latency_p95_ms']:.2f}",
             f"{r['throughput']:.1f}", "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
             f"{r['peak_rss_mb']:.0f}", f"{r['metric']:.4f}"] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------ the worker


def peak_rss_kb() -> int:
    """This process's peak resident memory, in KiB.

    /proc/self/status VmHWM belongs to the process image since exec. ``ru_maxrss`` is not used
    where VmHWM exists: Linux carries the pre-exec high-water mark into it, and right after
    fork that is the *parent's* resident set (the bench process, with a model loaded).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def weights_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


class HFRunner:
    """A transformers model behind the ``model(**batch) -> .logits`` interface the task code calls."""

    def __init__(self, path: str, task: str):
        import torch
        import transformers
        from torch import nn

        from ..models.heads import ModelOutput

        auto = {"classify": transformers.AutoModelForSequenceClassification,
                "ner": transformers.AutoModelForTokenClassification,
                "qa": transformers.AutoModelForQuestionAnswering}[task]
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


def load_variant(v: Variant, threads: int) -> tuple[Any, int]:
    """(model, parameter count) for one row."""
    if v.kind == "transformers":
        model = HFRunner(v.path, v.task)
        return model, model.num_parameters()
    if v.kind == "onnx":
        from ..compress.onnx_model import load_onnx_dir

        return load_onnx_dir(v.path, threads=threads), int(v.params or 0)
    from ..tasks import load_finetuned

    model = load_finetuned(v.path, v.task)[0]
    return model, model.num_parameters()


def _timed_passes(model: Any, batches: list[dict[str, Any]], s: Settings, precision: str) -> tuple[list[float], list[float]]:
    """(seconds per timed batch, seconds per timed pass) after ``warmup`` untimed batches."""
    import torch

    from ..precision import autocast

    per_batch, per_pass = [], []
    with torch.inference_mode(), autocast(precision, torch.device("cpu")):
        for b in batches[:s.warmup]:
            model(**b)
        for _ in range(max(1, s.repeats)):
            start = time.perf_counter()
            for b in batches:
                t = time.perf_counter()
                model(**b)
                per_batch.append(time.perf_counter() - t)
            per_pass.append(time.perf_counter() - start)
    return per_batch, per_pass


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def encoding(path: str, task_name: str) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(task, preprocessing settings, tokenizer, head_config) stored in a checkpoint; no weights loaded.

    The same values ``load_finetuned`` gives ``plmkit evaluate``, so the features are the same.
    """
    from ..config import build
    from ..models import convert
    from ..models.checkpoint import load_tokenizer, read_model_config
    from ..tasks import TASKS, Prep

    raw = read_model_config(Path(path))
    if "plmkit" in raw:
        head_config = raw.get("head_config", {})
    else:
        labels = convert.labels_from_hf(raw)
        head_config = {"num_labels": len(labels), "labels": labels} if labels else {}
    prep = build(Prep, head_config.get("preprocess", {}), source=f"{path}: head_config.preprocess")
    return TASKS[task_name], prep, load_tokenizer(path), head_config


def run_worker(v: Variant, s: Settings) -> dict[str, Any]:
    """Load, encode, time every batch size, score; one result row."""
    import torch

    from ..data.features import collate
    from ..tasks import Infer, TaskData
    from ..tasks.common import INPUT_KEYS, pad_id

    torch.set_num_threads(s.threads)
    task, prep, tok, head_config = encoding(v.features_from, v.task)
    model, params = load_variant(v, s.threads)
    examples = task.read(s.data, prep, labels=head_config.get("labels"))[:s.max_examples]
    features = task.encode(tok, examples, head_config, prep)
    precision = s.precision if v.kind == "torch" else "fp32"
    pad = pad_id(tok)
    by_batch: dict[str, dict[str, float]] = {}
    for bs in s.batch_sizes:
        feats = features[:s.latency_examples] if bs == 1 else features
        batches = [{k: t for k, t in collate(feats[i:i + bs], pad).items() if k in INPUT_KEYS}
                   for i in range(0, len(feats), bs)]
        per_batch, per_pass = _timed_passes(model, batches, s, precision)
        by_batch[str(bs)] = {"latency_p50_ms": round(1000 * _percentile(per_batch, 0.5), 3),
                             "latency_p95_ms": round(1000 * _percentile(per_batch, 0.95), 3),
                             "throughput": round(len(feats) / statistics.median(per_pass), 2),
                             "examples": len(feats)}
    metrics = task.evaluate(model, TaskData(examples, features, tok, head_config, Infer(EVAL_BATCH, precision)))
    small, large = by_batch[str(min(s.batch_sizes))], by_batch[str(max(s.batch_sizes))]
    rss_kb = peak_rss_kb()
    return {"name": v.name, "path": v.path, "kind": v.kind, "precision": v.precision if v.kind == "onnx" else precision,
            "params": int(params), "size_mb": round(weights_size(Path(v.path)) / 2**20, 3),
            "latency_p50_ms": small["latency_p50_ms"], "latency_p95_ms": small["latency_p95_ms"],
            "throughput": large["throughput"], "peak_rss_mb": round(rss_kb / 1024, 1),
            "metric": float(metrics[task.metric]), "metrics": metrics, "baseline": v.baseline, "speedup": None,
            "examples": len(examples), "by_batch": by_batch}


def worker_main(spec_file: str, out_file: str) -> int:
    spec = read_json(spec_file)
    v, s = Variant(**spec["variant"]), Settings(**spec["settings"])
    try:
        row = run_worker(v, s)
    except PlmkitError as e:
        write_json(out_file, {"error": str(e)})
        return 1
    write_json(out_file, {"row": row})
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2], sys.argv[3]))
    sys.exit("usage: python -m plmkit.eval.bench --worker SPEC.json OUT.json (run by plmkit bench)")
