"""Continuous batching of streams: a batch mid-decode takes in newcomers (models/generate.py's
``merge``), drops the rows that ended (``select``) and stays within the context
(serve/streams.py); a greedy stream's tokens are the same alone, together or joined mid-way; over
HTTP, a stream that arrives while another decodes gets its first token before that one ends."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the tiny Llama is made with transformers (pip install .[hf])")
pytest.importorskip("fastapi", reason="serve extra not installed (pip install 'plmkit[serve]')")
httpx = pytest.importorskip("httpx")

from decoders import make_hf_decoder  # noqa: E402
from plmkit.models.generate import Decoding, choose, generate, merge, next_logits, select  # noqa: E402
from plmkit.serve.app import Limits, create_app  # noqa: E402
from plmkit.serve.backend import ServedModel  # noqa: E402
from plmkit.serve.streams import Stream, run_streams  # noqa: E402
from serve_fixtures import LIMITS, batches  # noqa: E402
from test_serve import ThreadServer  # noqa: E402

PROMPTS = [[5, 17, 33], [9, 41, 12, 77, 60, 3, 28], [101, 7, 55, 200, 14]]
PAD = 0


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_hf_decoder(tmp_path_factory.mktemp("streams") / "llama", "llama", "llama3", scale=6.0)


@pytest.fixture(scope="module")
def served(llama) -> ServedModel:
    sm = ServedModel(llama, precision="fp32")
    sm.eos = []                                  # every row makes all of its max_tokens: lengths are known
    return sm


def _left_padded(prompts: list[list[int]]) -> Decoding:
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return Decoding(ids, mask)


def _decode(model, state: Decoding, steps: int) -> list[list[int]]:
    """Greedy steps of ``state``: each row's tokens."""
    out = [[] for _ in range(state.ids.size(0))]
    for _ in range(steps):
        nxt = choose(next_logits(model, state), 0.0)
        state.append(nxt)
        for row, t in zip(out, nxt.tolist()):
            row.append(t)
    return out


def _alone(model, prompt: list[int], n: int) -> list[int]:
    return generate(model, torch.tensor([prompt]), max_new_tokens=n, temperature=0)[0, len(prompt):].tolist()


@pytest.mark.parametrize("first, later", [([0, 1], [2]), ([2], [0, 1])])
def test_merged_batches_of_different_lengths_give_each_row_its_greedy_tokens_alone(served, first, later):
    """A batch 4 steps into decoding and one just past its prompt (shorter, then longer) merge; the
    rows decode on together, then the row of the longest prompt is dropped: every row's tokens equal
    its tokens decoded alone, and no column left is padding in every row."""
    model = served.backend.model
    a, b = _left_padded([PROMPTS[i] for i in first]), _left_padded([PROMPTS[i] for i in later])
    tokens = _decode(model, a, 4) + _decode(model, b, 1)
    state = merge(a, b, PAD)
    assert state.ids.size(1) == max(a.ids.size(1), b.ids.size(1)) and state.past[0][0].size(2) == state.ids.size(1) - 1
    for row, more in zip(tokens, _decode(model, state, 6)):
        row += more
    order = first + later
    keep = [r for r, i in enumerate(order) if i != 1]
    state = select(state, keep)
    assert bool(state.mask[:, 0].any()) and state.ids.size(0) == 2
    for r, more in zip(keep, _decode(model, state, 3)):
        tokens[r] += more
    for r, i in enumerate(order):
        assert tokens[r] == _alone(model, PROMPTS[i], len(tokens[r])), (order, r)


class Arrivals:
    """A stand-in for the batcher's Joining: hands over ``arrivals[n]`` at its n-th ``take``; records
    which rows ended, in order, and what each row's stream held then."""

    def __init__(self, arrivals: dict[int, list[dict]]):
        self.arrivals, self.takes, self.ended = arrivals, 0, []

    def take(self, busy: int) -> list[dict]:
        self.takes += 1
        return self.arrivals.pop(self.takes, [])

    def finish(self, payload: dict, result: dict) -> None:
        self.ended.append((payload["text"], result["completion_tokens"]))


def _payload(sm: ServedModel, text: str, max_tokens: int) -> dict:
    item = sm.prepare_stream(Stream(None), text, None, max_tokens, 0.0, None, None)[0]
    return {**item.payload, "text": text}


def _watch(sm: ServedModel, monkeypatch) -> list[tuple[int, int]]:
    """(rows, columns) of every model call."""
    shapes, step = [], sm.backend.next_logits

    def next_logits(state):
        shapes.append(tuple(state.ids.shape))
        return step(state)
    monkeypatch.setattr(sm.backend, "next_logits", next_logits)
    return shapes


