"""Checkpoints to and from the Hugging Face layout: one converter record per family.

A ``Family`` (one module per family in this package) says which HF ``model_type`` values it
reads, which HF architecture class is which plmkit head, how config.json maps to a
``ModelConfig`` and back, and how parameter names map: a table of (HF module path, plmkit
module path) pairs, ``{i}`` standing for a layer index, that serves both directions. Tensors
that are not a plain rename (GPT-2's transposed Conv1D, ModernBERT's fused Wqkv, ...) go
through the family's ``tensors_in`` / ``tensors_out``.

Export checks that the layout can express the model by a round trip of the config: whatever
``config_from_hf(config_to_hf(cfg))`` does not give back (per-layer sizes after pruning, a
pre-LN BERT, ...) is named in the error.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor

from ...errors import PlmkitError
from ..config import ModelConfig

State = dict[str, Tensor]
NamePairs = list[tuple[str, str]]
# in:  (HF state with the base prefix stripped, plmkit state being built, config, task) -> None
# out: (plmkit state, HF body being built (gets the prefix), HF top-level keys, config, task) -> None
TensorHook = Callable[[State, State, ModelConfig, str], None]
TensorOutHook = Callable[[State, State, State, ModelConfig, str], None]


@dataclass(frozen=True)
class Family:
    name: str                                   # ModelConfig.layout
    model_types: tuple[str, ...]                # HF config.json "model_type" values it reads
    archs: dict[str, str]                       # HF architecture class -> plmkit head (task)
    prefix: str                                 # the base model's prefix inside head models, e.g. "bert."
    names: NamePairs                            # backbone (HF, plmkit) module paths
    heads: dict[str, NamePairs]                 # plmkit head -> its (HF, plmkit) module paths
    config_from_hf: Callable[[dict[str, Any], str], ModelConfig]
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]
    tensors_in: TensorHook | None = None        # fills what a rename cannot (split, transpose)
    tensors_out: TensorOutHook | None = None
    extra_config: dict[str, Any] = field(default_factory=dict)   # written into every exported config


# Architectures plmkit names but cannot build: the missing feature, for the error message.
REFUSED: dict[str, str] = {
    "deberta": "disentangled relative-position attention (DeBERTa's c2p/p2c terms)",
    "deberta-v2": "disentangled relative-position attention (DeBERTa's c2p/p2c terms)",
    "mobilebert": "MobileBERT's bottleneck blocks (stacked FFNs inside an intra-block bottleneck, NoNorm)",
}
FAMILIES: dict[str, Family] = {}            # layout name -> Family, filled by register()
_BY_TYPE: dict[str, Family] = {}


def register(family: Family) -> Family:
    FAMILIES[family.name] = family
    for t in family.model_types:
        _BY_TYPE[t] = family
    return family


def supported() -> str:
    return ", ".join(sorted(a for f in FAMILIES.values() for a in f.archs))


# HF activation names -> plmkit's (models/config.ACTIVATIONS) and back.
ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new",
               "relu": "relu", "silu": "silu", "swish": "silu", "tanh": "tanh"}


def activation(name: Any, source: str) -> str:
    if name not in ACT_FROM_HF:
        raise PlmkitError(f"{source}: activation {name!r} is not supported (supported: {', '.join(ACT_FROM_HF)})")
    return ACT_FROM_HF[name]


# ----------------------------------------------------------------------------- renaming

def _compile(table: NamePairs, reverse: bool) -> list[tuple[re.Pattern, str]]:
    """(src, dst) module paths -> regexes over full parameter names, keeping the suffix."""
    out = []
    for hf, ours in table:
        src, dst = (ours, hf) if reverse else (hf, ours)
        pattern = re.escape(src).replace(re.escape("{i}"), r"(?P<i>\d+)")
        out.append((re.compile(rf"^{pattern}\.(?P<rest>[^.]+)$"), dst))
    return out


def rename(state: State, table: NamePairs, reverse: bool = False) -> State:
    """Rename keys through the table; keys matching no entry are left out (the caller checks)."""
    rules = _compile(table, reverse)
    out: State = {}
    for key, value in state.items():
        for rx, dst in rules:
            m = rx.match(key)
            if m:
                new = dst.replace("{i}", m.group("i")) if "{i}" in dst else dst
                rest = {"gamma": "weight", "beta": "bias"}.get(m.group("rest"), m.group("rest"))
                out[f"{new}.{rest}"] = value
                break
    return out


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if prefix and key.startswith(prefix) else key


# ----------------------------------------------------------------------------- HF -> plmkit

def family_of(hf_cfg: dict[str, Any], source: str) -> tuple[Family, str]:
    """(family, plmkit head) of an HF config, or a clear error listing what is supported."""
    model_type = hf_cfg.get("model_type")
    if model_type in REFUSED:
        raise PlmkitError(f"{source}: {model_type} is not supported: plmkit's model core has no "
                          f"{REFUSED[model_type]}; supported HF architectures: {supported()}")
    family = _BY_TYPE.get(model_type)
    if family is None:
        raise PlmkitError(f"{source}: unsupported model_type {model_type!r}; supported HF architectures: "
                          f"{supported()}")
    archs = hf_cfg.get("architectures") or []
    arch = archs[0] if archs else next(iter(family.archs))
    if arch not in family.archs:
        raise PlmkitError(f"{source}: unsupported architecture {arch!r}; supported: {supported()}")
    return family, family.archs[arch]


def labels_from_hf(hf: dict[str, Any]) -> list[str] | None:
    id2label = hf.get("id2label")
    if not id2label or not isinstance(id2label, dict):
        return None
    return [id2label[k] for k in sorted(id2label, key=lambda k: int(k))]


def read_config(hf: dict[str, Any], source: str) -> tuple[ModelConfig, str, dict[str, Any]]:
    """(model config, head, head_config) of an HF config.json."""
    family, task = family_of(hf, source)
    try:
        cfg = family.config_from_hf(hf, source)
    except PlmkitError as e:   # ModelConfig's own checks (sizes, choices) do not know the file
        if str(e).startswith(source):
            raise
        raise PlmkitError(f"{source}: {str(e).removeprefix('config: ')}") from None
    # transformers >= 5 leaves out id2label when it is its default: 2 labels, LABEL_0 and LABEL_1
    labels = labels_from_hf(hf) or [f"LABEL_{i}" for i in range(int(hf.get("num_labels", 2)))]
    head_config = {"num_labels": len(labels), "labels": labels} if labels and task in ("classify", "token") else {}
    return cfg, task, head_config


def state_from_hf(state: State, cfg: ModelConfig, task: str) -> State:
    """HF parameter names -> plmkit names for the backbone and (when it matches) the head."""
    family = FAMILIES[cfg.layout]
    body = {_strip(k, family.prefix): v for k, v in state.items()}
    out = rename(body, family.names + family.heads.get(task, []))
    if family.tensors_in is not None:
        family.tensors_in(body, out, cfg, task)
    return out


# ----------------------------------------------------------------------------- plmkit -> HF

# Fields that do not change what the model computes (or that the weights decide on load).
_NOT_ARCHITECTURE = {"hidden_dropout", "attention_dropout", "use_pooler", "layout"}


def check_expressible(cfg: ModelConfig, task: str) -> Family:
    """The family to export with, or a clear error naming what its HF layout cannot hold."""
    family = FAMILIES.get(cfg.layout)
    if family is None:
        raise PlmkitError(f"no Hugging Face layout '{cfg.layout}' (known: {', '.join(sorted(FAMILIES))})")
    if task not in family.archs.values():
        raise PlmkitError(f"task '{task}' has no HF {family.name} architecture "
                          f"(exportable: {', '.join(sorted(set(family.archs.values())))})")
    try:
        back = family.config_from_hf({**family.config_to_hf(cfg), "model_type": family.model_types[0]}, "export")
        lost = [f.name for f in dataclasses.fields(cfg)
                if f.name not in _NOT_ARCHITECTURE and getattr(back, f.name) != getattr(cfg, f.name)]
    except PlmkitError as e:   # not even readable back (a pruned first layer of 3 heads in H = 32, ...)
        lost = [n for n in ("heads", "ffn") if len(set(getattr(cfg, n))) > 1]
        if not lost:
            raise PlmkitError(f"the HF {family.name} layout cannot express this model ({e}); "
                              "export it with --format onnx") from None
    if lost:
        shown = "; ".join(dict.fromkeys(_LOST.get(n, f"{n}={getattr(cfg, n)!r}") for n in lost))
        raise PlmkitError(f"the HF {family.name} layout cannot express this model ({shown}); "
                          "export it with --format onnx")
    return family


# What a user knows a lost choice as.
_LOST = {"heads": "per-layer head/FFN sizes (pruned)", "ffn": "per-layer head/FFN sizes (pruned)",
         "pre_ln": "pre-LN blocks", "share_layers": "shared layers (ALBERT)",
         "embedding_size": "factorised embeddings (ALBERT)"}


def config_to_hf(cfg: ModelConfig, task: str, labels: list[str] | None) -> dict[str, Any]:
    family = check_expressible(cfg, task)
    arch = next(a for a, t in family.archs.items() if t == task)
    hf = {"model_type": family.model_types[0], "architectures": [arch], **family.config_to_hf(cfg),
          **family.extra_config}
    if labels:
        hf["id2label"] = {str(i): name for i, name in enumerate(labels)}
        hf["label2id"] = {name: i for i, name in enumerate(labels)}
    return hf


def state_to_hf(state: State, cfg: ModelConfig, task: str) -> State:
    family = FAMILIES[cfg.layout]
    body = rename(state, family.names, reverse=True)
    top = rename(state, family.heads.get(task, []), reverse=True)
    if family.tensors_out is not None:
        family.tensors_out(state, body, top, cfg, task)
    prefix = "" if task == "base" else family.prefix
    return {k: v.contiguous() for k, v in {**{prefix + k: v for k, v in body.items()}, **top}.items()}


# The families register themselves on import (the order fixes nothing but the listing).
from . import albert, bert, distilbert, electra, ernie, gpt2, llama, modernbert, roberta  # noqa: E402,F401
