"""Recipe stage ``reinit``: the same architecture, task head and tokenizer as a checkpoint, with
fresh random weights. Fine-tuning it next to the original shows what pre-training buys (the
demo's "pre-trained vs from scratch" comparison).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import option, to_dict
from ..loading import load
from ..models.checkpoint import save_checkpoint
from ..models.model import PlmModel
from ..tokenizer import load_tokenizer


@dataclass
class Config:
    model: str = option(help="checkpoint whose architecture (and tokenizer) to copy")
    out: str = option(help="output checkpoint directory")
    seed: int = option(0, help="random seed of the new weights")
    overwrite: bool = option(False, help="replace an existing --out")


def run(cfg: Config) -> int:
    parent = load(cfg.model, needs_torch="reinit")
    torch.manual_seed(cfg.seed)
    model = PlmModel(parent.config, parent.task)
    meta = {"stage": "reinit", "parent": str(Path(cfg.model).resolve()), "config": to_dict(cfg)}
    save_checkpoint(model, cfg.out, tokenizer=load_tokenizer(cfg.model), meta=meta, overwrite=cfg.overwrite)
    print(f"randomly initialised copy of {cfg.model} ({model.num_parameters():,} parameters) in {cfg.out}")
    return 0
