"""Pre-training from scratch, no teacher, on the task's own unlabelled text (issue 24: ">= +5 points
over random init at 1,000 labels", SST-2 and ChnSentiCorp), one command.

    python benchmarks/self_pretrain.py                          # SST-2 then ChnSentiCorp, 30 minutes each
    python benchmarks/self_pretrain.py --tasks chn --arms budget,random-embed
    python benchmarks/self_pretrain.py --smoke                  # the whole path in minutes; measures nothing

Each arm is ``plmkit pretrain --recipe budget --corpus TEXT --budget 30m`` plus the
arm's flags (``ARMS``); ``budget`` is the recipe as a user types it. TEXT is the task's train file's
text without the protocol's dev and test slices (SST-2: sentences 60,000-65,000 left out;
ChnSentiCorp: train rows 8,600-9,600 left out, the test slice is its dev file), one text a line. Each
start, and the first arm's architecture with random weights (``plmkit reinit``: the same tokenizer),
then go through the fine-tuning protocol of ``pretraining_benefit.py`` (1,000 labels, lr on a dev
slice, 3 seeds, test slice); ``plmkit report`` of each task's folder draws their fine-tuning
curves. Run it alone on the machine: the pre-trainings have a wall-clock budget.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretraining_benefit as PB   # noqa: E402
from general_distill import unlabelled_sst2   # noqa: E402

# arm -> extra pretrain flags. "embed-only": the recipe's PPMI-SVD embeddings and one step at a
# vanishing lr, i.e. what the embedding start alone is worth.
ARMS = {"budget": [], "random-embed": ["--embedding-init", "random"], "rtd": ["--objective", "rtd"],
        "embed-only": ["--max-steps", "1", "--lr", "1e-12", "--warmup-ratio", "0"]}


def chn_text(dst: Path, smoke: bool) -> Path:
    _, rows = PB.read_rows(PB.CHN / "train.tsv")
    keep = rows[:8_600] + rows[9_600:]
    return PB.text_file(keep[:2000] if smoke else keep, dst)


TASKS = {"sst2": (unlabelled_sst2, lambda d, smoke: PB.sst2_task(d, 1000, smoke)),
         "chn": (chn_text, PB.chn_task)}


def pretrain(out: Path, text: Path, arm: str, args: argparse.Namespace) -> Path:
    if not (out / "config.json").is_file():
        small = ["--size", "tiny", "--vocab-size", "500", "--max-steps", "3", "--batch-size", "4",
                 "--grad-accum", "1", "--eval-batches", "0"] if args.smoke else []
        PB.plmkit_subprocess("pretrain", "--recipe", "budget", "--corpus", str(text),
                             "--budget", f"{args.minutes:g}m", "--out", str(out), "--overwrite", *ARMS[arm], *small)
    return out


def run_task(name: str, args: argparse.Namespace) -> str:
    make_text, make_task = TASKS[name]
    folder = args.out / name
    text = make_text(folder / "data" / f"{name}-unlabelled.txt", args.smoke)
    starts = []
    for arm in args.arms:
        model = pretrain(folder / f"{arm}-{args.minutes:g}m", text, arm, args)
        starts.append(PB.Start(f"{arm}-{args.minutes:g}m", model, "pre-trained"))
    starts.append(PB.Start("random", PB.reinit(starts[0].path, folder / "random"), "random"))
    task = make_task(folder / "data", args.smoke)
    outcomes = PB.compare(starts, task, folder, args)
    PB.plmkit_main("report", str(folder), "--overwrite")      # the fine-tuning curves of every start
    rnd = outcomes[-1]
    lines = [PB.table(f"Self-pre-training on {name}'s own text, {args.minutes:g} min", outcomes, task), ""]
    lines += [f"- {o.start} over random: **{100 * (o.mean - rnd.mean):+.1f} points**" for o in outcomes[:-1]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="sst2,chn")
    p.add_argument("--arms", default="budget", help=f"comma-separated, from {', '.join(ARMS)}")
    args = PB.self_pretraining_args(p, "self-pretrain")(argv)
    args.tasks, args.arms = args.tasks.split(","), args.arms.split(",")
    bad = [a for a in args.arms if a not in ARMS] + [t for t in args.tasks if t not in TASKS]
    if bad:
        p.error(f"unknown arm or task: {', '.join(bad)}")
    t0 = time.time()
    tables = []
    for name in args.tasks:
        if name == "chn" and not PB.CHN.is_dir():
            print(f"ChnSentiCorp skipped: {PB.CHN} not found", file=sys.stderr)
            continue
        tables.append(run_task(name, args))
        print(tables[-1], flush=True)
    (args.out / "results.md").write_text("\n\n".join(tables) + "\n", encoding="utf-8")
    (args.out / "results.json").write_text(json.dumps({"tables": PB.RESULTS, "seconds": round(time.time() - t0)},
                                                      indent=1) + "\n")
    print(f"\n{time.time() - t0:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
