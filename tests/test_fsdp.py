"""FSDP on CPU (gloo, 2 ranks): sharded training must match 1 unsharded rank with gradient
accumulation, write the same model.safetensors as without FSDP, and resume exactly."""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import safetensors
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from plmkit.errors import PlmkitError
from plmkit.models.checkpoint import load_model, save_checkpoint
from plmkit.models.config import EncoderConfig
from plmkit.models.model import PlmModel
from plmkit.train import Hooks, IndexedBatches, TrainArgs, train
from plmkit.train.state import MODEL_FILE, load_safetensors

VOCAB, SEQ, N_EXAMPLES, STEPS = 40, 8, 48, 6


def make_model(seed: int = 0) -> PlmModel:
    torch.manual_seed(seed)
    cfg = EncoderConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2,
                        intermediate_size=64, max_position=16, hidden_dropout=0.0,
                        attention_dropout=0.0)
    return PlmModel(cfg, "mlm")  # tied decoder/embeddings: checks tied weights under FSDP


def make_source(rank: int = 0, world_size: int = 1) -> IndexedBatches:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, VOCAB, (N_EXAMPLES, SEQ), generator=g)
    masked = torch.rand(N_EXAMPLES, SEQ, generator=g) < 0.3
    masked[:, 0] = True  # every example has at least one prediction

    def make_batch(idx: list[int]) -> dict[str, torch.Tensor]:
        x = ids[idx]
        return {"input_ids": torch.where(masked[idx], 4, x), "attention_mask": torch.ones_like(x),
                "labels": torch.where(masked[idx], x, -100)}

    return IndexedBatches(N_EXAMPLES, make_batch, 4, seed=1, rank=rank, world_size=world_size)


def evaluate(model: torch.nn.Module) -> dict[str, float]:
    batch = next(iter(make_source()))
    return {"loss": float(model(**batch).loss)}


def cfg(**kw) -> TrainArgs:
    return TrainArgs(**{**dict(lr=1e-2, precision="fp32", max_steps=STEPS, warmup_steps=2,
                                 log_every=1, save_every=3, eval_every=3, keep_last=0, seed=7), **kw})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        hooks = Hooks(eval_fn=evaluate, metric="loss", greater_is_better=False)
        # Each rank initialises differently: FSDP must start from rank 0's weights, as DDP does.
        r = train(make_model(seed=rank), make_source(rank, world), cfg(fsdp=True, grad_accum=1),
                  Path(out) / "run", hooks)
        if rank == 0:  # "crash" after step 3
            shutil.copytree(Path(out) / "run", Path(out) / "resumed")
            shutil.rmtree(Path(out) / "resumed" / "checkpoints" / "step-6")
        dist.barrier()
        r2 = train(make_model(seed=5), make_source(rank, world), cfg(fsdp=True, grad_accum=1, resume=True),
                   Path(out) / "resumed", hooks)
        # Gradient accumulation under FSDP (gradient sync off on the first micro-batch).
        r3 = train(make_model(), make_source(rank, world),
                   cfg(fsdp=True, grad_accum=2, max_steps=2, eval_every=0), Path(out) / "accum")
        Path(out, f"rank{rank}.json").write_text(json.dumps(
            {"losses": r.losses, "resumed_losses": r2.losses, "sharded": r.sharded,
             "eval": r.last_metrics, "accum_losses": r3.losses}))
    finally:
        dist.destroy_process_group()


def _file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    with safetensors.safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_fsdp_two_ranks_equal_one_rank_with_accumulation(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    single_model = make_model(seed=0)
    single = train(single_model, make_source(), cfg(grad_accum=2), tmp_path / "single",
                   Hooks(eval_fn=evaluate, metric="loss", greater_is_better=False))
    assert not single.sharded and single.losses[0] != pytest.approx(single.losses[-1])
    for r in ranks:
        assert r["sharded"]
        assert r["losses"] == pytest.approx(single.losses, abs=1e-5)
        assert r["resumed_losses"] == pytest.approx(single.losses[3:], abs=1e-5)
        assert r["eval"]["loss"] == pytest.approx(single.last_metrics["loss"], abs=1e-5)

    accum_model = make_model()
    accum = train(accum_model, make_source(), cfg(grad_accum=4, max_steps=2, eval_every=0),
                  tmp_path / "single_accum")
    got, _ = _file(tmp_path / "accum" / "checkpoints" / "step-2" / MODEL_FILE)
    for k, v in accum_model.state_dict().items():
        if k in got:
            torch.testing.assert_close(got[k], v, atol=1e-5, rtol=0, msg=k)
    for r in ranks:
        assert r["accum_losses"] == pytest.approx(accum.losses, abs=1e-5)

    # Same file format as without FSDP (tied weight stored once, same metadata) ...
    ref, ref_meta = _file(tmp_path / "single" / "checkpoints" / "step-6" / MODEL_FILE)
    for run_dir in ("run", "resumed"):
        got, meta = _file(tmp_path / run_dir / "checkpoints" / "step-6" / MODEL_FILE)
        assert got.keys() == ref.keys() and meta == ref_meta
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=0, msg=k)
    assert (tmp_path / "run" / "best" / MODEL_FILE).is_file()

    # ... so it loads into a plain model, by the loop's loader and by load_model.
    fresh = make_model(seed=9)
    load_safetensors(fresh, tmp_path / "run" / "checkpoints" / "step-6")
    for k, v in single_model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, atol=1e-5, rtol=0, msg=k)
    export = save_checkpoint(make_model(seed=9), tmp_path / "export")
    shutil.copy(tmp_path / "run" / "checkpoints" / "step-6" / MODEL_FILE, export / MODEL_FILE)
    loaded = load_model(export)
    assert loaded.head.decoder.weight is loaded.backbone.embeddings.word.weight
    torch.testing.assert_close(loaded.backbone.embeddings.word.weight,
                               single_model.backbone.embeddings.word.weight, atol=1e-5, rtol=0)


def test_fsdp_refuses_custom_checkpoint_functions(tmp_path):
    with pytest.raises(PlmkitError, match="fsdp"):
        train(make_model(), make_source(), cfg(fsdp=True), tmp_path,
              Hooks(save_fn=lambda model, d: None))
