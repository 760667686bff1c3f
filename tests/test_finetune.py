"""plmkit finetune / evaluate / predict / merge through the CLI, on tiny seeded models and data."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plmkit.cli import main
from plmkit.loading import describe, load
from plmkit.models.checkpoint import load_model, save_checkpoint
from plmkit.models.config import DecoderConfig, EncoderConfig
from plmkit.models.model import PlmModel
from plmkit.tokenizer import special_ids, train_tokenizer

from conftest import data_path

POS = ["good", "great", "fine", "nice", "superb"]
NEG = ["bad", "awful", "poor", "dull", "boring"]
FILL = ["the", "film", "was", "really", "plot", "story", "quite", "a", "and", "music", "it"]
NAMES, CITIES = ["alice", "bob", "carol", "dave"], ["paris", "rome", "oslo", "lima"]


def _sentence(rng: random.Random, positive: bool) -> str:
    words = rng.sample(FILL, rng.randint(2, 6)) + [rng.choice(POS if positive else NEG)]
    rng.shuffle(words)
    return " ".join(words)


def _write_classify(path: Path, n: int, seed: int, labels=("neg", "pos")) -> Path:
    rng = random.Random(seed)
    rows = ["sentence\tlabel"]
    for _ in range(n):
        y = rng.random() < 0.5
        rows.append(f"{_sentence(rng, y)}\t{labels[int(y)]}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _ner_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    tokens, tags = [], []
    for _ in range(rng.randint(3, 7)):
        r = rng.random()
        if r < 0.2:
            tokens.append(rng.choice(NAMES)), tags.append("B-PER")
        elif r < 0.35:
            tokens += ["new", rng.choice(CITIES)]
            tags += ["B-LOC", "I-LOC"]
        else:
            tokens.append(rng.choice(FILL)), tags.append("O")
    return tokens, tags


def _write_conll(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    blocks = []
    for _ in range(n):
        tokens, tags = _ner_sentence(rng)
        blocks.append("\n".join(f"{t} NN O {g}" for t, g in zip(tokens, tags)))
    path.write_text("-DOCSTART- -X- -X- O\n\n" + "\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def _write_squad(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        name, city = rng.choice(NAMES), rng.choice(CITIES)
        pre = " ".join(rng.sample(FILL, 4))
        context = f"{pre} . {name} lives in {city} and the film was good ."
        paragraphs.append({"context": context, "qas": [
            {"id": f"q{i}", "question": f"where does {name} live ?",
             "answers": [{"text": city, "answer_start": context.index(f"in {city}") + 3}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def _write_generation(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name = rng.choice(NAMES)
        rows.append(json.dumps({"prompt": f"greet {name}", "completion": f"hello {name}"}))
    path.write_text("\n".join(rows) + "\n")
    return path


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models run on one thread


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    out = {"train": _write_classify(d / "train.tsv", 240, 0), "eval": _write_classify(d / "eval.tsv", 60, 1),
           "ner_train": _write_conll(d / "ner_train.txt", 160, 2), "ner_eval": _write_conll(d / "ner_eval.txt", 40, 3),
           "qa_train": _write_squad(d / "qa_train.json", 80, 4), "qa_eval": _write_squad(d / "qa_eval.json", 20, 5),
           "gen": _write_generation(d / "gen.jsonl", 48, 6)}
    rng = random.Random(7)
    pairs = ["sentence1\tsentence2\tlabel"]
    for _ in range(120):
        a, b = rng.random() < 0.5, rng.random() < 0.5
        pairs.append(f"{_sentence(rng, a)}\t{_sentence(rng, b)}\t{'same' if a == b else 'different'}")
    (d / "pairs.tsv").write_text("\n".join(pairs) + "\n")
    out["pairs"] = d / "pairs.tsv"
    return out


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, files) -> Path:
    """A tiny random BERT (hidden 32, 2 layers) with a WordPiece tokenizer trained on the task text."""
    d = tmp_path_factory.mktemp("enc")
    corpus = d / "corpus.txt"
    words = POS + NEG + FILL + NAMES + CITIES + ["new", "lives", "in", "where", "does", "live", "?", "."]
    rng = random.Random(0)
    corpus.write_text("\n".join(" ".join(rng.sample(words, 8)) for _ in range(400)) + "\n")
    tok = train_tokenizer([corpus], kind="wordpiece", vocab_size=120, show_progress=False)
    cfg = EncoderConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=64, max_position=64, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    return save_checkpoint(PlmModel(cfg, "mlm"), d / "model", tokenizer=tok, meta={"stage": "test"})


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory, files) -> Path:
    d = tmp_path_factory.mktemp("dec")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(f"greet {n}\nhello {n}" for n in NAMES * 50) + "\n")
    tok = train_tokenizer([corpus], kind="bpe", vocab_size=300, show_progress=False)
    eos = special_ids(tok)["eos"]
    cfg = DecoderConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                        max_position=64, hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=eos,
                        eos_token_id=eos)
    torch.manual_seed(0)
    return save_checkpoint(PlmModel(cfg, "clm"), d / "model", tokenizer=tok, meta={"stage": "test"})


FAST = ["--lr", "3e-3", "--batch-size", "16", "--max-length", "48", "--log-every", "5"]


def _finetune(model: Path, task: str, train: Path, out: Path, *extra: str) -> None:
    assert main(["finetune", "--model", str(model), "--task", task, "--train", str(train), "--out", str(out),
                 *FAST, *extra]) == 0


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _evaluate(capsys, model: Path, data: Path) -> dict:
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--data", str(data)]) == 0
    return _last_json(capsys)


def _meta(path: Path) -> dict:
    return json.loads((path / "plmkit.json").read_text())


# --- the four tasks end to end ----------------------------------------------------------------

def test_classify_end_to_end_labels_as_names(tmp_path, encoder_dir, files, capsys):
    out = tmp_path / "clf"
    _finetune(encoder_dir, "classify", files["train"], out, "--eval", str(files["eval"]), "--epochs", "6")
    printed = capsys.readouterr().out
    assert "trainable params" in printed and "(100.00%)" in printed
    assert not out.with_name(".clf.train").exists()           # the work directory is cleaned up
    meta = _meta(out)
    assert meta["stage"] == "finetune" and meta["config"]["task"] == "classify"
    head = json.loads((out / "config.json").read_text())["head_config"]
    assert head["labels"] == ["neg", "pos"] and head["preprocess"]["max_length"] == 48
    metrics = _evaluate(capsys, out, files["eval"])
    assert metrics["accuracy"] > 0.8 and 0 < metrics["f1"] <= 1
    assert metrics["accuracy"] == pytest.approx(meta["metrics"]["eval"]["accuracy"])
    inp = tmp_path / "in.tsv"
    inp.write_text("sentence\nthe film was great\nthe plot was awful\n")
    assert main(["predict", "--model", str(out), "--input", str(inp), "--output", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["pos", "neg"] and all(0.5 <= r["score"] <= 1 for r in rows)


def test_long_texts_are_counted_and_windows_pool_their_predictions(tmp_path, encoder_dir, files, capsys):
    """A text longer than --max-length is no longer cut silently: the warning counts them; windows
    (stored in the checkpoint) give one prediction per example, the mean of its windows' logits."""
    rng = random.Random(3)
    rows = ["sentence\tlabel"] + [f"{_sentence(rng, True)}\tpos" for _ in range(4)]
    rows += [" ".join(_sentence(rng, y) for _ in range(12)) + f"\t{'pos' if y else 'neg'}" for y in (True, False, True)]
    long_file = tmp_path / "long.tsv"
    long_file.write_text("\n".join(rows) + "\n")
    capsys.readouterr()
    out = tmp_path / "win"
    _finetune(encoder_dir, "classify", files["train"], out, "--epochs", "1", "--eval", str(long_file))
    err = capsys.readouterr().out
    assert f"warning: 3 of 7 examples in {long_file} are longer than max_length 48" in err and "truncated" in err
    assert "train.tsv are longer" not in err                      # the short training file gets no warning
    _finetune(encoder_dir, "classify", files["train"], out, "--epochs", "1", "--long-text", "windows",
              "--doc-stride", "8", "--overwrite")
    assert json.loads((out / "config.json").read_text())["head_config"]["preprocess"]["long_text"] == "windows"
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--input", str(long_file), "--output", str(tmp_path / "p.jsonl"),
                 "--precision", "fp32"]) == 0
    err = capsys.readouterr().out
    assert "note: 3 of 7 examples" in err and "windows overlapping by 8 tokens" in err
    pred = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(pred) == 7
    # the same pooling by hand: every window through the model, logits averaged per example
    from plmkit.data.features import collate, encode_classification
    from plmkit.data.readers import read_classification
    from plmkit.tasks import load_finetuned

    model, _, prep, tok = load_finetuned(str(out))
    feats = encode_classification(tok, read_classification(str(long_file)), None, 48, "windows", 8)
    with torch.no_grad():
        logits = torch.cat([model(**{k: v for k, v in collate([f], 0).items()}).logits for f in feats])
    ids = torch.tensor([f["example_id"] for f in feats])
    assert ids.tolist().count(6) > 1                               # the long examples have several windows
    for i, row in enumerate(pred):
        mean = logits[ids == i].mean(0).softmax(-1)
        assert row["score"] == pytest.approx(mean.max().item(), abs=1e-5)
        assert row["label"] == ["neg", "pos"][int(mean.argmax())]
    metrics = _evaluate(capsys, out, long_file)
    assert metrics["examples"] == 7 and sum(map(sum, metrics["confusion_matrix"])) == 7
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(long_file), "--long-text", "head-tail"]) == 0
    assert "kept their first and last tokens" in capsys.readouterr().out


