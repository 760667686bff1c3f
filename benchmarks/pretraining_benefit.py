"""Does pre-training help? Fine-tune a pre-trained BERT and its randomly initialised twin the same way.

    # 1. pre-train (30 minutes of wall clock on the 2-core CPU):
    plmkit pretrain --arch bert --size mini --objective mlm+nsp --corpus ../shared/data/corpus/*.txt \
        --out runs/pt_mini --vocab-size 16000 --seq-len 128 --batch-size 32 --steps 2400 --budget 30m
    # 2. this script:
    python benchmarks/pretraining_benefit.py --pretrained runs/pt_mini

Fine-tunes on the first 10,000 sentences of SST-2 train and evaluates on sentences
60,000-62,000 of the same file (never trained on). Both runs use the same tokenizer,
architecture, seed and fine-tuning settings; only the initial weights differ. Prints a
markdown table and both fine-tuning loss curves.
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
    from plmkit.models.checkpoint import load_model, load_tokenizer, save_checkpoint
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


def finetune(model: Path, train: Path, dev: Path, out: Path, args: argparse.Namespace) -> dict:
    plmkit("finetune", "--model", str(model), "--task", "classify", "--train", str(train), "--eval", str(dev),
           "--out", str(out), "--epochs", str(args.epochs), "--batch-size", "32", "--lr", str(args.lr),
           "--max-length", "64", "--seed", "0", "--log-every", "10")
    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = json.loads(plmkit("evaluate", "--model", str(out), "--data", str(args.test)).strip().splitlines()[-1])
    return {"curve": [(r["step"], r["loss"]) for r in curve if "loss" in r],
            "evals": [(r["step"], r.get("eval_accuracy")) for r in curve if "eval_accuracy" in r],
            "test": metrics}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained", type=Path, required=True)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=1e-4)
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
        runs = {"pre-trained": finetune(args.pretrained, train, dev, tmp / "ft-pre", args),
                "from scratch": finetune(twin, train, dev, tmp / "ft-scratch", args)}
    print("| start | test accuracy | test macro F1 | dev accuracy per epoch |")
    print("|---|---|---|---|")
    for name, r in runs.items():
        evals = ", ".join(f"{a:.3f}" for _, a in r["evals"] if a is not None)
        print(f"| {name} | {r['test']['accuracy']:.4f} | {r['test']['f1']:.4f} | {evals} |")
    gain = 100 * (runs["pre-trained"]["test"]["accuracy"] - runs["from scratch"]["test"]["accuracy"])
    print(f"\npre-training gain: {gain:+.1f} accuracy points")
    print("\nfine-tuning loss (step: pre-trained / from scratch):")
    a, b = dict(runs["pre-trained"]["curve"]), dict(runs["from scratch"]["curve"])
    for step in sorted(set(a) & set(b))[::5]:
        print(f"  {step:5d}: {a[step]:.3f} / {b[step]:.3f}")


if __name__ == "__main__":
    main()
