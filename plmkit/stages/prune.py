"""Prune a fine-tuned model: remove heads / FFN neurons (structured) or zero weights (unstructured).

Reads top to bottom: check the request -> model, tokenizer and task data (all bad input fails
here, before anything is written) -> metric before -> structured: importance on the task data,
the lowest-ranked heads and neurons cut out of the weight matrices -> unstructured: magnitude
masks (at once, or on a cubic schedule during recovery) -> a short recovery fine-tune with the
shared training loop -> masks folded into the weights -> metric after -> the checkpoint,
written atomically, with the pruning report in plmkit.json.

With ``--distill`` the recovery distils: the unpruned model (or ``--teacher``) is kept frozen,
and the pruned one learns from its soft targets and, with ``--hidden-weight`` > 0, its hidden
states (one MSE per layer: pruning removes heads and neurons, never the hidden width, so the
layers line up) as well as from the labels. The hidden-state weight defaults to the task's
measured one (compress/measured.py: SST-2 1.0; CoNLL-2003 0, where that loss cost 0.43 F1 in
the recovery). Not the default: on CoNLL-2003 (MiniLM NER teacher, 50% heads and FFN removed,
150 recovery steps) distilling with hidden states recovered F1 0.836 against 0.838 from the
labels alone (README, Pruning); ``plmkit compress`` distils from the fine-tuned teacher.
Token tasks train on the task's batches with every labelled token weighted alike
(``label_norm``), as ``finetune``.

The recovery run's working files live in a hidden sibling ``.OUT.prune`` that is removed at
the end.
"""
from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tokenizers import Tokenizer

from ..compress import distill as D
from ..compress import measured
from ..compress import prune as P
from ..config import compose, option, pick, to_dict
from ..errors import PlmkitError
from ..io import check_out_dir
from ..loading import load
from ..models.checkpoint import save_checkpoint
from ..models.model import PlmModel
from ..tasks import TASKS, Infer, TaskData, TaskSpec, load_finetuned
from ..tokenizer import load_tokenizer, pad_id
from ..train import Hooks, IndexedBatches, TrainArgs, check_args, run_dir, task_batches, train
from ..train.loop import total_steps


@dataclass
class _Options:
    model: str = option(help="fine-tuned checkpoint to prune")
    out: str = option(help="output checkpoint directory")
    task: str | None = option(None, help="task, for checkpoints that do not record it", choices=list(TASKS))
    train: str | None = option(None, help="task training data: importance scores and the recovery fine-tune")
    eval: str | None = option(None, help="labelled data: metric before pruning, after it, and after recovery")
    heads: float = option(0.0, help="fraction of attention heads to remove")
    ffn: float = option(0.0, help="fraction of FFN neurons to remove")
    remove_heads: list[int] | None = option(None, help="heads to remove in each layer (one count per layer)")
    remove_ffn: list[int] | None = option(None, help="FFN neurons to remove in each layer (one count per layer)")
    per_layer: bool = option(False, help="remove the fraction in every layer, instead of ranking across layers")
    min_heads: int = option(1, help="heads every layer keeps (0 allowed: the attention then adds only its bias)")
    min_ffn: int = option(1, help="FFN neurons every layer keeps")
    importance: str = option("gradient", help="how heads/neurons are ranked: gradient (Michel et al. 2019, "
                             "Taylor for neurons; needs --train) or weight magnitude",
                             choices=["gradient", "magnitude"])
    importance_batches: int = option(100, help="batches of --train used for gradient importance (0: all)")
    sparsity: float = option(0.0, help="unstructured: fraction of the transformer layers' Linear weights to zero")
    method: str = option("magnitude", help="unstructured criterion", choices=["magnitude"])
    scope: str = option("global", help="unstructured: one ranking over all matrices, or each matrix alike",
                        choices=["global", "layer"])
    gradual_steps: int = option(0, help="unstructured: reach --sparsity in N steps of Zhu & Gupta's cubic "
                                "schedule during recovery (0: at once)")
    include_head: bool = option(False, help="unstructured: also prune the pooler and task head")
    recover: bool = option(True, help="fine-tune on --train after pruning to recover accuracy (its length: "
                           "--epochs, --max-steps; --no-recover: prune only)")
    distill: bool = option(False, help="recovery learns from a teacher's soft targets and hidden states as well "
                           "as the labels (knowledge distillation; default: labels only)")
    teacher: str | None = option(None, help="the recovery's teacher: a fine-tuned checkpoint of the same task and "
                                 "tokenizer (default: the model itself before pruning)")
    temperature: float = option(2.0, help="recovery distillation: softmax temperature of the soft targets", gt=0)
    alpha: float = option(0.5, help="recovery distillation: weight of the hard-label loss (1 - alpha: soft targets)",
                          ge=0, le=1)
    hidden_weight: float | None = option(None, help="recovery distillation: weight of the hidden-state MSE between "
                                         "each layer and the teacher's (uniform layer map; 0: logits only; default: "
                                         f"the task's measured weight, {measured.described()})", ge=0)
    batch_size: int = option(32, help="examples per batch", ge=1)
    eval_batch_size: int = option(64, help="examples per batch when evaluating", ge=1)
    overwrite: bool = option(False, help="replace an existing --out")


