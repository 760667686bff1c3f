"""ELECTRA's replaced-token detection (Clark et al. 2020): a small generator, trained with MLM,
fills the masked positions with its own samples; the discriminator (the model that is kept) learns
which tokens were replaced. It learns from every token, not the 15% MLM predicts, which is why
it pays most for small models and small compute.

The generator is the discriminator's architecture at a quarter of its width (``GENERATOR_WIDTH``:
hidden size, heads and FFN; the same depth), the paper's best ratio for small models; both read one
set of token, position and segment embeddings (and their norm), each projects them to its own
width. The loss is ``MLM(generator) + RTD_WEIGHT * BCE(discriminator)``; the sampled tokens carry
no gradient back to the generator (the paper's choice: no adversarial training).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .heads import IGNORE, ModelOutput
from .model import PlmModel

GENERATOR_WIDTH = 0.25     # generator hidden size / discriminator hidden size
RTD_WEIGHT = 50.0          # the paper's lambda: the BCE is ~50x smaller than the MLM loss per token
SHARED = ("word", "position", "segment", "task", "norm")     # embedding parts both models read


def discriminator_config(cfg: ModelConfig) -> ModelConfig:
    """ELECTRA's layout of a BERT configuration: no pooler, a GELU dense before the classifier
    (exports to HF ``ElectraForPreTraining`` when post-LN)."""
    return dataclasses.replace(cfg, use_pooler=False, cls_head="gelu", head_activation="gelu", layout="electra")


def generator_config(disc: ModelConfig) -> ModelConfig:
    """The discriminator's config at GENERATOR_WIDTH of its width, reading its embeddings (width E)."""
    H = max(16, int(disc.hidden_size * GENERATOR_WIDTH))
    heads = max(1, H // 64)
    return dataclasses.replace(disc, hidden_size=H, num_heads=heads, num_kv_heads=None, head_dim=None, heads=None,
                               ffn=None, intermediate_size=4 * H, embedding_size=disc.embedding_width)


class RTDPretrainer(nn.Module):
    """Generator + discriminator with shared embeddings; ``forward(**mlm_batch)`` returns the
    combined loss and aux (mlm_loss, rtd_loss, replaced; accuracies in eval). ``config`` and
    ``task`` are the discriminator's, so evaluation and logging treat it as the model."""

    def __init__(self, discriminator: PlmModel, generator: PlmModel):
        super().__init__()
        self.discriminator, self.generator = discriminator, generator
        d, g = discriminator.backbone.embeddings, generator.backbone.embeddings
        for name in SHARED:
            if getattr(d, name) is not None:
                setattr(g, name, getattr(d, name))
        generator.head.decoder.weight = d.word.weight          # the generator's output is tied to them too
        self.config, self.task = discriminator.config, "rtd"

    @classmethod
    def new(cls, disc_cfg: ModelConfig) -> RTDPretrainer:
        return cls(PlmModel(disc_cfg, "rtd"), PlmModel(generator_config(disc_cfg), "mlm"))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None) -> ModelOutput:
        """``input_ids`` masked, ``labels`` the original ids at the selected positions (MLM's batch)."""
        gen = self.generator(input_ids, attention_mask, token_type_ids, labels=labels)
        picked = labels != IGNORE                                            # [B, T]
        with torch.no_grad():                                                # sampling carries no gradient
            sampled = torch.multinomial(gen.logits.float().softmax(-1), 1).squeeze(-1) if gen.logits.numel() \
                else labels[picked]
            original = torch.where(picked, labels, input_ids)
            fake = original.clone()
            fake[picked] = sampled
            replaced = (fake != original).long()
            if attention_mask is not None:
                replaced = replaced.masked_fill(attention_mask == 0, IGNORE)
        disc = self.discriminator(fake, attention_mask, token_type_ids, labels=replaced)
        aux = {"mlm_loss": gen.aux["mlm_loss"], "rtd_loss": disc.aux["rtd_loss"],
               "replaced": (replaced == 1).float().sum() / (replaced != IGNORE).float().sum().clamp_min(1)}
        for key in ("mlm_acc", "rtd_acc"):
            value = gen.aux.get(key, disc.aux.get(key))
            if value is not None:
                aux[key] = value
        return ModelOutput(loss=gen.loss + RTD_WEIGHT * disc.loss, logits=disc.logits, aux=aux)
