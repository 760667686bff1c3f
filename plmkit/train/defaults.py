"""Fine-tuning defaults that fit the data: batch size, passes and learning rate from its size.

Measured (benchmarks/defaults_sweep.py, RESULTS.md "Fine-tuning defaults by data size"): at
500-2,000 labels a fixed batch of 32 for 3 epochs makes too few optimizer steps (47-188) and
loses to transformers' Trainer (batch 8, 188-750 steps). The rule: the batch shrinks (32 down
to 8) until the planned passes make ``MIN_STEPS`` optimizer steps; when even batch 8 does not,
the passes grow (up to ``MAX_EPOCHS``); the strategy's learning rate is scaled by
sqrt(batch / 32), the square-root rule for Adam, so a smaller batch takes smaller, noisier
steps. From ~5,300 examples up (3 epochs of batch 32 reach MIN_STEPS) nothing changes. What
the user sets is kept; the rule only fills what is unset.

More choices follow the data when it is small (measured on ChnSentiCorp, MRPC, AG News and
SST-2 at 500-2,000 labels, RESULTS.md): **random batches** instead of length buckets whenever the
rule above changed the batch or the passes (a bucket of 8 short reviews is mostly one label when
one class writes shorter texts: ChnSentiCorp at 500 labels 0.708 vs 0.630), **no warmup** there
(the Trainer's: with 10% MRPC at 2,000 labels stayed 1.55 points behind it, without 0.41 ahead;
nine cells of SST-2 / MRPC / AG News, 3 seeds a side: +0.26 over the Trainer on average, 10%
+0.11), and, for the tasks that take it from the data, a **max length** that holds 95% of the
training examples whole: the smallest of 128, 256 and 512 tokens (within the model's positions);
only long texts change it (ChnSentiCorp: 256; SST-2, MRPC, AG News: 128 as before).

A task can name fixed defaults for data its models were already trained for (``FixedTraining``):
sentence embeddings on ranking pairs (measured: benchmarks/embed_defaults.py, RESULTS.md
"`finetune --task embed` as a user types it"), where more passes at a higher rate move
all-MiniLM-L6-v2 away from its own training and a smaller batch leaves the in-batch loss fewer
negatives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

MIN_STEPS = 500         # optimizer steps the planned passes make at least (batch and passes allowing)
BATCH = 32              # the batch and the passes of data large enough for MIN_STEPS
EPOCHS = 3.0
MIN_BATCH = 8
MAX_EPOCHS = 5.0
LENGTHS = (128, 256, 512)   # --max-length from the data: the smallest of these that holds LENGTH_SHARE whole
LENGTH_SHARE = 0.95
WARMUP = 0.1                # linear warmup, a fraction of the steps, where the rule changes nothing


RULE = (f"Batch size, epochs and lr fit the data: the batch shrinks from {BATCH} (down to {MIN_BATCH}) and then the "
        f"passes grow (up to {MAX_EPOCHS:g}) until training makes about {MIN_STEPS} optimizer steps; the strategy's "
        f"lr is scaled by sqrt(batch / {BATCH}) and, where the rule changed the batch or the passes, trains with no "
        f"warmup (else {WARMUP:.0%}); --batch-size, --epochs, --lr and --warmup-ratio override.")


@dataclass(frozen=True)
class FixedTraining:
    """A task's own batch, passes and rate (a fraction of the strategy's), used instead of the
    data-size rule whatever the data's size."""
    batch_size: int
    epochs: float
    lr_scale: float     # times the strategy's rate at batch 32 (full: 1e-4 x 0.2 = 2e-5)

    def describe(self, what: str) -> str:
        return (f"{what}: batch {self.batch_size}, {self.epochs:g} epoch(s), {self.lr_scale:g} x the strategy's lr "
                "(measured defaults; the data-size rule does not apply)")


@dataclass(frozen=True)
class DataFit:
    """What a fine-tuning run on ``examples`` examples trains with; ``fitted``: the rule chose a
    batch or passes other than those of large data."""
    examples: int
    batch_size: int
    epochs: float
    lr: float
    steps: int
    fitted: bool

    @property
    def warmup_ratio(self) -> float:
        """The warmup when the user did not set one: none on data the rule fitted, as the Trainer's
        defaults (MRPC, 2,000 labels: 0.7933 without against 0.7737 with 10%, 3 seeds), else WARMUP."""
        return 0.0 if self.fitted else WARMUP

    def length_buckets(self, task_default: bool) -> bool:
        """Whether to train on length buckets when the user did not say: the task's default, except
        on data small enough for the rule to have changed the batch or the passes (random batches)."""
        return task_default and not self.fitted


def fit_to_data(examples: int, base_lr: float, *, batch_size: int | None = None, epochs: float | None = None,
                lr: float | None = None, min_steps: int = MIN_STEPS, task: FixedTraining | None = None) -> DataFit:
    """The batch size, passes and learning rate for ``examples`` training examples.

    ``base_lr`` is the strategy's rate at batch 32; ``batch_size``/``epochs``/``lr`` given by the
    user are kept as they are; ``task``: the task's own defaults fill the rest instead of the rule."""
    n = max(int(examples), 1)
    if task is not None:
        batch = batch_size or task.batch_size
        passes = task.epochs if epochs is None else epochs
        rate = lr if lr is not None else base_lr * task.lr_scale
        return DataFit(n, batch, passes, rate, _steps(n, batch, passes), False)
    passes = EPOCHS if epochs is None else epochs
    batch = batch_size
    if batch is None:
        fits = math.floor(n * passes / min_steps)          # the largest batch that still makes min_steps
        batch = max(MIN_BATCH, min(BATCH, fits))
    if epochs is None and _steps(n, batch, passes) < min_steps:
        passes = min(MAX_EPOCHS, math.ceil(min_steps * batch / n))
    rate = lr if lr is not None else base_lr * math.sqrt(batch / BATCH)
    steps = _steps(n, batch, passes)
    fitted = (batch, passes) != (BATCH, EPOCHS) and (batch_size is None or epochs is None)
    return DataFit(n, batch, passes, rate, steps, fitted)


def length_from_data(lengths: list[int], positions: int) -> int:
    """The max length for examples of these token lengths: the smallest of ``LENGTHS`` that holds
    ``LENGTH_SHARE`` of them whole, at most the model's ``positions``."""
    if not lengths:
        return min(LENGTHS[0], positions)
    ordered = sorted(lengths)
    need = ordered[max(math.ceil(LENGTH_SHARE * len(ordered)) - 1, 0)]
    return min(next((n for n in LENGTHS if n >= need), LENGTHS[-1]), positions)


def _steps(n: int, batch: int, passes: float) -> int:
    return math.ceil(passes * math.ceil(n / batch))
