"""Fine-tuning tasks: one module per task, all speaking the ``TaskSpec`` protocol.

    task = TASKS["classify"]
    train = task.read("train.tsv", prep)                       # reader examples
    head_config = task.head_config(train, prep)                # label names, ...
    feats = task.encode(tok, train, head_config, prep)         # unpadded token features
    task.evaluate(model, TaskData(...)) -> {"accuracy": ..., "f1": ...}
    task.predict(model, TaskData(...))  -> [{"text": ..., "label": "positive", ...}, ...]

The stages (finetune / evaluate / predict) are written once against this protocol.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
from tokenizers import Tokenizer
from torch import nn

from ..config import build
from ..data.features import configured
from ..data.readers import read_lines
from ..errors import PlmkitError
from ..loading import load
from ..models.st import st_settings
from ..tokenizer import load_tokenizer
from ..train.defaults import FixedTraining
from . import classify, embed, generate, ner, qa
from .common import Infer, Prep, TaskData


class TaskSpec(Protocol):
    name: str                 # CLI name: classify | ner | qa | generate | embed
    head: str                 # model head: classify | token | span | clm | embed
    metric: str               # the evaluation value that selects the best checkpoint
    greater_is_better: bool
    help: str                 # accepted file formats, for --help and errors
    group_by_length: bool     # train on length buckets unless --no-group-by-length (ner: random batches)
    labelled: bool            # predicts label names (head_config.labels): a checkpoint without them is refused
    detailed: bool            # evaluate(..., detailed=True) adds non-scalar details (confusion matrix, ...)
    on_graph: bool            # evaluate runs on an exported graph (ONNX / OpenVINO): quantize measures it
    file_layout: str          # how its files hold examples, for carving slices: "lines" (one per line), "blocks"
                              # (CoNLL: blank-line separated; .json/.jsonl a line each), "squad" (one JSON document)
    max_length_from: str      # --max-length's default: fixed (128), model (a sentence-transformers model's
                              # max_seq_length, else 128), data (train/defaults.py: length_from_data)
    hf_auto: str | None       # the transformers Auto class of its HF export (bench's baseline); None: not benched
    what: str                 # the model in words ("a classification model"), for refusals

    def read(self, path: str, prep: Prep, labels: list[str] | None = None,
             require_labels: bool = True) -> list[Any]: ...

    def head_config(self, examples: list[Any], prep: Prep) -> dict[str, Any]: ...

    def train_defaults(self, examples: list[Any]) -> FixedTraining | None: ...   # None: the data-size rule

    def encode(self, tok: Tokenizer, examples: list[Any], head_config: dict[str, Any],
               prep: Prep) -> list[dict[str, Any]]: ...

    def metric_of(self, examples: list[Any]) -> str: ...   # the value that selects, on these evaluation data

    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]: ...

    def predict(self, model: nn.Module, data: TaskData) -> list[dict[str, Any]]: ...


class ScoredTask(TaskSpec, Protocol):
    """The tasks of ``BENCH_TASKS`` also score each unit (example, sentence, question) apart, so that
    two models scored on the same data are compared unit by unit (compress's paired differences)."""

    def unit_stats(self, model: nn.Module, data: TaskData) -> np.ndarray: ...   # [N, k], one row per example

    def score_of_sums(self, sums: np.ndarray, n: int) -> np.ndarray: ...  # [..., k] column sums -> metric in 0-1


TASKS: dict[str, TaskSpec] = {t.name: t for t in (classify.TASK, ner.TASK, qa.TASK, generate.TASK, embed.TASK)}

# The tasks with a transformers baseline: what compress takes (it benches its candidates) and what
# plmkit bench measures with baseline rows (it also times embed, without them: bench/rows.py).
BENCH_TASKS = tuple(name for name, t in TASKS.items() if t.hf_auto)


def selection_metric(task: TaskSpec, examples: list[Any]) -> str:
    """The evaluation value that selects the best checkpoint when evaluating on ``examples`` (embed:
    a retrieval set is scored by MRR@10, scored pairs by Spearman)."""
    return task.metric_of(examples)


def evaluate_detailed(task: TaskSpec, model: nn.Module, data: TaskData) -> dict[str, Any]:
    """The task's metrics plus, where the task has them, non-scalar details for reports."""
    if task.detailed:
        return task.evaluate(model, data, detailed=True)  # type: ignore[call-arg]
    return task.evaluate(model, data)


# model head -> the task it serves, for checkpoints that do not record their task (HF ones)
TASK_OF_HEAD = {t.head: t.name for t in TASKS.values()}


def task_of(path: str | Path, head: str, head_config: dict[str, Any], name: str | None = None) -> TaskSpec | None:
    """The task a model directory serves: ``name`` (--task, for checkpoints that do not record it),
    else the one it was fine-tuned for (head_config.finetune_task), else its head's; None for a
    model without a task head (pre-trained). A ``name`` the checkpoint contradicts is refused."""
    saved = head_config.get("finetune_task")
    name = name or saved or TASK_OF_HEAD.get(head)
    if name is None:
        return None
    if name not in TASKS:
        raise PlmkitError(f"{Path(path) / 'config.json'}: head_config.finetune_task: unknown task '{name}' "
                          f"(known: {', '.join(TASKS)})")     # --task is checked by its choices
    if saved is not None and saved != name:
        raise PlmkitError(f"{path}: the model was fine-tuned for '{saved}', not '{name}'")
    return TASKS[name]


def prep_of(path: str | Path, head_config: dict[str, Any]) -> Prep:
    """The preprocessing settings a checkpoint stores (head_config.preprocess), checked."""
    return build(Prep, head_config.get("preprocess", {}),
                 source=f"{Path(path) / 'config.json'}: head_config.preprocess")


def _wrong_head(path: str | Path, head: str, task: TaskSpec) -> PlmkitError:
    return PlmkitError(f"{path}: a '{head}' model cannot do task '{task.name}' "
                       f"(it needs a '{task.head}' head; fine-tune it first)")


def task_and_prep(path: str | Path, config: dict[str, Any], name: str | None = None) -> tuple[TaskSpec | None, Prep]:
    """A model taken with the head it has (plmkit config.json ``config``: task, head_config, model): the
    task it serves (``task_of``; None without a task head), a task its head cannot do refused, and its
    preprocessing settings."""
    head, head_config = config.get("task", "base"), config.get("head_config", {})
    prep = prep_of(path, head_config)
    # Never feed more tokens than the position table holds (a checkpoint without preprocess settings).
    prep.max_length = min(prep.max_length, int(config["model"].get("max_position", prep.max_length)))
    task = task_of(path, head, head_config, name)
    if task is not None and task.head != head:
        raise _wrong_head(path, head, task)
    return task, prep


def read_task_file(task: TaskSpec | None, prep: Prep, tok: Tokenizer, head_config: dict[str, Any], path: str,
                   what: str, limit: int | None = None) -> tuple[list[Any], list[dict[str, Any]]]:
    """The first ``limit`` examples of the ``what`` file ``path`` and their features; without a task (a
    pre-trained model: activation ranges only), its non-empty text lines. A file of another task fails
    here with the reader's error."""
    if not Path(path).is_file():
        raise PlmkitError(f"{path}: {what} file not found")
    if task is None:
        lines = [ln for ln in read_lines(path) if ln.strip()][:limit]
        encodings = configured(tok, prep.max_length).encode_batch(lines)
        return lines, [{"input_ids": e.ids, "attention_mask": e.attention_mask, "token_type_ids": e.type_ids}
                       for e in encodings]
    try:
        examples = task.read(path, prep, labels=head_config.get("labels"))
    except PlmkitError as e:
        raise PlmkitError(f"{what} data does not fit the model's task '{task.name}' "
                          f"(expected {task.help}): {e}") from None
    examples = examples[:limit]
    return examples, task.encode(tok, examples, head_config, prep)


def _bare_embed(path: str) -> dict[str, Any]:
    """A bare encoder as a sentence encoder: the pooling, normalisation and length of its
    sentence-transformers files (all-MiniLM-L6-v2), else mean pooling, unit length."""
    st = st_settings(path) or {}
    config: dict[str, Any] = {"pooling": st.get("pooling", "mean"), "normalize": st.get("normalize", True)}
    if st.get("max_seq_length"):
        config["preprocess"] = {"max_length": st["max_seq_length"]}
    return config


# Heads a pre-trained model (a bare backbone, or one with its pre-training head, left aside) takes
# with nothing to train, and their head_config: a bare GPT-2's LM head is tied to its embeddings; a
# sentence-embedding head is a pooling. (An encoder asked for 'clm', or a decoder for 'embed', is
# refused by the head check, saying why.)
PRETRAINED_HEADS = ("base", "mlm", "mlm+nsp", "mlm+sop")
BARE_HEADS: dict[str, Callable[[str], dict[str, Any]]] = {"clm": lambda path: {}, "embed": _bare_embed}


def load_finetuned(path: str, task_name: str | None = None,
                   needs_torch: str | None = None) -> tuple[nn.Module, TaskSpec, Prep, Tokenizer]:
    """A fine-tuned model in eval mode, its task, its preprocessing settings and tokenizer.

    The task and settings come from the checkpoint's head_config; ``task_name`` may name
    the task for checkpoints that do not record it (a Hugging Face BertForTokenClassification).
    An ONNX directory (export / quantize) runs the same task code on ONNX Runtime, unless
    ``needs_torch`` names what needs the PyTorch weights (``plmkit.loading.load``).
    """
    model = load(path, needs_torch=needs_torch)
    task = task_of(path, model.task, model.head_config, task_name)
    if task is None:
        raise PlmkitError(f"{path}: a '{model.task}' model has no task head; fine-tune it first "
                          f"(plmkit finetune), or pass --task ({', '.join(TASKS)})")
    if model.task != task.head:
        if model.task in PRETRAINED_HEADS and task.head in BARE_HEADS:
            model = load(path, task=task.head, head_config=BARE_HEADS[task.head](path))
        else:
            raise _wrong_head(path, model.task, task)
    if task.labelled and not model.head_config.get("labels"):
        raise PlmkitError(f"{path}: the checkpoint has no label names (head_config.labels)")
    prep = prep_of(path, model.head_config)
    return model.eval(), task, prep, load_tokenizer(path)


__all__ = ["BENCH_TASKS", "TASKS", "TASK_OF_HEAD", "Infer", "Prep", "TaskData", "TaskSpec", "load_finetuned", "prep_of",
           "read_task_file", "selection_metric", "task_and_prep", "task_of"]