# Training options (plmkit/train/args.py) of the recovery fine-tune, with its own defaults: a
# short run, one pass, a fine-tuning lr. It runs without evaluation and is not resumable (it
# is short, and pruning comes first), so those options are left out, as are FSDP and
# layer-wise lr decay.
TRAIN_DEFAULTS = {"epochs": 1.0, "lr": 3e-5, "warmup_ratio": 0.1, "save_every": 0, "keep_last": 1}
Config = compose("Config", __name__, _Options, TrainArgs, defaults=TRAIN_DEFAULTS,
                 omit=("resume", "eval_every", "patience", "tensorboard", "fsdp", "layerwise_lr_decay"))


@dataclass
class _Data:
    task: TaskSpec | None
    tok: Tokenizer
    train: list[dict[str, Any]] | None      # encoded training features
    eval: TaskData | None


def check_inputs(cfg: Config, pending: Callable[[str], bool]) -> None:
    """``plmkit run`` calls this before any stage: the options (the data needs the model's settings)."""
    _check_request(cfg)


def run(cfg: Config) -> int:
    _check_request(cfg)
    out = check_out_dir(Path(cfg.out), cfg.overwrite)
    model, data = _load(cfg)
    if cfg.hidden_weight is None:       # the task's measured weight (compress/measured.py)
        cfg = dataclasses.replace(cfg, hidden_weight=measured.hidden_weight(data.task.name if data.task else None))
    structured = _structured_plan(cfg, model)
    teacher = _teacher(cfg, model, data)            # before pruning: the unpruned model is the default
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    report: dict[str, Any] = {"params_before": model.num_parameters()}
    scores: dict[str, dict[str, float]] = {}
    if data.eval is not None:
        scores["before"] = _score(model, data)

    if structured is not None:
        report["structured"] = _prune_structured(model, cfg, structured, data)
    linears = P.prunable_linears(model, cfg.include_head) if cfg.sparsity else {}
    schedule = _schedule(cfg, data) if linears else []
    if linears:
        P.attach_masks(linears)
        P.update_masks(linears, schedule[0][1], cfg.scope)
    if data.eval is not None:
        scores["pruned"] = _score(model, data)

    recovery = _recover(model, teacher, linears, schedule, cfg, data, out) if _recovers(cfg) else None
    if linears:
        P.update_masks(linears, cfg.sparsity, cfg.scope)    # the exact final sparsity
        P.fold_masks(linears)
        report["unstructured"] = {"method": cfg.method, "scope": cfg.scope, "target": cfg.sparsity,
                                  "schedule": [[s, round(v, 6)] for s, v in schedule],
                                  "include_head": cfg.include_head, **P.sparsity_report(model, linears)}
    if data.eval is not None and recovery is not None:
        scores["recovered"] = _score(model, data)

    model.cpu()
    report.update(params_after=model.num_parameters(), nonzero_params_after=P.nonzero_parameters(model),
                  recovery=recovery)
    if scores:
        report["metric"] = {"name": data.task.metric, **scores}
    meta = {"stage": "prune", "parent": str(Path(cfg.model).resolve()), "config": to_dict(cfg),
            "pruning": report, "metrics": {"eval": scores[list(scores)[-1]]} if scores else {}}
    save_checkpoint(model, out, data.tok, meta, overwrite=cfg.overwrite)
    _print_summary(report, scores, out)
    return 0


def _recovers(cfg: Config) -> bool:
    return cfg.recover


def _teacher(cfg: Config, model: PlmModel, data: _Data) -> PlmModel | None:
    """The recovery's frozen teacher: --teacher, else a copy of the model before pruning."""
    if not (_recovers(cfg) and cfg.distill):
        return None
    if cfg.teacher is None:
        return copy.deepcopy(model).eval()
    teacher = load_finetuned(cfg.teacher, data.task.name, needs_torch="the recovery's teacher")[0]
    if teacher.head_config.get("labels") != model.head_config.get("labels"):
        raise PlmkitError(f"--teacher {cfg.teacher}: its labels {teacher.head_config.get('labels')} differ from "
                          f"the model's {model.head_config.get('labels')}")
    if cfg.hidden_weight and teacher.config.hidden_size != model.config.hidden_size:
        raise PlmkitError(f"--teacher {cfg.teacher}: hidden size {teacher.config.hidden_size} differs from the "
                          f"model's {model.config.hidden_size}; use --hidden-weight 0 (logits only)")
    return teacher


