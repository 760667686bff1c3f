"""What is in this model directory, and one function that loads it, whatever wrote it.

    model = load("runs/sst2")                          # PlmModel, or OnnxModel for an export
    model = load("runs/base", task="classify", head_config={"num_labels": 2, ...})  # fresh head
    model = load(path, needs_torch="generation")       # an ONNX export is refused, saying why
    saved = peek(path)                                 # format, task, head_config; nothing loaded
    fp32 = load_fp32(path)                             # what quantize starts from: PyTorch, or an fp32 graph
    model_config(saved)                                # family, sizes; nothing loaded
    info = describe(path)                              # what ``plmkit info`` prints

A model directory holds config.json; the other files decide its format (``peek``), and the
format picks the loader from ``LOADERS``:
  onnx         model.onnx, plmkit.json format "onnx" (``plmkit export --format onnx`` / ``plmkit
               quantize``) -> ``OnnxModel``, the same outputs on ONNX Runtime (plmkit.models.onnx_model)
  openvino     model.xml + model.bin, plmkit.json format "openvino" (``plmkit quantize --engine
               openvino``) -> ``OnnxModel`` on an OpenVINO compiled model (plmkit.models.openvino_runtime)
  adapter      adapter.safetensors, plmkit.json format "plmkit-adapter" (``plmkit finetune`` with
               probe / lora / adapter / bitfit) -> its parent, loaded by ``load``, with the adapter
               on it (plmkit.adapters.checkpoint)
  plmkit       model.safetensors, config.json with a "plmkit" key -> ``PlmModel``; the modules a
               merge kept (Houlsby adapters, recorded in plmkit.json) are re-inserted first
  huggingface  a local HF directory of a supported family -> ``PlmModel``, converted (plmkit.models.hf)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .adapters.checkpoint import attach, is_adapter, kept_structure, parent_dir, restore_structure
from .errors import PlmkitError
from .models import hf
from .models.checkpoint import config_json, load_model, read_meta, read_model_config
from .models.config import ModelConfig, config_from_dict
from .models.onnx_model import GRAPH_FILES, ONNX_FILE, graph_format, load_onnx_dir

EXPORTS = {"onnx": "ONNX export", "openvino": "OpenVINO export"}      # graph formats, as messages name them


@dataclass
class Saved:
    """A model directory as its JSON files describe it (no weights read)."""
    path: Path
    format: str                    # onnx | openvino | adapter | plmkit | huggingface
    task: str                      # the model head: base, mlm, mlm+nsp, classify, token, span, clm, ...
    head_config: dict[str, Any]    # labels, finetune_task, preprocess, ...
    config: dict[str, Any]         # config.json as read
    meta: dict[str, Any]           # plmkit.json: format, lineage ({} for an HF directory)


def peek(path: str | Path) -> Saved:
    """The format, head and settings of the model directory ``path``; a one-line error when it is
    not one (not found, a symlink loop, a file, no config.json)."""
    path = Path(path)
    raw = read_model_config(path)
    graph = graph_format(path)
    if "plmkit" not in raw and graph is None:
        _, task, head_config = hf.read_config(raw, str(path / "config.json"))
        return Saved(path, "huggingface", task, head_config, raw, {})
    meta = read_meta(path)
    fmt = graph or ("adapter" if is_adapter(meta) else "plmkit")
    return Saved(path, fmt, raw.get("task", "base"), raw.get("head_config", {}), raw, meta)


def model_config(saved: Saved) -> ModelConfig:
    """The backbone's settings (family, sizes, causal), from config.json alone: no weights read."""
    source = str(saved.path / "config.json")
    if saved.format == "huggingface":
        return hf.read_config(saved.config, source)[0]
    return config_from_dict(saved.config.get("model"), source=source)


def load(path: str | Path, task: str | None = None, head_config: dict[str, Any] | None = None, *,
         dtype: torch.dtype | None = None, threads: int | None = None, needs_torch: str | None = None) -> nn.Module:
    """The model in directory ``path``: a ``PlmModel``, or an ``OnnxModel`` for an ONNX export.

    ``task`` other than the saved head: a fresh head of that task with ``head_config``, only the
    backbone weights loaded (fine-tuning a pre-trained model); an adapter or ONNX directory, whose
    head is part of what was saved, refuses it. ``dtype`` casts a PyTorch model; ``threads`` sets
    ONNX Runtime's intra-op threads. ``needs_torch`` names what needs PyTorch weights (e.g.
    "generation"): an ONNX export is then refused with a message that says so.
    """
    saved = peek(path)
    if needs_torch and saved.format in GRAPH_FILES:
        raise PlmkitError(f"{path}: an {EXPORTS[saved.format]}; {needs_torch} needs the PyTorch checkpoint it was "
                          f"exported from ({saved.meta.get('parent') or 'plmkit.json names no parent'})")
    return LOADERS[saved.format](saved, task, head_config, dtype, threads)


