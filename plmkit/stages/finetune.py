"""Fine-tune a pre-trained model on a task: classify, ner, qa, generate or embed.

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

import argparse
import json
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from tokenizers import Tokenizer

from ..adapters import AdapterSettings, apply_strategy, strategy_meta
from ..adapters.checkpoint import write_adapter_files
from ..adapters.strategies import EMBEDDINGS, StrategyInfo, default_lr, lr_help
from ..config import compose, dump_yaml, option, pick, to_dict
from ..data.features import LONG_TEXT, collate, feature_lengths, label_norm, length_bucketed_batches
from ..errors import PlmkitError, a_or_an
from ..io import atomic_dir, atomic_write_text, check_out_dir
from ..loading import Saved, load, model_config, peek
from ..models.checkpoint import read_model_config, replace_head, write_checkpoint_files
from ..models.config import POOLINGS
from ..models.heads import CLASSIFY_POOLINGS, HEAD_CAUSAL, default_pooling
from ..models.model import PlmModel
from ..models.st import st_settings
from ..tasks import TASKS, Infer, Prep, TaskData, TaskSpec, evaluate_detailed, selection_metric
from ..tasks.embed import RANKING_DEFAULTS, EmbedSettings
from ..tasks.ner import check_tag_scheme
from ..tokenizer import load_tokenizer, pad_id
from ..train import (Hooks, IndexedBatches, TrainArgs, check_args, dropped_unless_resumable, load_trainable,
                     run_dir, save_trainable, train)
from ..train.defaults import EPOCHS, LENGTHS, MIN_STEPS, RULE, DataFit, fit_to_data, length_from_data
from ..train.logging import METRICS_FILE, copy_logs

RUN_FILE = "finetune.yaml"
# head_config entries a parent's head must share to be trained on rather than replaced
SAME_HEAD = ("labels", "num_labels", "normalize", "scale", "learnable_scale", "matryoshka_dims")


MAX_LENGTH = 128
EMBED_RULE = RANKING_DEFAULTS.describe("--task embed on pairs or triplets") + "; on scored pairs, the rule."


@dataclass
class _Options:
    model: str = option(help="pre-trained model: plmkit checkpoint or local HF BERT/GPT-2 directory")
    task: str = option(help="what to fine-tune for", choices=list(TASKS))
    train: str = option(help="training data file")
    out: str = option(help="output checkpoint directory")
    eval: str | None = option(None, help="evaluation data file (selects the best checkpoint)")
    eval_fraction: float = option(0.0, help="without --eval: hold out this fraction of --train for evaluation "
                                  "(0: none)", ge=0, lt=1)
    strategy: str = option("full", help="what trains: full, probe, freeze:N, adapter, lora, bitfit")
    pooling: str = option("auto", help="classify with an encoder: what the head reads: the pooler, the [CLS] "
                          "state (cls) or the mean of the token states (mean); auto: a Hugging Face model's own "
                          "(BERT: pooler, exportable back to transformers), mean for plmkit's pre-trained models; "
                          "embed: mean or cls, auto: a sentence-transformers model's own, else mean",
                          choices=["auto", *CLASSIFY_POOLINGS])
    lr: float | None = option(None, help=f"peak learning rate (default: the strategy's own, measured: {lr_help()})",
                              gt=0, group="training options")
    batch_size: int | None = option(None, help="examples per batch (default: 32, smaller for small data: see "
                                    "--epochs)", ge=1)
    eval_batch_size: int = option(64, help="examples per batch when evaluating", ge=1)
    group_by_length: bool | None = option(None, help="train on batches of examples of similar length (less "
                                          "padding, faster); off: random batches, as transformers' Trainer "
                                          "by default (default: on, except for ner and for data small enough "
                                          "that --epochs grows or the batch shrinks, where it costs accuracy)")
    max_length: int | None = option(None, help=f"tokens per example (default {MAX_LENGTH}; classify: the "
                                    "smallest of 128, 256, 512 that holds 95%% of the training examples whole; "
                                    "--task embed on a sentence-transformers model: its own max_seq_length; see "
                                    "--long-text for longer texts)", ge=8)
    long_text: str = option("truncate", help="classify: a text longer than --max-length keeps its start "
                            "(truncate), its first quarter and last three quarters of tokens (head-tail), or is "
                            "split into overlapping windows whose predictions are averaged (windows)",
                            choices=list(LONG_TEXT))
    doc_stride: int | None = option(None, help="qa, classify windows: overlap of windows in tokens "
                                    "(default: max_length // 4, at most 128)")
    max_new_tokens: int = option(32, help="generate: completion length when evaluating")
    text_column: str | None = option(None, help="classify: text column (default: sentence, text, ...)")
    text_pair_column: str | None = option(None, help="classify: second-text column for sentence pairs")
    label_column: str | None = option(None, help="classify: label column (default: label, ...)")
    header: bool | None = option(None, help="classify: the table has a header row (default: detect)")
    label_scheme: str = option("iob", help="ner: iob: the training tags must be an entity tag set (IOB, IOB2, "
                               "BIOES: O, B-TYPE, I-TYPE, ...), else refused (a POS column read as the tag); "
                               "none: train on any tags as they are", choices=["iob", "none"])
    overwrite: bool = option(False, help="replace an existing --out")


# Training options (plmkit/train/args.py) with another default for fine-tuning.
# epochs None: 3, or more for small data (train/defaults.py: fit_to_data, resolved in run()).
TRAIN_DEFAULTS = {"epochs": None, "warmup_ratio": None, "keep_last": 1}
# The stage config: the options above, the adapter knobs (lora_r, adapter_size, ...) and the
# training options, taken from AdapterSettings and TrainArgs so they can never disagree.
# FSDP is left out: fine-tuning checkpoints hold only what trains (save_trainable); the lr is
# declared above because its default depends on the strategy.
Config = compose("Config", __name__, _Options, AdapterSettings, EmbedSettings, TrainArgs, defaults=TRAIN_DEFAULTS,
                 omit=("fsdp", "lr"))


def check_inputs(cfg: Config, pending: Callable[[str], bool]) -> None:
    """``plmkit run`` calls this before any stage: the options and the data files parse
    (those an earlier stage writes are read when the stage runs)."""
    task, prep = TASKS[cfg.task], _prep(cfg)
    if pending(cfg.train):
        return
    if cfg.eval and pending(cfg.eval):
        task.read(cfg.train, prep)
    else:
        _read_data(task, prep, cfg)


def run(cfg: Config) -> int:
    task = TASKS[cfg.task]
    check_args(replace(pick(TrainArgs, cfg), epochs=cfg.epochs or EPOCHS))   # before anything is written
    out = check_out_dir(Path(cfg.out), cfg.overwrite)
    prep = _prep(cfg)

    # 1. Data: read, label map, features. Bad input stops here, before anything is written.
    _check_backbone(peek(cfg.model), task)   # --model names a model directory that can carry the task
    train_ex, eval_ex = _read_data(task, prep, cfg)
    tok = load_tokenizer(cfg.model)
    head_config = {**task.head_config(train_ex, prep), **_embed_head(cfg), "finetune_task": task.name}
    # resolved here, so finetune.yaml and plmkit.json record them
    prep = fit_length(cfg, task, prep, tok, train_ex, head_config)
    fit_defaults(cfg, task, train_ex)
    args = pick(TrainArgs, cfg)
    work = run_dir(out, "train", cfg.resume, cfg.overwrite)
    head_config["preprocess"] = to_dict(prep)
    train_feats = task.encode(tok, train_ex, head_config, prep)
    n_train = len(train_ex)
    del train_ex              # the features hold what training needs (1M examples: ~200 MB of text)
    infer = Infer(cfg.eval_batch_size, cfg.precision, cfg.max_new_tokens)
    eval_data = (TaskData(eval_ex, task.encode(tok, eval_ex, head_config, prep), tok, head_config, infer)
                 if eval_ex else None)
    if cfg.patience and eval_data is None:
        raise PlmkitError("--patience needs evaluation data (--eval FILE or --eval-fraction F)")
    metric = selection_metric(task, eval_ex) if eval_ex else None

    # 2. Model with a fresh task head, and the strategy that decides what trains.
    model = _load_model(cfg, task, head_config, prep)
    settings = pick(AdapterSettings, cfg)
    info = apply_strategy(model, cfg.strategy, settings)
    print(f"fine-tuning {cfg.model} for {task.name} ({n_train} train / {len(eval_ex or [])} eval examples, "
          f"{len(train_feats)} train features), strategy {info.spec}: {info.summary()}")

    # 3. Length-bucketed batches: similar lengths share a batch, padded only to their longest.
    source = _batches(train_feats, tok, cfg)
    t0 = time.perf_counter()
    with dropped_unless_resumable(work):
        result = train(model, source, args, work, Hooks(
            eval_fn=(lambda m: task.evaluate(m, eval_data)) if eval_data else None,
            metric=metric, greater_is_better=task.greater_is_better,
            fingerprint=_fingerprint(cfg, head_config, info),
            save_fn=save_trainable, load_fn=load_trainable, layer_of=_depth(model)))
    seconds = time.perf_counter() - t0

    # 4. The best evaluated weights (or the last, without evaluation) go to --out.
    if result.best_dir is not None:
        load_trainable(model, result.best_dir)
    metrics = _final_metrics(result, work, metric, seconds)
    if eval_data is not None:   # confusion matrix / per-entity scores of the kept weights, for reports
        model.eval()
        details = {k: v for k, v in evaluate_detailed(task, model, eval_data).items()
                   if not isinstance(v, (int, float))}
        if details:
            metrics["eval_details"] = details
    _write_output(model, info, tok, out, cfg, metrics, work)
    shutil.rmtree(work, ignore_errors=True)
    scores = ", ".join(f"{k} {v:.4g}" for k, v in metrics.get("eval", {}).items())
    print(f"trained {result.steps} steps in {seconds:.1f} s ({result.stopped_reason})"
          + (f"; best at step {metrics['best_step']}: {scores}" if scores else "") + f"; model in {out}")
    return 0


def _fit(task: TaskSpec, train_ex: list[Any], strategy: str, batch_size: int | None, epochs: float | None,
         lr: float | None) -> tuple[DataFit, str | None]:
    """The batch size, passes and lr for these training examples (the task's own defaults for such
    data, else the data-size rule; what is given is kept), and the task's defaults in words (None:
    the rule)."""
    own = task.train_defaults(train_ex)
    fit = fit_to_data(len(train_ex), default_lr(strategy), batch_size=batch_size, epochs=epochs, lr=lr, task=own)
    return fit, own.describe(f"--task {task.name} on this data") if own is not None else None


def fit_length(cfg: Config, task: TaskSpec, prep: Prep, tok: Tokenizer, train_ex: list[Any],
               head_config: dict[str, Any]) -> Prep:
    """An unset --max-length the task takes from the data: the smallest of 128 / 256 / 512 tokens that
    holds 95% of the training examples whole, within the model's positions (train/defaults.py)."""
    if cfg.max_length is not None:
        return prep
    cfg.max_length, lengths = _data_length(cfg.model, task, prep, tok, train_ex, head_config)
    if cfg.max_length != MAX_LENGTH:
        share = {n: sum(k <= n for k in lengths) / max(len(lengths), 1) for n in (cfg.max_length, MAX_LENGTH)}
        print(f"max length {cfg.max_length} tokens, from the data: {share[cfg.max_length]:.0%} of the "
              f"{len(lengths):,} training examples fit whole ({share[MAX_LENGTH]:.0%} at {MAX_LENGTH}; set "
              "--max-length to choose)")
    return _prep(cfg)


