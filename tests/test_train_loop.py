"""The shared training loop: exact resume (also after SIGKILL), schedules, weight decay,
clipping, budget, non-finite loss, checkpoint rotation, fingerprints, bf16, logging."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import PlmkitError
from plmkit.train import (Hooks, IndexedBatches, TrainArgs, count_tokens, list_checkpoints, lr_factor,
                          measure_peak_flops, param_groups, parse_budget, train)

VOCAB, HIDDEN, N_EXAMPLES, SEQ = 32, 16, 64, 8


class TinyLM(nn.Module):
    """Embedding -> LayerNorm -> dropout -> Linear; predicts (token + 1) % VOCAB."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(HIDDEN, VOCAB)

    def forward(self, input_ids, labels, attention_mask=None):
        logits = self.out(self.drop(self.norm(self.emb(input_ids))))  # [B, T, V]
        loss = F.cross_entropy(logits.view(-1, VOCAB).float(), labels.view(-1))
        return SimpleNamespace(loss=loss, aux={"ce": loss.detach()})


def make_model(seed: int = 0, dropout: float = 0.1) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(dropout)


def make_source(seed: int = 1, batch_size: int = 4, rank: int = 0, world_size: int = 1,
                delay: float = 0.0) -> IndexedBatches:
    g = torch.Generator().manual_seed(123)
    x = torch.randint(0, VOCAB, (N_EXAMPLES, SEQ), generator=g)

    def make_batch(idx: list[int]) -> dict[str, torch.Tensor]:
        if delay:
            time.sleep(delay)
        ids = x[idx]
        return {"input_ids": ids, "labels": (ids + 1) % VOCAB,
                "attention_mask": torch.ones_like(ids)}

    return IndexedBatches(N_EXAMPLES, make_batch, batch_size, seed=seed, rank=rank,
                          world_size=world_size)


def cfg(**kw) -> TrainArgs:
    base = dict(lr=1e-2, precision="fp32", max_steps=8, warmup_steps=2, log_every=1,
                save_every=4, keep_last=0, seed=7)
    base.update(kw)
    return TrainArgs(**base)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=tol, rtol=0, msg=k)


# ---- exact resume ----

def test_resume_continues_exactly(tmp_path):
    full = make_model()
    ra = train(full, make_source(), cfg(), tmp_path / "a")
    assert ra.steps == 8 and ra.stopped_reason == "max_steps"
    assert [s for s, _ in list_checkpoints(tmp_path / "a" / "checkpoints")] == [4, 8]

    # "Crash" after step 4: keep only that checkpoint, then resume with a fresh process-like
    # state: a differently initialised model, a new source at epoch 0, scrambled RNG.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-8")
    torch.manual_seed(999)
    resumed = make_model(seed=5)
    rb = train(resumed, make_source(), cfg(resume=True), tmp_path / "b")
    assert rb.steps == 8
    assert rb.losses == pytest.approx(ra.losses[4:], abs=1e-5)
    assert_same_weights(weights(full), weights(resumed))
    # metrics.jsonl has each step once: records after the checkpoint were replaced.
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert steps == list(range(1, 9))


def test_constant_schedule_run_can_be_extended(tmp_path):
    one = make_model()
    r1 = train(one, make_source(), cfg(schedule="constant", max_steps=6), tmp_path / "one")
    half = make_model()
    train(half, make_source(), cfg(schedule="constant", max_steps=3), tmp_path / "two")
    again = make_model(seed=3)
    r2 = train(again, make_source(), cfg(schedule="constant", max_steps=6, resume=True), tmp_path / "two")
    assert r2.losses == pytest.approx(r1.losses[3:], abs=1e-5)
    assert_same_weights(weights(one), weights(again))


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from test_train_loop import cfg, make_model, make_source
from plmkit.train import train
train(make_model(), make_source(delay={delay}),
      cfg(max_steps=16, save_every=3, keep_last=2, resume={resume}), {out!r})
