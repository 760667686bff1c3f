"""Sentence embeddings: fine-tune an encoder so that related texts get close vectors (task 'embed').

Data: pairs, triplets, scored pairs or SQuAD JSON (data/pairs.py); the loss is in-batch ranking
or CoSENT (models/heads.py, ``EmbedHead``). Evaluation follows the data's kind:
  retrieval (pairs, triplets, SQuAD): every distinct positive and negative of the file is the
      corpus, every distinct anchor a query whose relevant passages are its positives; the corpus
      is ranked by cosine similarity: MRR@10, recall@1, recall@10 and nDCG@10 (0-1).
  scored pairs: Spearman (and Pearson) correlation of each pair's cosine with its gold score.
Predict writes each anchor's vector (and its cosine to the second text, when a row has one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..config import option
from ..data.pairs import PairExample, encode_pairs, passage_keys, read_pairs
from ..errors import PlmkitError
from ..eval.metrics import pearson, retrieval_scores, spearman
from ..train.defaults import FixedTraining
from .common import Prep, TaskData, forward_batches

TOP_K = 10
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
GROUP = "sentence embeddings (--task embed)"
RANKING_DEFAULTS = FixedTraining(batch_size=32, epochs=1.0, lr_scale=0.2)


@dataclass
class EmbedSettings:
    """The embed head's training settings (``finetune --task embed``), kept in its head_config."""
    normalize: bool = option(True, help="unit-length vectors, ready for dot-product search (sentence-transformers' "
                             "Normalize module); the loss compares by cosine either way", group=GROUP)
    scale: float = option(20.0, help="similarity scale of the loss: the ranking loss's logits are scale * cosine "
                          "(sentence-transformers' default)", gt=0, group=GROUP)
    learnable_scale: bool = option(False, help="train the scale, starting from --scale", group=GROUP)
    matryoshka_dims: str | None = option(None, help="also train these prefixes of the vectors as embeddings of "
                                         "their own, e.g. 384,256,128,64 (Matryoshka; the loss is summed over "
                                         "them); serve's 'dimensions' may then cut vectors to them", group=GROUP)

    def head_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"normalize": self.normalize, "scale": self.scale,
                                  "learnable_scale": self.learnable_scale}
        if self.matryoshka_dims:
            config["matryoshka_dims"] = parse_dims(self.matryoshka_dims)
        return config


def parse_dims(text: str) -> list[int]:
    """'384,256,128,64' -> [384, 256, 128, 64] (longest first, no repeats)."""
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise PlmkitError(f"--matryoshka-dims: expected positive sizes like 384,256,128,64, got {text!r}")
    return sorted({int(p) for p in parts}, reverse=True)


class EmbedTask:
    name = "embed"
    head = "embed"
    metric = "mrr@10"
    greater_is_better = True
    group_by_length = True      # batches of similar lengths, no passage twice in one (data/features.py)
    labelled = False
    detailed = False
    on_graph = True
    file_layout = "lines"
    max_length_from = "model"  # texts cut where the model's sentence-transformers config cuts them (MiniLM: 256)
    hf_auto = None
    what = "a sentence-embedding model"
    help = ("pairs (anchor, positive) or triplets (+ negative) in TSV/CSV/JSONL, scored pairs (text, text, "
            "score), or SQuAD JSON (each question -> its paragraph)")

    def train_defaults(self, examples: list[PairExample]) -> FixedTraining | None:
        """Ranking pairs and triplets: one pass at batch 32 and a fifth of the strategy's rate (full:
        2e-5, sentence-transformers' own), whatever the data's size; scored pairs (CoSENT): the
        data-size rule. Measured (benchmarks/embed_defaults.py, all-MiniLM-L6-v2): on SQuAD's
        questions the rule's 3 passes at 8.7e-5 fell below the untouched model (MRR@10 0.808 vs
        0.820; these defaults 0.845), on MRPC's scored pairs these defaults gained less than the
        rule (Spearman 0.489 vs 0.579; untouched 0.374): a ranking of texts is what the sentence
        encoder was trained for, a paraphrase score is a new target."""
        return None if any(ex.score is not None for ex in examples) else RANKING_DEFAULTS

    def read(self, path: str, prep: Prep, labels: list[str] | None = None,
             require_labels: bool = True) -> list[PairExample]:
        return read_pairs(path, anchor_column=prep.text_column, positive_column=prep.text_pair_column,
                          score_column=prep.label_column, header=prep.header, require_pairs=require_labels)

    def head_config(self, examples: list[PairExample], prep: Prep) -> dict[str, Any]:
        return {}      # pooling, normalisation, scale, Matryoshka sizes: the finetune options (EmbedSettings)

    def encode(self, tok: Tokenizer, examples: list[PairExample], head_config: dict[str, Any],
               prep: Prep) -> list[dict[str, Any]]:
        return encode_pairs(tok, examples, prep.max_length)

    def metric_of(self, examples: list[PairExample]) -> str:
        """Scored pairs are judged by Spearman's correlation, retrieval sets by MRR@10."""
        return "spearman" if examples and examples[0].score is not None else self.metric

    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        if data.examples and data.examples[0].score is not None:
            return _correlation(model, data)
        return _retrieval(model, data)

    def predict(self, model: nn.Module, data: TaskData) -> list[dict[str, Any]]:
        vectors = embed_features(model, data, [_text(f) for f in data.features])
        pairs = [f for f in data.features if "pair_input_ids" in f]
        others = embed_features(model, data, [_text(f, 0) for f in pairs]) if pairs else None
        rows = []
        for i, (ex, v) in enumerate(zip(data.examples, vectors)):
            row: dict[str, Any] = {"text": ex.anchor, "embedding": [round(x, 6) for x in v.tolist()]}
            if others is not None:
                row.update(text_pair=ex.positive, cosine=round(float(F.cosine_similarity(v, others[i], 0)), 6))
            rows.append(row)
        return rows


