"""Model configs and size presets.

One dataclass per family. Per-layer head counts and FFN widths are explicit lists so a
pruned model is a real, smaller model: layer i has ``heads[i]`` heads of ``head_dim`` each
and an FFN of width ``ffn[i]``. ``config.json`` in a checkpoint is ``asdict`` of these
plus a ``family`` key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import PlmkitError


@dataclass
class EncoderConfig:
    """BERT family (post-LN, or pre-LN on request), with optional ALBERT factorised embeddings and layer sharing."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12                       # default heads per layer
    intermediate_size: int = 3072             # default FFN width per layer
    head_dim: int | None = None               # None -> hidden_size // num_heads
    heads: list[int] | None = None            # per-layer heads (after pruning)
    ffn: list[int] | None = None              # per-layer FFN width (after pruning)
    max_position: int = 512
    type_vocab_size: int = 2
    embedding_size: int | None = None         # ALBERT: E < H factorised embeddings
    share_layers: bool = False                # ALBERT: one layer's weights reused num_layers times
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"
    pad_token_id: int = 0
    use_pooler: bool = True
    pre_ln: bool = False                      # LN before each sub-layer + a final LN (GPT-2's layout);
                                              # not expressible in the HF BERT layout

    def __post_init__(self) -> None:
        _resolve_sizes(self)
        if self.share_layers and (len(set(self.heads)) > 1 or len(set(self.ffn)) > 1):
            raise PlmkitError("share_layers needs identical sizes in every layer")

    @property
    def family(self) -> str:
        return "encoder"


@dataclass
class DecoderConfig:
    """GPT-2 family (pre-LN), tied input/output embeddings, learned positions."""

    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int | None = None      # None -> 4 * hidden_size
    head_dim: int | None = None
    heads: list[int] | None = None
    ffn: list[int] | None = None
    max_position: int = 1024
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_new"
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        _resolve_sizes(self)

    @property
    def family(self) -> str:
        return "decoder"


def _resolve_sizes(cfg: EncoderConfig | DecoderConfig) -> None:
    """Fill head_dim and the per-layer head / FFN lists from the uniform defaults."""
    if cfg.head_dim is None:
        if cfg.hidden_size % cfg.num_heads:
            raise PlmkitError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        cfg.head_dim = cfg.hidden_size // cfg.num_heads
    cfg.heads = _per_layer(cfg.heads, cfg.num_heads, cfg.num_layers, "heads")
    cfg.ffn = _per_layer(cfg.ffn, cfg.intermediate_size, cfg.num_layers, "ffn")


def _per_layer(values: list[int] | None, default: int, n: int, name: str) -> list[int]:
    if values is None:
        return [default] * n
    values = [int(v) for v in values]
    if len(values) != n:
        raise PlmkitError(f"config: '{name}' has {len(values)} entries for {n} layers")
    if any(v < 0 for v in values):
        raise PlmkitError(f"config: '{name}' has a negative size")
    return values


# BERT miniatures (Turc et al. 2019) and GPT-2 sizes. Heads follow H / 64.
BERT_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "mini": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "small": dict(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),
    "medium": dict(num_layers=8, hidden_size=512, num_heads=8, intermediate_size=2048),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
}
GPT_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2),
    "mini": dict(num_layers=4, hidden_size=256, num_heads=4),
    "small": dict(num_layers=6, hidden_size=512, num_heads=8),
    "medium": dict(num_layers=8, hidden_size=512, num_heads=8),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12),
}


def preset(arch: str, size: str, **overrides: Any) -> EncoderConfig | DecoderConfig:
    table, cls = (BERT_PRESETS, EncoderConfig) if arch == "bert" else (GPT_PRESETS, DecoderConfig)
    if arch not in ("bert", "gpt"):
        raise PlmkitError(f"unknown architecture '{arch}' (choose bert or gpt)")
    if size not in table:
        raise PlmkitError(f"unknown size '{size}' for {arch} (choose {', '.join(table)})")
    return cls(**{**table[size], **overrides})


def config_to_dict(cfg: EncoderConfig | DecoderConfig) -> dict[str, Any]:
    return {"family": cfg.family, **dataclasses.asdict(cfg)}


def config_from_dict(d: dict[str, Any], source: str = "config.json") -> EncoderConfig | DecoderConfig:
    d = dict(d)
    family = d.pop("family", None)
    classes = {"encoder": EncoderConfig, "decoder": DecoderConfig}
    if family not in classes:
        raise PlmkitError(f"{source}: 'family' must be one of {sorted(classes)}, got {family!r}")
    cls = classes[family]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise PlmkitError(f"{source}: unknown model config keys {sorted(unknown)}")
    return cls(**d)
