"""GPT-2 (``GPT2Model``, ``GPT2LMHeadModel``): pre-LN, learned positions, tied output embeddings.

GPT-2 stores its projections as Conv1D, weight [in, out], and q/k/v fused in one ``c_attn``:
those are transposed and split here; everything else is a rename.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from ...errors import PlmkitError
from ..config import DecoderConfig, ModelConfig
from . import Family, NamePairs, State, activation, register

NAMES: NamePairs = [
    ("wte", "backbone.embeddings.word"), ("wpe", "backbone.embeddings.position"), ("ln_f", "backbone.final_norm"),
    ("h.{i}.ln_1", "backbone.layers.{i}.attn_norm"), ("h.{i}.ln_2", "backbone.layers.{i}.ffn_norm"),
    ("h.{i}.attn.c_proj", "backbone.layers.{i}.attn.o"),
    ("h.{i}.mlp.c_fc", "backbone.layers.{i}.ffn.fc1"), ("h.{i}.mlp.c_proj", "backbone.layers.{i}.ffn.fc2"),
]
_CONV1D = re.compile(r"^backbone\.layers\.\d+\.(attn\.o|ffn\.fc1|ffn\.fc2)\.weight$")
_C_ATTN = re.compile(r"^h\.(\d+)\.attn\.c_attn\.(weight|bias)$")


def tensors_in(body: State, out: State, cfg: ModelConfig, task: str) -> None:
    for key in [k for k in out if _CONV1D.match(k)]:       # Conv1D keeps [in, out]; nn.Linear wants [out, in]
        out[key] = out[key].t().contiguous()
    for key, value in body.items():
        m = _C_ATTN.match(key)
        if m:
            i, kind = m.groups()
            parts = value.chunk(3, dim=-1)  # weight [H, 3H] -> 3 x [H, H]; bias [3H] -> 3 x [H]
            for name, part in zip("qkv", parts):
                out[f"backbone.layers.{i}.attn.{name}.{kind}"] = part.t().contiguous() if kind == "weight" else part


def tensors_out(state: State, body: State, top: State, cfg: ModelConfig, task: str) -> None:
    for key in [k for k in body if re.match(r"^h\.\d+\.(attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$", k)]:
        body[key] = body[key].t()
    for i in range(cfg.num_layers):
        for kind in ("weight", "bias"):
            parts = [state[f"backbone.layers.{i}.attn.{n}.{kind}"] for n in "qkv"]
            body[f"h.{i}.attn.c_attn.{kind}"] = torch.cat([p.t() if kind == "weight" else p for p in parts], dim=-1)


def config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise PlmkitError(f"{source}: GPT-2 option {flag} is not supported")
    H = hf["n_embd"]
    return DecoderConfig(
        vocab_size=hf["vocab_size"], hidden_size=H, num_layers=hf["n_layer"], num_heads=hf["n_head"],
        intermediate_size=hf.get("n_inner") or 4 * H, max_position=hf.get("n_positions", 1024),
        hidden_dropout=hf.get("resid_pdrop", 0.1), attention_dropout=hf.get("attn_pdrop", 0.1),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=activation(hf.get("activation_function", "gelu_new"), source),
        bos_token_id=hf.get("bos_token_id", 50256), eos_token_id=hf.get("eos_token_id", 50256), layout="gpt2")


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return dict(vocab_size=cfg.vocab_size, n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.heads[0],
                n_inner=cfg.ffn[0], n_positions=cfg.max_position, activation_function=cfg.activation,
                resid_pdrop=cfg.hidden_dropout, embd_pdrop=cfg.hidden_dropout, attn_pdrop=cfg.attention_dropout,
                layer_norm_epsilon=cfg.layer_norm_eps, bos_token_id=cfg.bos_token_id,
                eos_token_id=cfg.eos_token_id, initializer_range=0.02, tie_word_embeddings=True)


GPT2 = register(Family(
    name="gpt2", model_types=("gpt2",), archs={"GPT2Model": "base", "GPT2LMHeadModel": "clm"},
    prefix="transformer.", names=NAMES, heads={"base": [], "clm": []},
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, tensors_in=tensors_in, tensors_out=tensors_out))
