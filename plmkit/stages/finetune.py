"""Fine-tune a pre-trained model on a task: classify, ner, qa or generate.

Reads top to bottom: check --out -> read and check the data (all bad input fails here,
before anything is written) -> tokenizer, model with a fresh task head -> strategy (which
parameters train) -> length-bucketed batches with dynamic padding -> the shared training
loop, evaluating every epoch (or N steps) and keeping the best checkpoint -> the best
model written atomically into --out.

Work in progress (resumable checkpoints, metrics) lives in a hidden sibling directory
``.OUT.train``, so --out only ever appears complete; the work directory is removed at the
end. Full and freeze:N runs save a complete checkpoint; probe / lora / adapter / bitfit save
only their own weights and the head (``adapter.safetensors``) and point to the parent.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from .. import __version__
from ..adapters import AdapterSettings, adapter_state_dict, apply_strategy, strategy_meta
from ..adapters.strategies import EMBEDDINGS, StrategyInfo
from ..config import build, dump_yaml, option, to_dict
from ..data.features import collate, length_bucketed_batches
from ..errors import PlmkitError
from ..io import atomic_dir, atomic_write_text, check_out_dir, write_json
from ..models.checkpoint import ADAPTER_FORMAT, ADAPTER_WEIGHTS, load_model, replace_head, write_checkpoint_files
from ..models.config import config_to_dict
from ..models.model import PlmModel
from ..tasks import TASKS, Infer, Prep, TaskData, TaskSpec, evaluate_detailed
from ..tasks.common import pad_id
from ..tokenizer import load_tokenizer, save_tokenizer
from ..train import IndexedBatches, TrainConfig, train
from ..train.logging import METRICS_FILE

TRAINABLE = "trainable.safetensors"   # weights in the loop's checkpoints: only what trains
RUN_FILE = "finetune.yaml"


@dataclass
class _Options:
    model: str = option(help="pre-trained model: plmkit checkpoint or local HF BERT/GPT-2 directory")
    task: str = option(help="what to fine-tune for", choices=list(TASKS))
    train: str = option(help="training data file")
    out: str = option(help="output checkpoint directory")
    eval: str | None = option(None, help="evaluation data file (selects the best checkpoint)")
    eval_fraction: float = option(0.0, help="without --eval: hold out this fraction of --train for evaluation")
    strategy: str = option("full", help="what trains: full, probe, freeze:N, adapter, lora, bitfit")
    epochs: float = option(3.0, help="passes over the training data")
    max_steps: int | None = option(None, help="stop after this many optimizer steps")
    budget: str | None = option(None, help="wall-clock limit, e.g. 20m")
    batch_size: int = option(32, help="examples per batch")
    eval_batch_size: int = option(64, help="examples per batch when evaluating")
    lr: float = option(2e-5, help="peak learning rate")
    warmup_ratio: float = option(0.1, help="linear warmup as a fraction of the steps")
    schedule: str = option("linear", help="decay after warmup", choices=["linear", "cosine", "constant"])
    weight_decay: float = option(0.01, help="AdamW weight decay")
    clip_norm: float = option(1.0, help="gradient clipping norm (0: off)")
    grad_accum: int = option(1, help="batches per optimizer step")
    layerwise_lr_decay: float | None = option(None, help="multiply the lr by this per layer downwards")
    precision: str = option("bf16", help="bf16 autocast or fp32", choices=["auto", "bf16", "fp32"])
    compile: bool = option(False, help="torch.compile the model")
    eval_every: int = option(0, help="evaluate every N steps (0: every epoch)")
    patience: int | None = option(None, help="early stopping: evaluations without improvement")
    save_every: int = option(500, help="resumable checkpoint every N steps")
    log_every: int = option(10, help="log training metrics every N steps")
    seed: int = option(0, help="random seed")
    max_length: int = option(128, help="tokens per example (longer inputs are truncated)")
    doc_stride: int | None = option(None, help="qa: overlap of context windows in tokens "
                                    "(default: max_length // 4, at most 128)")
    max_new_tokens: int = option(32, help="generate: completion length when evaluating")
    text_column: str | None = option(None, help="classify: text column (default: sentence, text, ...)")
    text_pair_column: str | None = option(None, help="classify: second-text column for sentence pairs")
    label_column: str | None = option(None, help="classify: label column (default: label, ...)")
    header: bool | None = option(None, help="classify: the table has a header row (default: detect)")
    resume: bool = option(False, help="continue an interrupted run into the same --out")
    overwrite: bool = option(False, help="replace an existing --out")


def _copied_fields(cls: type) -> list[tuple[str, Any, Any]]:
    """(name, type, field) of ``cls``'s options, to compose them into the stage config."""
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], dataclasses.field(default=f.default, default_factory=f.default_factory,
                                                      metadata=f.metadata))
            for f in dataclasses.fields(cls)]


