"""Model configs: one typed record of architecture choices, and size presets.

A model family is data, not code: ``ModelConfig`` holds every choice the backbone is built
from (positions, normalisation, FFN, attention pattern, biases, embedding projection, heads),
and ``models/layers.py`` picks the small module for each choice from a registry. BERT,
RoBERTa, ALBERT, ModernBERT, GPT-2 and Llama are different values of the same fields.
``EncoderConfig`` and ``DecoderConfig`` only change the defaults (BERT's and GPT-2's), so a
config written as ``EncoderConfig(hidden_size=256, ...)`` reads as it always did.

Per-layer head counts and FFN widths are explicit lists so a pruned model is a real, smaller
model: layer i has ``heads[i]`` query heads of ``head_dim`` each, sharing ``kv_heads[i]``
key/value heads (grouped-query attention; equal to heads[i] for plain multi-head attention),
and an FFN of width ``ffn[i]``. ``config.json`` in a checkpoint is ``asdict`` of the config
plus a ``family`` key ("encoder" or "decoder", from ``causal``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ..errors import PlmkitError

# The choices each field may take, each naming what builds it in models/layers.py (as litgpt's
# config names its classes): a choice is declared here only, and layers.py looks the name up
# (``layers.implementation``). None: nothing to build (rotary positions act on q and k, no table).
POSITIONS = {"learned": "learned_position_ids", "learned_offset": "offset_position_ids", "rotary": None,
             "none": None}
NORMS = {"layernorm": "layer_norm", "rmsnorm": "rms_norm"}
FFN_KINDS = {"plain": "PlainFFN", "gated": "GatedFFN"}
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu", "silu": "silu", "tanh": "tanh"}
ROPE_KINDS = {"default": "rope_default", "linear": "rope_linear", "llama3": "rope_llama3"}
# A sentence vector from token states: the first token's ([CLS]) or the mean of them (the config's
# ``pooling``, a classification or embedding head's, ``plmkit embed --pooling``).
POOLINGS = ("cls", "mean")


@dataclass
class ModelConfig:
    """Every architecture choice of a plmkit backbone and its heads (defaults: BERT-base)."""

    # --- sizes
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12                       # default query heads per layer
    num_kv_heads: int | None = None           # default key/value heads per layer (None: = num_heads)
    intermediate_size: int | None = 3072      # default FFN width per layer (None: 4 x hidden)
    head_dim: int | None = None               # None -> hidden_size // num_heads
    heads: list[int] | None = None            # per-layer query heads (after pruning: whole key/value groups)
    ffn: list[int] | None = None              # per-layer FFN width (after pruning)
    max_position: int = 512                   # the longest input, in tokens
    # --- attention pattern
    causal: bool = False                      # decoder: each token sees only itself and earlier ones
    local_window: int | None = None           # local layers see |i - j| <= local_window // 2 (ModernBERT: 128)
    global_every: int = 1                     # with local_window: layer i is global when i % global_every == 0
    attn_bias: bool = True                    # biases of the q/k/v projections
    attn_out_bias: bool = True                # bias of the output projection
    qk_norm: bool = False                     # RMSNorm on each query/key head before rotary (Qwen3)
    # --- positions
    positions: str = "learned"                # learned | learned_offset (RoBERTa) | rotary | none
    position_offset: int = 0                  # learned_offset: the first real position's index (RoBERTa: pad + 1)
    rope_theta: float = 10000.0
    rope_theta_local: float | None = None     # rotary base of the local layers (ModernBERT: 10,000)
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear"|"llama3", "factor": ...}
    # --- embeddings
    type_vocab_size: int = 2                  # segment (token type) embeddings; 0: none
    task_type_vocab_size: int = 0             # ERNIE's task-type embeddings; 0: none
    embedding_size: int | None = None         # E < H: factorised embeddings projected E -> H (ALBERT, ELECTRA)
    embedding_norm: bool = True               # a norm over the summed embeddings (BERT); GPT-2/Llama: none
    share_layers: bool = False                # ALBERT: one layer's weights reused num_layers times
    # --- blocks
    norm: str = "layernorm"                   # layernorm | rmsnorm
    norm_bias: bool = True                    # LayerNorm with a bias (ModernBERT: without)
    layer_norm_eps: float = 1e-12
    pre_ln: bool = False                      # norm before each sub-layer + a final norm (GPT-2, ModernBERT, Llama)
    first_attn_norm: bool = True              # pre-LN: ModernBERT leaves layer 0's attention input unnormalised
    ffn_kind: str = "plain"                   # plain: fc2(act(fc1 x)); gated: fc2(act(a) * g), [a; g] = fc1 x
    ffn_bias: bool = True
    activation: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    # --- heads
    use_pooler: bool = True                   # BERT's pooler: tanh(dense(h[CLS])), read by NSP and classification
    cls_head: str | None = None               # the classification head's own dense + this activation on the
                                              # sentence vector (RoBERTa tanh, ELECTRA gelu, DistilBERT relu)
    head_norm: bool = False                   # a norm after the head's dense + activation (ModernBERT)
    head_bias: bool = True                    # bias of the heads' dense layers (ModernBERT: none)
    head_activation: str | None = None        # activation of the MLM / head transforms (None: ``activation``)
    token_transform: bool = False             # token and span heads transform every token first (ModernBERT)
    pooling: str = "cls"                      # sentence vector without a pooler: cls | mean (decoders: last token)
    tie_embeddings: bool = True               # the LM / MLM output matrix is the word embedding matrix
    # --- special tokens and the HF layout this config exports to
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None   # a list: any of them ends generation (Llama 3)
    layout: str = "bert"                      # key of the converter in models/hf/ (export --format hf)

    def __post_init__(self) -> None:
        _check_bounds(self)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        _resolve_sizes(self)
        _check_choices(self)

    @property
    def family(self) -> str:
        """'encoder' or 'decoder': a description for people and config.json, never a branch."""
        return "decoder" if self.causal else "encoder"

    # What a model of this architecture can do: stages and serve ask these, never the family.
    @property
    def can_generate(self) -> bool:
        """It predicts the next token (a causal model, given an LM head)."""
        return self.causal

    @property
    def can_embed(self) -> bool:
        """Its token states see the whole text: sentence vectors pool them (a bidirectional model)."""
        return not self.causal

    @property
    def tied_lm_head(self) -> bool:
        """A bare backbone of it has its LM head already: the output matrix is the word embeddings
        (GPT-2), so reloading it with a 'clm' head adds nothing untrained."""
        return self.causal and self.tie_embeddings

    @property
    def input_names(self) -> list[str]:
        """The token inputs the backbone reads (ONNX graph inputs)."""
        return ["input_ids", "attention_mask"] + (["token_type_ids"] if self.type_vocab_size else [])

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.num_heads // (self.num_kv_heads or self.num_heads)

    @property
    def kv_heads(self) -> list[int]:
        """Key/value heads per layer; pruning removes whole groups, so heads[i] / group_size."""
        return [h // self.group_size for h in self.heads]

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden_size

    def window(self, layer: int) -> int | None:
        """Half-width of layer ``layer``'s local attention, or None for a global layer."""
        if self.local_window is None or layer % self.global_every == 0:
            return None
        return self.local_window // 2

    def theta(self, layer: int) -> float | None:
        """Rotary base of layer ``layer`` (None: no rotary positions)."""
        if self.positions != "rotary":
            return None
        if self.window(layer) is not None and self.rope_theta_local is not None:
            return self.rope_theta_local
        return self.rope_theta


