"""Pre-train BERT (MLM, MLM+NSP, MLM+SOP) or GPT (causal LM) on raw text.

Reads top to bottom: check inputs -> tokenizer (given, or trained and stored in the run)
-> token shards (cached) -> model from a size preset -> batch sources -> the shared
training loop -> final checkpoint in --out. The run directory also holds resumable
checkpoints (``checkpoints/step-N``), ``metrics.jsonl`` and the resolved ``pretrain.yaml``.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tokenizers import Tokenizer

from ..config import build, dump_yaml, option, to_dict
from ..data.corpus import check_text_files
from ..data.pretrain import make_batch_source
from ..data.shards import build_shards, open_shards
from ..errors import PlmkitError
from ..io import atomic_dir, atomic_write_text
from ..models.checkpoint import write_checkpoint_files
from ..models.config import BERT_PRESETS, config_to_dict, preset
from ..models.model import PlmModel
from ..tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from ..train import TrainConfig, measure_peak_flops, train
from ..train import dist as D
from ..train.state import load_safetensors

OBJECTIVES = {"bert": ("mlm+nsp", "mlm", "mlm+sop"), "gpt": ("clm",)}
RUN_FILE = "pretrain.yaml"


@dataclass
class Config:
    corpus: list[str] = option(help="raw UTF-8 text files; documents are blank-line separated")
    out: str = option(help="run / output directory")
    arch: str = option("bert", help="model family", choices=["bert", "gpt"])
    size: str = option("mini", help="size preset", choices=list(BERT_PRESETS))
    objective: str | None = option(None, help="mlm, mlm+nsp, mlm+sop (bert) or clm (gpt); default mlm+nsp / clm",
                                   choices=["mlm", "mlm+nsp", "mlm+sop", "clm"])
    pre_ln: bool = option(False, help="bert: LayerNorm before each sub-layer (GPT-2's layout, the usual choice "
                          "for high learning rates); the model cannot be exported to the HF BERT layout")
    dropout: float | None = option(None, help="hidden and attention dropout of the new model (default: the "
                                   "preset's 0.1); fine-tuning inherits it")
    tokenizer: str | None = option(None, help="tokenizer or checkpoint dir; default: train one on the corpus")
    vocab_size: int = option(16000, help="vocabulary size when training the tokenizer")
    seq_len: int = option(128, help="tokens per sequence")
    batch_size: int = option(32, help="sequences per micro-batch (per rank)")
    steps: int | None = option(None, help="optimizer steps (or use --budget / --epochs)")
    epochs: float | None = option(None, help="passes over the corpus")
    budget: str | None = option(None, help="wall-clock budget, e.g. 20m (saves and stops cleanly)")
    lr: float = option(5e-4, help="peak learning rate")
    warmup_ratio: float = option(0.06, help="warmup as a fraction of the steps")
    schedule: str = option("linear", help="decay after warmup", choices=["linear", "cosine", "constant"])
    grad_accum: int = option(1, help="micro-batches per optimizer step")
    weight_decay: float = option(0.01, help="AdamW weight decay")
    clip_norm: float = option(1.0, help="gradient clipping norm (0: off)")
    precision: str = option("bf16", help="bf16 autocast or fp32", choices=["auto", "bf16", "fp32"])
    compile: bool = option(False, help="torch.compile the model")
    fsdp: bool = option(False, help="under torchrun, shard weights, gradients and optimizer state over the "
                        "ranks (FSDP) instead of replicating them: for models that do not fit one device")
    mlm_prob: float = option(0.15, help="fraction of tokens selected for MLM")
    whole_word_mask: bool = option(False, help="mask whole words (WordPiece)")
    short_seq_prob: float = option(0.1, help="NSP/SOP: probability of a shorter target length")
    doc_per_file: bool = option(False, help="each file is one document")
    val_fraction: float = option(0.01, help="documents held out for validation")
    eval_every: int = option(200, help="evaluate every N steps")
    eval_batches: int = option(20, help="validation batches per evaluation")
    save_every: int = option(200, help="resumable checkpoint every N steps")
    keep_last: int = option(2, help="resumable checkpoints to keep")
    log_every: int = option(10, help="log every N steps")
    seed: int = option(0, help="random seed")
    cache_dir: str = option(".plmkit_cache", help="token shard cache directory")
    resume: bool = option(False, help="continue the run in --out from its last checkpoint")
    overwrite: bool = option(False, help="delete an existing --out and start over")
    tensorboard: bool = option(False, help="also write TensorBoard scalars")


def check_inputs(cfg: Config, pending: Callable[[str], bool]) -> None:
    """``plmkit run`` calls this before any stage: the corpus files are UTF-8 text."""
    ready = [p for p in cfg.corpus if not pending(p)]
    if ready:
        check_text_files(ready)


def run(cfg: Config) -> int:
    info = D.init_distributed()
    try:
        return _run(cfg, info)
    finally:
        D.cleanup(info)


def _run(cfg: Config, info: D.DistInfo) -> int:
    task = cfg.objective or OBJECTIVES[cfg.arch][0]
    if task not in OBJECTIVES[cfg.arch]:
        raise PlmkitError(f"objective '{task}' does not fit arch '{cfg.arch}' (choose {', '.join(OBJECTIVES[cfg.arch])})")
    if cfg.pre_ln and cfg.arch != "bert":
        raise PlmkitError("--pre-ln is a BERT option (GPT blocks are always pre-LN)")
    if cfg.dropout is not None and not 0.0 <= cfg.dropout < 1.0:
        raise PlmkitError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.steps is None and cfg.epochs is None and cfg.budget is None:
        raise PlmkitError("say how long to train: --steps N, --epochs E or --budget 20m")
    out = Path(cfg.out)
    check_text_files(cfg.corpus)
    _check_out_dir(out, cfg)
    # Everything that can fail on bad input happens before --out is touched.
    tok = _tokenizer(cfg, out, info)
    shard_dir = _shards(cfg, tok, task, info)
    overrides: dict[str, Any] = {"pre_ln": True} if cfg.pre_ln else {}   # bert only (checked above)
    if cfg.dropout is not None:
        overrides.update(hidden_dropout=cfg.dropout, attention_dropout=cfg.dropout)
    model_cfg = preset(cfg.arch, cfg.size, vocab_size=tok.get_vocab_size(with_added_tokens=True),
                       max_position=max(cfg.seq_len, 512 if cfg.arch == "bert" else 1024), **overrides)
    if cfg.arch == "bert" and tok.token_to_id("[PAD]") is not None:
        model_cfg.pad_token_id = tok.token_to_id("[PAD]")
    torch.manual_seed(cfg.seed)
    model = PlmModel(model_cfg, task)
    n_params = model.num_parameters()
    if info.is_main:
        print(f"pre-training {cfg.arch}-{cfg.size} ({n_params / 1e6:.1f}M parameters) with {task} "
              f"on {sum(Path(p).stat().st_size for p in cfg.corpus) / 1e6:.1f} MB of text")

    common = dict(seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed,
                  short_seq_prob=cfg.short_seq_prob, mlm_prob=cfg.mlm_prob, whole_word=cfg.whole_word_mask)
    source = make_batch_source(task, open_shards(shard_dir, "train"), tok, rank=info.rank,
                               world_size=info.world_size, **common)
    eval_fn = _eval_fn(task, shard_dir, tok, cfg, common)
    if info.is_main:
        _start_run_dir(out, cfg, tok)
    D.barrier(info)
    tcfg = build(TrainConfig, dict(
        lr=cfg.lr, warmup_ratio=cfg.warmup_ratio, schedule=cfg.schedule, max_steps=cfg.steps, epochs=cfg.epochs,
        budget=cfg.budget, grad_accum=cfg.grad_accum, weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm,
        precision=cfg.precision, compile=cfg.compile, eval_every=cfg.eval_every, save_every=cfg.save_every,
        keep_last=cfg.keep_last, log_every=cfg.log_every, seed=cfg.seed, tensorboard=cfg.tensorboard,
        fsdp=cfg.fsdp))
    fingerprint = {"model": config_to_dict(model_cfg), "task": task, "shards": shard_dir.name,
                   "seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "mlm_prob": cfg.mlm_prob,
                   "whole_word_mask": cfg.whole_word_mask}
    result = train(model, source, tcfg, out, eval_fn=eval_fn, resume=cfg.resume, fingerprint=fingerprint,
                   flops_per_token=flops_per_token(model, cfg.seq_len, cfg.mlm_prob),
                   peak_flops=measure_peak_flops() if info.is_main else None)
    if info.is_main:
        if result.sharded:  # FSDP left `model` sharded; its full weights are in the last checkpoint
            model = PlmModel(model_cfg, task)
            load_safetensors(model, result.last_checkpoint)
        metrics = {"steps": result.steps, "stopped": result.stopped_reason, **result.last_metrics}
        _write_final(model, tok, out, cfg, metrics)
        shown = "".join(f", {k} {v:.4g}" for k, v in result.last_metrics.items())
        print(f"done: {result.steps} steps ({result.stopped_reason}){shown}; model in {out}")
    return 0


def _check_out_dir(out: Path, cfg: Config) -> None:
    """A new run needs an empty --out (or --overwrite); --resume needs the same run."""
    run_file = out / RUN_FILE
    busy = out.exists() and any(out.iterdir())
    if cfg.resume and run_file.is_file():
        _check_same_run(run_file, cfg)
    elif cfg.resume and busy:
        raise PlmkitError(f"{out}: not a pre-training run directory (no {RUN_FILE}); cannot --resume")
    elif busy and not cfg.overwrite:
        raise PlmkitError(f"{out}: output directory exists (pass --resume to continue that run or "
                          "--overwrite to start over)")


def _start_run_dir(out: Path, cfg: Config, tok) -> None:
    """Create (or keep, when resuming) the run directory with its config and tokenizer."""
    if not cfg.resume and out.exists():
        shutil.rmtree(out)                          # --overwrite, checked above
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "tokenizer" / "tokenizer.json").is_file():
        with atomic_dir(out / "tokenizer", overwrite=True) as tmp:
            save_tokenizer(tok, tmp)
    if not (out / RUN_FILE).is_file():
        atomic_write_text(out / RUN_FILE, dump_yaml(cfg))


# Settings that may change when resuming: how long and how often, not what is trained.
RESUMABLE = {"steps", "epochs", "budget", "eval_every", "eval_batches", "save_every", "keep_last",
             "log_every", "resume", "overwrite", "tensorboard", "compile", "cache_dir"}


def _check_same_run(run_file: Path, cfg: Config) -> None:
    from ..config import load_yaml

    saved = load_yaml(run_file)
    now = to_dict(cfg)
    diff = {k: (saved.get(k), now[k]) for k in now if k not in RESUMABLE and saved.get(k) != now[k]}
    if diff:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise PlmkitError(f"{run_file}: --resume with a changed configuration ({shown})")


def _tokenizer(cfg: Config, out: Path, info: D.DistInfo) -> Tokenizer:
    """The run's tokenizer: given, stored by the run being resumed, or trained on the corpus."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    stored = out / "tokenizer"
    if cfg.resume and (stored / "tokenizer.json").is_file():
        return load_tokenizer(stored)
    text = None
    if info.is_main:
        kind = "wordpiece" if cfg.arch == "bert" else "bpe"
        text = train_tokenizer(cfg.corpus, kind=kind, vocab_size=cfg.vocab_size).to_str()
    return Tokenizer.from_str(D.broadcast_object(text, info))   # every rank gets rank 0's


