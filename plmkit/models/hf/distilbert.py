"""DistilBERT (``DistilBertModel``, ``DistilBertFor*``): BERT's post-LN layers without token types
and without a pooler.

Its sequence classifier reads the raw [CLS] vector through ``pre_classifier`` + ReLU (cls_head
"relu"); the MLM head is ``vocab_transform`` -> activation -> ``vocab_layer_norm`` ->
``vocab_projector`` (tied to the word embeddings). Every LayerNorm uses eps 1e-12, fixed in HF's
code. ``sinusoidal_pos_embds`` only changes how HF initialises the position table: the table
itself is in the weights, so such a checkpoint loads as learned positions (and exports as such).
"""
from __future__ import annotations

from typing import Any

from ...errors import PlmkitError
from ..config import EncoderConfig, ModelConfig
from . import Family, NamePairs, activation, register
from .bert import pruned_heads

NAMES: NamePairs = [
    ("embeddings.word_embeddings", "backbone.embeddings.word"),
    ("embeddings.position_embeddings", "backbone.embeddings.position"),
    ("embeddings.LayerNorm", "backbone.embeddings.norm"),
    ("transformer.layer.{i}.attention.q_lin", "backbone.layers.{i}.attn.q"),
    ("transformer.layer.{i}.attention.k_lin", "backbone.layers.{i}.attn.k"),
    ("transformer.layer.{i}.attention.v_lin", "backbone.layers.{i}.attn.v"),
    ("transformer.layer.{i}.attention.out_lin", "backbone.layers.{i}.attn.o"),
    ("transformer.layer.{i}.sa_layer_norm", "backbone.layers.{i}.attn_norm"),
    ("transformer.layer.{i}.ffn.lin1", "backbone.layers.{i}.ffn.fc1"),
    ("transformer.layer.{i}.ffn.lin2", "backbone.layers.{i}.ffn.fc2"),
    ("transformer.layer.{i}.output_layer_norm", "backbone.layers.{i}.ffn_norm"),
]
HEADS: dict[str, NamePairs] = {
    "mlm": [("vocab_transform", "head.dense"), ("vocab_layer_norm", "head.norm"), ("vocab_projector", "head.decoder")],
    "classify": [("pre_classifier", "head.transform.dense"), ("classifier", "head.classifier")],
    "token": [("classifier", "head.classifier")],
    "span": [("qa_outputs", "head.qa_outputs")],
    "base": [],
}
EPS = 1e-12          # DistilBERT's LayerNorms: not a config option


def config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    if hf.get("dim", 768) % hf.get("n_heads", 12):
        raise PlmkitError(f"{source}: dim {hf.get('dim')} is not divisible by n_heads {hf.get('n_heads')}")
    return EncoderConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf.get("dim", 768), num_layers=hf.get("n_layers", 6),
        num_heads=hf.get("n_heads", 12), intermediate_size=hf.get("hidden_dim", 3072),
        max_position=hf.get("max_position_embeddings", 512), type_vocab_size=0, use_pooler=False,
        hidden_dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.1),
        layer_norm_eps=EPS, activation=activation(hf.get("activation", "gelu"), source), cls_head="relu",
        tie_embeddings=hf.get("tie_word_embeddings", True), pad_token_id=hf.get("pad_token_id") or 0,
        heads=pruned_heads(hf, hf.get("n_layers", 6), hf.get("n_heads", 12)), layout="distilbert")


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return dict(vocab_size=cfg.vocab_size, dim=cfg.hidden_size, n_layers=cfg.num_layers, n_heads=cfg.heads[0],
                hidden_dim=cfg.ffn[0], max_position_embeddings=cfg.max_position, sinusoidal_pos_embds=False,
                dropout=cfg.hidden_dropout, attention_dropout=cfg.attention_dropout, activation=cfg.activation,
                pad_token_id=cfg.pad_token_id, tie_word_embeddings=cfg.tie_embeddings, initializer_range=0.02)


DISTILBERT = register(Family(
    name="distilbert", model_types=("distilbert",),
    archs={"DistilBertModel": "base", "DistilBertForMaskedLM": "mlm", "DistilBertForSequenceClassification": "classify",
           "DistilBertForTokenClassification": "token", "DistilBertForQuestionAnswering": "span"},
    prefix="distilbert.", names=NAMES, heads=HEADS, config_from_hf=config_from_hf, config_to_hf=config_to_hf))