@dataclass
class EncoderConfig(ModelConfig):
    """BERT's defaults (post-LN, learned positions, segments, tanh pooler)."""


@dataclass
class DecoderConfig(ModelConfig):
    """GPT-2's defaults (pre-LN, learned positions, tied output embeddings, causal)."""

    vocab_size: int = 50257
    intermediate_size: int | None = None
    max_position: int = 1024
    causal: bool = True
    type_vocab_size: int = 0
    embedding_norm: bool = False
    layer_norm_eps: float = 1e-5
    pre_ln: bool = True
    activation: str = "gelu_new"
    use_pooler: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    layout: str = "gpt2"


# Sizes a backbone cannot be built with below these (a corrupted config.json would otherwise fail
# deep inside torch: a negative dimension, a division by zero heads).
AT_LEAST = {"vocab_size": 1, "hidden_size": 1, "num_layers": 1, "num_heads": 1, "num_kv_heads": 1,
            "intermediate_size": 1, "head_dim": 1, "max_position": 1, "global_every": 1, "embedding_size": 1,
            "position_offset": 0, "type_vocab_size": 0, "task_type_vocab_size": 0}


def _check_bounds(cfg: ModelConfig) -> None:
    for name, least in AT_LEAST.items():
        value = getattr(cfg, name)
        if value is not None and value < least:
            raise PlmkitError(f"config: {name} must be >= {least}, got {value}")
    for name in ("hidden_dropout", "attention_dropout"):
        if not 0 <= getattr(cfg, name) < 1:
            raise PlmkitError(f"config: {name} must be in [0, 1), got {getattr(cfg, name)}")
    if not cfg.layer_norm_eps > 0:
        raise PlmkitError(f"config: layer_norm_eps must be > 0, got {cfg.layer_norm_eps}")
    if cfg.pad_token_id is not None and not 0 <= cfg.pad_token_id < cfg.vocab_size:
        raise PlmkitError(f"config: pad_token_id {cfg.pad_token_id} is not a token id (vocab_size {cfg.vocab_size})")