"""


def _script(tmp_path: Path, delay: float, resume: bool) -> Path:
    path = tmp_path / f"run_{resume}.py"
    path.write_text(SCRIPT.format(tests=str(Path(__file__).parent), delay=delay,
                                  out=str(tmp_path / "out"), resume=resume))
    return path


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "PLMKIT_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, str(_script(tmp_path, 0.05, False))], env=env)
    ckpts = tmp_path / "out" / "checkpoints"
    deadline = time.time() + 60
    while not list_checkpoints(ckpts):
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = list_checkpoints(ckpts)[-1][0]
    assert killed_at < 16

    done = subprocess.run([sys.executable, str(_script(tmp_path, 0.0, True))], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert list_checkpoints(ckpts)[-1][0] == 16
    assert not [d for d in ckpts.iterdir() if d.name.startswith(".")]  # partial writes removed

    reference = make_model()
    train(reference, make_source(), cfg(max_steps=16, save_every=3, keep_last=2), tmp_path / "ref")
    resumed = safetensors.torch.load_file(str(ckpts / "step-16" / "model.safetensors"))
    assert_same_weights(weights(reference), resumed)


# ---- optimizer and schedule ----

def test_schedule_values():
    lin = [lr_factor(s, schedule="linear", warmup=4, total=12) for s in (0, 1, 3, 4, 8, 11)]
    assert lin == pytest.approx([0.25, 0.5, 1.0, 1.0, 0.5, 0.125])
    cos = [lr_factor(s, schedule="cosine", warmup=2, total=10) for s in (0, 2, 6, 10)]
    assert cos == pytest.approx([0.5, 1.0, 0.5, 0.0])
    assert lr_factor(100, schedule="constant", warmup=0, total=None) == 1.0


def test_logged_lr_follows_schedule(tmp_path):
    r = train(make_model(), make_source(), cfg(lr=0.1, warmup_steps=2, max_steps=6), tmp_path)
    lrs = [h["lr"] for h in r.history if "lr" in h]
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.075, 0.05, 0.025], abs=1e-9)


def test_no_weight_decay_on_biases_and_norms():
    model = make_model()
    model.emb.weight.requires_grad_(False)
    groups = param_groups(model, lr=1.0, weight_decay=0.1)
    decay = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert decay == {"out.weight"}
    assert no_decay == {"norm.weight", "norm.bias", "out.bias"}  # frozen emb left out


def test_layerwise_lr_decay():
    depth = {"emb": 0, "norm": 1}
    groups = param_groups(make_model(), lr=1.0, weight_decay=0.0, layerwise_lr_decay=0.5,
                          layer_of=lambda n: depth.get(n.split(".")[0]))
    lr_of = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr_of == {"emb.weight": 0.25, "norm.weight": 0.5, "norm.bias": 0.5,
                     "out.weight": 1.0, "out.bias": 1.0}
    with pytest.raises(PlmkitError, match="layer map"):
        param_groups(make_model(), lr=1.0, weight_decay=0.0, layerwise_lr_decay=0.5)


def test_gradient_clipping(tmp_path):
    # With eps >> |grad| Adam's first update is ~ lr * grad, so clipping shows in its size.
    def update_norm(clip: float, out: str) -> tuple[float, float]:
        model = make_model(dropout=0.0)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        r = train(model, make_source(), cfg(lr=1.0, eps=1.0, weight_decay=0.0, clip_norm=clip,
                                            schedule="constant", warmup_steps=0, max_steps=1),
                  tmp_path / out)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float((after - before).norm()), r.history[0].get("grad_norm", math.nan)

    clipped, grad_norm = update_norm(1e-3, "clip")
    free, _ = update_norm(0.0, "free")
    assert grad_norm > 0.1
    assert 0.9e-3 < clipped <= 1.0e-3 + 1e-7
    assert free > 10 * clipped


# ---- stopping ----

def test_budget_stops_and_saves(tmp_path):
    r = train(make_model(), make_source(delay=0.02), cfg(max_steps=None, budget="0.3s",
                                                          schedule="constant", save_every=0),
              tmp_path)
    assert r.stopped_reason == "budget"
    assert 0 < r.steps < 100
    assert r.last_checkpoint == tmp_path / "checkpoints" / f"step-{r.steps}"
    assert (r.last_checkpoint / "model.safetensors").is_file()
    again = train(make_model(), make_source(delay=0.02), cfg(max_steps=None, budget="0.3s",
                                                              schedule="constant", save_every=0, resume=True),
                  tmp_path)  # the budget counts across resumes: nothing left
    assert again.stopped_reason == "budget" and again.steps == r.steps and again.losses == []


class FakeClock:
    """Seconds that pass only when the data source hands out a batch: one second per step."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def clocked_source(clock: FakeClock) -> IndexedBatches:
    src = make_source()
    inner = src.make_batch

    def make_batch(idx):
        clock.t += 1.0
        return inner(idx)
    src.make_batch = make_batch
    return src


