"""The training loop shared by pretrain, finetune and distill.

One optimizer step = ``grad_accum`` micro-batches. Each micro-loss is divided by
``grad_accum`` before ``backward`` (so gradients are the mean over micro-batches) and
DDP (or FSDP, with ``fsdp``) averages over ranks, hence 2 ranks x 1 micro-batch == 1 rank
x 2 micro-batches.

Per step: forward/backward under bf16 autocast (optional) -> one all-reduce of
[loss, over-budget flag] -> non-finite check (before the update, so weights stay good)
-> clip -> AdamW -> LR schedule. Logging, evaluation and checkpoints happen at step
boundaries; a checkpoint restores everything (weights, optimizer, schedule, RNG, data
position, counters) so an interrupted run continues exactly as if never stopped.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..config import option, to_dict
from ..errors import PlmkitError
from ..io import atomic_dir, write_json
from . import dist as D
from . import state as S
from .logging import MetricsLog, Progress, Window, count_tokens
from .optim import LayerOf, build_optimizer, build_scheduler, optimizer_kernel
from .source import Batch, BatchSource


@dataclass
class TrainConfig:
    lr: float = option(5e-4, help="peak learning rate")
    weight_decay: float = option(0.01, help="AdamW weight decay (not applied to biases and norm weights)")
    betas: list[float] = option([0.9, 0.999], help="AdamW betas")
    eps: float = option(1e-8, help="AdamW epsilon")
    warmup_steps: int = option(0, help="linear warmup steps (0: use warmup_ratio)")
    warmup_ratio: float = option(0.0, help="warmup as a fraction of the total steps")
    schedule: str = option("linear", help="learning-rate decay after warmup",
                           choices=["linear", "cosine", "constant"])
    max_steps: int | None = option(None, help="stop after this many optimizer steps")
    epochs: float | None = option(None, help="stop after this many passes over the data (may be fractional)")
    budget: str | None = option(None, help="wall-clock limit, e.g. 90s, 20m, 1h30m, counted across "
                                "resumes; saves and stops cleanly")
    grad_accum: int = option(1, help="micro-batches per optimizer step")
    clip_norm: float = option(1.0, help="clip the global gradient norm to this (0: off)")
    precision: str = option("auto", help="bf16 autocast or fp32 (auto: bf16 on a bf16-capable GPU)",
                            choices=["auto", "bf16", "fp32"])
    compile: bool = option(False, help="torch.compile the model")
    eval_every: int = option(0, help="evaluate every N steps (0: only at the end)")
    save_every: int = option(500, help="write a resumable checkpoint every N steps (0: only at the end)")
    keep_last: int = option(2, help="keep the K newest checkpoints (0: keep all)")
    log_every: int = option(10, help="log training metrics every N steps")
    seed: int = option(42, help="random seed (rank r uses seed + r)")
    patience: int | None = option(None, help="early stopping: evaluations without improvement")
    layerwise_lr_decay: float | None = option(None, help="scale lr by this factor per layer downwards")
    tensorboard: bool = option(False, help="also write TensorBoard scalars")
    ddp_find_unused: bool = option(False, help="DDP: allow parameters that get no gradient")
    fsdp: bool = option(False, help="under torchrun, shard weights, gradients and optimizer state "
                        "over the ranks (FSDP) instead of replicating them (DDP): for models that "
                        "do not fit one device; checkpoints keep the same format")


# Fields that may change between a checkpoint and its resume: they do not affect the
# trajectory of the weights (evaluation runs with its RNG streams preserved). The run
# length (max_steps / epochs / warmup_ratio) is compared through its effect on the
# schedule instead, so a constant-schedule run can be extended.
RESUME_FREE = {"budget", "eval_every", "save_every", "keep_last", "log_every", "compile",
               "patience", "tensorboard", "ddp_find_unused", "max_steps", "epochs", "warmup_ratio"}


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


_BUDGET = re.compile(r"(\d+(?:\.\d*)?)([hms])")


def parse_budget(text: str) -> float:
    """'90s' / '20m' / '1h30m' / '45' (seconds) -> seconds."""
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d*)?", s):
        return float(s)
    parts = _BUDGET.findall(s)
    if not parts or "".join(a + u for a, u in parts) != s:
        raise PlmkitError(f"budget: cannot parse {text!r} (expected e.g. 90s, 20m, 1h30m)")
    return sum(float(a) * {"h": 3600, "m": 60, "s": 1}[u] for a, u in parts)


def check_config(cfg: TrainConfig) -> None:
    if cfg.lr <= 0:
        raise PlmkitError(f"lr must be > 0, got {cfg.lr}")
    if cfg.grad_accum < 1 or cfg.log_every < 1:
        raise PlmkitError("grad_accum and log_every must be >= 1")
    if min(cfg.eval_every, cfg.save_every, cfg.keep_last, cfg.warmup_steps) < 0:
        raise PlmkitError("eval_every, save_every, keep_last and warmup_steps must be >= 0")
    if len(cfg.betas) != 2:
        raise PlmkitError(f"betas needs two values, got {cfg.betas}")
    if cfg.max_steps is None and cfg.epochs is None and cfg.budget is None:
        raise PlmkitError("set at least one of max_steps, epochs or budget")
    if cfg.budget is not None:
        parse_budget(cfg.budget)


def total_steps(cfg: TrainConfig, source: BatchSource) -> tuple[int | None, str]:
    """The planned number of optimizer steps (None: time budget only) and its reason."""
    plans: list[tuple[int, str]] = []
    if cfg.max_steps is not None:
        plans.append((cfg.max_steps, "max_steps"))
    if cfg.epochs is not None:
        if not hasattr(source, "__len__"):
            raise PlmkitError("epochs needs a data source of known length; use max_steps")
        plans.append((math.ceil(cfg.epochs * len(source) / cfg.grad_accum), "epochs"))
    if not plans:
        return None, "budget"
    return min(plans)


def _fingerprint(cfg: TrainConfig, warmup: int, total: int | None, info: D.DistInfo,
                 extra: dict[str, Any] | None) -> dict[str, Any]:
    """What must be equal between a checkpoint and the run resuming from it."""
    fp: dict[str, Any] = {f"train.{k}": v for k, v in to_dict(cfg).items() if k not in RESUME_FREE}
    fp["train.warmup"] = warmup
    fp["train.decay_steps"] = None if cfg.schedule == "constant" else total
    if not cfg.fsdp:  # absent, not False: checkpoints from before the option still resume
        del fp["train.fsdp"]
    fp["world_size"] = info.world_size
    fp.update(extra or {})
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


def _bf16(precision: str, device: torch.device) -> bool:
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"


class _Trainer:
    def __init__(self, model: nn.Module, source: BatchSource, cfg: TrainConfig, out_dir: Path,
                 info: D.DistInfo, opts: dict[str, Any]) -> None:
        self.raw, self.source, self.cfg, self.out_dir, self.info = model, source, cfg, out_dir, info
        self.o = opts
        self.device = torch.device(opts["device"]) if opts["device"] else D.default_device(info)
        self.bf16 = _bf16(cfg.precision, self.device)
        self.sharded = cfg.fsdp and info.enabled
        self.ckpt_root = out_dir / "checkpoints"
        self.save_fn = opts["save_fn"] or S.save_safetensors
        self.c = _Counters()
        self.history: list[dict[str, Any]] = []
        self.losses: list[float] = []
        self.last_saved = -1
        self.last_checkpoint: Path | None = None
        self.early_stop = False
        self._lr = cfg.lr  # lr of the latest step (peak-relative), for logging
        self.budget_s = parse_budget(cfg.budget) if cfg.budget else None
        self.total, self.total_reason = total_steps(cfg, source)
        warmup = cfg.warmup_steps
        if not warmup and cfg.warmup_ratio:
            if self.total is None:
                raise PlmkitError("warmup_ratio needs max_steps or epochs; use warmup_steps")
            warmup = round(cfg.warmup_ratio * self.total)
        self.fingerprint = _fingerprint(cfg, warmup, self.total, info, opts["fingerprint"])

        S.seed_everything(cfg.seed + info.rank)
        if opts["trainable"] is not None:
            for name, p in model.named_parameters():
                p.requires_grad_(bool(opts["trainable"](name)))
        # FSDP moves each rank's shard to the device; the whole model may not fit there.
        if self.sharded:
            D.wrap_fsdp(model, info, self.device, self.bf16)
        else:
            model.to(self.device)
        self.opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps, device=self.device,
                                   layer_of=opts["layer_of"], layerwise_lr_decay=cfg.layerwise_lr_decay)
        self.sched = build_scheduler(self.opt, schedule=cfg.schedule, warmup=warmup, total=self.total)
        resumed = self._restore() if opts["resume"] else self._fresh()
        self.metrics = MetricsLog(out_dir, enabled=info.is_main, tensorboard=cfg.tensorboard,
                                  resume_step=resumed)
        n_params = sum(p.numel() for p in model.parameters())
        self.flops_per_token = opts["flops_per_token"] or 6.0 * n_params
        self.model = torch.compile(model) if cfg.compile else model
        if not self.sharded:
            self.model = D.wrap_ddp(self.model, info, self.device, cfg.ddp_find_unused)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.t_start = time.perf_counter()
        self.window = Window()

    # ---- setup ----

    def _fresh(self) -> None:
        if S.list_checkpoints(self.ckpt_root):
            raise PlmkitError(f"{self.ckpt_root} already holds checkpoints: resume from them "
                              "(--resume) or train into a new output directory")
        return None

    def _restore(self) -> int | None:
        """Load the newest complete checkpoint, if any; returns its step."""
        if self.info.is_main:
            S.remove_partial(self.ckpt_root)
        latest = S.latest_checkpoint(self.ckpt_root) if self.info.is_main else None
        path = D.broadcast_object(str(latest) if latest else None, self.info)
        if path is None:
            return None  # nothing saved yet: a resumed run starts from scratch
        path = Path(path)
        S.check_fingerprint(path, self.fingerprint)
        state = S.load_state(path)
        if self.sharded:
            S.load_sharded(self.raw, self.opt, path, self.info.is_main)
        else:
            (self.o["load_fn"] or S.load_safetensors)(self.raw, path)
            self.opt.load_state_dict(state["optimizer"])
        kernel = optimizer_kernel(self.raw)
        for g in self.opt.param_groups:  # the checkpoint may come from another kind of run
            g["fused"], g["foreach"] = kernel.get("fused"), kernel.get("foreach")
        self.sched.load_state_dict(state["scheduler"])
        S.set_rng_state(state["rng"][self.info.rank])
        self.source.load_state_dict(state["data"][self.info.rank])
        self.c = _Counters(**state["counters"])
        self.last_saved, self.last_checkpoint = self.c.step, path
        return self.c.step

    # ---- one optimizer step ----

    def _step(self, batches: Iterator[Batch]) -> tuple[float, bool]:
        """Run one optimizer step; returns (mean loss over ranks, over budget?)."""
        accum, info = self.cfg.grad_accum, self.info
        loss_sum = torch.zeros((), device=self.device)
        aux: dict[str, torch.Tensor] = {}
        tokens = 0
        for i in range(accum):
            batch = next(batches)
            tokens += count_tokens(batch)
            batch = _to_device(batch, self.device)
            # Skip the gradient reduction on all but the last micro-batch.
            with D.grad_sync(self.model, sync=i == accum - 1):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    out = self.model(**batch)
                loss = out.loss.float() / accum
                loss.backward()
            loss_sum += loss.detach()
            for k, v in (getattr(out, "aux", None) or {}).items():
                aux[k] = aux.get(k, 0.0) + torch.as_tensor(v).detach().float() / accum
        over = float(info.is_main and self.budget_s is not None and self._elapsed() >= self.budget_s)
        both = D.all_sum(torch.stack([loss_sum, torch.tensor(over, device=self.device)]), info)
        loss_val = both[0].item() / info.world_size
        if not math.isfinite(loss_val):
            self._nonfinite(loss_val)
        if self.cfg.clip_norm > 0:
            aux["grad_norm"] = D.clip_grad_norm(self.params, self.cfg.clip_norm).detach()
        lr = self.opt.param_groups[0]["lr"] / self.opt.param_groups[0]["lr_scale"]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.c.step += 1
        self.window.add(loss_val, tokens, aux)
        self._lr = lr
        return loss_val, bool(both[1].item() > 0)

    def _nonfinite(self, loss: float) -> None:
        """Stop before the update: the bad state is never applied nor saved."""
        self.opt.zero_grad(set_to_none=True)
        step = self.c.step + 1
        self.metrics.log({"step": step, "event": "nonfinite_loss", "loss": str(loss)}, "train")
        last = S.latest_checkpoint(self.ckpt_root)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        raise PlmkitError(f"training stopped: loss is {loss} at step {step}; {kept}. "
                          "Lower the learning rate, check the data, or use precision fp32, "
                          "then resume from the last good checkpoint.")

    def _elapsed(self) -> float:
        return self.c.train_seconds + time.perf_counter() - self.t_start

    # ---- logging, evaluation, checkpoints ----

    def _log(self) -> dict[str, Any] | None:
        if self.c.step % self.cfg.log_every:
            return None
        tokens = D.all_sum(torch.tensor(self.window.tokens, device=self.device), self.info)
        rec = self.window.record(self.c.step, self._lr, global_tokens=int(tokens),
                                 world_size=self.info.world_size,
                                 flops_per_token=self.flops_per_token,
                                 peak_flops=self.o["peak_flops"])
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
            bf16 = self.sharded and self.bf16
            with S.preserved_rng(), torch.no_grad(), \
                    torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                metrics = {k: float(v) for k, v in self.o["eval_fn"](self.raw).items()}
            self.raw.train(was_training)
        metrics = D.broadcast_object(metrics, self.info)
        self.c.last_eval_step, self.c.last_metrics = self.c.step, metrics
        rec = {"step": self.c.step, **{f"eval_{k}": v for k, v in metrics.items()}}
        self.history.append(rec)
        self.metrics.log(rec, "eval")
        self._track_best(metrics)

    def _track_best(self, metrics: dict[str, float]) -> None:
        name = self.o["metric"]
        if name is None:
            return
        if name not in metrics:
            raise PlmkitError(f"evaluation returned no metric '{name}' (got: {', '.join(metrics)})")
        value, c = metrics[name], self.c
        better = c.best is None or (value > c.best if self.o["greater_is_better"] else value < c.best)
        if better:
            c.best, c.best_step, c.bad_evals = value, c.step, 0
            save_fn = self._model_writer()
            if self.info.is_main:
                with atomic_dir(self.out_dir / "best", overwrite=True) as tmp:
                    save_fn(self.raw, tmp)
                    write_json(tmp / "best.json", {"step": c.step, name: value})
        else:
            c.bad_evals += 1
        if self.cfg.patience and c.bad_evals >= self.cfg.patience:
            self.early_stop = True

    def _model_writer(self) -> S.SaveFn:
        """The ``save_fn`` rank 0 calls; under FSDP it writes the full weights gathered here
        (a collective: every rank calls this)."""
        if not self.sharded:
            return self.save_fn
        return S.full_state_writer(S.gather_model(self.raw), S.tied_aliases(self.raw))

    def _save(self) -> None:
        """Write ``checkpoints/step-N`` (rank 0), then drop the oldest beyond keep_last."""
        self.c.train_seconds = self._elapsed()
        self.t_start = time.perf_counter()
        rngs = D.gather_objects(S.rng_state(), self.info)
        datas = D.gather_objects(self.source.state_dict(), self.info)
        path = self.ckpt_root / f"step-{self.c.step}"
        save_fn = self._model_writer()
        optim = S.gather_optimizer(self.raw, self.opt) if self.sharded else None
        if self.info.is_main:
            state = {"step": self.c.step, "optimizer": None if self.sharded else self.opt.state_dict(),
                     "scheduler": self.sched.state_dict(), "rng": rngs, "data": datas,
                     "counters": dataclasses.asdict(self.c)}
            S.save_checkpoint(path, model=self.raw, state=state, config=to_dict(self.cfg),
                              fingerprint=self.fingerprint, save_fn=save_fn, optimizer=optim)
            S.rotate(self.ckpt_root, self.cfg.keep_last)
        D.barrier(self.info)
        self.last_saved, self.last_checkpoint = self.c.step, path

    # ---- the loop ----

    def _due(self, every: int) -> bool:
        return every > 0 and self.c.step % every == 0

    def run(self) -> TrainResult:
        batches = _endless(self.source)
        progress = Progress(self.total, self.c.step, self.info.is_main)
        self.model.train()
        # A resumed run whose time budget is already spent stops without another step.
        spent = self.budget_s is not None and self.c.train_seconds >= self.budget_s
        reason = "budget" if spent else None
        try:
            while reason is None:
                if self.total is not None and self.c.step >= self.total:
                    reason = self.total_reason
                    break
                loss, over_budget = self._step(batches)
                self.losses.append(loss)
                progress.update(self._log())
                paused = time.perf_counter()  # keep eval/save time out of tokens/s
                if self.o["eval_fn"] is not None and self._due(self.cfg.eval_every):
                    self._evaluate()
                if self._due(self.cfg.save_every):
                    self._save()
                self.window.start += time.perf_counter() - paused
                if over_budget:
                    reason = "budget"
                elif self.early_stop:
                    reason = "early_stopping"
            if self.o["eval_fn"] is not None and self.c.last_eval_step != self.c.step:
                self._evaluate()
            if self.last_saved != self.c.step:
                self._save()
        finally:
            progress.close()
            self.metrics.close()
        c = self.c
        best_dir = self.out_dir / "best" if c.best_step is not None else None
        return TrainResult(c.step, reason, dict(c.last_metrics), c.best, c.best_step, self.history,
                           self.losses, self.last_checkpoint, best_dir, self.sharded)


def train(model: nn.Module, source: BatchSource, cfg: TrainConfig, out_dir: str | Path, *,
          eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
          metric: str | None = None, greater_is_better: bool = True, resume: bool = False,
          fingerprint: dict[str, Any] | None = None,
          save_fn: S.SaveFn | None = None, load_fn: S.LoadFn | None = None,
          layer_of: LayerOf | None = None, trainable: Callable[[str], bool] | None = None,
          flops_per_token: float | None = None, peak_flops: float | None = None,
          device: str | torch.device | None = None) -> TrainResult:
    """Train ``model`` on ``source`` under ``cfg``; checkpoints and metrics go to ``out_dir``.

    ``model(**batch)`` must return an object with ``.loss`` (scalar) and optionally
    ``.aux`` (name -> scalar tensor, logged). ``eval_fn(model)`` runs every
    ``eval_every`` steps and at the end (rank 0, eval mode, no grad, RNG preserved);
    ``metric`` names the value that selects ``out_dir/best``. ``save_fn(model, dir)`` /
    ``load_fn(model, dir)`` write/read the model inside checkpoint dirs (default
    ``model.safetensors``). ``fingerprint`` holds caller settings (model config, data,
    task) that must match to resume; resume also refuses changed TrainConfig fields
    except those in ``RESUME_FREE``. ``trainable(name)`` freezes parameters it rejects.
    ``peak_flops`` (per device, see ``measure_peak_flops``) enables MFU reporting.
    With ``cfg.fsdp`` under torchrun the model is sharded in place (see ``dist.wrap_fsdp``)
    and stays so: ``result.sharded`` is then True and the final full weights are in
    ``result.last_checkpoint`` (always written at the end); ``eval_fn`` runs on every rank.
    Raises PlmkitError on a non-finite loss, after keeping the last good checkpoint.
    """
    check_config(cfg)
    if metric is not None and eval_fn is None:
        raise PlmkitError("a best-checkpoint metric needs an evaluation function")
    if cfg.patience and metric is None:
        raise PlmkitError("early stopping (patience) needs a metric to watch")
    if cfg.fsdp and (save_fn is not None or load_fn is not None):
        raise PlmkitError("fsdp writes whole-model checkpoints (model.safetensors); it does not "
                          "support a custom save_fn/load_fn (e.g. adapter-only checkpoints)")
    info = D.init_distributed()
    opts = dict(eval_fn=eval_fn, metric=metric, greater_is_better=greater_is_better,
                resume=resume, fingerprint=fingerprint, save_fn=save_fn, load_fn=load_fn,
                layer_of=layer_of, trainable=trainable, flops_per_token=flops_per_token,
                peak_flops=peak_flops, device=device)
    try:
        return _Trainer(model, source, cfg, Path(out_dir), info, opts).run()
    finally:
        D.cleanup(info)
