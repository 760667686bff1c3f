"""Task heads. Each takes the backbone output and the batch, returns a ``ModelOutput``.

Registry ``HEADS`` maps a task name to a builder ``(model_cfg, backbone, head_config) -> head``.
Losses are computed here so every stage (pretrain, finetune, distill) trains the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DecoderConfig, EncoderConfig
from .decoder import DecoderOutput
from .dropout import Dropout
from .encoder import ACTIVATIONS

IGNORE = -100


@dataclass
class ModelOutput:
    loss: Tensor | None = None
    logits: Tensor | None = None                    # task logits; MLM with labels: [N_masked, V]
    nsp_logits: Tensor | None = None                # [B, 2]
    start_logits: Tensor | None = None              # [B, T]
    end_logits: Tensor | None = None                # [B, T]
    last_hidden_state: Tensor | None = None         # [B, T, H]
    pooled: Tensor | None = None                    # [B, H]
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    past_key_values: Any = None
    aux: dict[str, Tensor] = field(default_factory=dict)   # component losses and accuracies


def _cls_vector(out: Any, batch: dict[str, Tensor]) -> Tensor:
    """Sentence vector: BERT's pooler when present, else [CLS]; decoders use the last real token."""
    if getattr(out, "pooled", None) is not None:
        return out.pooled
    h = out.last_hidden_state
    if isinstance(out, DecoderOutput):
        mask = batch.get("attention_mask")
        last = (mask.sum(1) - 1) if mask is not None else torch.full((h.size(0),), h.size(1) - 1, device=h.device)
        return h[torch.arange(h.size(0), device=h.device), last.long()]
    return h[:, 0]


def _linear(n_in: int, n_out: int) -> nn.Linear:
    """A task-head projection with BERT's initialisation: N(0, 0.02) weights, zero bias."""
    layer = nn.Linear(n_in, n_out)
    nn.init.normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


class MLMHead(nn.Module):
    """transform (dense, act, LN) then a decoder tied to the word embeddings.

    With labels, only the masked positions are projected onto the vocabulary: ~15% of the
    tokens, which saves most of the largest matmul in pre-training.
    """

    def __init__(self, cfg: EncoderConfig, word: nn.Embedding):
        super().__init__()
        E = cfg.embedding_size or cfg.hidden_size
        self.dense = nn.Linear(cfg.hidden_size, E)
        self.act = ACTIVATIONS[cfg.activation]
        self.norm = nn.LayerNorm(E, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(E, cfg.vocab_size)
        self.decoder.weight = word.weight                       # tied
        nn.init.zeros_(self.decoder.bias)
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)

    def logits(self, h: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.dense(h))))

    def forward(self, out: Any, batch: dict[str, Tensor]) -> ModelOutput:
        labels = batch.get("labels")
        h = out.last_hidden_state
        if labels is None:
            return ModelOutput(logits=self.logits(h))
        sel = labels != IGNORE
        logits = self.logits(h[sel])                             # [N, V]
        target = labels[sel]
        if target.numel() == 0:                                  # nothing masked in this batch
            loss = h.sum() * 0.0
            return ModelOutput(loss=loss, logits=logits, aux={"mlm_loss": loss.detach()})
        loss = F.cross_entropy(logits.float(), target)
        aux = {"mlm_loss": loss.detach()}
        if not self.training:  # the argmax over N x V costs ~5% of a training step; report it in eval
            aux["mlm_acc"] = (logits.argmax(-1) == target).float().mean()
        return ModelOutput(loss=loss, logits=logits, aux=aux)


class PretrainHead(nn.Module):
    """MLM + a 2-way sentence-pair head (NSP: is B the real next segment; SOP: is the order swapped)."""

    def __init__(self, cfg: EncoderConfig, word: nn.Embedding):
        super().__init__()
        self.mlm = MLMHead(cfg, word)
        self.pair = nn.Linear(cfg.hidden_size, 2)

    def forward(self, out: Any, batch: dict[str, Tensor]) -> ModelOutput:
        res = self.mlm(out, batch)
        res.nsp_logits = self.pair(_cls_vector(out, batch))
        target = batch.get("next_sentence_label")
        if target is not None and res.loss is not None:
            nsp = F.cross_entropy(res.nsp_logits.float(), target)
            res.aux["nsp_loss"] = nsp.detach()
            res.aux["nsp_acc"] = (res.nsp_logits.argmax(-1) == target).float().mean()
            res.loss = res.loss + nsp
        return res


