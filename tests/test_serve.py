"""plmkit serve: every endpoint over real loopback HTTP, limits, micro-batching, fuzzing,
graceful shutdown. Tiny random models (hidden 32, 2 layers): the answers are checked for
shape and consistency (offsets, batching invariance), not quality."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="serve extra not installed (pip install 'plmkit[serve]')")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from plmkit.models.checkpoint import save_checkpoint  # noqa: E402
from plmkit.models.config import DecoderConfig, EncoderConfig  # noqa: E402
from plmkit.models.model import PlmModel  # noqa: E402
from plmkit.serve.app import Limits, create_app  # noqa: E402
from plmkit.serve.backend import ServedModel  # noqa: E402
from plmkit.tokenizer import train_tokenizer  # noqa: E402

CORPUS = """the film was a delight from start to finish
a dull and lifeless story with no wit
alice met bob in paris on a rainy monday
the cup was won by manchester united in a close final
who won the cup and where was the final played
hide new secretions from the parental units
contains no wit , only labored gags
""" * 3

LIMITS = dict(max_batch=32, max_wait_ms=2.0, max_body_bytes=4096, max_texts=8, max_chars=200, timeout_s=10.0)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS)
    wp = train_tokenizer([corpus], "wordpiece", vocab_size=200, min_frequency=1, show_progress=False)
    bpe = train_tokenizer([corpus], "bpe", vocab_size=300, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    enc = EncoderConfig(vocab_size=wp.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=64, max_position=128, hidden_dropout=0.0, attention_dropout=0.0)
    dec = DecoderConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                        max_position=64, hidden_dropout=0.0, attention_dropout=0.0)
    token = PlmModel(enc, "token", {"num_labels": 3, "labels": ["B-PER", "I-PER", "O"]})
    with torch.no_grad():                    # every word starts a PER entity: offsets become checkable
        token.head.classifier.bias.copy_(torch.tensor([8.0, 0.0, 0.0]))
    models = {"classify": (PlmModel(enc, "classify", {"num_labels": 2, "labels": ["negative", "positive"]}), wp),
              "ner": (token, wp),
              "qa": (PlmModel(enc, "span", {"preprocess": {"max_length": 40, "doc_stride": 8}}), wp),
              "generate": (PlmModel(dec, "clm"), bpe)}
    return {name: save_checkpoint(m, root / name, tokenizer=tok) for name, (m, tok) in models.items()}


class ThreadServer:
    """uvicorn on a free 127.0.0.1 port, in a thread of this process."""

    def __init__(self, app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def servers(model_dirs):
    """name -> base URL. The classify server waits 50 ms for company so batches form, and runs
    in fp32 so answers can be compared exactly; the others run in bf16 autocast (the default)."""
    started = {}
    for name, path in model_dirs.items():
        limits = Limits(**{**LIMITS, "max_wait_ms": 50.0 if name == "classify" else 2.0})
        served = ServedModel(path, precision="fp32" if name == "classify" else "bf16")
        started[name] = ThreadServer(create_app(served, limits))
    slow = Limits(**{**LIMITS, "max_wait_ms": 1000.0, "timeout_s": 0.1})       # always times out
    started["slow"] = ThreadServer(create_app(ServedModel(model_dirs["classify"]), slow))
    yield {name: s.url for name, s in started.items()}
    for s in started.values():
        s.stop()


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=30) as c:
        yield c


def test_health_and_openapi(servers, client):
    health = client.get(servers["classify"] + "/health").json()
    assert health["status"] == "ok" and health["task"] == "classify"
    assert health["endpoints"] == ["classify", "embed"]
    assert client.get(servers["generate"] + "/health").json()["endpoints"] == ["generate"]
    paths = client.get(servers["ner"] + "/openapi.json").json()["paths"]
    assert {"/v1/classify", "/v1/ner", "/v1/qa", "/v1/embed", "/v1/generate", "/health"} <= set(paths)


def test_classify_single_and_pairs(servers, client):
    texts = ["the film was a delight", "a dull story", "alice met bob"]
    r = client.post(servers["classify"] + "/v1/classify", json={"texts": texts})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 3
    for p in preds:
        assert p["label"] in ("negative", "positive") and set(p["scores"]) == {"negative", "positive"}
        assert abs(sum(p["scores"].values()) - 1) < 1e-5 and p["score"] == max(p["scores"].values())
    # the same text alone gives the same answer as inside a padded batch
    alone = client.post(servers["classify"] + "/v1/classify", json={"texts": texts[2:]}).json()["predictions"][0]
    assert alone["score"] == pytest.approx(preds[2]["score"], abs=1e-5)
    r = client.post(servers["classify"] + "/v1/classify", json={"texts": texts[:2], "text_pairs": ["yes", "no"]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    r = client.post(servers["classify"] + "/v1/classify", json={"texts": texts[:2], "text_pairs": ["yes"]})
    assert r.status_code == 422 and "one per text" in r.json()["detail"]


def test_ner_entities_have_character_offsets(servers, client):
    text = "  Alice   met\tBob in  Paris "
    r = client.post(servers["ner"] + "/v1/ner", json={"texts": [text, "", "bob"]})
    assert r.status_code == 200, r.text
    first, empty, single = r.json()["predictions"]
    words = text.split()
    assert first["tags"] == ["B-PER"] * len(words)           # the biased head tags every word B-PER
    assert [e["text"] for e in first["entities"]] == words
    for e in first["entities"]:
        assert text[e["start"]:e["end"]] == e["text"] and e["type"] == "PER" and 0 < e["score"] <= 1
    assert empty == {"entities": [], "tags": []}
    assert single["entities"][0] | {"score": 0} == {"type": "PER", "text": "bob", "start": 0, "end": 3, "score": 0}


def test_qa_answer_is_a_context_span(servers, client):
    context = " ".join(["the cup was won by manchester united in a close final ."] * 3)   # several windows
    r = client.post(servers["qa"] + "/v1/qa", json={"question": "who won the cup", "context": context})
    assert r.status_code == 200, r.text
    ans = r.json()
    assert ans["answer"] and context[ans["start"]:ans["end"]] == ans["answer"] and 0 < ans["score"] <= 1
    r = client.post(servers["qa"] + "/v1/qa", json={"question": "who", "context": ""})
    assert r.status_code == 200 and r.json()["answer"] == "" and r.json()["start"] is None


def test_embed_is_mean_pooling_and_batch_invariant(servers, client, model_dirs):
    from plmkit.models.checkpoint import load_model
    from plmkit.tokenizer import load_tokenizer

    texts = ["alice met bob", "the cup was won by manchester united in a close final"]
    r = client.post(servers["classify"] + "/v1/embed", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dimensions"] == 32 and len(body["embeddings"]) == 2
    model, tok = load_model(model_dirs["classify"]).eval(), load_tokenizer(model_dirs["classify"])
    ids = torch.tensor([tok.encode(texts[0]).ids])
    with torch.no_grad():
        expected = model.backbone(ids).last_hidden_state.mean(1)[0]
    assert torch.allclose(torch.tensor(body["embeddings"][0]), expected, atol=1e-5)   # padding did not leak in
    unit = client.post(servers["classify"] + "/v1/embed", json={"texts": texts[:1], "normalize": True}).json()
    assert torch.tensor(unit["embeddings"][0]).norm().item() == pytest.approx(1.0, abs=1e-5)


def test_generate_greedy_and_seeded(servers, client):
    url = servers["generate"] + "/v1/generate"
    greedy = {"prompt": "alice met", "max_new_tokens": 8, "temperature": 0}
    a, b = client.post(url, json=greedy).json(), client.post(url, json=greedy).json()
    assert a == b and 0 <= a["tokens"] <= 8 and a["finish_reason"] in ("eos", "length")
    sampled = {"prompt": "the cup", "max_new_tokens": 6, "temperature": 1.0, "top_k": 20, "top_p": 0.9, "seed": 7}
    assert client.post(url, json=sampled).json() == client.post(url, json=sampled).json()
    r = client.post(url, json={"prompt": "the", "max_new_tokens": 64})
    assert r.status_code == 422 and "context of 64" in r.json()["detail"]
    r = client.post(url, json={"prompt": ""})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    r = client.post(url, json={"prompt": "the", "temperature": 1e-300})      # would overflow to NaN
    assert r.status_code == 422 and "temperature" in r.json()["detail"]
    for bad in ({"max_new_tokens": -1}, {"temperature": -1}):
        r = client.post(url, json={"prompt": "the", **bad})
        assert r.status_code == 422 and next(iter(bad)) in r.json()["detail"], r.text


def test_generate_says_how_much_of_a_long_prompt_the_context_dropped(servers, client, model_dirs):
    from plmkit.tokenizer import load_tokenizer
    from plmkit.tokenizer.chat import encode_prompt

    url = servers["generate"] + "/v1/generate"
    short = client.post(url, json={"prompt": "alice met", "max_new_tokens": 4, "temperature": 0}).json()
    assert short["prompt_tokens_dropped"] == 0
    prompt = "alice met bob in paris " * 8            # 184 characters (--max-chars 200)
    n = len(encode_prompt(load_tokenizer(model_dirs["generate"]), prompt))
    long = client.post(url, json={"prompt": prompt, "max_new_tokens": 4, "temperature": 0}).json()
    assert n > 64 and long["prompt_tokens_dropped"] == n - (64 - 4)      # context 64 = kept prompt + 4 new


@pytest.mark.parametrize("server,endpoint,body", [
    ("classify", "ner", {"texts": ["x"]}), ("classify", "generate", {"prompt": "x"}),
    ("generate", "embed", {"texts": ["x"]}), ("generate", "classify", {"texts": ["x"]}),
    ("ner", "qa", {"question": "x", "context": "y"})])
def test_unsupported_endpoint_is_404_with_reason(servers, client, server, endpoint, body):
    r = client.post(f"{servers[server]}/v1/{endpoint}", json=body)
    assert r.status_code == 404 and f"/v1/{endpoint} needs" in r.json()["detail"]


@pytest.mark.parametrize("content,status,message", [
    (json.dumps({"texts": ["a"] * 9}), 422, "at most 8 per request (--max-texts)"),
    ('{"texts": ["' + "a" * 201 + '"]}', 422, "at most 200 (--max-chars)"),
    ('{"texts": ["' + "a " * 2100 + '"]}', 413, "limit is 4096 (--max-body-bytes)"),
    ('{"texts": [', 400, "malformed JSON"),
    ('{"texts": "a"}', 422, "texts: Input should be a valid list"),
    ('{"texts": [1]}', 422, "texts.0: Input should be a valid string"),
    ('{"texts": []}', 422, "texts: List should have at least 1 item"),
    ('{"text": ["a"]}', 422, "texts: Field required"),
    ('[1, 2]', 422, "Input should be a valid dictionary"),
    ('{"texts": ["\\ud800"]}', 422, "not valid Unicode"),
    (b'{"texts": ["caf\xe9"]}', 400, "not valid UTF-8 (byte 15: e9"),        # Latin-1, not UTF-8
])
def test_limits_and_bad_input_give_4xx_with_message(servers, client, content, status, message):
    r = client.post(servers["classify"] + "/v1/classify", content=content,
                    headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_non_json_content_type_is_415(servers, client):
    r = client.post(servers["classify"] + "/v1/classify", data={"texts": "a"})       # a form, not JSON
    assert r.status_code == 415 and "Content-Type: application/json" in r.json()["detail"]


def test_post_without_content_type_is_415(servers, client):
    r = client.post(servers["classify"] + "/v1/classify", content=b'{"texts": ["a"]}')   # JSON, but unlabelled
    assert "content-type" not in r.request.headers
    assert r.status_code == 415 and "got no Content-Type header" in r.json()["detail"]


def test_no_docs_page_that_needs_a_cdn(servers, client):
    """FastAPI's /docs loads Swagger UI from a CDN (blank offline): plmkit serves none; the schema stays."""
    assert client.get(servers["classify"] + "/docs").status_code == 404
    assert client.get(servers["classify"] + "/redoc").status_code == 404
    assert client.get(servers["classify"] + "/openapi.json").json()["info"]["title"] == "plmkit serve"


