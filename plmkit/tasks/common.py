"""What the fine-tuning tasks share: preprocessing settings, encoded data, batched inference.

A task turns files into ``TaskData`` (reader examples + unpadded token features + what is
needed to run the model on them) and scores or predicts from it. Inference batches are
sorted by length, so a batch of short sentences is short: padding costs little, and a
batch of equal lengths runs with no attention mask at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from ..data.features import collate, feature_lengths, length_bucketed_batches
from ..models.heads import ModelOutput
from ..precision import DEFAULT as PRECISION_DEFAULT
from ..precision import autocast
from ..tokenizer import INPUT_KEYS, pad_id
from ..train.logging import progress_enabled

@dataclass
class Prep:
    """How raw files become features; stored in the checkpoint so evaluate/predict reuse it."""
    max_length: int = 128
    doc_stride: int = 128                # QA, classify windows: overlap of consecutive windows, in tokens
    long_text: str = "truncate"          # classify: truncate | head-tail | windows (data/features.py)
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    header: bool | None = None           # None: detect a header row


@dataclass
class Infer:
    """How the model is run on evaluation / prediction data."""
    batch_size: int = 64
    precision: str = PRECISION_DEFAULT   # auto | bf16 | fp32 (plmkit.precision)
    max_new_tokens: int = 64             # generation: completion length limit
    progress: str | None = None          # progress-bar label; None: no bar


@dataclass
class TaskData:
    examples: list[Any]                  # reader examples (gold labels, texts, contexts)
    features: list[dict[str, Any]]       # unpadded token features, in example order
    tok: Tokenizer
    head_config: dict[str, Any]
    infer: Infer = field(default_factory=Infer)


def forward_batches(model: nn.Module, data: TaskData) -> Iterator[tuple[list[int], ModelOutput]]:
    """Run the model over ``data.features`` in length order, ``batch_size`` at a time.

    Yields (feature indices, outputs); labels are not passed, so no loss is computed.
    """
    lengths = feature_lengths(data.features)
    batches = length_bucketed_batches(lengths, data.infer.batch_size, seed=0, shuffle=False)
    device = next(model.parameters()).device
    pad = pad_id(data.tok)
    bar = tqdm(total=len(lengths), desc=data.infer.progress, unit="ex", dynamic_ncols=True,
               disable=data.infer.progress is None or not progress_enabled())
    try:
        with torch.no_grad(), autocast(data.infer.precision, device):
            for idx in batches:
                batch = collate([data.features[i] for i in idx], pad)
                yield idx, model(**{k: v.to(device) for k, v in batch.items() if k in INPUT_KEYS})
                bar.update(len(idx))
    finally:
        bar.close()

