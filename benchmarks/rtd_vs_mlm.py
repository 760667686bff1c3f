"""ELECTRA's replaced-token detection vs MLM from scratch, at equal wall clock, on the task's own text
(issue 24: RTD vs MLM, and self-pre-training), one command.

    python benchmarks/rtd_vs_mlm.py                    # 30 minutes each, then the protocol (about 1.5 h)
    python benchmarks/rtd_vs_mlm.py --minutes 10       # shorter budgets
    python benchmarks/rtd_vs_mlm.py --smoke            # the whole path in minutes; measures nothing

Both pre-trainings are ``plmkit pretrain --recipe budget --budget Nm`` (self_pretrain.py's arms
``budget`` and ``rtd``: BERT-mini, 8,000 pieces, PPMI-SVD embeddings since 2026-12-07) on the same
text, one with the recipe's objective (mlm), one with ``--objective rtd``; the text is
SST-2's train file without the protocol's dev and test slices (sentences 60,000-65,000), one sentence
a line: self-pre-training on the task's unlabelled text (Krishna et al. 2023). Each start, and each
architecture with random weights, then goes through the fine-tuning protocol of
``pretraining_benefit.py`` (1,000 labels, lr on a dev slice, 3 seeds, test slice).
Run it alone on the machine: the pre-trainings have a wall-clock budget.
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
from self_pretrain import pretrain   # noqa: E402


# objective -> self_pretrain.py's arm (the recipe as typed: mlm; or --objective rtd)
ARM = {"mlm": "budget", "rtd": "rtd"}


def main(argv: list[str] | None = None) -> None:
    args = PB.self_pretraining_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), "rtd-vs-mlm")(argv)
    t0 = time.time()
    text = unlabelled_sst2(args.out / "data" / "sst2-unlabelled.txt", args.smoke)
    tag = f"{args.minutes:g}m"
    starts = []
    for objective in ("mlm", "rtd"):
        model = pretrain(args.out / f"{objective}-{tag}", text, ARM[objective], args)
        starts += [PB.Start(f"{objective}-{tag}", model, "pre-trained"),
                   PB.Start(f"random-{objective}", PB.reinit(model, args.out / f"random-{objective}"), "random")]
    task = PB.sst2_task(args.out / "data", 1000, args.smoke)
    outcomes = PB.compare(starts, task, args.out, args)
    text_md = PB.table(f"RTD vs MLM, {tag} each on SST-2's own text, from scratch", outcomes, task)
    metrics = {s.name: json.loads((s.path / "plmkit.json").read_text())["metrics"] for s in starts
               if s.kind == "pre-trained"}
    print(text_md)
    (args.out / "results.md").write_text(text_md + "\n", encoding="utf-8")
    (args.out / "results.json").write_text(json.dumps({"pretrain": metrics, "tables": PB.RESULTS,
                                                       "seconds": round(time.time() - t0)}, indent=1) + "\n")
    print(f"\n{time.time() - t0:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
