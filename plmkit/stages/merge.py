"""Turn an adapter-only checkpoint into a standalone one.

LoRA updates are folded into the weights (W += alpha/r * B A): the output is a plain
checkpoint with the parent's architecture. probe and bitfit weights are simply written
over the parent's. Houlsby adapters are non-linear and stay as modules; the output
records the strategy so ``plmkit.loading.load`` re-inserts them before loading.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..adapters import merge, strategy_meta
from ..config import option, to_dict
from ..errors import PlmkitError
from ..loading import load
from ..models.checkpoint import read_meta, save_checkpoint
from ..tokenizer import load_tokenizer


@dataclass
class Config:
    model: str = option(help="adapter-only checkpoint (from plmkit finetune --strategy lora|adapter|...)")
    out: str = option(help="output checkpoint directory")
    overwrite: bool = option(False, help="replace an existing --out")


def run(cfg: Config) -> int:
    source = read_meta(cfg.model)
    model = load(cfg.model, needs_torch="merge")
    info = getattr(model, "plmkit_strategy", None)
    if info is None:
        raise PlmkitError(f"{cfg.model}: not an adapter checkpoint (nothing to merge)")
    merge(model)
    structural = getattr(model, "plmkit_strategy", None)     # still set: modules that cannot be folded
    kept = strategy_meta(structural) if structural is not None else None
    meta = {"stage": "merge", "parent": str(Path(cfg.model).resolve()), "config": to_dict(cfg),
            "finetune": {k: source.get(k) for k in ("parent", "config", "metrics")},
            **({"strategy": kept} if kept else {})}
    save_checkpoint(model, cfg.out, load_tokenizer(cfg.model), meta, overwrite=cfg.overwrite)
    how = "Houlsby adapters kept as modules" if kept else "weights folded in"
    print(f"merged {info.spec} ({how}): {model.num_parameters():,} parameters in {cfg.out}")
    return 0
