"""ALBERT (``AlbertModel``, ``AlbertFor*``): factorised embeddings and one layer shared by all.

- Embeddings of width E (``embedding_size``) go through ``embedding_hidden_mapping_in`` (E -> H,
  plmkit's ``backbone.embeddings.proj``) after their LayerNorm.
- One set of layer weights, ``albert_layer_groups.0.albert_layers.0``, applied num_hidden_layers
  times (share_layers). HF's more general grouping (num_hidden_groups, inner_group_num > 1) is
  refused: no released checkpoint uses it and plmkit shares one layer, not groups.
- The MLM head projects H -> E before the tied E -> V decoder; its bias is ``predictions.bias``.
- Pretraining head = MLM + sentence-order prediction (``sop_classifier``) on the tanh pooler,
  which sequence classification also reads (``pooler`` is a bare Linear in HF, no ``.dense``).
"""
from __future__ import annotations

from typing import Any

from ...errors import PlmkitError
from ..config import EncoderConfig, ModelConfig
from . import Family, NamePairs, activation, register
from .bert import bert_sizes, bert_sizes_out, decoder_bias

_LAYER = "encoder.albert_layer_groups.0.albert_layers.0"
NAMES: NamePairs = [
    ("embeddings.word_embeddings", "backbone.embeddings.word"),
    ("embeddings.position_embeddings", "backbone.embeddings.position"),
    ("embeddings.token_type_embeddings", "backbone.embeddings.segment"),
    ("embeddings.LayerNorm", "backbone.embeddings.norm"),
    ("encoder.embedding_hidden_mapping_in", "backbone.embeddings.proj"),
    (f"{_LAYER}.attention.query", "backbone.layers.0.attn.q"),
    (f"{_LAYER}.attention.key", "backbone.layers.0.attn.k"),
    (f"{_LAYER}.attention.value", "backbone.layers.0.attn.v"),
    (f"{_LAYER}.attention.dense", "backbone.layers.0.attn.o"),
    (f"{_LAYER}.attention.LayerNorm", "backbone.layers.0.attn_norm"),
    (f"{_LAYER}.ffn", "backbone.layers.0.ffn.fc1"),
    (f"{_LAYER}.ffn_output", "backbone.layers.0.ffn.fc2"),
    (f"{_LAYER}.full_layer_layer_norm", "backbone.layers.0.ffn_norm"),
    ("pooler", "backbone.pooler.dense"),
]
MLM: NamePairs = [("predictions.dense", "head.dense"), ("predictions.LayerNorm", "head.norm"),
                  ("predictions.decoder", "head.decoder")]
HEADS: dict[str, NamePairs] = {
    "mlm": MLM,
    "mlm+sop": [(hf, ours.replace("head.", "head.mlm.")) for hf, ours in MLM]
    + [("sop_classifier.classifier", "head.pair")],
    "classify": [("classifier", "head.classifier")],
    "token": [("classifier", "head.classifier")],
    "span": [("qa_outputs", "head.qa_outputs")],
    "base": [],
}


def config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    for option in ("num_hidden_groups", "inner_group_num"):
        if hf.get(option, 1) != 1:
            raise PlmkitError(f"{source}: ALBERT with {option}={hf[option]} is not supported (plmkit shares one "
                              "layer across all layers: num_hidden_groups 1, inner_group_num 1)")
    if hf.get("pruned_heads"):
        raise PlmkitError(f"{source}: an ALBERT with pruned_heads is not supported (its layers share weights)")
    sizes = bert_sizes(hf, source)
    E = hf.get("embedding_size", 128)
    if E == sizes["hidden_size"]:
        raise PlmkitError(f"{source}: ALBERT with embedding_size == hidden_size ({E}) is not supported "
                          "(its embedding_hidden_mapping_in is an H -> H layer plmkit's embeddings lack)")
    return EncoderConfig(**{**sizes, "activation": activation(hf.get("hidden_act", "gelu_new"), source),
                            "hidden_dropout": hf.get("hidden_dropout_prob", 0.0),
                            "attention_dropout": hf.get("attention_probs_dropout_prob", 0.0)},
                         embedding_size=E, share_layers=True, tie_embeddings=hf.get("tie_word_embeddings", True),
                         bos_token_id=hf.get("bos_token_id", 2), eos_token_id=hf.get("eos_token_id", 3),
                         layout="albert")


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    out = bert_sizes_out(cfg)
    del out["position_embedding_type"]
    return {**out, "embedding_size": cfg.embedding_width, "num_hidden_groups": 1, "inner_group_num": 1,
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
            "tie_word_embeddings": cfg.tie_embeddings}


_BIAS_IN, _BIAS_OUT = decoder_bias("predictions.bias", "predictions.decoder")

ALBERT = register(Family(
    name="albert", model_types=("albert",),
    archs={"AlbertModel": "base", "AlbertForMaskedLM": "mlm", "AlbertForPreTraining": "mlm+sop",
           "AlbertForSequenceClassification": "classify", "AlbertForTokenClassification": "token",
           "AlbertForQuestionAnswering": "span"},
    prefix="albert.", names=NAMES, heads=HEADS, config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    tensors_in=_BIAS_IN, tensors_out=_BIAS_OUT))
