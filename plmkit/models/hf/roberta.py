"""RoBERTa and XLM-RoBERTa (``RobertaModel`` / ``XLMRobertaModel`` and their heads).

BERT's layers with three differences, all config values:
- positions ``learned_offset``: fairseq numbers real tokens from pad + 1 and gives padding the pad
  row, so HF's table has ``max_position_embeddings`` = usable positions + pad + 1 rows (514 for 512);
- usually one token type (type_vocab_size 1);
- heads: the MLM head (``lm_head``, always exact GELU) keeps its output bias as ``lm_head.bias``;
  sequence classification reads the raw <s> vector through its own dense + tanh
  (``classifier.dense`` -> ``classifier.out_proj``), not a pooler (cls_head "tanh").
XLM-R is the same network under other names (model_type "xlm-roberta"): a second record.
"""
from __future__ import annotations

from typing import Any

from ..config import EncoderConfig, ModelConfig
from . import Family, NamePairs, register
from .bert import NAMES, bert_sizes, bert_sizes_out, decoder_bias

HEADS: dict[str, NamePairs] = {
    "mlm": [("lm_head.dense", "head.dense"), ("lm_head.layer_norm", "head.norm"), ("lm_head.decoder", "head.decoder")],
    "classify": [("classifier.dense", "head.transform.dense"), ("classifier.out_proj", "head.classifier")],
    "token": [("classifier", "head.classifier")],
    "span": [("qa_outputs", "head.qa_outputs")],
    "base": [],
}


def archs(stem: str) -> dict[str, str]:
    return {f"{stem}Model": "base", f"{stem}ForMaskedLM": "mlm", f"{stem}ForSequenceClassification": "classify",
            f"{stem}ForTokenClassification": "token", f"{stem}ForQuestionAnswering": "span"}


def config_from_hf(layout: str):
    def read(hf: dict[str, Any], source: str) -> ModelConfig:
        sizes = bert_sizes(hf, source)
        pad = hf.get("pad_token_id", 1)
        pad = 1 if pad is None else pad
        offset = pad + 1                                   # the first real position's row
        return EncoderConfig(**{**sizes, "pad_token_id": pad,
                                "max_position": hf.get("max_position_embeddings", 514) - offset},
                             positions="learned_offset", position_offset=offset,
                             cls_head="tanh", head_activation="gelu",
                             tie_embeddings=hf.get("tie_word_embeddings", True),
                             bos_token_id=hf.get("bos_token_id", 0), eos_token_id=hf.get("eos_token_id", 2),
                             layout=layout)
    return read


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {**bert_sizes_out(cfg), "max_position_embeddings": cfg.max_position + cfg.position_offset,
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
            "tie_word_embeddings": cfg.tie_embeddings}


_BIAS_IN, _BIAS_OUT = decoder_bias("lm_head.bias", "lm_head.decoder")

ROBERTA = register(Family(
    name="roberta", model_types=("roberta",), archs=archs("Roberta"), prefix="roberta.", names=NAMES, heads=HEADS,
    config_from_hf=config_from_hf("roberta"), config_to_hf=config_to_hf, tensors_in=_BIAS_IN,
    tensors_out=_BIAS_OUT))
XLM_ROBERTA = register(Family(
    name="xlm-roberta", model_types=("xlm-roberta",), archs=archs("XLMRoberta"), prefix="roberta.", names=NAMES,
    heads=HEADS, config_from_hf=config_from_hf("xlm-roberta"), config_to_hf=config_to_hf, tensors_in=_BIAS_IN,
    tensors_out=_BIAS_OUT))
