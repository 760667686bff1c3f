"""Knowledge distillation: the loss against hand-computed numbers, students built from teacher
layers, intermediate losses, the teacher logit cache, and plmkit distill end to end."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plmkit import cli
from plmkit.compress import distill as D
from plmkit.config import to_dict
from plmkit.data import synthetic
from plmkit.data.features import collate
from plmkit.errors import PlmkitError
from plmkit.models.checkpoint import load_model, save_checkpoint
from plmkit.models.config import EncoderConfig
from plmkit.models.heads import ModelOutput
from plmkit.models.model import PlmModel
from plmkit.tasks import TASKS, Prep, load_finetuned
from plmkit.tokenizer import pad_id, train_tokenizer

HEAD = {"num_labels": 3, "labels": ["a", "b", "c"]}


def _cfg(layers: int = 2, hidden: int = 32, heads: int = 4, vocab: int = 120) -> EncoderConfig:
    return EncoderConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                         intermediate_size=2 * hidden, max_position=64, hidden_dropout=0.0, attention_dropout=0.0)


def _teacher(cfg: EncoderConfig, task: str = "classify", head: dict | None = None, seed: int = 0) -> PlmModel:
    """A random model with large weights, so every layer matters and the outputs are confident
    and input-dependent (BERT's N(0, 0.02) makes a near-constant, near-uniform random model)."""
    torch.manual_seed(seed)
    model = PlmModel(cfg, task, HEAD if head is None else head)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and not name.startswith("backbone.embeddings."):
                p.normal_(0.0, 0.5 if name.startswith("head.") else 0.25)
    return model.eval()


def _batch(vocab: int = 120, seed: int = 1, B: int = 3, T: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# ----------------------------------------------------------------------------- the loss

S = np.array([[1.0, 2.0, 0.5], [0.1, -1.0, 2.0], [0.3, 0.3, -0.7]])
T_ = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [-1.0, 1.5, 0.2]])
Y = np.array([1, 2, 0])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _seed_formula(s: np.ndarray, t: np.ndarray, y: np.ndarray, temp: float, alpha: float) -> float:
    """alpha * CE + (1 - alpha) * KL(p_t || p_s) * T^2, batch mean, by hand in float64."""
    ce = -np.log(_softmax(s)[np.arange(len(y)), y]).mean()
    ps, pt = _softmax(s / temp), _softmax(t / temp)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(-1).mean()
    return alpha * ce + (1 - alpha) * kl * temp ** 2


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def kd_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temp: float, alpha: float) -> torch.Tensor:
    """The logit loss ``plmkit distill`` trains on: ``DistillModule.logit_loss`` of a student whose
    head gives the logits ``s`` (classify [B, C], token [B, T, C]) against the teacher's ``t``."""
    task = "classify" if s.dim() == 2 else "token"
    model = PlmModel(_cfg(layers=1), task, HEAD)
    module = D.DistillModule(model, model, D.DistillSpec(temperature=temp, alpha=alpha))
    loss, _ = module.logit_loss(ModelOutput(logits=s), ModelOutput(logits=t), {"labels": y})
    assert torch.equal(loss, D.kd_combine(*D.kd_terms(s, t, y, temp), temp, alpha))
    return loss


@pytest.mark.parametrize("temp, alpha", [(2.0, 0.5), (1.0, 0.3), (4.0, 0.9)])
def test_kd_loss_equals_the_seed_formula_by_hand(temp, alpha):
    got = kd_loss(_t(S), _t(T_), torch.tensor(Y), temp, alpha)
    assert float(got) == pytest.approx(_seed_formula(S, T_, Y, temp, alpha), rel=1e-6)


def test_kd_loss_exact_number():
    # alpha 0.5, T 2: CE = 0.5027160, KL(p_t || p_s) at T=2 = 0.0837077 -> 0.5 * CE + 0.5 * 4 * KL
    assert float(kd_loss(_t(S), _t(T_), torch.tensor(Y), 2.0, 0.5)) == pytest.approx(0.4187734, abs=1e-6)


def test_alpha_one_is_plain_cross_entropy():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    y = torch.tensor([0, 3, 1, 2, 2])
    assert torch.equal(kd_loss(s, t, y, 3.0, 1.0), F.cross_entropy(s, y))


