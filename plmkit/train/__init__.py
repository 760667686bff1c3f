"""The training loop shared by pretrain, finetune and distill (see ``loop.train``)."""
from __future__ import annotations

from .logging import count_tokens, measure_peak_flops
from .loop import RESUME_FREE, TrainConfig, TrainResult, parse_budget, train
from .optim import build_optimizer, build_scheduler, lr_factor, param_groups
from .source import BatchSource, IndexedBatches
from .state import latest_checkpoint, list_checkpoints

__all__ = [
    "BatchSource", "IndexedBatches", "RESUME_FREE", "TrainConfig", "TrainResult", "build_optimizer",
    "build_scheduler", "count_tokens", "latest_checkpoint", "list_checkpoints", "lr_factor",
    "measure_peak_flops", "param_groups", "parse_budget", "train",
]