def _check_request(cfg: Config) -> None:
    """Settings that are wrong whatever the model: fail before reading anything."""
    structured = bool(cfg.heads or cfg.ffn or cfg.remove_heads or cfg.remove_ffn)
    if not structured and not cfg.sparsity:
        raise PlmkitError("nothing to prune: give --heads/--ffn (fractions), --remove-heads/--remove-ffn "
                          "(counts per layer) or --sparsity")
    if (cfg.heads and cfg.remove_heads) or (cfg.ffn and cfg.remove_ffn):
        raise PlmkitError("give a fraction (--heads/--ffn) or per-layer counts (--remove-heads/--remove-ffn), "
                          "not both")
    if not 0.0 <= cfg.sparsity < 1.0:
        raise PlmkitError(f"--sparsity is the fraction of weights to zero and must be in [0, 1), got {cfg.sparsity}")
    if cfg.gradual_steps < 0 or cfg.importance_batches < 0:
        raise PlmkitError("--gradual-steps and --importance-batches must be >= 0")
    if cfg.gradual_steps and not (cfg.sparsity and _recovers(cfg)):
        raise PlmkitError("--gradual-steps prunes during the recovery fine-tune: it needs --sparsity and "
                          "the recovery (not --no-recover)")
    if cfg.train is None and structured and cfg.importance == "gradient":
        raise PlmkitError("--heads/--ffn rank heads and neurons by their gradient on task data: give --train FILE "
                          "(or --importance magnitude)")
    if cfg.train is None and _recovers(cfg):
        raise PlmkitError("the recovery fine-tune needs task data: give --train FILE (or --no-recover)")
    if cfg.teacher is not None and not (_recovers(cfg) and cfg.distill):
        raise PlmkitError("--teacher is the recovery's teacher: it needs the recovery and --distill")
    if _recovers(cfg):
        check_args(pick(TrainArgs, cfg))


def _load(cfg: Config) -> tuple[PlmModel, _Data]:
    """The model, its tokenizer and the encoded task data (labels checked against the model's)."""
    if cfg.train is None and cfg.eval is None and cfg.task is None:   # data-free magnitude pruning
        model = load(cfg.model, needs_torch="pruning")
        P.check_prunable(model, structured=False)
        return model, _Data(None, load_tokenizer(cfg.model), None, None)
    model, task, prep, tok = load_finetuned(cfg.model, cfg.task, needs_torch="pruning")
    P.check_prunable(model, structured=False)
    labels = model.head_config.get("labels")
    train_feats = None
    if cfg.train is not None:
        train_feats = task.encode(tok, task.read(cfg.train, prep, labels=labels), model.head_config, prep)
        if not train_feats:
            raise PlmkitError(f"{cfg.train}: no training examples")
    eval_data = None
    if cfg.eval is not None:
        examples = task.read(cfg.eval, prep, labels=labels)
        eval_data = TaskData(examples, task.encode(tok, examples, model.head_config, prep), tok,
                             model.head_config, Infer(cfg.eval_batch_size, cfg.precision))
    return model, _Data(task, tok, train_feats, eval_data)


def _structured_plan(cfg: Config, model: PlmModel) -> dict[str, P.Removal] | None:
    """Validated removal counts for heads and neurons (None: no structured pruning asked)."""
    if not (cfg.heads or cfg.ffn or cfg.remove_heads or cfg.remove_ffn):
        return None
    P.check_prunable(model, structured=True)
    c = model.config
    # heads are removed in key/value groups (one head per group without grouped-query attention)
    plan = {"heads": P.plan_removal(P.head_units(model), "heads", cfg.heads, P.heads_to_units(model, cfg.remove_heads),
                                    cfg.per_layer, cfg.min_heads),
            "ffn": P.plan_removal(list(c.ffn), "ffn", cfg.ffn, cfg.remove_ffn, cfg.per_layer, cfg.min_ffn)}
    for what, removal in plan.items():
        if removal.count() < removal.asked:
            print(f"note: {removal.asked} {what} asked, {removal.count()} removed so that every layer keeps "
                  f"--min-{what} {getattr(cfg, 'min_' + what)}")
    return plan


