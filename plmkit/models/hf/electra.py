"""ELECTRA (``ElectraModel``, ``ElectraFor*``): BERT's layers, no pooler, and factorised embeddings.

- When ``embedding_size`` E differs from H, the embeddings (width E, normalised) go through
  ``embeddings_project`` (E -> H, plmkit's ``backbone.embeddings.proj``).
- The discriminator is the model people fine-tune: ``ElectraForPreTraining`` reads as the
  backbone with its replaced-token head (task ``rtd``: ``discriminator_predictions``), which
  fine-tuning replaces like any pre-training head. Sequence classification reads the raw [CLS]
  vector through its own dense + exact GELU (cls_head "gelu": ``classifier.dense`` ->
  ``classifier.out_proj``).
- ``ElectraForMaskedLM`` is the generator: H -> E dense, exact GELU, LayerNorm, tied E -> V.
"""
from __future__ import annotations

from typing import Any

from ..config import EncoderConfig, ModelConfig
from . import Family, NamePairs, register
from .bert import NAMES as BERT_NAMES
from .bert import bert_sizes, bert_sizes_out

NAMES: NamePairs = [p for p in BERT_NAMES if not p[0].startswith("pooler.")] + [
    ("embeddings_project", "backbone.embeddings.proj")]
HEADS: dict[str, NamePairs] = {
    "mlm": [("generator_predictions.dense", "head.dense"), ("generator_predictions.LayerNorm", "head.norm"),
            ("generator_lm_head", "head.decoder")],
    "classify": [("classifier.dense", "head.transform.dense"), ("classifier.out_proj", "head.classifier")],
    "token": [("classifier", "head.classifier")],
    "span": [("qa_outputs", "head.qa_outputs")],
    "rtd": [("discriminator_predictions.dense", "head.dense"),
            ("discriminator_predictions.dense_prediction", "head.prediction")],
    "base": [],
}


def config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    sizes = bert_sizes(hf, source)
    E = hf.get("embedding_size", sizes["hidden_size"])
    return EncoderConfig(**sizes, embedding_size=None if E == sizes["hidden_size"] else E, use_pooler=False,
                         cls_head="gelu", head_activation="gelu", tie_embeddings=hf.get("tie_word_embeddings", True),
                         bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"), layout="electra")


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {**bert_sizes_out(cfg), "embedding_size": cfg.embedding_width, "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id, "tie_word_embeddings": cfg.tie_embeddings}


ELECTRA = register(Family(
    name="electra", model_types=("electra",),
    archs={"ElectraModel": "base", "ElectraForPreTraining": "rtd", "ElectraForMaskedLM": "mlm",
           "ElectraForSequenceClassification": "classify", "ElectraForTokenClassification": "token",
           "ElectraForQuestionAnswering": "span"},
    prefix="electra.", names=NAMES, heads=HEADS, config_from_hf=config_from_hf, config_to_hf=config_to_hf))
