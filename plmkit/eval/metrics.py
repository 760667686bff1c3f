"""Task metrics: classification, entity-level NER (seqeval-compatible), SQuAD EM/F1, retrieval, correlation.

Pure Python over plain lists, so they are easy to check by hand. Classification and NER
scores are fractions in [0, 1]; SQuAD scores are percentages (0-100) like the official
evaluation script.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Hashable, Iterable, Mapping, Sequence

from ..errors import PlmkitError

# ---------------------------------------------------------------------------
# Classification


def _check_pair(y_true: Sequence, y_pred: Sequence) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold labels but {len(y_pred)} predictions")
    if not y_true:
        raise PlmkitError("cannot score an empty evaluation set")


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    _check_pair(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def _prf(correct: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    """Precision, recall, F1 with 0 for any 0/0 (sklearn's zero_division=0)."""
    p = correct / n_pred if n_pred else 0.0
    r = correct / n_true if n_true else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def per_class_prf(y_true: Sequence[Hashable], y_pred: Sequence[Hashable],
                  labels: Sequence[Hashable] | None = None) -> dict[Hashable, dict[str, float]]:
    """{label: {precision, recall, f1, support}}; labels default to those seen in either list, sorted."""
    _check_pair(y_true, y_pred)
    labels = sorted(set(y_true) | set(y_pred)) if labels is None else labels
    n_true, n_pred = Counter(y_true), Counter(y_pred)
    correct = Counter(t for t, p in zip(y_true, y_pred) if t == p)
    out = {}
    for lab in labels:
        p, r, f = _prf(correct[lab], n_pred[lab], n_true[lab])
        out[lab] = {"precision": p, "recall": r, "f1": f, "support": n_true[lab]}
    return out


def macro_f1(y_true: Sequence[Hashable], y_pred: Sequence[Hashable],
             labels: Sequence[Hashable] | None = None) -> float:
    """Unweighted mean of per-class F1 (as sklearn's f1_score(average="macro"))."""
    scores = per_class_prf(y_true, y_pred, labels)
    return sum(s["f1"] for s in scores.values()) / len(scores)


def confusion_matrix(y_true: Sequence[Hashable], y_pred: Sequence[Hashable],
                     labels: Sequence[Hashable] | None = None) -> list[list[int]]:
    """counts[i][j] = examples of true label i predicted as j (labels default: sorted union)."""
    _check_pair(y_true, y_pred)
    labels = sorted(set(y_true) | set(y_pred)) if labels is None else labels
    index = {lab: i for i, lab in enumerate(labels)}
    counts = [[0] * len(labels) for _ in labels]
    for t, p in zip(y_true, y_pred):
        if t in index and p in index:
            counts[index[t]][index[p]] += 1
    return counts


# ---------------------------------------------------------------------------
# Entity-level NER, reproducing seqeval's default (conlleval-style, non-strict) chunking.
# Prefixes B/I/E/S/O are understood, so IOB2, IOB1 and IOBES all work: an I- that follows
# O or an entity of another type opens a new entity, exactly as conlleval does.

# (previous prefix, current prefix) pairs that close / open a chunk regardless of type.
_ENDS = {("B", "B"), ("B", "S"), ("B", "O"), ("I", "B"), ("I", "S"), ("I", "O")}
_STARTS = {("E", "E"), ("E", "I"), ("S", "E"), ("S", "I"), ("O", "E"), ("O", "I")}


def _split(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '_') (seqeval's convention)."""
    return tag[:1], tag[1:].split("-", maxsplit=1)[-1] or "_"


def get_entities(sentences: Sequence[Sequence[str]]) -> list[tuple[str, int, int]]:
    """(type, start, end) chunks, inclusive, over the sentences joined with an 'O' between them."""
    seq = [tag for sent in sentences for tag in (*sent, "O")]
    chunks = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*seq, "O"]):
        tag, type_ = _split(chunk)
        if (prev_tag in ("E", "S") or (prev_tag, tag) in _ENDS
                or (prev_tag not in ("O", ".") and prev_type != type_)):
            chunks.append((prev_type, begin, i - 1))
        if (tag in ("B", "S") or (prev_tag, tag) in _STARTS
                or (tag not in ("O", ".") and prev_type != type_)):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def _check_lengths(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> None:
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"{len(true_tags)} gold sentences but {len(pred_tags)} predicted")
    for i, (t, p) in enumerate(zip(true_tags, pred_tags)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} gold tags but {len(p)} predicted")


def _entity_sets(true_tags: Sequence[Sequence[str]],
                 pred_tags: Sequence[Sequence[str]]) -> tuple[set, set]:
    _check_lengths(true_tags, pred_tags)
    return set(get_entities(true_tags)), set(get_entities(pred_tags))