def test_classification_pooling_mean_for_plmkit_models_pooler_for_hf_ones(tmp_path, encoder_dir, files, capsys):
    """auto reads the mean of the token states on a plmkit pre-trained model (its unused pooler is
    dropped, and export to transformers, whose BERT classifier reads the pooler, is refused with
    the way out), and the pooler on a Hugging Face model, as AutoModelForSequenceClassification."""
    from plmkit.models.checkpoint import export_hf
    from plmkit.tokenizer import load_tokenizer

    mean = tmp_path / "mean"
    _finetune(encoder_dir, "classify", files["train"], mean, "--epochs", "1")
    assert json.loads((mean / "config.json").read_text())["head_config"]["pooling"] == "mean"
    assert not any(k.startswith("backbone.pooler.") for k in load_file(str(mean / "model.safetensors")))
    capsys.readouterr()
    assert main(["export", "--model", str(mean), "--format", "hf", "--out", str(tmp_path / "hf_mean")]) == 1
    err = capsys.readouterr().err
    assert "reads 'mean' pooling" in err and "--pooling pooler" in err and not (tmp_path / "hf_mean").exists()
    pooler = tmp_path / "pooler"
    _finetune(encoder_dir, "classify", files["train"], pooler, "--epochs", "1", "--pooling", "pooler")
    assert main(["export", "--model", str(pooler), "--format", "hf", "--out", str(tmp_path / "hf_pooler")]) == 0
    hf_dir = export_hf(load_model(encoder_dir), tmp_path / "hf_mlm", load_tokenizer(encoder_dir))
    _finetune(hf_dir, "classify", files["train"], tmp_path / "from_hf", "--epochs", "1")
    assert json.loads((tmp_path / "from_hf" / "config.json").read_text())["head_config"]["pooling"] == "pooler"
    capsys.readouterr()
    assert main(["finetune", "--model", str(encoder_dir), "--task", "ner", "--train", str(files["ner_train"]),
                 "--out", str(tmp_path / "ner"), "--pooling", "mean"]) == 1
    assert "--pooling is for classification" in capsys.readouterr().err and not (tmp_path / "ner").exists()
    # the mean is over real tokens only: padding does not change an example's logits
    model = load_model(mean).eval()
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 7, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[1:, :3], attention_mask=mask[1:, :3]).logits
    assert torch.allclose(batch[1], alone[0], atol=1e-5)


