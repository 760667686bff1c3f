"""Pre-train BERT (MLM, MLM+NSP, MLM+SOP) or GPT (causal LM) on raw text.

Reads top to bottom: check inputs -> tokenizer (given, or trained and stored in the run)
-> token shards (cached) -> model from a size preset -> batch sources -> the shared
training loop -> final checkpoint in --out. The run directory also holds resumable
checkpoints (``checkpoints/step-N``), ``metrics.jsonl`` and the resolved ``pretrain.yaml``.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tokenizers import Tokenizer

from ..config import compose, dump_yaml, load_yaml, option, pick, to_dict
from ..data.corpus import check_text_files
from ..data.pretrain import make_batch_source
from ..data.shards import build_shards, open_shards
from ..errors import PlmkitError
from ..eval.lm import evaluate_lm, flops_per_token
from ..io import atomic_dir, atomic_write_text
from ..models.checkpoint import write_checkpoint_files
from ..models.config import BERT_PRESETS, config_to_dict, preset
from ..models.model import PlmModel
from ..tokenizer import load_tokenizer, save_tokenizer, special_ids, train_tokenizer
from ..precision import autocast_dtype
from ..train import RESUME_FREE, TrainArgs, check_args, dropped_unless_resumable, measure_peak_flops, train
from ..train import dist as D
from ..train.state import load_safetensors

OBJECTIVES = {"bert": ("mlm+nsp", "mlm", "mlm+sop"), "gpt": ("clm",)}
RUN_FILE = "pretrain.yaml"


@dataclass
class _Options:
    corpus: list[str] = option(help="raw UTF-8 text files; documents are blank-line separated")
    out: str = option(help="run / output directory")
    arch: str = option("bert", help="model family", choices=["bert", "gpt"])
    size: str = option("mini", help="size preset", choices=list(BERT_PRESETS))
    objective: str | None = option(None, help="mlm, mlm+nsp, mlm+sop (bert) or clm (gpt); default mlm+nsp / clm; "
                                   "an mlm-only BERT has no pooler (nothing would train it)",
                                   choices=["mlm", "mlm+nsp", "mlm+sop", "clm"])
    pre_ln: bool = option(False, help="bert: LayerNorm before each sub-layer (GPT-2's layout, the usual choice "
                          "for high learning rates); the model cannot be exported to the HF BERT layout")
    dropout: float | None = option(None, help="hidden and attention dropout of the new model (default: the "
                                   "preset's 0.1); fine-tuning inherits it", ge=0, lt=1)
    tokenizer: str | None = option(None, help="tokenizer or checkpoint dir; default: train one on the corpus")
    vocab_size: int = option(16000, help="vocabulary size when training the tokenizer", ge=1)
    seq_len: int = option(128, help="tokens per sequence", ge=8)
    batch_size: int = option(32, help="sequences per micro-batch (per rank)", ge=1)
    mlm_prob: float = option(0.15, help="fraction of tokens selected for MLM", gt=0, lt=1)
    whole_word_mask: bool = option(False, help="mask whole words (WordPiece)")
    short_seq_prob: float = option(0.1, help="NSP/SOP: probability of a shorter target length", ge=0, le=1)
    doc_per_file: bool = option(False, help="each file is one document")
    val_fraction: float = option(0.01, help="documents held out for validation", ge=0, lt=1)
    eval_batches: int = option(20, help="validation batches per evaluation (0: no validation)", ge=0)
    cache_dir: str = option(".plmkit_cache", help="token shard cache directory")
    overwrite: bool = option(False, help="delete an existing --out and start over")


# Training options (plmkit/train/args.py) with another default for pre-training.
TRAIN_DEFAULTS = {"warmup_ratio": 0.06, "eval_every": 200, "save_every": 200}
Config = compose("Config", __name__, _Options, TrainArgs, defaults=TRAIN_DEFAULTS, omit=("layerwise_lr_decay",))


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
    # Everything that can fail on bad input happens before --out is touched.
    task, args = _check_request(cfg, info)
    out = Path(cfg.out)
    check_text_files(cfg.corpus)
    _check_out_dir(out, cfg)
    tok = _tokenizer(cfg, out, info)
    shard_dir = _shards(cfg, tok, task, info)
    overrides: dict[str, Any] = {"pre_ln": True} if cfg.pre_ln else {}   # bert only (checked above)
    if task == "mlm":   # no NSP/SOP: the pooler would get no gradient (and DDP would fail on it)
        overrides["use_pooler"] = False
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
                  short_seq_prob=cfg.short_seq_prob, mlm_prob=cfg.mlm_prob, whole_word=cfg.whole_word_mask,
                  eos=special_ids(tok).get("eos"))
    source = make_batch_source(task, open_shards(shard_dir, "train"), tok, rank=info.rank,
                               world_size=info.world_size, **common)
    eval_fn = _eval_fn(task, shard_dir, tok, cfg, common)
    if info.is_main:
        _start_run_dir(out, cfg, tok)
    D.barrier(info)
    fingerprint = {"model": config_to_dict(model_cfg), "task": task, "shards": shard_dir.name,
                   "seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "mlm_prob": cfg.mlm_prob,
                   "whole_word_mask": cfg.whole_word_mask}
    with dropped_unless_resumable(out, enabled=not cfg.resume):
        # --patience watches the validation loss (the best weights also go to out/best)
        result = train(model, source, args, out, eval_fn=eval_fn, fingerprint=fingerprint,
                       metric="loss" if args.patience and eval_fn else None, greater_is_better=False,
                       flops_per_token=flops_per_token(model, cfg.seq_len, cfg.mlm_prob),
                       peak_flops=measure_peak_flops() if info.is_main else None)
    if info.is_main:
        if result.sharded:  # FSDP left `model` sharded; its full weights are in the last checkpoint
            model = PlmModel(model_cfg, task)
            load_safetensors(model, result.last_checkpoint)
        metrics = {"steps": result.steps, "stopped": result.stopped_reason, **result.last_metrics}
        if result.resumes:
            metrics["resumes"] = result.resumes
        _write_final(model, tok, out, cfg, metrics)
        shown = "".join(f", {k} {v:.4g}" for k, v in result.last_metrics.items())
        print(f"done: {result.steps} steps ({result.stopped_reason}){shown}; model in {out}")
    return 0


def _check_request(cfg: Config, info: D.DistInfo) -> tuple[str, TrainArgs]:
    """Settings that are wrong whatever the data: fail before reading or writing anything."""
    task = cfg.objective or OBJECTIVES[cfg.arch][0]
    if task not in OBJECTIVES[cfg.arch]:
        raise PlmkitError(f"objective '{task}' does not fit arch '{cfg.arch}' (choose {', '.join(OBJECTIVES[cfg.arch])})")
    if cfg.pre_ln and cfg.arch != "bert":
        raise PlmkitError("--pre-ln is a BERT option (GPT blocks are always pre-LN)")
    args = pick(TrainArgs, cfg)
    check_args(args)
    autocast_dtype(args.precision, D.default_device(info))      # bf16 where unsupported: refused now
    return task, args


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


# Settings that may change when resuming: the training options the loop allows to change
# (lr, precision, length, how often to evaluate/save/log), and how to evaluate and cache.
RESUMABLE = RESUME_FREE | {"eval_batches", "overwrite", "cache_dir"}
PATHS = ("corpus", "out", "tokenizer")     # compared as resolved paths: ./run is run


def _check_same_run(run_file: Path, cfg: Config) -> None:
    saved, now = _resolved(load_yaml(run_file)), _resolved(to_dict(cfg))
    diff = {k: (saved.get(k), now[k]) for k in now if k not in RESUMABLE and saved.get(k) != now[k]}
    if diff:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise PlmkitError(f"{run_file}: --resume with a changed configuration ({shown})")


def _resolved(values: dict[str, Any]) -> dict[str, Any]:
    def norm(p: Any) -> Any:
        return str(Path(p).resolve()) if isinstance(p, str) else p
    return {k: ([norm(p) for p in v] if isinstance(v, list) else norm(v)) if k in PATHS else v
            for k, v in values.items()}


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

