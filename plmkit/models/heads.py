"""Task heads. Each takes the backbone output and the batch, returns a ``ModelOutput``.

Registry ``HEADS`` maps a task name to a builder ``(model_cfg, backbone, head_config) -> head``.
Losses are computed here so every stage (pretrain, finetune, distill) trains the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PlmkitError, a_or_an
from .config import ModelConfig
from .cross_entropy import IGNORE, cross_entropy
from .dropout import Dropout
from .config import POOLINGS
from .layers import Transform, activation, make_norm
from .transformer import BackboneOutput


def token_loss(logits: Tensor, labels: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Cross-entropy over labelled positions (logits [N, C], labels [N]): their mean, or, when the
    batch carries ``label_norm`` (training on length-bucketed batches, ``data.features.label_norm``),
    their sum over that dataset-wide mean count, so each token weighs the same in every batch."""
    norm = batch.get("label_norm")
    if norm is None:
        return cross_entropy(logits, labels)
    return cross_entropy(logits, labels, reduction="sum") / norm


@dataclass
class ModelOutput:
    loss: Tensor | None = None
    logits: Tensor | None = None                    # task logits; MLM / CLM with labels: [N_labelled, V]
    nsp_logits: Tensor | None = None                # [B, 2]
    start_logits: Tensor | None = None              # [B, T]
    end_logits: Tensor | None = None                # [B, T]
    last_hidden_state: Tensor | None = None         # [B, T, H]
    pooled: Tensor | None = None                    # [B, H]
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    past_key_values: Any = None
    embeddings: Tensor | None = None                # [B, H] sentence vectors (embed); training: [B + K*B, H]
    aux: dict[str, Tensor] = field(default_factory=dict)   # component losses and accuracies


# What an encoder's classification head reads (head_config["pooling"]): BERT's pooler, or a pooling
# of the token states; a sentence-embedding head reads one of POOLINGS.
CLASSIFY_POOLINGS = ("pooler", *POOLINGS)


def default_pooling(cfg: ModelConfig) -> str | None:
    """The sentence vector the architecture itself reads (what its HF layout exports); None for decoders."""
    if cfg.causal:
        return None
    return "pooler" if cfg.use_pooler and cfg.cls_head is None else cfg.pooling


def sentence_vector(cfg: ModelConfig, out: BackboneOutput, batch: dict[str, Tensor],
                    pooling: str | None = None) -> Tensor:
    """[B, H]: the last real token of a decoder; an encoder's pooler output, unless its classification
    head has a dense of its own (then the raw [CLS], or the mean of the real tokens with
    ``pooling: mean``). ``pooling`` (a classification head's head_config["pooling"]) overrides the
    architecture's choice for encoders: pooler | cls | mean."""
    h, mask = out.last_hidden_state, batch.get("attention_mask")
    rows = torch.arange(h.size(0), device=h.device)
    if cfg.causal:   # the last 1 of the mask: right- and left-padded rows alike
        last = h.size(1) - 1 - (mask.flip(1).argmax(1) if mask is not None else 0)
        return h[rows, last]
    pooling = pooling or default_pooling(cfg)
    if pooling == "pooler" and out.pooled is not None:
        return out.pooled
    if pooling == "mean":
        m = mask[..., None].to(h.dtype) if mask is not None else torch.ones_like(h[..., :1])
        return (h * m).sum(1) / m.sum(1)
    return h[:, 0]


def _linear(n_in: int, n_out: int) -> nn.Linear:
    """A task-head projection with BERT's initialisation: N(0, 0.02) weights, zero bias."""
    layer = nn.Linear(n_in, n_out)
    nn.init.normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


def _transform(cfg: ModelConfig, activation: str | None) -> Transform | None:
    """A head's own dense + activation (+ norm), initialised as BERT's heads; None without one."""
    if activation is None:
        return None
    t = Transform(cfg, cfg.hidden_size, cfg.hidden_size, activation, cfg.head_norm, cfg.head_bias)
    nn.init.normal_(t.dense.weight, std=0.02)
    if t.dense.bias is not None:
        nn.init.zeros_(t.dense.bias)
    return t


