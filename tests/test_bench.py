"""plmkit bench: rows for every variant + the transformers baseline, speedups, the metric equal to
plmkit evaluate's, and one-line errors for bad input."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra 'onnx')")

from plmkit import cli  # noqa: E402
from plmkit.data.features import collate  # noqa: E402
from plmkit.data.synthetic import write_sentiment  # noqa: E402
from plmkit.errors import PlmkitError  # noqa: E402
from plmkit.models.checkpoint import save_checkpoint  # noqa: E402
from plmkit.models.config import EncoderConfig  # noqa: E402
from plmkit.models.model import PlmModel  # noqa: E402
from plmkit.stages import bench as stage  # noqa: E402
from plmkit.tasks import TASKS, Prep  # noqa: E402
from plmkit.tokenizer import train_tokenizer  # noqa: E402

ROW_KEYS = {"name", "path", "kind", "precision", "params", "size_mb", "latency_p50_ms", "latency_p95_ms",
            "throughput", "peak_rss_mb", "metric", "baseline", "speedup"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny seeded BERT classifier trained a few steps, its fp32 ONNX export and a dynamic INT8."""
    d = tmp_path_factory.mktemp("bench")
    train, dev = write_sentiment(d / "train.tsv", 200, seed=1), write_sentiment(d / "dev.tsv", 48, seed=2)
    tok = train_tokenizer([train], kind="wordpiece", vocab_size=150, show_progress=False)
    task, prep = TASKS["classify"], Prep(max_length=32)
    examples = task.read(str(train), prep)
    hc = {**task.head_config(examples, prep), "finetune_task": "classify", "preprocess": {"max_length": 32}}
    feats = task.encode(tok, examples, hc, prep)
    cfg = EncoderConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=64, max_position=64, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = PlmModel(cfg, "classify", hc)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = torch.randint(0, len(feats), (32,), generator=g).tolist()
        loss = model(**collate([feats[i] for i in idx], 0)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    ck = save_checkpoint(model.eval(), d / "ck", tokenizer=tok, meta={"stage": "test"})
    assert cli.main(["export", "--model", str(ck), "--format", "onnx", "--out", str(d / "onnx")]) == 0
    assert cli.main(["quantize", "--model", str(d / "onnx"), "--out", str(d / "int8")]) == 0
    return {"ck": ck, "onnx": d / "onnx", "int8": d / "int8", "train": train, "dev": dev, "dir": d}


def _cfg(m: dict[str, Path], **kw) -> stage.Config:
    base = {"models": [str(m["ck"]), str(m["int8"])], "data": str(m["dev"]),
            "batch_sizes": [1, 8], "repeats": 1, "warmup": 1, "latency_examples": 8, "threads": 1,
            "out": str(m["dir"] / "bench.json")}
    return stage.Config(**{**base, **kw})


def _evaluate(capsys, model: Path, data: Path) -> dict:
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(model), "--data", str(data)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_rows_baseline_and_metric_equal_to_evaluate(models, capsys):
    pytest.importorskip("transformers", reason="transformers not installed (extra 'hf')")
    assert cli.main(["bench", "--models", str(models["ck"]), str(models["int8"]), "--data", str(models["dev"]),
                     "--batch-sizes", "1", "8", "--repeats", "1", "--warmup", "1", "--latency-examples", "8",
                     "--threads", "1", "--out", str(models["dir"] / "bench.json")]) == 0
    printed = capsys.readouterr().out
    assert "transformers-fp32-eager" in printed and "speedup" in printed     # progress lines + table
    result = json.loads((models["dir"] / "bench.json").read_text())
    assert result["task"] == "classify" and result["metric_name"] == "accuracy"
    assert result["batch_sizes"] == [1, 8] and result["data"] == str(models["dev"])
    assert "load_avg_before" in result["machine"] and "load_avg_after" in result["machine"]
    rows = result["rows"]
    assert [(r["kind"], r["precision"], r["baseline"]) for r in rows] == [
        ("transformers", "fp32", True), ("torch", "bf16", False), ("onnx", "int8", False)]
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["throughput"] > 0 and r["latency_p95_ms"] >= r["latency_p50_ms"] > 0
        assert r["size_mb"] > 0 and r["peak_rss_mb"] > 50 and r["examples"] == 48
    assert rows[0]["speedup"] == 1.0
    assert rows[1]["speedup"] == pytest.approx(rows[1]["throughput"] / rows[0]["throughput"], rel=1e-2)
    # Same parameters in the HF layout and plmkit's.
    assert rows[0]["params"] == rows[1]["params"] == rows[2]["params"]
    # The metric is plmkit evaluate's, for the checkpoint and for the INT8 directory alike.
    assert rows[1]["metric"] == _evaluate(capsys, models["ck"], models["dev"])["accuracy"]
    assert rows[2]["metric"] == _evaluate(capsys, models["int8"], models["dev"])["accuracy"]
    # transformers in fp32 on the same token ids: the same predictions as plmkit in fp32.
    fp32 = json.loads(_run_evaluate_fp32(capsys, models["ck"], models["dev"]))
    assert rows[0]["metric"] == fp32["accuracy"]


def _run_evaluate_fp32(capsys, model: Path, data: Path) -> str:
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(model), "--data", str(data), "--precision", "fp32"]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_bench_without_baseline_uses_the_first_row(models, capsys):
    stage.run(_cfg(models, models=[str(models["onnx"]), str(models["int8"])], hf_baseline=False,
                   batch_sizes=[4], max_examples=16))
    result = json.loads((models["dir"] / "bench.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["onnx", "int8"]
    assert result["rows"][0]["speedup"] == 1.0 and result["speedup_reference"] == "onnx"
    assert result["rows"][0]["precision"] == "fp32" and result["rows"][0]["examples"] == 16


def test_unit_stats_score_each_example_and_add_up_to_the_metric(models):
    """--unit-stats: each plmkit row also keeps every example's score, replayed from the pass that
    computed the metric; their mean is the metric, and they differ where the models disagree."""
    stage.run(_cfg(models, hf_baseline=False, unit_stats=True))
    rows = json.loads((models["dir"] / "bench.json").read_text())["rows"]
    for r in rows:
        stats = r["unit_stats"]
        assert len(stats) == 48 and {tuple(s) for s in stats} <= {(0.0,), (1.0,)}
        assert sum(s[0] for s in stats) / 48 == pytest.approx(r["metric"])
    assert 0.0 < rows[0]["metric"] < 1.0          # some right, some wrong: the stats are not constant
    stage.run(_cfg(models, hf_baseline=False))
    assert "unit_stats" not in json.loads((models["dir"] / "bench.json").read_text())["rows"][0]


def test_baseline_defaults_to_the_checkpoint_an_onnx_model_came_from(models):
    from plmkit import bench

    variants = [bench.make_variant(str(models["int8"]), "bf16")]
    # int8 -> onnx (fp32 export) -> ck: the nearest PyTorch checkpoint up the lineage.
    assert bench.baseline_source(variants, None) == models["ck"].resolve()


def test_bad_input_is_one_clear_line(models, tmp_path, capsys):
    missing = tmp_path / "nope"
    with pytest.raises(PlmkitError, match=f"{missing}: model directory not found"):
        stage.run(_cfg(models, models=[str(missing)]))
    conll = tmp_path / "ner.txt"
    conll.write_text("EU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nBlackburn I-PER\n")
    with pytest.raises(PlmkitError, match="does not fit the models' task 'classify'") as e:
        stage.run(_cfg(models, data=str(conll)))
    assert "\n" not in str(e.value) and str(conll) in str(e.value)
    with pytest.raises(PlmkitError, match="data file not found"):
        stage.run(_cfg(models, data=str(tmp_path / "none.tsv")))
    with pytest.raises(PlmkitError, match="batch size"):
        stage.run(_cfg(models, batch_sizes=[0]))
    capsys.readouterr()
    assert cli.main(["bench", "--models", str(missing), "--data", str(models["dev"])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model directory not found" in err[0]


def test_models_of_different_tasks_are_refused(models, tmp_path):
    cfg = dataclasses.replace(EncoderConfig(vocab_size=150, hidden_size=32, num_layers=1, num_heads=4,
                                            intermediate_size=64, max_position=64))
    ner = save_checkpoint(PlmModel(cfg, "token", {"num_labels": 3, "labels": ["B-X", "I-X", "O"],
                                                  "finetune_task": "ner"}), tmp_path / "ner")
    with pytest.raises(PlmkitError, match="same task"):
        stage.run(_cfg(models, models=[str(models["ck"]), str(ner)]))


def test_missing_transformers_baseline_is_said_in_the_table_and_the_json(models, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    stage.run(_cfg(models, models=[str(models["int8"])], batch_sizes=[4], max_examples=8))
    out = capsys.readouterr().out
    table_end = out.rindex("int8")
    assert "note: no transformers baseline row: transformers is not installed" in out[table_end:]
    result = json.loads((models["dir"] / "bench.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["int8"]
    assert result["notes"][0] == ("no transformers baseline row: transformers is not installed (pip install "
                                  "'plmkit[hf]'); speedups are relative to the first row")
    assert all(n.startswith("warning: ") for n in result["notes"][1:])     # a busy machine may add warnings


def _row(name: str, spread: float) -> dict:
    return {"name": name, "by_batch": {"1": {"pass_spread": 0.01}, "32": {"pass_spread": spread}}}


def test_trust_warnings_for_a_busy_machine_and_passes_that_disagree():
    from plmkit.bench import trust_warnings

    machine = {"threads": 2, "logical_cpus": 2, "load_avg_before": [0.1, 0.1, 0.1]}
    assert trust_warnings([_row("a", 0.05)], {**machine, "other_cpu_cores": 0.2}, 3) == []
    busy = trust_warnings([_row("a", 0.05)], {**machine, "other_cpu_cores": 1.6}, 3)
    assert busy == ["warning: the machine was busy: other processes kept 1.6 of its 2 CPUs busy while the bench "
                    "timed on 2 threads; timings and speed-ups are not trustworthy (rerun on an idle machine)"]
    # work on the cores the bench leaves free does not slow it down
    assert trust_warnings([_row("a", 0.05)], {**machine, "logical_cpus": 8, "other_cpu_cores": 5.0}, 3) == []
    # without /proc/stat: the load average before timing stands in
    assert "the load average before timing was 1.9 on 2 CPUs" in trust_warnings(
        [_row("a", 0.05)], {**machine, "other_cpu_cores": None, "load_avg_before": [1.9, 1, 1]}, 3)[0]
    noisy = trust_warnings([_row("a", 0.3), _row("b", 0.8)], {**machine, "other_cpu_cores": 0.0}, 3)
    assert noisy == ["warning: the 3 timed passes of the same batches differed by up to 80% (b, batch size 32; "
                     "2 measurement(s) above 25%): timings and speed-ups are not trustworthy (rerun on an idle "
                     "machine, or with more --repeats)"]


def test_bench_on_a_busy_machine_warns_under_the_table_and_in_the_json(models, capsys, monkeypatch):
    from plmkit import bench

    start = bench.cpu_sample()
    assert start is None or bench.other_cores(start) >= 0          # Linux: measured from /proc/stat
    monkeypatch.setattr(bench, "other_cores", lambda start: float(os.cpu_count()))    # every core taken
    stage.run(_cfg(models, models=[str(models["int8"])], hf_baseline=False, batch_sizes=[4], max_examples=8))
    out = capsys.readouterr().out
    assert "warning: the machine was busy: other processes kept" in out[out.rindex("int8"):]
    result = json.loads((models["dir"] / "bench.json").read_text())
    assert result["machine"]["other_cpu_cores"] == os.cpu_count()
    assert any(n.startswith("warning: the machine was busy") for n in result["notes"])
    assert not list(models["dir"].glob(".bench.json.tmp-*"))          # its work folder is gone


# ----------------------------------------------------------------------------- peer rows

FAKE_PEER = '''#!{python}
"""A stand-in for the peers' python: the real peer_worker.py protocol, engines faked with
transformers fp32 (no optimum, no OpenVINO, no download)."""
import shutil, sys
from pathlib import Path
sys.path.insert(0, {bench_dir!r})
import peer_worker as pw

def quantize(spec):
    shutil.copytree(spec["hf"], spec["out"])
    if spec["calibration"]:
        import numpy as np
        with np.load(spec["calibration"]) as z:
            (Path(spec["out"]) / "calibrated.txt").write_text(str(len({{k.split("/")[1] for k in z.files}})))

def load(path, task, threads):
    import transformers
    return transformers.AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()

pw.ENGINES = {{kind: (quantize, load) for kind in pw.ENGINES}}
pw.versions = lambda: {{"fake-peer": "1"}}
sys.exit(pw.main(sys.argv[2:]))
'''


@pytest.fixture
def fake_peer(tmp_path) -> Path:
    import os
    import sys

    from plmkit.bench import peers

    python = tmp_path / "fake-peer-python"
    python.write_text(FAKE_PEER.format(python=sys.executable, bench_dir=str(peers.PEER_WORKER.parent)))
    os.chmod(python, 0o755)
    return python


def test_peer_rows_run_the_peer_protocol_and_are_scored_by_plmkit(models, fake_peer, monkeypatch):
    """Both peer kinds through the real wiring (prepare in the peer's python, pre-encoded batches,
    timing there, logits scored here), with engines that are transformers fp32: so each peer row's
    metric must equal the transformers row's, computed by the plmkit worker on the same ids."""
    pytest.importorskip("transformers", reason="transformers not installed (extra 'hf')")
    from plmkit.bench import peers

    seen = []
    real = peers._task_data.__wrapped__
    monkeypatch.setattr(peers, "_task_data", lambda *a: seen.append(a[2:]) or real(*a))
    stage.run(_cfg(models, models=[str(models["int8"])], baselines="hf,optimum-ort,openvino",
                   peer_python=str(fake_peer), calibration=str(models["train"]), calibration_examples=20))
    result = json.loads((models["dir"] / "bench.json").read_text())
    rows = result["rows"]
    assert [(r["kind"], r["precision"], r["baseline"]) for r in rows] == [
        ("transformers", "fp32", True), ("optimum-ort", "int8", False), ("openvino", "int8", False),
        ("onnx", "int8", False)]
    assert [r["name"] for r in rows[:3]] == ["transformers-fp32-eager (ck)", "optimum-ort-int8 (ck)",
                                             "openvino-int8 (ck)"]
    hf = rows[0]
    for r in rows[1:3]:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["metric"] == hf["metric"] and r["metrics"] == hf["metrics"]
        assert r["params"] == hf["params"] and r["examples"] == hf["examples"] == 48
        assert r["throughput"] > 0 and r["latency_p95_ms"] >= r["latency_p50_ms"] > 0 and r["peak_rss_mb"] > 50
        assert r["by_batch"]["1"]["examples"] == 8 and r["by_batch"]["8"]["examples"] == 48
        assert r["engine"] == {"name": r["kind"], "graph": "optimum-export", "fake-peer": "1"}
        assert r["speedup"] == pytest.approx(r["throughput"] / hf["throughput"], rel=1e-2)
    assert result["machine"]["peers"] == {"python": str(fake_peer), "fake-peer": "1"}
    # only the calibrating peer (OpenVINO) read --calibration, and only its first 20 examples
    assert (str(models["train"]), 20) in seen


def test_peer_rows_without_the_peer_environment_fail_in_one_line(models, monkeypatch, tmp_path):
    from plmkit.bench import peers

    monkeypatch.setattr(peers, "VENV", "no-such-venv")
    with pytest.raises(PlmkitError, match=r"create it with `python benchmarks/peers_env.py`") as e:
        stage.run(_cfg(models, baselines="optimum-ort"))
    assert "\n" not in str(e.value)
    with pytest.raises(PlmkitError, match="--peer-python .*: not found"):
        stage.run(_cfg(models, baselines="openvino", peer_python=str(tmp_path / "python")))
    with pytest.raises(PlmkitError, match="--baselines: unknown tensorrt"):
        stage.run(_cfg(models, baselines="hf,tensorrt"))


def test_real_peer_rows_on_a_tiny_model(models):
    """optimum-onnx and OpenVINO INT8 for real, when the peers' environment exists (benchmarks/peers_env.py)."""
    pytest.importorskip("transformers", reason="transformers not installed (extra 'hf')")
    from plmkit.bench import peers

    try:
        python = peers.find_peer_python(None)
        peers.peer_versions(python)
    except PlmkitError as e:
        pytest.skip(f"no peers' environment: {e}")
    stage.run(_cfg(models, models=[str(models["ck"])], baselines="hf,optimum-ort,openvino",
                   calibration=str(models["train"]), calibration_examples=32))
    rows = json.loads((models["dir"] / "bench.json").read_text())["rows"]
    assert [r["kind"] for r in rows] == ["transformers", "optimum-ort", "openvino", "torch"]
    for r in rows[1:3]:
        assert r["throughput"] > 0 and r["size_mb"] > 0 and r["engine"]["name"] == r["kind"]
        # INT8 on the same ids keeps (nearly) every prediction of the fp32 model
        assert abs(r["metric"] - rows[0]["metric"]) <= 0.05, (r["kind"], r["metric"], rows[0]["metric"])


def test_real_peers_quantize_plmkit_onnx_graph_of_a_pruned_model(models, tmp_path):
    """--peer-input onnx: a model with uneven pruned heads (the HF layout cannot hold it) goes to
    the peers as plmkit's own fp32 ONNX graph; their INT8 keeps (nearly) its predictions."""
    from plmkit.bench import peers

    try:
        peers.peer_versions(peers.find_peer_python(None))
    except PlmkitError as e:
        pytest.skip(f"no peers' environment: {e}")
    pruned = tmp_path / "pruned"
    assert cli.main(["prune", "--model", str(models["ck"]), "--remove-heads", "1", "2", "--remove-ffn", "8", "16",
                     "--importance", "magnitude", "--no-recover", "--out", str(pruned)]) == 0
    stage.run(_cfg(models, models=[str(pruned)], baseline=str(pruned), baselines="optimum-ort,openvino",
                   peer_input="onnx", calibration=str(models["train"]), calibration_examples=32))
    rows = json.loads((models["dir"] / "bench.json").read_text())["rows"]
    assert [r["kind"] for r in rows] == ["optimum-ort", "openvino", "torch"]
    for r in rows[:2]:
        assert r["engine"]["graph"] == "plmkit-onnx" and r["params"] == rows[2]["params"]
        assert r["throughput"] > 0 and abs(r["metric"] - rows[2]["metric"]) <= 0.05, (r["kind"], r["metric"])
