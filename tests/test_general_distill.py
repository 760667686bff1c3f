"""General distillation (`plmkit distill --corpus`): the relation loss against a hand computation,
the default student and layer map, a tiny teacher taught to a student whose loss falls, the
output fine-tuned like any checkpoint, an exact resume, and the refusals."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plmkit import cli
from plmkit.compress import distill as D
from plmkit.compress import general as G
from plmkit.compress import prune as P
from plmkit.data import synthetic
from plmkit.errors import PlmkitError
from plmkit.models.checkpoint import load_model, save_checkpoint
from plmkit.models.config import EncoderConfig, GPT_PRESETS, preset
from plmkit.models.model import PlmModel
from plmkit.tokenizer import save_tokenizer, train_tokenizer


def test_relation_kl_by_hand():
    """One relation head, two tokens: softmax(x x^T / sqrt(d)) per row, KL(teacher || student)."""
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    t = torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])

    def rel(x):
        scores = x[0] @ x[0].T / math.sqrt(2)
        return scores.softmax(-1)
    ps, pt = rel(s), rel(t)
    want = (pt * (pt.log() - ps.log())).sum(-1).mean()
    assert torch.allclose(G.relation_kl(s, t, 1, None), want, atol=1e-6)
    assert float(G.relation_kl(t, t, 1, None)) == pytest.approx(0.0, abs=1e-7)
    # a padded key has probability 0 on both sides; the padded query row is left out
    keep = torch.tensor([[True, False]])
    assert float(G.relation_kl(s, t, 1, keep)) == pytest.approx(0.0, abs=1e-7)


def test_relation_kl_compares_different_widths():
    """Relations are T x T whatever the width: a 4-wide student learns from an 8-wide teacher."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 8, generator=g)
    assert float(G.relation_kl(s, t, 2, torch.ones(2, 5, dtype=torch.bool))) > 0


def test_default_student_and_layer_map():
    assert G.default_student_layers(6) == [0, 2, 4]
    assert G.default_student_layers(12) == [0, 2, 4, 6, 8, 10]
    assert G.default_student_layers(3) == [0, 2] and G.default_student_layers(1) == [0]
    # layer k learns what the next chosen teacher layer reads; the last learns the teacher's last
    assert G.layer_map_for([0, 2, 4], 6) == {0: 1, 1: 3, 2: 5}
    assert G.layer_map_for([0, 3, 6, 9], 12) == {0: 2, 1: 5, 2: 8, 3: 11}
    assert G.relation_heads(384, 384, 12) == 12
    assert G.relation_heads(512, 768, 12) == 8       # 12 does not divide 512: the largest common divisor below


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("general")
    corpus = synthetic.write_corpus(r / "corpus.txt", 60)
    # one sentence a line, no blank lines: the most common unlabelled file
    lines = [ln for ln in corpus.read_text().splitlines() if ln.strip()]
    (r / "lines.txt").write_text("\n".join(lines) + "\n")
    tok = train_tokenizer([corpus], kind="wordpiece", vocab_size=300, show_progress=False)
    cfg = EncoderConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=6, num_heads=4,
                        intermediate_size=64, max_position=64, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    teacher = PlmModel(cfg, "mlm")
    with torch.no_grad():          # larger weights: every layer matters, relations are not uniform
        for name, p in teacher.named_parameters():
            if p.dim() == 2 and "embeddings" not in name:
                p.normal_(0.0, 0.2)
    save_checkpoint(teacher, r / "teacher", tokenizer=tok, meta={"stage": "pretrain"})
    synthetic.write_sentiment(r / "train.tsv", 32, seed=1)
    return r


def _distill(root: Path, out: Path, *extra: str) -> int:
    return cli.main(["distill", "--teacher", str(root / "teacher"), "--corpus", str(root / "lines.txt"),
                     "--out", str(out), "--seq-len", "32", "--batch-size", "4", "--precision", "fp32",
                     "--eval-batches", "2", "--log-every", "1", *extra])


