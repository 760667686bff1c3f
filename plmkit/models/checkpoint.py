"""Checkpoint directories: save, load, and read HF directories through ``models/hf``.

A plmkit checkpoint is a directory:
  config.json        {"plmkit": version, "task", "head_config", "model": {...}}
  model.safetensors  weights (tied weights stored once)
  tokenizer.json     + tokenizer_config.json, special_tokens_map.json
  plmkit.json        lineage: stage, parent, resolved stage config, metrics, time
Writes go to a temporary sibling renamed into place, so a crash never leaves a loadable half.
Loading never unpickles: safetensors, or ``torch.load(weights_only=True)`` for a legacy
``pytorch_model.bin``.

This module knows plain checkpoints (plmkit or HF) only. ONNX exports (``onnx_model``),
adapter-only directories (``plmkit.adapters.checkpoint``) and merged checkpoints that keep
adapter modules are told apart one level up: ``plmkit.loading.load`` loads any model directory.
"""
from __future__ import annotations

import errno
import json
import pickle
import stat
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from tokenizers import Tokenizer

from .. import __version__
from ..errors import PlmkitError
from ..io import atomic_dir, read_json, write_json
from ..tokenizer import save_tokenizer
from . import hf
from .config import ModelConfig, config_from_dict, config_to_dict
from .heads import CLASSIFY_POOLINGS, HEADS, HF_EXPORT_AS, check_head
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
    write_config(model, directory)
    # save_model stores each shared (tied) tensor once and records the aliases.
    save_model(model, str(directory / WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory, model_max_length=model.config.max_position)
    write_meta(directory, meta)


def config_json(model: PlmModel) -> dict[str, Any]:
    """config.json's content: the architecture, and the head's task and head_config."""
    return {"plmkit": __version__, "task": model.task, "head_config": model.head_config,
            "model": config_to_dict(model.config)}


def write_config(model: PlmModel, directory: Path) -> None:
    write_json(directory / "config.json", config_json(model))


def write_meta(directory: Path, meta: dict[str, Any] | None) -> None:
    """plmkit.json: creation time and plmkit version, then the caller's lineage fields."""
    write_json(directory / "plmkit.json", {"created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                           "plmkit": __version__, **(meta or {})})


def read_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path) / "plmkit.json"
    return read_json(p) if p.is_file() else {}


def check_model_dir(path: str | Path) -> Path:
    """``path`` when it is a directory, else a one-line error that says what it is instead."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PlmkitError(f"{path}: symlink loop (following its links leads back to itself)") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            dangling = " (a symlink whose target is missing)" if path.is_symlink() else ""
            raise PlmkitError(f"{path}: model directory not found{dangling}") from None
        raise PlmkitError(f"{path}: cannot read the model directory ({e.strerror})") from None
    if not stat.S_ISDIR(mode):
        raise PlmkitError(f"{path}: not a directory (a model is a directory holding config.json)")
    return path


def read_model_config(path: str | Path) -> dict[str, Any]:
    """config.json of a plmkit or HF directory, with a clear error when there is none."""
    path = check_model_dir(path)
    if not (path / "config.json").is_file():
        raise PlmkitError(f"{path}: not a model directory (no config.json)")
    raw = read_json(path / "config.json")
    if "plmkit" in raw:
        check_head_entries(raw, path / "config.json")
    return raw


def check_head_entries(raw: dict[str, Any], source: Path) -> None:
    """The head part of a plmkit config.json ("task", "head_config") is what the code expects, or
    one error naming the file: a damaged file would otherwise fail deep in the model code, as a
    KeyError or a TypeError. ("model" is checked by ``config_from_dict``.)"""
    task, head_config = raw.get("task", "base"), raw.get("head_config", {})
    if "model" not in raw:
        raise PlmkitError(f"{source}: no \"model\" entry (the architecture); the file is damaged")
    if task not in HEADS:
        raise PlmkitError(f"{source}: \"task\" must be one of {', '.join(HEADS)}, got {json.dumps(task)}")
    if not isinstance(head_config, dict):
        raise PlmkitError(f"{source}: \"head_config\" must be an object, got {json.dumps(head_config)}")
    n = head_config.get("num_labels")
    if task in ("classify", "token") and not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise PlmkitError(f"{source}: head_config.num_labels must be a whole number >= 1, got {json.dumps(n)}")
    labels = head_config.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)
                                   and len(labels) == (n if n is not None else len(labels))):
        raise PlmkitError(f"{source}: head_config.labels must be a list of {n or 'the'} label names"
                          f"{' (num_labels)' if n else ''}, got {json.dumps(labels)[:200]}")
    if head_config.get("pooling", "cls") not in CLASSIFY_POOLINGS:
        raise PlmkitError(f"{source}: head_config.pooling must be one of {', '.join(CLASSIFY_POOLINGS)}, "
                          f"got {json.dumps(head_config['pooling'])}")
    dropout = head_config.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise PlmkitError(f"{source}: head_config.dropout must be a number, got {json.dumps(dropout)}")
    for key, kind, what in (("preprocess", dict, "an object"), ("finetune_task", str, "a task name")):
        if key in head_config and not isinstance(head_config[key], kind):
            raise PlmkitError(f"{source}: head_config.{key} must be {what}, got {json.dumps(head_config[key])}")


def load_model(path: str | Path, task: str | None = None, head_config: dict[str, Any] | None = None,
               dtype: torch.dtype | None = None,
               prepare: Callable[[PlmModel], None] | None = None) -> PlmModel:
    """Load a plain plmkit or local HF (BERT / GPT-2) checkpoint (``plmkit.loading.load``: any model directory).

    With ``task`` different from the saved one, a fresh head of that task is attached and only
    the backbone weights are loaded (fine-tuning a pre-trained model). ``prepare`` runs on the
    freshly built model before its weights are assigned: the loader passes one that re-inserts
    the modules a merged checkpoint kept (Houlsby adapters), so the saved names match.
    """
    path = Path(path)
    raw = read_model_config(path)
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
    if not same_task:
        state = {k: v for k, v in state.items() if k.startswith("backbone.")}

    def build() -> PlmModel:
        model = PlmModel(cfg, saved_task if same_task else task, saved_head if same_task else head_config)
        if prepare is not None:
            prepare(model)
        return model

    # Built on the meta device, then the loaded tensors become the parameters (no copy): a randomly
    # initialised model beside the loaded weights would double the peak memory of loading (a 135M
    # decoder: +540 MB) and spend the time of an initialisation nobody reads. A fresh head (another
    # task) needs its initialisation: that model is built for real and the weights copied in.
    with torch.device("meta"):
        model = build()
    if _missing(model, state, path, strict_head=same_task):
        model = build()
        expected = model.state_dict()
        model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    else:
        _assign(model, state)
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


def _missing(model: PlmModel, state: dict[str, torch.Tensor], path: Path, strict_head: bool) -> list[str]:
    """The parameters ``state`` lacks (only a head's may, and only when ``strict_head`` is False); a
    weight of the wrong shape or a missing backbone weight is an error naming the checkpoint."""
    expected = model.state_dict()
    tied = _tied_names(model)
    missing = [k for k in expected if k not in state and k not in tied]
    if (strict_head and missing) or any(not k.startswith("head.") for k in missing):
        raise PlmkitError(f"{path}: weights missing for {len(missing)} parameters, e.g. {missing[:3]}")
    for key, value in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            raise PlmkitError(f"{path}: weight {key} has shape {tuple(value.shape)}, "
                              f"config says {tuple(expected[key].shape)}")
    return missing


def _assign(model: PlmModel, state: dict[str, torch.Tensor]) -> None:
    """Make the tensors of ``state`` the parameters of a model built on the meta device, in the
    model's dtype (a bf16 HF checkpoint still loads as an fp32 model), each with a storage of its own
    (safetensors refuses to save a view of a larger storage, and the view would keep all of it alive);
    then tie again what was tied: assigning replaces a parameter object, not its aliases."""
    aliases = _aliases(model)
    expected = model.state_dict()
    model.load_state_dict({k: _owned(v.to(expected[k].dtype)) for k, v in state.items() if k in expected},
                          strict=False, assign=True)
    for alias, source in aliases.items():
        owner, _, leaf = alias.rpartition(".")
        setattr(model.get_submodule(owner), leaf, model.get_parameter(source))


def _owned(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor with a storage of its own: a copy where it is a view of a larger one (a row
    block of a fused HF weight, e.g. q of ModernBERT's Wqkv, is contiguous and still shares it)."""
    whole = t.is_contiguous() and t.storage_offset() == 0 and \
        t.untyped_storage().nbytes() == t.numel() * t.element_size()
    return t if whole else t.clone(memory_format=torch.contiguous_format)


def _aliases(model: PlmModel) -> dict[str, str]:
    """Tied parameter name -> the name of the parameter it aliases (the first one seen)."""
    seen: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            aliases[name] = seen[id(p)]
        else:
            seen[id(p)] = name
    return aliases


def _tied_names(model: PlmModel) -> set[str]:
    """Parameter names that alias an earlier parameter (e.g. the MLM decoder = word embeddings)."""
    return set(_aliases(model))


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    st, index, legacy = path / WEIGHTS, path / "model.safetensors.index.json", path / "pytorch_model.bin"
    if st.is_file():
        return read_safetensors(st)
    if index.is_file():
        files = sorted(set(read_json(index).get("weight_map", {}).values()))
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(read_safetensors(path / name))
        return state
    if legacy.is_file():
        try:
            return torch.load(legacy, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:  # weights_only refuses code
            raise PlmkitError(f"{legacy}: cannot load safely ({str(e).splitlines()[0][:120]})") from None
    raise PlmkitError(f"{path}: no weights found (expected {WEIGHTS}; plmkit.loading.load also reads "
                      "adapter-only and ONNX directories)")


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError) as e:
        raise PlmkitError(f"{file}: corrupt or unreadable safetensors file ({str(e)[:120]})") from None


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
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_hf_files(model, tmp, tokenizer)
    return Path(out_dir)


def write_hf_files(model: PlmModel, directory: Path, tokenizer: Tokenizer | None) -> None:
    """config.json, model.safetensors (and the tokenizer) in the Hugging Face layout, into an existing
    directory. A head transformers has no class for (embed) goes out as the head it amounts to."""
    from safetensors.torch import save_file

    problem = hf_pooling_problem(model.config, model.task, model.head_config)
    if problem:
        raise PlmkitError(problem)
    task = HF_EXPORT_AS.get(model.task, model.task)
    hf_cfg = hf.config_to_hf(model.config, task, model.head_config.get("labels"))
    tied = _tied_names(model)
    state = {k: v for k, v in model.state_dict().items()
             if k not in tied and (task == model.task or not k.startswith("head."))}
    hf_state = hf.state_to_hf(state, model.config, task)
    (directory / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    save_file(hf_state, str(directory / WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory, model_max_length=model.config.max_position,
                       model_input_names=model.config.input_names)
