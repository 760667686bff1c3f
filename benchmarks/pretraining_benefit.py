"""Does pre-training help? Fine-tune a pre-trained BERT and its randomly initialised twin the same way.

    # 1. pre-train (under 30 minutes of wall clock on the 2-core CPU):
    plmkit pretrain --arch bert --size mini --objective mlm+nsp --corpus ../shared/data/corpus/*.txt \
        --out runs/pt_mini --vocab-size 8000 --pre-ln --lr 1e-3 --max-steps 6800 --budget 30m
    # 2. this script (~6 minutes: 3 learning rates x 2 starts):
    python benchmarks/pretraining_benefit.py --pretrained runs/pt_mini

Fine-tunes on the first 10,000 sentences of SST-2 train at each of a few learning rates;
each start keeps the learning rate with the best accuracy on sentences 50,000-51,000 (dev)
and is reported on sentences 60,000-62,000 (test; never trained on or selected by). Both
starts use the same tokenizer, architecture, seed and fine-tuning settings; only the initial
weights differ. Prints a markdown table and the fine-tuning loss curves at the selected rates.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"


def slice_tsv(src: Path, dst: Path, start: int, stop: int) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines()
    dst.write_text("\n".join([lines[0]] + lines[1 + start:1 + stop]) + "\n", encoding="utf-8")
    return dst


def random_twin(pretrained: Path, out: Path) -> Path:
    from plmkit.models.checkpoint import load_model, save_checkpoint
    from plmkit.tokenizer import load_tokenizer
    from plmkit.models.model import PlmModel

    parent = load_model(pretrained)
    torch.manual_seed(0)
    return save_checkpoint(PlmModel(parent.config, parent.task), out, tokenizer=load_tokenizer(pretrained),
                           meta={"stage": "random-init", "parent": None})


def plmkit(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "plmkit.cli", *args], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"plmkit {' '.join(args)} failed:\n{res.stderr}")
    return res.stdout


def finetune(model: Path, train: Path, dev: Path, out: Path, lr: float, args: argparse.Namespace) -> dict:
    plmkit("finetune", "--model", str(model), "--task", "classify", "--train", str(train), "--eval", str(dev),
           "--out", str(out), "--epochs", str(args.epochs), "--batch-size", "32", "--lr", str(lr),
           "--max-length", "64", "--seed", "0", "--log-every", "10")
    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = json.loads(plmkit("evaluate", "--model", str(out), "--data", str(args.test)).strip().splitlines()[-1])
    evals = [(r["step"], r["eval_accuracy"]) for r in curve if r.get("eval_accuracy") is not None]
    return {"lr": lr, "curve": [(r["step"], r["loss"]) for r in curve if "loss" in r],
            "evals": evals, "dev": max(a for _, a in evals), "test": metrics}


def sweep(model: Path, name: str, train: Path, dev: Path, tmp: Path, args: argparse.Namespace) -> list[dict]:
    """Fine-tune at every learning rate; the caller picks by dev accuracy (never by test)."""
    runs = []
    for lr in args.lr:
        runs.append(finetune(model, train, dev, tmp / f"ft-{name}-{lr:g}", lr, args))
        print(f"  {name}, lr {lr:g}: dev {runs[-1]['dev']:.4f}, test {runs[-1]['test']['accuracy']:.4f}",
              file=sys.stderr)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained", type=Path, required=True)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3],
                   help="fine-tuning learning rates; each start keeps the one with the best dev accuracy")
    p.add_argument("--n-train", type=int, default=10_000)
    args = p.parse_args()
    if not SST2.is_file():
        sys.exit(f"SST-2 not found at {SST2} (expected ../shared/data beside the repo)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = slice_tsv(SST2, tmp / "train.tsv", 0, args.n_train)
        dev = slice_tsv(SST2, tmp / "dev.tsv", 50_000, 51_000)        # model selection
        args.test = slice_tsv(SST2, tmp / "test.tsv", 60_000, 62_000)  # reported
        twin = random_twin(args.pretrained, tmp / "random-init")
        sweeps = {"pre-trained": sweep(args.pretrained, "pre", train, dev, tmp, args),
                  "from scratch": sweep(twin, "scratch", train, dev, tmp, args)}
    print("| start | lr | dev accuracy per epoch | best dev | test accuracy | test macro F1 |")
    print("|---|---|---|---|---|---|")
    for name, runs in sweeps.items():
        for r in runs:
            evals = ", ".join(f"{a:.3f}" for _, a in r["evals"])
            print(f"| {name} | {r['lr']:g} | {evals} | {r['dev']:.3f} | {r['test']['accuracy']:.4f} "
                  f"| {r['test']['f1']:.4f} |")
    best = {name: max(runs, key=lambda r: r["dev"]) for name, runs in sweeps.items()}
    gain = 100 * (best["pre-trained"]["test"]["accuracy"] - best["from scratch"]["test"]["accuracy"])
    print(f"\nselected by dev: pre-trained lr {best['pre-trained']['lr']:g}, "
          f"from scratch lr {best['from scratch']['lr']:g}")
    print(f"pre-training gain (test accuracy, each start at its dev-selected lr): {gain:+.1f} points")
    print("\nfine-tuning loss at the selected lrs (step: pre-trained / from scratch):")
    a, b = dict(best["pre-trained"]["curve"]), dict(best["from scratch"]["curve"])
    for step in sorted(set(a) & set(b))[::5]:
        print(f"  {step:5d}: {a[step]:.3f} / {b[step]:.3f}")


if __name__ == "__main__":
    main()