def entity_prf(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision/recall/F1 over exact entity matches (type and span), as seqeval's defaults."""
    gold, pred = _entity_sets(true_tags, pred_tags)
    p, r, f = _prf(len(gold & pred), len(pred), len(gold))
    return {"precision": p, "recall": r, "f1": f}


def entity_counts(true_tags: Sequence[Sequence[str]],
                  pred_tags: Sequence[Sequence[str]]) -> list[tuple[int, int, int]]:
    """(correct, predicted, gold) entities of each sentence: their column sums give ``entity_prf``
    (entities never cross a sentence boundary)."""
    _check_lengths(true_tags, pred_tags)
    counts = []
    for gold_tags, predicted in zip(true_tags, pred_tags):
        gold, pred = set(get_entities([gold_tags])), set(get_entities([predicted]))
        counts.append((len(gold & pred), len(pred), len(gold)))
    return counts


def entity_report(true_tags: Sequence[Sequence[str]],
                  pred_tags: Sequence[Sequence[str]]) -> dict[str, dict[str, float]]:
    """{entity type: {precision, recall, f1, support}} for every type in gold or predictions."""
    gold, pred = _entity_sets(true_tags, pred_tags)
    report = {}
    for type_ in sorted({e[0] for e in gold | pred}):
        g = {e for e in gold if e[0] == type_}
        p_ = {e for e in pred if e[0] == type_}
        p, r, f = _prf(len(g & p_), len(p_), len(g))
        report[type_] = {"precision": p, "recall": r, "f1": f, "support": len(g)}
    return report


# ---------------------------------------------------------------------------
# SQuAD v1.1 (the official evaluate-v1.1.py, reproduced)

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop articles a/an/the, collapse whitespace (in that order)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def squad_exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    p, r = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * p * r / (p + r)


def squad_question_scores(predictions: Mapping[str, str], examples: Iterable) -> list[tuple[float, float]]:
    """(exact match, F1) of each question in 0-1, max over its gold answers, as the official script
    scores it. A question missing from ``predictions`` scores 0. A question with no gold answer
    (SQuAD 2.0 impossible) counts as correct only when the prediction is empty."""
    scores = []
    for ex in examples:
        if ex.id not in predictions:
            scores.append((0.0, 0.0))
            continue
        pred = predictions[ex.id]
        golds = [a["text"] for a in ex.answers]
        if not golds:
            hit = float(normalize_answer(pred) == "")
            scores.append((hit, hit))
            continue
        scores.append((max(squad_exact(pred, g) for g in golds), max(squad_f1(pred, g) for g in golds)))
    return scores


def squad_em_f1(predictions: Mapping[str, str], examples: Iterable) -> dict[str, float]:
    """{"exact_match", "f1"} in 0-100: ``squad_question_scores`` averaged over the questions."""
    scores = squad_question_scores(predictions, examples)
    if not scores:
        raise PlmkitError("cannot score an empty evaluation set")
    return {"exact_match": 100.0 * sum(s[0] for s in scores) / len(scores),
            "f1": 100.0 * sum(s[1] for s in scores) / len(scores)}


# ---------------------------------------------------------------------------
# Retrieval and scored pairs (sentence embeddings)


def retrieval_scores(rankings: Sequence[Sequence[Hashable]], relevant: Sequence[set],
                     k: int = 10) -> dict[str, float]:
    """MRR@k, recall@1, recall@k and nDCG@k (binary relevance), averaged over queries, as BEIR and
    sentence-transformers' InformationRetrievalEvaluator define them.

    ``rankings[q]``: the corpus ids best first (at least the top k); ``relevant[q]``: the ids that
    answer query q. recall@n = share of q's relevant ids in its top n; nDCG@k = DCG / ideal DCG with
    gain 1 / log2(rank + 1).
    """
    _check_pair(rankings, relevant)
    mrr = r1 = rk = ndcg = 0.0
    for ranked, rel in zip(rankings, relevant):
        if not rel:
            raise ValueError("a query without a relevant passage")
        hits = [i for i, doc in enumerate(ranked[:k]) if doc in rel]
        mrr += 1.0 / (hits[0] + 1) if hits else 0.0
        r1 += sum(1 for doc in ranked[:1] if doc in rel) / len(rel)
        rk += len(hits) / len(rel)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), k)))
        ndcg += sum(1.0 / math.log2(i + 2) for i in hits) / ideal
    n = len(rankings)
    return {f"mrr@{k}": mrr / n, "recall@1": r1 / n, f"recall@{k}": rk / n, f"ndcg@{k}": ndcg / n}


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank (scipy.stats.rankdata's 'average')."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either side is constant (no linear relation to measure)."""
    _check_pair(x, y)
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson of the (tie-averaged) ranks."""
    return pearson(_ranks(x), _ranks(y))
