"""Distil a fine-tuned teacher into a smaller student (classify, ner, qa).

Reads top to bottom: check the flags -> the teacher, its task, tokenizer and preprocessing
settings -> read and encode the data with the teacher's settings -> the student (chosen
teacher layers, a preset size, or a config file) and the layer map (all bad input fails up to
here, before anything is written) -> the teacher's score -> optional teacher logit cache -> the
shared training loop on ``DistillModule`` (student learns from the frozen teacher) -> the best
evaluated (or last) student written atomically into --out: a normal checkpoint of the
teacher's task, tokenizer and preprocessing, which evaluate / predict / serve take as is.

Working files (the loop's checkpoints, the logit cache) live in a hidden sibling
``.OUT.distill`` that is removed at the end, also when the run fails.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tokenizers import Tokenizer

from ..compress import distill as D
from ..config import build, dump_yaml, option, to_dict
from ..data.features import collate, feature_lengths, length_bucketed_batches
from ..errors import PlmkitError
from ..io import atomic_dir, atomic_write_text, check_out_dir
from ..models.checkpoint import write_checkpoint_files
from ..models.config import BERT_PRESETS
from ..models.model import PlmModel
from ..tasks import TASKS, Infer, Prep, TaskData, TaskSpec, load_finetuned
from ..tasks.common import pad_id
from ..train import IndexedBatches, TrainConfig, train
from ..train.logging import METRICS_FILE

RUN_FILE = "distill.yaml"
DISTILLABLE = [name for name, t in TASKS.items() if t.head in D.LOGITS]


@dataclass
class Config:
    teacher: str = option(help="fine-tuned teacher checkpoint")
    task: str = option(help="the teacher's task", choices=DISTILLABLE)
    train: str = option(help="training data file (the task's format)")
    out: str = option(help="output checkpoint directory for the student")
    student_layers: str | None = option(None, help="student = these teacher layers, e.g. 0,2,4 (copies the "
                                        "embeddings, those layers, the pooler and the task head)")
    student_size: str | None = option(None, help="fresh student of this preset size", choices=list(BERT_PRESETS))
    student_config: str | None = option(None, help="fresh student from a JSON file of model config fields "
                                        "(hidden_size, num_layers, num_heads, intermediate_size, ...)")
    temperature: float = option(2.0, help="softmax temperature of the soft targets")
    alpha: float = option(0.5, help="weight of the hard-label loss; 1 - alpha weighs the teacher's soft targets")
    hidden_weight: float = option(0.0, help="weight of the hidden-state MSE of mapped layers (0: off)")
    attention_weight: float = option(0.0, help="weight of the attention-distribution KL of mapped layers (0: off)")
    embedding_weight: float = option(0.0, help="weight of the embedding-output MSE (0: off)")
    layer_map: str | None = option(None, help="student:teacher layer pairs for the hidden/attention losses, "
                                   "e.g. 0:1,1:3,2:5 (default: uniform, the last layer to the last)")
    cache_teacher: bool = option(False, help="run the teacher once and reuse its logits every epoch "
                                 "(only without hidden/attention/embedding losses)")
    eval: str | None = option(None, help="evaluation data: teacher and student scores, best checkpoint")
    epochs: float = option(3.0, help="passes over the training data")
    max_steps: int | None = option(None, help="stop after this many optimizer steps")
    budget: str | None = option(None, help="wall-clock limit, e.g. 20m")
    batch_size: int = option(32, help="examples per batch")
    eval_batch_size: int = option(64, help="examples per batch when evaluating")
    lr: float = option(1e-4, help="peak learning rate")
    warmup_ratio: float = option(0.1, help="linear warmup as a fraction of the steps")
    schedule: str = option("linear", help="decay after warmup", choices=["linear", "cosine", "constant"])
    weight_decay: float = option(0.01, help="AdamW weight decay")
    clip_norm: float = option(1.0, help="gradient clipping norm (0: off)")
    grad_accum: int = option(1, help="batches per optimizer step")
    precision: str = option("bf16", help="bf16 autocast or fp32", choices=["auto", "bf16", "fp32"])
    eval_every: int = option(0, help="evaluate every N steps (0: every epoch)")
    save_every: int = option(500, help="checkpoint every N steps (inside the work directory)")
    log_every: int = option(10, help="log training metrics every N steps")
    seed: int = option(0, help="random seed")
    max_length: int | None = option(None, help="tokens per example (default: the teacher's setting)")
    overwrite: bool = option(False, help="replace an existing --out")


def check_inputs(cfg: Config, pending: Callable[[str], bool]) -> None:
    """``plmkit run`` calls this before any stage: the options (the data needs the model's settings)."""
    _check_request(cfg)


def run(cfg: Config) -> int:
    spec = _check_request(cfg)
    out = check_out_dir(Path(cfg.out), cfg.overwrite)

    # 1. Teacher, data and student: all bad input stops here, before anything is written.
    teacher, task, prep, tok = load_finetuned(cfg.teacher, cfg.task)
    if teacher.task not in D.LOGITS:
        raise PlmkitError(f"{cfg.teacher}: cannot distil a '{teacher.task}' model (tasks: {', '.join(DISTILLABLE)})")
    if cfg.max_length is not None:
        prep.max_length = cfg.max_length
    head_config = {**teacher.head_config, "finetune_task": task.name, "preprocess": to_dict(prep)}
    train_feats, eval_data = _read_data(cfg, task, prep, tok, head_config)
    torch.manual_seed(cfg.seed)                     # a fresh student (or projection) from the run's seed
    student, init = _build_student(teacher, cfg)
    student.head_config = dict(head_config)
    if prep.max_length > student.config.max_position:
        raise PlmkitError(f"max_length {prep.max_length} exceeds the student's {student.config.max_position} "
                          "positions")
    if cfg.layer_map:
        spec.layer_map = D.parse_layer_map(cfg.layer_map, student.config.num_layers, teacher.config.num_layers)
    print(f"distilling {cfg.teacher} ({teacher.num_parameters():,} parameters) into a student of "
          f"{student.num_parameters():,} parameters ({init}); {len(train_feats)} train features")

    work = out.with_name(f".{out.name}.distill")
    shutil.rmtree(work, ignore_errors=True)
    try:
        # 2. The teacher's score, then (optionally) its logits once for all epochs.
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        teacher.to(device)
        teacher_scores = _score(teacher, task, eval_data)
        cache = (D.TeacherCache.build(teacher, train_feats, tok, work / "cache" / "teacher_logits.f16",
                                      cfg.eval_batch_size, cfg.precision) if cfg.cache_teacher else None)
        module = D.DistillModule(student, None if cache else teacher, spec, cache)

        # 3. The shared loop; evaluation scores the student alone.
        source = _batches(train_feats, tok, cfg)
        t0 = time.perf_counter()
        result = train(module, source, _train_config(cfg, len(source)), work,
                       eval_fn=(lambda m: task.evaluate(m.student, eval_data)) if eval_data else None,
                       metric=task.metric if eval_data else None, greater_is_better=task.greater_is_better,
                       save_fn=D.save_student, load_fn=D.load_student,
                       flops_per_token=_flops_per_token(student, None if cache else teacher))
        seconds = time.perf_counter() - t0

        # 4. The best evaluated (or last) student goes to --out.
        if result.best_dir is not None:
            D.load_student(module, result.best_dir)
        metrics = {"steps": result.steps, "stopped": result.stopped_reason, "train_seconds": round(seconds, 2),
                   "train_loss": result.losses[-1] if result.losses else None, "best_step": result.best_step}
        if eval_data is not None:
            metrics.update(metric=task.metric, teacher=teacher_scores, student=_score(student, task, eval_data))
        student.cpu().eval()
        report = _report(cfg, module, teacher, init, cache is not None)
        _write_output(student, tok, out, cfg, metrics, report, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _print_summary(metrics, result.steps, seconds, out)
    return 0


def _check_request(cfg: Config) -> D.DistillSpec:
    """Settings that are wrong whatever the model: fail before reading anything."""
    chosen = [f for f in ("student_layers", "student_size", "student_config") if getattr(cfg, f) is not None]
    if len(chosen) != 1:
        raise PlmkitError("choose the student with exactly one of --student-layers (e.g. 0,2,4), "
                          "--student-size or --student-config" + (f" (got {len(chosen)})" if chosen else ""))
    if cfg.student_layers is not None:
        D.parse_layers(cfg.student_layers)
    spec = D.DistillSpec(cfg.temperature, cfg.alpha, cfg.hidden_weight, cfg.attention_weight, cfg.embedding_weight)
    spec.check()
    if cfg.cache_teacher and spec.intermediate:
        raise PlmkitError("--cache-teacher stores only the teacher's logits; it cannot serve --hidden-weight, "
                          "--attention-weight or --embedding-weight (drop those, or the cache)")
    if cfg.layer_map and not (cfg.hidden_weight or cfg.attention_weight):
        raise PlmkitError("--layer-map pairs layers for the hidden/attention losses: it needs --hidden-weight "
                          "or --attention-weight > 0")
    if cfg.max_length is not None and cfg.max_length < 8:
        raise PlmkitError(f"--max-length must be at least 8, got {cfg.max_length}")
    if cfg.batch_size < 1 or cfg.eval_batch_size < 1:
        raise PlmkitError("--batch-size and --eval-batch-size must be >= 1")
    return spec


def _read_data(cfg: Config, task: TaskSpec, prep: Prep, tok: Tokenizer,
               head_config: dict[str, Any]) -> tuple[list[dict[str, Any]], TaskData | None]:
    """Training features and evaluation data, encoded with the teacher's labels and settings."""
    labels = head_config.get("labels")
    train_feats = task.encode(tok, task.read(cfg.train, prep, labels=labels), head_config, prep)
    if not train_feats:
        raise PlmkitError(f"{cfg.train}: no training examples")
    if cfg.eval is None:
        return train_feats, None
    examples = task.read(cfg.eval, prep, labels=labels)
    return train_feats, TaskData(examples, task.encode(tok, examples, head_config, prep), tok, head_config,
                                 Infer(cfg.eval_batch_size, cfg.precision))


def _build_student(teacher: PlmModel, cfg: Config) -> tuple[PlmModel, str]:
    """The student and a description of where it came from."""
    if cfg.student_layers is not None:
        layers = D.parse_layers(cfg.student_layers)
        return D.student_from_layers(teacher, layers), f"teacher layers {layers}"
    if cfg.student_size is not None:
        return D.student_from_preset(teacher, cfg.student_size), f"fresh preset '{cfg.student_size}'"
    return D.student_from_config(teacher, cfg.student_config), f"fresh config {cfg.student_config}"


def _batches(features: list[dict[str, Any]], tok: Tokenizer, cfg: Config) -> IndexedBatches:
    """Length-bucketed, dynamically padded batches (as finetune's) that also carry their feature
    indices, which the teacher logit cache is keyed by."""
    buckets = length_bucketed_batches(feature_lengths(features), cfg.batch_size, seed=cfg.seed)
    pad = pad_id(tok)

    def make(idx: list[int]) -> dict[str, torch.Tensor]:
        return {**collate([features[i] for i in idx], pad), "feature_index": torch.tensor(idx)}

    return IndexedBatches(len(features), make, cfg.batch_size, seed=cfg.seed, batches=buckets)


def _train_config(cfg: Config, batches_per_epoch: int) -> TrainConfig:
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.grad_accum))
    return build(TrainConfig, dict(
        lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio, schedule=cfg.schedule,
        max_steps=cfg.max_steps, epochs=cfg.epochs, budget=cfg.budget, grad_accum=cfg.grad_accum,
        clip_norm=cfg.clip_norm, precision=cfg.precision, eval_every=cfg.eval_every or steps_per_epoch,
        save_every=cfg.save_every, keep_last=1, log_every=cfg.log_every, seed=cfg.seed), source="distill")