def test_streamed_oversized_body_is_413(servers, client):
    chunks = (b'{"texts": ["' + b"a" * 1000 + b'"]}' for _ in range(8))      # no Content-Length: chunked
    r = client.post(servers["classify"] + "/v1/classify", content=chunks)
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["detail"]


def test_request_timeout_is_503(servers, client):
    r = client.post(servers["slow"] + "/v1/classify", json={"texts": ["a"]})
    assert r.status_code == 503 and "timed out after 0.1 s" in r.json()["detail"]


def _batch_histogram(metrics_text: str, endpoint: str) -> tuple[int, int]:
    """(batches of size 1, all batches) for one endpoint."""
    ones = re.search(rf'plmkit_batch_size_bucket{{endpoint="{endpoint}",le="1"}} (\d+)', metrics_text)
    total = re.search(rf'plmkit_batch_size_count{{endpoint="{endpoint}"}} (\d+)', metrics_text)
    return int(ones.group(1)), int(total.group(1))


def test_concurrent_requests_form_batches_and_answers_go_to_their_callers(servers, client):
    url = servers["classify"]
    texts = [f"alice met bob {'in paris ' * (i % 5)}number {i}" for i in range(16)]
    solo = [client.post(url + "/v1/classify", json={"texts": [t]}).json()["predictions"][0] for t in texts[:4]]
    ones_before, total_before = _batch_histogram(client.get(url + "/metrics").text, "classify")
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda t: httpx.post(url + "/v1/classify", json={"texts": [t]}, timeout=30), texts))
    assert all(r.status_code == 200 for r in replies)
    for r, s in zip(replies[:4], solo):
        assert r.json()["predictions"][0]["score"] == pytest.approx(s["score"], abs=1e-5)
    metrics = client.get(url + "/metrics").text
    ones, total = _batch_histogram(metrics, "classify")
    assert total - total_before < 16                   # fewer model calls than requests
    assert (total - total_before) - (ones - ones_before) >= 1    # at least one batch larger than one
    assert 'plmkit_requests_total{endpoint="/v1/classify",status="200"}' in metrics
    assert 'plmkit_request_duration_seconds_bucket{endpoint="/v1/classify",le="+Inf"}' in metrics