def test_temperature_squared_scaling_and_direction():
    for temp in (1.0, 2.0, 5.0):
        soft = float(kd_loss(_t(S), _t(T_), torch.tensor(Y), temp, 0.0))
        ps, pt = _softmax(S / temp), _softmax(T_ / temp)
        kl_teacher_ref = (pt * np.log(pt / ps)).sum(-1).mean()     # KL(p_t || p_s), not KL(p_s || p_t)
        assert soft == pytest.approx(kl_teacher_ref * temp ** 2, rel=1e-6)
        assert soft / temp ** 2 == pytest.approx(float(D.distill_kl(_t(S), _t(T_), temp)), rel=1e-9)
    assert float(kd_loss(_t(T_), _t(T_), torch.tensor(Y), 2.0, 0.0)) == pytest.approx(0.0, abs=1e-12)


def test_token_level_loss_masks_ignored_positions():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    y = torch.tensor([[1, -100, 2, 0, -100], [3, 3, -100, -100, -100]])
    keep = y != -100
    want = kd_loss(s[keep], t[keep], y[keep], 2.0, 0.4)           # rows = the 5 labelled tokens
    assert torch.allclose(kd_loss(s, t, y, 2.0, 0.4), want)
    s2 = s.clone()
    s2[~keep] = 100.0                                                # ignored positions do not count
    assert torch.allclose(kd_loss(s2, t, y, 2.0, 0.4), want)


def test_label_norm_weighs_every_labelled_token_alike():
    """With the batch's ``label_norm`` (the dataset's mean labelled tokens per batch), the CE and KL
    terms are sums over the labelled tokens divided by it, as the task heads' loss: a norm equal to
    this batch's own count gives the per-batch mean, twice that count half of it."""
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    y = torch.tensor([[1, -100, 2, 0, -100], [3, 3, -100, -100, -100]])
    ce, kl = D.kd_terms(s, t, y, 2.0)
    ce_n, kl_n = D.kd_terms(s, t, y, 2.0, torch.tensor(10.0))          # 5 labelled tokens, norm 10
    assert float(ce_n) == pytest.approx(float(F.cross_entropy(s.flatten(0, 1), y.flatten(), ignore_index=-100,
                                                              reduction="sum")) / 10, rel=1e-6)
    assert float(ce_n) == pytest.approx(float(ce) / 2, rel=1e-6) and float(kl_n) == pytest.approx(float(kl) / 2,
                                                                                                   rel=1e-6)
    model = PlmModel(_cfg(layers=1), "token", HEAD)
    module = D.DistillModule(model, model, D.DistillSpec(temperature=2.0, alpha=0.4))
    out_s, out_t = ModelOutput(logits=s), ModelOutput(logits=t)
    mean = module.logit_loss(out_s, out_t, {"labels": y})[0]
    assert torch.allclose(module.logit_loss(out_s, out_t, {"labels": y, "label_norm": torch.tensor(5.0)})[0], mean)
    assert torch.allclose(module.logit_loss(out_s, out_t, {"labels": y, "label_norm": torch.tensor(10.0)})[0],
                          mean / 2)


# ----------------------------------------------------------------------------- students

def test_student_from_layers_copies_exactly_those_weights():
    teacher = _teacher(_cfg(layers=4))
    student = D.student_from_layers(teacher, [0, 2])
    assert student.config.num_layers == 2 and student.head_config == teacher.head_config
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key, value in s_state.items():
        src = key.replace("backbone.layers.1.", "backbone.layers.2.")
        assert torch.equal(value, t_state[src]), key
    assert any(k.startswith("backbone.layers.1.") for k in s_state)
    assert not any(k.startswith("backbone.layers.2.") for k in s_state)


def test_layer_index_beyond_the_teacher_is_one_clear_error():
    with pytest.raises(PlmkitError, match=r"layer 4 is beyond the teacher, which has 4 layers \(0..3\)"):
        D.student_from_layers(_teacher(_cfg(layers=4)), [0, 4])
    with pytest.raises(PlmkitError, match="increasing"):
        D.student_from_layers(_teacher(_cfg(layers=4)), [2, 1])


