"""Pruning: exact equivalence of removing dead units, reload of uneven shapes, importance,
unstructured sparsity counts, the prune stage end to end, and one-line errors."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from plmkit import cli
from plmkit.compress import prune as P
from plmkit.config import to_dict
from plmkit.data import synthetic
from plmkit.errors import PlmkitError
from plmkit.models.checkpoint import load_model, save_checkpoint
from plmkit.models.config import EncoderConfig
from plmkit.models.model import PlmModel
from plmkit.tasks import TASKS, Prep
from plmkit.tokenizer import train_tokenizer

HEAD = {"num_labels": 2, "labels": ["0", "1"]}


def _model(cfg, seed: int = 0) -> PlmModel:
    torch.manual_seed(seed)
    task, head = ("classify", HEAD) if cfg.family == "encoder" else ("clm", {})
    return PlmModel(cfg, task, head).eval()


def _inputs(vocab: int = 120, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(params=["encoder", "decoder"])
def tiny_cfg(request, tiny_encoder_cfg, tiny_decoder_cfg):
    return tiny_encoder_cfg if request.param == "encoder" else tiny_decoder_cfg


@torch.no_grad()
def test_removing_heads_with_zero_output_columns_keeps_outputs(tiny_cfg):
    model = _model(tiny_cfg)
    d = tiny_cfg.head_dim
    layers = P.blocks(model)
    for h in (1, 3):                                  # layer 0: heads 1 and 3 are dead
        layers[0].attn.o.weight[:, h * d:(h + 1) * d] = 0
    layers[1].attn.o.weight.zero_()                   # layer 1: every head is dead -> 0 heads
    x = _inputs()
    before = model(**x).logits
    n_before = model.num_parameters()
    P.prune_heads(model, [torch.tensor([0, 2]), torch.tensor([], dtype=torch.long)])
    assert model.config.heads == [2, 0]
    assert model.num_parameters() < n_before
    torch.testing.assert_close(model(**x).logits, before, atol=1e-6, rtol=0)


@torch.no_grad()
def test_removing_ffn_neurons_with_zero_fc2_columns_keeps_outputs(tiny_cfg):
    model = _model(tiny_cfg)
    layers = P.blocks(model)
    width = layers[0].ffn.fc1.out_features
    dead = torch.arange(0, width, 3)
    layers[0].ffn.fc2.weight[:, dead] = 0
    keep = torch.tensor([j for j in range(width) if j % 3])
    x = _inputs()
    before = model(**x).logits
    P.prune_ffn(model, [keep, torch.arange(width)])
    assert model.config.ffn == [len(keep), width]
    torch.testing.assert_close(model(**x).logits, before, atol=1e-6, rtol=0)


@torch.no_grad()
def test_uneven_pruned_model_saves_and_reloads_identically(tmp_path, tiny_cfg):
    model = _model(tiny_cfg)
    imp = P.magnitude_importance(model)
    heads = P.plan_removal(list(tiny_cfg.heads), "heads", counts=[1, 3])
    ffn = P.plan_removal(list(tiny_cfg.ffn), "ffn", counts=[5, 40])
    P.prune_heads(model, P.select_keep(imp.heads, heads, 1))
    P.prune_ffn(model, P.select_keep(imp.ffn, ffn, 1))
    assert model.config.heads == [3, 1] and model.config.ffn == [tiny_cfg.ffn[0] - 5, tiny_cfg.ffn[1] - 40]
    rebuilt = PlmModel(model.config, model.task, model.head_config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    save_checkpoint(model, tmp_path / "ck")
    loaded = load_model(tmp_path / "ck").eval()
    assert loaded.config.heads == [3, 1]
    x = _inputs()
    assert torch.equal(loaded(**x).logits, model(**x).logits)


def test_gradient_importance_ranks_a_dead_head_last(tiny_encoder_cfg):
    model = _model(tiny_encoder_cfg)
    d = tiny_encoder_cfg.head_dim
    with torch.no_grad():
        P.blocks(model)[0].attn.o.weight[:, 2 * d:3 * d] = 0          # head 2 of layer 0 is dead
        P.blocks(model)[0].attn.o.weight[:, 0:d] *= 20                # head 0 of layer 0 matters a lot
        P.blocks(model)[1].ffn.fc2.weight[:, 7] = 0                   # neuron 7 of layer 1 is dead
    g = torch.Generator().manual_seed(0)
    batches = [{**_inputs(seed=s), "labels": torch.randint(0, 2, (3,), generator=g)} for s in range(4)]
    imp = P.head_importance_gradient(model, batches)
    assert imp.heads[0][2] == 0 and imp.heads[0][0] > imp.heads[0][2]
    assert imp.heads[0][[0, 1, 3]].min() > 0
    assert imp.ffn[1][7] == 0 and imp.ffn[1].max() > 0
    torch.testing.assert_close(imp.heads[0].norm(), torch.tensor(1.0))   # normalised per layer
    keep = P.select_keep(imp.heads, P.Removal(total=1), min_keep=1)
    assert keep[0].tolist() == [0, 1, 3] and keep[1].tolist() == [0, 1, 2, 3]
    assert all(p.requires_grad for p in model.parameters())                # restored


def test_plan_removal_bounds():
    assert P.plan_removal([4, 4], "heads", 0.5).total == 4
    capped = P.plan_removal([4, 2], "heads", 0.75, per_layer=True)
    assert capped.per_layer == [3, 1] and capped.asked == 5                             # capped: keep 1
    assert P.plan_removal([2, 2], "heads", 0.9, min_keep=0).total == 4
    keep = P.select_keep([torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.4])], P.Removal(total=3), min_keep=1)
    assert [k.tolist() for k in keep] == [[1], [1]]                                      # min_keep respected


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_sparsity_is_exact_and_saved(tmp_path, tiny_encoder_cfg, scope):
    model = _model(tiny_encoder_cfg)
    linears = P.prunable_linears(model)
    assert linears and all(n.startswith("backbone.layers.") for n in linears)
    P.attach_masks(linears)
    P.update_masks(linears, 0.7, scope)
    P.fold_masks(linears)
    zeros = {n: int((m.weight == 0).sum()) for n, m in linears.items()}
    sizes = {n: m.weight.numel() for n, m in linears.items()}
    if scope == "layer":
        assert zeros == {n: round(0.7 * s) for n, s in sizes.items()}
    else:
        assert sum(zeros.values()) == round(0.7 * sum(sizes.values()))
    save_checkpoint(model, tmp_path / "ck")
    saved = load_file(str(tmp_path / "ck" / "model.safetensors"))
    assert {n: int((saved[n + ".weight"] == 0).sum()) for n in linears} == zeros
    assert int((saved["backbone.embeddings.word.weight"] == 0).sum()) <= tiny_encoder_cfg.hidden_size  # pad row only
    report = P.sparsity_report(model, linears)
    assert report["overall"] == pytest.approx(0.7, abs=1e-3) and len(report["per_layer"]) == 2


def test_cubic_schedule_rises_to_the_target():
    sched = P.cubic_schedule(0.8, 4, 100)
    steps, values = zip(*sched)
    assert steps[0] == 0 and max(steps) <= 75 and list(steps) == sorted(steps)
    assert list(values) == sorted(values) and values[-1] == pytest.approx(0.8)
    assert P.cubic_schedule(0.5, 0, 10) == [(0, 0.5)]


# ---------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def classify_ckpt(tmp_path_factory):
    """A tiny classify checkpoint with its own WordPiece tokenizer, and train/eval files."""
    root = tmp_path_factory.mktemp("prune")
    corpus = synthetic.write_corpus(root / "corpus.txt", 60)
    train_file = synthetic.write_sentiment(root / "train.tsv", 48, seed=1)
    synthetic.write_sentiment(root / "eval.tsv", 24, seed=2)
    tok = train_tokenizer([corpus], kind="wordpiece", vocab_size=300)
    prep = Prep(max_length=32)
    task = TASKS["classify"]
    head = {**task.head_config(task.read(str(train_file), prep), prep), "finetune_task": "classify",
            "preprocess": to_dict(prep)}
    cfg = EncoderConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=64, max_position=64, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    save_checkpoint(PlmModel(cfg, "classify", head), root / "ck", tokenizer=tok, meta={"stage": "finetune"})
    return root


FAST = ["--precision", "fp32", "--batch-size", "16", "--max-steps", "3"]


def test_stage_structured_end_to_end(classify_ckpt, capsys):
    r = classify_ckpt
    out = r / "pruned"
    argv = ["prune", "--model", str(r / "ck"), "--train", str(r / "train.tsv"), "--eval", str(r / "eval.tsv"),
            "--heads", "0.5", "--ffn", "0.5", "--out", str(out), *FAST]
    assert cli.main(argv) == 0
    pruned, parent = load_model(out), load_model(r / "ck")
    assert sum(pruned.config.heads) == 4 and min(pruned.config.heads) >= 1 and sum(pruned.config.ffn) == 64
    assert pruned.num_parameters() < parent.num_parameters()
    meta = json.loads((out / "plmkit.json").read_text())
    rep = meta["pruning"]
    assert meta["stage"] == "prune" and meta["parent"] == str((r / "ck").resolve())
    assert rep["structured"]["heads_kept"] == pruned.config.heads and rep["recovery"]["steps"] == 3
    assert rep["params_after"] == pruned.num_parameters() < rep["params_before"]
    assert set(rep["metric"]) == {"name", "before", "pruned", "recovered"}
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(out), "--data", str(r / "eval.tsv"), "--precision", "fp32"]) == 0
    assert "accuracy" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_stage_gradual_unstructured(classify_ckpt):
    r = classify_ckpt
    out = r / "sparse"
    argv = ["prune", "--model", str(r / "ck"), "--train", str(r / "train.tsv"), "--sparsity", "0.6",
            "--scope", "layer", "--gradual-steps", "3", "--out", str(out), *FAST[:-1], "6"]
    assert cli.main(argv) == 0
    rep = json.loads((out / "plmkit.json").read_text())["pruning"]["unstructured"]
    assert rep["per_layer"] == [pytest.approx(0.6, abs=1e-3)] * 2 and len(rep["schedule"]) == 3
    saved = load_file(str(out / "model.safetensors"))
    for name, s in rep["matrices"].items():
        w = saved[name + ".weight"]
        assert int((w == 0).sum()) == round(0.6 * w.numel()) and s == pytest.approx(0.6, abs=1e-3)
    assert not any(p.name.startswith(".sparse") for p in r.iterdir())      # work dir removed


@pytest.mark.parametrize("extra, message", [
    (["--heads", "1.0"], "must be in [0, 1)"),
    (["--remove-heads", "5", "0"], "layer 0 has 4 heads, cannot remove 5"),
    (["--remove-heads", "4", "0"], "leaves fewer than --min-heads 1"),
    (["--remove-heads", "1"], "1 counts for a model of 2 layers"),
    (["--sparsity", "1.5"], "--sparsity"),
    ([], "nothing to prune"),
    (["--heads", "0.5", "--no-train"], "give --train FILE"),
    (["--sparsity", "0.5", "--gradual-steps", "2", "--no-recover", "--no-train"], "--gradual-steps"),
])
def test_bad_input_is_one_line_and_writes_nothing(classify_ckpt, capsys, extra, message):
    r = classify_ckpt
    out = r / "bad"
    train = [] if "--no-train" in extra else ["--train", str(r / "train.tsv")]
    extra = [a for a in extra if a != "--no-train"]
    assert cli.main(["prune", "--model", str(r / "ck"), *train, "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("plmkit: error:") and message in err and len(err.splitlines()) == 1
    assert not out.exists() and not any(p.name.startswith(".bad") for p in r.iterdir())


def test_data_free_magnitude_pruning_without_recovery(classify_ckpt):
    r = classify_ckpt
    out = r / "nodata"
    assert cli.main(["prune", "--model", str(r / "ck"), "--remove-heads", "1", "2", "--importance", "magnitude",
                     "--no-recover", "--out", str(out)]) == 0
    assert load_model(out).config.heads == [3, 2]


def test_share_layers_refuses_structured_pruning():
    cfg = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                        max_position=16, share_layers=True)
    with pytest.raises(PlmkitError, match="shared layers"):
        P.check_prunable(PlmModel(cfg, "classify", HEAD), structured=True)


def _recovered(r, name: str, *extra: str) -> dict:
    out = r / name
    assert cli.main(["prune", "--model", str(r / "ck"), "--train", str(r / "train.tsv"), "--heads", "0.5",
                     "--ffn", "0.5", "--seed", "0", "--out", str(out), *FAST, *extra]) == 0
    return load_file(str(out / "model.safetensors"))


def test_recovery_distils_from_the_unpruned_model(classify_ckpt):
    """--distill: labels + the unpruned model's soft targets and hidden states; with the soft
    terms weighted 0 (alpha 1, hidden weight 0) it must train exactly as label-only recovery."""
    r = classify_ckpt
    distilled = _recovered(r, "kd", "--distill")
    rep = json.loads((r / "kd" / "plmkit.json").read_text())["pruning"]["recovery"]
    assert rep["distillation"] == {"teacher": "unpruned model", "temperature": 2.0, "alpha": 0.5,
                                   "hidden_weight": 1.0}
    labels_only = _recovered(r, "labels")                                  # the default
    assert json.loads((r / "labels" / "plmkit.json").read_text())["pruning"]["recovery"]["distillation"] is None
    zero_soft = _recovered(r, "kd0", "--distill", "--alpha", "1", "--hidden-weight", "0")
    assert labels_only.keys() == distilled.keys() == zero_soft.keys()     # the teacher is never saved
    for k in labels_only:
        torch.testing.assert_close(zero_soft[k], labels_only[k])
    assert any(not torch.equal(distilled[k], labels_only[k]) for k in labels_only)


def test_recovery_teacher_must_match(classify_ckpt, capsys, tmp_path):
    r = classify_ckpt
    base = ["prune", "--model", str(r / "ck"), "--train", str(r / "train.tsv"), "--heads", "0.5", *FAST]
    assert cli.main([*base, "--teacher", str(r / "ck"), "--out", str(tmp_path / "a")]) == 1
    assert "--teacher is the recovery's teacher" in capsys.readouterr().err
    assert cli.main([*base, "--teacher", str(r / "ck"), "--distill", "--out", str(tmp_path / "b")]) == 0
    rep = json.loads((tmp_path / "b" / "plmkit.json").read_text())["pruning"]["recovery"]
    assert rep["distillation"]["teacher"] == str(r / "ck")
