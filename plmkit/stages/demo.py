"""The built-in demo: the whole path on text plmkit generates itself, in a few minutes on 2 CPU cores.

generate data -> train a WordPiece tokenizer -> pre-train a tiny BERT (MLM + NSP) ->
fine-tune it for sentiment, and the same fine-tuning from random initialisation ->
evaluate both -> print a comparison table. Each step is the same stage a user runs
from the CLI, built from the same config dataclasses.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import build, option
from ..data import synthetic
from ..errors import PlmkitError
from ..io import write_json
from ..models.checkpoint import load_model, load_tokenizer, save_checkpoint
from ..models.model import PlmModel
from . import eval_lm, pretrain
from . import tokenizer as tokenizer_stage


@dataclass
class Config:
    out: str = option("demo_run", help="directory for everything the demo writes")
    pretrain_steps: int = option(300, help="pre-training steps for the tiny BERT")
    finetune_epochs: float = option(2.0, help="fine-tuning epochs")
    n_docs: int = option(3000, help="generated pre-training documents")
    n_train: int = option(2000, help="generated labelled training sentences")
    n_eval: int = option(500, help="generated labelled evaluation sentences")
    seed: int = option(0, help="random seed")
    overwrite: bool = option(True, help="replace an existing demo directory")


def run(cfg: Config) -> int:
    out = Path(cfg.out)
    if out.exists():
        if not cfg.overwrite:
            raise PlmkitError(f"{out}: exists (pass --overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    steps: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    data = out / "data"
    corpus = synthetic.write_corpus(data / "corpus.txt", cfg.n_docs, seed=cfg.seed)
    train_file = synthetic.write_sentiment(data / "train.tsv", cfg.n_train, seed=cfg.seed + 1)
    eval_file = synthetic.write_sentiment(data / "eval.tsv", cfg.n_eval, seed=cfg.seed + 2)
    _say(f"- generated {cfg.n_docs} documents and {cfg.n_train}+{cfg.n_eval} labelled sentences in {data}")

    _step(steps, "tokenizer", lambda: tokenizer_stage.run(build(tokenizer_stage.Config, dict(
        corpus=[str(corpus)], out=str(out / "tokenizer"), kind="wordpiece", vocab_size=2000))))
    _step(steps, "pretrain", lambda: pretrain.run(build(pretrain.Config, dict(
        corpus=[str(corpus)], out=str(out / "pretrain"), arch="bert", size="tiny", objective="mlm+nsp",
        tokenizer=str(out / "tokenizer"), seq_len=64, batch_size=32, steps=cfg.pretrain_steps, lr=2e-3,
        eval_every=max(1, cfg.pretrain_steps // 3), save_every=cfg.pretrain_steps, log_every=25,
        val_fraction=0.02, seed=cfg.seed, cache_dir=str(out / "cache")))))
    lm = _capture_json(lambda: eval_lm.run(build(eval_lm.Config, dict(
        model=str(out / "pretrain"), data=str(corpus), seq_len=64, max_batches=10,
        cache_dir=str(out / "cache")))))
    _say(f"      MLM accuracy on the corpus: {lm.get('mlm_acc', float('nan')):.3f}")

    results = _finetune_both(cfg, out, train_file, eval_file, steps)
    elapsed = time.perf_counter() - t0
    write_json(out / "summary.json", {"seconds": elapsed, "steps": steps, "results": results, "lm": lm})
    _print_table(results, elapsed, out)
    return 0


def _finetune_both(cfg: Config, out: Path, train_file: Path, eval_file: Path,
                   steps: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Fine-tune the pre-trained model and a randomly initialised twin the same way."""
    from . import evaluate, finetune

    parent = load_model(out / "pretrain")
    torch.manual_seed(cfg.seed)
    save_checkpoint(PlmModel(parent.config, parent.task), out / "random-init",
                    tokenizer=load_tokenizer(out / "pretrain"), meta={"stage": "random-init"})
    results = {}
    for name, model_dir in (("pre-trained", out / "pretrain"), ("from scratch", out / "random-init")):
        target = out / f"finetune-{name.replace(' ', '-')}"
        _step(steps, f"finetune ({name})", lambda: finetune.run(build(finetune.Config, dict(
            model=str(model_dir), task="classify", train=str(train_file), eval=str(eval_file), out=str(target),
            epochs=cfg.finetune_epochs, batch_size=32, lr=1e-3, max_length=64, seed=cfg.seed))))
        results[name] = _capture_json(lambda: evaluate.run(build(evaluate.Config, dict(
            model=str(target), data=str(eval_file)))))
    return results


def _step(steps: list[dict[str, Any]], name: str, fn: Callable[[], Any]) -> None:
    _say(f"- {name} ...")
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        fn()
    steps.append({"step": name, "seconds": round(time.perf_counter() - t, 1)})
    _say(f"      done in {steps[-1]['seconds']:.1f}s")


def _capture_json(fn: Callable[[], Any]) -> dict[str, Any]:
    """Run a stage that prints its metrics as JSON on its last line; return them."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn()
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def _say(text: str) -> None:
    print(text, flush=True)


def _print_table(results: dict[str, dict[str, float]], elapsed: float, out: Path) -> None:
    print("\nsentiment on held-out generated sentences:")
    print(f"  {'start':<14} {'accuracy':>9} {'macro F1':>9}")
    for name, r in results.items():
        print(f"  {name:<14} {r['accuracy']:>9.3f} {r['f1']:>9.3f}")
    print(f"\ndemo finished in {elapsed / 60:.1f} min; everything is in {out}/ (summary.json)")
