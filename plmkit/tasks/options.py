"""The options of running a fine-tuned model on a data file, shared by ``plmkit evaluate`` and
``plmkit predict`` (composed into each stage's config, ``plmkit.config.compose``)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..data.features import LONG_TEXT
from ..precision import DEFAULT as PRECISION_DEFAULT
from ..precision import HELP as PRECISION_HELP
from ..precision import PRECISIONS
from . import TASKS
from .common import Infer


@dataclass
class InferOptions:
    task: str | None = option(None, help="task, for checkpoints that do not record it", choices=list(TASKS))
    batch_size: int = option(64, help="examples per batch", ge=1)
    precision: str = option(PRECISION_DEFAULT, help=PRECISION_HELP, choices=PRECISIONS)
    max_new_tokens: int = option(32, help="generate: completion length limit")
    long_text: str | None = option(None, help="classify: how texts longer than the model's max_length are "
                                   "read (default: as in fine-tuning)", choices=list(LONG_TEXT))

    def infer(self, progress: str | None = None) -> Infer:
        """How the model runs on the data (``progress``: the progress-bar label)."""
        return Infer(self.batch_size, self.precision, self.max_new_tokens, progress=progress)