def _data_length(model: str, task: TaskSpec, prep: Prep, tok: Tokenizer, train_ex: list[Any],
                 head_config: dict[str, Any]) -> tuple[int, list[int]]:
    """(the max length from the data, the examples' token lengths up to the longest it may choose)."""
    positions = model_config(peek(model)).max_position
    probe = replace(prep, max_length=min(LENGTHS[-1], positions), long_text="truncate")
    lengths = [len(f["input_ids"]) for f in task.encode(tok, train_ex, head_config, probe)]
    return length_from_data(lengths, positions), lengths


def fit_defaults(cfg: Config, task: TaskSpec, train_ex: list[Any]) -> None:
    """Fill the unset batch size, passes and learning rate for the training examples, and the batches:
    random instead of length buckets where the data is small enough for the rule to change them."""
    fit, own = _fit(task, train_ex, cfg.strategy, cfg.batch_size, cfg.epochs, cfg.lr)
    examples = len(train_ex)
    unset = cfg.batch_size is None or cfg.epochs is None or cfg.lr is None
    if own is not None and unset:
        print(f"{own}: batch {fit.batch_size}, {fit.epochs:g} epochs, lr {fit.lr:.3g} ({fit.steps} steps; set "
              "--batch-size, --epochs or --lr to choose)")
    elif fit.fitted:
        shuffled = ", random batches" if cfg.group_by_length is None and task.group_by_length else ""
        warm = ", no warmup" if cfg.warmup_ratio is None and not cfg.warmup_steps else ""
        print(f"{examples:,} examples: batch and passes chosen to make about {MIN_STEPS} optimizer steps: batch "
              f"{fit.batch_size}, {fit.epochs:g} epochs, lr {fit.lr:.3g}{shuffled}{warm} ({fit.steps} steps; set "
              "--batch-size, --epochs, --lr, --warmup-ratio or --group-by-length to choose)")
    cfg.batch_size, cfg.epochs, cfg.lr = fit.batch_size, fit.epochs, fit.lr
    if cfg.warmup_ratio is None:
        cfg.warmup_ratio = fit.warmup_ratio
    if cfg.group_by_length is None:
        cfg.group_by_length = fit.length_buckets(task.group_by_length)


