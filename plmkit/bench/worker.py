"""The worker side of ``plmkit bench``: one row, measured in a process of its own
(``python -m plmkit.bench --worker SPEC.json OUT.json``), so its peak RSS is its own.
"""
from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..data.features import collate
from ..errors import PlmkitError
from ..io import read_json, write_json
from ..tasks import Infer, TaskData
from ..precision import autocast
from ..tokenizer import INPUT_KEYS, pad_id
from .replay import Replay, Tap
from .rows import EVAL_BATCH, Settings, Variant, encoding, row_of, weights_size
from .runners import RUNNERS


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


def _timed_passes(model: Any, batches: list[dict[str, Any]], s: Settings, precision: str) -> tuple[list[float], list[float]]:
    """(seconds per timed batch, seconds per timed pass) after ``warmup`` untimed batches."""
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


def pass_spread(per_pass: list[float]) -> float:
    """How far the slowest timed pass is above the fastest (0.1: 10 %); the same work each time,
    so a large spread means something else took the CPU while timing."""
    return round(max(per_pass) / min(per_pass) - 1, 4)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_worker(v: Variant, s: Settings) -> dict[str, Any]:
    """Load, encode, time every batch size, score; one result row."""
    torch.set_num_threads(s.threads)
    runner = RUNNERS[v.kind]
    task, prep, tok, head_config = encoding(v.features_from, v.task)
    model, params = runner.load(v, s.threads)
    examples = task.read(s.data, prep, labels=head_config.get("labels"))[:s.max_examples]
    features = task.encode(tok, examples, head_config, prep)
    precision = v.precision if runner.autocast else "fp32"    # ORT and transformers: their own precision
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
                             "examples": len(feats), "pass_spread": pass_spread(per_pass)}
    data = TaskData(examples, features, tok, head_config, Infer(EVAL_BATCH, precision))
    tap = Tap(model) if s.unit_stats else None
    metrics = task.evaluate(tap or model, data)
    row = row_of(v, s, by_batch, params, weights_size(Path(v.path)), peak_rss_kb(), metrics,
                 task.metric_of(examples), len(examples))
    if tap is not None:        # the same outputs scored example by example: no second pass of the model
        row["unit_stats"] = task.unit_stats(Replay(tap.outputs), data).round(6).tolist()
    return row


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
