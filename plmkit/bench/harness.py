"""The parent side of ``plmkit bench``: check every input, run each row in a worker process of its
own, put the rows together (speedups, the table, the machine).
"""
from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..errors import PlmkitError
from ..io import read_json, write_json
from ..loading import peek
from ..tasks import TASKS
from .rows import Settings, Variant, encoding
from .runners import RUNNERS, task_of_dir


def metric_name(task: str) -> str:
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
        task_of_dir(Path(explicit))
        if not _pytorch(Path(explicit)):
            raise PlmkitError(f"{explicit}: the baseline must be a PyTorch checkpoint (plmkit or HF), not ONNX")
        return Path(explicit)
    for v in variants:
        if _pytorch(Path(v.path)):
            return Path(v.path)
    path = Path(variants[0].path)
    for _ in range(10):                 # lineage chains are short; a cycle must not hang us
        parent = read_json(path / "plmkit.json").get("parent") if (path / "plmkit.json").is_file() else None
        if not parent or not Path(parent).is_dir():
            return None
        path = Path(parent)
        task_of_dir(path)
        if _pytorch(path):
            return path
    return None


def _pytorch(path: Path) -> bool:
    """A checkpoint the transformers baseline can be exported from (not an ONNX graph)."""
    return peek(path).format in RUNNERS["torch"].formats


def measure(variant: Variant, settings: Settings, work: Path) -> dict[str, Any]:
    """Run one variant in its own process; its result row (a PlmkitError from the worker is re-raised).

    A row whose runner prepares its directory (the transformers baseline: an HF export; a peer: its
    quantized export) runs on that temporary directory; the row names the directory it came from.
    """
    runner = RUNNERS[variant.kind]
    prepare = runner.prepare
    run = replace(variant, path=str(prepare(Path(variant.features_from), work, settings))) if prepare else variant
    spec, out = work / f"spec-{os.getpid()}.json", work / f"result-{os.getpid()}.json"
    write_json(spec, {"variant": asdict(run), "settings": asdict(settings)})
    out.unlink(missing_ok=True)
    threads = str(settings.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PLMKIT_QUIET": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(runner.command(run, settings, spec, out), capture_output=True, text=True, env=env)
    result = read_json(out) if out.is_file() else {}
    if "error" in result:
        raise PlmkitError(result["error"])
    if proc.returncode != 0 or "row" not in result:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PlmkitError(f"{variant.path}: benchmark worker failed (exit {proc.returncode}): {last[:200]}")
    row = runner.finish(result["row"], run, settings) if runner.finish else result["row"]
    return {**row, "path": variant.path}


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


# When a bench is not to be trusted: other processes took more than this share of the cores the
# bench used, or one row's timed passes (the same work each time) differed by more than this.
CONTENDED_SHARE = 0.25
SPREAD_LIMIT = 0.25


def cpu_sample() -> tuple[float, float, float] | None:
    """(wall seconds, CPU-seconds the whole machine has been busy, CPU-seconds of this process and
    its finished children); None where /proc/stat does not exist (not Linux)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)          # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")         # user .. steal
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.monotonic(), busy, own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def other_cores(start: tuple[float, float, float] | None) -> float | None:
    """Cores' worth of CPU that other processes used since ``start`` (a ``cpu_sample``)."""
    end = cpu_sample()
    if start is None or end is None or end[0] <= start[0]:
        return None
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]))


def trust_warnings(rows: list[dict[str, Any]], machine: dict[str, Any], repeats: int) -> list[str]:
    """Why the timings (and so the speed-ups) may be off: the machine was busy with other work while
    timing (measured CPU use of other processes; the load average where that cannot be measured),
    or a row's repeated passes disagree."""
    threads, cpus = machine["threads"], machine["logical_cpus"] or machine["threads"]
    others = machine.get("other_cpu_cores")
    if others is None:
        others = machine["load_avg_before"][0]
        busy = f"the load average before timing was {others:.1f} on {cpus} CPUs"
    else:
        busy = f"other processes kept {others:.1f} of its {cpus} CPUs busy"
    warnings = []
    # Other work on the cores the bench left free does not slow it down.
    if others - (cpus - threads) > CONTENDED_SHARE * threads:
        warnings.append(f"warning: the machine was busy: {busy} while the bench timed on {threads} threads; "
                        "timings and speed-ups are not trustworthy (rerun on an idle machine)")
    spread = [(r["name"], bs, b["pass_spread"]) for r in rows for bs, b in r.get("by_batch", {}).items()
              if b.get("pass_spread", 0) > SPREAD_LIMIT]
    if spread:
        name, bs, worst = max(spread, key=lambda x: x[2])
        warnings.append(f"warning: the {repeats} timed passes of the same batches differed by up to "
                        f"{100 * worst:.0f}% ({name}, batch size {bs}; {len(spread)} measurement(s) above "
                        f"{100 * SPREAD_LIMIT:.0f}%): timings and speed-ups are not trustworthy (rerun on an idle "
                        "machine, or with more --repeats)")
    return warnings


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