def test_classify_sentence_pairs(tmp_path, encoder_dir, files, capsys):
    out = tmp_path / "pairs"
    capsys.readouterr()
    _finetune(encoder_dir, "classify", files["pairs"], out, "--eval-fraction", "0.2", "--epochs", "1")
    said = capsys.readouterr().out          # the hold-out is never silent: how many, from which file
    assert "--eval-fraction 0.2: " in said and f"of {files['pairs']} are held out" in said, said
    head = json.loads((out / "config.json").read_text())["head_config"]
    assert head["labels"] == ["different", "same"]
    metrics = _evaluate(capsys, out, files["pairs"])
    assert set(metrics) >= {"accuracy", "f1"}
    assert main(["predict", "--model", str(out), "--input", str(files["pairs"]),
                 "--output", str(tmp_path / "p.jsonl")]) == 0
    row = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert row["text_pair"] and row["label"] in ("same", "different")


def test_ner_end_to_end(tmp_path, encoder_dir, files, capsys):
    out = tmp_path / "ner"
    _finetune(encoder_dir, "ner", files["ner_train"], out, "--eval", str(files["ner_eval"]), "--epochs", "8")
    metrics = _evaluate(capsys, out, files["ner_eval"])
    assert set(metrics) >= {"precision", "recall", "f1"} and metrics["f1"] > 0.5
    inp = tmp_path / "in.txt"
    inp.write_text("alice\nlives\nin\nnew\nparis\n")
    assert main(["predict", "--model", str(out), "--input", str(inp), "--output", str(tmp_path / "p.jsonl")]) == 0
    row = json.loads((tmp_path / "p.jsonl").read_text())
    assert row["tokens"] == ["alice", "lives", "in", "new", "paris"] and len(row["tags"]) == 5
    assert all(t in ("O", "B-PER", "B-LOC", "I-LOC") for t in row["tags"])
    assert all({"type", "start", "end", "text"} <= set(e) for e in row["entities"])


