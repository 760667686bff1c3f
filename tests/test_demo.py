"""plmkit demo: the shipped recipe end to end on real (tiny) stages, then a re-run that skips all."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from plmkit.cli import main
from plmkit.stages.demo import without_stage
from plmkit.stages.recipe import STAMP

TINY = ["--pretrain-steps", "20", "--finetune-epochs", "0.5", "--n-docs", "300", "--n-train", "256",
        "--n-eval", "96"]


def test_without_stage_drops_the_stage_and_references():
    recipe = {"stages": [{"name": "quantize", "stage": "quantize", "config": {}},
                         {"name": "bench", "stage": "bench",
                          "config": {"models": ["${run}/prune", "${run}/quantize"], "data": "x"}}]}
    assert without_stage(recipe, "quantize")["stages"] == [
        {"name": "bench", "stage": "bench", "config": {"models": ["${run}/prune"], "data": "x"}}]


def test_demo_shows_pretraining_progress_on_the_terminal(tmp_path, capsys, monkeypatch):
    """The demo runs its stages quietly (output in the logs): the terminal still gets the log's name,
    progress lines with step, loss and ETA while pre-training runs, and the time it took. The
    shipped recipe up to pre-training, at the tiny settings; a line per step instead of per 30 s."""
    from importlib import resources

    import yaml

    from plmkit.stages import recipe as R

    path = Path(str(resources.files("plmkit").joinpath("recipes/demo.yaml")))
    demo = yaml.safe_load(path.read_text(encoding="utf-8"))
    demo["stages"] = demo["stages"][:3]
    assert [s["name"] for s in demo["stages"]] == ["data", "tokenizer", "pretrain"]
    monkeypatch.setattr(R, "STATUS_EVERY", 0.0)
    R.execute(demo, path, tmp_path / "demo", {"pretrain_steps": 20, "n_docs": 300, "n_train": 256, "n_eval": 96},
              quiet=True)
    out = capsys.readouterr().out
    log = tmp_path.resolve() / "demo" / ".recipe" / "logs" / "pretrain.log"
    stage = out[out.index(f"- pretrain (pretrain) ... output: {log}\n"):]
    lines = stage.splitlines()
    first = r"  pretrain: step 1/20 \(5%\) \| loss \d+\.\d{4} \| [\d,]+ tokens/s \| ETA [\dhms]+"     # 7m26s
    assert re.fullmatch(first, lines[1]), lines
    assert lines[20].startswith("  pretrain: step 20/20 (100%)"), lines
    assert re.fullmatch(r"  pretrain done in [\dhms]+ \(\d+ CPU-s\)", lines[21]), lines
    assert "pre-training bert-tiny" in log.read_text() and "pre-training bert-tiny" not in out


@pytest.mark.slow
def test_demo_end_to_end_then_skips(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "model variants on the held-out generated sentences:" in text
    assert "pre-trained" in text and "from scratch" in text
    assert f"report: {out.resolve() / 'report' / 'report.html'}" in text
    bench = json.loads((out / "bench" / "bench.json").read_text())
    names = {r["name"] for r in bench["rows"]}
    assert {"finetune", "finetune_scratch", "distill", "prune"} <= names
    if importlib.util.find_spec("onnxruntime"):
        assert "quantize" in names
    html = (out / "report" / "report.html").read_text(encoding="utf-8")
    for part in ("Pre-trained vs from scratch", "finetune: confusion matrix", "Attention heads per layer",
                 'data-chart="scatter"'):
        assert part in html
    assert all((out / s / STAMP).is_file() for s in ("data", "tokenizer", "pretrain", "finetune", "report"))

    assert main(["demo", "--out", str(out), *TINY]) == 0       # nothing changed: every stage skipped
    text = capsys.readouterr().out
    assert "0 stage(s) ran" in text and "model variants" in text


def test_demo_table_says_why_the_transformers_row_is_missing(tmp_path, capsys):
    """The demo runs its stages quietly: a missing baseline row must be explained in its own table."""
    from plmkit.stages.demo import print_results

    row = {"name": "finetune", "params": 1e6, "size_mb": 4.0, "latency_p50_ms": 1.0, "throughput": 100.0,
           "speedup": 1.0, "metric": 0.9}
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench.json").write_text(json.dumps({
        "metric_name": "accuracy", "batch_sizes": [1, 32], "rows": [row],
        "notes": ["no transformers baseline row: transformers is not installed (pip install 'plmkit[hf]')"]}))
    print_results(tmp_path, 60.0)
    out = capsys.readouterr().out
    assert "finetune" in out and "(no transformers baseline row: transformers is not installed" in out
    assert out.index("transformers is not installed") < out.index("demo finished")
