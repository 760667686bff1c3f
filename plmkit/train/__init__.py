"""The training loop shared by pretrain, finetune, distill and prune (see ``loop.train``), and
the training options they share (``args.TrainArgs``)."""
from __future__ import annotations

from .args import RESUME_FREE, TrainArgs, check_args, parse_budget
from .logging import count_tokens, measure_peak_flops
from .loop import Hooks, TrainResult, dropped_unless_resumable, train
from .optim import build_optimizer, build_scheduler, lr_factor, param_groups
from .source import BatchSource, IndexedBatches, task_batches
from .state import latest_checkpoint, list_checkpoints, load_trainable, run_dir, save_trainable

__all__ = [
    "BatchSource", "Hooks", "IndexedBatches", "RESUME_FREE", "TrainArgs", "TrainResult", "build_optimizer",
    "build_scheduler", "check_args", "count_tokens", "dropped_unless_resumable", "latest_checkpoint", "list_checkpoints", "load_trainable", "lr_factor",
    "measure_peak_flops", "param_groups", "parse_budget", "run_dir", "save_trainable", "task_batches", "train",
]
