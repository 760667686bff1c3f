"""Llama-shaped decoders: Llama (SmolLM2, Llama 3.x), Qwen2 / Qwen2.5 and Qwen3.

Pre-LN with RMSNorm, rotary positions (rotate-half, ``rope_scaling`` default / linear / llama3),
a SwiGLU FFN, grouped-query attention, no position table. The three differ only in values:
Qwen2 has q/k/v biases (never one on o), Qwen3 a per-head q/k RMSNorm and an explicit head_dim,
Llama has ``attention_bias`` / ``mlp_bias`` flags. HF keeps the FFN's gate_proj and up_proj
apart; plmkit fuses them into one ``ffn.fc1`` = [gate; up] (gate rows first), split again on export.

What changes the math and is not built is refused with one line: other rope kinds (yarn,
dynamic, longrope, ...), partial rotary, sliding-window attention.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from ...errors import PlmkitError
from ..config import ROPE_KINDS, DecoderConfig, ModelConfig
from . import Family, NamePairs, State, activation, register

NAMES: NamePairs = [
    ("embed_tokens", "backbone.embeddings.word"), ("norm", "backbone.final_norm"),
    ("layers.{i}.input_layernorm", "backbone.layers.{i}.attn_norm"),
    ("layers.{i}.post_attention_layernorm", "backbone.layers.{i}.ffn_norm"),
    ("layers.{i}.self_attn.q_proj", "backbone.layers.{i}.attn.q"),
    ("layers.{i}.self_attn.k_proj", "backbone.layers.{i}.attn.k"),
    ("layers.{i}.self_attn.v_proj", "backbone.layers.{i}.attn.v"),
    ("layers.{i}.self_attn.o_proj", "backbone.layers.{i}.attn.o"),
    ("layers.{i}.self_attn.q_norm", "backbone.layers.{i}.attn.q_norm"),
    ("layers.{i}.self_attn.k_norm", "backbone.layers.{i}.attn.k_norm"),
    ("layers.{i}.mlp.down_proj", "backbone.layers.{i}.ffn.fc2"),
]
HEADS: dict[str, NamePairs] = {"clm": [("lm_head", "head.lm_head")], "base": []}
_GATE_UP = re.compile(r"^layers\.(\d+)\.mlp\.(gate|up)_proj\.(weight|bias)$")
# Keys of a rope dict that are not scaling parameters.
_ROPE_META = ("rope_type", "type", "rope_theta")
# The scaling parameters each supported kind reads (models/layers.rope_frequencies).
_ROPE_KEYS = {"default": (), "linear": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def tensors_in(body: State, out: State, cfg: ModelConfig, task: str) -> None:
    """gate_proj and up_proj -> one fused fc1 = [gate; up]; a tied lm_head has nothing to load."""
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in body.items():
        m = _GATE_UP.match(key)
        if m:
            i, which, kind = m.groups()
            parts.setdefault((i, kind), {})[which] = value
    for (i, kind), p in parts.items():
        if set(p) != {"gate", "up"}:
            raise PlmkitError(f"layer {i}: mlp.gate_proj and mlp.up_proj must both be present")
        out[f"backbone.layers.{i}.ffn.fc1.{kind}"] = torch.cat([p["gate"], p["up"]], dim=0)


def tensors_out(state: State, body: State, top: State, cfg: ModelConfig, task: str) -> None:
    for key, value in state.items():
        m = re.match(r"^backbone\.layers\.(\d+)\.ffn\.fc1\.(weight|bias)$", key)
        if m:
            i, kind = m.groups()
            gate, up = value.chunk(2, dim=0)
            body[f"layers.{i}.mlp.gate_proj.{kind}"] = gate
            body[f"layers.{i}.mlp.up_proj.{kind}"] = up


def rope_from_hf(hf: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from transformers 5's ``rope_parameters`` or the older
    ``rope_theta`` + ``rope_scaling`` fields; None scaling for the default kind."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if params and all(isinstance(v, dict) for v in params.values()):
        raise PlmkitError(f"{source}: per-layer-type rope parameters are not supported")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_KINDS:
        raise PlmkitError(f"{source}: rope_scaling kind {kind!r} is not supported (supported: "
                          f"{', '.join(ROPE_KINDS)})")
    if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor") or 1.0)) != 1.0:
        raise PlmkitError(f"{source}: partial rotary embeddings (partial_rotary_factor) are not supported")
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if kind == "default":
        return theta, None
    if kind == "llama3":
        params.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings", 2048))
    missing = [k for k in _ROPE_KEYS[kind] if params.get(k) is None]
    if missing:
        raise PlmkitError(f"{source}: rope_scaling kind {kind!r} needs {', '.join(missing)}")
    return theta, {"rope_type": kind, **{k: params[k] for k in _ROPE_KEYS[kind]}}


def _refuse_sliding(hf: dict[str, Any], source: str) -> None:
    sliding = hf.get("use_sliding_window") or any(t != "full_attention" for t in hf.get("layer_types") or [])
    if sliding:
        raise PlmkitError(f"{source}: sliding-window attention (use_sliding_window / layer_types) is not "
                          "supported; plmkit's decoders attend to the whole context")


def _eos(value: Any) -> int | list[int] | None:
    """HF's eos_token_id: an id, a list of ids (Llama 3), or none."""
    if isinstance(value, list):
        return [int(v) for v in value] if len(value) != 1 else int(value[0])
    return None if value is None else int(value)


