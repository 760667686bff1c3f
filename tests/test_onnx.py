"""ONNX export (fp32 parity with PyTorch, every head, pruned models) and INT8 quantization."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra 'onnx')")

from plmkit import cli  # noqa: E402
from plmkit.compress.onnx_export import example_batch, export_onnx_dir  # noqa: E402
from plmkit.models.onnx_model import OnnxModel, is_onnx_dir, load_onnx_dir  # noqa: E402
from plmkit.models.model import PlmModel  # noqa: E402
from plmkit.tasks import TASKS, Infer, Prep, TaskData  # noqa: E402
from onnx_fixtures import _predictions, clf  # noqa: E402,F401  (clf: a fixture)

HC = {"num_labels": 3, "labels": ["a", "b", "c"]}
# (task, family): every head kind (decoder base/classify export the same way; checked by hand).
HEADS = [("classify", "encoder"), ("token", "encoder"), ("span", "encoder"), ("base", "encoder"),
         ("mlm+nsp", "encoder"), ("clm", "decoder")]


def _compare(model: PlmModel, onnx: OnnxModel, batch: int = 4, length: int = 11) -> float:
    """Max |ONNX - PyTorch| over every exported output on a padded batch (rows 0..B-2 full, last padded)."""
    feeds = example_batch(model, batch, length, padded=True, seed=7)
    with torch.no_grad():
        ref = model(**feeds)
    got = onnx(**feeds)
    worst = 0.0
    for name in onnx.output_names:
        a, b = getattr(got, name), getattr(ref, name)
        assert a.shape == b.shape, name
        keep = b.abs() < 1e30                       # span logits at padding: float32 min on both sides
        assert torch.equal(a[~keep], b[~keep]), name
        worst = max(worst, float((a - b)[keep].abs().max()))
    return worst


@pytest.mark.parametrize("task,family", HEADS)
def test_fp32_export_matches_pytorch_on_padded_batch(tmp_path, tiny_encoder_cfg, tiny_decoder_cfg, task, family):
    torch.manual_seed(0)
    model = PlmModel(tiny_encoder_cfg if family == "encoder" else tiny_decoder_cfg, task, HC).eval()
    export_onnx_dir(model, tmp_path / "onnx", None, {"parent": "test"})
    onnx = load_onnx_dir(tmp_path / "onnx", threads=1)
    assert onnx.task == task and onnx.head_config == HC and onnx.config == model.config
    assert _compare(model, onnx) < 1e-4
    # Unpadded (the encoder's no-mask path in PyTorch) and another shape: the axes are dynamic.
    feeds = example_batch(model, 1, 5, padded=False, seed=3)
    with torch.no_grad():
        ref = model(**feeds)
    name = onnx.output_names[0]
    assert torch.allclose(getattr(onnx(**feeds), name), getattr(ref, name), atol=1e-4)


def test_pruned_model_with_uneven_layers_and_an_empty_one_exports(tmp_path, tiny_encoder_cfg):
    cfg = dataclasses.replace(tiny_encoder_cfg, num_layers=3, heads=[3, 0, 1], ffn=[40, 0, 12])
    torch.manual_seed(0)
    model = PlmModel(cfg, "classify", HC).eval()
    export_onnx_dir(model, tmp_path / "onnx", None, {"parent": "test"})
    assert _compare(model, load_onnx_dir(tmp_path / "onnx", threads=1)) < 1e-4


def test_pre_ln_encoder_exports_and_quantizes(tmp_path, tiny_encoder_cfg):
    """ORT's BERT fusions expect post-LN; on a pre-LN graph the INT8 model must still follow PyTorch."""
    from plmkit.compress.quantize import QuantOptions, quantize_file

    torch.manual_seed(0)
    model = PlmModel(dataclasses.replace(tiny_encoder_cfg, pre_ln=True), "classify", HC).eval()
    with torch.no_grad():       # spread the logits so an argmax comparison means something
        model.head.classifier.weight.normal_(0.0, 1.0)
    export_onnx_dir(model, tmp_path / "fp32", None, {"parent": "test"})
    assert _compare(model, load_onnx_dir(tmp_path / "fp32", threads=1)) < 1e-4
    (tmp_path / "int8").mkdir()
    for name in ("config.json", "plmkit.json"):
        (tmp_path / "int8" / name).write_bytes((tmp_path / "fp32" / name).read_bytes())
    quantize_file(tmp_path / "fp32" / "model.onnx", tmp_path / "int8" / "model.onnx", "dynamic", tmp_path,
                  options=QuantOptions(fuse=True))
    feeds = example_batch(model, 64, 12, padded=True, seed=5)
    with torch.no_grad():
        want = model(**feeds).logits
    got = load_onnx_dir(tmp_path / "int8", threads=1)(**feeds).logits
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.95
    assert float((got - want).abs().max()) < 0.1 * float(want.abs().max())


