"""plmkit embed / similarity / landscape: checked against direct forward passes of tiny seeded models."""
from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plmkit.analysis import landscape as LS
from plmkit.analysis.embed import embed_texts
from plmkit.analysis.similarity import DEFAULT_SENTENCES, Sentence, read_sentences, similarity_result
from plmkit.cli import main
from plmkit.data.features import collate, configured
from plmkit.errors import PlmkitError
from plmkit.models.checkpoint import load_model, save_checkpoint
from plmkit.models.config import EncoderConfig
from plmkit.models.model import PlmModel
from plmkit.tasks import load_finetuned
from plmkit.tokenizer import load_tokenizer, pad_id, train_tokenizer

WORDS = ["the", "a", "red", "apple", "pie", "tree", "fruit", "ate", "company", "phone", "shares", "rose",
         "new", "sold", "good", "bad", "film", "was", "it", "i", "she", "he", "and", "of", "in", "."]
RARE = "grapefruit"     # not in the tokenizer's corpus: it splits into several word pieces


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models run on one thread


def _encoder(d: Path, task: str = "base", head_config: dict | None = None) -> Path:
    """A tiny random BERT (hidden 32, 2 layers) with a WordPiece tokenizer trained on WORDS."""
    corpus = d / "corpus.txt"
    rng = random.Random(0)
    corpus.write_text("\n".join(" ".join(rng.sample(WORDS, 8)) for _ in range(300)) + "\n")
    tok = train_tokenizer([corpus], kind="wordpiece", vocab_size=120, show_progress=False)
    cfg = EncoderConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=64, max_position=64, hidden_dropout=0.1, attention_dropout=0.1)
    torch.manual_seed(0)
    model = PlmModel(cfg, task, head_config)
    with torch.no_grad():   # BERT's std 0.02 leaves a random model almost context-free; be bolder
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return save_checkpoint(model, d / "model", tokenizer=tok)


@pytest.fixture(scope="module")
def enc_dir(tmp_path_factory) -> Path:
    return _encoder(tmp_path_factory.mktemp("enc"))


def _hidden(model: PlmModel, tok, text: str) -> tuple[list[int], tuple[torch.Tensor, ...]]:
    """Token ids and L+1 x [T, H] hidden states of one text, straight from the model."""
    ids = configured(tok, None).encode(text).ids
    with torch.no_grad():
        out = model.eval()(torch.tensor([ids]), output_hidden_states=True)
    return ids, tuple(h[0] for h in out.hidden_states)


# --- embed ---------------------------------------------------------------------------------------

TEXTS = ["the red apple was good", "she ate a pie", "shares of the company rose and rose and rose", "it"]


def test_embed_shapes_and_mean_pooling_by_hand(tmp_path, enc_dir):
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS[:2]) + "\n\n" + "\n".join(TEXTS[2:]) + "\n")
    assert main(["embed", "--model", str(enc_dir), "--input", str(tmp_path / "texts.txt"),
                 "--out", str(tmp_path / "vec.npy"), "--tokens", "--batch-size", "3"]) == 0
    sent = np.load(tmp_path / "vec.npy")
    toks = np.load(tmp_path / "vec.tokens.npy")
    rows = [json.loads(ln) for ln in (tmp_path / "vec.jsonl").read_text().splitlines()]
    assert sent.shape == (4, 32) and sent.dtype == np.float32
    assert [r["text"] for r in rows] == TEXTS and [r["line"] for r in rows] == [1, 2, 4, 5]
    assert toks.shape == (sum(r["n_tokens"] for r in rows), 32)
    model, tok = load_model(enc_dir), load_tokenizer(enc_dir)
    for i, text in enumerate(TEXTS):
        ids, states = _hidden(model, tok, text)
        assert rows[i]["n_tokens"] == len(ids)
        start, end = rows[i]["token_rows"]
        np.testing.assert_allclose(toks[start:end], states[-1].numpy(), atol=1e-5)
        np.testing.assert_allclose(sent[i], states[-1].mean(0).numpy(), atol=1e-5)   # mean of all T_i


