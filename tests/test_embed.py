"""Sentence embeddings (--task embed): the losses against hand computation, retrieval and correlation
metrics on hand-computed examples, the readers and their bad input, then finetune / evaluate / predict /
distill / quantize / export / serve through the CLI on a tiny seeded encoder, and the real
all-MiniLM-L6-v2 against sentence-transformers."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from plmkit.cli import main
from plmkit.data.features import collate, length_bucketed_batches
from plmkit.data.pairs import PairExample, encode_pairs, read_pairs
from plmkit.errors import PlmkitError
from plmkit.eval.metrics import pearson, retrieval_scores, spearman
from plmkit.models.checkpoint import save_checkpoint
from plmkit.models.config import EncoderConfig
from plmkit.models.heads import cosent_loss, ranking_loss
from plmkit.models.model import PlmModel
from plmkit.tasks import Infer, TaskData, load_finetuned
from plmkit.tasks.embed import embed_features
from plmkit.tokenizer import train_tokenizer

from conftest import data_path

NAMES = [f"n{i}x" for i in range(40)]
THINGS = ["apples", "boats", "cars", "dogs", "eggs", "films", "games", "hats", "inks", "jams"]
FILL = ["the", "a", "of", "and", "in", "with", "very", "old", "new", "big"]
FAST = ["--lr", "3e-3", "--batch-size", "16", "--max-length", "32", "--log-every", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models run on one thread


def _passage(rng: random.Random, name: str, thing: str) -> str:
    words = rng.sample(FILL, 4) + [name, "likes", thing]
    rng.shuffle(words)
    return " ".join(words)


def _write_pairs(path: Path, n: int, seed: int, triplets: bool = False) -> Path:
    """'what does NAME like' -> a passage naming NAME (and a passage about someone else)."""
    rng = random.Random(seed)
    rows = ["anchor\tpositive" + ("\tnegative" if triplets else "")]
    for _ in range(n):
        name, other, thing = *rng.sample(NAMES, 2), rng.choice(THINGS)
        row = f"what does {name} like\t{_passage(rng, name, thing)}"
        rows.append(row + (f"\t{_passage(rng, other, thing)}" if triplets else ""))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("embed_data")
    return {"train": _write_pairs(d / "train.tsv", 240, 0), "eval": _write_pairs(d / "eval.tsv", 60, 1),
            "triplets": _write_pairs(d / "triplets.tsv", 64, 2, triplets=True)}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, files) -> Path:
    """A tiny random BERT (hidden 32, 2 layers, MLM head) with a WordPiece trained on the task's words."""
    d = tmp_path_factory.mktemp("embed_enc")
    corpus = d / "corpus.txt"
    corpus.write_text(files["train"].read_text().replace("\t", "\n"))
    tok = train_tokenizer([corpus], kind="wordpiece", vocab_size=200, show_progress=False)
    cfg = EncoderConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=64, max_position=64, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    return save_checkpoint(PlmModel(cfg, "mlm"), d / "model", tokenizer=tok, meta={"stage": "test"})


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory, encoder_dir, files) -> Path:
    """The tiny encoder fine-tuned for embeddings, Matryoshka sizes 32 (full) and 16, 8."""
    out = tmp_path_factory.mktemp("embed_model") / "m"
    _finetune(encoder_dir, files["train"], out, "--eval", str(files["eval"]), "--epochs", "3",
              "--matryoshka-dims", "16,8")
    return out


