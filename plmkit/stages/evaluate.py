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

from ..config import compose, option, pick
from ..tasks import TaskData, evaluate_detailed, load_finetuned
from ..tasks.options import InferOptions


@dataclass
class _Options:
    model: str = option(help="fine-tuned checkpoint (full or adapter-only)")
    data: str = option(help="labelled data file, same format as for finetune")


Config = compose("Config", __name__, _Options, InferOptions)


def run(cfg: Config) -> int:
    model, task, prep, tok = load_finetuned(cfg.model, cfg.task)
    if cfg.long_text is not None:
        prep.long_text = cfg.long_text
    examples = task.read(cfg.data, prep, labels=model.head_config.get("labels"))
    features = task.encode(tok, examples, model.head_config, prep)
    data = TaskData(examples, features, tok, model.head_config, pick(InferOptions, cfg).infer(progress="evaluate"))
    metrics = evaluate_detailed(task, model, data)
    print(json.dumps({"task": task.name, "examples": len(examples), **metrics}))
    return 0
