"""Training telemetry: tqdm progress bar (progress lines off a terminal), ``metrics.jsonl``,
TensorBoard scalars, MFU.

Model FLOPs utilisation (MFU) = achieved model FLOP/s / peak FLOP/s, with the usual
estimate of 6 FLOPs per parameter per token for forward + backward (Kaplan et al.;
nanoGPT's ``estimate_mfu``), unless the caller gives a better ``flops_per_token``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from tqdm import tqdm

from ..errors import PlmkitError
from ..io import atomic_write_text

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def count_tokens(batch: Mapping[str, Any]) -> int:
    """Non-pad tokens in a batch: ``attention_mask.sum()`` or else ``input_ids.numel()``, plus the
    tokens of the batch's second group of texts (``pair_attention_mask``: sentence embeddings).

    Called on the host-side batch (before the copy to the GPU) so it costs no sync.
    """
    pairs = batch.get("pair_attention_mask")
    extra = int(pairs.sum()) if isinstance(pairs, torch.Tensor) else 0
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return int(mask.sum()) + extra
    ids = batch.get("input_ids")
    return (ids.numel() if isinstance(ids, torch.Tensor) else 0) + extra


def measure_peak_flops(dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                       n: int = 2048, reps: int = 5) -> float:
    """Achievable matmul FLOP/s on ``device``: median time of an ``n x n @ n x n`` product.

    A measured peak (rather than a datasheet number) makes MFU meaningful on CPUs too.
    """
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up: kernel selection, allocator
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / statistics.median(times)


def progress_enabled() -> bool:
    return sys.stderr.isatty() and os.environ.get("PLMKIT_QUIET", "") != "1"


class MetricsLog:
    """Append-only ``metrics.jsonl`` (+ optional TensorBoard) written by rank 0 only.

    On resume, records after the checkpoint's step are dropped: those steps are about
    to be trained again and would otherwise appear twice.
    """

    def __init__(self, out_dir: Path, *, enabled: bool, tensorboard: bool,
                 resume_step: int | None) -> None:
        self.enabled = enabled
        self.path = out_dir / METRICS_FILE
        self.writer = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self._truncate(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise PlmkitError("tensorboard logging needs the 'tensorboard' package "
                                  "(pip install 'plmkit[tensorboard]'), or pass --no-tensorboard") from None
            self.writer = SummaryWriter(str(out_dir / TENSORBOARD_DIR),
                                        purge_step=resume_step + 1 if resume_step else None)

    def _truncate(self, resume_step: int | None) -> None:
        if resume_step is None or not self.path.exists():
            atomic_write_text(self.path, "")
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(rec, dict) and rec.get("step", 0) <= resume_step:
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def log(self, record: dict[str, Any], prefix: str) -> None:
        """Append one record; numeric fields also become TensorBoard ``prefix/name`` scalars."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if self.writer is not None:
            step = record["step"]
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(f"{prefix}/{k.removeprefix('eval_')}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_lines_enabled() -> bool:
    """Output to a file or a pipe (a log, a recipe's stage log): progress lines go there."""
    return not sys.stdout.isatty() and os.environ.get("PLMKIT_QUIET", "") != "1"


def format_seconds(seconds: float) -> str:
    s = int(round(seconds))
    h, m = s // 3600, s % 3600 // 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s" if m else f"{s}s"


def copy_logs(work: Path, out: Path) -> None:
    """Copy a run's metrics.jsonl and TensorBoard events from its work directory into ``out``."""
    if (work / METRICS_FILE).is_file():
        shutil.copyfile(work / METRICS_FILE, out / METRICS_FILE)
    if (work / TENSORBOARD_DIR).is_dir():
        shutil.copytree(work / TENSORBOARD_DIR, out / TENSORBOARD_DIR)


@dataclass
class Watcher:
    """Someone besides the run's own output who wants its progress lines: ``show`` gets one every
    ``every`` seconds and one at the end."""
    show: Callable[[str], None]
    every: float


_WATCHERS: list[Watcher] = []


@contextlib.contextmanager
def watching(show: Callable[[str], None], every: float) -> Iterator[None]:
    """Send the progress lines of the training runs inside the block to ``show`` too. The recipe
    runner shows a stage's progress on the terminal this way while the stage's own output goes
    to its log (``plmkit demo``)."""
    watcher = Watcher(show, every)
    _WATCHERS.append(watcher)
    try:
        yield
    finally:
        _WATCHERS.remove(watcher)


class _Feed:
    """One destination of progress lines and the sums since its last line."""

    def __init__(self, emit: Callable[[str], None], every: float, now: float) -> None:
        self.emit, self.every, self.last = emit, every, now
        self.loss, self.n, self.tokens = 0.0, 0, 0


def _print(text: str) -> None:
    print(text, flush=True)


class Progress:
    """Feedback over the optimizer steps, on rank 0: a tqdm bar while stderr is a terminal; while
    stdout is not one (a log file, a pipe, a recipe's stage log) a line there every ``every``
    seconds and at the end: step, loss, tokens/s and ETA; the same lines to each ``watching``
    watcher at its own pace. Silent on the other ranks, and with PLMKIT_QUIET=1 but for the
    watchers (asked for explicitly)."""

    def __init__(self, total: int | None, initial: int, enabled: bool, *, every: float = 30.0,
                 world_size: int = 1, budget_s: float | None = None, spent_s: float = 0.0) -> None:
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                        disable=not (enabled and progress_enabled()))
        self.total, self.world = total, world_size
        self.budget_left = None if budget_s is None else budget_s - spent_s
        self.start = time.perf_counter()
        self.first_step, self.step = initial, initial
        own = [_Feed(_print, every, self.start)] if every > 0 and progress_lines_enabled() else []
        self.feeds = own + [_Feed(w.show, w.every, self.start) for w in _WATCHERS] if enabled else []

    def update(self, step: int, loss: float, tokens: int, record: dict[str, Any] | None) -> None:
        self.bar.update(1)
        if record is not None:
            post = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}"}
            if "tokens_per_s" in record:
                post["tok/s"] = f"{record['tokens_per_s']:.0f}"
            if "mfu" in record:
                post["mfu"] = f"{100 * record['mfu']:.1f}%"
            self.bar.set_postfix(post, refresh=False)
        if not self.feeds:
            return
        self.step, now = step, time.perf_counter()
        for feed in self.feeds:
            feed.loss, feed.n, feed.tokens = feed.loss + loss, feed.n + 1, feed.tokens + tokens
            if now - feed.last >= feed.every:
                self._line(feed, now)

    def _line(self, feed: _Feed, now: float) -> None:
        done = f"{self.step}/{self.total} ({100 * self.step / self.total:.0f}%)" if self.total else str(self.step)
        parts = [f"step {done}", f"loss {feed.loss / max(1, feed.n):.4f}"]
        if feed.tokens:
            parts.append(f"{feed.tokens * self.world / max(now - feed.last, 1e-9):,.0f} tokens/s")
        per_step = (now - self.start) / max(1, self.step - self.first_step)
        left = [per_step * (self.total - self.step)] if self.total else []
        if self.budget_left is not None:
            left.append(max(0.0, self.budget_left - (now - self.start)))
        if left:
            parts.append(f"ETA {format_seconds(min(left))}")
        feed.emit(" | ".join(parts))
        feed.last, feed.loss, feed.n, feed.tokens = now, 0.0, 0, 0

    def close(self) -> None:
        for feed in self.feeds:
            if feed.n:
                self._line(feed, time.perf_counter())
        self.bar.close()


class Window:
    """Running sums between two log events (losses, aux losses, tokens, wall time)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.loss = 0.0
        self.tokens = 0
        self.aux: dict[str, torch.Tensor] = {}
        self.start = time.perf_counter()

    def add(self, loss: float, tokens: int, aux: dict[str, torch.Tensor]) -> None:
        self.steps += 1
        self.loss += loss
        self.tokens += tokens
        for k, v in aux.items():
            self.aux[k] = self.aux[k] + v if k in self.aux else v

    def record(self, step: int, lr: float, *, global_tokens: int, world_size: int,
               flops_per_token: float | None, peak_flops: float | None) -> dict[str, Any]:
        """A log record; ``global_tokens`` is the window's token count summed over ranks."""
        dt = max(time.perf_counter() - self.start, 1e-9)
        rec: dict[str, Any] = {"step": step, "loss": self.loss / max(1, self.steps), "lr": lr}
        for k, v in self.aux.items():
            rec[k] = float(v) / max(1, self.steps)
        if global_tokens:
            rec["tokens_per_s"] = global_tokens / dt
            if peak_flops and flops_per_token:
                rec["mfu"] = flops_per_token * rec["tokens_per_s"] / (peak_flops * world_size)
        return rec
