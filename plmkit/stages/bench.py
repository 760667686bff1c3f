"""Benchmark model variants on one labelled file: one row per variant, plus a transformers baseline.

    plmkit bench --models runs/sst2 runs/sst2-int8 runs/student-int8 --data held.tsv

Each row: parameters, weights on disk, latency p50/p95 at the smallest batch size (1),
throughput at the largest (32) on the real sentences of FILE, peak RSS of the process that
measured it, and the task metric on FILE (as ``plmkit evaluate`` computes it). The baseline
row runs ``transformers.AutoModelFor...`` in fp32 with eager attention on an HF export of the
original model; every row's ``speedup`` is its throughput over the baseline's (when that row
cannot run, the table and the JSON's ``notes`` say why). How batches
are formed and timed is described in ``plmkit/bench/__init__.py``. The table is printed and the
rows are written as JSON (atomically). When other processes took the CPU while timing (measured
from /proc/stat), or a row's repeated passes disagree, a warning under the table (and in
``notes``) says the timings are not to be trusted.
"""
from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import option, to_dict
from ..errors import PlmkitError
from .. import bench
from ..io import check_out_file, work_dir, write_json
from ..precision import DEFAULT as PRECISION_DEFAULT
from ..precision import HELP as PRECISION_HELP
from ..precision import PRECISIONS, resolve
from ..tasks import BENCH_TASKS, TASKS


@dataclass
class Config:
    models: list[str] = option(help="model directories: plmkit or HF checkpoints, ONNX / INT8 directories "
                               "(plmkit export --format onnx, plmkit quantize)")
    data: str = option(help="labelled file in the models' task format (the metric and the timed batches)")
    batch_sizes: list[int] = option([1, 32], help="batch sizes to time: latency at the smallest, "
                                    "throughput at the largest")
    baseline: str | None = option(None, help="checkpoint run as the transformers fp32 eager row (default: the "
                                  "first PyTorch checkpoint of --models, else the one the first model came from)")
    hf_baseline: bool = option(True, help="add the transformers fp32 eager baseline row (--no-hf-baseline: the "
                               "same as leaving hf out of --baselines)")
    baselines: str = option("hf", help="comma-separated rows of the same checkpoint (the --baseline one) in other "
                            "engines: hf (transformers fp32 eager, the speedup reference), optimum-ort (optimum-onnx "
                            "dynamic INT8), openvino (optimum-intel INT8); none: no such row. The peers run in "
                            "their own virtual environment (python benchmarks/peers_env.py)")
    peer_python: str | None = option(None, help="python of the peers' virtual environment (default: "
                                     ".peers-venv/bin/python here or beside the plmkit package)")
    peer_input: str = option("hf", help="what the peers quantize: hf (the --baseline checkpoint exported to HF, "
                             "then by the peer's own exporter) or onnx (plmkit's fp32 ONNX export of it: for models "
                             "HF cannot hold, e.g. pruned heads; the same graph, the peer's quantizer and engine)",
                             choices=["hf", "onnx"])
    calibration: str | None = option(None, help="labelled file whose first --calibration-examples examples "
                                     "calibrate the OpenVINO peer's activations (default: --data)")
    calibration_examples: int = option(300, help="examples of --calibration for the OpenVINO peer", ge=1)
    out: str | None = option(None, help="JSON file for the results (default: bench.json)")
    max_examples: int | None = option(None, help="use only the first N examples of --data")
    latency_examples: int = option(200, help="batch size 1: examples timed (the first N)")
    repeats: int = option(3, help="timed passes per batch size (medians)")
    warmup: int = option(3, help="untimed batches before timing")
    threads: int | None = option(None, help="intra-op threads for every row (default: all cores)")
    precision: str = option(PRECISION_DEFAULT, help="PyTorch rows: plmkit's inference precision, as in evaluate; "
                            + PRECISION_HELP, choices=PRECISIONS)
    unit_stats: bool = option(False, help="plmkit rows also record each example's score (unit_stats: correct or "
                              "not; NER: entities right, predicted, gold), so two rows can be compared example by "
                              "example (plmkit compress does)")