def _flops_per_token(student: PlmModel, teacher: PlmModel | None) -> float:
    """Forward + backward of the student (6N), forward only of a live teacher (2N)."""
    return 6.0 * student.num_parameters() + (2.0 * teacher.num_parameters() if teacher is not None else 0.0)


def _score(model: PlmModel, task: TaskSpec, data: TaskData | None) -> dict[str, float] | None:
    if data is None:
        return None
    model.eval()
    with torch.no_grad():
        return {k: float(v) for k, v in task.evaluate(model, data).items()}


def _report(cfg: Config, module: D.DistillModule, teacher: PlmModel, init: str, cached: bool) -> dict[str, Any]:
    """The ``distillation`` entry of plmkit.json."""
    spec = module.spec
    return {"student": D.describe_student(module.student, init), "teacher_parameters": teacher.num_parameters(),
            "temperature": spec.temperature, "alpha": spec.alpha, "hidden_weight": spec.hidden_weight,
            "attention_weight": spec.attention_weight, "embedding_weight": spec.embedding_weight,
            "layer_map": ({str(k): v for k, v in spec.layer_map.items()}
                          if spec.intermediate and spec.layer_map else None),
            "teacher_cache": cached}


def _write_output(student: PlmModel, tok: Tokenizer, out: Path, cfg: Config, metrics: dict[str, Any],
                  report: dict[str, Any], work: Path) -> None:
    meta = {"stage": "distill", "parent": str(Path(cfg.teacher).resolve()), "config": to_dict(cfg),
            "metrics": metrics, "distillation": report}
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        write_checkpoint_files(student, tmp, tok, meta)
        atomic_write_text(tmp / RUN_FILE, dump_yaml(cfg))
        if (work / METRICS_FILE).is_file():
            shutil.copyfile(work / METRICS_FILE, tmp / METRICS_FILE)


def _print_summary(metrics: dict[str, Any], steps: int, seconds: float, out: Path) -> None:
    line = f"trained {steps} steps in {seconds:.1f} s ({metrics['stopped']})"
    name = metrics.get("metric")
    if name is not None:
        line += f"; {name}: teacher {metrics['teacher'][name]:.4g}, student {metrics['student'][name]:.4g}"
    print(line + f"; student in {out}")
