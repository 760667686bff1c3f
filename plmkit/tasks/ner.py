"""Named-entity recognition: one tag per word (CoNLL columns or JSONL {tokens, tags}).

Only the first sub-word of each word is trained and read out; scores are entity-level
precision / recall / F1 (seqeval's defaults). Words cut off by ``max_length`` are tagged O.
"""
from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer
from torch import nn

from ..data.features import encode_ner, word_predictions
from ..data.readers import TokenExample, build_label_map, read_ner
from ..errors import InputError
from ..eval.metrics import entity_prf, entity_report, get_entities
from .common import Prep, TaskData, forward_batches


class NerTask:
    name = "ner"
    head = "token"
    metric = "f1"
    greater_is_better = True
    # Length buckets put one kind of sentence in each batch (all the one-word headlines, all the
    # long ones): on CoNLL-2003 that cost 0.8 F1 points against random batches, even with every
    # token weighted alike (benchmarks/RESULTS.md, "NER vs transformers"). Random batches pad more.
    group_by_length = False
    help = "CoNLL (token first column, tag last, blank line between sentences) or JSONL {tokens, tags}"

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

    def evaluate(self, model: nn.Module, data: TaskData, detailed: bool = False) -> dict[str, Any]:
        """Entity-level P/R/F1; ``detailed`` adds ``per_entity`` {type: {precision, recall, f1, support}}.

        The training loop wants scalars only, so the per-type report is opt-in.
        """
        gold, pred = [ex.tags for ex in data.examples], self._tags(model, data)
        metrics: dict[str, Any] = entity_prf(gold, pred)
        if detailed:
            metrics["per_entity"] = entity_report(gold, pred)
        return metrics

    def predict(self, model: nn.Module, data: TaskData) -> list[dict[str, Any]]:
        rows = []
        for ex, tags in zip(data.examples, self._tags(model, data)):
            entities = [{"type": t, "start": s, "end": e + 1, "text": " ".join(ex.tokens[s:e + 1])}
                        for t, s, e in get_entities([tags])]
            rows.append({"tokens": ex.tokens, "tags": tags, "entities": entities})
        return rows


TASK = NerTask()