def test_student_learns_from_the_teacher_and_fine_tunes(root, capsys):
    out = root / "student"
    assert _distill(root, out, "--max-steps", "12", "--lr", "3e-3", "--eval-every", "12", "--val-fraction", "0.1") == 0
    said = capsys.readouterr().out
    # the default student: every second layer, 3/8 of each FFN (the tiny teacher's FFN is 2x, not 4x)
    assert "teacher layers [0, 2, 4], FFN 64 -> 24 neurons" in said and "its 'mlm' head is not used" in said
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and "eval_loss" not in r]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert {"relation_kl", "hidden_mse"} <= set(records[0])
    student = load_model(out)
    assert (student.task, student.config.num_layers, student.config.hidden_size) == ("base", 3, 32)
    meta = json.loads((out / "plmkit.json").read_text())
    assert meta["distillation"]["general"] and meta["distillation"]["layer_map"] == {"0": 1, "1": 3, "2": 5}
    assert meta["metrics"]["steps"] == 12 and "eval_loss" in json.dumps(records)
    # the output is an ordinary pre-trained checkpoint: finetune takes it
    ft = root / "ft"
    assert cli.main(["finetune", "--model", str(out), "--task", "classify", "--train", str(root / "train.tsv"),
                     "--out", str(ft), "--max-steps", "2", "--batch-size", "8", "--precision", "fp32",
                     "--max-length", "32"]) == 0
    assert load_model(ft).task == "classify"