def test_fresh_students_share_the_teachers_vocabulary(tmp_path):
    teacher = _teacher(_cfg(vocab=90))
    student = D.student_from_preset(teacher, "tiny")
    assert (student.config.vocab_size, student.config.hidden_size, student.config.num_layers) == (90, 128, 2)
    assert student.head_config == teacher.head_config and student.config.max_position == 64
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"vocab_size": 500, "hidden_size": 16, "num_heads": 2}))
    with pytest.raises(PlmkitError, match="vocab_size 500 differs from the teacher's tokenizer"):
        D.student_from_config(teacher, str(bad))
    bad.write_text(json.dumps({"hidden_size": 16, "num_heads": 2, "colour": 1}))
    with pytest.raises(PlmkitError, match="unknown model config keys"):
        D.student_from_config(teacher, str(bad))


def test_layer_maps():
    assert D.uniform_layer_map(3, 6) == {0: 1, 1: 3, 2: 5}
    assert D.uniform_layer_map(4, 12) == {0: 2, 1: 5, 2: 8, 3: 11}
    assert D.uniform_layer_map(2, 2) == {0: 0, 1: 1}
    assert D.parse_layer_map("0:1, 1:3,2:5", 3, 6) == {0: 1, 1: 3, 2: 5}
    for text, msg in [("0:6", "teacher layer 6"), ("3:1", "student layer 3"), ("0-1", "STUDENT:TEACHER"),
                      ("0:1,0:2", "mapped twice")]:
        with pytest.raises(PlmkitError, match=msg):
            D.parse_layer_map(text, 3, 6)


# ----------------------------------------------------------------------------- intermediate losses

def test_hidden_mse_with_projection_when_widths_differ():
    teacher = _teacher(_cfg(hidden=32))
    torch.manual_seed(3)
    student = PlmModel(_cfg(layers=1, hidden=16, heads=2), "classify", HEAD)
    spec = D.DistillSpec(hidden_weight=1.0, embedding_weight=0.5)
    module = D.DistillModule(student, teacher, spec)
    assert module.hidden_proj.in_features == 16 and module.hidden_proj.out_features == 32
    assert module.embedding_proj is not None and spec.layer_map == {0: 1}
    batch = _batch()
    out = module(**batch, labels=torch.tensor([0, 1, 2]))
    s = student(**batch, output_hidden_states=True).hidden_states[1]
    t = teacher(**batch, output_hidden_states=True).hidden_states[2]
    keep = batch["attention_mask"].bool()
    want = ((module.hidden_proj(s) - t) ** 2).mean(-1)[keep].mean()
    assert torch.allclose(out.aux["hidden_mse"], want)
    out.loss.backward()
    assert module.hidden_proj.weight.grad is not None and module.embedding_proj.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters()) and not any(p.requires_grad for p in teacher.parameters())


def test_intermediate_losses_are_zero_when_student_equals_teacher():
    teacher = _teacher(_cfg())
    student = D.student_from_layers(teacher, [0, 1])
    spec = D.DistillSpec(alpha=0.0, hidden_weight=1.0, attention_weight=1.0, embedding_weight=1.0)
    module = D.DistillModule(student, teacher, spec).train()
    assert not teacher.training and student.training
    out = module(**_batch(), labels=torch.tensor([0, 1, 2]))
    for name in ("attention_kl", "hidden_mse", "embedding_mse", "kd_kl"):
        assert float(out.aux[name]) == pytest.approx(0.0, abs=1e-6), name
    assert module.hidden_proj is None


def test_attention_kl_per_head_and_head_averaged():
    teacher = _teacher(_cfg(heads=4))
    torch.manual_seed(5)
    student = PlmModel(_cfg(layers=1, heads=2), "classify", HEAD)     # 2 heads vs 4: head-averaged
    module = D.DistillModule(student, teacher, D.DistillSpec(attention_weight=1.0))
    out = module(**_batch(), labels=torch.zeros(3, dtype=torch.long))
    assert torch.isfinite(out.aux["attention_kl"]) and float(out.aux["attention_kl"]) > 0
    p = torch.tensor([[[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]]])      # [1, 1, 3, 3]
    q = torch.tensor([[[[0.25, 0.75, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]]])
    want = (0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75) + np.log(1 / 0.5)) / 3
    assert float(D.attention_kl(q, p)) == pytest.approx(want, rel=1e-6)
    assert float(D.attention_kl(q, p, mask=torch.tensor([[1, 1, 0]]))) == pytest.approx(want * 3 / 2, rel=1e-6)


# ----------------------------------------------------------------------------- data and the stage

NAMES, CITIES = ["alice", "bob", "carol", "dave"], ["paris", "rome", "oslo", "lima"]