class MLMHead(nn.Module):
    """transform (dense H -> E, act, norm) then a decoder E -> V, tied to the word embeddings.

    With labels, only the masked positions are projected onto the vocabulary: ~15% of the
    tokens, which saves most of the largest matmul in pre-training.
    """

    def __init__(self, cfg: ModelConfig, word: nn.Embedding):
        super().__init__()
        E = cfg.embedding_width
        self.dense = nn.Linear(cfg.hidden_size, E, bias=cfg.head_bias)
        self.act = activation(cfg.head_activation or cfg.activation)
        self.norm = make_norm(E, cfg)
        self.decoder = nn.Linear(E, cfg.vocab_size)
        if cfg.tie_embeddings:
            self.decoder.weight = word.weight
        else:
            nn.init.normal_(self.decoder.weight, std=0.02)
        nn.init.zeros_(self.decoder.bias)
        nn.init.normal_(self.dense.weight, std=0.02)
        if self.dense.bias is not None:
            nn.init.zeros_(self.dense.bias)

    def logits(self, h: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.dense(h))))

    def forward(self, out: BackboneOutput, batch: dict[str, Tensor]) -> ModelOutput:
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
        loss = cross_entropy(logits, target)
        aux = {"mlm_loss": loss.detach()}
        if not self.training:  # the argmax over N x V costs ~5% of a training step; report it in eval
            aux["mlm_acc"] = (logits.argmax(-1) == target).float().mean()
        return ModelOutput(loss=loss, logits=logits, aux=aux)


class PretrainHead(nn.Module):
    """MLM + a 2-way sentence-pair head (NSP: is B the real next segment; SOP: is the order swapped)."""

    def __init__(self, cfg: ModelConfig, word: nn.Embedding):
        super().__init__()
        self.cfg = cfg
        self.mlm = MLMHead(cfg, word)
        self.pair = nn.Linear(cfg.hidden_size, 2)

    def forward(self, out: BackboneOutput, batch: dict[str, Tensor]) -> ModelOutput:
        res = self.mlm(out, batch)
        res.nsp_logits = self.pair(sentence_vector(self.cfg, out, batch))
        target = batch.get("next_sentence_label")
        if target is not None and res.loss is not None:
            nsp = F.cross_entropy(res.nsp_logits.float(), target)
            res.aux["nsp_loss"] = nsp.detach()
            res.aux["nsp_acc"] = (res.nsp_logits.argmax(-1) == target).float().mean()
            res.loss = res.loss + nsp
        return res


class CLMHead(nn.Module):
    """Next-token prediction; labels are the inputs, shifted here (-100 positions ignored)."""

    def __init__(self, cfg: ModelConfig, word: nn.Embedding):
        super().__init__()
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = word.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=0.02)

    def forward(self, out: BackboneOutput, batch: dict[str, Tensor]) -> ModelOutput:
        h = out.last_hidden_state
        labels = batch.get("labels")
        if labels is None:
            return ModelOutput(logits=self.lm_head(h))          # [B, T, V]
        # With labels only the positions that predict a labelled token reach the vocabulary projection
        # ([N, V], as MLMHead does): a chat turn's prompt, the padding and the last position cost no
        # V-wide matmul, forward or backward (SmolLM2-135M: the head is ~1/5 of a token's forward FLOPs).
        target = labels[:, 1:]
        sel = target != IGNORE
        logits = self.lm_head(h[:, :-1][sel])                    # [N, V]
        if logits.size(0) == 0:                                  # nothing labelled in this batch
            loss = h.sum() * 0.0
        else:
            loss = token_loss(logits, target[sel], batch)
        return ModelOutput(loss=loss, logits=logits, aux={"clm_loss": loss.detach()})