def config_from_hf(hf: dict[str, Any], source: str, qkv_bias: bool | None = None, out_bias: bool | None = None,
                   qk_norm: bool = False) -> ModelConfig:
    """A Llama-shaped HF config -> DecoderConfig. Qwen2 fixes the biases (q/k/v on, o off);
    Llama and Qwen3 read ``attention_bias``."""
    _refuse_sliding(hf, source)
    theta, scaling = rope_from_hf(hf, source)
    bias = bool(hf.get("attention_bias", False))
    H, heads = hf["hidden_size"], hf["num_attention_heads"]
    return DecoderConfig(
        vocab_size=hf["vocab_size"], hidden_size=H, num_layers=hf["num_hidden_layers"], num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads, intermediate_size=hf["intermediate_size"],
        head_dim=hf.get("head_dim") or H // heads, max_position=hf.get("max_position_embeddings", 2048),
        positions="rotary", rope_theta=theta, rope_scaling=scaling, norm="rmsnorm",
        layer_norm_eps=hf.get("rms_norm_eps", 1e-6), ffn_kind="gated",
        activation=activation(hf.get("hidden_act", "silu"), source),
        attn_bias=bias if qkv_bias is None else qkv_bias, attn_out_bias=bias if out_bias is None else out_bias,
        ffn_bias=bool(hf.get("mlp_bias", False)), qk_norm=qk_norm,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), hidden_dropout=0.0,
        attention_dropout=float(hf.get("attention_dropout", 0.0) or 0.0),
        pad_token_id=hf.get("pad_token_id"), bos_token_id=hf.get("bos_token_id"),
        eos_token_id=_eos(hf.get("eos_token_id")), layout=hf.get("model_type", "llama"))


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    rope = {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta}
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.heads[0], num_key_value_heads=cfg.kv_heads[0], intermediate_size=cfg.ffn[0],
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_position, hidden_act=cfg.activation,
        rms_norm_eps=cfg.layer_norm_eps, attention_bias=cfg.attn_bias, mlp_bias=cfg.ffn_bias,
        attention_dropout=cfg.attention_dropout, tie_word_embeddings=cfg.tie_embeddings,
        # transformers >= 5 reads rope_parameters; older readers (and other tools) rope_theta / rope_scaling
        rope_parameters=rope, rope_theta=cfg.rope_theta,
        rope_scaling={k: v for k, v in rope.items() if k != "rope_theta"} if cfg.rope_scaling else None,
        pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        initializer_range=0.02, use_cache=True)


def _family(name: str, stem: str, omit: tuple[str, ...] = (), **fixed: Any) -> Family:
    """``fixed``: choices the architecture fixes (config_from_hf's keywords); ``omit``: HF keys its
    config class does not have."""
    def from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
        cfg = config_from_hf(hf, source, **fixed)
        cfg.layout = name
        return cfg

    def to_hf(cfg: ModelConfig) -> dict[str, Any]:
        return {k: v for k, v in config_to_hf(cfg).items() if k not in omit}

    return register(Family(
        name=name, model_types=(name,), archs={f"{stem}ForCausalLM": "clm", f"{stem}Model": "base"},
        prefix="model.", names=NAMES, heads=HEADS, config_from_hf=from_hf, config_to_hf=to_hf,
        tensors_in=tensors_in, tensors_out=tensors_out))


LLAMA = _family("llama", "Llama")
QWEN2 = _family("qwen2", "Qwen2", omit=("attention_bias", "mlp_bias"), qkv_bias=True, out_bias=False)
QWEN3 = _family("qwen3", "Qwen3", omit=("mlp_bias",), qk_norm=True)