def _finetune(model: Path, train: Path, out: Path, *extra: str) -> None:
    assert main(["finetune", "--model", str(model), "--task", "embed", "--train", str(train), "--out", str(out),
                 *FAST, *extra]) == 0


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _evaluate(capsys, model: Path, data: Path, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--data", str(data), *extra]) == 0
    return _last_json(capsys)


def _vectors(model_dir: Path, texts: list[str]) -> torch.Tensor:
    model, task, prep, tok = load_finetuned(str(model_dir), "embed")
    feats = task.encode(tok, [PairExample(t) for t in texts], model.head_config, prep)
    return embed_features(model, TaskData([], feats, tok, model.head_config, Infer(precision="fp32")), feats)


# --- losses and metrics, by hand --------------------------------------------------------------

def test_ranking_loss_is_cross_entropy_over_scaled_cosines_without_repeated_passages():
    torch.manual_seed(0)
    a, c = torch.randn(3, 4), torch.randn(5, 4)            # 3 anchors; 3 positives + 2 hard negatives
    cos = torch.tensor([[F.cosine_similarity(a[i], c[j], 0).item() for j in range(5)] for i in range(3)])
    want = sum(-math.log(math.exp(20 * cos[i, i]) / sum(math.exp(20 * cos[i, j]) for j in range(5)))
               for i in range(3)) / 3
    got = ranking_loss(a, c, torch.tensor([0, 1, 2, 3, 4]), 20.0)
    assert abs(got.item() - want) < 1e-4
    # anchor 1's positive is the same passage as anchor 0's (key 0): it is no negative of anchor 0 or 1
    repeated = ranking_loss(a, c, torch.tensor([0, 0, 2, 3, 4]), 20.0)
    row0 = -math.log(math.exp(20 * cos[0, 0]) / sum(math.exp(20 * cos[0, j]) for j in (0, 2, 3, 4)))
    row1 = -math.log(math.exp(20 * cos[1, 1]) / sum(math.exp(20 * cos[1, j]) for j in (1, 2, 3, 4)))
    row2 = -math.log(math.exp(20 * cos[2, 2]) / sum(math.exp(20 * cos[2, j]) for j in range(5)))
    assert abs(repeated.item() - (row0 + row1 + row2) / 3) < 1e-4


def test_cosent_counts_only_pairs_ordered_by_their_gold_scores():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])     # cosines 1, 0, 0.7071
    scores = torch.tensor([2.0, 1.0, 1.0])                     # pair 0 above pairs 1 and 2; 1 and 2 tied
    cos = [1.0, 0.0, 1 / math.sqrt(2)]
    want = math.log(1 + math.exp(20 * (cos[1] - cos[0])) + math.exp(20 * (cos[2] - cos[0])))
    assert abs(cosent_loss(a, b, scores, 20.0).item() - want) < 1e-5


def test_matryoshka_sums_the_loss_over_prefixes():
    torch.manual_seed(1)
    cfg = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                        max_position=16, hidden_dropout=0.0, attention_dropout=0.0)
    model = PlmModel(cfg, "embed", {"matryoshka_dims": [8, 4]}).eval()
    batch = {"input_ids": torch.randint(3, 50, (4, 6)), "pair_input_ids": torch.randint(3, 50, (4, 7)),
             "labels": torch.tensor([[0], [1], [2], [3]])}
    out = model(**batch)
    v, c = out.embeddings[:4], out.embeddings[4:]
    keys = torch.arange(4)
    want = sum(ranking_loss(v[:, :d], c[:, :d], keys, 20.0) for d in (16, 8, 4))
    assert out.embeddings.shape == (8, 16) and torch.allclose(out.loss, want)
    assert torch.allclose(v.norm(dim=-1), torch.ones(4))                        # normalize: on by default