def test_time_schedule_warms_up_and_decays_to_zero_when_the_budget_ends(tmp_path):
    """Only --budget: the lr follows the budget's clock, warmup over 20% of it, linear decay to 0 at its end."""
    clock = FakeClock()
    args = cfg(lr=0.1, max_steps=None, budget="10s", warmup_steps=0, warmup_ratio=0.2, save_every=5)
    r = train(make_model(), clocked_source(clock), args, tmp_path / "full", Hooks(clock=clock))
    assert r.stopped_reason == "budget" and r.steps == 10
    lrs = [h["lr"] for h in r.history if "lr" in h]
    # step k ends at second k; its lr is the schedule's value there (the first step's: at second 0)
    expected = [0.0] + [0.1 * (1 - (k / 10 - 0.2) / 0.8) for k in range(2, 11)]
    assert lrs == pytest.approx(expected, abs=1e-9)
    assert lrs[1] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    # cosine reaches 0 at the end as well
    clock = FakeClock()
    r = train(make_model(), clocked_source(clock), cfg(lr=0.1, max_steps=None, budget="8s", warmup_steps=1,
                                                       schedule="cosine", save_every=0),
              tmp_path / "cos", Hooks(clock=clock))
    lrs = [h["lr"] for h in r.history if "lr" in h]
    assert r.steps == 8 and lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_time_schedule_resumes_where_the_clock_stopped(tmp_path):
    """A resume counts the time already spent: the same lrs and weights as the uninterrupted run."""
    args = dict(lr=0.1, max_steps=None, budget="10s", warmup_steps=0, warmup_ratio=0.2, save_every=5)
    clock = FakeClock()
    full_model = make_model()
    full = train(full_model, clocked_source(clock), cfg(**args), tmp_path / "full", Hooks(clock=clock))
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step-10")      # as if killed after step 5's save
    clock = FakeClock()                                               # a new process: its clock starts again
    resumed_model = make_model(seed=3)
    again = train(resumed_model, clocked_source(clock), cfg(**args, resume=True), tmp_path / "cut", Hooks(clock=clock))
    assert again.steps == 10 and again.stopped_reason == "budget"
    assert [h["lr"] for h in again.history if "lr" in h] == [h["lr"] for h in full.history if "lr" in h][5:]
    assert_same_weights(weights(full_model), weights(resumed_model), tol=0.0)


def test_parse_budget():
    assert parse_budget("90s") == 90 and parse_budget("20m") == 1200
    assert parse_budget("1h30m") == 5400 and parse_budget("45") == 45
    with pytest.raises(PlmkitError, match="budget"):
        parse_budget("ten minutes")


class NaNAfter(TinyLM):
    def __init__(self, calls: int) -> None:
        torch.manual_seed(0)
        super().__init__(0.0)
        self.calls, self.limit = 0, calls

    def forward(self, **batch):
        out = super().forward(**batch)
        self.calls += 1
        if self.calls > self.limit:
            out.loss = out.loss * float("nan")
        return out


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = NaNAfter(calls=5)
    with pytest.raises(PlmkitError, match=r"loss is nan at step 6; the last good checkpoint is .*step-4"):
        train(model, make_source(), cfg(save_every=2, keep_last=1), tmp_path)
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [4]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last == {"step": 6, "event": "nonfinite_loss", "loss": "nan"}


