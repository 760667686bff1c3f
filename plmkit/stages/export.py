"""Export a checkpoint to another layout.

hf:   a directory transformers loads (``AutoModel.from_pretrained``).
onnx: ``model.onnx`` (fp32, opset 17, dynamic batch and sequence axes, checked against
      PyTorch on padded and unpadded batches) + config.json + tokenizer + plmkit.json
      ({"format": "onnx", "precision": "fp32", "parent": ...}); ``evaluate`` / ``predict``
      and ``plmkit quantize`` take the directory as a model.
sentence-transformers: the Hugging Face files of the backbone plus modules.json, 1_Pooling/config.json
      and sentence_bert_config.json (models/st.py), so ``SentenceTransformer(dir)`` gives the vectors
      of an embed model (pooling and normalisation as fine-tuned; a bare encoder: mean pooling).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import option, to_dict
from ..errors import PlmkitError
from ..loading import load
from ..models.checkpoint import export_hf
from ..models.st import export_sentence_transformers
from ..tokenizer import has_tokenizer, load_tokenizer


def _hf(model: Any, cfg: "Config", tok: Any) -> str:
    out = export_hf(model, cfg.out, tok, overwrite=cfg.overwrite)
    return f"exported {model.task} model to {out} (load with transformers.AutoModel.from_pretrained)"


def _onnx(model: Any, cfg: "Config", tok: Any) -> str:
    from ..compress.onnx_export import export_onnx_dir

    meta = {"stage": "export", "parent": str(Path(cfg.model).resolve()), "config": to_dict(cfg)}
    info = export_onnx_dir(model, cfg.out, tok, meta, opset=cfg.opset, overwrite=cfg.overwrite)
    return (f"exported {model.task} model to {cfg.out}/model.onnx (outputs: {', '.join(info['outputs'])}; "
            f"max |onnx - torch| = {info['max_abs_diff']:.2g})")


def _sentence_transformers(model: Any, cfg: "Config", tok: Any) -> str:
    length = int(model.head_config.get("preprocess", {}).get("max_length", model.config.max_position))
    export_sentence_transformers(model, cfg.out, tok, min(length, model.config.max_position), overwrite=cfg.overwrite)
    return (f"exported {model.task} model to {cfg.out} (load with sentence_transformers.SentenceTransformer; "
            f"{model.head_config.get('pooling', 'mean')} pooling, max_seq_length {length})")


FORMATS: dict[str, Callable[[Any, "Config", Any], str]] = {
    "hf": _hf, "onnx": _onnx, "sentence-transformers": _sentence_transformers}


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
    tok = load_tokenizer(cfg.model) if has_tokenizer(cfg.model) else None
    print(FORMATS[cfg.format](model, cfg, tok))
    return 0