def test_a_stream_joins_a_running_batch_and_leaves_it_when_done(served, monkeypatch):
    """A short stream arrives 3 steps into a long one: it is prefilled alone, then decodes in the
    long one's batch; it ends first and leaves (the batch is one row again, and the columns of its
    longer prompt are cut away); both streams' tokens are their tokens alone."""
    alone = {t: run_streams(served, [_payload(served, t, n)])[0]["text"] for t, n in (("The cat", 30),
                                                                                     ("Paris is the capital of", 4))}
    long, short = _payload(served, "The cat", 30), _payload(served, "Paris is the capital of", 4)
    arrivals = Arrivals({3: [short]})
    shapes = _watch(served, monkeypatch)
    run_streams(served, [long], arrivals)
    assert arrivals.ended == [("Paris is the capital of", 4), ("The cat", 30)]        # the short one ended first
    assert [long["stream"].text, short["stream"].text] == [alone["The cat"], alone["Paris is the capital of"]]
    n, width = len(long["ids"]), len(short["ids"])
    joined = shapes.index((1, width))                           # the newcomer's prompt, prefilled alone
    assert shapes[:joined] == [(1, n)] + [(1, n + k) for k in range(1, joined)]       # the long one, 3 steps
    assert shapes[joined + 1:joined + 4] == [(2, width + 1 + k) for k in range(3)]    # then together
    assert shapes[joined + 4] == (1, n + joined + 3) and len(shapes) == 1 + 30        # dropped: one row, cut


def test_a_newcomer_that_would_overrun_the_context_waits_until_it_fits(served, monkeypatch):
    """A running row needs 110 more tokens; a prompt of ~20 tokens padded in next to it would leave
    too little room, so it joins only once the running row's remaining tokens fit beside it."""
    limit = served.config.max_position
    text = "The quick brown fox jumps over the lazy dog. I like green apples and red pears."
    long = _payload(served, "Two", limit - 8)
    late = _payload(served, text, 6)
    shapes = _watch(served, monkeypatch)
    arrivals = Arrivals({1: [late]})
    run_streams(served, [long], arrivals)
    assert max(c for _, c in shapes) <= limit and len(long["stream"].ids) == limit - 8 and len(late["stream"].ids) == 6
    joined = shapes.index((1, len(late["ids"])))
    assert joined > 2                                           # it arrived after step 1 and waited
    # at the merge, the running row's length then and its tokens still to come fit: no step earlier
    length, left = len(long["ids"]) + joined, limit - 8 - joined
    assert max(length, len(late["ids"]) + 1) + left <= limit < max(length - 1, len(late["ids"]) + 1) + left + 1
    assert late["stream"].text == run_streams(served, [_payload(served, text, 6)])[0]["text"]


def test_a_stream_arriving_while_another_decodes_gets_its_first_token_before_that_one_ends(llama):
    """Over HTTP with the real batcher: stream 2 starts after stream 1's first event (each model step
    is slowed to 10 ms, so stream 1 runs >= 0.6 s); its first event comes before stream 1's end, the
    two decode in one batch (/metrics), and both texts equal their answers alone."""
    sm = ServedModel(llama, precision="fp32")
    step = sm.backend.next_logits
    sm.backend.next_logits = lambda state: (time.sleep(0.01), step(state))[1]
    server = ThreadServer(create_app(sm, Limits(**LIMITS)))
    url = server.url + "/v1/completions"
    asks = [{"model": "llama", "prompt": "The cat", "max_tokens": 60, "temperature": 0},
            {"model": "llama", "prompt": "Paris is the capital of", "max_tokens": 3, "temperature": 0}]
    try:
        alone = [httpx.post(url, json=ask, timeout=30).json()["choices"][0]["text"] for ask in asks]
        before = batches(httpx.get(server.url + "/metrics").text, "stream")
        events: list[list[tuple[float, str]]] = [[], []]
        started = threading.Event()

        def read(i: int) -> None:
            with httpx.stream("POST", url, json={**asks[i], "stream": True}, timeout=30) as s:
                for line in s.iter_lines():
                    if line.startswith("data: "):
                        events[i].append((time.perf_counter(), line[6:]))
                        started.set()

        first = threading.Thread(target=read, args=(0,))
        first.start()
        assert started.wait(30)
        read(1)
        first.join(30)
        after = batches(httpx.get(server.url + "/metrics").text, "stream")
    finally:
        server.stop()
    assert events[0][-1][1] == events[1][-1][1] == "[DONE]"
    chunks = [[(t, json.loads(d)["choices"][0]) for t, d in ev[:-1]] for ev in events]
    assert ["".join(c["text"] for _, c in ch) for ch in chunks] == alone
    first_token = next(t for t, c in chunks[1] if c["text"])
    assert first_token < events[0][-1][0]                       # stream 2's first token while stream 1 still ran
    assert (after[1] - before[1], after[0] - before[0]) == (1, 0)      # one model batch, of both streams