def help_for(argv: list[str]) -> str:
    """The end of ``finetune --help``: the rule, and with ``--train FILE`` what it picks for that data."""
    pre = argparse.ArgumentParser(add_help=False)
    for flag in ("--train", "--task", "--strategy", "--batch-size", "--epochs", "--lr", "--model"):
        pre.add_argument(flag)
    ns, _ = pre.parse_known_args(argv)
    if not ns.train:
        return f"{RULE} {EMBED_RULE} Add --train FILE (and --model DIR) to --help to see the values for your data."
    try:
        task = TASKS[ns.task or "classify"]
        train_ex = task.read(ns.train, Prep())
        fit, own = _fit(task, train_ex, ns.strategy or "full", int(ns.batch_size) if ns.batch_size else None,
                        float(ns.epochs) if ns.epochs else None, float(ns.lr) if ns.lr else None)
        length = _help_length(task, ns.model, train_ex)
    except (PlmkitError, OSError, KeyError, ValueError) as e:
        return f"{RULE} (--train {ns.train}: {e})"
    rule = f"{own}." if own else RULE
    batches = "length-bucketed batches" if fit.length_buckets(task.group_by_length) else "random batches"
    return (f"{rule} For {ns.train} ({fit.examples:,} examples, {ns.task or 'classify'}, "
            f"strategy {ns.strategy or 'full'}): batch {fit.batch_size}, {fit.epochs:g} epochs, lr {fit.lr:.3g}, "
            f"{fit.steps} optimizer steps, {batches}, warmup {fit.warmup_ratio:.0%}{length}.")