@pytest.mark.parametrize("ranges,fused_op", [("tensor", "QAttention"), ("token", "MultiHeadAttention")])
def test_dynamic_int8_fuses_attention_also_in_uneven_pruned_layers(tmp_path, tiny_encoder_cfg, caplog,
                                                                   ranges, fused_op):
    """Each layer with heads becomes one fused attention node (QAttention with per-tensor ranges,
    MultiHeadAttention after per-token INT8 Q/K/V); the empty layer stays unfused; the INT8 graph
    still follows PyTorch (same argmax on nearly every row); ORT's per-layer "hidden size" warning
    about the narrower pruned layers is not shown."""
    import collections

    import onnx

    from plmkit.compress.quantize import QuantOptions, quantize_file

    cfg = dataclasses.replace(tiny_encoder_cfg, num_layers=3, heads=[3, 0, 1], ffn=[40, 0, 12])
    torch.manual_seed(0)
    model = PlmModel(cfg, "classify", HC).eval()
    export_onnx_dir(model, tmp_path / "fp32", None, {"parent": "test"})
    (tmp_path / "int8").mkdir()
    for name in ("config.json", "plmkit.json"):
        (tmp_path / "int8" / name).write_bytes((tmp_path / "fp32" / name).read_bytes())
    quantize_file(tmp_path / "fp32" / "model.onnx", tmp_path / "int8" / "model.onnx", "dynamic", tmp_path,
                  options=QuantOptions(fuse=True, activation_ranges=ranges))
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node)
    assert ops[fused_op] == 2 and ops["Softmax"] == 0, ops
    assert not [r for r in caplog.records if "hidden size" in r.getMessage()]
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, cfg.vocab_size, (64, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, 7:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        want = model(**feeds).logits.argmax(-1)
    got = load_onnx_dir(tmp_path / "int8", threads=1)(**feeds).logits.argmax(-1)
    assert (got == want).float().mean() >= 0.95

# ---------------------------------------------------------------- a briefly trained classifier


def test_export_cli_then_dynamic_and_static_int8_agree_with_fp32(clf, tmp_path, capsys):
    out = tmp_path / "fp32"
    assert cli.main(["export", "--model", str(clf["ck"]), "--format", "onnx", "--out", str(out)]) == 0
    meta = json.loads((out / "plmkit.json").read_text())
    assert is_onnx_dir(out) and meta["format"] == "onnx" and meta["precision"] == "fp32"
    assert meta["parent"] == str(clf["ck"].resolve()) and (out / "tokenizer.json").is_file()
    assert json.loads((out / "config.json").read_text())["head_config"]["finetune_task"] == "classify"

    fp32 = _predictions(out, clf["dev"])
    assert fp32.max(-1).values.mean() > 0.6          # trained: the classes are not near-ties
    runs = {"dyn": ["--model", str(out), "--method", "dynamic", "--eval", str(clf["dev"])],
            "static": ["--model", str(clf["ck"]), "--method", "static", "--calibration", str(clf["train"]),
                       "--calibration-size", "64", "--eval", str(clf["dev"])]}
    for name, args in runs.items():
        assert cli.main(["quantize", *args, "--out", str(tmp_path / name)]) == 0, capsys.readouterr().err
        meta = json.loads((tmp_path / name / "plmkit.json").read_text())
        assert meta["precision"] == "int8" and meta["format"] == "onnx"
        assert set(meta["metrics"]) == {"fp32", "int8"} and "accuracy" in meta["metrics"]["int8"]
        int8 = _predictions(tmp_path / name, clf["dev"])
        agree = (int8.argmax(-1) == fp32.argmax(-1)).float().mean()
        assert agree >= 0.99, (name, float(agree))
        assert abs(meta["metrics"]["int8"]["accuracy"] - meta["metrics"]["fp32"]["accuracy"]) <= 0.02
    # The fp32 metric in plmkit.json is the PyTorch model's own: ONNX runs the task code unchanged.
    from plmkit.models.checkpoint import load_model
    from plmkit.tokenizer import load_tokenizer

    task, prep, tok = TASKS["classify"], Prep(max_length=32), load_tokenizer(clf["ck"])
    model = load_model(clf["ck"]).eval()
    examples = task.read(str(clf["dev"]), prep, labels=model.head_config["labels"])
    data = TaskData(examples, task.encode(tok, examples, model.head_config, prep), tok, model.head_config,
                    Infer(batch_size=32, precision="fp32"))
    assert task.evaluate(model, data)["accuracy"] == meta["metrics"]["fp32"]["accuracy"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plmkit: error:"), err
    return err[0]


def test_quantize_refuses_an_int8_model_and_bad_calibration_data(clf, tmp_path, capsys):
    int8 = tmp_path / "int8"
    assert cli.main(["quantize", "--model", str(clf["ck"]), "--out", str(int8)]) == 0
    capsys.readouterr()
    again = tmp_path / "again"
    assert cli.main(["quantize", "--model", str(int8), "--out", str(again)]) == 1
    assert "already quantized" in _one_line_error(capsys) and not again.exists()

    conll = tmp_path / "ner.txt"
    conll.write_text("EU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nBlackburn I-PER\n")
    bad = tmp_path / "bad"
    args = ["quantize", "--model", str(clf["ck"]), "--method", "static", "--out", str(bad)]
    assert cli.main([*args, "--calibration", str(conll)]) == 1
    assert "does not fit the model's task 'classify'" in _one_line_error(capsys)
    assert cli.main(args) == 1
    assert "--calibration" in _one_line_error(capsys)
    assert not bad.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]


# Quantize in a process killed (SIGKILL: no cleanup runs) while ONNX Runtime quantizes, after it
# made a scratch folder of its own through tempfile, as it does.
KILLED_QUANTIZE = """
import os, signal, sys, tempfile
from plmkit import cli
from plmkit.compress import quantize

def killed(*args, **kw):
    tempfile.mkdtemp(prefix="ort.quant.")
    os.kill(os.getpid(), signal.SIGKILL)
quantize.METHODS["dynamic"] = killed
cli.main(["quantize", "--model", sys.argv[1], "--out", sys.argv[2]])
"""


def test_a_killed_quantize_leaves_its_work_beside_out_and_the_next_run_removes_it(clf, tmp_path):
    import subprocess
    import sys

    import plmkit

    system_tmp, out = tmp_path / "system-tmp", tmp_path / "int8"
    system_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(system_tmp),
           "PYTHONPATH": os.pathsep.join([str(Path(plmkit.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLED_QUANTIZE, str(clf["ck"]), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p for p in system_tmp.iterdir() if p.is_dir()] == []     # no folder in the system temp directory ...
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".int8.tmp-"))
    assert len(left) == 2 and not out.exists()           # ... but the output's and the work's siblings
    assert any(list((tmp_path / n).glob("ort.quant.*")) for n in left)     # ORT's scratch inside the work
    assert cli.main(["quantize", "--model", str(clf["ck"]), "--out", str(out)]) == 0
    assert (out / "model.onnx").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".int8")]