def _check(cfg: Config) -> None:
    if not cfg.models:
        raise PlmkitError("--models: give at least one model directory")
    if any(b < 1 for b in cfg.batch_sizes):
        raise PlmkitError(f"--batch-sizes: every batch size must be >= 1, got {cfg.batch_sizes}")
    for name in ("repeats", "latency_examples"):
        if getattr(cfg, name) < 1:
            raise PlmkitError(f"--{name.replace('_', '-')} must be >= 1")
    if cfg.warmup < 0 or (cfg.max_examples is not None and cfg.max_examples < 1):
        raise PlmkitError("--warmup must be >= 0 and --max-examples >= 1")
    if cfg.calibration is not None and not Path(cfg.calibration).is_file():
        raise PlmkitError(f"--calibration {cfg.calibration}: file not found")
    _baselines(cfg)


def _peers(cfg: Config, variants: list[bench.Variant]) -> tuple[str | None, dict[str, Any]]:
    """The peers' python (None: no peer row) and their package versions (checked now, before timing)."""
    if not any(v.kind in bench.PEER_KINDS for v in variants):
        return None, {}
    python = bench.find_peer_python(cfg.peer_python)
    return python, bench.peer_versions(python)


# --baselines name -> (row name, precision); the hf row is the speedup reference
BASELINE_ROWS = {"hf": ("transformers-fp32-eager", "fp32"), "optimum-ort": ("optimum-ort-int8", "int8"),
                 "openvino": ("openvino-int8", "int8")}


def _baselines(cfg: Config) -> list[str]:
    names = [n.strip() for n in cfg.baselines.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in bench.BASELINES]
    if unknown:
        raise PlmkitError(f"--baselines: unknown {', '.join(unknown)} (known: {', '.join(bench.BASELINES)}, none)")
    return [n for n in dict.fromkeys(names) if cfg.hf_baseline or n != "hf"]


def _variants(cfg: Config, precision: str) -> tuple[list[bench.Variant], str | None]:
    """Every row to measure, checked: one task for all, data of that task, the baselines first;
    and, when the baseline rows were asked for but cannot run, why (it goes under the table)."""
    variants = [bench.make_variant(m, precision) for m in cfg.models]
    tasks = {v.task for v in variants}
    if len(tasks) > 1:
        raise PlmkitError("--models: all models must do the same task, got "
                          + ", ".join(f"{v.path} ({v.task})" for v in variants))
    bench.unique_names(variants)
    if cfg.unit_stats and variants[0].task not in BENCH_TASKS:
        raise PlmkitError(f"--unit-stats: '{variants[0].task}' models are not scored example by example "
                          f"(tasks that are: {', '.join(BENCH_TASKS)})")
    names, note = _baselines(cfg), None
    if names and TASKS[variants[0].task].hf_auto is None:
        names, note = [], (f"no baseline rows: transformers has no head class for '{variants[0].task}' models; "
                           "speedups are relative to the first row")
    if "hf" in names and importlib.util.find_spec("transformers") is None:
        names.remove("hf")
        note = ("no transformers baseline row: transformers is not installed (pip install 'plmkit[hf]'); "
                "speedups are relative to the first row")
    source = bench.baseline_source(variants, cfg.baseline) if names else None
    if names and source is None:
        return variants, ("no baseline rows: no PyTorch checkpoint among --models or their parents "
                          "(pass --baseline DIR)")
    problem = _no_hf_equivalent(source) if source is not None else None
    if problem:     # the rows that run the model in the Hugging Face layout cannot compute it
        dropped = [n for n in names if n == "hf" or cfg.peer_input != "onnx"]
        names = [n for n in names if n not in dropped]
        note = (f"no {', '.join(dropped)} baseline row: {source}: {problem}; speedups are relative to the "
                "first row")
        source = source if names else None
    if source is not None and bench.task_of_dir(source)[1] != variants[0].task:
        raise PlmkitError(f"{source}: the baseline does task '{bench.task_of_dir(source)[1]}', "
                          f"the models do '{variants[0].task}'")
    base = [bench.Variant(f"{BASELINE_ROWS[n][0]} ({source.name})", str(source), bench.BASELINES[n],
                          BASELINE_ROWS[n][1], variants[0].task, str(source), baseline=n == "hf")
            for n in names if source is not None]
    return [*base, *variants], note