def test_qa_end_to_end(tmp_path, encoder_dir, files, capsys):
    out = tmp_path / "qa"
    _finetune(encoder_dir, "qa", files["qa_train"], out, "--eval", str(files["qa_eval"]), "--epochs", "6",
              "--max-length", "24", "--doc-stride", "4")          # contexts need several windows
    metrics = _evaluate(capsys, out, files["qa_eval"])
    assert set(metrics) >= {"exact_match", "f1"} and 0 <= metrics["exact_match"] <= metrics["f1"] <= 100
    assert main(["predict", "--model", str(out), "--input", str(files["qa_eval"]),
                 "--output", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and all(isinstance(r["answer"], str) for r in rows)


def test_generate_on_a_decoder(tmp_path, decoder_dir, files, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(decoder_dir), "--task", "generate", "--data", str(files["gen"]),
                 "--max-new-tokens", "4"]) == 0
    before = _last_json(capsys)
    out = tmp_path / "gen"
    _finetune(decoder_dir, "generate", files["gen"], out, "--eval", str(files["gen"]), "--epochs", "15",
              "--max-new-tokens", "4")
    after = _evaluate(capsys, out, files["gen"])
    assert after["loss"] < before["loss"] - 1.0 and 0 <= after["exact_match"] <= 1
    assert _meta(out)["metrics"]["metric"] == "loss"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "greet bob"}\n')
    assert main(["predict", "--model", str(out), "--input", str(prompts), "--output", str(tmp_path / "p.jsonl"),
                 "--max-new-tokens", "4"]) == 0
    row = json.loads((tmp_path / "p.jsonl").read_text())
    assert row["prompt"] == "greet bob" and isinstance(row["completion"], str)