# The stage config: the options above plus the adapter knobs (lora_r, adapter_size, ...),
# taken from AdapterSettings so the two can never disagree.
Config = dataclasses.make_dataclass("Config", _copied_fields(AdapterSettings), bases=(_Options,))
Config.__module__ = __name__


def run(cfg: Config) -> int:
    task = TASKS[cfg.task]
    out = check_out_dir(Path(cfg.out), cfg.overwrite)
    work = _work_dir(out, cfg)
    prep = _prep(cfg)

    # 1. Data: read, label map, features. Bad input stops here, before anything is written.
    train_ex, eval_ex = _read_data(task, prep, cfg)
    tok = load_tokenizer(cfg.model)
    head_config = {**task.head_config(train_ex, prep), "finetune_task": task.name, "preprocess": to_dict(prep)}
    train_feats = task.encode(tok, train_ex, head_config, prep)
    infer = Infer(cfg.eval_batch_size, cfg.precision, cfg.max_new_tokens)
    eval_data = (TaskData(eval_ex, task.encode(tok, eval_ex, head_config, prep), tok, head_config, infer)
                 if eval_ex else None)
    if cfg.patience and eval_data is None:
        raise PlmkitError("--patience needs evaluation data (--eval FILE or --eval-fraction F)")

    # 2. Model with a fresh task head, and the strategy that decides what trains.
    model = _load_model(cfg, task, head_config, prep)
    settings = build(AdapterSettings, {f.name: getattr(cfg, f.name) for f in dataclasses.fields(AdapterSettings)})
    info = apply_strategy(model, cfg.strategy, settings)
    print(f"fine-tuning {cfg.model} for {task.name} ({len(train_ex)} train / {len(eval_ex or [])} eval examples, "
          f"{len(train_feats)} train features), strategy {info.spec}: {info.summary()}")

    # 3. Length-bucketed batches: similar lengths share a batch, padded only to their longest.
    source = _batches(train_feats, tok, cfg)
    tcfg = _train_config(cfg, len(source))
    t0 = time.perf_counter()
    result = train(model, source, tcfg, work,
                   eval_fn=(lambda m: task.evaluate(m, eval_data)) if eval_data else None,
                   metric=task.metric if eval_data else None, greater_is_better=task.greater_is_better,
                   resume=cfg.resume, fingerprint=_fingerprint(cfg, head_config, info),
                   save_fn=save_trainable, load_fn=load_trainable, layer_of=_depth(model))
    seconds = time.perf_counter() - t0

    # 4. The best evaluated weights (or the last, without evaluation) go to --out.
    if result.best_dir is not None:
        load_trainable(model, result.best_dir)
    metrics = _final_metrics(result, work, task, seconds)
    if eval_data is not None:   # confusion matrix / per-entity scores of the kept weights, for reports
        model.eval()
        details = {k: v for k, v in evaluate_detailed(task, model, eval_data).items() if not isinstance(v, float)}
        if details:
            metrics["eval_details"] = details
    _write_output(model, info, tok, out, cfg, metrics, work)
    shutil.rmtree(work, ignore_errors=True)
    scores = ", ".join(f"{k} {v:.4g}" for k, v in metrics.get("eval", {}).items())
    print(f"trained {result.steps} steps in {seconds:.1f} s ({result.stopped_reason})"
          + (f"; best at step {metrics['best_step']}: {scores}" if scores else "") + f"; model in {out}")
    return 0


