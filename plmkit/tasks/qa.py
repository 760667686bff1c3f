"""Extractive question answering on SQuAD v1.1 JSON.

Long contexts are cut into overlapping windows (``doc_stride`` tokens of overlap); the
best span over all of a question's windows is its answer. Scores are the official SQuAD
v1.1 exact match and F1 (0-100).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from tokenizers import Tokenizer
from torch import nn

from ..data.qa import postprocess_qa, prepare_qa_features
from ..data.readers import QAExample, read_squad
from ..eval.metrics import squad_em_f1, squad_question_scores
from ..train.defaults import FixedTraining
from .common import Prep, TaskData, forward_batches


class QATask:
    name = "qa"
    head = "span"
    metric = "f1"
    greater_is_better = True
    group_by_length = True
    labelled = False
    detailed = False
    on_graph = True
    file_layout = "squad"
    max_length_from = "fixed"  # --max-length's default: 128, contexts in windows (--doc-stride)
    hf_auto = "AutoModelForQuestionAnswering"
    what = "an extractive QA model"
    help = "SQuAD v1.1 JSON: data[].paragraphs[].{context, qas[].{id, question, answers[]}}"

    def train_defaults(self, examples: list[Any]) -> FixedTraining | None:
        return None            # batch, passes and lr from the data-size rule (train/defaults.py)

    def read(self, path: str, prep: Prep, labels: list[str] | None = None,
             require_labels: bool = True) -> list[QAExample]:
        return read_squad(path)

    def head_config(self, examples: list[QAExample], prep: Prep) -> dict[str, Any]:
        return {}

    def encode(self, tok: Tokenizer, examples: list[QAExample], head_config: dict[str, Any],
               prep: Prep) -> list[dict[str, Any]]:
        return prepare_qa_features(tok, examples, prep.max_length, prep.doc_stride)

    def _answers(self, model: nn.Module, data: TaskData) -> dict[str, str]:
        starts: list[Any] = [None] * len(data.features)
        ends: list[Any] = [None] * len(data.features)
        for idx, out in forward_batches(model, data):
            s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            for j, i in enumerate(idx):
                n = len(data.features[i]["input_ids"])
                starts[i], ends[i] = s[j, :n].astype(np.float64), e[j, :n].astype(np.float64)
        return postprocess_qa(data.examples, data.features, starts, ends)

    def metric_of(self, examples: list[Any]) -> str:
        return self.metric

    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        return squad_em_f1(self._answers(model, data), data.examples)

    def unit_stats(self, model: nn.Module, data: TaskData) -> np.ndarray:
        """[N, 1]: each question's F1 in 0-1 (``score_of_sums``: the F1 / 100)."""
        scores = squad_question_scores(self._answers(model, data), data.examples)
        return np.array([[f1] for _, f1 in scores], dtype=np.float64).reshape(-1, 1)

    def score_of_sums(self, sums: np.ndarray, n: int) -> np.ndarray:
        """The F1 in 0-1 from ``unit_stats`` summed over n questions (any leading dimensions)."""
        return sums[..., 0] / max(n, 1)

    def predict(self, model: nn.Module, data: TaskData) -> list[dict[str, Any]]:
        answers = self._answers(model, data)
        return [{"id": ex.id, "question": ex.question, "answer": answers[ex.id]} for ex in data.examples]


TASK = QATask()
