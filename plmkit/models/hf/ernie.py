"""ERNIE (``ErnieModel``, ``ErnieFor*``): BERT plus, with ``use_task_id``, a task-type embedding
table (``task_type_embeddings``, plmkit's ``backbone.embeddings.task``) added to the embeddings
before their LayerNorm. plmkit feeds task type 0 (HF's default when no task_type_ids are given).
Names, heads and the MLM bias are BERT's under the ``ernie.`` prefix; ForPreTraining is MLM + NSP.
"""
from __future__ import annotations

from typing import Any

from ..config import EncoderConfig, ModelConfig
from . import Family, register
from .bert import HEADS, NAMES, archs, bert_sizes, bert_sizes_out, decoder_bias

_TASK_DEFAULT = 3     # HF's task_type_vocab_size when the config does not say


def config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    tasks = hf.get("task_type_vocab_size", _TASK_DEFAULT) if hf.get("use_task_id") else 0
    return EncoderConfig(**bert_sizes(hf, source), task_type_vocab_size=tasks,
                         tie_embeddings=hf.get("tie_word_embeddings", True), layout="ernie")


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {**bert_sizes_out(cfg), "use_task_id": bool(cfg.task_type_vocab_size),
            "task_type_vocab_size": cfg.task_type_vocab_size or _TASK_DEFAULT,
            "tie_word_embeddings": cfg.tie_embeddings}


_BIAS_IN, _BIAS_OUT = decoder_bias("cls.predictions.bias", "cls.predictions.decoder")

ERNIE = register(Family(
    name="ernie", model_types=("ernie",), archs=archs("Ernie"), prefix="ernie.",
    names=NAMES + [("embeddings.task_type_embeddings", "backbone.embeddings.task")], heads=HEADS,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, tensors_in=_BIAS_IN, tensors_out=_BIAS_OUT))