# --- strategies -------------------------------------------------------------------------------

def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize("strategy,trains", [
    ("probe", lambda n: n.startswith("head.")),
    ("bitfit", lambda n: n.startswith("head.") or n.endswith(".bias")),
    ("lora", lambda n: n.startswith("head.") or ".lora_" in n),
    ("adapter", lambda n: n.startswith("head.") or ".adapter." in n),
])
def test_adapter_strategies_save_only_their_weights(tmp_path, encoder_dir, files, capsys, strategy, trains):
    out = tmp_path / strategy
    _finetune(encoder_dir, "classify", files["train"], out, "--eval", str(files["eval"]), "--epochs", "1",
              "--strategy", strategy, "--lora-r", "4", "--adapter-size", "8")
    meta = _meta(out)
    assert meta["format"] == "plmkit-adapter" and meta["parent"] == str(encoder_dir.resolve())
    assert meta["strategy"]["spec"] == strategy and not (out / "model.safetensors").exists()
    saved = load_file(str(out / "adapter.safetensors"))
    assert saved and all(trains(n) for n in saved)
    parent = _params(load_model(encoder_dir, task="classify", head_config={"num_labels": 2}))
    changed = [n for n, v in saved.items() if n in parent and not torch.equal(v, parent[n])]
    assert strategy in ("lora", "adapter") or changed                  # trainable parent weights moved
    loaded = load(out)                                                 # parent + adapter (plmkit.loading)
    assert describe(out)["format"] == f"plmkit adapter ({strategy})"
    for name, p in _params(loaded).items():
        base = name.replace(".base_layer", "")
        if not trains(name) and base in parent:
            assert torch.equal(p, parent[base]), name                  # frozen: bit-identical to the parent
    metrics = _evaluate(capsys, out, files["eval"])                    # round trip through evaluate
    assert metrics["accuracy"] == pytest.approx(meta["metrics"]["eval"]["accuracy"])


def test_each_strategy_trains_at_its_own_default_lr(tmp_path, encoder_dir, files, capsys):
    """Without --lr a run uses its strategy's measured rate (shown in --help) and records it."""
    from plmkit.adapters.strategies import STRATEGIES

    assert len({s.lr for s in STRATEGIES.values()}) > 1             # not one rate for all
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(f"{name} {s.lr:g}" in shown for name, s in STRATEGIES.items())
    for spec in ("probe", "freeze:1"):
        out = tmp_path / spec.replace(":", "")
        assert main(["finetune", "--model", str(encoder_dir), "--task", "classify", "--train", str(files["train"]),
                     "--out", str(out), "--strategy", spec, "--max-steps", "2", "--max-length", "48",
                     "--batch-size", "32"]) == 0
        assert _meta(out)["config"]["lr"] == STRATEGIES[spec.partition(":")[0]].lr      # at batch 32: as declared
    assert main(["finetune", "--model", str(encoder_dir), "--task", "classify", "--train", str(files["train"]),
                 "--out", str(tmp_path / "small"), "--strategy", "probe", "--max-steps", "2", "--max-length", "48"]) == 0
    resolved = _meta(tmp_path / "small")["config"]             # 240 examples: batch 8, its lr scaled to it
    assert (resolved["batch_size"], resolved["epochs"]) == (8, 5)
    assert resolved["lr"] == pytest.approx(STRATEGIES["probe"].lr * 0.5)
    assert main(["finetune", "--model", str(encoder_dir), "--task", "classify", "--train", str(files["train"]),
                 "--out", str(tmp_path / "given"), "--strategy", "probe", "--lr", "0.5", "--max-steps", "2",
                 "--max-length", "48"]) == 0
    assert _meta(tmp_path / "given")["config"]["lr"] == 0.5