def _prune_structured(model: PlmModel, cfg: Config, plan: dict[str, P.Removal], data: _Data) -> dict[str, Any]:
    """Score, select and physically remove heads and FFN neurons; returns the report part."""
    heads_before, ffn_before = list(model.config.heads), list(model.config.ffn)
    groups = [P.group_size(b) for b in P.blocks(model)]
    if cfg.importance == "gradient":
        imp = P.head_importance_gradient(model, _batches(data, cfg), cfg.importance_batches)
    else:
        imp = P.magnitude_importance(model)
    keep_heads = P.select_keep(imp.heads, plan["heads"], cfg.min_heads)
    keep_ffn = P.select_keep(imp.ffn, plan["ffn"], cfg.min_ffn)
    P.prune_heads(model, keep_heads)
    P.prune_ffn(model, keep_ffn)
    removed = [sorted(set(range(n)) - {u * G + j for u in k.tolist() for j in range(G)})
               for n, k, G in zip(heads_before, keep_heads, groups)]
    return {"importance": cfg.importance, "per_layer": cfg.per_layer,
            "heads_before": heads_before, "heads_kept": list(model.config.heads), "heads_removed": removed,
            "ffn_before": ffn_before, "ffn_kept": list(model.config.ffn),
            "head_importance": [[round(float(v), 6) for v in s] for s in imp.heads]}


def _batches(data: _Data, cfg: Config) -> IndexedBatches:
    """Task batches as plmkit finetune forms them: length buckets or random per task, ``label_norm``
    for per-token labels."""
    return task_batches(data.train, pad_id(data.tok), cfg.batch_size, cfg.seed, data.task.group_by_length)


def _schedule(cfg: Config, data: _Data) -> list[tuple[int, float]]:
    """(optimizer step, sparsity) pruning events: one at step 0, or the cubic schedule."""
    if not cfg.gradual_steps:
        return [(0, cfg.sparsity)]
    steps, _ = total_steps(pick(TrainArgs, cfg), _batches(data, cfg))
    return P.cubic_schedule(cfg.sparsity, cfg.gradual_steps, steps or 1)


def _recover(model: PlmModel, teacher: PlmModel | None, linears: dict[str, torch.nn.Linear],
             schedule: list[tuple[int, float]], cfg: Config, data: _Data, out: Path) -> dict[str, Any]:
    """Fine-tune the pruned model on --train with the shared loop, learning from ``teacher`` too
    when there is one; masks stay applied throughout."""
    work = run_dir(out, "prune", resume=False, overwrite=True)     # scratch: never resumed
    spec = D.DistillSpec(cfg.temperature, cfg.alpha, cfg.hidden_weight)
    learner = D.DistillModule(model, teacher.to(next(model.parameters()).device), spec) if teacher else model
    trained = P.GradualPruning(learner, linears, schedule, cfg.scope) if cfg.gradual_steps else learner
    print(f"recovery fine-tune on {len(data.train)} features"
          + (f", distilling from {cfg.teacher or 'the unpruned model'}" if teacher else ""))
    hooks = Hooks(resumable=False)
    if teacher:     # never save the frozen teacher
        hooks.save_fn = lambda m, d: D.save_student(learner, d)
        hooks.load_fn = lambda m, d: D.load_student(learner, d)
    try:
        result = train(trained, _batches(data, cfg), pick(TrainArgs, cfg), work, hooks)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model.eval()
    return {"steps": result.steps, "stopped": result.stopped_reason,
            "train_loss": result.losses[-1] if result.losses else None,
            "distillation": {"teacher": cfg.teacher or "unpruned model", "temperature": cfg.temperature,
                             "alpha": cfg.alpha, "hidden_weight": cfg.hidden_weight} if teacher else None}


def _score(model: PlmModel, data: _Data) -> dict[str, float]:
    model.eval()
    return {k: float(v) for k, v in data.task.evaluate(model, data.eval).items()}


def _print_summary(report: dict[str, Any], scores: dict[str, dict[str, float]], out: Path) -> None:
    parts = [f"parameters {report['params_before']:,} -> {report['params_after']:,}"]
    if "structured" in report:
        s = report["structured"]
        parts.append(f"heads {s['heads_before']} -> {s['heads_kept']}, ffn {s['ffn_before']} -> {s['ffn_kept']}")
    if "unstructured" in report:
        parts.append(f"sparsity {report['unstructured']['overall']:.1%} of the pruned matrices")
    if scores:
        name = report["metric"]["name"]
        parts.append(", ".join(f"{k} {name} {v.get(name, float('nan')):.4g}" for k, v in scores.items()))
    print("; ".join(parts) + f"; model in {out}")
