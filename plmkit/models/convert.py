"""Weights and configs to and from the Hugging Face layout (BERT and GPT-2).

Names are mapped with one table per family of (HF module path, plmkit module path) pairs,
``{i}`` standing for a layer index; the same table serves both directions. GPT-2 stores
Conv1D weights as [in, out] and a fused c_attn; those are transposed and split here.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from ..errors import PlmkitError
from .config import DecoderConfig, EncoderConfig

BERT_NAMES: list[tuple[str, str]] = [
    ("embeddings.word_embeddings", "backbone.embeddings.word"),
    ("embeddings.position_embeddings", "backbone.embeddings.position"),
    ("embeddings.token_type_embeddings", "backbone.embeddings.segment"),
    ("embeddings.LayerNorm", "backbone.embeddings.norm"),
    ("encoder.layer.{i}.attention.self.query", "backbone.layers.{i}.attn.q"),
    ("encoder.layer.{i}.attention.self.key", "backbone.layers.{i}.attn.k"),
    ("encoder.layer.{i}.attention.self.value", "backbone.layers.{i}.attn.v"),
    ("encoder.layer.{i}.attention.output.dense", "backbone.layers.{i}.attn.o"),
    ("encoder.layer.{i}.attention.output.LayerNorm", "backbone.layers.{i}.attn_norm"),
    ("encoder.layer.{i}.intermediate.dense", "backbone.layers.{i}.ffn.fc1"),
    ("encoder.layer.{i}.output.dense", "backbone.layers.{i}.ffn.fc2"),
    ("encoder.layer.{i}.output.LayerNorm", "backbone.layers.{i}.ffn_norm"),
    ("pooler.dense", "backbone.pooler.dense"),
]
# Head names depend on the task (MLM lives under head.mlm in the pre-training head).
BERT_HEAD_NAMES: dict[str, list[tuple[str, str]]] = {
    "mlm": [("cls.predictions.transform.dense", "head.dense"),
            ("cls.predictions.transform.LayerNorm", "head.norm"),
            ("cls.predictions.decoder", "head.decoder")],
    "mlm+nsp": [("cls.predictions.transform.dense", "head.mlm.dense"),
                ("cls.predictions.transform.LayerNorm", "head.mlm.norm"),
                ("cls.predictions.decoder", "head.mlm.decoder"),
                ("cls.seq_relationship", "head.pair")],
    "classify": [("classifier", "head.classifier")],
    "token": [("classifier", "head.classifier")],
    "span": [("qa_outputs", "head.qa_outputs")],
    "base": [],
}
BERT_ARCHS = {"BertModel": "base", "BertForMaskedLM": "mlm", "BertForPreTraining": "mlm+nsp",
              "BertForSequenceClassification": "classify", "BertForTokenClassification": "token",
              "BertForQuestionAnswering": "span"}
GPT2_ARCHS = {"GPT2Model": "base", "GPT2LMHeadModel": "clm"}
GPT2_NAMES: list[tuple[str, str]] = [
    ("wte", "backbone.wte"), ("wpe", "backbone.wpe"), ("ln_f", "backbone.ln_f"),
    ("h.{i}.ln_1", "backbone.layers.{i}.ln_1"), ("h.{i}.ln_2", "backbone.layers.{i}.ln_2"),
    ("h.{i}.attn.c_proj", "backbone.layers.{i}.attn.o"),
    ("h.{i}.mlp.c_fc", "backbone.layers.{i}.ffn.fc1"), ("h.{i}.mlp.c_proj", "backbone.layers.{i}.ffn.fc2"),
]
SUPPORTED = sorted(BERT_ARCHS) + sorted(GPT2_ARCHS)


def _compile(table: list[tuple[str, str]], reverse: bool) -> list[tuple[re.Pattern, str]]:
    """(src, dst) module paths -> regexes over full parameter names, keeping the suffix."""
    out = []
    for hf, ours in table:
        src, dst = (ours, hf) if reverse else (hf, ours)
        pattern = re.escape(src).replace(re.escape("{i}"), r"(?P<i>\d+)")
        out.append((re.compile(rf"^{pattern}\.(?P<rest>.+)$"), dst))
    return out


def rename(state: dict[str, Tensor], table: list[tuple[str, str]], reverse: bool = False) -> dict[str, Tensor]:
    """Rename keys through the table; keys matching no entry are dropped by the caller's check."""
    rules = _compile(table, reverse)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for rx, dst in rules:
            m = rx.match(key)
            if m:
                new = dst.replace("{i}", m.group("i")) if "{i}" in dst else dst
                rest = {"gamma": "weight", "beta": "bias"}.get(m.group("rest"), m.group("rest"))
                out[f"{new}.{rest}"] = value
                break
    return out