def test_full_and_freeze_keep_frozen_weights_bit_identical(tmp_path, encoder_dir, files):
    parent = load_file(str(encoder_dir / "model.safetensors"))
    for strategy, frozen in (("full", ()), ("freeze:1", ("backbone.embeddings.", "backbone.layers.0."))):
        out = tmp_path / strategy.replace(":", "")
        _finetune(encoder_dir, "classify", files["train"], out, "--epochs", "1", "--strategy", strategy)
        saved = load_file(str(out / "model.safetensors"))
        for name, value in saved.items():
            if name.startswith("head."):
                continue
            same = torch.equal(value, parent[name])
            assert same == name.startswith(frozen) or (same and "position" in name), (strategy, name)


def test_lora_merge_gives_the_same_logits(tmp_path, encoder_dir, files):
    ids = torch.randint(5, 100, (3, 11), generator=torch.Generator().manual_seed(0))
    for strategy in ("lora", "adapter"):
        out = tmp_path / strategy
        _finetune(encoder_dir, "classify", files["train"], out, "--epochs", "1", "--strategy", strategy,
                  "--lr", "2e-2", "--lora-dropout", "0")
        assert main(["merge", "--model", str(out), "--out", str(tmp_path / f"{strategy}-merged")]) == 0
        merged = load(tmp_path / f"{strategy}-merged").eval()
        names = {n for n, _ in merged.named_parameters()}
        assert not any(".lora_" in n for n in names)
        assert any(".adapter." in n for n in names) == (strategy == "adapter")   # Houlsby kept as modules
        with torch.no_grad():
            expected = load(out).eval()(ids).logits
            assert torch.allclose(merged(ids).logits, expected, atol=1e-5)
            assert not torch.allclose(expected, load_model(encoder_dir, task="classify",
                                                           head_config={"num_labels": 2})(ids).logits)


def test_best_checkpoint_is_kept(tmp_path, encoder_dir, files, capsys):
    out = tmp_path / "best"
    _finetune(encoder_dir, "classify", files["train"], out, "--eval", str(files["eval"]), "--epochs", "3",
              "--eval-every", "3", "--lr", "3e-2")
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval_accuracy" in r]
    best = max(evals, key=lambda r: r["eval_accuracy"])                # the first of equal bests wins
    meta = _meta(out)["metrics"]
    assert meta["best_step"] == best["step"] and meta["eval"]["accuracy"] == best["eval_accuracy"]
    assert _evaluate(capsys, out, files["eval"])["accuracy"] == pytest.approx(best["eval_accuracy"])


def test_adapter_checkpoint_without_its_parent_is_a_clear_error(tmp_path, encoder_dir, files, capsys):
    out = tmp_path / "probe"
    _finetune(encoder_dir, "classify", files["train"], out, "--epochs", "1", "--strategy", "probe")
    meta = _meta(out)
    meta["parent"] = str(tmp_path / "gone")
    (out / "plmkit.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(files["eval"])]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "parent model" in err and "gone" in err


def test_interrupted_run_resumes(tmp_path, encoder_dir, files, monkeypatch, capsys):
    import plmkit.stages.finetune as ft

    def crash(*args, **kwargs):
        raise KeyboardInterrupt
    out = tmp_path / "run"
    args = ["finetune", "--model", str(encoder_dir), "--task", "classify", "--train", str(files["train"]),
            "--out", str(out), *FAST, "--max-steps", "6", "--save-every", "3"]
    with monkeypatch.context() as m:
        m.setattr(ft, "_write_output", crash)
        assert main(args) == 130
    work = tmp_path / ".run.train"
    assert not out.exists() and (work / "checkpoints" / "step-6").is_dir()
    assert main(args) == 1 and "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert _meta(out)["metrics"]["steps"] == 6 and not work.exists()


def test_same_command_same_seed_same_run(tmp_path, encoder_dir, files):
    """The fresh head is initialised from --seed (torch's own start-up seed differs per process)."""
    def losses(out: Path) -> list[tuple]:
        _finetune(encoder_dir, "classify", files["train"], out, "--max-steps", "4", "--log-every", "1")
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["lr"], r.get("grad_norm")) for r in records]

    torch.manual_seed(1)
    first = losses(tmp_path / "a")
    torch.manual_seed(2)                     # whatever state the process is in
    assert losses(tmp_path / "b") == first and len(first) == 4
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- bad input: one line, exit 1, nothing written ---------------------------------------------