def test_keep_last_rotation(tmp_path):
    train(make_model(), make_source(), cfg(max_steps=5, save_every=1, keep_last=2), tmp_path)
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [4, 5]


def test_epochs_eval_best_and_early_stopping(tmp_path):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])
    r = train(make_model(), make_source(), cfg(max_steps=None, epochs=2.0, eval_every=2, patience=2),
              tmp_path, Hooks(eval_fn=lambda m: {"acc": next(scores)}, metric="acc"))
    assert r.stopped_reason == "early_stopping" and r.steps == 8  # 16 batches/epoch, stopped early
    assert r.best_metric == 0.7 and r.best_step == 4
    assert json.loads((tmp_path / "best" / "best.json").read_text()) == {"step": 4, "acc": 0.7}
    r2 = train(make_model(), make_source(), cfg(max_steps=None, epochs=0.5, save_every=0),
               tmp_path / "e")
    assert r2.stopped_reason == "epochs" and r2.steps == 8


# ---- resume safety ----

def test_resume_refuses_changed_fingerprint(tmp_path):
    train(make_model(), make_source(), cfg(max_steps=2), tmp_path, Hooks(fingerprint={"model.hidden": 16}))
    with pytest.raises(PlmkitError, match=r"model.hidden: checkpoint has 16, now 32"):
        train(make_model(), make_source(), cfg(max_steps=4, resume=True), tmp_path,
              Hooks(fingerprint={"model.hidden": 32}))
    # The lr may change on resume (the recovery from a divergence); the batch may not.
    with pytest.raises(PlmkitError, match=r"train.grad_accum: checkpoint has 1, now 2"):
        train(make_model(), make_source(), cfg(max_steps=2, grad_accum=2, resume=True), tmp_path,
              Hooks(fingerprint={"model.hidden": 16}))
    with pytest.raises(PlmkitError, match="already holds checkpoints"):
        train(make_model(), make_source(), cfg(max_steps=2), tmp_path)


def test_bad_config_is_a_user_error(tmp_path):
    with pytest.raises(PlmkitError, match="max_steps, epochs or budget"):
        train(make_model(), make_source(), cfg(max_steps=None), tmp_path)


# ---- precision, logging, data ----