def check_inputs(cfg: Config, pending: Callable[[str], bool]) -> None:
    """``plmkit run`` calls this before any stage: the options."""
    _check(cfg)


def _no_hf_equivalent(source: Path) -> str | None:
    """Why transformers cannot run what the plmkit checkpoint ``source`` computes, or None."""
    from ..models.checkpoint import hf_pooling_problem, read_model_config
    from ..models.config import config_from_dict

    raw = read_model_config(source)
    if "plmkit" not in raw or not isinstance(raw.get("model"), dict):
        return None
    cfg = config_from_dict(raw["model"], source=str(source / "config.json"))
    return hf_pooling_problem(cfg, raw.get("task", "base"), raw.get("head_config") or {})


def run(cfg: Config) -> int:
    _check(cfg)
    out = check_out_file(cfg.out or "bench.json", overwrite=True)   # a directory fails now, not after timing
    precision = resolve(cfg.precision, "cpu")      # rows name what ran: bf16 or fp32
    variants, missing_baseline = _variants(cfg, precision)
    if missing_baseline:
        print(missing_baseline)
    n = bench.check_data(variants[-1], cfg.data, cfg.max_examples)
    if cfg.calibration is not None:
        bench.check_data(variants[-1], cfg.calibration, None)
    peer_python, peer_versions = _peers(cfg, variants)
    threads = cfg.threads or os.cpu_count() or 1
    settings = bench.Settings(cfg.data, sorted(set(cfg.batch_sizes)), cfg.repeats, cfg.warmup,
                              cfg.latency_examples, cfg.max_examples, threads, precision, peer_python,
                              cfg.calibration, cfg.calibration_examples, cfg.peer_input, cfg.unit_stats)
    machine = bench.machine_info(threads)
    if peer_versions:
        machine["peers"] = {"python": peer_python, **peer_versions}
    print(f"benchmarking {len(variants)} variants on {n} examples of {cfg.data} "
          f"(batch sizes {settings.batch_sizes}, {threads} threads, {cfg.repeats} timed passes)")
    rows = []
    start = bench.cpu_sample()
    with work_dir(out) as work:        # HF exports, worker specs: beside --out, where a killed run's are removed
        for i, v in enumerate(variants, 1):
            t0 = time.perf_counter()
            row = bench.measure(v, settings, work)
            rows.append(row)
            print(f"[{i}/{len(variants)}] {v.name}: {row['kind']} {row['precision']}, "
                  f"p50 {row['latency_p50_ms']:.2f} ms, {row['throughput']:.1f} ex/s, "
                  f"{row['metric']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    reference = bench.add_speedups(rows)
    machine["load_avg_after"] = list(os.getloadavg())
    machine["other_cpu_cores"] = bench.other_cores(start)
    task = variants[-1].task
    result = {"data": cfg.data, "task": task, "metric_name": rows[-1].get("metric_name", bench.metric_name(task)),
              "batch_sizes": settings.batch_sizes, "examples": n, "machine": machine,
              "speedup_reference": reference, "config": to_dict(cfg), "rows": rows}
    warnings = bench.trust_warnings(rows, machine, cfg.repeats)
    notes = ([missing_baseline] if missing_baseline else []) + warnings
    if notes:
        result["notes"] = notes
    write_json(out, result)
    print(bench.format_table(rows, result["metric_name"], max(settings.batch_sizes)))
    if missing_baseline:
        print(f"note: {missing_baseline}")
    for warning in warnings:
        print(warning)
    print(f"wrote {out}")
    return 0
