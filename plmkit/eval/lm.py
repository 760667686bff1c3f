"""Language-model metrics: loss, MLM / NSP accuracy and perplexity over batches, and the training
FLOPs per token an objective needs (for MFU).

Both take any model with plmkit's interface (``model(**batch) -> .loss, .aux``; ``.config``,
``.task``, ``.num_parameters()``), so this module imports nothing of plmkit's models.
"""
from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def evaluate_lm(model: nn.Module, source, max_batches: int | None = None) -> dict[str, float]:
    """Average loss and accuracies over a (non-looping) batch source."""
    totals: dict[str, float] = {}
    n = 0
    device = next(model.parameters()).device
    for i, batch in enumerate(source):
        if max_batches is not None and i >= max_batches:
            break
        out = model(**{k: v.to(device) for k, v in batch.items()})
        totals["loss"] = totals.get("loss", 0.0) + float(out.loss)
        for key, value in out.aux.items():
            if key.endswith("_acc"):
                totals[key] = totals.get(key, 0.0) + float(value)
        n += 1
    if n == 0:
        return {}
    metrics = {k: v / n for k, v in totals.items()}
    if "clm_loss" in getattr(out, "aux", {}) or model.task == "clm":
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
    return metrics


def flops_per_token(model: nn.Module, seq_len: int, mlm_prob: float = 0.15) -> float:
    """Training FLOPs per token actually required by the objective (PaLM-style accounting).

    6 x (non-embedding parameters) for the dense layers, 12 x L x h x d x T for attention,
    and the vocabulary projection: on every token for CLM, on the ``mlm_prob`` masked
    tokens only for MLM (plmkit's MLM head projects only those).
    """
    cfg = model.config
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n or n.startswith("backbone.w"))
    dense = model.num_parameters() - emb
    attn = 12 * sum(cfg.heads) * cfg.head_dim * seq_len
    width = getattr(cfg, "embedding_size", None) or cfg.hidden_size
    vocab = 6 * width * cfg.vocab_size * (1.0 if model.task == "clm" else mlm_prob)
    return 6.0 * dense + attn + vocab