def _load_onnx(saved: Saved, task: str | None, head_config: dict[str, Any] | None,
               dtype: torch.dtype | None, threads: int | None) -> nn.Module:
    if task is not None and task != saved.task:
        raise PlmkitError(f"{saved.path}: an {EXPORTS[saved.format]} of a '{saved.task}' model; its head is "
                          f"part of the graph and cannot become a '{task}' head (use the PyTorch checkpoint it "
                          "came from)")
    try:
        return load_onnx_dir(saved.path, threads=threads)
    except ImportError as e:
        raise PlmkitError(f"{saved.path}: an ONNX export; running it needs {e.name}, which is not installed "
                          "(pip install 'plmkit[onnx]')") from None


def _load_adapter(saved: Saved, task: str | None, head_config: dict[str, Any] | None,
                  dtype: torch.dtype | None, threads: int | None) -> nn.Module:
    if task is not None and task != saved.task:
        raise PlmkitError(f"{saved.path}: adapter checkpoint for task '{saved.task}', not '{task}' "
                          "(merge it with 'plmkit merge' to use it as a base model)")
    parent = load(parent_dir(saved.path, saved.meta), task=saved.task, head_config=saved.head_config,
                  needs_torch="an adapter checkpoint")
    model = attach(parent, saved.path, saved.task, saved.head_config, saved.meta)
    return model.to(dtype) if dtype is not None else model


def _load_checkpoint(saved: Saved, task: str | None, head_config: dict[str, Any] | None,
                     dtype: torch.dtype | None, threads: int | None) -> nn.Module:
    kept = kept_structure(saved.meta)
    source = str(saved.path / "plmkit.json")
    prepare = (lambda model: restore_structure(model, kept, source)) if kept else None
    return load_model(saved.path, task, head_config, dtype, prepare=prepare)


LOADERS: dict[str, Callable[..., nn.Module]] = {
    "onnx": _load_onnx, "openvino": _load_onnx, "adapter": _load_adapter, "plmkit": _load_checkpoint,
    "huggingface": _load_checkpoint}


@dataclass
class Fp32:
    """An fp32 model to quantize: PyTorch weights (``model``, exported first) or an fp32 graph (``graph``)."""
    path: Path
    config: dict[str, Any]              # plmkit config.json (task, head_config, model), as an export of it holds
    model: nn.Module | None = None      # PlmModel of a checkpoint, an HF directory or an adapter
    graph: Path | None = None           # model.onnx of an fp32 ONNX export


def load_fp32(path: str | Path) -> Fp32:
    """The fp32 model in ``path``: an fp32 graph directory as it is (an INT8 one is refused, naming the
    model it came from), else the PyTorch model ``load`` gives."""
    saved = peek(path)
    if saved.format in GRAPH_FILES:
        precision = saved.meta.get("precision")
        if precision != "fp32":
            raise PlmkitError(f"{saved.path}: already quantized (precision {precision}); "
                              f"quantize the fp32 model it came from ({saved.meta.get('parent')})")
        return Fp32(saved.path, saved.config, graph=saved.path / ONNX_FILE)
    model = load(saved.path)
    return Fp32(saved.path, config_json(model), model=model)


def describe(path: str | Path) -> dict[str, Any]:
    """What ``plmkit info`` prints: format, architecture, sizes, lineage."""
    saved = peek(path)
    model = load(path)
    cfg = model.config
    onnx = saved.format in GRAPH_FILES
    fmt = {**{g: f"{g} ({getattr(model, 'precision', '')})" for g in GRAPH_FILES},
           "adapter": f"plmkit adapter ({saved.meta.get('strategy', {}).get('spec', '?')})"}.get(saved.format, saved.format)
    return {
        "path": str(path), "format": fmt,
        "family": cfg.family, "task": model.task, "labels": model.head_config.get("labels"),
        "parameters": model.source_parameters() if onnx else model.num_parameters(),
        "layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
        "heads_per_layer": cfg.heads, "ffn_per_layer": cfg.ffn, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size, "max_position": cfg.max_position,
        "embedding_size": cfg.embedding_size, "share_layers": cfg.share_layers,
        "lineage": saved.meta,
        "size_bytes": sum(f.stat().st_size for f in saved.path.iterdir() if f.is_file()),
    }