def _text(feature: dict[str, Any], pair: int | None = None) -> dict[str, Any]:
    """The model input of one text of a feature: the anchor, or its ``pair``-th other text."""
    if pair is None:
        return {k: feature[k] for k in TEXT_KEYS}
    return {k: feature[f"pair_{k}"][pair] for k in TEXT_KEYS}


def embed_features(model: nn.Module, data: TaskData, features: list[dict[str, Any]]) -> Tensor:
    """[N, H] float32 sentence vectors of single-text ``features``, in their order."""
    part = TaskData([], features, data.tok, data.head_config, data.infer)
    out: Tensor | None = None
    for idx, res in forward_batches(model, part):
        vec = res.embeddings.float().cpu()
        if out is None:
            out = torch.empty(len(features), vec.size(1))
        out[idx] = vec
    assert out is not None, "embed_features of no features"
    return out


def _retrieval(model: nn.Module, data: TaskData) -> dict[str, float]:
    """Rank the file's distinct passages for each of its distinct anchors (see the module doc)."""
    queries: dict[str, int] = {}
    query_feats: list[dict[str, Any]] = []
    relevant: list[set[int]] = []
    corpus: dict[int, int] = {}
    corpus_feats: list[dict[str, Any]] = []
    for ex, feat, *keys in zip(data.examples, data.features, *passage_keys(data.examples)):
        if ex.anchor not in queries:
            queries[ex.anchor] = len(query_feats)
            query_feats.append(_text(feat))
            relevant.append(set())
        relevant[queries[ex.anchor]].add(keys[0])
        for r, key in enumerate(k for k in keys if k is not None):
            if key not in corpus:
                corpus[key] = len(corpus_feats)
                corpus_feats.append(_text(feat, r))
    q = F.normalize(embed_features(model, data, query_feats), dim=-1)
    c = F.normalize(embed_features(model, data, corpus_feats), dim=-1)
    ids = list(corpus)                                   # row -> passage key
    k = min(TOP_K, len(ids))
    rankings = []
    for start in range(0, len(q), 1024):                 # [1024, N] similarities at a time
        top = (q[start:start + 1024] @ c.t()).topk(k, dim=-1).indices.tolist()
        rankings.extend([ids[j] for j in row] for row in top)
    return {**retrieval_scores(rankings, relevant, TOP_K), "queries": len(q), "corpus": len(c)}


def _correlation(model: nn.Module, data: TaskData) -> dict[str, float]:
    a = embed_features(model, data, [_text(f) for f in data.features])
    b = embed_features(model, data, [_text(f, 0) for f in data.features])
    cos = F.cosine_similarity(a, b, dim=-1).tolist()
    gold = [ex.score for ex in data.examples]
    return {"spearman": spearman(cos, gold), "pearson": pearson(cos, gold)}


TASK = EmbedTask()