class CLMHead(nn.Module):
    """Next-token prediction; labels are the inputs, shifted here (-100 positions ignored)."""

    def __init__(self, cfg: DecoderConfig, wte: nn.Embedding):
        super().__init__()
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.lm_head.weight = wte.weight                        # tied

    def forward(self, out: Any, batch: dict[str, Tensor]) -> ModelOutput:
        logits = self.lm_head(out.last_hidden_state)            # [B, T, V]
        labels = batch.get("labels")
        if labels is None:
            return ModelOutput(logits=logits)
        shift_logits = logits[:, :-1].reshape(-1, logits.size(-1))
        shift_labels = labels[:, 1:].reshape(-1)
        loss = F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=IGNORE)
        return ModelOutput(loss=loss, logits=logits, aux={"clm_loss": loss.detach()})


class SequenceHead(nn.Module):
    """Classification of the whole input (single sentences or pairs)."""

    def __init__(self, hidden: int, num_labels: int, dropout: float):
        super().__init__()
        self.drop = Dropout(dropout)
        self.classifier = _linear(hidden, num_labels)

    def forward(self, out: Any, batch: dict[str, Tensor]) -> ModelOutput:
        logits = self.classifier(self.drop(_cls_vector(out, batch)))     # [B, C]
        labels = batch.get("labels")
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ModelOutput(loss=loss, logits=logits)


class TokenHead(nn.Module):
    """One label per token (NER); -100 labels (sub-word continuations, specials) are ignored."""

    def __init__(self, hidden: int, num_labels: int, dropout: float):
        super().__init__()
        self.drop = Dropout(dropout)
        self.classifier = _linear(hidden, num_labels)

    def forward(self, out: Any, batch: dict[str, Tensor]) -> ModelOutput:
        logits = self.classifier(self.drop(out.last_hidden_state))      # [B, T, C]
        labels = batch.get("labels")
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
        return ModelOutput(loss=loss, logits=logits)


class SpanHead(nn.Module):
    """Extractive QA: start and end logits per token."""

    def __init__(self, hidden: int):
        super().__init__()
        self.qa_outputs = _linear(hidden, 2)

    def forward(self, out: Any, batch: dict[str, Tensor]) -> ModelOutput:
        start, end = self.qa_outputs(out.last_hidden_state).unbind(-1)  # [B, T] each
        mask = batch.get("attention_mask")
        if mask is not None:  # never predict padding
            start = start.masked_fill(mask == 0, torch.finfo(start.dtype).min)
            end = end.masked_fill(mask == 0, torch.finfo(end.dtype).min)
        sp, ep = batch.get("start_positions"), batch.get("end_positions")
        loss = None
        if sp is not None and ep is not None:
            T = start.size(1)
            loss = (F.cross_entropy(start.float(), sp.clamp(0, T - 1))
                    + F.cross_entropy(end.float(), ep.clamp(0, T - 1))) / 2
        return ModelOutput(loss=loss, start_logits=start, end_logits=end)


class NoHead(nn.Module):
    """Bare backbone (feature extraction, HF BertModel)."""

    def forward(self, out: Any, batch: dict[str, Tensor]) -> ModelOutput:
        return ModelOutput()


def _word(backbone: nn.Module) -> nn.Embedding:
    return backbone.embeddings.word if hasattr(backbone, "embeddings") else backbone.wte


def _dropout(cfg: Any, hc: dict[str, Any]) -> float:
    return float(hc.get("dropout", cfg.hidden_dropout))


HeadBuilder = Callable[[Any, nn.Module, dict[str, Any]], nn.Module]
HEADS: dict[str, HeadBuilder] = {
    "base": lambda cfg, bb, hc: NoHead(),
    "mlm": lambda cfg, bb, hc: MLMHead(cfg, _word(bb)),
    "mlm+nsp": lambda cfg, bb, hc: PretrainHead(cfg, _word(bb)),
    "mlm+sop": lambda cfg, bb, hc: PretrainHead(cfg, _word(bb)),
    "clm": lambda cfg, bb, hc: CLMHead(cfg, _word(bb)),
    "classify": lambda cfg, bb, hc: SequenceHead(cfg.hidden_size, int(hc["num_labels"]), _dropout(cfg, hc)),
    "token": lambda cfg, bb, hc: TokenHead(cfg.hidden_size, int(hc["num_labels"]), _dropout(cfg, hc)),
    "span": lambda cfg, bb, hc: SpanHead(cfg.hidden_size),
}
# Which backbone family each task runs on.
TASK_FAMILIES: dict[str, tuple[str, ...]] = {
    "base": ("encoder", "decoder"), "mlm": ("encoder",), "mlm+nsp": ("encoder",), "mlm+sop": ("encoder",),
    "clm": ("decoder",), "classify": ("encoder", "decoder"), "token": ("encoder",), "span": ("encoder",),
}