class SequenceHead(nn.Module):
    """Classification of the whole input (single sentences or pairs): the sentence vector,
    the head's own dense + activation when the family has one (RoBERTa, ELECTRA, DistilBERT,
    ModernBERT), dropout, classifier."""

    def __init__(self, cfg: ModelConfig, num_labels: int, dropout: float, pooling: str | None = None):
        super().__init__()
        if pooling is not None and pooling not in CLASSIFY_POOLINGS:
            raise PlmkitError(f"unknown pooling {pooling!r} (choose {', '.join(CLASSIFY_POOLINGS)})")
        self.cfg = cfg
        self.pooling = pooling
        self.transform = _transform(cfg, cfg.cls_head)
        self.drop = Dropout(dropout)
        self.classifier = _linear(cfg.hidden_size, num_labels)

    def forward(self, out: BackboneOutput, batch: dict[str, Tensor]) -> ModelOutput:
        v = sentence_vector(self.cfg, out, batch, self.pooling)          # [B, H]
        if self.transform is not None:
            v = self.transform(v)
        logits = self.classifier(self.drop(v))                           # [B, C]
        labels = batch.get("labels")
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ModelOutput(loss=loss, logits=logits)


def _tokens(transform: Transform | None, out: BackboneOutput) -> Tensor:
    h = out.last_hidden_state
    return transform(h) if transform is not None else h


class TokenHead(nn.Module):
    """One label per token (NER); -100 labels (sub-word continuations, specials) are ignored."""

    def __init__(self, cfg: ModelConfig, num_labels: int, dropout: float):
        super().__init__()
        self.transform = _transform(cfg, cfg.head_activation or cfg.activation) if cfg.token_transform else None
        self.drop = Dropout(dropout)
        self.classifier = _linear(cfg.hidden_size, num_labels)

    def forward(self, out: BackboneOutput, batch: dict[str, Tensor]) -> ModelOutput:
        logits = self.classifier(self.drop(_tokens(self.transform, out)))    # [B, T, C]
        labels = batch.get("labels")
        loss = None
        if labels is not None:
            loss = token_loss(logits.flatten(0, 1), labels.flatten(), batch)
        return ModelOutput(loss=loss, logits=logits)


class SpanHead(nn.Module):
    """Extractive QA: start and end logits per token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.transform = _transform(cfg, cfg.head_activation or cfg.activation) if cfg.token_transform else None
        self.qa_outputs = _linear(cfg.hidden_size, 2)

    def forward(self, out: BackboneOutput, batch: dict[str, Tensor]) -> ModelOutput:
        start, end = self.qa_outputs(_tokens(self.transform, out)).unbind(-1)   # [B, T] each
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


class RTDHead(nn.Module):
    """ELECTRA's discriminator: was each token replaced (1) or is it the original (0)? dense H -> H,
    activation, H -> 1 (HF ``discriminator_predictions``); binary cross-entropy over the labelled
    tokens (labels -100 at padding)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = _linear(cfg.hidden_size, cfg.hidden_size)
        self.act = activation(cfg.head_activation or cfg.activation)
        self.prediction = _linear(cfg.hidden_size, 1)

    def forward(self, out: BackboneOutput, batch: dict[str, Tensor]) -> ModelOutput:
        logits = self.prediction(self.act(self.dense(out.last_hidden_state))).squeeze(-1)     # [B, T]
        labels = batch.get("labels")
        if labels is None:
            return ModelOutput(logits=logits)
        keep = labels != IGNORE
        picked, target = logits[keep].float(), labels[keep].float()
        loss = F.binary_cross_entropy_with_logits(picked, target)
        aux = {"rtd_loss": loss.detach()}
        if not self.training:
            aux["rtd_acc"] = ((picked > 0).float() == target).float().mean()
        return ModelOutput(loss=loss, logits=logits, aux=aux)


PAIR_KEYS = ("pair_input_ids", "pair_attention_mask", "pair_token_type_ids")   # embed: the candidate texts


