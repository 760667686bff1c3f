"""ModernBERT (``ModernBertModel``, ``ModernBertFor*``): pre-LN without biases, rotary positions,
GeGLU feed-forward, local attention in every layer but each ``global_every``-th.

    embeddings: tok_embeddings -> norm (no positions, no segments)
    layer i:    x += Wo(attn(attn_norm(x)))     attn_norm is an Identity in layer 0
                x += mlp.Wo(act(a) * g), [a; g] = mlp.Wi(mlp_norm(x))
    final_norm; heads: head = dense -> act -> norm, then decoder (MLM) or classifier

What is not a rename: q/k/v fused in ``attn.Wqkv`` ([3 x h*d, H], rows q then k then v) are
split here and joined on export; ``mlp.Wi`` is plmkit's fused gated fc1 as is ([a; g]). A
missing MLM decoder bias (``decoder_bias`` False) loads as zeros. Config: transformers 5 keeps
the layer pattern in ``layer_types`` and the rotary bases in ``rope_parameters``; older
config.json files say ``global_attn_every_n_layers``, ``global_rope_theta``, ``local_rope_theta``.
Both are read; both are written.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from ...errors import PlmkitError
from ..config import ModelConfig
from . import Family, NamePairs, State, activation, register

NAMES: NamePairs = [
    ("embeddings.tok_embeddings", "backbone.embeddings.word"),
    ("embeddings.norm", "backbone.embeddings.norm"),
    ("layers.{i}.attn_norm", "backbone.layers.{i}.attn_norm"),
    ("layers.{i}.attn.Wo", "backbone.layers.{i}.attn.o"),
    ("layers.{i}.mlp_norm", "backbone.layers.{i}.ffn_norm"),
    ("layers.{i}.mlp.Wi", "backbone.layers.{i}.ffn.fc1"),
    ("layers.{i}.mlp.Wo", "backbone.layers.{i}.ffn.fc2"),
    ("final_norm", "backbone.final_norm"),
]
# HF's ModernBertPredictionHead ("head": dense, act, norm) sits before every task projection.
_TRANSFORM: NamePairs = [("head.dense", "head.transform.dense"), ("head.norm", "head.transform.norm")]
HEADS: dict[str, NamePairs] = {
    "base": [],
    "mlm": [("head.dense", "head.dense"), ("head.norm", "head.norm"), ("decoder", "head.decoder")],
    "classify": _TRANSFORM + [("classifier", "head.classifier")],
    "token": _TRANSFORM + [("classifier", "head.classifier")],
    "span": _TRANSFORM + [("classifier", "head.qa_outputs")],     # HF names the QA projection "classifier"
}
ARCHS = {"ModernBertModel": "base", "ModernBertForMaskedLM": "mlm",
         "ModernBertForSequenceClassification": "classify", "ModernBertForTokenClassification": "token",
         "ModernBertForQuestionAnswering": "span"}
_WQKV = re.compile(r"^layers\.(\d+)\.attn\.Wqkv\.(weight|bias)$")
_DEFAULT_THETA = {"full_attention": 160_000.0, "sliding_attention": 10_000.0}   # transformers' defaults


# ----------------------------------------------------------------------------- tensors

def tensors_in(body: State, out: State, cfg: ModelConfig, task: str) -> None:
    for key, value in body.items():
        m = _WQKV.match(key)
        if m:
            i, kind = int(m.group(1)), m.group(2)
            q, kv = cfg.heads[i] * cfg.head_dim, cfg.kv_heads[i] * cfg.head_dim
            for name, part in zip("qkv", value.split([q, kv, kv], dim=0)):   # rows: q, then k, then v
                out[f"backbone.layers.{i}.attn.{name}.{kind}"] = part.contiguous()
    if task == "mlm" and "head.decoder.bias" not in out:                     # decoder_bias False
        out["head.decoder.bias"] = torch.zeros(cfg.vocab_size, dtype=out["backbone.embeddings.word.weight"].dtype)


def tensors_out(state: State, body: State, top: State, cfg: ModelConfig, task: str) -> None:
    for i in range(cfg.num_layers):
        for kind in ("weight", "bias") if cfg.attn_bias else ("weight",):
            body[f"layers.{i}.attn.Wqkv.{kind}"] = torch.cat(
                [state[f"backbone.layers.{i}.attn.{n}.{kind}"] for n in "qkv"], dim=0)


# ----------------------------------------------------------------------------- config

def _global_every(hf: dict[str, Any], layers: int, source: str) -> int:
    """The n of "layer i is global when i % n == 0", from layer_types (v5) or the v4 integer."""
    types = hf.get("layer_types")
    if types is None:
        n = int(hf.get("global_attn_every_n_layers", 3))
        if n < 1:
            raise PlmkitError(f"{source}: global_attn_every_n_layers must be >= 1, got {n}")
        return n
    if len(types) != layers or set(types) - {"full_attention", "sliding_attention"}:
        raise PlmkitError(f"{source}: layer_types must list 'full_attention' / 'sliding_attention' for each of "
                          f"the {layers} layers")
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    # Only layer 0 global: any n >= layers says the same; keep the one written beside (export).
    n = full[1] if len(full) > 1 else max(layers, int(hf.get("global_attn_every_n_layers", layers)))
    if not full or [i for i in range(layers) if i % n == 0] != full:
        raise PlmkitError(f"{source}: layer_types {types} is not 'global every n-th layer from layer 0', the only "
                          "ModernBERT pattern plmkit supports")
    return n


def _thetas(hf: dict[str, Any], source: str) -> tuple[float, float]:
    """(global, local) rotary bases; rope scaling of any kind is refused."""
    if hf.get("rope_scaling"):
        raise PlmkitError(f"{source}: ModernBERT with rope_scaling is not supported (plain rotary only)")
    params = hf.get("rope_parameters") or {}
    thetas = []
    for kind, v4 in (("full_attention", "global_rope_theta"), ("sliding_attention", "local_rope_theta")):
        p = params.get(kind) or {}
        if p.get("rope_type", "default") != "default":
            raise PlmkitError(f"{source}: ModernBERT rope_type {p['rope_type']!r} ({kind}) is not supported "
                              "(plain rotary only)")
        thetas.append(float(p.get("rope_theta", hf.get(v4, _DEFAULT_THETA[kind]))))
    return thetas[0], thetas[1]


def _token_id(value: Any) -> int | None:
    return value[0] if isinstance(value, list) and value else value if isinstance(value, int) else None


def config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    layers = hf.get("num_hidden_layers", 22)
    pooling = hf.get("classifier_pooling", "cls")
    if pooling not in ("cls", "mean"):
        raise PlmkitError(f"{source}: classifier_pooling {pooling!r} is not supported (cls or mean)")
    global_theta, local_theta = _thetas(hf, source)
    head_act = activation(hf.get("classifier_activation", "gelu"), source)
    return ModelConfig(
        vocab_size=hf.get("vocab_size", 50368), hidden_size=hf.get("hidden_size", 768), num_layers=layers,
        num_heads=hf.get("num_attention_heads", 12), intermediate_size=hf.get("intermediate_size", 1152),
        max_position=hf.get("max_position_embeddings", 8192),
        local_window=hf.get("local_attention", 128), global_every=_global_every(hf, layers, source),
        attn_bias=hf.get("attention_bias", False), attn_out_bias=hf.get("attention_bias", False),
        positions="rotary", rope_theta=global_theta, rope_theta_local=local_theta,
        type_vocab_size=0, embedding_norm=True, norm="layernorm", norm_bias=hf.get("norm_bias", False),
        layer_norm_eps=hf.get("norm_eps", 1e-5), pre_ln=True, first_attn_norm=False,
        ffn_kind="gated", ffn_bias=hf.get("mlp_bias", False),
        activation=activation(hf.get("hidden_activation", "gelu"), source),
        # plmkit has one residual dropout (embeddings, both sub-layers) and one on attention probabilities
        hidden_dropout=hf.get("mlp_dropout", 0.0), attention_dropout=hf.get("attention_dropout", 0.0),
        use_pooler=False, cls_head=head_act, head_norm=True, head_bias=hf.get("classifier_bias", False),
        head_activation=head_act, token_transform=True, pooling=pooling,
        tie_embeddings=hf.get("tie_word_embeddings", True), pad_token_id=_token_id(hf.get("pad_token_id", 50283)),
        bos_token_id=_token_id(hf.get("bos_token_id", 50281)), eos_token_id=_token_id(hf.get("eos_token_id", 50282)),
        layout="modernbert")


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    if cfg.attn_bias != cfg.attn_out_bias:
        raise PlmkitError("the HF ModernBERT layout has one attention_bias for Wqkv and Wo; this model differs")
    types = ["sliding_attention" if cfg.window(i) is not None else "full_attention" for i in range(cfg.num_layers)]
    local = cfg.rope_theta_local if cfg.rope_theta_local is not None else cfg.rope_theta
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.heads[0], intermediate_size=cfg.ffn[0], hidden_activation=cfg.activation,
        max_position_embeddings=cfg.max_position, norm_eps=cfg.layer_norm_eps, norm_bias=cfg.norm_bias,
        attention_bias=cfg.attn_bias, mlp_bias=cfg.ffn_bias, classifier_bias=cfg.head_bias,
        classifier_activation=cfg.cls_head, classifier_pooling=cfg.pooling, decoder_bias=True,
        local_attention=cfg.local_window, layer_types=types,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                         "sliding_attention": {"rope_type": "default", "rope_theta": local}},
        # transformers 4.x reads these three instead of layer_types / rope_parameters
        global_attn_every_n_layers=cfg.global_every, global_rope_theta=cfg.rope_theta, local_rope_theta=local,
        embedding_dropout=cfg.hidden_dropout, mlp_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout, tie_word_embeddings=cfg.tie_embeddings,
        pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        cls_token_id=cfg.bos_token_id, sep_token_id=cfg.eos_token_id, initializer_range=0.02)


MODERNBERT = register(Family(
    name="modernbert", model_types=("modernbert",), archs=ARCHS, prefix="model.", names=NAMES, heads=HEADS,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, tensors_in=tensors_in, tensors_out=tensors_out))
