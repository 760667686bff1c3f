"""Every stage on every family: a tiny random HF checkpoint of RoBERTa, XLM-R, DistilBERT, ALBERT,
ELECTRA and ERNIE (tests/family_fixtures.py), as a user brings it, through the CLI:
finetune (classify with all six strategies, ner, qa), distill (logit KD with hidden and attention
terms; a same-family layer student and a BERT-shaped fresh one), prune (heads + FFN,
unstructured), export to ONNX + quantize (dynamic and static), bench, serve, embed, similarity.

The models are random and train a few steps: the assertions are on what each stage must produce
(files, shapes, metrics recorded, numbers that agree with a direct computation), not on quality.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from plmkit import cli
from plmkit.loading import load as load_model
from plmkit.tokenizer import load_tokenizer

from family_fixtures import FAMILIES, make_hf, write_classify, write_conll, write_squad

pytest.importorskip("transformers", reason="transformers not installed (pip install .[hf])")

FAST = ["--batch-size", "16", "--max-length", "40", "--precision", "fp32", "--log-every", "50"]
STEPS = ["--epochs", "1", "--max-steps", "3"]


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models run on one thread


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    sentences = d / "apple.txt"
    sentences.write_text("she ate a apple pie\nthe apple company rose\nalice ate the apple\n")
    texts = d / "texts.txt"
    texts.write_text("the film was good\nalice lives in paris\n")
    return {"train": write_classify(d / "train.tsv", 48, 0), "dev": write_classify(d / "dev.tsv", 16, 1),
            "ner": write_conll(d / "ner.txt", 32, 2), "qa": write_squad(d / "qa.json", 16, 3),
            "sentences": sentences, "texts": texts}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def work(tmp_path_factory, family) -> Path:
    return tmp_path_factory.mktemp(family.replace("-", "_"))


@pytest.fixture(scope="module")
def pretrained(work, family) -> Path:
    """The checkpoint a user starts from: the pre-training model (ELECTRA: the discriminator body)."""
    spec = FAMILIES[family]
    head = spec.pretraining or ("base" if family == "electra" else "mlm")
    return make_hf(family, head, work / "pretrained")


def _run(*argv: str) -> None:
    assert cli.main([*argv]) == 0, argv


def _finetune(model: Path, task: str, train: Path, out: Path, *extra: str) -> Path:
    _run("finetune", "--model", str(model), "--task", task, "--train", str(train), "--out", str(out),
         "--lr", "1e-3", *FAST, *STEPS, *extra)
    return out


def _meta(path: Path) -> dict:
    return json.loads((path / "plmkit.json").read_text())


@pytest.fixture(scope="module")
def classifier(work, pretrained, data) -> Path:
    out = _finetune(pretrained, "classify", data["train"], work / "classify", "--eval", str(data["dev"]))
    assert 0.0 <= _meta(out)["metrics"]["eval"]["accuracy"] <= 1.0
    return out


@pytest.fixture(scope="module")
def ner(work, pretrained, data) -> Path:
    return _finetune(pretrained, "ner", data["ner"], work / "ner")


@pytest.fixture(scope="module")
def qa(work, pretrained, data) -> Path:
    return _finetune(pretrained, "qa", data["qa"], work / "qa", "--doc-stride", "8")


# ---------------------------------------------------------------------------------- finetune

def test_finetune_classify_ner_qa(family, classifier, ner, qa, data, capsys):
    model = load_model(classifier)
    assert model.config.layout == family and model.task == "classify"
    assert load_model(ner).task == "token" and load_model(qa).task == "span"
    for ck, file in ((classifier, data["dev"]), (ner, data["ner"]), (qa, data["qa"])):
        capsys.readouterr()
        _run("evaluate", "--model", str(ck), "--data", str(file), "--precision", "fp32")
        metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert metrics and all(np.isfinite(v) for v in metrics.values() if isinstance(v, float))


@pytest.mark.parametrize("strategy", ["probe", "freeze:1", "adapter", "lora", "bitfit"])
def test_finetune_strategies(family, pretrained, work, data, strategy, capsys):
    out = work / f"strategy_{strategy.replace(':', '')}"
    argv = ["finetune", "--model", str(pretrained), "--task", "classify", "--train", str(data["train"]),
            "--out", str(out), "--strategy", strategy, "--lora-r", "2", "--adapter-size", "4", *FAST, *STEPS]
    if strategy == "freeze:1" and FAMILIES[family].name == "albert":     # one layer's weights, shared by all
        assert cli.main(argv) == 1
        assert "share weights" in capsys.readouterr().err and not out.exists()
        return
    assert cli.main(argv) == 0
    assert _meta(out)["strategy"]["spec"] == strategy
    ids = torch.tensor([load_tokenizer(out).encode("the film was good").ids])
    with torch.no_grad():
        assert load_model(out).eval()(ids).logits.shape == (1, 2)      # adapter checkpoints load on the parent


# ---------------------------------------------------------------------------------- compress

def test_distill_logits_hidden_and_attention(family, classifier, work, data):
    common = ["--task", "classify", "--train", str(data["train"]), "--hidden-weight", "1", "--attention-weight", "1",
              "--batch-size", "16", "--precision", "fp32", *STEPS]
    _run("distill", "--teacher", str(classifier), "--out", str(work / "student"), "--student-layers", "1", *common)
    student = load_model(work / "student")
    assert student.config.num_layers == 1 and student.config.layout == family
    assert _meta(work / "student")["metrics"]["steps"] == 3
    # a fresh BERT-shaped student of another width (hidden terms through a projection)
    _run("distill", "--teacher", str(classifier), "--out", str(work / "bert_student"), "--student-size", "tiny",
         *common[:6], "--attention-weight", "0", *common[8:])
    assert load_model(work / "bert_student").config.layout == "bert"


def test_prune_structured_and_unstructured(family, classifier, work, data, capsys):
    argv = ["prune", "--model", str(classifier), "--train", str(data["train"]), "--heads", "0.5", "--ffn", "0.5",
            "--out", str(work / "pruned"), "--precision", "fp32", "--batch-size", "16", "--max-steps", "2"]
    if load_model(classifier).config.share_layers:                      # ALBERT: refused in one line
        assert cli.main(argv) == 1 and "shared layers" in capsys.readouterr().err
    else:
        _run(*argv)
        pruned = load_model(work / "pruned")
        assert sum(pruned.config.heads) == 4 and sum(pruned.config.ffn) == 64
        assert pruned.num_parameters() < load_model(classifier).num_parameters()
    _run("prune", "--model", str(classifier), "--train", str(data["train"]), "--sparsity", "0.5",
         "--out", str(work / "sparse"), "--precision", "fp32", "--batch-size", "16", "--max-steps", "2")
    assert _meta(work / "sparse")["pruning"]["unstructured"]["overall"] == pytest.approx(0.5, abs=0.01)


def test_onnx_quantize_and_bench(family, classifier, work, data, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra 'onnx')")
    _run("export", "--model", str(classifier), "--format", "onnx", "--out", str(work / "onnx"))
    _run("quantize", "--model", str(work / "onnx"), "--out", str(work / "int8"))
    _run("quantize", "--model", str(classifier), "--out", str(work / "int8_static"), "--method", "static",
         "--calibration", str(data["dev"]), "--calibration-size", "16")
    for d in ("int8", "int8_static"):
        assert _meta(work / d)["precision"] == "int8"
    capsys.readouterr()
    _run("evaluate", "--model", str(work / "int8"), "--data", str(data["dev"]))
    assert "accuracy" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _run("bench", "--models", str(work / "int8"), "--data", str(data["dev"]), "--batch-sizes", "4", "--repeats", "1",
         "--warmup", "1", "--latency-examples", "2", "--threads", "1", "--out", str(work / "bench.json"),
         "--no-hf-baseline")
    rows = json.loads((work / "bench.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == ["int8"] and 0.0 <= rows[0]["metric"] <= 1.0


def test_bench_transformers_baseline_row(family, classifier):
    """The baseline row runs the checkpoint exported back to transformers (in-process here; the
    stage runs the same runner in a subprocess)."""
    from plmkit.bench.runners import HFRunner
    from plmkit.models.checkpoint import export_hf

    model = load_model(classifier).eval()
    export_hf(model, classifier.parent / "hf_baseline", load_tokenizer(classifier))
    runner = HFRunner(str(classifier.parent / "hf_baseline"), "classify")
    enc = load_tokenizer(classifier).encode_batch(["the film was good", "alice lives in paris and rome"])
    T = max(len(e.ids) for e in enc)
    pad = model.config.pad_token_id
    ids = torch.tensor([e.ids + [pad] * (T - len(e.ids)) for e in enc])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (T - len(e.ids)) for e in enc])
    types = torch.tensor([e.type_ids + [0] * (T - len(e.ids)) for e in enc])
    with torch.no_grad():
        assert torch.allclose(runner(ids, mask, types).logits, model(ids, mask, types).logits, atol=1e-5)


# ---------------------------------------------------------------------------------- serve, analysis

def test_serve_every_task(family, classifier, ner, qa):
    pytest.importorskip("fastapi", reason="serve extra not installed (pip install 'plmkit[serve]')")
    from fastapi.testclient import TestClient

    from plmkit.serve.app import Limits, create_app
    from plmkit.serve.backend import ServedModel

    limits = Limits(max_batch=8, max_wait_ms=1.0, max_body_bytes=4096, max_texts=8, max_chars=200, timeout_s=30.0)
    with TestClient(create_app(ServedModel(classifier, precision="fp32"), limits)) as c:
        preds = c.post("/v1/classify", json={"texts": ["the film was good", "a dull plot"]}).json()["predictions"]
        assert [set(p["scores"]) for p in preds] == [{"neg", "pos"}] * 2
        emb = c.post("/v1/embed", json={"texts": ["the film was good"]}).json()
        assert emb["dimensions"] == 32 and len(emb["embeddings"][0]) == 32
    with TestClient(create_app(ServedModel(ner, precision="fp32"), limits)) as c:
        text = "alice lives in new paris"
        pred = c.post("/v1/ner", json={"texts": [text]}).json()["predictions"][0]
        assert len(pred["tags"]) == 5
        assert all(text[e["start"]:e["end"]] == e["text"] for e in pred["entities"])
    with TestClient(create_app(ServedModel(qa, precision="fp32"), limits)) as c:
        context = "the plot was good . bob lives in rome and the film was good ."
        ans = c.post("/v1/qa", json={"question": "where does bob live ?", "context": context}).json()
        assert ans["answer"] == context[ans["start"]:ans["end"]]


def test_embed_and_similarity(family, classifier, work, data):
    _run("embed", "--model", str(classifier), "--input", str(data["texts"]), "--out", str(work / "vec.npy"))
    vec = np.load(work / "vec.npy")
    assert vec.shape == (2, 32) and np.isfinite(vec).all()
    _run("similarity", "--model", str(classifier), "--word", "apple", "--sentences", str(data["sentences"]),
         "--out", str(work / "sim"))
    res = json.loads((work / "sim" / "similarity.json").read_text())
    sims = np.array(res["layers"][str(res["contextual_layer"])])
    assert sims.shape == (3, 3) and np.allclose(np.diag(sims), 1.0)