class EmbedHead(nn.Module):
    """Sentence embeddings: the mean of the real tokens' last hidden states (or the [CLS] state),
    unit length with ``normalize``. No weights of its own (a learnable scale aside): an embed model
    is its backbone plus this pooling, which is what sentence-transformers' layout stores.

    Training batches carry the texts each input is compared with: ``pair_out`` (the backbone run by
    ``PlmModel`` on ``pair_input_ids``, K-1 rows per input: the B positives, then the B hard negatives
    of triplets), and either
      ``labels`` [B, K-1], a key per candidate text: multiple-negatives ranking (sentence-transformers'
      MultipleNegativesRankingLoss): cross-entropy of scale * cos(input i, candidate j) over every
      candidate of the batch, the target being i's positive. A candidate with the key of i's positive
      (the same passage twice in one batch) is left out of i's negatives, not counted against it;
      or ``scores`` [B], a similarity per pair: CoSENT (Su 2022; sentence-transformers' CoSENTLoss),
      log(1 + sum over pairs (i, j) with score_i > score_j of exp(scale * (cos_j - cos_i))).
    With ``matryoshka_dims`` the loss is summed over the vectors' prefixes of those lengths, each
    compared by cosine (Kusupati et al. 2022; MatryoshkaLoss), so a prefix is an embedding of its own.
    """

    def __init__(self, cfg: ModelConfig, hc: dict[str, Any]):
        super().__init__()
        self.cfg = cfg
        self.pooling = hc.get("pooling", "mean")
        if self.pooling not in POOLINGS:
            raise PlmkitError(f"unknown embedding pooling {self.pooling!r} (choose {', '.join(POOLINGS)})")
        self.normalize = bool(hc.get("normalize", True))
        scale = float(hc.get("scale", 20.0))
        if not scale > 0:
            raise PlmkitError(f"the similarity scale must be > 0, got {scale}")
        # learnable: the log of the scale trains (it stays positive), starting from the given value
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale))) if hc.get("learnable_scale") else None
        self.fixed_scale = scale
        self.dims = matryoshka_dims(hc.get("matryoshka_dims"), cfg.hidden_size)

    def scale(self) -> Tensor | float:
        return self.log_scale.exp() if self.log_scale is not None else self.fixed_scale

    def _vectors(self, out: BackboneOutput, mask: Tensor | None) -> Tensor:
        v = sentence_vector(self.cfg, out, {"attention_mask": mask}, self.pooling)
        return F.normalize(v, dim=-1) if self.normalize else v

    def forward(self, out: BackboneOutput, batch: dict[str, Any]) -> ModelOutput:
        v = self._vectors(out, batch.get("attention_mask"))                      # [B, H]
        pair_out = batch.get("pair_out")
        if pair_out is None:
            return ModelOutput(embeddings=v)
        c = self._vectors(pair_out, batch.get("pair_attention_mask"))             # [(K-1)*B, H]
        loss = None
        if batch.get("scores") is not None:
            loss = sum(cosent_loss(v[:, :d], c[:, :d], batch["scores"], self.scale()) for d in self.dims)
        elif batch.get("labels") is not None:
            per_input = c.size(0) // v.size(0)     # labels come padded to the inputs' length: cut them
            keys = batch["labels"][:, :per_input].t().reshape(-1)               # role-major, as the candidates
            loss = sum(ranking_loss(v[:, :d], c[:, :d], keys, self.scale()) for d in self.dims)
        return ModelOutput(loss=loss, embeddings=torch.cat([v, c]))


def matryoshka_dims(dims: Any, hidden: int) -> list[int]:
    """The prefix lengths the loss covers, longest first; the full width is always one of them."""
    given = [int(d) for d in dims or []]
    bad = [d for d in given if not 0 < d <= hidden]
    if bad:
        raise PlmkitError(f"matryoshka dimension {bad[0]} is not between 1 and the model's width {hidden}")
    return sorted({*given, hidden}, reverse=True)