def test_retrieval_metrics_on_a_hand_computed_example():
    rankings = [["p1", "p2", "p3"], ["p3", "p1", "p2"], ["p2", "p3", "p1"]]
    relevant = [{"p1"}, {"p1", "p2"}, {"p9"}]
    got = retrieval_scores(rankings, relevant, k=2)
    # query 1: hit at rank 1; query 2: p1 at rank 2 (p2 beyond k); query 3: no hit
    assert got["mrr@2"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert got["recall@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert got["recall@2"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    ndcg_q2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert got["ndcg@2"] == pytest.approx((1 + ndcg_q2 + 0) / 3)


def test_spearman_averages_ties_as_scipy_does():
    x, y = [0.1, 0.4, 0.4, 0.9, 0.2], [1, 2, 3, 5, 0]
    # ranks of x: 1, 3.5, 3.5, 5, 2; of y: 2, 3, 4, 5, 1
    rx, ry = [1, 3.5, 3.5, 5, 2], [2, 3, 4, 5, 1]
    assert spearman(x, y) == pytest.approx(pearson(rx, ry))
    stats = pytest.importorskip("scipy.stats")
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


# --- readers and batches ----------------------------------------------------------------------

def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_readers_take_pairs_triplets_scored_pairs_and_squad(tmp_path):
    plain = read_pairs(_write(tmp_path, "p.tsv", "a b\tc d\ne f\tg h\n"))
    assert [(e.anchor, e.positive, e.negative, e.score) for e in plain] == [("a b", "c d", None, None),
                                                                           ("e f", "g h", None, None)]
    trip = read_pairs(_write(tmp_path, "t.tsv", "q\tp\tn\nq2\tp2\tn2\n"))
    assert trip[1].negative == "n2" and trip[1].score is None
    scored = read_pairs(_write(tmp_path, "s.tsv", "a\tb\t4.5\nc\td\t0\n"))
    assert [e.score for e in scored] == [4.5, 0.0] and scored[0].negative is None
    rows = [{"query": "q1", "passage": "p1", "passage_id": 7}, {"query": "q2", "passage": "p1 again", "passage_id": 7}]
    jsonl = read_pairs(_write(tmp_path, "r.jsonl", "\n".join(map(json.dumps, rows)) + "\n"))
    assert [e.positive_key for e in jsonl] == ["7", "7"]
    squad = {"data": [{"title": "T", "paragraphs": [{"context": "ctx", "qas": [
        {"id": "1", "question": "q?", "answers": []}, {"id": "2", "question": "r?", "answers": []}]}]}]}
    sq = read_pairs(_write(tmp_path, "sq.json", json.dumps(squad)))
    assert [(e.anchor, e.positive, e.positive_key, e.group) for e in sq] == [("q?", "ctx", "T#0", "T"),
                                                                            ("r?", "ctx", "T#0", "T")]


def test_mrpc_is_read_as_scored_pairs_by_its_header():
    dev = data_path("mrpc", "dev.tsv")
    examples = read_pairs(dev)
    assert len(examples) > 400 and {e.score for e in examples} == {0.0, 1.0}
    assert examples[0].anchor.startswith("He said the foodservice pie business")


@pytest.mark.parametrize("name,content,message", [
    ("one.tsv", "just one text\nanother\n", "one.tsv: one text per row"),
    ("empty.tsv", "\n", "empty.tsv: file is empty"),
    ("ragged.tsv", "a\tb\nc\td\te\n", "ragged.tsv:2: expected 2 columns, found 3"),
    ("blank.tsv", "a\t \n", "blank.tsv:1: empty positive text"),
    ("mixed.jsonl", '{"anchor": "a", "positive": "b", "score": 1}\n{"anchor": "c", "positive": "d", "score": "x"}\n',
     "mixed.jsonl:2: score must be a number"),
])
def test_bad_input_is_one_line_naming_the_file(tmp_path, encoder_dir, capsys, name, content, message):
    bad = _write(tmp_path, name, content)
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["finetune", "--model", str(encoder_dir), "--task", "embed", "--train", str(bad),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("plmkit: error:") and message in err, err
    assert not out.exists()


def test_batches_never_repeat_a_passage_when_they_can_avoid_it():
    rng = random.Random(0)
    keys = [i // 5 for i in range(200)]                      # SQuAD-like: 5 questions per paragraph
    lengths = [100 + k for k in keys]                        # a paragraph's questions have equal lengths
    rng.shuffle(keys)
    batches = length_bucketed_batches(lengths, 16, seed=0, keys=keys)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert all(len({keys[i] for i in b}) == len(b) for b in batches[:-3])
    plain = length_bucketed_batches([100 + k for k in range(40) for _ in range(5)], 16, seed=0)
    assert any(len({i // 5 for i in b}) < len(b) for b in plain)      # without keys they would repeat


def test_collate_stacks_positives_then_negatives_in_a_block_of_their_own(encoder_dir):
    from plmkit.tokenizer import load_tokenizer

    tok = load_tokenizer(encoder_dir)
    exs = [PairExample("what does n1x like", "n1x likes apples", "n2x likes boats"),
           PairExample("q", "n1x likes apples", "the old and very big n3x likes new inks")]
    feats = encode_pairs(tok, exs, 32)
    batch = collate(feats, 0)
    assert batch["pair_input_ids"].shape[0] == 4 and batch["labels"][:, :2].tolist() == [[0, 1], [0, 2]]
    assert batch["pair_input_ids"][1].tolist() == batch["pair_input_ids"][0].tolist()   # both positives first
    assert batch["pair_attention_mask"].sum(1).tolist() == [len(f) for f in
                                                            [feats[0]["pair_input_ids"][0], feats[1]["pair_input_ids"][0],
                                                             feats[0]["pair_input_ids"][1], feats[1]["pair_input_ids"][1]]]
    from plmkit.train.logging import count_tokens       # tokens/s counts every text of the batch
    assert count_tokens(batch) == sum(len(f["input_ids"]) + sum(map(len, f["pair_input_ids"])) for f in feats)


# --- the CLI on a tiny encoder ----------------------------------------------------------------

def test_finetune_embed_loss_falls_and_retrieval_beats_the_pretrained_model(embed_dir, encoder_dir, files, capsys):
    log = [json.loads(line) for line in (embed_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.6 * losses[0], losses
    before = _evaluate(capsys, encoder_dir, files["eval"], "--task", "embed")   # the MLM encoder, mean-pooled
    after = _evaluate(capsys, embed_dir, files["eval"])
    assert after["queries"] == before["queries"] and after["corpus"] == 60
    assert after["mrr@10"] > before["mrr@10"] + 0.2 and after["mrr@10"] > 0.7, (before, after)
    config = json.loads((embed_dir / "config.json").read_text())
    assert config["task"] == "embed" and config["head_config"]["matryoshka_dims"] == [16, 8]
    assert config["head_config"]["pooling"] == "mean" and config["head_config"]["normalize"] is True
    meta = json.loads((embed_dir / "plmkit.json").read_text())
    assert meta["metrics"]["metric"] == "mrr@10"


def test_triplets_cls_pooling_and_a_learnable_scale_train(tmp_path, encoder_dir, files):
    out = tmp_path / "m"
    _finetune(encoder_dir, files["triplets"], out, "--pooling", "cls", "--learnable-scale", "--scale", "10",
              "--epochs", "2")
    model, *_ = load_finetuned(str(out))
    assert model.head_config["pooling"] == "cls" and model.head.log_scale is not None
    assert model.head.scale().item() != pytest.approx(10.0)          # it trained
    texts = ["what does n1x like", "n1x likes apples"]
    v = _vectors(out, texts)
    model.eval()
    from plmkit.tokenizer import load_tokenizer
    tok = load_tokenizer(out)
    with torch.no_grad():
        h = model.backbone(torch.tensor([tok.encode(texts[0]).ids])).last_hidden_state[0, 0]
    assert torch.allclose(v[0], F.normalize(h, dim=-1), atol=1e-5)   # cls: the first token's state


def test_scored_pairs_evaluate_by_spearman_and_select_by_it(tmp_path, embed_dir, encoder_dir, files, capsys):
    rng = random.Random(3)
    rows = []
    for _ in range(40):
        name, other, thing = *rng.sample(NAMES, 2), rng.choice(THINGS)
        same = rng.random() < 0.5
        rows.append(f"what does {name} like\t{_passage(rng, name if same else other, thing)}\t{int(same)}")
    scored = _write(tmp_path, "scored.tsv", "\n".join(rows) + "\n")
    got = _evaluate(capsys, embed_dir, scored)
    assert set(got) == {"task", "examples", "spearman", "pearson"} and got["spearman"] > 0.5, got
    out = tmp_path / "m"
    _finetune(encoder_dir, files["train"], out, "--eval", str(scored), "--max-steps", "4", "--eval-every", "2")
    assert json.loads((out / "plmkit.json").read_text())["metrics"]["metric"] == "spearman"
    _finetune(encoder_dir, scored, tmp_path / "cosent", "--max-steps", "3")         # CoSENT on the scores


def test_squad_articles_are_held_out_whole(tmp_path, encoder_dir, capsys):
    articles = []
    for a in range(4):
        paragraphs = [{"context": f"{NAMES[a * 3 + p]} likes {THINGS[p]} very much",
                       "qas": [{"id": f"{a}{p}{q}", "question": f"what does {NAMES[a * 3 + p]} like {q}",
                                "answers": []} for q in range(3)]} for p in range(3)]
        articles.append({"title": f"article{a}", "paragraphs": paragraphs})
    squad = _write(tmp_path, "squad.json", json.dumps({"version": "1.1", "data": articles}))
    capsys.readouterr()
    _finetune(encoder_dir, squad, tmp_path / "m", "--eval-fraction", "0.25", "--max-steps", "2")
    out = capsys.readouterr().out
    assert "1 of 4 groups (SQuAD articles) held out whole, 9 of 36 examples" in out, out


def test_predict_writes_vectors_and_pair_cosines(tmp_path, embed_dir):
    texts = _write(tmp_path, "texts.txt", "what does n1x like\nn1x likes apples\n")
    assert main(["predict", "--model", str(embed_dir), "--input", str(texts), "--output", str(tmp_path / "v.jsonl"),
                 "--precision", "fp32"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    want = _vectors(embed_dir, ["what does n1x like", "n1x likes apples"])
    assert torch.allclose(torch.tensor([r["embedding"] for r in rows]), want, atol=1e-5)
    pairs = _write(tmp_path, "pairs.tsv", "what does n1x like\tn1x likes apples\n")
    assert main(["predict", "--model", str(embed_dir), "--input", str(pairs), "--output", str(tmp_path / "p.jsonl"),
                 "--precision", "fp32"]) == 0
    row = json.loads((tmp_path / "p.jsonl").read_text())
    assert row["cosine"] == pytest.approx(F.cosine_similarity(want[0], want[1], 0).item(), abs=1e-5)


def test_distilled_student_moves_towards_the_teachers_vectors(tmp_path, embed_dir, files):
    texts = ["what does n1x like", "n5x likes very old boats", "the big n9x likes jams", "what does n20x like"]
    teacher = _vectors(embed_dir, texts)
    for name, steps in (("start", "1"), ("end", "40")):
        assert main(["distill", "--teacher", str(embed_dir), "--task", "embed", "--train", str(files["train"]),
                     "--out", str(tmp_path / name), "--student-layers", "0", "--alpha", "0", "--lr", "3e-3",
                     "--batch-size", "16", "--max-steps", steps, "--warmup-ratio", "0"]) == 0
    gap = {n: (_vectors(tmp_path / n, texts) - teacher).pow(2).sum(-1).mean().item() for n in ("start", "end")}
    assert gap["end"] < 0.5 * gap["start"], gap


def test_int8_vectors_stay_within_cosine_099_of_fp32(tmp_path, embed_dir, files, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["quantize", "--model", str(embed_dir), "--out", str(tmp_path / "q"), "--eval", str(files["eval"])]) == 0
    report = _last_json(capsys)
    assert report["metrics"]["int8"]["mrr@10"] >= report["metrics"]["fp32"]["mrr@10"] - 0.05
    texts = [line.split("\t")[1] for line in files["eval"].read_text().splitlines()[1:]]
    fp32, int8 = _vectors(embed_dir, texts), _vectors(tmp_path / "q", texts)
    assert F.cosine_similarity(fp32, int8, dim=-1).min().item() > 0.99


def test_bench_times_embedding_models_without_baseline_rows_and_scores_them_as_evaluate(tmp_path, embed_dir,
                                                                                         files, capsys):
    """plmkit bench takes embed models (fp32 and INT8): no transformers row (no head class computes
    the vectors; the note says so), the metric the data's (MRR@10 here, Spearman for scored pairs)."""
    pytest.importorskip("onnxruntime")
    assert main(["quantize", "--model", str(embed_dir), "--out", str(tmp_path / "q")]) == 0
    want = _evaluate(capsys, embed_dir, files["eval"])
    out = tmp_path / "bench.json"
    assert main(["bench", "--models", str(embed_dir), str(tmp_path / "q"), "--data", str(files["eval"]),
                 "--batch-sizes", "1", "8", "--repeats", "1", "--warmup", "1", "--latency-examples", "4",
                 "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["kind"] for r in result["rows"]] == ["torch", "onnx"] and result["metric_name"] == "mrr@10"
    assert "no baseline rows" in result["notes"][0]
    assert result["rows"][0]["metric"] == pytest.approx(want["mrr@10"], abs=1e-6)
    scored = tmp_path / "scored.tsv"
    scored.write_text("".join(f"what does {n} like\t{n} likes boats\t{i % 5}\n" for i, n in enumerate(NAMES[:12])))
    assert main(["bench", "--models", str(embed_dir), "--data", str(scored), "--batch-sizes", "8", "--repeats", "1",
                 "--warmup", "1", "--threads", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metric_name"] == "spearman"


def test_sentence_transformers_export_loads_with_equal_vectors(tmp_path, embed_dir):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed "
                                                              "(pip install 'plmkit[hf]')")
    assert main(["export", "--model", str(embed_dir), "--out", str(tmp_path / "st"),
                 "--format", "sentence-transformers"]) == 0
    texts = ["what does n1x like", "the old n5x likes boats and very big games", "a"]
    got = st.SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(got.cpu(), _vectors(embed_dir, texts), atol=1e-5)
    # and back: the directory is a bare encoder plmkit reads with its pooling and normalisation
    assert torch.allclose(_vectors(tmp_path / "st", texts), _vectors(embed_dir, texts), atol=1e-5)


def test_served_embeddings_are_the_models_own_and_cut_to_matryoshka_sizes(tmp_path, encoder_dir, files):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from plmkit.serve.app import Limits, create_app
    from plmkit.serve.backend import ServedModel

    out = tmp_path / "cls"
    _finetune(encoder_dir, files["train"], out, "--pooling", "cls", "--max-steps", "4", "--matryoshka-dims", "16")
    texts = ["what does n1x like", "n1x likes apples"]
    want = _vectors(out, texts)
    with TestClient(create_app(ServedModel(out, precision="fp32"), Limits())) as client:
        native = client.post("/v1/embed", json={"texts": texts}).json()["embeddings"]
        assert torch.allclose(torch.tensor(native), want, atol=1e-5)       # [CLS] pooling, as fine-tuned
        cut = client.post("/v1/embeddings", json={"model": "cls", "input": texts[0], "dimensions": 16}).json()
        v = want[0, :16] / want[0, :16].norm()
        assert torch.allclose(torch.tensor(cut["data"][0]["embedding"]), v, atol=1e-5)
        rerank = client.post("/rerank", json={"query": texts[0], "texts": [texts[1]]}).json()
        assert rerank[0]["score"] == pytest.approx(F.cosine_similarity(want[0], want[1], 0).item(), abs=1e-5)


# --- real data --------------------------------------------------------------------------------

def _squad_article(path: Path, index: int) -> Path:
    doc = json.loads(data_path("squad", "train-half.json").read_text(encoding="utf-8"))
    path.write_text(json.dumps({"version": doc.get("version"), "data": [doc["data"][index]]}))
    return path


def test_minilm_as_a_bare_sentence_encoder_equals_sentence_transformers(minilm_dir):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    texts = ["Which NFL team represented the AFC at Super Bowl 50?", "The Broncos won the game.", "x"]
    want = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, convert_to_tensor=True).cpu()
    assert torch.allclose(_vectors(minilm_dir, texts), want, atol=1e-5)


@pytest.mark.slow
def test_minilm_retrieves_squad_paragraphs_and_fine_tuning_keeps_it(tmp_path, minilm_dir, capsys):
    held = _squad_article(tmp_path / "held.json", 17)            # 21 paragraphs, 96 questions
    zero_shot = _evaluate(capsys, minilm_dir, held, "--task", "embed", "--batch-size", "32")
    assert zero_shot["corpus"] == 21 and zero_shot["mrr@10"] > 0.6, zero_shot
    train = _squad_article(tmp_path / "train.json", 15)          # another article: 22 paragraphs
    assert main(["finetune", "--model", str(minilm_dir), "--task", "embed", "--train", str(train),
                 "--out", str(tmp_path / "m"), "--max-steps", "4", "--batch-size", "16", "--max-length", "256",
                 "--lr", "2e-5", "--log-every", "2"]) == 0
    tuned = _evaluate(capsys, tmp_path / "m", held, "--batch-size", "32")
    assert tuned["mrr@10"] > zero_shot["mrr@10"] - 0.05, (zero_shot, tuned)
