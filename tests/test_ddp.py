"""DDP on CPU (gloo): 2 ranks x 1 micro-batch must train exactly like 1 rank x 2 micro-batches,
and a 2-rank run must resume exactly from its checkpoint; `plmkit pretrain` does so for every
objective, and a user error under DDP is one line per rank with no partial run folder."""
from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from plmkit.train import list_checkpoints, train

sys.path.insert(0, str(Path(__file__).parent))
from test_train_loop import cfg, make_model, make_source  # noqa: E402

STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        model = make_model(dropout=0.0)
        r = train(model, make_source(rank=rank, world_size=world),
                  cfg(max_steps=STEPS, grad_accum=1, save_every=3), Path(out) / "run")
        state = {k: v.tolist() for k, v in model.state_dict().items()}
        # Resume on 2 ranks from the step-3 checkpoint with a fresh, different model.
        if rank == 0:
            shutil.copytree(Path(out) / "run", Path(out) / "resumed")
            shutil.rmtree(Path(out) / "resumed" / "checkpoints" / "step-6")
        dist.barrier()
        again = make_model(seed=5, dropout=0.0)
        r2 = train(again, make_source(rank=rank, world_size=world),
                   cfg(max_steps=STEPS, grad_accum=1, save_every=3, resume=True), Path(out) / "resumed")
        resumed = {k: v.tolist() for k, v in again.state_dict().items()}
        Path(out, f"rank{rank}.json").write_text(json.dumps(
            {"losses": r.losses, "state": state, "resumed_losses": r2.losses, "resumed": resumed}))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_ranks_equal_one_rank_with_accumulation(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    model = make_model(dropout=0.0)
    single = train(model, make_source(), cfg(max_steps=STEPS, grad_accum=2, save_every=3),
                   tmp_path / "single")

    for r in ranks:  # both ranks see the all-reduced loss and hold identical weights
        assert r["losses"] == pytest.approx(single.losses, abs=1e-5)
        assert r["resumed_losses"] == pytest.approx(single.losses[3:], abs=1e-5)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(torch.tensor(r["state"][k]), v, atol=1e-5, rtol=0)
            torch.testing.assert_close(torch.tensor(r["resumed"][k]), v, atol=1e-5, rtol=0)
    # Only rank 0 wrote: one metrics line per step, checkpoints once.
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, STEPS + 1))
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [3, 6]
    assert single.losses[0] != pytest.approx(single.losses[-1])  # it did learn something


# ---- every pre-training objective through `plmkit pretrain` (as torchrun runs it) ----

OBJECTIVES = {"mlm": "bert", "mlm+nsp": "bert", "mlm+sop": "bert", "clm": "gpt"}


def _pretrain(root: Path, objective: str, out: str, *extra: str) -> list[str]:
    arch = OBJECTIVES[objective]
    return ["pretrain", "--arch", arch, "--size", "tiny", "--objective", objective, "--corpus",
            str(root / "corpus.txt"), "--tokenizer", str(root / f"tok-{arch}"), "--seq-len", "32",
            "--batch-size", "4", "--dropout", "0", "--precision", "fp32", "--max-steps", "3",
            "--eval-batches", "0", "--log-every", "1", "--cache-dir", str(root / "cache"),
            "--out", str(root / out), *extra]


def _pretrain_worker(rank: int, world: int, port: int, root: str) -> None:
    import contextlib
    import io
    import os

    from plmkit.cli import main

    os.environ.update(PLMKIT_QUIET="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        codes = {obj: main(_pretrain(Path(root), obj, f"ddp-{obj}")) for obj in OBJECTIVES}
        # continued pre-training (MLM only) of the MLM+NSP result: its pooler stays, frozen (DDP
        # would refuse a trainable parameter without gradient); --arch, --size, --tokenizer agree
        codes["init"] = main(_pretrain(Path(root), "mlm", "ddp-init", "--init", str(Path(root) / "ddp-mlm+nsp")))
        # A user error once the run directory exists (the loop refuses --patience without
        # evaluation): one line per rank, exit 1, and no partial run folder.
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            codes["error"] = main(_pretrain(Path(root), "mlm", "ddp-error", "--patience", "2"))
        Path(root, f"rank{rank}.json").write_text(json.dumps({"codes": codes, "stderr": err.getvalue()}))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_pretrain_every_objective_two_ranks_equal_one_rank_with_accumulation(tmp_path):
    from safetensors.torch import load_file

    from plmkit.cli import main
    from plmkit.data.synthetic import write_corpus
    from plmkit.tokenizer import save_tokenizer, train_tokenizer

    write_corpus(tmp_path / "corpus.txt", n_docs=200, seed=0)
    for arch, kind in (("bert", "wordpiece"), ("gpt", "bpe")):
        (tmp_path / f"tok-{arch}").mkdir()
        save_tokenizer(train_tokenizer([tmp_path / "corpus.txt"], kind=kind, vocab_size=300,
                                       show_progress=False), tmp_path / f"tok-{arch}")
    mp.spawn(_pretrain_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["codes"] == {**{obj: 0 for obj in OBJECTIVES}, "init": 0, "error": 1}
        lines = r["stderr"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("plmkit: error:") and "--patience" in lines[0]
    assert not (tmp_path / "ddp-error").exists()

    for obj in OBJECTIVES:  # 2 ranks x 4 sequences == 1 rank x 2 micro-batches of 4
        assert main(_pretrain(tmp_path, obj, f"one-{obj}", "--grad-accum", "2")) == 0
        losses = [[json.loads(x)["loss"] for x in (tmp_path / f"{run}-{obj}" / "metrics.jsonl").open()]
                  for run in ("ddp", "one")]
        assert losses[0] == pytest.approx(losses[1], abs=1e-5) and len(losses[0]) == 3
        a = load_file(str(tmp_path / f"ddp-{obj}" / "model.safetensors"))
        b = load_file(str(tmp_path / f"one-{obj}" / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=f"{obj}: {k}")
        # NSP/SOP train the pooler; an MLM-only BERT has none (DDP would find it unused)
        assert any(k.startswith("backbone.pooler") for k in a) == (obj in ("mlm+nsp", "mlm+sop"))
    # --init on 2 ranks == on 1 rank with accumulation, from the same parent
    parent_dir = str(tmp_path / "ddp-mlm+nsp")
    assert main(_pretrain(tmp_path, "mlm", "one-init", "--init", parent_dir, "--grad-accum", "2")) == 0
    losses = [[json.loads(x)["loss"] for x in (tmp_path / run / "metrics.jsonl").open()]
              for run in ("ddp-init", "one-init")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5) and len(losses[0]) == 3
    a = load_file(str(tmp_path / "ddp-init" / "model.safetensors"))
    b = load_file(str(tmp_path / "one-init" / "model.safetensors"))
    parent = load_file(str(tmp_path / "ddp-mlm+nsp" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=f"init: {k}")
    assert torch.equal(a["backbone.pooler.dense.weight"], parent["backbone.pooler.dense.weight"])
