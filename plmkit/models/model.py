"""``PlmModel``: a backbone (encoder or decoder) plus one task head.

``forward(**batch)`` accepts the batch dict produced by plmkit's data code and returns a
``ModelOutput`` with the loss when labels are present. ``task`` and ``head_config`` (label
names, number of labels, preprocessing settings) travel with the checkpoint.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..errors import PlmkitError
from .config import DecoderConfig, EncoderConfig
from .decoder import Decoder
from .encoder import Encoder
from .heads import HEADS, TASK_FAMILIES, ModelOutput

LABEL_KEYS = ("labels", "next_sentence_label", "start_positions", "end_positions")


class PlmModel(nn.Module):
    def __init__(self, config: EncoderConfig | DecoderConfig, task: str = "base",
                 head_config: dict[str, Any] | None = None):
        super().__init__()
        if task not in HEADS:
            raise PlmkitError(f"unknown task head '{task}' (known: {', '.join(HEADS)})")
        if config.family not in TASK_FAMILIES[task]:
            raise PlmkitError(f"task '{task}' needs a {' or '.join(TASK_FAMILIES[task])} model, "
                              f"got a {config.family}")
        self.config = config
        self.task = task
        self.head_config = dict(head_config or {})
        self.backbone = Encoder(config) if config.family == "encoder" else Decoder(config)
        self.head = HEADS[task](config, self.backbone, self.head_config)

    @property
    def family(self) -> str:
        return self.config.family

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False, past_key_values: Any = None, use_cache: bool = False,
                **labels: Tensor) -> ModelOutput:
        unknown = set(labels) - set(LABEL_KEYS)
        if unknown:
            raise TypeError(f"unexpected batch keys {sorted(unknown)}")
        if self.family == "encoder":
            out = self.backbone(input_ids, attention_mask, token_type_ids,
                                output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        else:
            out = self.backbone(input_ids, attention_mask, past_key_values=past_key_values, use_cache=use_cache,
                                output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        res = self.head(out, {"attention_mask": attention_mask, **labels})
        res.last_hidden_state = out.last_hidden_state
        res.pooled = getattr(out, "pooled", None)
        res.hidden_states = out.hidden_states
        res.attentions = out.attentions
        res.past_key_values = getattr(out, "past_key_values", None)
        return res

    def num_parameters(self) -> int:
        """Unique parameters (tied weights counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def layer_of(self, name: str) -> int | None:
        """Layer index of a parameter name (for layer-wise LR decay); None for embeddings/head."""
        parts = name.split(".")
        if len(parts) > 3 and parts[0] == "backbone" and parts[1] == "layers":
            return int(parts[2])
        return None
