"""``PlmModel``: a backbone plus one task head.

``forward(**batch)`` accepts the batch dict produced by plmkit's data code and returns a
``ModelOutput`` with the loss when labels are present. ``task`` and ``head_config`` (label
names, number of labels, preprocessing settings) travel with the checkpoint. Encoders and
decoders share one forward signature: a bidirectional model ignores the cache arguments'
absence, a model without segment embeddings ignores ``token_type_ids``.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .config import ModelConfig
from .heads import HEADS, PAIR_KEYS, ModelOutput, check_head
from .transformer import Backbone, KVCache

# What the heads read besides the inputs (label_norm: data.features.label_norm; scores and the
# pair texts: the embed head's training batches).
LABEL_KEYS = ("labels", "next_sentence_label", "start_positions", "end_positions", "label_norm", "scores",
              *PAIR_KEYS)


class PlmModel(nn.Module):
    def __init__(self, config: ModelConfig, task: str = "base", head_config: dict[str, Any] | None = None):
        super().__init__()
        check_head(task, config)
        self.config = config
        self.task = task
        self.head_config = dict(head_config or {})
        self.backbone = Backbone(config)
        self.head = HEADS[task](config, self.backbone, self.head_config)

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def can_generate(self) -> bool:
        """A model that can generate with the head it has: the next-token one."""
        return self.config.can_generate and self.task == "clm"

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False, past_key_values: KVCache | None = None,
                use_cache: bool = False, **labels: Tensor) -> ModelOutput:
        unknown = set(labels) - set(LABEL_KEYS)
        if unknown:
            raise TypeError(f"unexpected batch keys {sorted(unknown)}")
        out = self.backbone(input_ids, attention_mask, token_type_ids, past_key_values, use_cache,
                            output_hidden_states, output_attentions)
        head_batch: dict[str, Any] = {"attention_mask": attention_mask, **labels}
        if "pair_input_ids" in labels:   # texts the inputs are compared with (embed): the same backbone reads them
            head_batch["pair_out"] = self.backbone(labels["pair_input_ids"], labels.get("pair_attention_mask"),
                                                   labels.get("pair_token_type_ids"))
        res = self.head(out, head_batch)
        res.last_hidden_state = out.last_hidden_state
        res.pooled = out.pooled
        res.hidden_states = out.hidden_states
        res.attentions = out.attentions
        res.past_key_values = out.past_key_values
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
