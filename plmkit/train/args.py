"""The training options, declared once (as litgpt's ``TrainArgs``).

``pretrain``, ``finetune``, ``distill`` and ``prune`` (its recovery fine-tune) compose these
fields into their own configs with ``config.compose``: the same flags, help text, bounds and
YAML keys everywhere. A stage that needs another default says so in one dict beside its
config (``TRAIN_DEFAULTS``), which ``--help`` shows; ``config.pick(TrainArgs, cfg)`` hands the
options to the loop (``train.loop.train``) as they are.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import option
from ..errors import PlmkitError
from ..precision import DEFAULT as PRECISION_DEFAULT
from ..precision import HELP as PRECISION_HELP
from ..precision import PRECISIONS

GROUP = "training options"


@dataclass
class TrainArgs:
    # how long
    max_steps: int | None = option(None, help="stop after this many optimizer steps", ge=1, group=GROUP)
    epochs: float | None = option(None, help="stop after this many passes over the training data (may be "
                                  "fractional)", gt=0, group=GROUP)
    budget: str | None = option(None, help="wall-clock limit, e.g. 90s, 20m, 1h30m, counted across resumes; "
                                "saves and stops cleanly. Alone (no --max-steps / --epochs) the schedule runs "
                                "on time: warmup and decay reach 0 when the budget ends", group=GROUP)
    # optimizer and schedule
    lr: float = option(5e-4, help="peak learning rate", gt=0, group=GROUP)
    warmup_ratio: float = option(0.0, help="linear warmup as a fraction of the planned steps (of the time "
                                 "budget, when only --budget is given)", ge=0, lt=1, group=GROUP)
    warmup_steps: int = option(0, help="linear warmup steps (when > 0, instead of --warmup-ratio)", ge=0,
                               group=GROUP)
    schedule: str = option("linear", help="learning-rate decay after warmup",
                           choices=["linear", "cosine", "constant"], group=GROUP)
    weight_decay: float = option(0.01, help="AdamW weight decay (not applied to biases and norm weights)", ge=0,
                                 group=GROUP)
    betas: list[float] = option([0.9, 0.999], help="AdamW betas", ge=0, lt=1, group=GROUP)
    eps: float = option(1e-8, help="AdamW epsilon", gt=0, group=GROUP)
    clip_norm: float = option(1.0, help="clip the global gradient norm to this (0: off)", ge=0, group=GROUP)
    grad_accum: int = option(1, help="micro-batches per optimizer step", ge=1, group=GROUP)
    layerwise_lr_decay: float | None = option(None, help="scale the lr by this factor per layer downwards",
                                              gt=0, le=1, group=GROUP)
    # numerics and speed
    precision: str = option(PRECISION_DEFAULT, help=PRECISION_HELP, choices=PRECISIONS, group=GROUP)
    compile: bool = option(False, help="torch.compile the model", group=GROUP)
    fsdp: bool = option(False, help="under torchrun, shard weights, gradients and optimizer state over the "
                        "ranks (FSDP) instead of replicating them (DDP): for models that do not fit one "
                        "device; checkpoints keep the same format", group=GROUP)
    # evaluation, checkpoints, logging
    eval_every: int = option(0, help="evaluate every N steps (0: after every epoch, or only at the end when "
                             "the data has no epochs)", ge=0, group=GROUP)
    patience: int | None = option(None, help="early stopping: evaluations without improvement", ge=1,
                                  group=GROUP)
    save_every: int = option(500, help="write a resumable checkpoint every N steps (0: only at the end)", ge=0,
                             group=GROUP)
    keep_last: int = option(2, help="keep the K newest checkpoints (0: keep all)", ge=0, group=GROUP)
    log_every: int = option(10, help="log training metrics every N steps", ge=1, group=GROUP)
    progress_every: float = option(30.0, help="off a terminal (output to a file), print a progress line "
                                   "(step, loss, tokens/s, ETA) every N seconds (0: never)", ge=0, group=GROUP)
    tensorboard: bool = option(False, help="also write TensorBoard scalars", group=GROUP)
    divergence_steps: int = option(20, help="stop as for a NaN loss when the loss stays above 2x (and +1.0) "
                                   "its best smoothed value for N consecutive steps (0: never)", ge=0,
                                   group=GROUP)
    seed: int = option(0, help="random seed (rank r of a distributed run uses seed + r)", group=GROUP)
    resume: bool = option(False, help="continue from the newest checkpoint of this run; the learning rate, "
                          "precision and length (--max-steps, --epochs, --budget) may change, nothing that "
                          "alters what is trained", group=GROUP)


# Options that may change between a checkpoint and its resume: how long, how fast, how often
# to evaluate, save and log, and the documented recovery from a divergence (a lower lr,
# fp32). A changed run length re-plans the schedule's decay from the step reached; warmup
# stays as planned. Everything else must match (see ``train.loop``'s fingerprint).
RESUME_FREE = frozenset({"max_steps", "epochs", "budget", "lr", "precision", "compile", "eval_every",
                         "patience", "save_every", "keep_last", "log_every", "progress_every", "tensorboard",
                         "divergence_steps", "resume"})

_BUDGET = re.compile(r"(\d+(?:\.\d*)?)([hms])")


def parse_budget(text: str) -> float:
    """'90s' / '20m' / '1h30m' / '45' (seconds) -> seconds."""
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d*)?", s):
        seconds = float(s)
    else:
        parts = _BUDGET.findall(s)
        if not parts or "".join(a + u for a, u in parts) != s:
            raise PlmkitError(f"--budget: cannot parse {text!r} (expected e.g. 90s, 20m, 1h30m)")
        seconds = sum(float(a) * {"h": 3600, "m": 60, "s": 1}[u] for a, u in parts)
    if seconds <= 0:
        raise PlmkitError(f"--budget must be more than 0 seconds, got {text!r}")
    return seconds


def check_args(args: TrainArgs) -> None:
    """What the bounds on the fields cannot say: the options together. Stages call this before
    they write anything; the loop calls it again."""
    if args.max_steps is None and args.epochs is None and args.budget is None:
        raise PlmkitError("say how long to train: set at least one of max_steps, epochs or budget "
                          "(--max-steps N, --epochs E, --budget 20m)")
    if len(args.betas) != 2:
        raise PlmkitError(f"--betas needs two values, got {args.betas}")
    if args.budget is not None:
        parse_budget(args.budget)
