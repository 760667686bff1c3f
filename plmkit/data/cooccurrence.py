"""Word vectors from a corpus's co-occurrence counts: the positive pointwise mutual information
(PPMI) of each token with its neighbours, reduced by a truncated SVD (Levy, Goldberg & Dagan 2015).

This is pre-training that costs seconds instead of hours: a new model's token embeddings start
where tokens used in the same contexts lie near each other ("good", "fun" and "pretty"; "bad",
"awful" and "painfully" on SST-2's own text), so a fine-tune on a few labels generalises from the
words it sees labelled to the ones it does not. Measured (benchmarks/RESULTS.md, issue 24): a
random BERT-mini whose embeddings alone start here fine-tunes 4-5 points better at 1,000 SST-2
labels, 2 points better on ChnSentiCorp.

Counts stay inside a segment (a line), weighted 1/distance; the context side keeps only the most
frequent tokens so that the count matrix fits ``max_cells`` floats, and at most ``max_tokens``
tokens are read (the vectors of frequent tokens settle long before a big corpus is through).
"""
from __future__ import annotations

import numpy as np
import torch

from .shards import TokenShards

WINDOW = 5                      # tokens each side
MAX_TOKENS = 20_000_000
MAX_CELLS = 1 << 26             # 64M float32 counts: 256 MB
SMOOTHING = 0.75                # context frequencies ** 0.75 (word2vec's negative-sampling smoothing)


def ppmi_vectors(shards: TokenShards, vocab_size: int, dim: int, *, window: int = WINDOW,
                 max_tokens: int = MAX_TOKENS, max_cells: int = MAX_CELLS) -> tuple[torch.Tensor, torch.Tensor]:
    """([vocab_size, dim] vectors, [vocab_size] bool: the rows that occur in the corpus). The vectors
    are U * sqrt(S) of the PPMI matrix's top ``dim`` singular triples, centred, with standard
    deviation 1 over all their entries; rows that never occur are zero (callers keep their own)."""
    counts, _ = _cooccurrence(shards, vocab_size, window, max_tokens, max_cells)
    rows = counts.sum(1)
    seen = rows > 0
    cols = counts.sum(0) ** SMOOTHING
    total = counts.sum()
    expected = (rows / total)[:, None] * (cols / cols.sum().clamp_min(1e-30))[None, :]
    # a zero count's log is far below 0, so the clamp zeroes it too
    ppmi = torch.log((counts / total).clamp_min(1e-30) / expected.clamp_min(1e-30)).clamp_min_(0)
    del counts, expected
    k = min(dim, *ppmi.shape)
    u, s, _ = torch.svd_lowrank(ppmi, q=k, niter=4)
    vectors = torch.zeros(vocab_size, dim)
    vectors[:, :k] = u * s.sqrt()
    vectors[seen] -= vectors[seen].mean(0)
    vectors[~seen] = 0
    return vectors / vectors[seen].std().clamp_min(1e-12), seen


def _cooccurrence(shards: TokenShards, vocab_size: int, window: int, max_tokens: int,
                  max_cells: int) -> tuple[torch.Tensor, np.ndarray]:
    """([vocab_size, n_contexts] float32, [n_contexts] token ids): 1/distance-weighted counts of each
    token with each of the ``n_contexts`` most frequent tokens (most frequent first) within ``window``
    positions in the same segment."""
    segs = np.asarray(shards.segments[_train_segments(shards)])
    lengths = segs[:, 1] - segs[:, 0]
    keep = np.cumsum(lengths) <= max_tokens
    segs, lengths = segs[keep], lengths[keep]
    if not len(segs):
        return torch.zeros(vocab_size, 1), np.zeros(1, dtype=np.int64)
    # a split's segments are one contiguous token slice (shards.py)
    tokens = np.asarray(shards.tokens[segs[0, 0]:segs[-1, 1]]).astype(np.int64)
    seg_of = np.repeat(np.arange(len(segs)), lengths)
    freq = np.bincount(tokens, minlength=vocab_size)[:vocab_size]
    n_ctx = max(1, min(vocab_size, max_cells // vocab_size))
    ctx_ids = np.argsort(-freq, kind="stable")[:n_ctx]
    ctx_rank = np.full(vocab_size, -1, dtype=np.int64)
    ctx_rank[ctx_ids] = np.arange(n_ctx)
    counts = torch.zeros(vocab_size * n_ctx, dtype=torch.float32)
    for d in range(1, window + 1):
        same = seg_of[d:] == seg_of[:-d]
        a, b = tokens[:-d][same], tokens[d:][same]
        for left, right in ((a, b), (b, a)):
            col = ctx_rank[right]
            ok = col >= 0
            idx = torch.from_numpy(left[ok] * n_ctx + col[ok])
            counts.index_add_(0, idx, torch.full((len(idx),), 1.0 / d))
    return counts.view(vocab_size, n_ctx), ctx_ids


def _train_segments(shards: TokenShards) -> slice:
    """The segments of this split's documents (contiguous: documents follow each other)."""
    if not shards.n_docs:
        return slice(0, 0)
    return slice(int(shards.docs[0, 0]), int(shards.docs[-1, 1]))