# ----------------------------------------------------------------------------- HF -> plmkit

def hf_family(hf_cfg: dict[str, Any], source: str) -> tuple[str, str]:
    """(family, task) of an HF config, or a clear error listing what is supported."""
    model_type = hf_cfg.get("model_type")
    archs = hf_cfg.get("architectures") or []
    table = {"bert": BERT_ARCHS, "gpt2": GPT2_ARCHS}.get(model_type)
    if table is None:
        raise PlmkitError(f"{source}: unsupported model_type {model_type!r}; supported HF architectures: "
                          f"{', '.join(SUPPORTED)}")
    arch = archs[0] if archs else next(iter(table))
    if arch not in table:
        raise PlmkitError(f"{source}: unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED)}")
    return ("encoder" if model_type == "bert" else "decoder"), table[arch]


def config_from_hf(hf: dict[str, Any], source: str) -> EncoderConfig | DecoderConfig:
    family, _ = hf_family(hf, source)
    if family == "encoder":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise PlmkitError(f"{source}: only absolute position embeddings are supported")
        cfg = EncoderConfig(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
            max_position=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
            hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12), activation=hf.get("hidden_act", "gelu"),
            pad_token_id=hf.get("pad_token_id") or 0)
        pruned = hf.get("pruned_heads") or {}
        if pruned:
            cfg.heads = [cfg.num_heads - len(pruned.get(str(i), pruned.get(i, []))) for i in range(cfg.num_layers)]
        return cfg
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise PlmkitError(f"{source}: GPT-2 option {flag} is not supported")
    H = hf["n_embd"]
    return DecoderConfig(
        vocab_size=hf["vocab_size"], hidden_size=H, num_layers=hf["n_layer"], num_heads=hf["n_head"],
        intermediate_size=hf.get("n_inner") or 4 * H, max_position=hf.get("n_positions", 1024),
        hidden_dropout=hf.get("resid_pdrop", 0.1), attention_dropout=hf.get("attn_pdrop", 0.1),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=hf.get("activation_function", "gelu_new"),
        bos_token_id=hf.get("bos_token_id", 50256), eos_token_id=hf.get("eos_token_id", 50256))


def labels_from_hf(hf: dict[str, Any]) -> list[str] | None:
    id2label = hf.get("id2label")
    if not id2label:
        return None
    return [id2label[k] for k in sorted(id2label, key=lambda k: int(k))]


def state_from_hf(state: dict[str, Tensor], family: str, task: str) -> dict[str, Tensor]:
    """HF parameter names -> plmkit names for the backbone and (when it matches) the head."""
    if family == "encoder":
        body = {_strip(k, "bert."): v for k, v in state.items()}
        out = rename(body, BERT_NAMES + BERT_HEAD_NAMES.get(task, []))
        if "cls.predictions.bias" in body:  # older checkpoints keep the MLM bias here
            prefix = "head.mlm" if task == "mlm+nsp" else "head"
            out.setdefault(f"{prefix}.decoder.bias", body["cls.predictions.bias"])
        return out
    body = {_strip(k, "transformer."): v for k, v in state.items()}
    out = rename(body, GPT2_NAMES)
    for key, value in out.items():  # Conv1D keeps [in, out]; nn.Linear wants [out, in]
        if key.endswith(".weight") and value.dim() == 2 and not key.startswith(("backbone.wte", "backbone.wpe")):
            out[key] = value.t().contiguous()
    for key, value in body.items():
        m = re.match(r"^h\.(\d+)\.attn\.c_attn\.(weight|bias)$", key)
        if m:
            i, kind = m.groups()
            parts = value.chunk(3, dim=-1)  # weight [H, 3H] -> 3 x [H, H]; bias [3H] -> 3 x [H]
            for name, part in zip("qkv", parts):
                out[f"backbone.layers.{i}.attn.{name}.{kind}"] = part.t().contiguous() if kind == "weight" else part
    return out


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


# ----------------------------------------------------------------------------- plmkit -> HF

