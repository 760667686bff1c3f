"""Export a checkpoint to another layout (hf: a directory transformers loads)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import option
from ..errors import PlmkitError
from ..models.checkpoint import export_hf, load_model
from ..tokenizer import load_tokenizer

FORMATS = ("hf",)


@dataclass
class Config:
    model: str = option(help="checkpoint directory")
    out: str = option(help="output directory")
    format: str = option("hf", help="target layout", choices=list(FORMATS))
    overwrite: bool = option(False, help="replace an existing output directory")


def run(cfg: Config) -> int:
    if cfg.format not in FORMATS:
        raise PlmkitError(f"unknown export format '{cfg.format}' (choose {', '.join(FORMATS)})")
    model = load_model(cfg.model)
    tok = load_tokenizer(cfg.model) if _has_tokenizer(Path(cfg.model)) else None
    out = export_hf(model, cfg.out, tok, overwrite=cfg.overwrite)
    print(f"exported {model.task} model to {out} (load with transformers.AutoModel.from_pretrained)")
    return 0


def _has_tokenizer(path: Path) -> bool:
    return any((path / n).is_file() for n in ("tokenizer.json", "vocab.txt", "vocab.json"))