def _evaluate(model_dir: Path, data_file: Path, batch_size: int, capsys) -> dict:
    assert cli.main(["evaluate", "--model", str(model_dir), "--data", str(data_file),
                     "--batch-size", str(batch_size)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_dynamic_int8_results_do_not_depend_on_the_batch(clf, tmp_path, capsys):
    """Padding and the other sentences of a batch must not change a sentence's INT8 result.

    Per-token activation ranges (the default): the metric of ``plmkit evaluate`` is the same at batch
    1, 8, 32 and 64 (padding: batches are length-sorted, so all but batch 1 pad), equals what
    ``quantize`` recorded, and the probabilities match to float rounding. ORT's per-tensor ranges
    (``--activation-ranges tensor``): one range over the whole batch, so the same sentence gets other
    probabilities at batch 1 and 64: the leak the default removes.
    """
    probs = {}
    for ranges in ("token", "tensor"):
        out = tmp_path / ranges
        scored = ["--eval", str(clf["dev"])] if ranges == "token" else []
        assert cli.main(["quantize", "--model", str(clf["ck"]), "--out", str(out), *scored,
                         "--activation-ranges", ranges]) == 0
        meta = json.loads((out / "plmkit.json").read_text())
        assert meta["quantization"]["activation_ranges"] == ranges
        capsys.readouterr()
        probs[ranges] = {bs: _batched_probs(out, clf["dev"], bs) for bs in (1, 64)}
    token = tmp_path / "token"
    scores = {bs: _evaluate(token, clf["dev"], bs, capsys)["accuracy"] for bs in (1, 8, 32, 64)}
    assert max(scores.values()) - min(scores.values()) <= 0.001, scores
    assert scores[64] == json.loads((token / "plmkit.json").read_text())["metrics"]["int8"]["accuracy"]
    assert float((probs["token"][1] - probs["token"][64]).abs().max()) < 1e-5
    assert float((probs["tensor"][1] - probs["tensor"][64]).abs().max()) > 1e-3


def _batched_probs(model_dir: Path, data_file: Path, batch_size: int) -> torch.Tensor:
    from plmkit.tokenizer.load import load_tokenizer

    onnx = load_onnx_dir(model_dir, threads=1)
    task, prep, tok = TASKS["classify"], Prep(max_length=32), load_tokenizer(model_dir)
    examples = task.read(str(data_file), prep, labels=onnx.head_config["labels"])
    data = TaskData(examples, task.encode(tok, examples, onnx.head_config, prep), tok, onnx.head_config,
                    Infer(batch_size=batch_size, precision="fp32"))
    return task._probs(onnx, data)