def test_resume_of_a_general_distillation_is_exact(root, capsys):
    args = ("--max-steps", "6", "--save-every", "3", "--keep-last", "2", "--lr", "2e-3", "--student-layers", "1,4")
    import plmkit.stages.distill as stage
    assert _distill(root, root / "full", *args) == 0

    def crash(*a, **k):
        raise KeyboardInterrupt
    with pytest.MonkeyPatch.context() as m:
        m.setattr(stage, "_write_output", crash)
        assert _distill(root, root / "cut", *args) == 130
    work = root / ".cut.distill"
    shutil.rmtree(work / "checkpoints" / "step-6")                 # as if killed after step 3's save
    assert _distill(root, root / "cut", *args, "--resume") == 0
    assert "resuming from step 3" in capsys.readouterr().out
    a, b = load_file(str(root / "full" / "model.safetensors")), load_file(str(root / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not work.exists()


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("plmkit: error:"), err
    return err[-1]


def test_refusals(root, capsys, tmp_path):
    out = tmp_path / "x"
    assert _distill(root, out, "--max-steps", "1", "--task", "classify", "--train", str(root / "train.tsv")) == 1
    assert "--task, --train belong to task distillation" in _err(capsys)
    assert _distill(root, out, "--max-steps", "1", "--attention-weight", "1") == 1
    assert "--attention-weight" in _err(capsys)
    assert _distill(root, out, "--max-steps", "1", "--hidden-weight", "0", "--relation-weight", "0") == 1
    assert "needs a loss" in _err(capsys)
    # a student with another tokenizer
    other_tok = train_tokenizer([root / "lines.txt"], kind="wordpiece", vocab_size=120, show_progress=False)
    cfg = EncoderConfig(vocab_size=other_tok.get_vocab_size(), hidden_size=16, num_layers=1, num_heads=2,
                        intermediate_size=32, max_position=64)
    save_checkpoint(PlmModel(cfg), tmp_path / "other", tokenizer=other_tok)
    assert _distill(root, out, "--max-steps", "1", "--student-model", str(tmp_path / "other")) == 1
    assert "different tokenizers" in _err(capsys)
    # a decoder teacher
    dec = preset("gpt", "tiny", vocab_size=300)
    save_checkpoint(PlmModel(dec, "clm"), tmp_path / "gpt", tokenizer=other_tok)
    assert cli.main(["distill", "--teacher", str(tmp_path / "gpt"), "--corpus", str(root / "lines.txt"),
                     "--out", str(out), "--max-steps", "1"]) == 1
    assert "distils encoders" in _err(capsys)
    # neither --corpus nor --task/--train
    assert cli.main(["distill", "--teacher", str(root / "teacher"), "--out", str(out)]) == 1
    assert "--corpus" in _err(capsys)
    assert not out.exists()


# ----------------------------------------------------------------------------- --student-ffn

def _tiny_teacher() -> PlmModel:
    cfg = EncoderConfig(vocab_size=50, hidden_size=32, num_layers=6, num_heads=4, intermediate_size=64,
                        max_position=64, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    return PlmModel(cfg)


def test_student_ffn_keeps_the_most_active_neurons():
    teacher = _tiny_teacher()
    student = D.student_from_layers(teacher, [0, 2, 4])
    dead = {0: torch.arange(0, 64, 2), 1: torch.arange(32), 2: torch.arange(32, 64)}   # neurons that add nothing
    with torch.no_grad():
        for i, cols in dead.items():
            student.backbone.layer(i).ffn.fc2.weight[:, cols] = 0.0
    fc1 = [student.backbone.layer(i).ffn.fc1.weight.clone() for i in range(3)]
    scores, tokens = P.activation_importance(student, _batches(), 8)
    assert tokens == 3 * (3 * 10 - 6)             # real tokens of the 3 batches only
    assert all(torch.all(s[dead[i]] == 0) and torch.all(s[_kept(dead[i])] > 0) for i, s in enumerate(scores))
    said = G.prune_student_ffn(student, 0.5, _batches())
    assert said == f"FFN 64 -> 32 neurons per layer (activation importance on {tokens} tokens)"
    assert student.config.ffn == [32, 32, 32]
    for i in range(3):      # the kept neurons are the live ones, in their order
        assert torch.equal(student.backbone.layer(i).ffn.fc1.weight, fc1[i][_kept(dead[i])])


def _kept(dead: torch.Tensor) -> torch.Tensor:
    return torch.tensor([j for j in range(64) if j not in set(dead.tolist())])


def _batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[2, 4:] = 0                               # a padded row: 24 real tokens a batch
    return [{"input_ids": torch.randint(0, 50, (3, 10), generator=g), "attention_mask": mask} for _ in range(3)]


def test_compute_share_by_hand():
    teacher = _tiny_teacher()
    student = D.student_from_layers(teacher, [0, 2, 4])
    G.prune_student_ffn(student, 0.5, _batches())
    # per layer: q, k, v, o 4 * 32 * 32 = 4096, fc1 + fc2 2 * 32 * F; attention products 2 * T * 32
    assert G.compute_share(student, teacher) == pytest.approx(3 * (4096 + 2048) / (6 * (4096 + 4096)))   # 0.375
    assert G.compute_share(student, teacher, 32) == pytest.approx(3 * (6144 + 2048) / (6 * (8192 + 2048)))  # 0.4
    full = D.student_from_layers(teacher, [0, 3])
    assert G.compute_share(full, teacher) == pytest.approx(1 / 3)
    with pytest.raises(PlmkitError, match="fraction of FFN neurons to keep"):
        G.prune_student_ffn(student, 0.0, _batches())


def test_student_ffn_end_to_end_fine_tunes(root, capsys):
    out = root / "student-ffn"
    assert _distill(root, out, "--max-steps", "2", "--student-layers", "0,2,4", "--student-ffn", "0.5") == 0
    said = capsys.readouterr().out
    assert "student: teacher layers [0, 2, 4], FFN 64 -> 32 neurons per layer (activation importance on " in said
    assert "0.375 counting weights alone" in said and "0.400 of the teacher's transformer compute" in said
    student = load_model(out)         # the per-layer FFN sizes round-trip through the checkpoint
    assert student.config.ffn == [32, 32, 32] and student.backbone.layer(1).ffn.fc1.out_features == 32
    meta = json.loads((out / "plmkit.json").read_text())
    assert meta["config"]["student_ffn"] == 0.5 and meta["distillation"]["compute_share"] == 0.4
    assert "FFN 64 -> 32" in meta["distillation"]["student"]["init"]
    assert "student_ffn: 0.5" in (out / "distill.yaml").read_text()
    ft = root / "ft-ffn"
    assert cli.main(["finetune", "--model", str(out), "--task", "classify", "--train", str(root / "train.tsv"),
                     "--out", str(ft), "--max-steps", "2", "--batch-size", "8", "--precision", "fp32",
                     "--max-length", "32"]) == 0
    assert load_model(ft).config.ffn == [32, 32, 32]


def test_student_ffn_refusals(root, capsys, tmp_path):
    out = tmp_path / "x"
    for bad in ("0", "1.5"):
        assert _distill(root, out, "--max-steps", "1", "--student-ffn", bad) == 1
        assert "--student-ffn" in _err(capsys)
    assert _distill(root, out, "--max-steps", "1", "--student-ffn", "0.5", "--student-size", "tiny") == 1
    assert "--student-size makes another student" in _err(capsys)
    assert cli.main(["distill", "--teacher", str(root / "teacher"), "--task", "classify", "--train",
                     str(root / "train.tsv"), "--out", str(out), "--student-layers", "0,3",
                     "--student-ffn", "0.5"]) == 1
    assert "task distillation does not take it" in _err(capsys)
    assert not out.exists()
