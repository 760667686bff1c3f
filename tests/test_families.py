"""RoBERTa, XLM-R, DistilBERT, ALBERT, ELECTRA and ERNIE in and out of the HF layout.

Per family, tiny random checkpoints made by transformers itself (tests/family_fixtures.py):
every converted head equals transformers within 1e-4 in fp32 on a padded batch; the export
goes back to transformers with no missing or unexpected weights and equal outputs; the
tokenizer from tokenizer.json encodes as transformers' does and saves so that transformers
reads it back; ONNX equals PyTorch; a pruned model saves, reloads and exports; the
architectures plmkit cannot build are refused in one line that says why.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from plmkit import cli
from plmkit.compress import prune as P
from plmkit.errors import PlmkitError
from plmkit.models.checkpoint import export_hf, load_model, save_checkpoint
from plmkit.tokenizer import load_tokenizer, save_tokenizer, special_ids

from family_fixtures import FAMILIES, hf_tokenizer, make_hf

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install .[hf])")

TEXTS = ["the film was good", "Alice lives in Paris, and the plot was really dull ?", "nice"]
PAIRS = (["where does bob live ?", "nice"], ["bob lives in rome and the film was good", "fine"])
CASES = [(f, h) for f, spec in FAMILIES.items() for h in spec.archs]


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models run on one thread


@pytest.fixture(scope="module")
def toks() -> dict:
    return {f: hf_tokenizer(f) for f in FAMILIES}


def _batch(tok, texts=TEXTS, pairs=None) -> dict[str, torch.Tensor]:
    enc = tok(*(pairs or (texts,)), padding=True, return_tensors="pt")
    assert enc["attention_mask"].min() == 0                       # really padded
    return dict(enc)


# transformers output field(s) -> plmkit's, per plmkit head
OUTPUTS = {"base": [("last_hidden_state", "last_hidden_state")], "mlm": [("logits", "logits")],
           "mlm+nsp": [("prediction_logits", "logits"), ("seq_relationship_logits", "nsp_logits")],
           "mlm+sop": [("prediction_logits", "logits"), ("sop_logits", "nsp_logits")],
           "classify": [("logits", "logits")], "token": [("logits", "logits")],
           "span": [("start_logits", "start_logits"), ("end_logits", "end_logits")]}


def _max_diff(theirs, ours, head: str, mask: torch.Tensor, ours_is_hf: bool = False) -> float:
    worst = 0.0
    for hf_name, our_name in OUTPUTS[head]:
        a, b = getattr(theirs, hf_name), getattr(ours, hf_name if ours_is_hf else our_name)
        assert a.shape == b.shape, (hf_name, a.shape, b.shape)
        if a.dim() >= 2 and a.shape[:2] == mask.shape:            # per token: compare the real ones
            a, b = a[mask.bool()], b[mask.bool()]
        assert a.std() > 1e-3                                     # not a degenerate (constant) output
        worst = max(worst, float((a - b).abs().max()))
    return worst


@pytest.mark.parametrize("family,head", CASES, ids=[f"{f}-{h}" for f, h in CASES])
def test_every_head_matches_transformers_both_ways(tmp_path, toks, family, head):
    tok, arch = toks[family], FAMILIES[family].archs[head]
    src = make_hf(family, head, tmp_path / "hf", tokenizer=tok)
    theirs = getattr(transformers, arch).from_pretrained(src).eval()
    ours = load_model(src).eval()
    assert ours.task == head and ours.config.layout == family
    batch = _batch(tok, pairs=PAIRS if head in ("classify", "mlm+nsp", "mlm+sop") else None)
    with torch.no_grad():
        ref = theirs(**batch)
        assert _max_diff(ref, ours(**batch), head, batch["attention_mask"]) < 1e-4
    export_hf(ours, tmp_path / "back", tokenizer=None)              # and back into transformers
    again, info = getattr(transformers, arch).from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        assert _max_diff(ref, again.eval()(**batch), head, batch["attention_mask"], ours_is_hf=True) < 1e-5


def test_config_choices_per_family(tmp_path, toks):
    """The choices each converter reads (a wrong one would still pass a test that happens to agree)."""
    got = {f: load_model(make_hf(f, "classify", tmp_path / f, tokenizer=toks[f])).config for f in FAMILIES}
    rob = got["roberta"]
    assert (rob.positions, rob.position_offset, rob.max_position, rob.pad_token_id) == ("learned_offset", 2, 64, 1)
    assert rob.type_vocab_size == 1 and rob.cls_head == "tanh" and got["xlm-roberta"].layout == "xlm-roberta"
    db = got["distilbert"]
    assert db.type_vocab_size == 0 and not db.use_pooler and db.cls_head == "relu"
    assert db.input_names == ["input_ids", "attention_mask"]
    alb = got["albert"]
    assert alb.share_layers and alb.embedding_size == 16 and alb.activation == "gelu_new" and alb.use_pooler
    el = got["electra"]
    assert el.embedding_size == 16 and el.cls_head == "gelu" and not el.use_pooler
    assert got["ernie"].task_type_vocab_size == 3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tokenizer_json_encodes_as_transformers_and_saves_back(tmp_path, toks, family):
    tok = toks[family]
    src = make_hf(family, "base", tmp_path / "hf", tokenizer=tok)
    ours = load_tokenizer(src)
    for text in TEXTS:
        assert ours.encode(text).ids == tok(text)["input_ids"]
    for a, b in zip(*PAIRS):                                       # the pair template and its segments
        enc, ref = ours.encode(a, b), tok(a, b, return_token_type_ids=True)
        assert enc.ids == ref["input_ids"] and enc.type_ids == ref["token_type_ids"]
    ids = special_ids(ours)
    for role in ("pad", "cls", "sep", "mask", "unk"):
        assert ids[role] == getattr(tok, f"{role}_token_id"), role
    assert ids["pad"] == load_model(src).config.pad_token_id       # what batches are padded with
    out = tmp_path / "saved"
    out.mkdir()
    save_tokenizer(ours, out)
    back = transformers.AutoTokenizer.from_pretrained(out)
    assert len(back) == len(tok) and back(*PAIRS)["input_ids"] == tok(*PAIRS)["input_ids"]
    for role in ("pad", "cls", "sep", "mask", "unk"):
        assert getattr(back, f"{role}_token") == getattr(tok, f"{role}_token"), role


def test_old_roberta_vocab_and_merges_files(tmp_path, toks):
    """A RoBERTa directory from before tokenizer.json: vocab.json + merges.txt get RoBERTa's template."""
    tok = toks["roberta"]
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    (tmp_path / "vocab.json").write_text(json.dumps(model["vocab"]))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    ours = load_tokenizer(tmp_path)
    assert ours.encode(TEXTS[1]).ids == tok(TEXTS[1])["input_ids"]
    assert ours.encode(PAIRS[0][0], PAIRS[1][0]).ids == tok(PAIRS[0][0], PAIRS[1][0])["input_ids"]
    (tmp_path / "vocab.json").unlink()
    (tmp_path / "spiece.model").write_bytes(b"\x00")
    with pytest.raises(PlmkitError, match="SentencePiece model without tokenizer.json"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cli_export_hf_round_trip_with_tokenizer(tmp_path, toks, family, capsys):
    tok = toks[family]
    src = make_hf(family, "classify", tmp_path / "hf", tokenizer=tok, labels=["neg", "neu", "pos"])
    save_checkpoint(load_model(src), tmp_path / "ours", tokenizer=load_tokenizer(src))
    out = tmp_path / "out"
    assert cli.main(["export", "--model", str(tmp_path / "ours"), "--format", "hf", "--out", str(out)]) == 0
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(theirs).__name__ == FAMILIES[family].archs["classify"] and theirs.config.id2label[2] == "pos"
    back_tok = transformers.AutoTokenizer.from_pretrained(out)
    batch = dict(back_tok(*PAIRS, padding=True, return_tensors="pt"))
    assert batch["input_ids"].tolist() == tok(*PAIRS, padding=True)["input_ids"]
    original = getattr(transformers, FAMILIES[family].archs["classify"]).from_pretrained(src).eval()
    with torch.no_grad():
        assert (theirs(**batch).logits - original(**batch).logits).abs().max() < 1e-5


def _onnx_diff(model, onnx_dir: Path, batch: dict[str, torch.Tensor]) -> float:
    from plmkit.models.onnx_model import load_onnx_dir

    onnx = load_onnx_dir(onnx_dir, threads=1)
    feeds = {k: v for k, v in batch.items() if k in model.config.input_names}
    with torch.no_grad():
        ref = model.eval()(**feeds)
    got = onnx(**feeds)
    return max(float((getattr(got, n) - getattr(ref, n)).abs().max()) for n in onnx.output_names)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnx_and_pruned_model_per_family(tmp_path, toks, family):
    """fp32 ONNX equals PyTorch on a tokenizer-padded batch; a pruned model (heads + FFN; ALBERT's
    shared layer: unstructured) saves, reloads identically and exports to ONNX."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra 'onnx')")
    from plmkit.compress.onnx_export import export_onnx_dir
    from plmkit.compress.quantize import fuse_encoder

    tok = toks[family]
    model = load_model(make_hf(family, "classify", tmp_path / "hf", tokenizer=tok)).eval()
    batch = _batch(tok, pairs=PAIRS)
    export_onnx_dir(model, tmp_path / "onnx", load_tokenizer(tmp_path / "hf"), {"parent": "test"})
    assert _onnx_diff(model, tmp_path / "onnx", batch) < 1e-4
    # INT8's graph fusion finds ORT's attention pattern in every layer, except after an E -> H
    # projection (ALBERT, ELECTRA layer 0: its input is a MatMul, not a LayerNorm; it runs unfused)
    fused = fuse_encoder(tmp_path / "onnx" / "model.onnx", tmp_path / "fused.onnx")
    assert fused["Attention"] == model.config.num_layers - (model.config.embedding_size is not None)
    if model.config.share_layers:
        with pytest.raises(PlmkitError, match="shared layers"):
            P.check_prunable(model, structured=True)
        linears = P.prunable_linears(model)
        P.attach_masks(linears)
        P.update_masks(linears, 0.5, "global")
        P.fold_masks(linears)
        assert P.sparsity_report(model, linears)["overall"] == pytest.approx(0.5, abs=0.01)
    else:
        imp = P.magnitude_importance(model)
        P.prune_heads(model, P.select_keep(imp.heads, P.Removal(per_layer=[1, 2]), 1))
        P.prune_ffn(model, P.select_keep(imp.ffn, P.Removal(per_layer=[16, 32]), 1))
        assert model.config.heads == [3, 2] and model.config.ffn == [48, 32]
        with pytest.raises(PlmkitError, match="per-layer head/FFN sizes"):
            export_hf(model, tmp_path / "hf_pruned", tokenizer=None)
    save_checkpoint(model, tmp_path / "pruned")
    again = load_model(tmp_path / "pruned").eval()
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, model(**batch).logits)
    export_onnx_dir(again, tmp_path / "pruned_onnx", None, {"parent": "test"})
    assert _onnx_diff(again, tmp_path / "pruned_onnx", batch) < 1e-4


def test_distilbert_sinusoidal_positions_load_from_the_weights(tmp_path, toks):
    tok = toks["distilbert"]
    cfg = FAMILIES["distilbert"].config(len(tok))
    cfg.sinusoidal_pos_embds = True
    torch.manual_seed(0)
    theirs = transformers.DistilBertModel(cfg).eval()
    theirs.save_pretrained(tmp_path)
    theirs = transformers.DistilBertModel.from_pretrained(tmp_path).eval()
    batch = _batch(tok)
    with torch.no_grad():
        diff = (load_model(tmp_path).eval()(**batch).last_hidden_state - theirs(**batch).last_hidden_state)
    assert diff[batch["attention_mask"].bool()].abs().max() < 1e-4


@pytest.mark.parametrize("family,layer0", [("roberta", "roberta.encoder.layer.0.attention"),
                                            ("distilbert", "distilbert.transformer.layer.0.attention")])
def test_heads_pruned_in_place_by_older_transformers(tmp_path, toks, family, layer0):
    """transformers < 5 pruned heads in place and listed them in config.json (``pruned_heads``)."""
    from safetensors.torch import load_file, save_file

    src = make_hf(family, "classify", tmp_path / "hf", tokenizer=toks[family])
    full = load_model(src).eval()
    P.prune_heads(full, [torch.tensor([0, 2]), torch.arange(4)])       # drop heads 1 and 3 of layer 0
    state = load_file(str(src / "model.safetensors"))
    rows = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in (0, 2)])  # head_dim 8
    q, k, v, o = (("self.query", "self.key", "self.value", "output.dense") if family == "roberta"
                  else ("q_lin", "k_lin", "v_lin", "out_lin"))
    for name in (q, k, v):
        for kind in ("weight", "bias"):
            state[f"{layer0}.{name}.{kind}"] = state[f"{layer0}.{name}.{kind}"][rows].contiguous()
    state[f"{layer0}.{o}.weight"] = state[f"{layer0}.{o}.weight"][:, rows].contiguous()
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "pruned_heads": {"0": [1, 3]}}))
    old = load_model(src).eval()
    assert old.config.heads == [2, 4]
    batch = _batch(toks[family])
    with torch.no_grad():
        assert (old(**batch).logits - full(**batch).logits).abs().max() < 1e-5


def _write_config(d: Path, **cfg) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


BERTISH = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
REFUSED = [
    (dict(model_type="deberta-v2", architectures=["DebertaV2ForSequenceClassification"]),
     "disentangled relative-position attention"),
    (dict(model_type="deberta", architectures=["DebertaModel"]), "disentangled relative-position attention"),
    (dict(model_type="mobilebert", architectures=["MobileBertModel"]), "bottleneck"),
    (dict(model_type="roberta", architectures=["RobertaModel"], position_embedding_type="relative_key", **BERTISH),
     "position_embedding_type 'relative_key'"),
    (dict(model_type="roberta", architectures=["RobertaForCausalLM"], is_decoder=True, **BERTISH),
     "unsupported architecture 'RobertaForCausalLM'"),
    (dict(model_type="albert", architectures=["AlbertModel"], num_hidden_groups=2, embedding_size=16, **BERTISH),
     "num_hidden_groups=2"),
    (dict(model_type="albert", architectures=["AlbertModel"], embedding_size=32, **BERTISH),
     "embedding_size == hidden_size"),
    (dict(model_type="electra", architectures=["ElectraModel"], is_decoder=True, **BERTISH), "is_decoder"),
    (dict(model_type="albert", architectures=["AlbertModel"], pruned_heads={"0": [1]}, embedding_size=16, **BERTISH),
     "pruned_heads"),
    (dict(model_type="funnel", architectures=["FunnelModel"]), "unsupported model_type 'funnel'"),
]


@pytest.mark.parametrize("cfg,message", REFUSED, ids=[c["architectures"][0] + "-" + m[:12] for c, m in REFUSED])
def test_refused_architectures_and_options_are_one_line(tmp_path, capsys, cfg, message):
    d = _write_config(tmp_path / "m", **cfg)
    assert cli.main(["info", str(d)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(d / "config.json") in err, err
    if cfg["model_type"] in ("deberta", "deberta-v2", "mobilebert", "funnel"):   # lists what does work
        assert "supported HF architectures:" in err and "RobertaForMaskedLM" in err and "AlbertModel" in err
    shutil.rmtree(d)
