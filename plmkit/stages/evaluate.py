"""Evaluate a fine-tuned model on a labelled file; the metrics are one JSON object on the
last line of stdout (classify: accuracy, macro F1; ner: entity precision/recall/F1;
qa: SQuAD exact match and F1; generate: completion loss and exact match; classify adds
labels + confusion_matrix, ner per_entity scores).

The task, label names and preprocessing settings (max_length, doc_stride, columns) come
from the checkpoint, so the model directory and a data file are all it needs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..config import option
from ..data.features import LONG_TEXT
from ..precision import DEFAULT as PRECISION_DEFAULT
from ..precision import HELP as PRECISION_HELP
from ..precision import PRECISIONS
from ..tasks import TASKS, Infer, TaskData, evaluate_detailed, load_finetuned


@dataclass
class Config:
    model: str = option(help="fine-tuned checkpoint (full or adapter-only)")
    data: str = option(help="labelled data file, same format as for finetune")
    task: str | None = option(None, help="task, for checkpoints that do not record it", choices=list(TASKS))
    batch_size: int = option(64, help="examples per batch", ge=1)
    precision: str = option(PRECISION_DEFAULT, help=PRECISION_HELP, choices=PRECISIONS)
    max_new_tokens: int = option(32, help="generate: completion length limit")
    long_text: str | None = option(None, help="classify: how texts longer than the model's max_length are "
                                   "read (default: as in fine-tuning)", choices=list(LONG_TEXT))


def run(cfg: Config) -> int:
    model, task, prep, tok = load_finetuned(cfg.model, cfg.task)
    if cfg.long_text is not None:
        prep.long_text = cfg.long_text
    examples = task.read(cfg.data, prep, labels=model.head_config.get("labels"))
    features = task.encode(tok, examples, model.head_config, prep)
    data = TaskData(examples, features, tok, model.head_config,
                    Infer(cfg.batch_size, cfg.precision, cfg.max_new_tokens, progress="evaluate"))
    metrics = evaluate_detailed(task, model, data)
    print(json.dumps({"task": task.name, "examples": len(examples), **metrics}))
    return 0