def _shards(cfg: Config, tok, task: str, info: D.DistInfo) -> Path:
    kw = dict(doc_per_file=cfg.doc_per_file, val_fraction=cfg.val_fraction, newlines=task == "clm")
    if info.is_main:
        build_shards(cfg.corpus, tok, cfg.cache_dir, **kw)
    D.barrier(info)
    return build_shards(cfg.corpus, tok, cfg.cache_dir, **kw)    # a cache hit on every rank


def _eval_fn(task: str, shard_dir: Path, tok, cfg: Config, common: dict[str, Any]):
    """Mean validation loss (and MLM/NSP accuracy, perplexity) over fixed batches."""
    val = open_shards(shard_dir, "val")
    if val.n_docs == 0 or cfg.eval_batches == 0:
        return None
    batch_size = min(cfg.batch_size, 16)
    while True:  # a small validation split gets smaller batches rather than no evaluation
        try:
            source = make_batch_source(task, val, tok, shuffle=False, loop=False,
                                       **{**common, "batch_size": batch_size})
            return lambda model: evaluate_lm(model, source, cfg.eval_batches)
        except PlmkitError as e:
            if batch_size == 1:
                print(f"note: no validation ({e})")
                return None
            batch_size //= 2


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, source, max_batches: int | None = None) -> dict[str, float]:
    """Average loss and accuracies over a (non-looping) batch source."""
    totals: dict[str, float] = {}
    n = 0
    device = next(model.parameters()).device
    for i, batch in enumerate(source):
        if max_batches is not None and i >= max_batches:
            break
        out = model(**{k: v.to(device) for k, v in batch.items()})
        totals["loss"] = totals.get("loss", 0.0) + float(out.loss)
        for key, value in out.aux.items():
            if key.endswith("_acc"):
                totals[key] = totals.get(key, 0.0) + float(value)
        n += 1
    if n == 0:
        return {}
    metrics = {k: v / n for k, v in totals.items()}
    if "clm_loss" in getattr(out, "aux", {}) or model.task == "clm":
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
    return metrics