def test_onnxruntime_backend_answers_like_torch(servers, client, model_dirs, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnx extra not installed")
    from plmkit.compress.onnx_export import export_onnx_dir
    from plmkit.errors import PlmkitError
    from plmkit.models.checkpoint import load_model
    from plmkit.tokenizer import load_tokenizer

    with pytest.raises(PlmkitError, match=r"needs an ONNX export \(plmkit export --format onnx\)"):
        ServedModel(model_dirs["classify"], "onnxruntime")
    src = model_dirs["classify"]
    export_onnx_dir(load_model(src).eval(), tmp_path / "onnx", load_tokenizer(src), meta={})
    server = ThreadServer(create_app(ServedModel(tmp_path / "onnx", "onnxruntime"), Limits(**LIMITS)))
    try:
        body = {"texts": ["the film was a delight", "a dull and lifeless story with no wit"]}
        got = client.post(server.url + "/v1/classify", json=body).json()["predictions"]
        want = client.post(servers["classify"] + "/v1/classify", json=body).json()["predictions"]
        assert [p["label"] for p in got] == [p["label"] for p in want]
        assert [p["score"] for p in got] == pytest.approx([p["score"] for p in want], abs=1e-4)
        r = client.post(server.url + "/v1/embed", json=body)
        assert r.status_code == 404 and "export of task 'base'" in r.json()["detail"]
    finally:
        server.stop()


def test_an_int8_directory_is_served_on_onnxruntime_without_asking(model_dirs, tmp_path, capsys):
    """``plmkit serve --model INT8_DIR`` used to fail with "no weights found (expected
    model.safetensors)": the directory picks the backend unless --backend names one."""
    pytest.importorskip("onnxruntime", reason="onnx extra not installed")
    from plmkit.cli import main
    from plmkit.errors import PlmkitError
    from plmkit.stages.serve import Config

    src, onnx, int8 = model_dirs["classify"], tmp_path / "onnx", tmp_path / "int8"
    assert main(["export", "--model", str(src), "--format", "onnx", "--out", str(onnx)]) == 0
    assert main(["quantize", "--model", str(onnx), "--out", str(int8)]) == 0
    assert Config(model=str(int8)).backend is None                  # no default backend: the directory decides
    served = ServedModel(int8)
    assert (served.backend.name, served.backend.precision) == ("onnxruntime", "int8")
    assert served.endpoints() == ["classify"] and served.labels == ["negative", "positive"]
    assert ServedModel(src).backend.name == "torch"
    with pytest.raises(PlmkitError, match=r"int8: an ONNX export; the torch backend \(--backend torch\) needs "
                                          r"the PyTorch checkpoint it was exported from"):
        ServedModel(int8, "torch")


@pytest.mark.parametrize("long_text", ["truncate", "head-tail", "windows"])
def test_classify_reads_long_texts_as_predict_does(model_dirs, tmp_path, long_text):
    """The checkpoint's long-text setting reaches serve: same scores as plmkit predict's code."""
    from plmkit.models.checkpoint import load_model
    from plmkit.tasks import Infer, TaskData, load_finetuned
    from plmkit.tokenizer import load_tokenizer

    src = model_dirs["classify"]
    model = load_model(src)
    model.head_config["preprocess"] = {"max_length": 12, "long_text": long_text, "doc_stride": 3}
    path = save_checkpoint(model, tmp_path / "m", tokenizer=load_tokenizer(src))
    texts = [" ".join(CORPUS.split()[:60]), "alice met bob"]
    served = ServedModel(path, precision="fp32")
    items = served.prepare_classify(texts, None)
    assert len(items[0].payload["windows"]) == (9 if long_text == "windows" else 1)  # 60 tokens, 10 a window, step 7
    got = served.run("classify", [it.payload for it in items])
    loaded, task, prep, tok = load_finetuned(str(path))
    examples = task.read(str(_tsv(tmp_path, texts)), prep, require_labels=False)
    want = task.predict(loaded, TaskData(examples, task.encode(tok, examples, loaded.head_config, prep), tok,
                                         loaded.head_config, Infer(precision="fp32")))
    assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-5)


