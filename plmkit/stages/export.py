"""Export a checkpoint to another layout.

hf:   a directory transformers loads (``AutoModel.from_pretrained``).
onnx: ``model.onnx`` (fp32, opset 17, dynamic batch and sequence axes, checked against
      PyTorch on padded and unpadded batches) + config.json + tokenizer + plmkit.json
      ({"format": "onnx", "precision": "fp32", "parent": ...}); ``evaluate`` / ``predict``
      and ``plmkit quantize`` take the directory as a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import option, to_dict
from ..errors import PlmkitError
from ..loading import load
from ..models.checkpoint import export_hf
from ..tokenizer import load_tokenizer


def _hf(model: Any, cfg: "Config", tok: Any) -> str:
    out = export_hf(model, cfg.out, tok, overwrite=cfg.overwrite)
    return f"exported {model.task} model to {out} (load with transformers.AutoModel.from_pretrained)"


def _onnx(model: Any, cfg: "Config", tok: Any) -> str:
    from ..compress.onnx_export import export_onnx_dir

    meta = {"stage": "export", "parent": str(Path(cfg.model).resolve()), "config": to_dict(cfg)}
    info = export_onnx_dir(model, cfg.out, tok, meta, opset=cfg.opset, overwrite=cfg.overwrite)
    return (f"exported {model.task} model to {cfg.out}/model.onnx (outputs: {', '.join(info['outputs'])}; "
            f"max |onnx - torch| = {info['max_abs_diff']:.2g})")


FORMATS: dict[str, Callable[[Any, "Config", Any], str]] = {"hf": _hf, "onnx": _onnx}


@dataclass
class Config:
    model: str = option(help="checkpoint directory")
    out: str = option(help="output directory")
    format: str = option("hf", help="target layout", choices=list(FORMATS))
    opset: int = option(17, help="onnx: ONNX opset (>= 17)")
    overwrite: bool = option(False, help="replace an existing output directory")


def run(cfg: Config) -> int:
    if cfg.format not in FORMATS:
        raise PlmkitError(f"unknown export format '{cfg.format}' (choose {', '.join(FORMATS)})")
    if cfg.format == "onnx" and cfg.opset < 17:
        raise PlmkitError(f"--opset {cfg.opset}: ONNX export needs opset 17 or later (LayerNormalization)")
    model = load(cfg.model, needs_torch="export")
    tok = load_tokenizer(cfg.model) if _has_tokenizer(Path(cfg.model)) else None
    print(FORMATS[cfg.format](model, cfg, tok))
    return 0


def _has_tokenizer(path: Path) -> bool:
    return any((path / n).is_file() for n in ("tokenizer.json", "vocab.txt", "vocab.json"))
