"""BERT (``BertModel``, ``BertFor*``): post-LN, learned absolute positions, segments, tanh pooler.

The name tables and the MLM-bias handling here are shared by the BERT-shaped families
(ERNIE adds task-type embeddings; see those modules).
"""
from __future__ import annotations

from typing import Any

from ...errors import PlmkitError
from ..config import EncoderConfig, ModelConfig
from . import Family, NamePairs, State, TensorHook, TensorOutHook, activation, register

NAMES: NamePairs = [
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
MLM: NamePairs = [("cls.predictions.transform.dense", "head.dense"),
                  ("cls.predictions.transform.LayerNorm", "head.norm"),
                  ("cls.predictions.decoder", "head.decoder")]
HEADS: dict[str, NamePairs] = {
    "mlm": MLM,
    "mlm+nsp": [(hf, ours.replace("head.", "head.mlm.")) for hf, ours in MLM] + [("cls.seq_relationship", "head.pair")],
    "classify": [("classifier", "head.classifier")],
    "token": [("classifier", "head.classifier")],
    "span": [("qa_outputs", "head.qa_outputs")],
    "base": [],
}


def archs(stem: str, pretraining: bool = True) -> dict[str, str]:
    """HF architecture class names of a BERT-shaped family -> plmkit heads."""
    out = {f"{stem}Model": "base", f"{stem}ForMaskedLM": "mlm", f"{stem}ForSequenceClassification": "classify",
           f"{stem}ForTokenClassification": "token", f"{stem}ForQuestionAnswering": "span"}
    if pretraining:
        out[f"{stem}ForPreTraining"] = "mlm+nsp"
    return out


def mlm_bias_in(body: State, out: State, cfg: ModelConfig, task: str) -> None:
    """Older checkpoints keep the MLM output bias as cls.predictions.bias only."""
    if "cls.predictions.bias" in body:
        prefix = "head.mlm" if task in ("mlm+nsp", "mlm+sop") else "head"
        out.setdefault(f"{prefix}.decoder.bias", body["cls.predictions.bias"])


def mlm_bias_out(state: State, body: State, top: State, cfg: ModelConfig, task: str) -> None:
    """HF keeps the MLM bias once, as cls.predictions.bias; the decoder weight is tied to the embeddings."""
    dec = "head.mlm.decoder.bias" if task in ("mlm+nsp", "mlm+sop") else "head.decoder.bias"
    if dec in state:
        for k in [k for k in top if k.startswith("cls.predictions.decoder.")]:
            del top[k]
        top["cls.predictions.bias"] = state[dec]


def decoder_bias(hf_bias: str, hf_decoder: str) -> tuple[TensorHook, TensorOutHook]:
    """Hooks for an MLM whose output bias HF keeps as a parameter of its own (``hf_bias``, e.g.
    RoBERTa's ``lm_head.bias``), tied to ``hf_decoder``.bias; the decoder weight is a rename."""
    def tensors_in(body: State, out: State, cfg: ModelConfig, task: str) -> None:
        if hf_bias in body:
            out.setdefault(f"{_mlm(task)}.decoder.bias", body[hf_bias])

    def tensors_out(state: State, body: State, top: State, cfg: ModelConfig, task: str) -> None:
        top.pop(f"{hf_decoder}.bias", None)
        if f"{_mlm(task)}.decoder.bias" in state:
            top[hf_bias] = state[f"{_mlm(task)}.decoder.bias"]
    return tensors_in, tensors_out


def _mlm(task: str) -> str:
    return "head.mlm" if task in ("mlm+nsp", "mlm+sop") else "head"


def check_absolute(hf: dict[str, Any], source: str) -> None:
    """Refuse what a BERT-shaped encoder of plmkit does not compute: relative positions, decoders."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise PlmkitError(f"{source}: position_embedding_type {hf['position_embedding_type']!r} is not supported "
                          "(only absolute)")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise PlmkitError(f"{source}: a decoder / cross-attention {hf.get('model_type', 'model')} is not supported "
                          "(is_decoder / add_cross_attention)")


def bert_sizes(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """The EncoderConfig fields of a BERT-shaped HF config (BERT, ERNIE, RoBERTa, ...)."""
    check_absolute(hf, source)
    return dict(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
                max_position=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
                hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
                attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
                layer_norm_eps=hf.get("layer_norm_eps", 1e-12), activation=activation(hf.get("hidden_act", "gelu"), source),
                pad_token_id=hf.get("pad_token_id") or 0,
                heads=pruned_heads(hf, hf["num_hidden_layers"], hf["num_attention_heads"]))


def pruned_heads(hf: dict[str, Any], layers: int, heads: int) -> list[int] | None:
    """Heads per layer of a checkpoint pruned in place by transformers < 5 (``pruned_heads``: layer ->
    removed heads), or None when nothing was pruned."""
    pruned = hf.get("pruned_heads") or {}
    if not pruned:
        return None
    return [heads - len(pruned.get(str(i), pruned.get(i, []))) for i in range(layers)]


def bert_sizes_out(cfg: ModelConfig) -> dict[str, Any]:
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.heads[0], intermediate_size=cfg.ffn[0], hidden_act=cfg.activation,
                hidden_dropout_prob=cfg.hidden_dropout, attention_probs_dropout_prob=cfg.attention_dropout,
                max_position_embeddings=cfg.max_position, type_vocab_size=cfg.type_vocab_size,
                layer_norm_eps=cfg.layer_norm_eps, pad_token_id=cfg.pad_token_id,
                position_embedding_type="absolute", initializer_range=0.02)


def config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    return EncoderConfig(**bert_sizes(hf, source), layout="bert")


BERT = register(Family(
    name="bert", model_types=("bert",), archs=archs("Bert"), prefix="bert.", names=NAMES, heads=HEADS,
    config_from_hf=config_from_hf, config_to_hf=bert_sizes_out, tensors_in=mlm_bias_in, tensors_out=mlm_bias_out))
