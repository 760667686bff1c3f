"""Checkpoint directories: save, load, and read HF directories through ``models/hf``.

A plmkit checkpoint is a directory:
  config.json        {"plmkit": version, "task", "head_config", "model": {...}}
  model.safetensors  weights (tied weights stored once)
  tokenizer.json     + tokenizer_config.json, special_tokens_map.json
  plmkit.json        lineage: stage, parent, resolved stage config, metrics, time
Writes go to a temporary sibling renamed into place, so a crash never leaves a loadable half.
Loading never unpickles: safetensors, or ``torch.load(weights_only=True)`` for a legacy
``pytorch_model.bin``.
"""
from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from tokenizers import Tokenizer

from .. import __version__
from ..errors import PlmkitError
from ..io import atomic_dir, read_json, write_json
from . import hf
from .config import ModelConfig, config_from_dict, config_to_dict
from .heads import HEADS, check_head
from .model import PlmModel

WEIGHTS = "model.safetensors"


def save_checkpoint(model: PlmModel, out_dir: str | Path, tokenizer: Tokenizer | None = None,
                    meta: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write a complete checkpoint directory atomically; returns its path."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_checkpoint_files(model, tmp, tokenizer, meta)
    return out_dir


def write_checkpoint_files(model: PlmModel, directory: Path, tokenizer: Tokenizer | None = None,
                           meta: dict[str, Any] | None = None) -> None:
    """Write the checkpoint files into an existing (usually temporary) directory."""
    from ..tokenizer import save_tokenizer

    write_json(directory / "config.json", {
        "plmkit": __version__, "task": model.task, "head_config": model.head_config,
        "model": config_to_dict(model.config)})
    # save_model stores each shared (tied) tensor once and records the aliases.
    save_model(model, str(directory / WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory, model_max_length=model.config.max_position)
    write_json(directory / "plmkit.json", {"created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                           "plmkit": __version__, **(meta or {})})


def is_plmkit_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    return "plmkit" in read_json(cfg)


def read_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path) / "plmkit.json"
    return read_json(p) if p.is_file() else {}


def read_model_config(path: str | Path) -> dict[str, Any]:
    """config.json of a plmkit or HF directory, with a clear error when there is none."""
    path = Path(path)
    if not path.is_dir():
        raise PlmkitError(f"{path}: model directory not found")
    if not (path / "config.json").is_file():
        raise PlmkitError(f"{path}: not a model directory (no config.json)")
    return read_json(path / "config.json")


def load_model(path: str | Path, task: str | None = None, head_config: dict[str, Any] | None = None,
               dtype: torch.dtype | None = None) -> PlmModel:
    """Load a plmkit or local HF (BERT / GPT-2) directory.

    With ``task`` different from the saved one, a fresh head of that task is attached and only
    the backbone weights are loaded (fine-tuning a pre-trained model).
    """
    path = Path(path)
    raw = read_model_config(path)
    meta = read_meta(path) if "plmkit" in raw else {}
    if meta.get("format") == ADAPTER_FORMAT:
        return _load_adapter(path, raw, meta, task, dtype)
    if "plmkit" in raw:
        cfg = config_from_dict(raw["model"], source=str(path / "config.json"))
        saved_task, saved_head = raw.get("task", "base"), raw.get("head_config", {})
        state = _load_weights(path)
    else:
        cfg, saved_task, saved_head = hf.read_config(raw, str(path / "config.json"))
        state = hf.state_from_hf(_load_weights(path), cfg, saved_task)
        # HF checkpoints may be saved without the pooler (BertForMaskedLM): then there is none
        cfg.use_pooler = cfg.use_pooler and any(k.startswith("backbone.pooler.") for k in state)
    same_task = task is None or task == saved_task
    model = PlmModel(cfg, saved_task if same_task else task, saved_head if same_task else head_config)
    if not same_task:
        state = {k: v for k, v in state.items() if k.startswith("backbone.")}
    if isinstance(meta.get("strategy"), dict) and meta["strategy"].get("structural"):
        _restore_structure(model, meta["strategy"], path)
    _assign(model, state, path, strict_head=same_task)
    if dtype is not None:
        model.to(dtype)
    return model


# An adapter-only checkpoint (plmkit finetune with probe/lora/adapter/bitfit) holds the
# strategy's own weights and the head in adapter.safetensors; plmkit.json names the parent
# model and the strategy: {"format": "plmkit-adapter", "parent": <abs path>, "strategy": {...}}.
ADAPTER_FORMAT = "plmkit-adapter"
ADAPTER_WEIGHTS = "adapter.safetensors"


def _load_adapter(path: Path, raw: dict[str, Any], meta: dict[str, Any], task: str | None,
                  dtype: torch.dtype | None) -> PlmModel:
    """Parent model + fresh head of the saved task, strategy re-applied, adapter weights loaded."""
    from ..adapters import load_adapter_state, restore_strategy

    saved_task = raw.get("task", "base")
    if task is not None and task != saved_task:
        raise PlmkitError(f"{path}: adapter checkpoint for task '{saved_task}', not '{task}' "
                          "(merge it with 'plmkit merge' to use it as a base model)")
    parent = meta.get("parent")
    if not isinstance(parent, str) or not Path(parent).is_dir():
        raise PlmkitError(f"{path}: adapter checkpoint whose parent model {parent!r} is not found "
                          "(it holds only the adapter weights; restore the parent, or 'plmkit merge' "
                          "while it exists to get a standalone model)")
    head_config = raw.get("head_config", {})
    model = replace_head(load_model(parent, task=saved_task, head_config=head_config), saved_task, head_config)
    restore_strategy(model, meta.get("strategy"), source=str(path / "plmkit.json"))
    load_adapter_state(model, _read_safetensors(path / ADAPTER_WEIGHTS), source=str(path / ADAPTER_WEIGHTS))
    if dtype is not None:
        model.to(dtype)
    return model


def replace_head(model: PlmModel, task: str, head_config: dict[str, Any]) -> PlmModel:
    """Give ``model`` a freshly initialised ``task`` head (the backbone, adapters included, is kept)."""
    check_head(task, model.config)
    if head_config.get("pooling") in ("cls", "mean") and model.backbone.pooler is not None:
        model.config.use_pooler = False     # nothing reads the pooler now: drop it (no dead weights to train or save)
        model.backbone.pooler = None
    model.task, model.head_config = task, dict(head_config)
    model.head = HEADS[task](model.config, model.backbone, model.head_config)
    return model


def _restore_structure(model: PlmModel, strategy: dict[str, Any], path: Path) -> None:
    """Re-insert the modules a structural strategy added (Houlsby adapters kept by a merge),
    so the saved names match; the model is then plain again (everything trainable)."""
    from ..adapters import restore_strategy

    restore_strategy(model, strategy, source=str(path / "plmkit.json"))
    model.plmkit_strategy = None
    model.requires_grad_(True)


def _assign(model: PlmModel, state: dict[str, torch.Tensor], path: Path, strict_head: bool) -> None:
    expected = model.state_dict()
    tied = _tied_names(model)
    missing = [k for k in expected if k not in state and k not in tied]
    if not strict_head:
        missing = [k for k in missing if not k.startswith("head.")]
    if missing:
        raise PlmkitError(f"{path}: weights missing for {len(missing)} parameters, e.g. {missing[:3]}")
    for key, value in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            raise PlmkitError(f"{path}: weight {key} has shape {tuple(value.shape)}, "
                              f"config says {tuple(expected[key].shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def _tied_names(model: PlmModel) -> set[str]:
    """Parameter names that alias an earlier parameter (e.g. the MLM decoder = word embeddings)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        else:
            seen[id(p)] = name
    return tied


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    st, index, legacy = path / WEIGHTS, path / "model.safetensors.index.json", path / "pytorch_model.bin"
    if st.is_file():
        return _read_safetensors(st)
    if index.is_file():
        files = sorted(set(read_json(index).get("weight_map", {}).values()))
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(_read_safetensors(path / name))
        return state
    if legacy.is_file():
        try:
            return torch.load(legacy, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:  # weights_only refuses code
            raise PlmkitError(f"{legacy}: cannot load safely ({str(e).splitlines()[0][:120]})") from None
    raise PlmkitError(f"{path}: no weights found (expected {WEIGHTS})")


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError) as e:
        raise PlmkitError(f"{file}: corrupt or unreadable safetensors file ({str(e)[:120]})") from None


def load_tokenizer(path: str | Path) -> Tokenizer:
    from ..tokenizer import load_tokenizer as _load

    return _load(path)


def describe(path: str | Path) -> dict[str, Any]:
    """What ``plmkit info`` prints: architecture, sizes, lineage."""
    from ..compress.onnx_model import is_onnx_dir, load_onnx_dir

    path = Path(path)
    onnx = is_onnx_dir(path)
    model = load_onnx_dir(path) if onnx else load_model(path)
    cfg = model.config
    raw = read_model_config(path)
    fmt = f"onnx ({model.precision})" if onnx else "plmkit" if "plmkit" in raw else "huggingface"
    return {
        "path": str(path), "format": fmt,
        "family": cfg.family, "task": model.task, "labels": model.head_config.get("labels"),
        "parameters": PlmModel(cfg, model.task, model.head_config).num_parameters() if onnx
        else model.num_parameters(), "layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
        "heads_per_layer": cfg.heads, "ffn_per_layer": cfg.ffn, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size, "max_position": cfg.max_position,
        "albert": {"embedding_size": getattr(cfg, "embedding_size", None),
                   "share_layers": getattr(cfg, "share_layers", False)},
        "lineage": read_meta(path),
        "size_bytes": sum(f.stat().st_size for f in path.iterdir() if f.is_file()),
    }


def hf_pooling_problem(cfg: ModelConfig, task: str, head_config: dict[str, Any]) -> str | None:
    """Why transformers would read another sentence vector than this classification head, or None.

    transformers' *ForSequenceClassification reads BERT's pooler, or (families with a head dense of
    their own: RoBERTa, ELECTRA, ...) their ``pooling``; a head fine-tuned with another pooling
    (``head_config["pooling"]``) has no HF equivalent.
    """
    pooling = head_config.get("pooling") if task == "classify" and not cfg.causal else None
    hf_reads = "pooler" if cfg.cls_head is None else cfg.pooling
    if pooling is None or pooling == hf_reads:
        return None
    return (f"the classification head reads '{pooling}' pooling, transformers' {cfg.layout} classifier reads "
            f"'{hf_reads}' (fine-tune with --pooling {hf_reads} for a model transformers can load)")


def export_hf(model: PlmModel, out_dir: str | Path, tokenizer: Tokenizer | None, overwrite: bool = False) -> Path:
    """Write a directory that ``transformers.AutoModel.from_pretrained`` loads."""
    from safetensors.torch import save_file

    from ..tokenizer import save_tokenizer

    problem = hf_pooling_problem(model.config, model.task, model.head_config)
    if problem:
        raise PlmkitError(problem)
    hf_cfg = hf.config_to_hf(model.config, model.task, model.head_config.get("labels"))
    state = {k: v for k, v in model.state_dict().items() if k not in _tied_names(model)}
    hf_state = hf.state_to_hf(state, model.config, model.task)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        save_file(hf_state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp, model_max_length=model.config.max_position)
    return Path(out_dir)