def flops_per_token(model: PlmModel, seq_len: int, mlm_prob: float = 0.15) -> float:
    """Training FLOPs per token actually required by the objective (PaLM-style accounting).

    6 x (non-embedding parameters) for the dense layers, 12 x L x h x d x T for attention,
    and the vocabulary projection: on every token for CLM, on the ``mlm_prob`` masked
    tokens only for MLM (plmkit's MLM head projects only those).
    """
    cfg = model.config
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n or n.startswith("backbone.w"))
    dense = model.num_parameters() - emb
    attn = 12 * sum(cfg.heads) * cfg.head_dim * seq_len
    width = getattr(cfg, "embedding_size", None) or cfg.hidden_size
    vocab = 6 * width * cfg.vocab_size * (1.0 if model.task == "clm" else mlm_prob)
    return 6.0 * dense + attn + vocab


def _write_final(model: PlmModel, tok, out: Path, cfg: Config, metrics: dict[str, Any]) -> None:
    """Put the final model files into ``out`` (config.json moved last: loadable only when whole)."""
    meta = {"stage": "pretrain", "parent": None, "config": to_dict(cfg), "metrics": metrics}
    staging = out / ".final"
    shutil.rmtree(staging, ignore_errors=True)
    with atomic_dir(staging, overwrite=True) as tmp:
        write_checkpoint_files(model, tmp, tok, meta)
    names = sorted(p.name for p in staging.iterdir())
    for name in [n for n in names if n != "config.json"] + ["config.json"]:
        (staging / name).replace(out / name)
    staging.rmdir()