def test_bf16_autocast_runs(tmp_path):
    r = train(make_model(), make_source(), cfg(precision="bf16", max_steps=3, tensorboard=True),
              tmp_path, Hooks(peak_flops=1e9))
    assert all(math.isfinite(x) for x in r.losses)
    rec = r.history[-1]
    assert rec["tokens_per_s"] > 0 and rec["mfu"] > 0 and "ce" in rec and "epoch" in rec
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_indexed_batches_reshuffle_shard_and_restore():
    src = IndexedBatches(10, lambda idx: {"idx": idx}, 3, seed=0, drop_last=True)
    assert len(src) == 3
    it = iter(src)
    seen = [next(it)["idx"] for _ in range(2)]
    state = src.state_dict()
    rest = [b["idx"] for b in it]
    epoch1 = [b["idx"] for b in src]
    assert len(rest) == 1 and sorted(sum(seen + rest, [])) != list(range(10))  # 1 example dropped
    assert epoch1 != seen + rest  # reshuffled per epoch
    again = IndexedBatches(10, lambda idx: {"idx": idx}, 3, seed=0, drop_last=True)
    again.load_state_dict(state)
    assert [b["idx"] for b in again] == rest  # no replay of the two consumed batches

    buckets = [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    shards = [[b["idx"] for b in IndexedBatches(9, lambda i: {"idx": i}, 2, batches=buckets,
                                                 rank=r, world_size=2)] for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 2
    assert not set(map(tuple, shards[0])) & set(map(tuple, shards[1]))


def test_token_count_and_peak_flops():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert count_tokens({"input_ids": torch.zeros(2, 3), "attention_mask": mask}) == 3
    assert count_tokens({"input_ids": torch.zeros(2, 3)}) == 6
    assert measure_peak_flops(torch.float32, "cpu", n=128, reps=2) > 0


# ---- divergence, recovery by resuming with a lower lr, damaged checkpoints ----

class BlowUp(TinyLM):
    """A finite loss that explodes after ``calls`` forward passes (as with lr 50: 8 -> 468,276)."""

    def __init__(self, calls: int) -> None:
        torch.manual_seed(0)
        super().__init__(0.0)
        self.calls, self.limit = 0, calls

    def forward(self, **batch):
        out = super().forward(**batch)
        self.calls += 1
        if self.calls > self.limit:
            out.loss = out.loss * 1e4
        return out


def test_divergence_without_nan_stops_keeps_the_last_good_checkpoint_and_resumes_with_a_lower_lr(
        tmp_path, capsys):
    model = BlowUp(calls=5)
    with pytest.raises(PlmkitError, match=r"loss diverged: .* at step 8.*last good checkpoint is .*step-4.*"
                                          r"Lower the learning rate.*--resume"):
        train(model, make_source(), cfg(max_steps=20, save_every=2, keep_last=0, divergence_steps=3), tmp_path)
    # step 6 was due for a checkpoint, but its loss was already far above its best: not written
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 8 and last["event"] == "diverged" and last["loss"] > 100 * last["best"]

    # The advised recovery: resume with a lower lr (and a longer run); both changes are recorded.
    r = train(make_model(), make_source(), cfg(max_steps=10, save_every=2, keep_last=0, divergence_steps=3,
                                               lr=5e-3, resume=True), tmp_path)
    assert r.steps == 10 and len(r.losses) == 6 and all(math.isfinite(x) for x in r.losses)
    assert r.resumes == [{"step": 4, "changed": {"lr": [0.01, 0.005], "max_steps": [20, 10]}}]
    assert "resuming from step 4 (changed: lr 0.01 -> 0.005, max_steps 20 -> 10)" in capsys.readouterr().out
    events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events if "event" in e] == ["resume"]  # the diverged steps were rolled back


def test_resume_re_plans_the_schedule_for_a_new_lr_and_length(tmp_path):
    train(make_model(), make_source(), cfg(max_steps=4, save_every=2, log_every=1), tmp_path)
    r = train(make_model(), make_source(), cfg(max_steps=8, lr=0.02, save_every=2, resume=True), tmp_path)
    # warmup 2 as planned, then linear decay from the peak 0.02 to 0 at the new end (step 8)
    assert [h["lr"] for h in r.history if "lr" in h] == pytest.approx([0.02 * 4 / 6, 0.02 * 3 / 6,
                                                                       0.02 * 2 / 6, 0.02 * 1 / 6])


@pytest.mark.parametrize("damaged", ["model.safetensors", "train_state.pt"])
def test_a_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damaged):
    ra = train(make_model(), make_source(), cfg(), tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    path = tmp_path / "b" / "checkpoints" / "step-8" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])   # a full disk, a copy cut short
    resumed = make_model(seed=5)
    rb = train(resumed, make_source(), cfg(resume=True), tmp_path / "b")
    assert rb.losses == pytest.approx(ra.losses[4:], abs=1e-5)         # continued from step 4
    err = capsys.readouterr().err
    assert f"skipping checkpoint {path.parent}" in err and damaged in err and "the one before it" in err


class Gadget:
    """Stands for any Python object a pickle could bring along (and run code through)."""


def test_a_train_state_that_needs_unpickling_is_refused(tmp_path):
    import pickle

    train(make_model(), make_source(), cfg(), tmp_path)
    state = tmp_path / "checkpoints" / "step-8" / "train_state.pt"
    state.write_bytes(pickle.dumps({"step": 8, "gadget": Gadget()}))
    with pytest.raises(PlmkitError, match="not a torch zip archive .*refusing"):
        train(make_model(), make_source(), cfg(resume=True), tmp_path)
    torch.save({"step": 8, "gadget": Gadget()}, state)
    with pytest.raises(PlmkitError, match="refusing to unpickle"):
        train(make_model(), make_source(), cfg(resume=True), tmp_path)
