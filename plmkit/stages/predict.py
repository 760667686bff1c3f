"""Predict with a fine-tuned model: one JSON line per input example, labels as names.

classify -> {"text", "label", "score"}; ner -> {"tokens", "tags", "entities"};
qa -> {"id", "question", "answer"}; generate -> {"prompt", "completion"}.
Input is the task's training format with the labels optional; the output file is
written atomically (a reader never sees half of it), and an existing one is replaced only
with --overwrite.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..config import compose, option, pick
from ..io import atomic_write_text, check_out_file
from ..tasks import TaskData, load_finetuned
from ..tasks.options import InferOptions


@dataclass
class _Options:
    model: str = option(help="fine-tuned checkpoint (full or adapter-only)")
    input: str = option(help="data file to predict on (labels not needed)")
    output: str = option(help="JSONL file to write")
    overwrite: bool = option(False, help="replace an existing --output file")


Config = compose("Config", __name__, _Options, InferOptions)


def run(cfg: Config) -> int:
    check_out_file(cfg.output, cfg.overwrite)     # before the model loads and the data is read
    model, task, prep, tok = load_finetuned(cfg.model, cfg.task)
    if cfg.long_text is not None:
        prep.long_text = cfg.long_text
    examples = task.read(cfg.input, prep, require_labels=False)
    features = task.encode(tok, examples, model.head_config, prep)
    data = TaskData(examples, features, tok, model.head_config, pick(InferOptions, cfg).infer(progress="predict"))
    rows = task.predict(model, data)
    atomic_write_text(cfg.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} predictions to {cfg.output}")
    return 0
