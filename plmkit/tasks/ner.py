"""Named-entity recognition: one tag per word (CoNLL columns or JSONL {tokens, tags}).

Only the first sub-word of each word is trained and read out; scores are entity-level
precision / recall / F1 (seqeval's defaults). Words cut off by ``max_length`` are tagged O.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from torch import nn

from ..data.features import encode_ner, word_predictions
from ..data.readers import TokenExample, build_label_map, read_ner
from ..errors import InputError
from ..eval.metrics import entity_counts, entity_prf, entity_report, get_entities
from ..train.defaults import FixedTraining
from .common import Prep, TaskData, forward_batches


# An entity tag set: O outside entities, PREFIX-TYPE inside (IOB1, IOB2, IOE, BIOES), what the
# entity-level scores (seqeval's) read.
ENTITY_TAG = re.compile(r"^(?:O|[BIES]-\S+)$")
SHOWN_TAGS = 12


def check_tag_scheme(examples: list[TokenExample], path: str) -> None:
    """Refuse training tags that are not an entity tag set. A CoNLL file whose last column is the
    POS or chunk tag reads like NER data and would train a "NER" model of NN, VBZ, DT ...
    with entity scores of nothing; ``--label-scheme none`` trains on such tags deliberately."""
    bad = next(((ex, tag) for ex in examples for tag in ex.tags or () if not ENTITY_TAG.match(tag)), None)
    if bad is None:
        return
    seen = sorted({tag for ex in examples for tag in ex.tags or ()})
    shown = ", ".join(seen[:SHOWN_TAGS]) + (", ..." if len(seen) > SHOWN_TAGS else "")
    raise InputError(path, f"tag {bad[1]!r} is not an entity tag: NER expects IOB / IOB2 / BIOES tags (O, B-TYPE, "
                           f"I-TYPE, E-TYPE, S-TYPE), and the tags here ({len(seen)}: {shown}) are not; is the "
                           "last column the NER tag? --label-scheme none trains on these tags as they are",
                     bad[0].line)


class NerTask:
    name = "ner"
    head = "token"
    metric = "f1"
    greater_is_better = True
    # Length buckets put one kind of sentence in each batch (all the one-word headlines, all the
    # long ones): on CoNLL-2003 that cost 0.8 F1 points against random batches, even with every
    # token weighted alike (benchmarks/RESULTS.md, "NER vs transformers"). Random batches pad more.
    group_by_length = False
    labelled = True
    detailed = True
    on_graph = True
    file_layout = "blocks"
    max_length_from = "fixed"  # --max-length's default: 128 (words past it are tagged O)
    hf_auto = "AutoModelForTokenClassification"
    what = "a token-classification model"
    help = "CoNLL (token first column, tag last, blank line between sentences) or JSONL {tokens, tags}"

    def train_defaults(self, examples: list[Any]) -> FixedTraining | None:
        return None            # batch, passes and lr from the data-size rule (train/defaults.py)

    def read(self, path: str, prep: Prep, labels: list[str] | None = None,
             require_labels: bool = True) -> list[TokenExample]:
        examples = read_ner(path, labels=labels)
        if require_labels:
            untagged = next((ex for ex in examples if ex.tags is None), None)
            if untagged is not None:
                raise InputError(path, "sentence without tags (expected 'TOKEN ... TAG' per line)",
                                 untagged.line)
        return examples

    def head_config(self, examples: list[TokenExample], prep: Prep) -> dict[str, Any]:
        labels = build_label_map(examples)
        return {"num_labels": len(labels), "labels": labels}

    def encode(self, tok: Tokenizer, examples: list[TokenExample], head_config: dict[str, Any],
               prep: Prep) -> list[dict[str, Any]]:
        has_tags = any(ex.tags is not None for ex in examples)
        return encode_ner(tok, examples, head_config["labels"] if has_tags else None, prep.max_length)

    def _tags(self, model: nn.Module, data: TaskData) -> list[list[str]]:
        """Predicted tags per word, per sentence."""
        labels = data.head_config["labels"]
        tags: list[list[str]] = [[] for _ in data.features]
        for idx, out in forward_batches(model, data):
            best = out.logits.argmax(-1).cpu().tolist()             # [B, T]
            for row, i in zip(best, idx):
                word_ids = data.features[i]["word_ids"]
                tags[i] = word_predictions(word_ids, row[:len(word_ids)], len(data.examples[i].tokens), labels)
        return tags

    def metric_of(self, examples: list[Any]) -> str:
        return self.metric

    def evaluate(self, model: nn.Module, data: TaskData, detailed: bool = False) -> dict[str, Any]:
        """Entity-level P/R/F1; ``detailed`` adds ``per_entity`` {type: {precision, recall, f1, support}}.

        The training loop wants scalars only, so the per-type report is opt-in.
        """
        gold, pred = [ex.tags for ex in data.examples], self._tags(model, data)
        metrics: dict[str, Any] = entity_prf(gold, pred)
        if detailed:
            metrics["per_entity"] = entity_report(gold, pred)
        return metrics

    def unit_stats(self, model: nn.Module, data: TaskData) -> np.ndarray:
        """[N, 3] per sentence: correct, predicted and gold entities (``score_of_sums``: the F1)."""
        counts = entity_counts([ex.tags for ex in data.examples], self._tags(model, data))
        return np.array(counts, dtype=np.float64).reshape(-1, 3)

    def score_of_sums(self, sums: np.ndarray, n: int) -> np.ndarray:
        """Micro F1 from ``unit_stats`` summed over sentences (any leading dimensions): 2 TP / (P + G)."""
        both = sums[..., 1] + sums[..., 2]
        return np.divide(2.0 * sums[..., 0], both, out=np.zeros_like(both, dtype=np.float64), where=both > 0)

    def predict(self, model: nn.Module, data: TaskData) -> list[dict[str, Any]]:
        rows = []
        for ex, tags in zip(data.examples, self._tags(model, data)):
            entities = [{"type": t, "start": s, "end": e + 1, "text": " ".join(ex.tokens[s:e + 1])}
                        for t, s, e in get_entities([tags])]
            rows.append({"tokens": ex.tokens, "tags": tags, "entities": entities})
        return rows


TASK = NerTask()