def test_cls_pooling_layers_normalize_and_table_input(tmp_path, enc_dir):
    model, tok = load_model(enc_dir), load_tokenizer(enc_dir)
    mean = embed_texts(model, tok, TEXTS, pooling="mean").sentences
    cls = embed_texts(model, tok, TEXTS, pooling="cls").sentences
    first = embed_texts(model, tok, TEXTS, pooling="cls", layer=0, normalize=True).sentences
    for i, text in enumerate(TEXTS):
        _, states = _hidden(model, tok, text)
        torch.testing.assert_close(cls[i], states[2][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(first[i], F.normalize(states[0][0], dim=0), atol=1e-5, rtol=0)
    assert (cls - mean).abs().max() > 1e-2
    with pytest.raises(PlmkitError, match="--layer 3 is out of range"):
        embed_texts(model, tok, TEXTS, layer=3)
    (tmp_path / "t.tsv").write_text("label\ttext\n" + "".join(f"x\t{t}\n" for t in TEXTS))
    assert main(["embed", "--model", str(enc_dir), "--input", str(tmp_path / "t.tsv"), "--out",
                 str(tmp_path / "v"), "--pooling", "cls"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), cls.numpy(), atol=1e-5)
    assert not (tmp_path / "v.tokens.npy").exists()


# --- similarity ----------------------------------------------------------------------------------

def _word_positions(tok, text: str, word: str) -> list[int]:
    """The test's own search: the word's piece ids as a contiguous run of the sentence's ids."""
    ids = configured(tok, None).encode(text).ids
    pieces = configured(tok, None).encode(word, add_special_tokens=False).ids
    start = next(i for i in range(len(ids)) if ids[i:i + len(pieces)] == pieces)
    return list(range(start, start + len(pieces)))


def test_similarity_equals_cosine_of_direct_hidden_states(tmp_path, enc_dir):
    model, tok = load_model(enc_dir), load_tokenizer(enc_dir)
    assert len(configured(tok, None).encode(RARE, add_special_tokens=False).ids) >= 3
    sents = [f"i ate a {RARE} pie", f"the {RARE.upper()} company rose", f"{RARE.capitalize()} .",
             f"she sold the new phone and a red {RARE}"]
    path = tmp_path / "s.txt"
    path.write_text("# comment\n" + "\n".join(sents) + "\n")
    assert main(["similarity", "--model", str(enc_dir), "--word", RARE, "--sentences", str(path),
                 "--out", str(tmp_path / "sim"), "--layer", "1"]) == 0
    res = json.loads((tmp_path / "sim" / "similarity.json").read_text())
    assert list(res) == ["word", "sentences", "layers", "static_layer", "contextual_layer"]
    assert res["sentences"] == sents and res["static_layer"] == 0 and res["contextual_layer"] == 1
    assert sorted(res["layers"]) == ["0", "1", "2"]
    vecs = []
    for s in sents:
        _, states = _hidden(model, tok, s)
        pos = _word_positions(tok, s.lower(), RARE)
        vecs.append(torch.stack([h[pos].mean(0) for h in states]))         # [L+1, H]
    vecs = torch.stack(vecs, 1)                                             # [L+1, N, H]
    for layer, m in res["layers"].items():
        m = torch.tensor(m)
        assert torch.equal(m, m.T) and torch.equal(m.diagonal(), torch.ones(len(sents)))
        direct = F.cosine_similarity(vecs[int(layer)][:, None], vecs[int(layer)][None, :], dim=-1)
        torch.testing.assert_close(m, direct, atol=1e-5, rtol=0)
    svg = ET.fromstring((tmp_path / "sim" / "similarity.svg").read_text())
    assert len([e for e in svg.iter() if e.get("data-chart") == "heatmap"]) == 2


def test_static_layer_sees_only_the_word_and_its_position(enc_dir):
    """Layer 0 has no context: same word at the same token position -> cosine exactly 1; the
    contextual layers see the different neighbours; another position -> below 1."""
    model, tok = load_model(enc_dir), load_tokenizer(enc_dir)
    sents = [Sentence("the apple tree", 1), Sentence("new apple phone sold", 2), Sentence("a good red apple", 3)]
    res = similarity_result(model, tok, sents, "apple", source="s.txt")
    static, last = res["layers"]["0"], res["layers"]["2"]
    assert static[0][1] == pytest.approx(1.0, abs=1e-6)
    assert last[0][1] < 0.999
    assert static[0][2] < 0.999


def test_missing_word_is_an_error_naming_file_and_line(tmp_path, enc_dir, capsys):
    model, tok = load_model(enc_dir), load_tokenizer(enc_dir)
    path = tmp_path / "s.txt"
    path.write_text("the Apple tree\n\nshe ate apples\n")          # 'apples' is not the whole word
    with pytest.raises(PlmkitError, match=rf"{path}:3: the word 'apple' is not in this sentence"):
        similarity_result(model, tok, read_sentences(path), "apple", source=path)
    path.write_text("the Apple tree\na pineapple\n")
    assert main(["similarity", "--model", str(enc_dir), "--sentences", str(path),
                 "--out", str(tmp_path / "out")]) == 1
    assert f"{path}:2:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(PlmkitError, match="more than one word"):
        similarity_result(model, tok, read_sentences(path), "red apple", source=path)


# --- landscape -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory) -> Path:
    return _encoder(tmp_path_factory.mktemp("cls"), "classify", {"num_labels": 2, "labels": ["neg", "pos"],
                                                                 "finetune_task": "classify"})


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory) -> Path:
    return _encoder(tmp_path_factory.mktemp("ner"), "token", {"num_labels": 2, "labels": ["B-X", "O"],
                                                              "finetune_task": "ner"})


def _data(d: Path, task: str, n: int = 40) -> Path:
    rng = random.Random(1)
    if task == "classify":
        lines = ["sentence\tlabel"] + [f"{' '.join(rng.sample(WORDS, rng.randint(2, 9)))}\t{rng.choice(['neg', 'pos'])}"
                                       for _ in range(n)]
        path = d / "cls.tsv"
    else:
        lines = []
        for _ in range(n):
            lines += [f"{w} {'B-X' if w == 'apple' else 'O'}" for w in rng.sample(WORDS, rng.randint(2, 9))] + [""]
        path = d / "ner.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _setup(model_dir: Path, data: Path):
    model, task, prep, tok = load_finetuned(str(model_dir))
    feats = task.encode(tok, task.read(str(data), prep), model.head_config, prep)
    return model, feats, LS.make_batches(feats, pad_id(tok), 16, causal=False, device=torch.device("cpu")), tok


@pytest.mark.parametrize("which", ["classify", "ner"])
def test_landscape_centre_is_the_plain_loss_and_weights_come_back(tmp_path, cls_dir, ner_dir, which):
    model, feats, batches, tok = _setup(cls_dir if which == "classify" else ner_dir, _data(tmp_path, which))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():   # one forward over all examples at once: per-example / per-token mean
        plain = float(model(**collate(feats, pad_id(tok))).loss)
    res = LS.scan(model, batches, span=0.5, steps=5, seed=3)
    assert res.loss_1d[2] == pytest.approx(plain, abs=1e-5) and res.center_loss == res.loss_1d[2]
    assert [row[2] for row in res.loss_2d] == res.loss_1d              # the beta = 0 column, bit for bit
    assert res.loss_2d[2][2] == res.loss_1d[2]
    assert res.alphas == res.betas == [-0.5, -0.25, 0.0, 0.25, 0.5]
    assert max(res.loss_1d) > res.loss_1d[2]
    c = res.loss_1d[2]
    assert res.sharpness == pytest.approx((max(res.loss_1d) - c + max(res.loss_2d[2]) - c) / 2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_filter_normalized_direction_has_the_weight_row_norms(cls_dir):
    model = load_model(cls_dir)
    d = LS.filter_normalized_direction(model, torch.Generator().manual_seed(0))
    again = LS.filter_normalized_direction(model, torch.Generator().manual_seed(0))
    names = dict(model.named_parameters())
    assert set(d) == set(names)
    for name, p in names.items():
        assert torch.equal(d[name], again[name])
        if p.dim() == 1:
            assert not d[name].any()                 # biases and LayerNorm stay put
        else:
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
            assert not torch.allclose(d[name], p)


def test_weights_come_back_when_the_scan_fails(tmp_path, cls_dir, monkeypatch):
    model, _, batches, _ = _setup(cls_dir, _data(tmp_path, "classify"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def failing(m, data):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return 1.0
    monkeypatch.setattr(LS, "mean_loss", failing)
    with pytest.raises(KeyboardInterrupt):
        LS.scan(model, batches, steps=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_landscape_cli_writes_the_schema(tmp_path, cls_dir, capsys):
    data = _data(tmp_path, "classify")
    assert main(["landscape", "--model", str(cls_dir), "--data", str(data), "--steps", "3",
                 "--max-examples", "20", "--out", str(tmp_path / "ls")]) == 0
    res = json.loads((tmp_path / "ls" / "landscape.json").read_text())
    assert list(res) == ["alphas", "loss_1d", "betas", "loss_2d", "sharpness", "model"]
    assert res["alphas"] == [-1.0, 0.0, 1.0] and len(res["loss_2d"]) == 3 and len(res["loss_2d"][0]) == 3
    assert isinstance(res["sharpness"], float) and res["model"] == str(cls_dir)
    for name in ("landscape_1d.svg", "landscape_2d.svg"):
        ET.fromstring((tmp_path / "ls" / name).read_text())
    assert main(["landscape", "--model", str(cls_dir), "--data", str(data), "--steps", "4",
                 "--out", str(tmp_path / "ls2")]) == 1
    assert "--steps must be odd" in capsys.readouterr().err


# --- the real checkpoint -------------------------------------------------------------------------

def test_minilm_separates_apple_the_fruit_from_apple_the_company(minilm_dir):
    """The shipped sentences: 1-4 the fruit, 5-8 the company. At layer 0 the pairs differ only by
    position (all similarities ~0.97); in context, fruit-fruit pairs are closer than fruit-company ones."""
    model, tok = load_model(minilm_dir), load_tokenizer(minilm_dir)
    res = similarity_result(model, tok, read_sentences(DEFAULT_SENTENCES), "apple", source=DEFAULT_SENTENCES)
    fruit, company = range(4), range(4, 8)

    def means(layer: int) -> tuple[float, float]:
        m = np.array(res["layers"][str(layer)])
        same = np.mean([m[i, j] for i in fruit for j in fruit if i < j])
        return float(same), float(np.mean([m[i, j] for i in fruit for j in company]))
    for layer in range(1, 7):
        same, cross = means(layer)
        assert same > cross + 0.1, (layer, same, cross)
    same0, cross0 = means(0)
    assert abs(same0 - cross0) < 0.02 and min(min(r) for r in res["layers"]["0"]) > 0.9


def test_an_onnx_export_is_refused_clearly(tmp_path, capsys):
    d = tmp_path / "onnx"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"")
    (d / "config.json").write_text("{}")
    (d / "plmkit.json").write_text('{"format": "onnx"}')
    for argv in (["embed", "--model", str(d), "--input", str(DEFAULT_SENTENCES), "--out", str(tmp_path / "v")],
                 ["similarity", "--model", str(d), "--out", str(tmp_path / "s")],
                 ["landscape", "--model", str(d), "--data", str(DEFAULT_SENTENCES), "--out", str(tmp_path / "l")]):
        assert main(argv) == 1
        assert "an ONNX export" in capsys.readouterr().err
