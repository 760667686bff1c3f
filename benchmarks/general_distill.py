"""General distillation pays off? Issue 24's first goal, one command.

    python benchmarks/general_distill.py                    # 30-minute distillation + the protocol (about 1 h)
    python benchmarks/general_distill.py --minutes 10       # a shorter distillation
    python benchmarks/general_distill.py --speed-only       # only the throughput pairs (students already made)
    python benchmarks/general_distill.py --smoke            # the whole path in minutes; measures nothing

1. ``plmkit distill --teacher all-MiniLM-L6-v2 --corpus ../shared/data/corpus/*.txt SST2-TEXT --budget 30m``
   with every other setting at its default (the student: teacher layers 0 and 3, a third of the
   transformer compute). SST2-TEXT is the text column of ../shared/data/sst2/train.tsv without the dev
   and test slices (sentences 60,000-65,000): unlabelled text of the task's train file, as allowed.
2. The fine-tuning protocol of ``pretraining_benefit.py`` (1,000 labels, lr chosen on a dev slice,
   3 seeds, test slice) on three starts: the distilled student, the same student architecture with
   random weights, and MiniLM itself.
3. Speed: batch-32 throughput (and batch-1 latency) of the fine-tuned student against fine-tuned
   MiniLM, in PyTorch and as ONNX Runtime INT8 (``plmkit quantize`` at its defaults), each ratio from
   ``--pairs`` interleaved ``plmkit bench`` runs (alternating order): median and range.

Run it alone on the machine: the distillation has a wall-clock budget and step 3 times.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretraining_benefit as PB   # noqa: E402  (the shared fine-tuning protocol)


def unlabelled_sst2(dst: Path, smoke: bool) -> Path:
    """SST-2's text without the dev and test slices of the protocol."""
    _, rows = PB.read_rows(PB.SST2)
    keep = rows[:60_000] + rows[65_000:]
    return PB.text_file(keep[:2000] if smoke else keep, dst)


def distil(out: Path, args: argparse.Namespace) -> Path:
    student = out / f"student-{args.minutes:g}m{args.tag}"
    if not (student / "config.json").is_file():
        corpus = sorted(str(p) for p in PB.CORPUS.glob("*.txt"))
        text = unlabelled_sst2(out / "data" / "sst2-unlabelled.txt", args.smoke)
        small = ["--max-steps", "4", "--batch-size", "4", "--seq-len", "32"] if args.smoke else []
        PB.plmkit_subprocess("distill", "--teacher", str(PB.minilm()), "--corpus", *corpus, str(text),
                             "--budget", f"{args.minutes:g}m", "--out", str(student), "--overwrite",
                             *args.distill_args.split(), *small)
    return student


