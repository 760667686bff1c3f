"""The adapter checkpoint format: what a parameter-efficient fine-tune saves, and how it comes back.

``plmkit finetune`` with probe / lora / adapter / bitfit keeps the parent's weights untouched,
so it saves only what trained, beside a pointer to the parent:
  config.json          as a plain checkpoint's: the fine-tuned head's task and head_config, the architecture
  adapter.safetensors  the strategy's own weights (LoRA A/B, adapter bottlenecks, biases) and the head
  tokenizer.json       + tokenizer_config.json, special_tokens_map.json
  plmkit.json          {"format": "plmkit-adapter", "parent": <absolute path>, "strategy": {...}, lineage}
Loading one (``plmkit.loading.load`` finds it by ``is_adapter``): the parent model, given a fresh
head of the saved task (``attach``), the strategy re-applied, then the adapter weights copied in.
``plmkit merge`` turns it into a standalone checkpoint; Houlsby adapters cannot be folded into
the weights and stay as modules, recorded in plmkit.json so ``restore_structure`` re-inserts them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from tokenizers import Tokenizer

from ..errors import PlmkitError
from ..models.checkpoint import read_safetensors, replace_head, write_config, write_meta
from ..models.model import PlmModel
from ..tokenizer import save_tokenizer
from .strategies import adapter_state_dict, load_adapter_state, restore_strategy

ADAPTER_FORMAT = "plmkit-adapter"
ADAPTER_WEIGHTS = "adapter.safetensors"


def is_adapter(meta: dict[str, Any]) -> bool:
    """Whether a directory's plmkit.json (``meta``) describes an adapter-only checkpoint."""
    return meta.get("format") == ADAPTER_FORMAT


def write_adapter_files(model: PlmModel, directory: Path, tokenizer: Tokenizer | None,
                        meta: dict[str, Any]) -> None:
    """Write an adapter-only checkpoint of ``model`` (a strategy applied) into an existing directory.

    ``meta`` must name the parent (absolute path) and the strategy (``strategy_meta``).
    """
    write_config(model, directory)
    save_file(adapter_state_dict(model), str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory, model_max_length=model.config.max_position)
    write_meta(directory, {"format": ADAPTER_FORMAT, **meta})


def parent_dir(path: Path, meta: dict[str, Any]) -> Path:
    """The parent model directory an adapter checkpoint points to, or why it cannot be used."""
    parent = meta.get("parent")
    if not isinstance(parent, str) or not Path(parent).is_dir():
        raise PlmkitError(f"{path}: adapter checkpoint whose parent model {parent!r} is not found "
                          "(it holds only the adapter weights; restore the parent, or 'plmkit merge' "
                          "while it exists to get a standalone model)")
    return Path(parent)


def attach(parent: PlmModel, path: Path, task: str, head_config: dict[str, Any],
           meta: dict[str, Any]) -> PlmModel:
    """The loaded ``parent`` with the adapter checkpoint in ``path`` on it: a fresh ``task``
    head when the adapter trained one (else the parent's frozen pre-trained head, e.g. an untied
    LM head), the recorded strategy re-applied, then the saved weights copied in."""
    state = read_safetensors(path / ADAPTER_WEIGHTS)
    if any(k.startswith("head.") for k in state):
        model = replace_head(parent, task, head_config)
    else:
        model, model.head_config = parent, dict(head_config)
    restore_strategy(model, meta.get("strategy"), source=str(path / "plmkit.json"))
    load_adapter_state(model, state, source=str(path / ADAPTER_WEIGHTS))
    return model


def kept_structure(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The strategy a merged checkpoint kept as modules (Houlsby adapters), if any."""
    strategy = meta.get("strategy")
    return strategy if isinstance(strategy, dict) and strategy.get("structural") else None


def restore_structure(model: PlmModel, strategy: dict[str, Any], source: str) -> None:
    """Re-insert the modules a structural strategy added (Houlsby adapters kept by a merge),
    so the saved names match; the model is then plain again (everything trainable)."""
    restore_strategy(model, strategy, source=source)
    model.plmkit_strategy = None
    model.requires_grad_(True)