def _bad(tmp_path: Path, name: str, content: str) -> Path:
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    return p


def test_bad_inputs_fail_cleanly(tmp_path, encoder_dir, files, capsys):
    good = str(files["train"])
    cases = [
        (["--task", "classify", "--train", good, "--label-column", "stars"], "column 'stars' not found"),
        (["--task", "classify", "--train", good,
          "--eval", str(_bad(tmp_path, "ev.tsv", "sentence\tlabel\nok film\tneutral\n"))], "unknown label 'neutral'"),
        (["--task", "classify", "--train", str(_bad(tmp_path, "mal.tsv", "sentence\tlabel\na\tpos\nb\tneg\textra\n"))],
         "mal.tsv:3"),
        (["--task", "qa", "--train", str(_bad(tmp_path, "qa.json", json.dumps({"data": [{"paragraphs": [
            {"context": "alice lives in paris", "qas": [{"id": "x7", "question": "where?",
                                                         "answers": [{"text": "paris", "answer_start": 3}]}]}]}]})))],
         "question x7"),
        (["--task", "ner", "--train", str(_bad(tmp_path, "n.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n'))],
         "n.jsonl:1: 2 tokens but 1 tags"),
        (["--task", "classify", "--train", str(_bad(tmp_path, "empty.tsv", "\n"))], "file is empty"),
        (["--task", "ner", "--train", str(_bad(tmp_path, "pos.txt", POS_CONLL))],
         "pos.txt:1: tag 'NNP' is not an entity tag: NER expects IOB / IOB2 / BIOES tags (O, B-TYPE, I-TYPE, "
         "E-TYPE, S-TYPE), and the tags here (4: JJ, NN, NNP, VBZ) are not; is the last column the NER tag? "
         "--label-scheme none trains on these tags as they are"),
        (["--task", "classify", "--train", good, "--label-scheme", "none"], "--label-scheme none is an ner option"),
        (["--task", "generate", "--train", str(files["gen"])],
         f"{encoder_dir}: --task generate needs a decoder (causal LM: GPT-2, Llama, ...); this model is an encoder"),
    ]
    for args, expected in cases:
        out = tmp_path / "out"
        capsys.readouterr()
        assert main(["finetune", "--model", str(encoder_dir), "--out", str(out), *args]) == 1, expected
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("plmkit: error:") and expected in err, err
        assert not out.exists() and not (tmp_path / ".out.train").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    assert main(["finetune", "--model", str(encoder_dir), "--task", "classify", "--train", good,
                 "--out", str(existing)]) == 1
    assert "--overwrite" in capsys.readouterr().err and (existing / "keep.txt").is_file()


POS_CONLL = "EU NNP\nrejects VBZ\nGerman JJ\ncall NN\n\nPeter NNP\nBlackburn NNP\n"    # POS tags, not NER


def test_label_scheme_none_trains_on_tags_that_are_not_entities(tmp_path, encoder_dir, capsys):
    """What the check refuses by default, the flag allows: a tagger of POS tags is a token classifier too."""
    train = tmp_path / "pos.txt"
    train.write_text(POS_CONLL)
    out = tmp_path / "pos"
    _finetune(encoder_dir, "ner", train, out, "--label-scheme", "none", "--max-steps", "2")
    labels = json.loads((out / "config.json").read_text())["head_config"]["labels"]
    assert labels == ["JJ", "NN", "NNP", "VBZ"]


def test_task_the_decoder_cannot_do_and_unwritable_out_are_said_first(tmp_path, decoder_dir, files, capsys):
    """In the user's words, naming what they gave, before the data is read or the model loaded."""
    assert main(["finetune", "--model", str(decoder_dir), "--task", "ner", "--train", str(files["ner_train"]),
                 "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{decoder_dir}: --task ner needs an encoder (BERT-style); this model is a decoder" in err, err
    assert main(["finetune", "--model", str(decoder_dir), "--task", "generate", "--train", str(files["gen"]),
                 "--out", "/proc/plmkit-x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("plmkit: error: /proc/plmkit-x: cannot write") and ".train" not in err, err


# --- real data --------------------------------------------------------------------------------

def test_minilm_learns_sst2(tmp_path, minilm_dir, capsys):
    sst2 = data_path("sst2", "train.tsv")
    lines = sst2.read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(lines[:257]) + "\n")
    (tmp_path / "held.tsv").write_text("\n".join([lines[0], *lines[60001:60201]]) + "\n")
    args = ["finetune", "--model", str(minilm_dir), "--task", "classify", "--train", str(tmp_path / "train.tsv"),
            "--out", str(tmp_path / "m"), "--epochs", "2", "--lr", "2e-4", "--batch-size", "16",
            "--max-length", "32", "--log-every", "4"]
    assert main(args) == 0
    metrics = _evaluate(capsys, tmp_path / "m", tmp_path / "held.tsv")
    assert metrics["accuracy"] > 0.7                # majority class of this slice: 0.565


def test_chinese_text_with_a_trained_wordpiece(tmp_path, capsys):
    src = data_path("chnsenticorp", "train.tsv")
    lines = src.read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(lines[:161]) + "\n", encoding="utf-8")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(line.split("\t")[0] for line in lines[1:400]) + "\n", encoding="utf-8")
    tok = train_tokenizer([corpus], kind="wordpiece", vocab_size=2000, show_progress=False)
    cfg = EncoderConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=64, max_position=64)
    model_dir = save_checkpoint(PlmModel(cfg, "mlm"), tmp_path / "zh", tokenizer=tok)
    _finetune(model_dir, "classify", tmp_path / "train.tsv", tmp_path / "out", "--epochs", "1",
              "--eval-fraction", "0.2")
    assert main(["predict", "--model", str(tmp_path / "out"), "--input", str(tmp_path / "train.tsv"),
                 "--output", str(tmp_path / "p.jsonl")]) == 0
    row = json.loads((tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert row["label"] in ("negative", "positive") and any("\u4e00" <= c <= "\u9fff" for c in row["text"])


def test_group_by_length_off_gives_random_batches_with_the_same_token_weighting(encoder_dir):
    """Length buckets (the default) hold one length per batch here; --no-group-by-length mixes
    lengths, as the Trainer's random batches do; both carry the same dataset-wide label_norm."""
    from types import SimpleNamespace

    from plmkit.stages.finetune import _batches
    from plmkit.tokenizer import load_tokenizer

    feats = [{"input_ids": [5] * n, "attention_mask": [1] * n, "labels": [0] * n}
             for n in range(2, 66) for _ in range(4)]          # 64 lengths x 4
    tok = load_tokenizer(encoder_dir)
    spans, norms = {}, {}
    for group in (True, False):
        cfg = SimpleNamespace(task="classify", batch_size=4, seed=0, group_by_length=group)
        batches = list(_batches(feats, tok, cfg))
        lengths = [b["attention_mask"].sum(1) for b in batches]
        spans[group] = sum(int(x.max() - x.min()) for x in lengths) / len(lengths)
        norms[group] = {float(b["label_norm"]) for b in batches}
    assert spans[True] == 0 and spans[False] > 10
    assert norms[True] == norms[False] == {sum(range(2, 66)) * 4 / 64}
    # unset: the task decides (ner trains on random batches, the others on length buckets)
    for task, span in (("classify", 0), ("ner", spans[False])):
        cfg = SimpleNamespace(task=task, batch_size=4, seed=0, group_by_length=None)
        lengths = [b["attention_mask"].sum(1) for b in _batches(feats, tok, cfg)]
        assert sum(int(x.max() - x.min()) for x in lengths) / len(lengths) == span