def _write_conll(path: Path, n: int) -> Path:
    rng = random.Random(2)
    blocks = []
    for _ in range(n):
        rows = [f"{rng.choice(NAMES)} B-PER", "visited O", f"{rng.choice(CITIES)} B-LOC", "on O", "sunday O"]
        rng.shuffle(rows)
        blocks.append("\n".join(rows))
    path.write_text("\n\n".join(blocks) + "\n")
    return path


def _write_squad(path: Path, n: int) -> Path:
    rng = random.Random(4)
    paragraphs = []
    for i in range(n):
        name, city = rng.choice(NAMES), rng.choice(CITIES)
        context = f"the film was good . {name} lives in {city} by the river ."
        paragraphs.append({"context": context, "qas": [{"id": f"q{i}", "question": f"where does {name} live ?",
                                                        "answers": [{"text": city,
                                                                     "answer_start": context.index(city)}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Teachers for classify / ner / qa (random, confident heads) with one tokenizer, and data files."""
    r = tmp_path_factory.mktemp("distill")
    corpus = synthetic.write_corpus(r / "corpus.txt", 40)
    with corpus.open("a") as f:
        f.write(" ".join(NAMES + CITIES + ["lives", "where", "does", "live", "?"]) + "\n")
    tok = train_tokenizer([corpus], kind="wordpiece", vocab_size=300)
    files = {"classify": synthetic.write_sentiment(r / "train.tsv", 48, seed=1),
             "ner": _write_conll(r / "ner.txt", 24), "qa": _write_squad(r / "qa.json", 16)}
    synthetic.write_sentiment(r / "eval.tsv", 16, seed=2)
    prep = Prep(max_length=40, doc_stride=16)
    for name, path in files.items():
        task = TASKS[name]
        head = {**task.head_config(task.read(str(path), prep), prep), "finetune_task": name,
                "preprocess": to_dict(prep)}
        model = _teacher(_cfg(vocab=tok.get_vocab_size()), task.head, head)
        save_checkpoint(model, r / f"teacher_{name}", tokenizer=tok, meta={"stage": "finetune"})
    return r


FAST = ["--precision", "fp32", "--batch-size", "8", "--log-every", "5"]


def _distill(root: Path, task: str, out: Path, *extra: str) -> int:
    data = {"classify": "train.tsv", "ner": "ner.txt", "qa": "qa.json"}[task]
    return cli.main(["distill", "--teacher", str(root / f"teacher_{task}"), "--task", task,
                     "--train", str(root / data), "--out", str(out), *FAST, *extra])


def _features(root: Path, task: str) -> tuple[list[dict], object]:
    teacher, spec, prep, tok = load_finetuned(str(root / f"teacher_{task}"))
    data = {"classify": "train.tsv", "ner": "ner.txt", "qa": "qa.json"}[task]
    feats = spec.encode(tok, spec.read(str(root / data), prep), teacher.head_config, prep)
    return feats, tok


def _kl_to_teacher(student: PlmModel, teacher: PlmModel, batch: dict) -> float:
    module = D.DistillModule(student, teacher, D.DistillSpec(temperature=1.0, alpha=0.0)).eval()
    with torch.no_grad():
        return float(module(**batch).aux["kd_kl"])


def test_end_to_end_student_moves_towards_the_teacher(root, capsys):
    out = root / "student"
    assert _distill(root, "classify", out, "--student-layers", "1", "--alpha", "0", "--lr", "3e-3",
                    "--max-steps", "24", "--epochs", "10", "--eval-every", "24", "--eval", str(root / "eval.tsv")) == 0
    assert "student in" in capsys.readouterr().out
    teacher = load_model(root / "teacher_classify").eval()
    student = load_model(out).eval()
    assert student.config.num_layers == 1 and student.head_config == teacher.head_config
    feats, tok = _features(root, "classify")
    batch = collate(feats, pad_id(tok))
    before = _kl_to_teacher(D.student_from_layers(teacher, [1]), teacher, batch)
    after = _kl_to_teacher(student, teacher, batch)
    print(f"KL(teacher || student): {before:.4f} before, {after:.4f} after")
    assert after < 0.5 * before, (before, after)
    meta = json.loads((out / "plmkit.json").read_text())
    assert meta["stage"] == "distill" and meta["parent"] == str((root / "teacher_classify").resolve())
    assert meta["metrics"]["steps"] == 24 and set(meta["metrics"]["teacher"]) >= {"accuracy"}
    assert meta["distillation"]["student"]["init"] == "teacher layers [1]"
    assert (out / "distill.yaml").is_file() and (out / "metrics.jsonl").is_file()
    assert not any(p.name.startswith(".student") for p in root.iterdir())
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(out), "--data", str(root / "eval.tsv"), "--precision", "fp32"]) == 0


@pytest.mark.parametrize("task", ["classify", "ner", "qa"])
def test_teacher_cache_gives_the_live_teacher_loss(root, tmp_path, task):
    teacher = load_model(root / f"teacher_{task}").eval()
    feats, tok = _features(root, task)
    cache = D.TeacherCache.build(teacher, feats, tok, tmp_path / "c" / "logits.f16", batch_size=5, precision="fp32")
    student = D.student_from_layers(teacher, [0])
    live = D.DistillModule(student, teacher, D.DistillSpec(temperature=2.0, alpha=0.3))
    cached = D.DistillModule(student, None, D.DistillSpec(temperature=2.0, alpha=0.3), cache)
    idx = [3, 0, 7, 5]
    batch = {**collate([feats[i] for i in idx], pad_id(tok)), "feature_index": torch.tensor(idx)}
    with torch.no_grad():
        a, b = live(**batch), cached(**batch)
    assert float(a.aux["kd_kl"]) > 1e-4
    assert float(b.loss) == pytest.approx(float(a.loss), rel=1e-3, abs=1e-4)
    assert float(b.aux["kd_kl"]) == pytest.approx(float(a.aux["kd_kl"]), rel=1e-2, abs=1e-4)


@pytest.mark.parametrize("task, extra", [
    ("ner", ["--student-layers", "0", "--cache-teacher"]),
    ("qa", ["--student-layers", "0,1", "--hidden-weight", "1", "--attention-weight", "1", "--embedding-weight",
            "1", "--layer-map", "0:0,1:1"]),
])
def test_stage_runs_for_token_and_span_tasks(root, task, extra):
    out = root / f"student_{task}"
    assert _distill(root, task, out, "--max-steps", "3", *extra) == 0
    student = load_model(out)
    assert student.task == TASKS[task].head
    meta = json.loads((out / "plmkit.json").read_text())["distillation"]
    assert meta["teacher_cache"] == ("--cache-teacher" in extra)


def test_fresh_student_from_a_config_file(root, tmp_path):
    cfg_file = tmp_path / "student.json"
    cfg_file.write_text(json.dumps({"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}))
    out = tmp_path / "fresh"
    assert _distill(root, "classify", out, "--student-config", str(cfg_file), "--max-steps", "2",
                    "--hidden-weight", "1") == 0
    student = load_model(out)
    teacher = load_model(root / "teacher_classify")
    assert student.config.hidden_size == 16 and student.config.vocab_size == teacher.config.vocab_size


@pytest.mark.parametrize("extra, message", [
    ([], "exactly one of --student-layers"),
    (["--student-layers", "0", "--student-size", "tiny"], "exactly one of"),
    (["--student-layers", "0,2"], "layer 2 is beyond the teacher, which has 2 layers"),
    (["--student-layers", "a,b"], "--student-layers: expected"),
    (["--student-layers", "0", "--cache-teacher", "--hidden-weight", "1"], "--cache-teacher"),
    (["--student-layers", "0", "--alpha", "1.5"], "--alpha"),
    (["--student-layers", "0", "--temperature", "0"], "--temperature"),
    (["--student-layers", "0", "--hidden-weight", "0", "--layer-map", "0:1"], "--layer-map pairs layers"),
    (["--student-layers", "0", "--hidden-weight", "1", "--layer-map", "0:5"], "teacher layer 5 does not exist"),
    (["--student-layers", "0", "--task", "ner"], "fine-tuned for 'classify'"),
    (["--student-layers", "0", "--task", "generate", "--cache-teacher"], "vocabulary-sized distribution per token "
                                                                         "for generate"),
    (["--student-config", "missing.json"], "student config not found"),
])
def test_bad_input_is_one_line_exit_1_and_writes_nothing(root, capsys, extra, message):
    out = root / "bad"
    argv = ["distill", "--teacher", str(root / "teacher_classify"), "--task", "classify",
            "--train", str(root / "train.tsv"), "--out", str(out), *extra]
    if "--task" in extra:
        argv = argv[:3] + argv[5:]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("plmkit: error:") and message in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not any(p.name.startswith(".bad") for p in root.iterdir())


def test_interrupted_distillation_resumes(root, monkeypatch, capsys):
    """distill keeps its work directory when stopped, and --resume continues from its checkpoint."""
    import plmkit.stages.distill as stage

    def crash(*args, **kwargs):
        raise KeyboardInterrupt
    out = root / "resumed"
    args = ["--student-layers", "1", "--max-steps", "6", "--save-every", "3"]
    with monkeypatch.context() as m:
        m.setattr(stage, "_write_output", crash)
        assert _distill(root, "classify", out, *args) == 130
    work = root / ".resumed.distill"
    assert not out.exists() and (work / "checkpoints" / "step-6").is_dir()
    capsys.readouterr()
    assert _distill(root, "classify", out, *args) == 1 and "--resume" in capsys.readouterr().err
    assert _distill(root, "classify", out, *args, "--resume") == 0
    assert json.loads((out / "plmkit.json").read_text())["metrics"]["steps"] == 6 and not work.exists()


# ----------------------------------------------------------------------------- the measured defaults per task

@pytest.mark.parametrize("task, extra, weight", [("classify", [], 1.0), ("ner", [], 0.0),
                                                 ("classify", ["--cache-teacher"], 0.0)])
def test_hidden_weight_defaults_to_the_tasks_measured_one(root, tmp_path, task, extra, weight):
    """SST-2 distils with TinyBERT's hidden-state loss, NER with logits only (compress/measured.py);
    the resolved value is what the output records."""
    out = tmp_path / "s"
    assert _distill(root, task, out, "--student-layers", "0", "--max-steps", "1", *extra) == 0
    assert json.loads((out / "plmkit.json").read_text())["distillation"]["hidden_weight"] == weight
    assert f"hidden_weight: {weight}" in (out / "distill.yaml").read_text()


def test_embed_resolves_its_measured_loss_and_lr_and_what_the_user_sets_stays():
    from plmkit.stages import distill as stage
    base = dict(teacher="t", train="x", out="o", student_layers="0")
    got = stage.resolved(stage.Config(task="embed", **base))
    assert (got.alpha, got.vector_loss, got.lr, got.hidden_weight) == (0.0, "cosine", 5e-4, 0.0)
    got = stage.resolved(stage.Config(task="classify", **base))
    assert (got.alpha, got.vector_loss, got.lr, got.hidden_weight) == (0.5, "mse", 1e-4, 1.0)
    got = stage.resolved(stage.Config(task="embed", alpha=0.3, vector_loss="mse", lr=2e-4, **base))
    assert (got.alpha, got.vector_loss, got.lr) == (0.3, "mse", 2e-4)


def test_token_batches_carry_label_norm_and_follow_the_tasks_grouping(root):
    """distill (and prune) form batches as finetune: NER random batches whose every labelled token
    weighs the same (label_norm), classification length buckets without it."""
    from plmkit.stages import distill as stage
    from plmkit.train import task_batches

    feats, tok = _features(root, "ner")
    batches = list(stage._batches(feats, tok, stage.Config(teacher="t", task="ner", train="x", out="o",
                                                           batch_size=8, student_layers="0")))
    labelled = sum(sum(1 for v in f["labels"] if v != -100) for f in feats)
    assert {float(b["label_norm"]) for b in batches} == {labelled / 3}          # 24 sentences, 3 batches
    assert sorted(int(i) for b in batches for i in b["feature_index"]) == list(range(len(feats)))
    cls_feats, _ = _features(root, "classify")
    assert all("label_norm" not in b for b in task_batches(cls_feats, 0, 8, 0, group_by_length=True))


def test_prune_recovery_hidden_weight_defaults_per_task(root, tmp_path):
    """NER's pruning recovery distils logits only: the hidden-state loss cost CoNLL-2003 0.43 F1."""
    out = tmp_path / "p"
    assert cli.main(["prune", "--model", str(root / "teacher_ner"), "--train", str(root / "ner.txt"), "--heads",
                     "0.5", "--distill", "--max-steps", "2", "--out", str(out), *FAST]) == 0
    recovery = json.loads((out / "plmkit.json").read_text())["pruning"]["recovery"]
    assert recovery["distillation"]["hidden_weight"] == 0.0
    assert json.loads((out / "plmkit.json").read_text())["config"]["hidden_weight"] == 0.0
