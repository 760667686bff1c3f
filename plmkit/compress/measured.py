"""The compression settings measured per task: the defaults of ``distill``, ``prune`` and ``compress``.

One record per task, each value with the measurement it comes from (benchmarks/RESULTS.md,
"Compression"). A stage option left unset (``None``) takes its task's value here, and the resolved
value is what the stage writes into its output's config, so a user typing the documented command
gets what the benchmark measured.

    MEASURED["ner"].hidden_weight          # 0.0: logits only
    hidden_weight("classify")              # 1.0

Tasks without a measurement keep the plain settings (logits only; a middle-of-the-road schedule).
"""
from __future__ import annotations

from dataclasses import dataclass

Ratio = tuple[float, float]          # (fraction of heads removed, fraction of FFN neurons removed)


@dataclass(frozen=True)
class TaskDefaults:
    hidden_weight: float             # distillation and pruning recovery: weight of the hidden-state MSE
    ratios: tuple[Ratio, ...]        # compress's pruning schedule, mild to aggressive (each removes at least
    start: int                       # as much as the one before); the ratio the search starts from
    source: str                      # where the numbers come from
    alpha: float = 0.5               # distill: weight of the task loss (1 - alpha: the teacher's targets)
    lr: float = 1e-4                 # distill --train: peak learning rate
    vector_loss: str = "mse"         # distill --task embed: how student vectors are pulled to the teacher's


MEASURED: dict[str, TaskDefaults] = {
    # SST-2, MiniLM teacher, 3-layer student: TinyBERT's hidden-state loss helps; the ratio is the
    # smallest of five within 1.0 point of the teacher on a dev slice (0.67 / 0.9: -0.85 on dev,
    # -0.25 on held-out data; 0.75 / 0.9 missed it, -1.85).
    "classify": TaskDefaults(1.0, ((0.5, 0.75), (0.5, 0.9), (0.67, 0.9), (0.75, 0.9)), 2,
                             "benchmarks/RESULTS.md, Compression, 2026-12-04 (later): the ratio chosen on a dev slice"),
    # CoNLL-2003: the hidden-state loss cost 0.24 F1 in distillation and 0.43 in the pruning recovery;
    # logits only, heads 0.5 / FFN 0.5: the pruned INT8 student -1.04 F1. The distillation lr: 3 epochs
    # of 5,000 sentences are 471 steps; dev F1 of the student at 1e-4 / 2e-4 / 4e-4: -1.19 / +0.31 /
    # +0.88 points from the teacher, pruned 0.5 / 0.5 after it -2.51 / -0.83 / +0.22.
    "ner": TaskDefaults(0.0, ((0.33, 0.5), (0.5, 0.5), (0.5, 0.75)), 1,
                        "benchmarks/RESULTS.md, Compression, 2026-12-04 (later): the NER 1.5-point budget; "
                        "compress as a user types it, 2026-12-07 (night): the NER distillation lr", lr=4e-4),
    "qa": TaskDefaults(0.0, ((0.33, 0.5), (0.5, 0.5), (0.5, 0.75)), 1, "not measured: logits only"),
    "generate": TaskDefaults(0.0, ((0.33, 0.5), (0.5, 0.5), (0.5, 0.75)), 1, "not measured: logits only"),
    # SQuAD questions, a fine-tuned all-MiniLM-L6-v2 teacher, a 3-layer student: at alpha 0.5, MSE,
    # lr 1e-4 the student's vectors reached cosine ~0.67 with the teacher's (MRR@10 -13.5 points);
    # the vectors alone by cosine at lr 5e-4 (with the top layer kept: --student-layers 0,2,5): -5.2.
    # Its pruning ratios are qa's, not measured (compress does not take embed: no bench baseline).
    "embed": TaskDefaults(0.0, ((0.33, 0.5), (0.5, 0.5), (0.5, 0.75)), 1,
                          "benchmarks/RESULTS.md, A half-depth embedding student, 2026-12-07", alpha=0.0, lr=5e-4,
                          vector_loss="cosine"),
}


def defaults(task: str | None) -> TaskDefaults:
    """The task's record (a task without one: logits only, as ``generate``)."""
    return MEASURED.get(task or "", MEASURED["generate"])


def hidden_weight(task: str | None) -> float:
    return defaults(task).hidden_weight


def described(what: str = "hidden_weight") -> str:
    """For --help: each task's value of ``what`` (a TaskDefaults field)."""
    return ", ".join(f"{t} {getattr(d, what):g}" for t, d in MEASURED.items())