def _help_length(task: TaskSpec, model: str | None, train_ex: list[Any]) -> str:
    """', max length N' for ``finetune --help`` where the task takes it from the data and --model names
    the tokenizer ('' otherwise)."""
    if task.max_length_from != "data" or not model:
        return ""
    prep = Prep()
    length = _data_length(model, task, prep, load_tokenizer(model), train_ex, task.head_config(train_ex, prep))[0]
    return f", max length {length} (from the data)"


def _check_backbone(saved: Saved, task: TaskSpec) -> None:
    """A task the model cannot do (generate on an encoder, ner on a decoder) is said now, in the
    flag's words, before the data is read and the weights loaded."""
    if saved.format not in ("plmkit", "huggingface"):
        return                  # adapters and exports: the loader says what to use instead
    need, backbone = HEAD_CAUSAL[task.head], model_config(saved)
    if need is not None and need != backbone.causal:
        want = "a decoder (causal LM: GPT-2, Llama, ...)" if need else "an encoder (BERT-style)"
        raise PlmkitError(f"{saved.path}: --task {task.name} needs {want}; this model is "
                          f"{a_or_an(backbone.family)}")


def _prep(cfg: Config) -> Prep:
    """The preprocessing settings; a max length the task takes from the data is MAX_LENGTH until
    ``fit_length`` has read it (cfg.max_length stays None until then)."""
    how = TASKS[cfg.task].max_length_from
    if cfg.max_length is None and how != "data":    # resolved once, so finetune.yaml records it
        own = (st_settings(cfg.model) or {}).get("max_seq_length") if how == "model" else None
        cfg.max_length = own or MAX_LENGTH
    length = cfg.max_length or MAX_LENGTH
    if cfg.pooling != "auto" and cfg.task not in ("classify", "embed"):
        raise PlmkitError(f"--pooling is for classification and embeddings (the {cfg.task} head reads every token)")
    if cfg.long_text != "truncate" and cfg.task != "classify":
        raise PlmkitError(f"--long-text {cfg.long_text} is a classify option (qa always windows its contexts)")
    if cfg.label_scheme != "iob" and cfg.task != "ner":
        raise PlmkitError(f"--label-scheme {cfg.label_scheme} is an ner option")
    stride = cfg.doc_stride if cfg.doc_stride is not None else min(128, length // 4)
    return Prep(max_length=length, doc_stride=stride, long_text=cfg.long_text, text_column=cfg.text_column,
                text_pair_column=cfg.text_pair_column, label_column=cfg.label_column, header=cfg.header)


def _read_data(task: TaskSpec, prep: Prep, cfg: Config) -> tuple[list[Any], list[Any] | None]:
    """Training examples, and evaluation examples from --eval or carved out of --train."""
    train_ex = task.read(cfg.train, prep)
    if task.name == "ner" and cfg.label_scheme == "iob":
        check_tag_scheme(train_ex, cfg.train)
    if cfg.eval:
        labels = task.head_config(train_ex, prep).get("labels")
        return train_ex, task.read(cfg.eval, prep, labels=labels)
    if not cfg.eval_fraction:
        return train_ex, None
    held, what = _held_out(train_ex, cfg)
    kept = [ex for i, ex in enumerate(train_ex) if i not in held]
    evals = [ex for i, ex in enumerate(train_ex) if i in held]
    labels = task.head_config(kept, prep).get("labels")
    if labels is not None:   # a label seen only in the held-out part has no output unit: drop it
        evals = [ex for ex in evals if set(_labels_of(ex)) <= set(labels)]
    print(f"--eval-fraction {cfg.eval_fraction:g}: {what}{len(held)} of {len(train_ex)} examples of {cfg.train} are "
          f"held out for evaluation and not trained on ({len(kept)} train); pass --eval FILE to train on all of them")
    return kept, evals


def _held_out(examples: list[Any], cfg: Config) -> tuple[set[int], str]:
    """The indices --eval-fraction holds out, and what they are. Examples of one group (embed: a SQuAD
    article) are held out together, so no passage is both trained on and searched for."""
    named = [getattr(ex, "group", None) for ex in examples]
    units: list[list[int]] = [[i] for i in range(len(examples))]       # what is held out together
    if any(g is not None for g in named):
        groups: dict[Any, list[int]] = {}
        for i, g in enumerate(named):
            groups.setdefault(g if g is not None else ("", i), []).append(i)
        units = list(groups.values())
    random.Random(cfg.seed).shuffle(units)
    n_eval = max(1, round(cfg.eval_fraction * len(examples)))
    held: set[int] = set()
    taken = 0
    while len(held) < n_eval and taken < len(units):
        held.update(units[taken])
        taken += 1
    grouped = len(units) < len(examples)
    if len(held) >= len(examples):
        raise PlmkitError(f"{cfg.train}: {len(examples)} examples are too few to hold out {cfg.eval_fraction:.0%}"
                          + (f" (in {len(units)} group{'s' * (len(units) > 1)}, held out whole)" if grouped else ""))
    return held, (f"{taken} of {len(units)} groups (SQuAD articles) held out whole, " if grouped else "")


def _labels_of(ex: Any) -> list[str]:
    if hasattr(ex, "tags"):
        return list(ex.tags or [])
    return [ex.label] if getattr(ex, "label", None) is not None else []


def _load_model(cfg: Config, task: TaskSpec, head_config: dict[str, Any], prep: Prep) -> PlmModel:
    # A head the checkpoint lacks is initialised inside the loader: from the run's seed, so
    # that the same command gives the same run (torch's start-up seed differs per process).
    torch.manual_seed(cfg.seed)
    model = load(cfg.model, task=task.head, head_config=head_config, needs_torch="fine-tuning")
    if getattr(model, "plmkit_strategy", None) is not None:
        raise PlmkitError(f"{cfg.model}: an adapter checkpoint; make it a standalone model first "
                          "(plmkit merge) to fine-tune it further")
    if prep.max_length > model.config.max_position:
        raise PlmkitError(f"--max-length {prep.max_length} exceeds the model's {model.config.max_position} "
                          "positions")
    pooling = _pooling(cfg, model)
    if pooling is not None:
        head_config["pooling"] = pooling
    same = (model.task == task.head and all(model.head_config.get(k) == head_config.get(k) for k in SAME_HEAD)
            and model.head_config.get("pooling", default_pooling(model.config)) == head_config.get(
                "pooling", default_pooling(model.config)))
    if same:
        model.head_config = dict(head_config)     # the parent's head already fits: keep training it
    else:
        torch.manual_seed(cfg.seed)               # a fresh head, initialised from the run's seed
        replace_head(model, task.head, head_config)
    return model


def _embed_head(cfg: Config) -> dict[str, Any]:
    """The embed head's settings for head_config; an embed option given to another task is refused."""
    settings = pick(EmbedSettings, cfg)
    if cfg.task == "embed":
        return settings.head_config()
    changed = [f for f, v in to_dict(settings).items() if v != to_dict(EmbedSettings()).get(f)]
    if changed:
        raise PlmkitError(f"--{changed[0].replace('_', '-')} is an option of --task embed")
    return {}


def _embed_pooling(cfg: Config, model: PlmModel) -> str:
    """mean or cls; auto: the parent embed model's, a sentence-transformers directory's, else mean."""
    if cfg.pooling not in ("auto", *POOLINGS):
        raise PlmkitError(f"--pooling {cfg.pooling} is for classification; a sentence embedding reads the mean of "
                          f"the token states or the [CLS] state ({', '.join(POOLINGS)})")
    if cfg.pooling != "auto":
        return cfg.pooling
    saved = read_model_config(cfg.model)
    if saved.get("task") == "embed":
        return saved.get("head_config", {}).get("pooling", "mean")
    return (st_settings(cfg.model) or {}).get("pooling", "mean")


def _pooling(cfg: Config, model: PlmModel) -> str | None:
    """What a classification head on an encoder reads (head_config["pooling"]); None otherwise.

    auto: a Hugging Face checkpoint keeps what transformers' AutoModelForSequenceClassification
    reads (BERT: the pooler), so the result exports back to it; a plmkit checkpoint keeps the
    pooling of its classification head, else reads the mean of the token states: the MLM
    objective leaves its knowledge in the token states, while the [CLS] position and the pooler
    are trained, if at all, for next-sentence prediction (benchmarks/RESULTS.md, the demo).
    """
    if cfg.task == "embed":
        return _embed_pooling(cfg, model)
    if cfg.task != "classify" or model.config.causal:
        if cfg.pooling != "auto":   # other tasks were refused in _prep
            raise PlmkitError("--pooling is for encoders (a decoder's classification head reads its last token)")
        return None
    if cfg.pooling == "pooler" and not model.config.use_pooler:
        raise PlmkitError(f"{cfg.model}: the model has no pooler; choose --pooling cls or mean")
    if cfg.pooling != "auto":
        return cfg.pooling
    saved = read_model_config(cfg.model)
    if "plmkit" not in saved:
        return default_pooling(model.config)
    if saved.get("task") == "classify":
        return saved.get("head_config", {}).get("pooling", default_pooling(model.config))
    return "mean"


def _batches(features: list[dict[str, Any]], tok: Tokenizer, cfg: Config) -> IndexedBatches:
    lengths = feature_lengths(features)
    group = TASKS[cfg.task].group_by_length if cfg.group_by_length is None else cfg.group_by_length
    if group:   # features with a distinct_key (embed: the positive passage) never repeat it in a batch
        keys = [f["distinct_key"] for f in features] if len(features) and "distinct_key" in features[0] else None
        buckets = length_bucketed_batches(lengths, cfg.batch_size, seed=cfg.seed, keys=keys)
    else:
        buckets = None    # IndexedBatches shuffles the indices into batches, anew each epoch
    n_batches = len(buckets) if buckets else -(-len(features) // cfg.batch_size)
    pad, norm = pad_id(tok), label_norm(features, n_batches)

    def make(idx: list[int]) -> dict[str, torch.Tensor]:
        batch = collate([features[i] for i in idx], pad)
        if norm is not None:
            batch["label_norm"] = torch.tensor(norm)
        return batch
    return IndexedBatches(len(features), make, cfg.batch_size, seed=cfg.seed, batches=buckets)


def _fingerprint(cfg: Config, head_config: dict[str, Any], info: StrategyInfo) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one."""
    train_file = Path(cfg.train)
    return {"model": str(Path(cfg.model).resolve()), "task": cfg.task, "head_config": head_config,
            "strategy": info.spec, "adapter": to_dict(info.settings), "batch_size": cfg.batch_size,
            "group_by_length": cfg.group_by_length,
            "train": [str(train_file.resolve()), train_file.stat().st_size],
            "eval": str(Path(cfg.eval).resolve()) if cfg.eval else None, "eval_fraction": cfg.eval_fraction}


def _depth(model: PlmModel):
    """Layer depth for layer-wise lr decay: embeddings 0, layer i -> i + 1, head None (top)."""
    def layer_of(name: str) -> int | None:
        if name.startswith(EMBEDDINGS):
            return 0
        i = model.layer_of(name)
        return None if i is None else i + 1
    return layer_of


def _final_metrics(result: Any, work: Path, metric: str | None, seconds: float) -> dict[str, Any]:
    """Steps, time, and the evaluation scores of the checkpoint that was kept."""
    metrics: dict[str, Any] = {"steps": result.steps, "stopped": result.stopped_reason,
                               "train_seconds": round(seconds, 2)}
    if result.losses:
        metrics["train_loss"] = result.losses[-1]
    if result.resumes:
        metrics["resumes"] = result.resumes
    if result.best_step is None:
        return metrics
    metrics.update(best_step=result.best_step, metric=metric)
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
        write = write_adapter_files if info.adapter_only else write_checkpoint_files
        write(model, tmp, tok, meta)
        atomic_write_text(tmp / RUN_FILE, dump_yaml(cfg))
        copy_logs(work, tmp)