def _cosines(a: Tensor, b: Tensor) -> Tensor:
    """[N, M] cosine similarities in fp32 (autocast would compute them in bf16)."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).t()


def ranking_loss(anchors: Tensor, candidates: Tensor, keys: Tensor, scale: Tensor | float) -> Tensor:
    """Multiple-negatives ranking: anchors [B, d], candidates [C, d] (rows 0..B-1 the positives),
    ``keys`` [C] a key per candidate text; candidate j != i with i's positive key is masked out."""
    B = anchors.size(0)
    sim = _cosines(anchors, candidates) * scale                               # [B, C]
    same = keys[None, :] == keys[:B, None]
    same[torch.arange(B), torch.arange(B)] = False
    sim = sim.masked_fill(same, torch.finfo(sim.dtype).min)
    return F.cross_entropy(sim, torch.arange(B, device=sim.device))


def cosent_loss(a: Tensor, b: Tensor, scores: Tensor, scale: Tensor | float) -> Tensor:
    """CoSENT over the pairs (a_i, b_i) with gold similarities ``scores`` [B]."""
    cos = (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1) * scale    # [B]
    diff = cos[None, :] - cos[:, None]                                         # [i, j] = cos_j - cos_i
    diff = diff.masked_fill(~(scores[:, None] > scores[None, :]), torch.finfo(diff.dtype).min)
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff.flatten()]), 0)


class NoHead(nn.Module):
    """Bare backbone (feature extraction, HF BertModel)."""

    def forward(self, out: BackboneOutput, batch: dict[str, Tensor]) -> ModelOutput:
        return ModelOutput()


def _dropout(cfg: ModelConfig, hc: dict[str, Any]) -> float:
    return float(hc.get("dropout", cfg.hidden_dropout))


HeadBuilder = Callable[[ModelConfig, nn.Module, dict[str, Any]], nn.Module]
HEADS: dict[str, HeadBuilder] = {
    "base": lambda cfg, bb, hc: NoHead(),
    "mlm": lambda cfg, bb, hc: MLMHead(cfg, bb.embeddings.word),
    "mlm+nsp": lambda cfg, bb, hc: PretrainHead(cfg, bb.embeddings.word),
    "mlm+sop": lambda cfg, bb, hc: PretrainHead(cfg, bb.embeddings.word),
    "clm": lambda cfg, bb, hc: CLMHead(cfg, bb.embeddings.word),
    "classify": lambda cfg, bb, hc: SequenceHead(cfg, int(hc["num_labels"]), _dropout(cfg, hc), hc.get("pooling")),
    "token": lambda cfg, bb, hc: TokenHead(cfg, int(hc["num_labels"]), _dropout(cfg, hc)),
    "span": lambda cfg, bb, hc: SpanHead(cfg),
    "rtd": lambda cfg, bb, hc: RTDHead(cfg),
    "embed": lambda cfg, bb, hc: EmbedHead(cfg, hc),
}
# Which backbones a head fits: True needs a causal model, False a bidirectional one, None either.
HEAD_CAUSAL: dict[str, bool | None] = {
    "base": None, "mlm": False, "mlm+nsp": False, "mlm+sop": False, "clm": True, "classify": None,
    "token": False, "span": False, "rtd": False, "embed": False,
}
# Heads that add nothing transformers needs (embed: a pooling of the backbone's states; its scale
# only trains): exported to the Hugging Face layout as this head instead.
HF_EXPORT_AS = {"embed": "base"}


def check_head(task: str, cfg: ModelConfig) -> None:
    """A clear error for a head the backbone cannot carry (an MLM on a decoder, ...)."""
    if task not in HEADS:
        raise PlmkitError(f"unknown task head '{task}' (known: {', '.join(HEADS)})")
    need = HEAD_CAUSAL[task]
    if need is not None and need != cfg.causal:
        want = "a decoder (causal)" if need else "an encoder (bidirectional)"
        raise PlmkitError(f"task '{task}' needs {want} model, got {a_or_an(cfg.family)}")