def _resolve_sizes(cfg: ModelConfig) -> None:
    """Fill head_dim and the per-layer head / kv-head / FFN lists from the uniform defaults."""
    if cfg.head_dim is None:
        if cfg.hidden_size % cfg.num_heads:
            raise PlmkitError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        cfg.head_dim = cfg.hidden_size // cfg.num_heads
    cfg.heads = _per_layer(cfg.heads, cfg.num_heads, cfg.num_layers, "heads")
    kv = cfg.num_kv_heads or cfg.num_heads
    if cfg.num_heads % kv:
        raise PlmkitError(f"num_heads {cfg.num_heads} is not a multiple of num_kv_heads {kv}")
    bad = [i for i, h in enumerate(cfg.heads) if h % cfg.group_size]
    if bad:
        raise PlmkitError(f"config: layer {bad[0]} has {cfg.heads[bad[0]]} query heads, not a multiple of the "
                          f"{cfg.group_size} that share each key/value head")
    cfg.ffn = _per_layer(cfg.ffn, cfg.intermediate_size, cfg.num_layers, "ffn")


def _per_layer(values: list[int] | None, default: int | None, n: int, name: str) -> list[int]:
    if values is None:
        return [int(default)] * n
    values = [int(v) for v in values]
    if len(values) != n:
        raise PlmkitError(f"config: '{name}' has {len(values)} entries for {n} layers")
    if any(v < 0 for v in values):
        raise PlmkitError(f"config: '{name}' has a negative size")
    return values


