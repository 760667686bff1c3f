"""Every worked recipe in recipes/ runs end to end: real stages on slices of ../shared/data, a tiny
random 6-layer BERT (the recipes distil layers 1,3,5) and few steps, all given through --set as a
user would. The demo recipe (plmkit/recipes/demo.yaml) runs end to end in test_demo.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import data_path
from plmkit.cli import main
from plmkit.models.checkpoint import save_checkpoint
from plmkit.models.config import EncoderConfig
from plmkit.models.model import PlmModel
from plmkit.stages.recipe import STAMP
from plmkit.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def _conll_sentences(path: Path, n: int) -> str:
    """The first ``n`` sentences of a CoNLL file (blank-line separated)."""
    blocks = [b for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip() and "-DOCSTART-" not in b]
    return "\n\n".join(blocks[:n]) + "\n"


def _squad_slice(doc: dict, article: int, paragraphs: int, questions: int) -> dict:
    art = doc["data"][article]
    paras = [{**p, "qas": p["qas"][:questions]} for p in art["paragraphs"][:paragraphs]]
    return {"version": doc.get("version", "1.1"), "data": [{"title": art["title"], "paragraphs": paras}]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Small slices of the shared data, and a tiny BERT whose tokenizer was trained on them."""
    d = tmp_path_factory.mktemp("recipe-data")
    sst2 = data_path("sst2", "train.tsv").read_text(encoding="utf-8").splitlines()
    (d / "sst2_train.tsv").write_text("\n".join(sst2[:97]) + "\n", encoding="utf-8")          # header + 96
    (d / "sst2_eval.tsv").write_text("\n".join([sst2[0], *sst2[5000:5032]]) + "\n", encoding="utf-8")
    (d / "conll_train.txt").write_text(_conll_sentences(data_path("conll2003", "train.txt"), 64), encoding="utf-8")
    (d / "conll_eval.txt").write_text(_conll_sentences(data_path("conll2003", "valid.txt"), 32), encoding="utf-8")
    squad = json.loads(data_path("squad", "train-half.json").read_text(encoding="utf-8"))
    (d / "squad_train.json").write_text(json.dumps(_squad_slice(squad, 0, 3, 4)), encoding="utf-8")
    (d / "squad_eval.json").write_text(json.dumps(_squad_slice(squad, 1, 1, 4)), encoding="utf-8")
    shakespeare = data_path("corpus", "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines()
    (d / "shakespeare.txt").write_text("\n".join(shakespeare[:1500]) + "\n", encoding="utf-8")

    text = d / "all_text.txt"
    text.write_text("\n".join(
        [*sst2[:6000], *(d / "conll_train.txt").read_text(encoding="utf-8").split(),
         *(p["context"] for a in squad["data"][:2] for p in a["paragraphs"]),
         *(q["question"] for a in squad["data"][:2] for p in a["paragraphs"] for q in p["qas"])]) + "\n",
        encoding="utf-8")
    tok = train_tokenizer([text], kind="wordpiece", vocab_size=2000, show_progress=False)
    cfg = EncoderConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=6, num_heads=4,
                        intermediate_size=64, max_position=512, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = save_checkpoint(PlmModel(cfg, "mlm"), d / "tiny-bert", tokenizer=tok, meta={"stage": "test"})
    return {"dir": d, "model": model}


def _sets(name: str, inputs: dict[str, Path]) -> list[str]:
    d, model = inputs["dir"], inputs["model"]
    return {
        "sst2_minilm.yaml": [f"model={model}", f"train={d / 'sst2_train.tsv'}", f"eval={d / 'sst2_eval.tsv'}",
                             "epochs=1"],
        "conll_ner.yaml": [f"model={model}", f"train={d / 'conll_train.txt'}", f"eval={d / 'conll_eval.txt'}",
                           "epochs=1"],
        "squad.yaml": [f"model={model}", f"train={d / 'squad_train.json'}", f"eval={d / 'squad_eval.json'}",
                       "epochs=1"],
        "gpt_shakespeare.yaml": [f"corpus={d / 'shakespeare.txt'}", "max_steps=4"],
    }[name]


def test_every_shipped_recipe_has_an_end_to_end_case():
    assert {p.name for p in RECIPES} == {"sst2_minilm.yaml", "conll_ner.yaml", "squad.yaml", "gpt_shakespeare.yaml"}


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_runs_end_to_end(path, inputs, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the recipes quantize through ONNX Runtime (plmkit[onnx])")
    run = tmp_path / "run"
    args = ["run", str(path), "--out", str(run), "--quiet", "--set", *_sets(path.name, inputs)]
    assert main([*args, "--dry-run"]) == 0 and not run.exists()
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err
    stages = [s.get("name") or s["stage"].split()[0] for s in yaml.safe_load(path.read_text())["stages"]]
    for name in stages:
        stamp = json.loads((run / name / STAMP).read_text(encoding="utf-8"))
        assert stamp["name"] == name
    assert (run / "report" / "report.html").stat().st_size > 1000
    if (run / "bench" / "bench.json").is_file():
        rows = json.loads((run / "bench" / "bench.json").read_text(encoding="utf-8"))["rows"]
        benched = yaml.safe_load(path.read_text())["stages"][stages.index("bench")]["config"]["models"]
        assert {r["name"] for r in rows} >= {Path(m).name for m in benched}
    assert "0 not run" in capsys.readouterr().out
