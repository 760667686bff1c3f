"""Sequence classification: single sentences or sentence pairs, TSV / CSV / JSONL.

Labels are names ("positive", "0"); ids are positions in the sorted label list of the
training data, stored in the checkpoint so predictions come out as names again.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from ..data.features import encode_classification
from ..data.readers import TextExample, build_label_map, read_classification
from ..errors import PlmkitError
from ..eval.metrics import accuracy, confusion_matrix, macro_f1
from ..train.defaults import FixedTraining
from .common import Prep, TaskData, forward_batches


class ClassifyTask:
    name = "classify"
    head = "classify"
    metric = "accuracy"
    greater_is_better = True
    group_by_length = True
    labelled = True
    detailed = True
    on_graph = True
    file_layout = "lines"
    max_length_from = "data"   # --max-length's default: from the training texts (train/defaults.py)
    hf_auto = "AutoModelForSequenceClassification"
    what = "a classification model"
    help = "TSV/CSV/JSONL with a text column (+ optional text-pair column) and a label column"

    def train_defaults(self, examples: list[Any]) -> FixedTraining | None:
        return None            # batch, passes and lr from the data-size rule (train/defaults.py)

    def read(self, path: str, prep: Prep, labels: list[str] | None = None,
             require_labels: bool = True) -> list[TextExample]:
        return read_classification(path, text_column=prep.text_column, text_pair_column=prep.text_pair_column,
                                   label_column=prep.label_column, header=prep.header,
                                   require_labels=require_labels, labels=labels)

    def head_config(self, examples: list[TextExample], prep: Prep) -> dict[str, Any]:
        labels = build_label_map(examples)
        if len(labels) < 2:
            raise PlmkitError(f"classification needs at least 2 labels in the training data, found {labels}")
        return {"num_labels": len(labels), "labels": labels}

    def encode(self, tok: Tokenizer, examples: list[TextExample], head_config: dict[str, Any],
               prep: Prep) -> list[dict[str, Any]]:
        has_labels = any(ex.label is not None for ex in examples)
        features = encode_classification(tok, examples, head_config["labels"] if has_labels else None,
                                         prep.max_length, prep.long_text, prep.doc_stride)
        note = long_text_note(examples, features, prep)
        if note:
            print(note)
        return features

    def _probs(self, model: nn.Module, data: TaskData) -> torch.Tensor:
        """[N, C] class probabilities in example order (windows of one example: mean of their logits)."""
        logits = torch.empty(len(data.features), int(data.head_config["num_labels"]))
        for idx, out in forward_batches(model, data):
            logits[idx] = out.logits.float().cpu()
        if data.features and "example_id" in data.features[0]:
            logits = pool_windows(logits, [f["example_id"] for f in data.features], len(data.examples))
        return logits.softmax(-1)

    def metric_of(self, examples: list[Any]) -> str:
        return self.metric

    def evaluate(self, model: nn.Module, data: TaskData, detailed: bool = False) -> dict[str, Any]:
        """Accuracy and macro F1; ``detailed`` adds ``labels`` and ``confusion_matrix`` (rows: gold).

        The training loop wants scalars only, so the matrix is opt-in.
        """
        labels = data.head_config["labels"]
        pred = [labels[i] for i in self._probs(model, data).argmax(-1).tolist()]
        gold = [ex.label for ex in data.examples]
        metrics: dict[str, Any] = {"accuracy": accuracy(gold, pred), "f1": macro_f1(gold, pred)}
        if detailed:
            metrics.update(labels=list(labels), confusion_matrix=confusion_matrix(gold, pred, labels))
        return metrics

    def unit_stats(self, model: nn.Module, data: TaskData) -> np.ndarray:
        """[N, 1]: 1 where the example's prediction is its label (``score_of_sums``: the accuracy)."""
        labels = data.head_config["labels"]
        pred = self._probs(model, data).argmax(-1).tolist()
        return np.array([[float(labels[i] == ex.label)] for ex, i in zip(data.examples, pred)]).reshape(-1, 1)

    def score_of_sums(self, sums: np.ndarray, n: int) -> np.ndarray:
        """The accuracy from ``unit_stats`` summed over n examples (any leading dimensions)."""
        return sums[..., 0] / max(n, 1)

    def predict(self, model: nn.Module, data: TaskData) -> list[dict[str, Any]]:
        labels = data.head_config["labels"]
        probs = self._probs(model, data)
        score, best = probs.max(-1)
        rows = []
        for ex, i, p in zip(data.examples, best.tolist(), score.tolist()):
            row: dict[str, Any] = {"text": ex.text}
            if ex.text_pair is not None:
                row["text_pair"] = ex.text_pair
            row.update(label=labels[i], score=round(p, 6))
            rows.append(row)
        return rows


def pool_windows(logits: torch.Tensor, example_ids: list[int], n_examples: int) -> torch.Tensor:
    """[F, C] per-window logits -> [N, C] per-example mean logits."""
    index = torch.tensor(example_ids, dtype=torch.long)
    sums = torch.zeros(n_examples, logits.size(1)).index_add_(0, index, logits)
    counts = torch.zeros(n_examples).index_add_(0, index, torch.ones(len(example_ids)))
    return sums / counts.clamp(min=1).unsqueeze(1)


def long_text_note(examples: list[TextExample], features: list[dict[str, Any]], prep: Prep) -> str | None:
    """What happened to the examples longer than max_length, or None when there were none."""
    lengths = {f.get("example_id", i): f["n_tokens"] for i, f in enumerate(features) if "n_tokens" in f}
    if not lengths:
        return None
    source = examples[0].source or "the data"
    head = (f"{len(lengths):,} of {len(examples):,} examples in {source} are longer than max_length "
            f"{prep.max_length} (longest: {max(lengths.values()):,} tokens)")
    if prep.long_text == "windows":
        n_windows = sum(1 for f in features if f["example_id"] in lengths)
        return (f"note: {head}; split into {n_windows:,} windows overlapping by {prep.doc_stride} tokens, "
                "their predictions averaged (--long-text windows)")
    if prep.long_text == "head-tail":
        return f"note: {head}; kept their first and last tokens (--long-text head-tail)"
    return (f"warning: {head} and were truncated to their first tokens; --long-text head-tail or windows "
            "keeps more of each")


TASK = ClassifyTask()