def bench_pair(a: Path, b: Path, data: Path, work: Path, i: int, args: argparse.Namespace) -> dict[str, dict]:
    """One ``plmkit bench`` run of a and b (b first on odd runs); rows by path."""
    order = [a, b] if i % 2 == 0 else [b, a]
    out = work / f"bench-{a.name}-{b.name}-{i}.json"
    PB.plmkit_main("bench", "--models", *map(str, order), "--data", str(data), "--batch-sizes", "1", "32",
                   "--no-hf-baseline", "--max-examples", str(args.bench_examples), "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    return {Path(r["path"]).resolve(): r for r in rows}


def speed(student_ft: Path, teacher_ft: Path, data: Path, work: Path, args: argparse.Namespace,
          teacher_name: str = "MiniLM") -> str:
    """Interleaved ratios student / teacher, PyTorch and INT8."""
    work.mkdir(parents=True, exist_ok=True)
    pairs = {}
    for kind in ("torch", "int8"):
        a, b = teacher_ft, student_ft
        if kind == "int8":
            a, b = (work / f"int8-{p.name}" for p in (teacher_ft, student_ft))
            for src, dst in ((teacher_ft, a), (student_ft, b)):
                if not (dst / "config.json").is_file() and not any(dst.glob("*.onnx")):
                    PB.plmkit_main("quantize", "--model", str(src), "--out", str(dst), "--overwrite")
        thr, lat = [], []
        for i in range(args.pairs):
            rows = bench_pair(a, b, data, work, i, args)
            ra, rb = rows[a.resolve()], rows[b.resolve()]
            thr.append(rb["throughput"] / ra["throughput"])
            lat.append(ra["latency_p50_ms"] / rb["latency_p50_ms"])
            print(f"  {kind} pair {i}: throughput x{thr[-1]:.2f}, batch-1 latency x{lat[-1]:.2f}", file=sys.stderr)
        pairs[kind] = (thr, lat)
    lines = [f"| engine | batch-32 throughput, student / {teacher_name} (median, range) | "
             f"batch-1 latency, {teacher_name} / student |",
             "|---|---|---|"]
    for kind, (thr, lat) in pairs.items():
        lines.append(f"| {kind} | **{statistics.median(thr):.2f}x** ({min(thr):.2f}-{max(thr):.2f}) | "
                     f"{statistics.median(lat):.2f}x ({min(lat):.2f}-{max(lat):.2f}) |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="results folder (default runs/general-distill)")
    p.add_argument("--minutes", type=float, default=30.0, help="distillation wall-clock budget")
    p.add_argument("--lr", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3], help="fine-tuning lr grid")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--select-seeds", type=int, default=1)
    p.add_argument("--epochs", type=float, default=5.0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--pairs", type=int, default=5, help="interleaved bench runs per engine")
    p.add_argument("--bench-examples", type=int, default=1024, help="test sentences each bench run times")
    p.add_argument("--speed-only", action="store_true", help="skip fine-tuning accuracy (needs the fine-tunes)")
    p.add_argument("--no-speed", action="store_true", help="skip the throughput pairs")
    p.add_argument("--distill-args", default="", help="extra distill flags, e.g. '--seq-len 64' (a candidate "
                   "default); with --tag, its student and fine-tunes get their own names")
    p.add_argument("--tag", default="", help="suffix of the student's name (e.g. -seq64)")
    p.add_argument("--random-per-tag", action="store_true", help="a random student of this tag's own architecture "
                   "(needed when --distill-args changes the student; otherwise the untagged one is reused)")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.lr, args.seeds, args.epochs, args.max_length = args.lr[:1], args.seeds[:1], 1.0, 32
        args.minutes, args.pairs, args.bench_examples = 0.5, 2, 64
    args.out = args.out or PB.REPO / "runs" / ("general-distill-smoke" if args.smoke else "general-distill")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not PB.SST2.is_file() or not PB.CORPUS.is_dir():
        sys.exit(f"data not found: {PB.SST2} / {PB.CORPUS} (expected ../shared/data beside the repo)")
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    student = distil(args.out, args)
    meta = json.loads((student / "plmkit.json").read_text())
    print(f"distilled: {meta['metrics']}", file=sys.stderr)
    pre = PB.Start(f"student{args.tag}", student, "pre-trained", "general distillation of MiniLM")
    # the random student has the distilled student's architecture: a tag naming another student
    # (--student-layers, --student-ffn) gets its own
    name = "student-random" + (args.tag if args.random_per_tag else "")
    rnd = PB.Start(name, PB.reinit(student, args.out / name), "random")
    mini = PB.Start("minilm", PB.minilm(), "pre-trained")
    task = PB.sst2_task(args.out / "data", 1000, args.smoke)
    work = args.out / ".finetunes" / f"e{args.epochs:g}-len{args.max_length}"
    tables = []
    if not args.speed_only:
        outcomes = PB.compare([pre, rnd, mini], task, args.out, args)
        tables.append(PB.table(f"General distillation ({args.minutes:g} min) vs random student vs MiniLM",
                               outcomes, task))
        best = {o.start: o.lr for o in outcomes}
    else:
        best = json.loads((args.out / f"results{args.tag}.json").read_text())["best_lr"]
    if not args.no_speed:
        ft = {name: work / f"{name}-{task.name}-lr{best[name]:g}-s{args.seeds[0]}" for name in (pre.name, "minilm")}
        tables.append(speed(ft[pre.name], ft["minilm"], task.test, args.out / "speed", args))
    text = "\n\n".join(tables)
    print(text)
    (args.out / f"results{args.tag}.md").write_text(text + "\n", encoding="utf-8")
    (args.out / f"results{args.tag}.json").write_text(json.dumps({"distill": meta["metrics"], "best_lr": best,
                                                       "tables": PB.RESULTS, "seconds": round(time.time() - t0)},
                                                      indent=1) + "\n", encoding="utf-8")
    print(f"\n{time.time() - t0:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