def _work_dir(out: Path, cfg: Config) -> Path:
    """The hidden run directory beside --out; only --resume may reuse an existing one."""
    work = out.with_name(f".{out.name}.train")
    if work.exists() and not cfg.resume:
        if not cfg.overwrite:
            raise PlmkitError(f"{work}: an interrupted run of this output exists; continue it with --resume, "
                              "or start over with --overwrite")
        shutil.rmtree(work)
    return work


def _prep(cfg: Config) -> Prep:
    if cfg.max_length < 8:
        raise PlmkitError(f"--max-length must be at least 8, got {cfg.max_length}")
    stride = cfg.doc_stride if cfg.doc_stride is not None else min(128, cfg.max_length // 4)
    return Prep(max_length=cfg.max_length, doc_stride=stride, text_column=cfg.text_column,
                text_pair_column=cfg.text_pair_column, label_column=cfg.label_column, header=cfg.header)


def _read_data(task: TaskSpec, prep: Prep, cfg: Config) -> tuple[list[Any], list[Any] | None]:
    """Training examples, and evaluation examples from --eval or carved out of --train."""
    train_ex = task.read(cfg.train, prep)
    if cfg.eval:
        labels = task.head_config(train_ex, prep).get("labels")
        return train_ex, task.read(cfg.eval, prep, labels=labels)
    if not cfg.eval_fraction:
        return train_ex, None
    if not 0.0 < cfg.eval_fraction < 1.0:
        raise PlmkitError(f"--eval-fraction must be between 0 and 1, got {cfg.eval_fraction}")
    order = list(range(len(train_ex)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = max(1, round(cfg.eval_fraction * len(order)))
    if n_eval >= len(order):
        raise PlmkitError(f"{cfg.train}: {len(order)} examples are too few to hold out {cfg.eval_fraction:.0%}")
    held = set(order[:n_eval])
    kept = [ex for i, ex in enumerate(train_ex) if i not in held]
    evals = [ex for i, ex in enumerate(train_ex) if i in held]
    labels = task.head_config(kept, prep).get("labels")
    if labels is not None:   # a label seen only in the held-out part has no output unit: drop it
        evals = [ex for ex in evals if set(_labels_of(ex)) <= set(labels)]
    print(f"--eval-fraction {cfg.eval_fraction:g}: {len(held)} of {len(train_ex)} examples of {cfg.train} are held "
          f"out for evaluation and not trained on ({len(kept)} train); pass --eval FILE to train on all of them")
    return kept, evals


def _labels_of(ex: Any) -> list[str]:
    if hasattr(ex, "tags"):
        return list(ex.tags or [])
    return [ex.label] if getattr(ex, "label", None) is not None else []


def _load_model(cfg: Config, task: TaskSpec, head_config: dict[str, Any], prep: Prep) -> PlmModel:
    model = load_model(cfg.model, task=task.head, head_config=head_config)
    if getattr(model, "plmkit_strategy", None) is not None:
        raise PlmkitError(f"{cfg.model}: an adapter checkpoint; make it a standalone model first "
                          "(plmkit merge) to fine-tune it further")
    if prep.max_length > model.config.max_position:
        raise PlmkitError(f"--max-length {prep.max_length} exceeds the model's {model.config.max_position} "
                          "positions")
    same = (model.task == task.head and model.head_config.get("labels") == head_config.get("labels")
            and model.head_config.get("num_labels") == head_config.get("num_labels"))
    if same:
        model.head_config = dict(head_config)     # the parent's head already fits: keep training it
    else:
        torch.manual_seed(cfg.seed)               # a fresh head, initialised from the run's seed
        replace_head(model, task.head, head_config)
    return model


def _batches(features: list[dict[str, Any]], tok: Tokenizer, cfg: Config) -> IndexedBatches:
    lengths = [len(f["input_ids"]) for f in features]
    buckets = length_bucketed_batches(lengths, cfg.batch_size, seed=cfg.seed)
    pad = pad_id(tok)
    return IndexedBatches(len(features), lambda idx: collate([features[i] for i in idx], pad),
                          cfg.batch_size, seed=cfg.seed, batches=buckets)


def _train_config(cfg: Config, batches_per_epoch: int) -> TrainConfig:
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.grad_accum))
    return build(TrainConfig, dict(
        lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio, schedule=cfg.schedule,
        max_steps=cfg.max_steps, epochs=cfg.epochs, budget=cfg.budget, grad_accum=cfg.grad_accum,
        clip_norm=cfg.clip_norm, precision=cfg.precision, compile=cfg.compile,
        eval_every=cfg.eval_every or steps_per_epoch, save_every=cfg.save_every, keep_last=1,
        log_every=cfg.log_every, seed=cfg.seed, patience=cfg.patience,
        layerwise_lr_decay=cfg.layerwise_lr_decay), source="finetune")


def _fingerprint(cfg: Config, head_config: dict[str, Any], info: StrategyInfo) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one."""
    train_file = Path(cfg.train)
    return {"model": str(Path(cfg.model).resolve()), "task": cfg.task, "head_config": head_config,
            "strategy": info.spec, "adapter": to_dict(info.settings), "batch_size": cfg.batch_size,
            "train": [str(train_file.resolve()), train_file.stat().st_size],
            "eval": cfg.eval, "eval_fraction": cfg.eval_fraction}


def _depth(model: PlmModel):
    """Layer depth for layer-wise lr decay: embeddings 0, layer i -> i + 1, head None (top)."""
    def layer_of(name: str) -> int | None:
        if name.startswith(EMBEDDINGS):
            return 0
        i = model.layer_of(name)
        return None if i is None else i + 1
    return layer_of


def save_trainable(model: torch.nn.Module, directory: Path) -> None:
    """The loop's checkpoints hold only what trains: frozen weights equal the parent's."""
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
              str(directory / TRAINABLE))


@torch.no_grad()
def load_trainable(model: torch.nn.Module, directory: Path) -> None:
    state = load_file(str(directory / TRAINABLE))
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise PlmkitError(f"{directory / TRAINABLE}: weights {unknown[:3]} do not belong to this model")
    for name, value in state.items():
        params[name].copy_(value)


def _final_metrics(result: Any, work: Path, task: TaskSpec, seconds: float) -> dict[str, Any]:
    """Steps, time, and the evaluation scores of the checkpoint that was kept."""
    metrics: dict[str, Any] = {"steps": result.steps, "stopped": result.stopped_reason,
                               "train_seconds": round(seconds, 2)}
    if result.losses:
        metrics["train_loss"] = result.losses[-1]
    if result.best_step is None:
        return metrics
    metrics.update(best_step=result.best_step, metric=task.metric)
    # metrics.jsonl covers the whole run, resumed parts included (the loop's history only this process).
    for line in (work / METRICS_FILE).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("step") == result.best_step and any(k.startswith("eval_") for k in rec):
            metrics["eval"] = {k[5:]: v for k, v in rec.items() if k.startswith("eval_")}
    return metrics


def _write_output(model: PlmModel, info: StrategyInfo, tok: Tokenizer, out: Path, cfg: Config,
                  metrics: dict[str, Any], work: Path) -> None:
    """A complete checkpoint (full, freeze:N) or an adapter-only one, atomically."""
    meta = {"stage": "finetune", "parent": str(Path(cfg.model).resolve()), "config": to_dict(cfg),
            "strategy": strategy_meta(info), "metrics": metrics}
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        if info.adapter_only:
            write_json(tmp / "config.json", {"plmkit": __version__, "task": model.task,
                                             "head_config": model.head_config,
                                             "model": config_to_dict(model.config)})
            save_file(adapter_state_dict(model), str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            save_tokenizer(tok, tmp, model_max_length=model.config.max_position)
            write_json(tmp / "plmkit.json", {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "plmkit": __version__,
                                             "format": ADAPTER_FORMAT, **meta})
        else:
            write_checkpoint_files(model, tmp, tok, meta)
        atomic_write_text(tmp / RUN_FILE, dump_yaml(cfg))
        if (work / METRICS_FILE).is_file():
            shutil.copyfile(work / METRICS_FILE, tmp / METRICS_FILE)