def _check_choices(cfg: ModelConfig) -> None:
    for name, allowed in (("positions", POSITIONS), ("norm", NORMS), ("ffn_kind", FFN_KINDS),
                          ("activation", ACTIVATIONS), ("pooling", POOLINGS)):
        if getattr(cfg, name) not in allowed:
            raise PlmkitError(f"config: {name} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    for name in ("cls_head", "head_activation"):
        if getattr(cfg, name) is not None and getattr(cfg, name) not in ACTIVATIONS:
            raise PlmkitError(f"config: {name} must be one of {', '.join(ACTIVATIONS)} or null")
    if cfg.share_layers and (len(set(cfg.heads)) > 1 or len(set(cfg.ffn)) > 1):
        raise PlmkitError("share_layers needs identical sizes in every layer")
    if cfg.local_window is not None and (cfg.causal or cfg.local_window < 2 or cfg.global_every < 1):
        raise PlmkitError("local attention needs a bidirectional model, local_window >= 2 and global_every >= 1")
    kind = (cfg.rope_scaling or {}).get("rope_type", "default")
    if kind not in ROPE_KINDS:
        raise PlmkitError(f"config: rope_scaling kind {kind!r} is not supported (supported: {', '.join(ROPE_KINDS)})")
    if cfg.positions == "rotary" and cfg.head_dim % 2:
        raise PlmkitError(f"config: rotary positions need an even head_dim, got {cfg.head_dim}")


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
# ALBERT (Lan et al. 2019) at the BERT sizes: factorised embeddings (E = 128, 64 for tiny: E < H),
# one layer's weights shared by all, gelu_new, no dropout (ALBERT v2); exports to HF's ALBERT.
_ALBERT = dict(share_layers=True, activation="gelu_new", hidden_dropout=0.0, attention_dropout=0.0, layout="albert")
ALBERT_PRESETS: dict[str, dict[str, Any]] = {
    name: {**sizes, **_ALBERT, "embedding_size": 64 if sizes["hidden_size"] <= 128 else 128}
    for name, sizes in BERT_PRESETS.items()}


@dataclass(frozen=True)
class Arch:
    """One architecture ``pretrain --arch`` builds: its config class and size presets, and every
    fact about it that a stage would otherwise branch on. What a model of it can do (generate,
    embed) and how its LM head is tied are its config's (``ModelConfig.can_generate``, ...)."""

    config: type[ModelConfig]                 # the defaults its presets override
    presets: dict[str, dict[str, Any]]        # size -> sizes and settings
    objectives: tuple[str, ...]               # pre-training objectives, the default first
    tokenizer: str                            # the tokenizer pretrain trains for it: wordpiece | bpe
    positions: int                            # max_position of a new model (at least its --seq-len)
    fixed: dict[str, Any] = field(default_factory=dict)   # options it fixes: a flag for them is refused
    forbidden: tuple[str, ...] = ()           # options it has no use for: a flag for them is refused
    student: bool = False                     # a fresh preset student of a teacher of its kind
                                              # (causal or not, whatever the teacher's family)

    def build(self, size: str, **overrides: Any) -> ModelConfig:
        return self.config(**{**self.presets[size], **self.fixed, **overrides})

    @property
    def defaults(self) -> ModelConfig:
        """Its smallest preset: what every size of it shares (layout, causal, tied head)."""
        return self.build(next(iter(self.presets)))


ARCHS: dict[str, Arch] = {
    "bert": Arch(EncoderConfig, BERT_PRESETS, objectives=("mlm+nsp", "mlm", "mlm+sop", "rtd"),
                 tokenizer="wordpiece", positions=512, student=True),
    "albert": Arch(EncoderConfig, ALBERT_PRESETS, objectives=("mlm+sop", "mlm"), tokenizer="wordpiece",
                   positions=512),
    "gpt": Arch(DecoderConfig, GPT_PRESETS, objectives=("clm",), tokenizer="bpe", positions=1024,
                fixed={"pre_ln": True}, forbidden=("embedding_size", "share_layers", "split_cjk"), student=True),
}


def preset(arch: str, size: str, **overrides: Any) -> ModelConfig:
    if arch not in ARCHS:
        raise PlmkitError(f"unknown architecture '{arch}' (choose {', '.join(ARCHS)})")
    if size not in ARCHS[arch].presets:
        raise PlmkitError(f"unknown size '{size}' for {arch} (choose {', '.join(ARCHS[arch].presets)})")
    return ARCHS[arch].build(size, **overrides)


def arch_of(cfg: ModelConfig) -> str | None:
    """The architecture that builds a model like ``cfg`` (the one of its HF layout; None: no record
    builds it, e.g. ModernBERT or Llama)."""
    return next((name for name, a in ARCHS.items() if a.defaults.layout == cfg.layout), None)


def student_arch(cfg: ModelConfig) -> str:
    """The architecture a fresh preset student of a ``cfg`` teacher is built from: a BERT for every
    encoder (a ModernBERT teacher too), a GPT-2 for every decoder."""
    return next(name for name, a in ARCHS.items() if a.student and a.defaults.causal == cfg.causal)


CLASSES: dict[str, type[ModelConfig]] = {"encoder": EncoderConfig, "decoder": DecoderConfig}


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    return {"family": cfg.family, **dataclasses.asdict(cfg)}


def config_from_dict(d: dict[str, Any], source: str = "config.json") -> ModelConfig:
    if not isinstance(d, dict):
        raise PlmkitError(f"{source}: the model config must be a JSON object")
    d = dict(d)
    family = d.pop("family", None)
    if family not in CLASSES:
        raise PlmkitError(f"{source}: 'family' must be one of {sorted(CLASSES)}, got {family!r}")
    cls = CLASSES[family]
    types = typing.get_type_hints(cls)
    unknown = set(d) - set(types)
    if unknown:
        raise PlmkitError(f"{source}: unknown model config keys {sorted(unknown)}")
    for key, value in d.items():
        if not _fits(value, types[key]):
            raise PlmkitError(f"{source}: model.{key} must be {_describe(types[key])}, got {json.dumps(value)}")
    try:
        return cls(**d)
    except PlmkitError as e:       # the config's own checks (sizes, choices): say which file
        raise PlmkitError(f"{source}: {str(e).removeprefix('config: ')}") from None


def _fits(value: Any, tp: Any) -> bool:
    """Whether a JSON value has the field's type (an int is a float; a bool is not a number)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return isinstance(value, list) and all(_fits(v, typing.get_args(tp)[0]) for v in value)
    if typing.get_origin(tp) is dict:
        return isinstance(value, dict)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ')}s"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
            dict: "an object", type(None): "null"}.get(typing.get_origin(tp) or tp, str(tp))
