"""Distil a fine-tuned teacher into a smaller student (classify, ner, qa, generate), or, with
``--corpus``, any encoder into a smaller pre-trained one on unlabelled text (general distillation,
``compress/general.py``; its run is ``_run_general`` at the end of this file).

Reads top to bottom: check the flags -> the teacher, its task, tokenizer and preprocessing
settings -> read and encode the data with the teacher's settings -> the student (chosen
teacher layers, a preset size, or a config file) and the layer map (all bad input fails up to
here, before anything is written) -> the teacher's score -> optional teacher logit cache -> the
shared training loop on ``DistillModule`` (student learns from the frozen teacher) -> the best
evaluated (or last) student written atomically into --out: a normal checkpoint of the
teacher's task, tokenizer and preprocessing, which evaluate / predict / serve take as is.

Working files (the loop's checkpoints, the logit cache) live in a hidden sibling
``.OUT.distill`` that is removed at the end; a run that stops (a divergence, a kill) keeps it,
and ``--resume`` continues from its last checkpoint.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tokenizers import Tokenizer

from ..compress import distill as D
from ..compress import general as G
from ..compress import measured
from ..config import compose, dump_yaml, option, pick, to_dict
from ..data.corpus import check_text_files
from ..data.pretrain import make_batch_source
from ..data.shards import build_shards, open_shards
from ..errors import PlmkitError
from ..io import atomic_dir, atomic_write_text, check_out_dir
from ..loading import load, peek
from ..models.checkpoint import write_checkpoint_files
from ..models.config import BERT_PRESETS, config_to_dict
from ..models.model import PlmModel
from ..tasks import TASKS, Infer, Prep, TaskData, TaskSpec, load_finetuned, selection_metric
from ..train import (Hooks, IndexedBatches, TrainArgs, check_args, dropped_unless_resumable, run_dir, task_batches,
                     train)
from ..tokenizer import load_tokenizer, pad_id, report_unknown
from ..train.logging import copy_logs

RUN_FILE = "distill.yaml"
STUDENT_OPTIONS = ("student_layers", "student_size", "student_config", "student_model")
DISTILLABLE = [name for name, t in TASKS.items() if t.head in D.DISTILLABLE_HEADS]


@dataclass
class _Options:
    teacher: str = option(help="teacher checkpoint: fine-tuned (task distillation), or any encoder with --corpus")
    out: str = option(help="output checkpoint directory for the student")
    task: str | None = option(None, help="the teacher's task (task distillation)", choices=DISTILLABLE)
    train: str | None = option(None, help="training data file (the task's format)")
    corpus: list[str] | None = option(None, help="general distillation: unlabelled UTF-8 text files (one "
                                      "sentence or paragraph a line; blank lines between documents optional); "
                                      "the student is an ordinary pre-trained checkpoint that finetune takes. "
                                      "Defaults then: --lr 1e-3, 1 pass (--budget alone: planned in time), "
                                      "--hidden-weight 1")
    student_layers: str | None = option(None, help="student = these teacher layers, e.g. 0,2,4 (copies the "
                                        "embeddings, those layers, the pooler and the task head); with --corpus "
                                        "and no student option: every second layer from 0, with --student-ffn "
                                        f"{G.DEFAULT_STUDENT_FFN:g}")
    student_ffn: float | None = option(None, help="--corpus, a student of teacher layers: the fraction of each "
                                       "copied layer's FFN neurons it keeps, the most active on the corpus (default: "
                                       f"{G.DEFAULT_STUDENT_FFN:g} for the default student, half the layers at under a "
                                       "third of the compute; 1 with --student-layers)", gt=0, le=1)
    student_size: str | None = option(None, help="fresh student of this preset size", choices=list(BERT_PRESETS))
    student_config: str | None = option(None, help="fresh student from a JSON file of model config fields "
                                        "(hidden_size, num_layers, num_heads, intermediate_size, ...)")
    student_model: str | None = option(None, help="pre-trained student directory (plmkit or HF) sharing the "
                                       "teacher's tokenizer, e.g. a smaller model of the same family")
    temperature: float = option(2.0, help="softmax temperature of the soft targets")
    alpha: float | None = option(None, help="weight of the hard-label loss; 1 - alpha weighs the teacher's soft "
                                 "targets (default: the task's measured one: 0.5, embed 0)", ge=0, le=1)
    hidden_weight: float | None = option(None, help="weight of the hidden-state MSE of mapped layers (0: off; "
                                         f"default: the task's measured weight, {measured.described()}; 0 with "
                                         "--cache-teacher; 1 with --corpus)", ge=0)
    relation_weight: float = option(1.0, help="--corpus: weight of MiniLM v2's query/key/value self-attention "
                                    "relations of the last student layer and its teacher layer (0: off)", ge=0)
    relation_heads: int | None = option(None, help="--corpus: relation heads (default: the teacher's heads when "
                                        "they divide both widths)", ge=1)
    attention_weight: float = option(0.0, help="weight of the attention-distribution KL of mapped layers (0: off)")
    embedding_weight: float = option(0.0, help="weight of the embedding-output MSE (0: off)")
    layer_map: str | None = option(None, help="student:teacher layer pairs for the hidden/attention losses, "
                                   "e.g. 0:1,1:3,2:5 (default: uniform, the last layer to the last)")
    vector_loss: str | None = option(None, help="embed: how student vectors are pulled to the teacher's: "
                                     "squared distance or cosine distance (weight 1 - alpha; alpha weighs in-batch "
                                     "ranking; default: cosine, measured)", choices=list(D.VECTOR_LOSSES))
    cache_teacher: bool = option(False, help="run the teacher once and reuse its logits every epoch "
                                 "(only without hidden/attention/embedding losses)")
    eval: str | None = option(None, help="evaluation data: teacher and student scores, best checkpoint")
    batch_size: int = option(32, help="examples per batch", ge=1)
    eval_batch_size: int = option(64, help="examples per batch when evaluating", ge=1)
    max_length: int | None = option(None, help="tokens per example (default: the teacher's setting)", ge=8)
    seq_len: int = option(128, help="--corpus: tokens per packed sequence", ge=8)
    val_fraction: float = option(0.01, help="--corpus: share of the text held out to report the distillation "
                                 "loss on", ge=0, lt=1)
    eval_batches: int = option(20, help="--corpus: validation batches per evaluation (0: none)", ge=0)
    cache_dir: str = option(".plmkit_cache", help="--corpus: token shard cache directory")
    overwrite: bool = option(False, help="replace an existing --out")


# Training options (plmkit/train/args.py) with another default for distillation. FSDP and
# layer-wise lr decay are left out (the student is saved alone; it has no layer map here).
# Given none of --max-steps, --epochs, --budget: 3 epochs of --train, 1 pass over --corpus
# (--budget alone plans the schedule in time, as for pretrain).
# The peak lr likewise: the task's for --train (1e-4; ner 4e-4, embed 5e-4), 1e-3 for --corpus (the best of
# 1e-4, 3e-4 and 1e-3 by the held-out distillation loss after 150 s from all-MiniLM-L6-v2,
# benchmarks/RESULTS.md).
TRAIN_DEFAULTS = {"lr": None, "warmup_ratio": 0.1, "keep_last": 1}
EPOCHS = {"task": 3.0, "corpus": 1.0}
CORPUS_LR = 1e-3                          # --train: the task's measured lr (compress/measured.py)
Config = compose("Config", __name__, _Options, TrainArgs, defaults=TRAIN_DEFAULTS,
                 omit=("fsdp", "layerwise_lr_decay"))


def check_inputs(cfg: Config, pending: Callable[[str], bool]) -> None:
    """``plmkit run`` calls this before any stage: the options (the data needs the model's settings)."""
    cfg = resolved(cfg)
    if cfg.corpus:
        _check_general(cfg)
    else:
        _check_request(cfg)


def resolved(cfg: Config) -> Config:
    """``cfg`` with the defaults that depend on the mode (task or --corpus) filled in, as distill.yaml
    records them: the length (3 epochs of --train, 1 pass over --corpus, unless --max-steps, --epochs
    or --budget says), the lr, and the hidden-state weight (the task's measured one, compress/measured.py;
    0 with --cache-teacher, which keeps no hidden states; 1 with --corpus)."""
    mode = "corpus" if cfg.corpus else "task"
    epochs = cfg.epochs if cfg.max_steps or cfg.epochs or cfg.budget else EPOCHS[mode]
    task = measured.defaults(cfg.task)
    hidden = cfg.hidden_weight
    if hidden is None:
        hidden = 1.0 if mode == "corpus" else 0.0 if cfg.cache_teacher or cfg.task is None else task.hidden_weight
    return dataclasses.replace(cfg, epochs=epochs, hidden_weight=hidden,
                               lr=cfg.lr or (CORPUS_LR if mode == "corpus" else task.lr),
                               alpha=task.alpha if cfg.alpha is None else cfg.alpha,
                               vector_loss=cfg.vector_loss or task.vector_loss)


def run(cfg: Config) -> int:
    cfg = resolved(cfg)
    if cfg.corpus:
        return _run_general(cfg)
    spec = _check_request(cfg)
    args = pick(TrainArgs, cfg)
    out = check_out_dir(Path(cfg.out), cfg.overwrite)
    work = run_dir(out, "distill", cfg.resume, cfg.overwrite)

    # 1. Teacher, data and student: all bad input stops here, before anything is written.
    teacher, task, prep, tok = load_finetuned(cfg.teacher, cfg.task)
    if teacher.task not in D.DISTILLABLE_HEADS:
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

    # 2. The teacher's score, then (optionally) its logits once for all epochs.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher.to(device)
    teacher_scores = _score(teacher, task, eval_data)
    cache = (D.TeacherCache.build(teacher, train_feats, tok, work / "cache" / "teacher_logits.f16",
                                  cfg.eval_batch_size, cfg.precision) if cfg.cache_teacher else None)
    module = D.DistillModule(student, None if cache else teacher, spec, cache)

    # 3. The shared loop; evaluation scores the student alone. A stopped run keeps its work
    # directory (checkpoints) for --resume; a finished one removes it.
    source = _batches(train_feats, tok, cfg)
    t0 = time.perf_counter()
    with dropped_unless_resumable(work):
        result = train(module, source, args, work, Hooks(
            eval_fn=(lambda m: task.evaluate(m.student, eval_data)) if eval_data else None,
            metric=selection_metric(task, eval_data.examples) if eval_data else None,
            greater_is_better=task.greater_is_better,
            fingerprint=_fingerprint(cfg, teacher, student),
            save_fn=D.save_student, load_fn=D.load_student,
            flops_per_token=_flops_per_token(student, None if cache else teacher)))
    seconds = time.perf_counter() - t0

    # 4. The best evaluated (or last) student goes to --out.
    if result.best_dir is not None:
        D.load_student(module, result.best_dir)
    metrics = {"steps": result.steps, "stopped": result.stopped_reason, "train_seconds": round(seconds, 2),
               "train_loss": result.losses[-1] if result.losses else None, "best_step": result.best_step}
    if result.resumes:
        metrics["resumes"] = result.resumes
    if eval_data is not None:
        metrics.update(metric=selection_metric(task, eval_data.examples), teacher=teacher_scores,
                       student=_score(student, task, eval_data))
    student.cpu().eval()
    report = _report(cfg, module, teacher, init, cache is not None)
    _write_output(student, tok, out, cfg, metrics, report, work)
    shutil.rmtree(work, ignore_errors=True)
    _print_summary(metrics, result.steps, seconds, out)
    return 0


def _fingerprint(cfg: Config, teacher: PlmModel, student: PlmModel) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one."""
    train_file = Path(cfg.train)
    return {"teacher": str(Path(cfg.teacher).resolve()), "task": cfg.task,
            "student": config_to_dict(student.config), "student_init": [cfg.student_layers, cfg.student_size,
                                                                      cfg.student_config],
            "loss": [cfg.temperature, cfg.alpha, cfg.hidden_weight, cfg.attention_weight, cfg.embedding_weight,
                     cfg.layer_map], "batch_size": cfg.batch_size, "max_length": cfg.max_length,
            "train": [str(train_file.resolve()), train_file.stat().st_size]}


def _check_request(cfg: Config) -> D.DistillSpec:
    """Settings that are wrong whatever the model: fail before reading anything."""
    if cfg.task is None or cfg.train is None:
        raise PlmkitError("say what to distil on: --task T --train FILE (task distillation of a fine-tuned "
                          "teacher) or --corpus FILE... (general distillation on unlabelled text)")
    chosen = [f for f in STUDENT_OPTIONS if getattr(cfg, f) is not None]
    if len(chosen) != 1:
        raise PlmkitError("choose the student with exactly one of --student-layers (e.g. 0,2,4), "
                          "--student-size, --student-config or --student-model"
                          + (f" (got {len(chosen)})" if chosen else ""))
    if cfg.student_ffn not in (None, 1.0):
        raise PlmkitError("--student-ffn prunes a student copied from the teacher's layers for general "
                          "distillation (--corpus); task distillation does not take it (prune the student "
                          "afterwards: plmkit prune)")
    if cfg.student_layers is not None:
        D.parse_layers(cfg.student_layers)
    spec = D.DistillSpec(cfg.temperature, cfg.alpha, cfg.hidden_weight, cfg.attention_weight, cfg.embedding_weight,
                         vector_loss=cfg.vector_loss)
    spec.check()
    logits = D.LOGITS.get(TASKS[cfg.task].head)
    if cfg.cache_teacher and logits is not None and not logits.cacheable:
        raise PlmkitError(f"--cache-teacher would store a vocabulary-sized distribution per token for {cfg.task}; "
                          "drop it (the teacher then runs live)")
    if cfg.cache_teacher and spec.intermediate:
        raise PlmkitError("--cache-teacher stores only the teacher's logits; it cannot serve --hidden-weight, "
                          "--attention-weight or --embedding-weight (drop those, or the cache)")
    if cfg.layer_map and not (cfg.hidden_weight or cfg.attention_weight):
        raise PlmkitError("--layer-map pairs layers for the hidden/attention losses: it needs --hidden-weight "
                          "or --attention-weight > 0")
    check_args(pick(TrainArgs, cfg))
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
    if cfg.student_model is not None:
        return D.student_from_model(teacher, cfg.student_model), f"pre-trained {cfg.student_model}"
    return D.student_from_config(teacher, cfg.student_config), f"fresh config {cfg.student_config}"


def _batches(features: list[dict[str, Any]], tok: Tokenizer, cfg: Config) -> IndexedBatches:
    """Batches as finetune forms them (length buckets or random per task, ``label_norm`` for
    token labels) that also carry their feature indices, which the teacher logit cache is keyed by."""
    return task_batches(features, pad_id(tok), cfg.batch_size, cfg.seed, TASKS[cfg.task].group_by_length,
                        with_index=True)


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
        copy_logs(work, tmp)


def _print_summary(metrics: dict[str, Any], steps: int, seconds: float, out: Path) -> None:
    line = f"trained {steps} steps in {seconds:.1f} s ({metrics['stopped']})"
    name = metrics.get("metric")
    if name is not None:
        line += f"; {name}: teacher {metrics['teacher'][name]:.4g}, student {metrics['student'][name]:.4g}"
    print(line + f"; student in {out}")


# ----------------------------------------------------------------------------- general distillation

def _check_general(cfg: Config) -> G.GeneralSpec:
    """--corpus: the options that belong to task distillation are refused, before anything is read."""
    wrong = [flag for flag, given in (("--task", cfg.task), ("--train", cfg.train), ("--eval", cfg.eval),
                                      ("--cache-teacher", cfg.cache_teacher)) if given]
    if wrong:
        raise PlmkitError(f"--corpus distils on unlabelled text: {', '.join(wrong)} belong to task distillation "
                          "(drop them, or drop --corpus)")
    if cfg.attention_weight or cfg.embedding_weight:
        raise PlmkitError("--corpus learns from hidden states (--hidden-weight) and self-attention relations "
                          "(--relation-weight); --attention-weight and --embedding-weight are task-distillation losses")
    chosen = [f for f in STUDENT_OPTIONS if getattr(cfg, f) is not None]
    if len(chosen) > 1:
        raise PlmkitError(f"choose the student with at most one of --student-layers, --student-size, "
                          f"--student-config or --student-model (got {len(chosen)})")
    if cfg.student_ffn not in (None, 1.0) and chosen and chosen[0] != "student_layers":
        raise PlmkitError(f"--student-ffn prunes a student copied from the teacher's layers (--student-layers, or "
                          f"no student option); --{chosen[0].replace('_', '-')} makes another student")
    if cfg.student_layers is not None:
        D.parse_layers(cfg.student_layers)
    if cfg.student_ffn is None:          # resolved here, so the recorded config says what was done
        cfg.student_ffn = 1.0 if chosen else G.DEFAULT_STUDENT_FFN
    spec = G.GeneralSpec(cfg.hidden_weight, cfg.relation_weight, cfg.relation_heads)
    spec.check()
    check_args(pick(TrainArgs, cfg))
    return spec


def _run_general(cfg: Config) -> int:
    """General distillation: the student learns the teacher's hidden states and self-attention
    relations on --corpus; written as a pre-trained checkpoint with the teacher's tokenizer."""
    spec = _check_general(cfg)
    args = pick(TrainArgs, cfg)
    out = check_out_dir(Path(cfg.out), cfg.overwrite)
    work = run_dir(out, "distill", cfg.resume, cfg.overwrite)
    check_text_files(cfg.corpus)
    teacher = load(cfg.teacher, task="base", needs_torch="distillation")     # its encoder only
    dropped = G.check_teacher(teacher, peek(cfg.teacher).task)
    tok = load_tokenizer(cfg.teacher)
    if cfg.seq_len > teacher.config.max_position:
        raise PlmkitError(f"--seq-len {cfg.seq_len} exceeds the teacher's {teacher.config.max_position} positions")
    torch.manual_seed(cfg.seed)
    student, init, layer_map = _general_student(teacher, tok, cfg)
    spec.layer_map = (D.parse_layer_map(cfg.layer_map, student.config.num_layers, teacher.config.num_layers)
                      if cfg.layer_map else layer_map)
    module = G.GeneralDistillModule(student, teacher, spec)      # checks the options before the shards are built
    shard_dir = build_shards(cfg.corpus, tok, cfg.cache_dir, val_fraction=cfg.val_fraction)
    report_unknown(tok, open_shards(shard_dir, "train"), cfg.corpus)

    def text():
        return make_batch_source("text", open_shards(shard_dir, "train"), tok, seq_len=cfg.seq_len,
                                 batch_size=cfg.batch_size, seed=cfg.seed)
    if cfg.student_ffn < 1.0:       # in place (module.student); its own batches: the training source starts untouched
        init += ", " + G.prune_student_ffn(student, cfg.student_ffn, text())
    share = G.compute_share(student, teacher, cfg.seq_len)
    print(f"student: {init}; {share:.3f} of the teacher's transformer compute per token at {cfg.seq_len} "
          f"tokens ({G.compute_share(student, teacher):.3f} counting weights alone)")
    source = text()
    print(f"distilling {cfg.teacher} ({teacher.num_parameters():,} parameters{'; ' + dropped if dropped else ''}) "
          f"into a student of {student.num_parameters():,} parameters on {len(cfg.corpus)} file(s): "
          f"relations of student layer {module.pair[0]} / teacher layer {module.pair[1]} "
          f"({spec.relation_heads} heads), hidden states {spec.layer_map}")
    t0 = time.perf_counter()
    with dropped_unless_resumable(work):
        result = train(module, source, args, work, Hooks(
            eval_fn=_general_eval(shard_dir, tok, cfg), fingerprint=_general_fingerprint(cfg, teacher, student),
            save_fn=D.save_student, load_fn=D.load_student, flops_per_token=G.flops_per_token(student, teacher)))
    seconds = time.perf_counter() - t0
    metrics = {"steps": result.steps, "stopped": result.stopped_reason, "train_seconds": round(seconds, 2),
               "train_loss": result.losses[-1] if result.losses else None, **result.last_metrics}
    if result.resumes:
        metrics["resumes"] = result.resumes
    student.cpu().eval()
    report = {"student": D.describe_student(student, init), "teacher_parameters": teacher.num_parameters(),
              "general": True, "compute_share": round(share, 4), "hidden_weight": spec.hidden_weight,
              "relation_weight": spec.relation_weight,
              "relation_heads": spec.relation_heads, "relation_layers": list(module.pair),
              "layer_map": {str(k): v for k, v in spec.layer_map.items()}}
    _write_output(student, tok, out, cfg, metrics, report, work)
    shutil.rmtree(work, ignore_errors=True)
    shown = "".join(f", {k} {v:.4g}" for k, v in result.last_metrics.items())
    print(f"trained {result.steps} steps in {seconds:.1f} s ({result.stopped_reason}){shown}; student in {out}")
    return 0


def _general_student(teacher: PlmModel, tok: Tokenizer, cfg: Config) -> tuple[PlmModel, str, dict[int, int]]:
    """The student (a bare encoder), where it came from, and its default layer map."""
    n = teacher.config.num_layers
    if cfg.student_size is not None:
        student, init = D.student_from_preset(teacher, cfg.student_size), f"fresh preset '{cfg.student_size}'"
    elif cfg.student_config is not None:
        student, init = D.student_from_config(teacher, cfg.student_config), f"fresh config {cfg.student_config}"
    elif cfg.student_model is not None:
        _same_tokenizer(cfg.student_model, tok, cfg.teacher)
        student, init = D.student_from_model(teacher, cfg.student_model), f"pre-trained {cfg.student_model}"
    else:
        layers = D.parse_layers(cfg.student_layers) if cfg.student_layers else G.default_student_layers(n)
        return D.student_from_layers(teacher, layers), f"teacher layers {layers}", G.layer_map_for(layers, n)
    return student, init, D.uniform_layer_map(student.config.num_layers, n)


def _same_tokenizer(student_dir: str, tok: Tokenizer, teacher_dir: str) -> None:
    """The student reads the teacher's token ids: their vocabularies must be the same."""
    theirs = load_tokenizer(student_dir)
    if theirs.get_vocab(with_added_tokens=True) != tok.get_vocab(with_added_tokens=True):
        raise PlmkitError(f"--student-model {student_dir} and --teacher {teacher_dir} have different tokenizers "
                          f"({theirs.get_vocab_size()} vs {tok.get_vocab_size()} tokens): general distillation "
                          "compares them token by token, so they must share one")


def _general_eval(shard_dir: Path, tok: Tokenizer, cfg: Config):
    """Mean distillation losses on the held-out text (None: nothing held out)."""
    val = open_shards(shard_dir, "val")
    if val.n_docs == 0 or cfg.eval_batches == 0:
        return None
    try:
        batches = make_batch_source("text", val, tok, seq_len=cfg.seq_len, batch_size=min(cfg.batch_size, 16),
                                    seed=cfg.seed, shuffle=False, loop=False)
    except PlmkitError as e:
        print(f"note: no validation ({e})")
        return None
    return lambda module: G.evaluate(module, batches, cfg.eval_batches)


def _general_fingerprint(cfg: Config, teacher: PlmModel, student: PlmModel) -> dict[str, Any]:
    return {"teacher": str(Path(cfg.teacher).resolve()), "student": config_to_dict(student.config),
            "student_init": [cfg.student_layers, cfg.student_size, cfg.student_config, cfg.student_model,
                             cfg.student_ffn],
            "loss": [cfg.hidden_weight, cfg.relation_weight, cfg.relation_heads, cfg.layer_map],
            "corpus": [[str(Path(p).resolve()), Path(p).stat().st_size] for p in cfg.corpus],
            "seq_len": cfg.seq_len, "batch_size": cfg.batch_size}
