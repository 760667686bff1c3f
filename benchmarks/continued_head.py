"""Continued pre-training of a checkpoint that ships no MLM head (issue 24, item 4), one command.

    python benchmarks/continued_head.py                 # 30 steps each, SST-2 text (about 3 minutes)
    python benchmarks/continued_head.py --steps 60

Runs ``plmkit pretrain --init all-MiniLM-L6-v2 --objective mlm --corpus SST2-TEXT --max-steps N`` with
every other setting at its default, and the same command on the same architecture with random
weights (``reinit``), on the same text, batches and masks (same seed). Reports the first step's MLM
loss and the mean over steps 21-30 of each, and their difference (goal: MiniLM >= 1.5 lower).
SST2-TEXT: the text of SST-2 sentences 10,000-30,000 (never a dev or test slice of the protocol).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretraining_benefit as PB   # noqa: E402


def run(start: Path, text: Path, out: Path, steps: int) -> list[float]:
    if not (out / "config.json").is_file():
        PB.plmkit_subprocess("pretrain", "--init", str(start), "--objective", "mlm", "--corpus", str(text),
                             "--out", str(out), "--max-steps", str(steps), "--log-every", "1",
                             "--eval-batches", "0", "--save-every", "0", "--overwrite")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=PB.REPO / "runs" / "continued-head")
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    _, rows = PB.read_rows(PB.SST2)
    text = PB.text_file(rows[10_000:30_000], args.out / "sst2-text.txt")
    random_start = PB.reinit(PB.minilm(), args.out / "random")
    curves = {"all-MiniLM-L6-v2": run(PB.minilm(), text, args.out / "minilm", args.steps),
              "same network, random weights": run(random_start, text, args.out / "random-mlm", args.steps)}
    window = slice(20, 30)
    lines = ["| start | step-1 MLM loss | mean MLM loss, steps 21-30 |", "|---|---|---|"]
    for name, losses in curves.items():
        lines.append(f"| {name} | {losses[0]:.2f} | {statistics.fmean(losses[window]):.2f} |")
    a, b = (statistics.fmean(c[window]) for c in curves.values())
    lines += ["", f"Difference, steps 21-30: **{b - a:.2f}** (goal >= 1.5)"]
    text_out = "\n".join(lines)
    print(text_out)
    (args.out / "results.md").write_text(text_out + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
