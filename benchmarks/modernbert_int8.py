"""ModernBERT inference: plmkit INT8 (ONNX Runtime) against transformers fp32 eager, on SST-2.

    python benchmarks/modernbert_int8.py              # ModernBERT-base shape, SST-2 8k fine-tune, bench
    python benchmarks/modernbert_int8.py --quick      # smoke run: tiny model, 256 sentences
    python benchmarks/modernbert_int8.py --fresh      # redo every step
    python benchmarks/modernbert_int8.py --train-size 256 --pairs 5   # the goal's ratio: 5 interleaved runs

The classifier: a random-initialised ModernBERT-base-shaped model (benchmarks/finetune_families.py
writes it: 22 layers, hidden 768, GeGLU 1152, local window 128, real 50,368 vocabulary, a
byte-level BPE trained on the sentences) fine-tuned by `plmkit finetune` for one epoch on the first
--train-size SST-2 train sentences (max length 64, lr 1e-4), so its logits are those of a trained
classifier. Then `plmkit export --format onnx`, `plmkit quantize` (dynamic INT8 with per-token
activation ranges, the default; dynamic with per-tensor ranges; static INT8 from 256 calibration
sentences), and one `plmkit bench` run measures the fp32 PyTorch checkpoint (bf16 autocast,
plmkit's default), the fp32 ONNX graph, the three INT8 graphs and the transformers fp32 eager
baseline (the checkpoint exported to HF, `ModernBertForSequenceClassification`,
attn_implementation="eager"), on --held-size SST-2 train sentences from 60,000: latency at batch 1
and throughput at batch 32, medians of --repeats passes, each row in its own process.
Every step is a plmkit CLI command; outputs land in bench_out/modernbert_int8/ (git-ignored) and
are reused when the script runs again. Goal (issue 13): INT8 >= 4x transformers fp32 eager.

``--pairs N`` replaces the one bench run by N short ones (--max-examples 256, one pass), each timing
the default INT8 graph (ONNX Runtime), the OpenVINO INT8 model (``quantize --engine openvino``, the
same fp32 graph) in alternating order, and transformers fp32 eager, and reports the median of the
N ratios and their range (this machine's timing noise is 20-35% between runs minutes apart).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_sst2 import OUT, REPO, Steps, sst2_slices  # noqa: E402
from finetune_families import DATA, build_model_dir  # noqa: E402


def pipeline(work: Path, quick: bool, threads: int, n_train: int, n_held: int, repeats: int,
             bench: bool = True) -> dict:
    n_train, held_range = (256, (60_000, 60_200)) if quick else (n_train, (60_000, 60_000 + n_held))
    train, held = sst2_slices(work, n_train, held_range)
    if not (work / "init").exists():
        build_model_dir("modernbert", "quick" if quick else "base", train, work / "init")
    steps = Steps(work)
    clf, onnx, dyn, static, dyn_t = (work / n for n in ("classifier", "onnx", "int8-dynamic", "int8-static",
                                                        "int8-dynamic-tensor"))
    steps.run("finetune", clf, ["finetune", "--model", str(work / "init"), "--task", "classify", "--train",
                                str(train), "--out", str(clf), "--epochs", "1", "--lr", "1e-4", "--max-length", "64",
                                "--batch-size", "32", "--seed", "0"])
    steps.run("export onnx", onnx, ["export", "--model", str(clf), "--format", "onnx", "--out", str(onnx)])
    steps.run("quantize dynamic", dyn, ["quantize", "--model", str(onnx), "--method", "dynamic", "--out", str(dyn)])
    if not bench:                  # --pairs: the default INT8 graph and OpenVINO's are what it times
        steps.run("quantize openvino", work / "int8-openvino", ["quantize", "--model", str(onnx), "--engine",
                                                                "openvino", "--calibration", str(train),
                                                                "--out", str(work / "int8-openvino")])
        return {}
    steps.run("quantize static", static, ["quantize", "--model", str(clf), "--method", "static", "--calibration",
                                          str(train), "--calibration-size", "256", "--out", str(static)])
    steps.run("quantize dynamic per-tensor", dyn_t, ["quantize", "--model", str(onnx), "--method", "dynamic",
                                                     "--activation-ranges", "tensor", "--out", str(dyn_t)])
    out = work / "bench.json"
    cmd = ["bench", "--models", str(clf), str(onnx), str(dyn), str(dyn_t), str(static), "--data", str(held),
           "--batch-sizes", "1", "32", "--repeats", "1" if quick else str(repeats), "--threads", str(threads),
           "--out", str(out)]
    print(f"  bench: plmkit {' '.join(cmd)}", flush=True)
    if subprocess.run([sys.executable, "-m", "plmkit.cli", *cmd], text=True,
                      env={**os.environ, "PLMKIT_QUIET": "1"}).returncode != 0:
        sys.exit("plmkit bench failed")
    return json.loads(out.read_text())


def pairs(work: Path, n: int, threads: int) -> str:
    """N bench runs, each timing the default INT8 graph (ONNX Runtime), the OpenVINO INT8 model and
    transformers fp32 eager: the ratios' median and range (throughput at batch 32, latency at batch 1)."""
    held, clf = work / "held.tsv", work / "classifier"
    engines = {"ONNX Runtime INT8 (`quantize` default)": work / "int8-dynamic",
               "OpenVINO INT8 (`quantize --engine openvino`)": work / "int8-openvino"}
    thr: dict[str, list[float]] = {e: [] for e in engines}
    lat: dict[str, list[float]] = {e: [] for e in engines}
    for i in range(n):
        out = work / f"pair-{i}.json"
        models = list(engines.values()) if i % 2 == 0 else list(engines.values())[::-1]   # alternate the order
        cmd = ["bench", "--models", *map(str, models), "--baseline", str(clf), "--data", str(held), "--batch-sizes",
               "1", "32", "--repeats", "1", "--max-examples", "256", "--threads", str(threads), "--out", str(out)]
        if subprocess.run([sys.executable, "-m", "plmkit.cli", *cmd], text=True,
                          env={**os.environ, "PLMKIT_QUIET": "1"}).returncode != 0:
            sys.exit("plmkit bench failed")
        rows = json.loads(out.read_text())["rows"]
        base = next(r for r in rows if r["baseline"])
        for engine, path in engines.items():
            r = next(r for r in rows if Path(r["path"]).resolve() == path.resolve())
            thr[engine].append(r["throughput"] / base["throughput"])
            lat[engine].append(base["latency_p50_ms"] / r["latency_p50_ms"])
            print(f"  run {i}, {engine}: throughput {thr[engine][-1]:.2f}x, latency {lat[engine][-1]:.2f}x", flush=True)
    fmt = lambda v: f"**{statistics.median(v):.2f}x** ({min(v):.2f}-{max(v):.2f})"  # noqa: E731
    lines = [f"| / transformers fp32 eager, median of {n} runs (range) | batch-32 throughput | batch-1 latency |",
             "|---|---|---|"]
    lines += [f"| {engine} | {fmt(thr[engine])} | {fmt(lat[engine])} |" for engine in engines]
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    lines = ["| variant | kind | precision | params | size MB | p50 ms (b=1) | p95 ms (b=1) | ex/s (b=32) | speedup "
             "| peak RSS MB | accuracy |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {r['kind']} | {r['precision']} | {r['params'] / 1e6:.2f}M | {r['size_mb']:.1f} "
                     f"| {r['latency_p50_ms']:.2f} | {r['latency_p95_ms']:.2f} | {r['throughput']:.1f} "
                     f"| {r['speedup']:.2f}x | {r['peak_rss_mb']:.0f} | {r['metric']:.4f} |")
    rows = {Path(r["path"]).name if not r["baseline"] else "baseline": r for r in result["rows"]}
    base = rows["baseline"]
    lines += ["", "| INT8 vs transformers fp32 eager | latency b=1 | throughput b=32 | goal >= 4x (throughput) |",
              "|---|---|---|---|"]
    for name in ("int8-dynamic", "int8-dynamic-tensor", "int8-static"):
        r = rows[name]
        lat, thr = base["latency_p50_ms"] / r["latency_p50_ms"], r["throughput"] / base["throughput"]
        lines.append(f"| {name} | {lat:.2f}x | {thr:.2f}x | {'met' if thr >= 4 else '**not met**'} |")
    m = result["machine"]
    lines += ["", f"load average before / after bench: {m['load_avg_before']} / {m['load_avg_after']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model, 256 sentences, 1 pass")
    ap.add_argument("--fresh", action="store_true", help="delete cached models and redo every step")
    ap.add_argument("--train-size", type=int, default=8000, help="SST-2 sentences to fine-tune on (speed does "
                    "not depend on it: fewer make the fine-tuning step, not the benchmark, shorter)")
    ap.add_argument("--held-size", type=int, default=2000, help="SST-2 sentences measured (from 60,000)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per row (medians)")
    ap.add_argument("--pairs", type=int, default=0, help="N short interleaved runs of both INT8 engines vs "
                    "transformers instead of the full bench: the median ratio and its range")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every bench row")
    args = ap.parse_args()
    if not (DATA / "sst2" / "train.tsv").is_file():
        sys.exit(f"data not found: {DATA / 'sst2' / 'train.tsv'} (the shared data folder beside the repo)")
    work = OUT / ("modernbert_int8_quick" if args.quick else "modernbert_int8")
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"== ModernBERT INT8: {work.relative_to(REPO)}", flush=True)
    if args.pairs:
        pipeline(work, args.quick, args.threads, args.train_size, args.held_size, args.repeats, bench=False)
        summary = pairs(work, args.pairs, args.threads)
    else:
        summary = markdown(pipeline(work, args.quick, args.threads, args.train_size, args.held_size, args.repeats))
    (work / "summary.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