def check_hf_expressible(cfg: EncoderConfig | DecoderConfig, task: str) -> None:
    if len(set(cfg.heads)) > 1 or len(set(cfg.ffn)) > 1 or cfg.heads[0] * cfg.head_dim != cfg.hidden_size:
        raise PlmkitError("this model has per-layer head/FFN sizes (pruned), which the HF BERT/GPT-2 layout "
                          "cannot express; export it with --format onnx")
    if isinstance(cfg, EncoderConfig) and (cfg.share_layers or cfg.embedding_size):
        raise PlmkitError("ALBERT-style sharing/factorised embeddings cannot be exported to the HF BERT layout")
    if isinstance(cfg, EncoderConfig) and cfg.pre_ln:
        raise PlmkitError("a pre-LN encoder cannot be exported to the HF BERT layout (it is post-LN); "
                          "export it with --format onnx")
    archs = BERT_ARCHS if isinstance(cfg, EncoderConfig) else GPT2_ARCHS
    if task not in archs.values():
        raise PlmkitError(f"task '{task}' has no HF {'BERT' if isinstance(cfg, EncoderConfig) else 'GPT-2'} "
                          f"architecture (exportable: {', '.join(sorted(set(archs.values())))})")


def config_to_hf(cfg: EncoderConfig | DecoderConfig, task: str, labels: list[str] | None) -> dict[str, Any]:
    check_hf_expressible(cfg, task)
    if isinstance(cfg, EncoderConfig):
        arch = {v: k for k, v in BERT_ARCHS.items()}[task]
        hf = dict(model_type="bert", architectures=[arch], vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.heads[0],
                  intermediate_size=cfg.ffn[0], hidden_act=cfg.activation, hidden_dropout_prob=cfg.hidden_dropout,
                  attention_probs_dropout_prob=cfg.attention_dropout, max_position_embeddings=cfg.max_position,
                  type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps,
                  pad_token_id=cfg.pad_token_id, position_embedding_type="absolute", initializer_range=0.02)
    else:
        arch = {v: k for k, v in GPT2_ARCHS.items()}[task]
        hf = dict(model_type="gpt2", architectures=[arch], vocab_size=cfg.vocab_size, n_embd=cfg.hidden_size,
                  n_layer=cfg.num_layers, n_head=cfg.heads[0], n_inner=cfg.ffn[0], n_positions=cfg.max_position,
                  activation_function=cfg.activation, resid_pdrop=cfg.hidden_dropout,
                  embd_pdrop=cfg.hidden_dropout, attn_pdrop=cfg.attention_dropout,
                  layer_norm_epsilon=cfg.layer_norm_eps, bos_token_id=cfg.bos_token_id,
                  eos_token_id=cfg.eos_token_id, initializer_range=0.02, tie_word_embeddings=True)
    if labels:
        hf["id2label"] = {str(i): name for i, name in enumerate(labels)}
        hf["label2id"] = {name: i for i, name in enumerate(labels)}
    return hf


def state_to_hf(state: dict[str, Tensor], cfg: EncoderConfig | DecoderConfig, task: str) -> dict[str, Tensor]:
    if isinstance(cfg, EncoderConfig):
        prefix = "" if task == "base" else "bert."
        body = rename(state, BERT_NAMES, reverse=True)
        out = {prefix + k: v for k, v in body.items()}
        out.update(rename(state, BERT_HEAD_NAMES[task], reverse=True))
        dec = "head.mlm.decoder.bias" if task == "mlm+nsp" else "head.decoder.bias"
        if dec in state:  # HF keeps the MLM bias once, as cls.predictions.bias; the decoder is tied
            out = {k: v for k, v in out.items() if not k.startswith("cls.predictions.decoder.")}
            out["cls.predictions.bias"] = state[dec]
        return {k: v.contiguous() for k, v in out.items()}
    out = {}
    for key, value in rename(state, GPT2_NAMES, reverse=True).items():
        if key.endswith(".weight") and value.dim() == 2 and not key.startswith(("wte", "wpe")):
            value = value.t()
        out[key] = value
    for i in range(cfg.num_layers):
        for kind in ("weight", "bias"):
            parts = [state[f"backbone.layers.{i}.attn.{n}.{kind}"] for n in "qkv"]
            out[f"h.{i}.attn.c_attn.{kind}"] = torch.cat([p.t() if kind == "weight" else p for p in parts], dim=-1)
    prefix = "" if task == "base" else "transformer."
    # lm_head.weight is tied to wte in GPT-2 (tie_word_embeddings), so it is not stored.
    return {prefix + k: v.contiguous() for k, v in out.items()}
