"""plmkit.loading: one loader tells a checkpoint, an HF directory, an adapter and an ONNX export
apart, and says in one line what a path is when it is not a model directory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plmkit import cli
from plmkit.errors import PlmkitError
from plmkit.loading import LOADERS, describe, load, load_fp32, peek
from plmkit.models.checkpoint import export_hf, save_checkpoint
from plmkit.models.model import PlmModel

LABELS = {"num_labels": 2, "labels": ["neg", "pos"]}


def _fake_onnx(d: Path) -> Path:
    """The files that make a directory an ONNX export; the graph itself is never opened here."""
    d.mkdir()
    (d / "model.onnx").write_bytes(b"")
    (d / "config.json").write_text(json.dumps({"plmkit": "0", "task": "classify", "head_config": LABELS,
                                           "model": {"family": "encoder"}}))
    (d / "plmkit.json").write_text(json.dumps({"format": "onnx", "precision": "int8", "parent": "/runs/sst2"}))
    return d


def _train_file(tmp_path: Path) -> Path:
    f = tmp_path / "train.tsv"
    f.write_text("sentence\tlabel\na good film\tpos\na bad film\tneg\n")
    return f


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_peek_tells_the_formats_apart(tmp_path, tiny_encoder_cfg):
    torch.manual_seed(0)
    model = PlmModel(tiny_encoder_cfg, "classify", LABELS)
    ck = save_checkpoint(model, tmp_path / "ck", meta={"stage": "test"})
    hf = export_hf(model, tmp_path / "hf", tokenizer=None)
    onnx = _fake_onnx(tmp_path / "onnx")
    got = {p.name: (s.format, s.task, s.head_config.get("labels")) for p in (ck, hf, onnx) for s in [peek(p)]}
    assert got == {"ck": ("plmkit", "classify", ["neg", "pos"]), "hf": ("huggingface", "classify", ["neg", "pos"]),
                   "onnx": ("onnx", "classify", ["neg", "pos"])}
    assert set(LOADERS) == {"onnx", "openvino", "adapter", "plmkit", "huggingface"}
    ids = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.eval()(ids).logits
        assert torch.allclose(load(ck).eval()(ids).logits, want, atol=1e-6)
        assert torch.allclose(load(hf).eval()(ids).logits, want, atol=1e-5)
    fresh = load(ck, task="token", head_config={"num_labels": 3, "labels": ["B-X", "I-X", "O"]})
    assert fresh.task == "token" and torch.equal(fresh.backbone.embeddings.word.weight,
                                                  model.backbone.embeddings.word.weight)
    info = describe(ck)
    assert (info["format"], info["task"], info["parameters"]) == ("plmkit", "classify", model.num_parameters())


def test_an_onnx_export_is_refused_where_pytorch_is_needed(tmp_path):
    onnx = _fake_onnx(tmp_path / "onnx")
    with pytest.raises(PlmkitError, match=r"onnx: an ONNX export; generation needs the PyTorch checkpoint it "
                                          r"was exported from \(/runs/sst2\)"):
        load(onnx, needs_torch="generation")
    with pytest.raises(PlmkitError, match="its head is part of the graph and cannot become a 'token' head"):
        load(onnx, task="token")


def test_load_fp32_takes_pytorch_or_an_fp32_graph_and_refuses_an_int8_one(tmp_path, tiny_encoder_cfg):
    model = PlmModel(tiny_encoder_cfg, "classify", LABELS)
    ck = load_fp32(save_checkpoint(model, tmp_path / "ck"))
    assert ck.graph is None and ck.model.task == "classify"
    assert ck.config == json.loads((tmp_path / "ck" / "config.json").read_text())    # what an export writes
    int8 = _fake_onnx(tmp_path / "onnx")
    with pytest.raises(PlmkitError, match=r"already quantized \(precision int8\); quantize the fp32 model it "
                                          r"came from \(/runs/sst2\)"):
        load_fp32(int8)
    (int8 / "plmkit.json").write_text(json.dumps({"format": "onnx", "precision": "fp32"}))
    fp32 = load_fp32(int8)
    assert (fp32.model, fp32.graph, fp32.config["task"]) == (None, int8 / "model.onnx", "classify")


def test_generate_on_an_onnx_export_says_it_needs_the_pytorch_checkpoint(tmp_path, capsys):
    """It used to say "no weights found (expected model.safetensors)"."""
    onnx = _fake_onnx(tmp_path / "onnx")
    assert cli.main(["generate", "--model", str(onnx), "--prompt", "once upon"]) == 1
    err = _one_line_error(capsys)
    assert "an ONNX export; generation" in err and "needs the PyTorch checkpoint" in err


def test_a_missing_model_is_named_as_the_model(tmp_path, capsys):
    """finetune read the tokenizer first and said "tokenizer directory not found"."""
    missing, train = tmp_path / "nope", _train_file(tmp_path)
    for argv in (["finetune", "--model", str(missing), "--task", "classify", "--train", str(train),
                  "--out", str(tmp_path / "out")],
                 ["evaluate", "--model", str(missing), "--data", str(train)],
                 ["generate", "--model", str(missing), "--prompt", "hi"],
                 ["info", str(missing)]):
        assert cli.main(argv) == 1, argv
        err = _one_line_error(capsys)
        assert f"{missing}: model directory not found" in err and "tokenizer" not in err, (argv, err)
    assert not (tmp_path / "out").exists()


def test_a_symlink_loop_is_named_as_one(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    train = _train_file(tmp_path)
    for argv in (["info", str(loop)],
                 ["evaluate", "--model", str(loop), "--data", str(train)],
                 ["finetune", "--model", str(loop), "--task", "classify", "--train", str(train),
                  "--out", str(tmp_path / "out")]):
        assert cli.main(argv) == 1, argv
        err = _one_line_error(capsys)
        assert f"{loop}: symlink loop" in err and "not found" not in err, (argv, err)


def test_a_file_or_an_empty_directory_is_not_a_model(tmp_path):
    f = _train_file(tmp_path)
    with pytest.raises(PlmkitError, match=r"train.tsv: not a directory \(a model is a directory holding config.json\)"):
        load(f)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlmkitError, match=r"empty: not a model directory \(no config.json\)"):
        peek(tmp_path / "empty")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    with pytest.raises(PlmkitError, match=r"dangling: model directory not found \(a symlink whose target is missing\)"):
        load(dangling)