def _tsv(tmp_path: Path, texts: list[str]) -> Path:
    path = tmp_path / "in.tsv"
    path.write_text("sentence\n" + "\n".join(texts) + "\n")
    return path


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=12)
TEXTS = st.lists(st.text(max_size=250) | JSON, max_size=10) | JSON
BODIES = st.one_of(
    JSON,
    st.fixed_dictionaries({"texts": TEXTS}, optional={"text_pairs": TEXTS, "normalize": JSON}),
    st.fixed_dictionaries({"question": st.text(max_size=60) | JSON, "context": st.text(max_size=250) | JSON}),
    st.fixed_dictionaries({"prompt": st.text(max_size=40) | JSON},
                          optional={"max_new_tokens": st.integers(-2, 70) | JSON,
                                    "temperature": st.floats() | st.floats(0, 0.05) | JSON, "top_k": st.integers(-1, 10**6) | JSON,
                                    "top_p": st.floats() | JSON, "seed": st.integers() | JSON}))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(server=st.sampled_from(["classify", "ner", "qa", "generate"]),
       endpoint=st.sampled_from(["classify", "ner", "qa", "embed", "generate"]),
       body=BODIES | st.binary(max_size=64))
def test_fuzz_never_5xx(servers, client, server, endpoint, body):
    content = body if isinstance(body, bytes) else json.dumps(body)
    r = client.post(f"{servers[server]}/v1/{endpoint}", content=content,
                    headers={"content-type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text)
    assert r.status_code == 200 or isinstance(r.json()["detail"], str)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_the_request_in_flight(model_dirs):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PLMKIT_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "plmkit.cli", "serve", "--model", str(model_dirs["classify"]),
                             "--port", str(port), "--max-wait-ms", "1500", "--threads", "1", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 120                       # importing torch is slow on a busy machine
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.time() < deadline, "server did not start"
                time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(httpx.post, url + "/v1/classify", json={"texts": ["alice met bob"]}, timeout=30)
            time.sleep(0.5)                                # the request now waits in the batcher (1.5 s)
            assert not reply.done()
            proc.send_signal(signal.SIGTERM)
            r = reply.result()
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] in ("negative", "positive")
        # uvicorn drains, then re-raises the signal it caught; plmkit takes that as a clean stop: exit 0
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_micro_batched_answers_equal_unbatched_ones_with_zero_errors(servers, model_dirs):
    """64 requests of 1-4 texts of mixed lengths from 32 concurrent clients, some with bad input:
    the batching server (max batch 32, 50 ms) answers every good one exactly as a --max-batch 1
    server does, refuses every bad one with 422, and nothing else fails."""
    solo = ThreadServer(create_app(ServedModel(model_dirs["classify"], precision="fp32"),
                                   Limits(**{**LIMITS, "max_batch": 1})))
    words = CORPUS.split()
    text = lambda i, k: " ".join(words[(7 * i + k) % 40:][:1 + (i * k) % 13])      # noqa: E731  1-13 words
    bodies = [{"texts": [text(i, k) for k in range(1 + i % 4)]} for i in range(64)]
    for i in range(5, 64, 16):
        bodies[i] = {"texts": ["x" * 300]}                # over --max-chars: 422 for this request alone
    try:
        def ask(url):
            with ThreadPoolExecutor(32) as pool:
                return list(pool.map(lambda b: httpx.post(url + "/v1/classify", json=b, timeout=30), bodies))
        batched, unbatched = ask(servers["classify"]), ask(solo.url)
    finally:
        solo.stop()
    bad = set(range(5, 64, 16))
    assert [r.status_code for r in batched] == [422 if i in bad else 200 for i in range(64)]
    assert [r.status_code for r in unbatched] == [r.status_code for r in batched]
    for b, u in zip(batched, unbatched):
        if b.status_code == 200:
            got, want = b.json()["predictions"], u.json()["predictions"]
            assert [p["label"] for p in got] == [p["label"] for p in want]
            assert [p["score"] for p in got] == pytest.approx([p["score"] for p in want], abs=1e-5)
