"""The training loop shared by pretrain, finetune and distill.

One optimizer step = ``grad_accum`` micro-batches. Each micro-loss is divided by
``grad_accum`` before ``backward`` (so gradients are the mean over micro-batches) and
DDP (or FSDP, with ``fsdp``) averages over ranks, hence 2 ranks x 1 micro-batch == 1 rank
x 2 micro-batches.

Per step: forward/backward under autocast (``plmkit.precision``) -> one all-reduce of
[loss, over-budget flag] -> non-finite and divergence checks (before the update, so weights
stay good) -> clip -> AdamW -> LR schedule. Logging, evaluation and checkpoints happen at
step boundaries; a checkpoint restores everything (weights, optimizer, schedule, RNG, data
position, counters) so an interrupted run continues exactly as if never stopped. A resume
may change the options in ``args.RESUME_FREE`` (a lower lr after a divergence, a longer
run); each change is logged as a ``resume`` event in metrics.jsonl.

The options are ``TrainArgs`` (the flags every training stage shares); what a stage plugs in
(evaluation, checkpoint format, fingerprint, ...) is a typed ``Hooks``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..config import to_dict
from ..errors import PlmkitError
from ..io import atomic_dir, read_json, write_json
from ..precision import autocast_dtype
from . import dist as D
from . import state as S
from .args import RESUME_FREE, TrainArgs, check_args, parse_budget
from .logging import METRICS_FILE, MetricsLog, Progress, Window, count_tokens
from .optim import LayerOf, build_optimizer, build_scheduler, optimizer_kernel, replan
from .source import Batch, BatchSource


@dataclass
class Hooks:
    """What a stage plugs into the loop besides the options; every field has a neutral default,
    so ``Hooks()`` trains the whole model with safetensors checkpoints and no evaluation."""
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None
    """Scores the model: runs every ``eval_every`` steps (0: every epoch) and at the end, on rank 0
    (every rank under FSDP), in eval mode without grad, RNG preserved."""
    metric: str | None = None
    """The ``eval_fn`` value that selects ``out_dir/best`` (and that --patience watches)."""
    greater_is_better: bool = True
    """Direction of ``metric``."""
    fingerprint: dict[str, Any] = field(default_factory=dict)
    """Stage settings (model config, data, task) a resume must share, besides the TrainArgs
    outside ``RESUME_FREE``."""
    save_fn: S.SaveFn = S.save_safetensors
    """``save_fn(model, dir)`` writes the model inside a checkpoint dir (FSDP: the default only)."""
    load_fn: S.LoadFn = S.load_safetensors
    """``load_fn(model, dir)`` reads what ``save_fn`` wrote (FSDP: the default only)."""
    layer_of: LayerOf | None = None
    """Parameter name -> layer depth, for ``layerwise_lr_decay``."""
    trainable: Callable[[str], bool] | None = None
    """``trainable(name)``: parameters it rejects are frozen (None: all train)."""
    flops_per_token: float | None = None
    """Training FLOPs per token for the MFU report (None: 6 x parameters)."""
    peak_flops: float | None = None
    """Peak FLOP/s per device (see ``measure_peak_flops``); enables MFU reporting."""
    device: str | torch.device | None = None
    """Where to train (None: the rank's default device)."""
    resumable: bool = True
    """The stage offers --resume (only changes the advice printed when a run stops)."""
    clock: Callable[[], float] = time.perf_counter
    """Seconds; what the time budget and a time-planned schedule read (tests pass a fake one)."""


@dataclass
class TrainResult:
    steps: int
    stopped_reason: str  # "max_steps" | "epochs" | "budget" | "early_stopping"
    last_metrics: dict[str, float]  # latest evaluation ({} without eval_fn)
    best_metric: float | None
    best_step: int | None
    history: list[dict[str, Any]]  # this run's log and eval records (as in metrics.jsonl)
    losses: list[float]  # this run's loss per optimizer step
    last_checkpoint: Path | None
    best_dir: Path | None
    sharded: bool = False  # FSDP: the model's parameters are shards; full weights in last_checkpoint
    resumes: list[dict[str, Any]] = field(default_factory=list)  # resume events of the whole run


@dataclass
class _Counters:
    """Loop state saved in every checkpoint (plain values: weights_only-loadable)."""
    step: int = 0
    train_seconds: float = 0.0
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    last_eval_step: int = -1
    last_metrics: dict[str, float] = field(default_factory=dict)
    warmup: int | None = None        # warmup steps as first planned (kept when a resume re-plans)
    loss_ema: float | None = None    # divergence watch: smoothed loss, its best, steps far above it
    best_ema: float | None = None
    high_steps: int = 0
    step_seconds: float = 0.0        # the last step's duration (a time-planned schedule looks one step ahead)


# A loss counts as "far above its best" above max(FACTOR x best, best + MARGIN), best being the
# minimum of its exponential moving average (weight EMA of the past).
DIVERGENCE_FACTOR, DIVERGENCE_MARGIN, EMA = 2.0, 1.0, 0.9
# Fingerprint keys of older checkpoints that no longer have to match.
_LEGACY = {"train.warmup", "train.decay_steps", "train.ddp_find_unused"}


def total_steps(args: TrainArgs, source: BatchSource) -> tuple[int | None, str]:
    """The planned number of optimizer steps (None: time budget only) and its reason."""
    plans: list[tuple[int, str]] = []
    if args.max_steps is not None:
        plans.append((args.max_steps, "max_steps"))
    if args.epochs is not None:
        if not hasattr(source, "__len__"):
            raise PlmkitError("epochs needs a data source of known length; use max_steps")
        plans.append((math.ceil(args.epochs * len(source) / args.grad_accum), "epochs"))
    if not plans:
        return None, "budget"
    return min(plans)


def _warmup(args: TrainArgs, total: int | None) -> int:
    """Warmup steps; a run planned in time (total None) warms up over a fraction of the budget
    instead (``_warmup_frac``)."""
    if args.warmup_steps or not args.warmup_ratio or total is None:
        return args.warmup_steps
    return round(args.warmup_ratio * total)


def _warmup_frac(args: TrainArgs, total: int | None) -> float:
    return args.warmup_ratio if total is None and not args.warmup_steps else 0.0


def _fingerprint(args: TrainArgs, info: D.DistInfo, extra: dict[str, Any]) -> dict[str, Any]:
    """What must be equal between a checkpoint and the run resuming from it."""
    fp: dict[str, Any] = {f"train.{k}": v for k, v in to_dict(args).items() if k not in RESUME_FREE}
    if not args.fsdp:  # absent, not False: checkpoints from before the option still resume
        del fp["train.fsdp"]
    fp["world_size"] = info.world_size
    fp.update(extra)
    return fp


def _endless(source: BatchSource) -> Iterator[Batch]:
    while True:
        empty = True
        for batch in source:
            empty = False
            yield batch
        if empty:
            raise PlmkitError("the data source yielded no batches "
                              "(fewer examples than one batch per rank?)")


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


class _Trainer:
    def __init__(self, model: nn.Module, source: BatchSource, args: TrainArgs, out_dir: Path,
                 info: D.DistInfo, hooks: Hooks) -> None:
        self.raw, self.source, self.args, self.out_dir, self.info = model, source, args, out_dir, info
        self.h = hooks
        self.device = torch.device(hooks.device) if hooks.device else D.default_device(info)
        self.dtype = autocast_dtype(args.precision, self.device)
        self.sharded = args.fsdp and info.enabled
        self.ckpt_root = out_dir / "checkpoints"
        self.history: list[dict[str, Any]] = []
        self.losses: list[float] = []
        self.last_saved = -1
        self.last_checkpoint: Path | None = None
        self.early_stop = False
        self.save_pending = False
        self._lr = args.lr  # lr of the latest step (peak-relative), for logging
        self.budget_s = parse_budget(args.budget) if args.budget else None
        self.total, self.total_reason = total_steps(args, source)
        self.clock = hooks.clock
        self.t_start = self.clock()
        self.step_s = 0.0        # the last step's duration: when the next one should end
        self.progress = 0.0      # a time-planned schedule's progress at the end of the next step
        self.eval_every = args.eval_every or self._steps_per_epoch()
        self.c = _Counters(warmup=_warmup(args, self.total))
        self.fingerprint = _fingerprint(args, info, hooks.fingerprint)

        S.seed_everything(args.seed + info.rank)
        if hooks.trainable is not None:
            for name, p in model.named_parameters():
                p.requires_grad_(bool(hooks.trainable(name)))
        # FSDP moves each rank's shard to the device; the whole model may not fit there.
        if self.sharded:
            D.wrap_fsdp(model, info, self.device, self.dtype is not None)
        else:
            model.to(self.device)
        self.opt = build_optimizer(model, lr=args.lr, weight_decay=args.weight_decay,
                                   betas=(args.betas[0], args.betas[1]), eps=args.eps, device=self.device,
                                   layer_of=hooks.layer_of, layerwise_lr_decay=args.layerwise_lr_decay)
        self.plan = dict(schedule=args.schedule, total=self.total, warmup_frac=_warmup_frac(args, self.total),
                         progress=(lambda: self.progress) if self.total is None and self.budget_s else None)
        self.sched = build_scheduler(self.opt, warmup=self.c.warmup, **self.plan)
        resumed = self._restore() if args.resume else self._fresh()
        self.metrics = MetricsLog(out_dir, enabled=info.is_main, tensorboard=args.tensorboard,
                                  resume_step=resumed)
        if resumed is not None:
            self._record_resume()
        n_params = sum(p.numel() for p in model.parameters())
        self.flops_per_token = hooks.flops_per_token or 6.0 * n_params
        self.model = torch.compile(model) if args.compile else model
        if not self.sharded:
            self.model = D.wrap_ddp(self.model, info, self.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.t_start = self.clock()
        self.window = Window()

    def _steps_per_epoch(self) -> int:
        """eval_every 0: once per epoch (0, only at the end, for data without epochs)."""
        if not hasattr(self.source, "__len__"):
            return 0
        return max(1, math.ceil(len(self.source) / self.args.grad_accum))

    # ---- setup ----

    def _fresh(self) -> None:
        if S.list_checkpoints(self.ckpt_root):
            raise PlmkitError(f"{self.ckpt_root} already holds checkpoints: resume from them "
                              "(--resume) or train into a new output directory")
        return None

    def _pick_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """Rank 0: the newest checkpoint whose files are whole, and its train state; a truncated
        one (a full disk, a copy cut short) is skipped, saying so. A state file plmkit would
        have to unpickle is refused outright (``state.check_readable``)."""
        S.remove_partial(self.ckpt_root)
        for _, path in reversed(S.list_checkpoints(self.ckpt_root)):
            try:
                return path, S.check_readable(path)
            except S.Unreadable as e:
                print(f"note: skipping checkpoint {path}: {e}; resuming from the one before it",
                      file=sys.stderr)
        return None

    def _restore(self) -> int | None:
        """Load the newest complete checkpoint, if any; returns its step."""
        picked = self._pick_checkpoint() if self.info.is_main else None
        path = D.broadcast_object(str(picked[0]) if picked else None, self.info)
        if path is None:
            return None  # nothing saved yet: a resumed run starts from scratch
        path = Path(path)
        ignore = _LEGACY | {f"train.{k}" for k in RESUME_FREE}
        S.check_fingerprint(path, self.fingerprint, ignore_saved=ignore)
        state = picked[1] if picked else S.load_state(path)
        if self.sharded:
            S.load_sharded(self.raw, self.opt, path, self.info.is_main)
        else:
            self.h.load_fn(self.raw, path)
            self.opt.load_state_dict(state["optimizer"])
        kernel = optimizer_kernel(self.raw)
        for g in self.opt.param_groups:  # the checkpoint may come from another kind of run
            g["fused"], g["foreach"] = kernel.get("fused"), kernel.get("foreach")
        planned_warmup = self.c.warmup
        self.c = _Counters(**state["counters"])
        if self.c.warmup is None:  # a checkpoint from before warmup was saved
            self.c.warmup = planned_warmup
        self.sched.load_state_dict(state["scheduler"])
        self.step_s = self.c.step_seconds     # from the checkpoint: the same on every rank
        self.progress = self._planned_progress(self.c.train_seconds)
        replan(self.sched, lr=self.args.lr, warmup=self.c.warmup, **self.plan)
        S.set_rng_state(state["rng"][self.info.rank])
        self.source.load_state_dict(state["data"][self.info.rank])
        self.last_saved, self.last_checkpoint = self.c.step, path
        return self.c.step

    def _record_resume(self) -> None:
        """Log what this resume changed (lr, precision, length, ...) as a ``resume`` event."""
        saved = read_json(self.last_checkpoint / S.CONFIG_FILE)
        now = to_dict(self.args)
        changed = {k: [saved[k], now[k]] for k in sorted(RESUME_FREE - {"resume"})
                   if k in saved and saved[k] != now[k]}
        if changed:
            self.metrics.log({"step": self.c.step, "event": "resume", "changed": changed}, "train")
        if self.info.is_main:
            shown = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
            print(f"resuming from step {self.c.step}" + (f" (changed: {shown})" if shown else ""))

    # ---- one optimizer step ----

    def _step(self, batches: Iterator[Batch]) -> tuple[float, int, bool]:
        """Run one optimizer step; returns (mean loss over ranks, tokens, over budget?)."""
        accum, info = self.args.grad_accum, self.info
        started = self.clock()
        loss_sum = torch.zeros((), device=self.device)
        aux: dict[str, torch.Tensor] = {}
        tokens = 0
        for i in range(accum):
            batch = next(batches)
            tokens += count_tokens(batch)
            batch = _to_device(batch, self.device)
            # Skip the gradient reduction on all but the last micro-batch.
            with D.grad_sync(self.model, sync=i == accum - 1):
                with torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16,
                                    enabled=self.dtype is not None):
                    out = self.model(**batch)
                loss = out.loss.float() / accum
                loss.backward()
            loss_sum += loss.detach()
            for k, v in (getattr(out, "aux", None) or {}).items():
                aux[k] = aux.get(k, 0.0) + torch.as_tensor(v).detach().float() / accum
        # Rank 0's clock decides for every rank: the budget stop, and the progress a time-planned
        # schedule reads for the next step (the same lr on every rank).
        over, progress = 0.0, 0.0
        if info.is_main and self.budget_s is not None:
            elapsed, self.step_s = self._elapsed(), self.clock() - started
            over, progress = float(elapsed >= self.budget_s), self._planned_progress(elapsed)
        f64 = dict(device=self.device, dtype=torch.float64)     # a progress exact enough to resume on
        both = D.all_sum(torch.stack([loss_sum.double(), torch.tensor(over, **f64), torch.tensor(progress, **f64)]),
                         info)
        loss_val = both[0].item() / info.world_size
        if not math.isfinite(loss_val):
            self._stop("nonfinite_loss", f"loss is {loss_val} at step {self.c.step + 1}", loss=str(loss_val))
        self._watch(loss_val)
        if self.args.clip_norm > 0:
            aux["grad_norm"] = D.clip_grad_norm(self.params, self.args.clip_norm).detach()
        lr = self.opt.param_groups[0]["lr"] / self.opt.param_groups[0]["lr_scale"]
        self.opt.step()
        self.progress = both[2].item()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.c.step += 1
        self.window.add(loss_val, tokens, aux)
        self._lr = lr
        return loss_val, tokens, bool(both[1].item() > 0)

    def _watch(self, loss: float) -> None:
        """Divergence without NaN: the loss far above its best smoothed value for
        ``divergence_steps`` steps in a row stops the run as a NaN does. While the loss is
        that high, due checkpoints wait (``_save_due``), so every checkpoint is a good one."""
        c = self.c
        c.loss_ema = loss if c.loss_ema is None else EMA * c.loss_ema + (1 - EMA) * loss
        c.best_ema = c.loss_ema if c.best_ema is None else min(c.best_ema, c.loss_ema)
        limit = max(DIVERGENCE_FACTOR * c.best_ema, c.best_ema + DIVERGENCE_MARGIN)
        c.high_steps = c.high_steps + 1 if loss > limit else 0
        n = self.args.divergence_steps
        if n and c.high_steps >= n:
            self._stop("diverged", f"the loss diverged: {loss:.6g} at step {c.step + 1}, above {limit:.4g} "
                       f"(2x its best smoothed value {c.best_ema:.4g}) for {n} steps", loss=loss, best=c.best_ema)

    def _stop(self, event: str, what: str, **record: Any) -> None:
        """Stop before the update: the bad state is never applied nor saved."""
        self.opt.zero_grad(set_to_none=True)
        self.metrics.log({"step": self.c.step + 1, "event": event, **record}, "train")
        last = S.latest_checkpoint(self.ckpt_root)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        advice = ("then resume from the last good checkpoint (--resume with the new --lr or --precision)"
                  if self.h.resumable else "then run again")
        raise PlmkitError(f"training stopped: {what}; {kept}. Lower the learning rate, check the data, "
                          f"or use precision fp32, {advice}.")

    def _elapsed(self) -> float:
        return self.c.train_seconds + self.clock() - self.t_start

    def _planned_progress(self, elapsed: float) -> float:
        """The fraction of the time budget spent when the next step ends (if as long as the last)."""
        if self.budget_s is None:
            return 0.0
        return min(1.0, (elapsed + self.step_s) / self.budget_s)

    # ---- logging, evaluation, checkpoints ----

    def _log(self) -> dict[str, Any] | None:
        if self.c.step % self.args.log_every:
            return None
        tokens = D.all_sum(torch.tensor(self.window.tokens, device=self.device), self.info)
        rec = self.window.record(self.c.step, self._lr, global_tokens=int(tokens),
                                 world_size=self.info.world_size,
                                 flops_per_token=self.flops_per_token,
                                 peak_flops=self.h.peak_flops)
        epoch = self.source.state_dict().get("epoch")
        if isinstance(epoch, int):
            rec["epoch"] = epoch
        self.window.reset()
        self.history.append(rec)
        self.metrics.log(rec, "train")
        return rec

    def _evaluate(self) -> None:
        metrics = None
        if self.info.is_main or self.sharded:  # FSDP: a forward pass needs every rank
            was_training = self.raw.training
            self.raw.eval()
            # FSDP with bf16 gathers bf16 weights; autocast keeps norms/softmax/loss in fp32.
            bf16 = self.sharded and self.dtype is not None
            with S.preserved_rng(), torch.no_grad(), \
                    torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                metrics = {k: float(v) for k, v in self.h.eval_fn(self.raw).items()}
            self.raw.train(was_training)
        metrics = D.broadcast_object(metrics, self.info)
        self.c.last_eval_step, self.c.last_metrics = self.c.step, metrics
        rec = {"step": self.c.step, **{f"eval_{k}": v for k, v in metrics.items()}}
        self.history.append(rec)
        self.metrics.log(rec, "eval")
        self._track_best(metrics)

    def _track_best(self, metrics: dict[str, float]) -> None:
        name = self.h.metric
        if name is None:
            return
        if name not in metrics:
            raise PlmkitError(f"evaluation returned no metric '{name}' (got: {', '.join(metrics)})")
        value, c = metrics[name], self.c
        better = c.best is None or (value > c.best if self.h.greater_is_better else value < c.best)
        if better:
            c.best, c.best_step, c.bad_evals = value, c.step, 0
            save_fn = self._model_writer()
            if self.info.is_main:
                with atomic_dir(self.out_dir / "best", overwrite=True) as tmp:
                    save_fn(self.raw, tmp)
                    write_json(tmp / "best.json", {"step": c.step, name: value})
        else:
            c.bad_evals += 1
        if self.args.patience and c.bad_evals >= self.args.patience:
            self.early_stop = True

    def _model_writer(self) -> S.SaveFn:
        """The ``save_fn`` rank 0 calls; under FSDP it writes the full weights gathered here
        (a collective: every rank calls this)."""
        if not self.sharded:
            return self.h.save_fn
        return S.full_state_writer(S.gather_model(self.raw), S.tied_aliases(self.raw))

    def _save(self) -> None:
        """Write ``checkpoints/step-N`` (rank 0), then drop the oldest beyond keep_last."""
        self.c.train_seconds = self._elapsed()
        self.c.step_seconds = self.step_s
        self.t_start = self.clock()
        rngs = D.gather_objects(S.rng_state(), self.info)
        datas = D.gather_objects(self.source.state_dict(), self.info)
        path = self.ckpt_root / f"step-{self.c.step}"
        save_fn = self._model_writer()
        optim = S.gather_optimizer(self.raw, self.opt) if self.sharded else None
        if self.info.is_main:
            state = {"step": self.c.step, "optimizer": None if self.sharded else self.opt.state_dict(),
                     "scheduler": self.sched.state_dict(), "rng": rngs, "data": datas,
                     "counters": dataclasses.asdict(self.c)}
            S.save_checkpoint(path, model=self.raw, state=state, config=to_dict(self.args),
                              fingerprint=self.fingerprint, save_fn=save_fn, optimizer=optim)
            S.rotate(self.ckpt_root, self.args.keep_last)
        D.barrier(self.info)
        self.last_saved, self.last_checkpoint = self.c.step, path

    # ---- the loop ----

    def _due(self, every: int) -> bool:
        return every > 0 and self.c.step % every == 0

    def _save_due(self) -> bool:
        """A due checkpoint waits while the loss is far above its best (see ``_watch``)."""
        self.save_pending = self.save_pending or self._due(self.args.save_every)
        return self.save_pending and self.c.high_steps == 0

    def run(self) -> TrainResult:
        batches = _endless(self.source)
        progress = Progress(self.total, self.c.step, self.info.is_main, every=self.args.progress_every,
                            world_size=self.info.world_size, budget_s=self.budget_s,
                            spent_s=self.c.train_seconds)
        self.model.train()
        # A resumed run whose time budget is already spent stops without another step.
        spent = self.budget_s is not None and self.c.train_seconds >= self.budget_s
        reason = "budget" if spent else None
        try:
            while reason is None:
                if self.total is not None and self.c.step >= self.total:
                    reason = self.total_reason
                    break
                loss, tokens, over_budget = self._step(batches)
                self.losses.append(loss)
                progress.update(self.c.step, loss, tokens, self._log())
                paused = time.perf_counter()  # keep eval/save time out of tokens/s
                if self.h.eval_fn is not None and self._due(self.eval_every):
                    self._evaluate()
                if self._save_due():
                    self._save()
                    self.save_pending = False
                self.window.start += time.perf_counter() - paused
                if over_budget:
                    reason = "budget"
                elif self.early_stop:
                    reason = "early_stopping"
            if self.h.eval_fn is not None and self.c.last_eval_step != self.c.step:
                self._evaluate()
            if self.last_saved != self.c.step:
                self._save()
        finally:
            progress.close()
            self.metrics.close()
        c = self.c
        best_dir = self.out_dir / "best" if c.best_step is not None else None
        return TrainResult(c.step, reason, dict(c.last_metrics), c.best, c.best_step, self.history,
                           self.losses, self.last_checkpoint, best_dir, self.sharded, _resumes(self.out_dir))


def _resumes(out_dir: Path) -> list[dict[str, Any]]:
    """The run's ``resume`` events, from metrics.jsonl (resumed parts included)."""
    path = out_dir / METRICS_FILE
    if not path.is_file():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("event") == "resume":
            found.append({"step": rec.get("step"), "changed": rec.get("changed", {})})
    return found


@contextlib.contextmanager
def dropped_unless_resumable(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Remove ``run_dir`` when training in it fails (PlmkitError) before its first checkpoint:
    there is nothing to resume, and a leftover directory would block the corrected run. Under
    torchrun every rank removes it before exiting (torchrun stops the other ranks as soon as
    one exits, so rank 0 alone might be stopped half-way)."""
    try:
        yield
    except PlmkitError:
        if enabled and run_dir.is_dir() and not S.list_checkpoints(run_dir / "checkpoints"):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def train(model: nn.Module, source: BatchSource, args: TrainArgs, out_dir: str | Path,
          hooks: Hooks | None = None) -> TrainResult:
    """Train ``model`` on ``source`` under ``args``; checkpoints and metrics go to ``out_dir``;
    what the stage plugs in (evaluation, checkpoint format, fingerprint, ...) is ``hooks``
    (default ``Hooks()``; see its fields).

    ``model(**batch)`` must return an object with ``.loss`` (scalar) and optionally
    ``.aux`` (name -> scalar tensor, logged). With ``args.resume`` the newest readable
    checkpoint in ``out_dir`` is restored; ``hooks.fingerprint`` and the TrainArgs outside
    ``RESUME_FREE`` must match it. With ``args.fsdp`` under torchrun the model is sharded in
    place (see ``dist.wrap_fsdp``) and stays so: ``result.sharded`` is then True and the final
    full weights are in ``result.last_checkpoint`` (always written at the end). A time-planned
    schedule (only ``budget``) warms up and decays to 0 when the budget ends.
    Raises PlmkitError on a non-finite or diverging loss, after keeping the last good checkpoint.
    """
    hooks = hooks if hooks is not None else Hooks()
    check_args(args)
    if hooks.metric is not None and hooks.eval_fn is None:
        raise PlmkitError("a best-checkpoint metric needs an evaluation function")
    if args.patience and hooks.metric is None:
        raise PlmkitError("early stopping (--patience) needs evaluation data and a metric to watch")
    if args.fsdp and (hooks.save_fn is not S.save_safetensors or hooks.load_fn is not S.load_safetensors):
        raise PlmkitError("fsdp writes whole-model checkpoints (model.safetensors); it does not "
                          "support a custom save_fn/load_fn (e.g. adapter-only checkpoints)")
    info = D.init_distributed()
    try:
        return _Trainer(model, source, args, Path(out_dir), info, hooks).run()
    finally:
        D.cleanup(info)
