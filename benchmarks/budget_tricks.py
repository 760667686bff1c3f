"""What each trick of ``plmkit pretrain --recipe budget`` buys (issue 14): one short pre-training per
variant, each the budget recipe with one choice flipped, then the same 1,000-label SST-2 fine-tune.

Usage: python benchmarks/budget_tricks.py [--minutes 6] [--variants budget,nsp,...] [--out DIR]

Every variant pre-trains BERT-mini from scratch on all of ../shared/data/corpus for the same
wall-clock budget (``--minutes``; the schedule runs on time, so warmup and decay fit the budget),
with one tokenizer (8,000 WordPiece tokens, trained once by the first variant) and one shard cache.
Reported per variant: steps, real tokens/s (median of the logged windows after the first two),
the last training MLM loss, the held-out MLM loss and accuracy at the end (at the variant's own
masking rate: a 30% variant predicts more tokens from less context, so its numbers are not on the
15% scale; the nsp variant's held-out loss includes the NSP loss, so compare its MLM accuracy),
and the fine-tuning protocol of benchmarks/pretraining_benefit.py at one learning rate
(``--lr``, 1e-3: the rate row 2 selected for both starts): first 1,000 SST-2 sentences, 3 seeds,
test slice 61,000-65,000, mean and sample sd. A random-init row (the budget variant's architecture
and tokenizer) anchors the gains. Pre-training is timed: run this alone on the machine.
Results: ``--out``/results.md and results.json (default runs/budget-tricks).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretraining_benefit as PB  # noqa: E402  (the fine-tuning protocol, shared)

# name -> (what it flips, the flags that flip it)
VARIANTS = {
    "budget": ("the recipe as is", []),
    "nsp": ("MLM + next-sentence prediction", ["--objective", "mlm+nsp"]),
    "mask30": ("masking rate 30%", ["--mlm-prob", "0.3"]),
    "dropout": ("dropout 0.1", ["--dropout", "0.1"]),
    "post-ln": ("post-LN (BERT's original)", ["--no-pre-ln"]),
    "no-accum": ("batch 32, no accumulation (4x the steps)", ["--grad-accum", "1"]),
    "constant": ("constant lr after warmup", ["--schedule", "constant"]),
}


def pretrain(name: str, out: Path, tokenizer: Path | None, args: argparse.Namespace) -> Path:
    if (out / "config.json").is_file():
        return out
    corpus = sorted(str(p) for p in PB.CORPUS.glob("*.txt"))
    tok = ["--tokenizer", str(tokenizer)] if tokenizer else ["--vocab-size", "8000"]
    PB.plmkit_subprocess("pretrain", "--recipe", "budget", "--arch", "bert", "--size", "mini", "--corpus", *corpus,
                         "--out", str(out), "--budget", f"{args.minutes:g}m", "--log-every", "10", "--overwrite",
                         *tok, *VARIANTS[name][1])
    return out


def pretrain_stats(out: Path) -> dict:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "tokens_per_s" in r]     # none when the run ended before --log-every
    evals = [r for r in records if "eval_loss" in r]
    speeds = [r["tokens_per_s"] for r in train[2:]] or [r["tokens_per_s"] for r in train]
    return {"steps": max((r["step"] for r in records), default=0),
            "tokens_per_s": statistics.median(speeds) if speeds else float("nan"),
            "mlm_loss": train[-1].get("mlm_loss", train[-1]["loss"]) if train else float("nan"),
            "eval_loss": evals[-1]["eval_loss"] if evals else None,
            "eval_mlm_acc": evals[-1].get("eval_mlm_acc") if evals else None}


def report(rows: list[dict], random_row: PB.Outcome | None, args: argparse.Namespace) -> str:
    lines = [f"### Budget-recipe tricks: BERT-mini, {args.minutes:g} min each, then SST-2 (1,000 labels, "
             f"lr {args.lr:g}, seeds {', '.join(map(str, args.seeds))})", "",
             "| variant | flips | steps | tokens/s | train MLM loss | held-out MLM loss | held-out MLM acc | "
             "test acc mean | sd | per seed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, s = r["outcome"], r["stats"]
        ev = f"{s['eval_loss']:.3f}" if s["eval_loss"] is not None else "-"
        acc = f"{s['eval_mlm_acc']:.3f}" if s["eval_mlm_acc"] is not None else "-"
        lines.append(f"| {r['name']} | {VARIANTS[r['name']][0]} | {s['steps']} | {s['tokens_per_s']:,.0f} | "
                     f"{s['mlm_loss']:.3f} | {ev} | {acc} | **{o.mean:.4f}** | {o.spread:.4f} | "
                     f"{', '.join(f'{a:.4f}' for a in o.test)} |")
    if random_row:
        lines.append(f"| random init | no pre-training | - | - | - | - | - | **{random_row.mean:.4f}** | "
                     f"{random_row.spread:.4f} | {', '.join(f'{a:.4f}' for a in random_row.test)} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=6.0, help="pre-training budget per variant")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (one, for every variant)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=float, default=5.0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--no-random", action="store_true", help="skip the random-init row")
    p.add_argument("--out", type=Path, default=PB.REPO / "runs" / "budget-tricks")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        p.error(f"--variants: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    missing = [str(x) for x in (PB.SST2, PB.CORPUS) if not x.exists()]
    if missing:
        sys.exit(f"data not found: {', '.join(missing)} (expected ../shared/data beside the repo)")
    t0, tokenizer, rows = time.time(), None, []
    task = PB.sst2_task(args.out / "data", 1000, smoke=False)
    fine = argparse.Namespace(out=args.out, epochs=args.epochs, max_length=args.max_length, seeds=args.seeds,
                              select_seeds=1, lr=[args.lr])
    for name in args.variants:
        out = pretrain(name, args.out / f"pretrain-{name}", tokenizer, args)
        tokenizer = tokenizer or out
        stats = pretrain_stats(out)
        print(f"{name}: {stats}", file=sys.stderr, flush=True)
        outcome = PB.compare([PB.Start(name, out, "pre-trained")], task, args.out, fine)[0]
        rows.append({"name": name, "stats": stats, "outcome": outcome})
    random_row = None
    if not args.no_random:
        rnd = PB.reinit(args.out / f"pretrain-{args.variants[0]}", args.out / "random")
        random_row = PB.compare([PB.Start("random", rnd, "random")], task, args.out, fine)[0]
    text = report(rows, random_row, args)
    print(text)
    (args.out / "results.md").write_text(text + "\n", encoding="utf-8")
    data = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "seconds": round(time.time() - t0),
            "variants": [{"name": r["name"], **r["stats"], "test": r["outcome"].test} for r in rows],
            "random": random_row.test if random_row else None}
    (args.out / "results.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"\n{time.time() - t0:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
