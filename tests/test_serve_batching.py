"""The micro-batcher on its own: one hand-off per haul, tokenising on the model thread,
grouping by key and length, bad input failing only its own request."""
from __future__ import annotations

import asyncio
import math
import threading
from types import SimpleNamespace

import pytest

from plmkit.errors import PlmkitError
from plmkit.serve.batcher import MicroBatcher, cut_by_length


def _serve(batcher: MicroBatcher, requests: list[tuple[str, list[str]]]) -> list:
    """Submit every request at once (as concurrent clients would); results or exceptions, in order."""
    async def main():
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(ep, len(texts), _prepare(texts)) for ep, texts in requests),
                                        return_exceptions=True)
        finally:
            await batcher.close()
    return asyncio.run(main())


THREADS: list[str] = []


def _prepare(texts: list[str]):
    def prepare():
        THREADS.append(threading.current_thread().name)
        if "bad" in texts:
            raise PlmkitError("bad text")
        return [(None, len(t), t) for t in texts]
    return prepare


def test_a_haul_is_tokenised_and_run_on_the_model_thread_in_length_sorted_batches():
    calls = []

    def run(endpoint, payloads):
        calls.append((endpoint, threading.current_thread().name, list(payloads)))
        return [f"{endpoint}:{p}" for p in payloads]

    THREADS.clear()
    requests = [("classify", ["aaaa", "b", "ccc"]), ("classify", ["bad"]), ("embed", ["xx", "y"]),
                ("classify", ["dd", "eeeee", "f", "gggggg"])]
    got = _serve(MicroBatcher(run, max_batch=3, max_wait_ms=200), requests)
    # every caller gets its own answers in its own order; the bad request alone fails
    assert got[0] == ["classify:aaaa", "classify:b", "classify:ccc"]
    assert isinstance(got[1], PlmkitError) and str(got[1]) == "bad text"
    assert got[2] == ["embed:xx", "embed:y"]
    assert got[3] == ["classify:dd", "classify:eeeee", "classify:f", "classify:gggggg"]
    # tokenising and the model both ran on the one model thread, never on the event loop
    assert set(THREADS) == {c[1] for c in calls} and all(n.startswith("plmkit-model") for n in THREADS)
    # one haul: the 7 classify texts sorted by length and cut into batches of at most 3 (3 calls, as
    # fixed cuts, but 26 padded rows instead of 27), embed apart
    assert [(ep, p) for ep, _, p in calls] == [("classify", ["b", "f", "dd"]), ("classify", ["ccc", "aaaa"]),
                                               ("classify", ["eeeee", "gggggg"]), ("embed", ["y", "xx"])]


def test_cuts_trade_padding_against_calls():
    lengths = lambda batches: [[item[0] for item in b] for b in batches]   # noqa: E731
    mixed = [(n,) for n in [10] * 5 + [50] * 3]
    # one batch pads 8 x 50 = 400 rows; two pad 5 x 10 + 3 x 50 = 200, worth a call of 8 rows
    assert lengths(cut_by_length(mixed, 8, 8)) == [[10] * 5, [50] * 3]
    assert lengths(cut_by_length(mixed, 8, 1000)) == [[10] * 5 + [50] * 3]       # a call dearer than the padding
    assert lengths(cut_by_length(mixed, 4, 8)) == [[10] * 4, [10], [50] * 3]     # max_batch holds
    assert [len(b) for b in cut_by_length([(7,)] * 20, 8, 8)] == [8, 8, 4]        # one length: fixed cuts
    assert cut_by_length([], 8, 8) == []
    assert lengths(cut_by_length(mixed * 2, 12, math.inf)) == [[10] * 5 + [50] * 3 + [10] * 4, [10, 50, 50, 50]]


def test_decoding_endpoints_are_never_cut_to_save_padding():
    from plmkit.serve.backend import DECODING, ServedModel
    served = SimpleNamespace(backend=SimpleNamespace(call_rows=16))
    assert ServedModel.call_rows(served, "embed") == 16
    assert set(DECODING) == {"generate", "stream"}
    assert all(math.isinf(ServedModel.call_rows(served, e)) for e in DECODING)


def test_max_batch_one_runs_every_item_alone_with_the_same_answers():
    calls = []

    def run(endpoint, payloads):
        calls.append(len(payloads))
        return [p.upper() for p in payloads]

    requests = [("classify", [f"t{i}", f"u{i}"]) for i in range(5)]
    got = _serve(MicroBatcher(run, max_batch=1, max_wait_ms=1), requests)
    assert got == [[f"T{i}", f"U{i}"] for i in range(5)] and calls == [1] * 10


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on():
    def run(endpoint, payloads):
        if "boom" in payloads:
            raise RuntimeError("model failed")
        return payloads

    async def main():
        b = MicroBatcher(run, max_batch=1, max_wait_ms=1)
        b.start()
        first = await asyncio.gather(b.submit("classify", 2, _prepare(["ok", "boom"])), return_exceptions=True)
        second = await b.submit("classify", 1, _prepare(["fine"]))
        await b.close()
        return first[0], second

    error, second = asyncio.run(main())
    assert isinstance(error, RuntimeError) and second == ["fine"]


def test_closing_runs_what_is_queued_and_refuses_new_work():
    from plmkit.serve.batcher import ServerClosing

    async def main():
        b = MicroBatcher(lambda ep, p: p, max_batch=32, max_wait_ms=10_000)    # would wait 10 s for company
        b.start()
        pending = asyncio.ensure_future(b.submit("classify", 1, _prepare(["queued"])))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(b.close(), 5)
        with pytest.raises(ServerClosing):
            await b.submit("classify", 1, _prepare(["late"]))
        return await pending

    assert asyncio.run(main()) == ["queued"]


def test_a_running_batch_takes_jobs_of_its_kind_from_the_head_of_the_queue_only():
    """Continuous batching: a batch of jobs submitted with a join key takes, as it runs, the jobs of
    its endpoint and key queued since; one of another kind at the head stops that (it runs next, not
    starved), and a row taken in is answered as soon as it ends, before the batch is."""
    go, calls, order = threading.Event(), [], []

    def run(endpoint, payloads, joining=None):
        rows = list(payloads)
        if joining is not None:
            go.wait(5)                                          # "a" decodes while the others queue
            rows += joining.take(len(rows))
            for p in rows[len(payloads):]:
                joining.finish(p, f"{endpoint}:{p}")
        calls.append((endpoint, rows))
        return [f"{endpoint}:{p}" for p in payloads]

    def submit(b, endpoint, text, key):
        job = asyncio.ensure_future(b.submit(endpoint, 1, lambda: [(key, len(text), text)], join=key))
        job.add_done_callback(lambda _: order.append(text))
        return job

    async def main():
        b = MicroBatcher(run, max_batch=8, max_wait_ms=1)
        b.start()
        first = submit(b, "stream", "a", "k")
        await asyncio.sleep(0.2)                                # handed to the model thread, waiting for go
        later = [submit(b, *job) for job in (("stream", "b", "k"), ("other", "c", None), ("stream", "d", "k"))]
        await asyncio.sleep(0.05)
        go.set()
        got = await asyncio.gather(first, *later)
        await b.close()
        return got

    assert asyncio.run(main()) == [["stream:a"], ["stream:b"], ["other:c"], ["stream:d"]]
    assert calls == [("stream", ["a", "b"]), ("other", ["c"]), ("stream", ["d"])]
    assert order == ["b", "a", "c", "d"]
