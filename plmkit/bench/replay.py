"""Stand-ins for a model inside a task's ``evaluate``: record the batches it forms, answer with
outputs computed elsewhere, or keep a real model's outputs to answer a second scoring.

A task scores a model through ``forward_batches`` (tasks/common.py), which forms the same batches in
the same order every time; so the outputs of one pass, replayed, score the model again without
running it: a peer's logits (bench/peers.py), or the per-example scores (``unit_stats``) of the
pass that computed the metric (bench/worker.py).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import PlmkitError
from ..models.heads import ModelOutput

OUTPUT_FIELDS = ("logits", "start_logits", "end_logits")     # what the task heads answer


class Recorder:
    """Stands in for the model in ``task.evaluate``: keeps the batches it is given, answers zeros."""

    def __init__(self, head: str, num_labels: int):
        self.head, self.num_labels, self.batches = head, num_labels, []
        self.anchor = torch.nn.Parameter(torch.zeros(0))

    def parameters(self):              # forward_batches asks the first parameter for the device
        yield self.anchor

    def eval(self) -> "Recorder":
        return self

    def __call__(self, **batch: Any) -> Any:
        self.batches.append({k: v.numpy() for k, v in batch.items()})
        b, t = batch["input_ids"].shape
        if self.head == "span":
            return ModelOutput(start_logits=torch.zeros(b, t), end_logits=torch.zeros(b, t))
        shape = (b, t, self.num_labels) if self.head == "token" else (b, self.num_labels)
        return ModelOutput(logits=torch.zeros(shape))


class Replay(Recorder):
    """Answers a task's scoring with outputs computed before for the same batches, in the same order."""

    def __init__(self, outputs: list[dict[str, np.ndarray]]):
        super().__init__("", 0)
        self.outputs = iter(outputs)

    def __call__(self, **batch: Any) -> Any:
        out = next(self.outputs)
        if next(iter(out.values())).shape[0] != batch["input_ids"].shape[0]:
            raise PlmkitError("replayed outputs do not match the evaluation batches (internal error)")
        return ModelOutput(**{k: torch.from_numpy(v).float() for k, v in out.items()})


class Tap:
    """Runs the model and keeps its task outputs, for a ``Replay`` of the same batches."""

    def __init__(self, model: Any):
        self.model, self.outputs = model, []

    def parameters(self):
        return self.model.parameters()

    def __call__(self, **batch: Any) -> Any:
        out = self.model(**batch)
        self.outputs.append({k: getattr(out, k).detach().float().cpu().numpy() for k in OUTPUT_FIELDS
                             if getattr(out, k) is not None})
        return out
