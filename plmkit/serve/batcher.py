"""Micro-batching: merge the items of concurrent requests into few model calls.

Where the time went before (64 loopback clients, 8 SST-2 sentences a request, 2 cores): each
request tokenised its texts on the event loop, put one queue entry and one future per text on
an ``asyncio.Queue`` and the collector awaited ``wait_for(queue.get())`` per text (a timer and a
task each); then every batch was a separate hop to the model thread and back. With the INT8
ONNX model a batch of 32 takes only a few milliseconds, so that per-text and per-batch event
loop work, not the model, bounded the served throughput.

Now a request is one ``Job`` (its raw input and a ``prepare`` callable that tokenises it),
appended to a plain deque; the collector wakes on one event, waits at most ``max_wait`` after
the first job for ``max_batch`` items, takes whatever else is waiting (up to ``GROUP_WINDOW``
batches' worth: requests that piled up while the model ran) and hands the whole haul to the
single model thread in one hop. There, each job is tokenised (``prepare``: bad input fails that
job alone, as HTTP 422), the items are split by batch key (endpoint, plus e.g. prompt length for
generation), sorted by token length and cut into batches of at most ``max_batch`` where the
padding they save outweighs the cost of one more model call (``cut_by_length``), and each batch
runs; the jobs a batch completes are handed back to the event loop with
one ``call_soon_threadsafe`` per batch, so early requests need not wait for the whole haul.
torch is never called concurrently, and the event loop only parses, routes and answers.

Continuous batching (streams, serve/streams.py): a job submitted with a ``join`` key may enter
a batch of its endpoint and key that is already running. Such a batch gets a ``Joining``: between
two decoding steps it takes the compatible jobs from the head of the queue (tokenised there, on the
model thread) and answers each row as soon as that row ends. It takes from the head only, so a job
of another kind waiting there stops the joining: the batch drains and that job runs next, never
starved by a stream of newcomers; and only the last batch of a haul joins, so no batch of the same
haul waits behind it.

``close()`` lets everything already queued run, then stops: with uvicorn's graceful
shutdown (in-flight requests finish first) nothing accepted is dropped.
"""
from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from ..errors import PlmkitError

log = logging.getLogger("plmkit.serve")

# Take up to this many batches' worth of already-waiting items per round. Grouping by length
# needs a wide window: on SST-2 sentences cut into batches of 32, sorting 128 waiting texts
# leaves 1.53x padded/real tokens, sorting 512 leaves 1.13x.
GROUP_WINDOW = 16

# What one more model call costs, in padded token rows (a row: one token of one text), when the
# server does not say (``ServedModel.call_rows``: the backend's, infinite for decoding).
CALL_ROWS = 8

RunBatch = Callable[[str, list[Any]], list[Any]]          # (endpoint, payloads) -> one result per payload
WorkItem = tuple[Hashable, int, Any]                      # (batch key, token length, payload)
Prepare = Callable[[], list[WorkItem]]                    # runs on the model thread


@dataclass(eq=False)
class Job:
    """One request: ``size`` items once prepared (texts; 1 for a question or a prompt)."""
    endpoint: str
    size: int
    prepare: Prepare
    future: asyncio.Future = field(repr=False)
    arrived: float = 0.0
    join: Hashable = None                                  # not None: may enter a running batch of its kind
    results: list[Any] = field(default_factory=list, repr=False)
    left: int = 0                                          # items not yet answered


class ServerClosing(Exception):
    """The server is shutting down and takes no new work."""


class MicroBatcher:
    def __init__(self, run: RunBatch, max_batch: int = 32, max_wait_ms: float = 5.0,
                 on_batch: Callable[[str, int], None] | None = None,
                 call_rows: Callable[[str], float] = lambda endpoint: CALL_ROWS):
        self.run = run
        self.max_batch = max_batch
        self.call_rows = call_rows
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch or (lambda endpoint, size: None)
        self._jobs: deque[Job] = deque()
        self._wake: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plmkit-model")
        self._task: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._collect_forever(), name="plmkit-batcher")

    async def close(self) -> None:
        """Run what is queued, then stop the collector and the model thread."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, endpoint: str, size: int, prepare: Prepare, join: Hashable = None) -> list[Any]:
        """One request of ``size`` items; ``prepare()`` (run on the model thread) returns them as
        (batch key, token length, payload). Returns one result per item, in order; a
        ``PlmkitError`` of ``prepare`` is raised here. Cancelling the caller (a request timeout)
        drops its job if it has not run yet. ``join``: the key of the running batches this job
        may enter (its items' batch key; None: it waits for a batch of its own)."""
        if self._closing or self._task is None or self._task.done():
            raise ServerClosing("the server is shutting down")
        loop = asyncio.get_running_loop()
        job = Job(endpoint, max(size, 1), prepare, loop.create_future(), loop.time(), join)
        self._jobs.append(job)
        self._wake.set()
        return await job.future

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._fill(loop, self._jobs[0].arrived + self.max_wait)
            haul, items = [], 0
            while self._jobs and items < self.max_batch * GROUP_WINDOW:
                job = self._jobs.popleft()
                if not job.future.done():                  # callers that timed out meanwhile
                    haul.append(job)
                    items += job.size
            if haul:
                await self._hand_off(loop, haul)

    async def _fill(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Wait until ``max_batch`` items are queued, ``deadline`` passes or the server closes."""
        while not self._closing and sum(j.size for j in self._jobs) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _hand_off(self, loop: asyncio.AbstractEventLoop, haul: list[Job]) -> None:
        try:
            await loop.run_in_executor(self._executor, self._work, loop, haul)
        except Exception as e:  # noqa: BLE001 - a failed haul must fail its callers, never the collector
            log.exception("a haul of %d requests failed", len(haul))
            for job in haul:
                if not job.future.done():
                    job.future.set_exception(e)

    # -- the model thread -----------------------------------------------------------------

    def _work(self, loop: asyncio.AbstractEventLoop, haul: list[Job]) -> None:
        """Tokenise every job, group its items, run the batches; answer jobs as they complete."""
        by_key: dict[Hashable, list[tuple[int, Job, int, Any]]] = defaultdict(list)
        for job, items in _prepared(loop, haul):
            for i, (key, length, payload) in enumerate(items):
                by_key[(job.endpoint, key)].append((length, job, i, payload))
        batches = []
        for (endpoint, _), group in by_key.items():
            group.sort(key=lambda g: g[0])
            batches += [(endpoint, b) for b in cut_by_length(group, self.max_batch, self.call_rows(endpoint))]
        for n, (endpoint, batch) in enumerate(batches):
            batch = [b for b in batch if not b[1].future.done()]
            join = _common_join(batch) if n == len(batches) - 1 else None     # none of the haul waits behind it
            if batch and join is not None:
                self._run_joining(loop, endpoint, join, batch)
            elif batch:
                self._run_batch(loop, endpoint, batch)

    def _take_head(self, endpoint: str, join: Hashable, room: int) -> list[Job]:
        """The jobs of ``endpoint`` and ``join`` at the head of the queue, at most ``room`` items,
        taken off it; stops at the first job of another kind (it runs next, once this batch
        drains). Safe from the model thread: while a haul runs the collector awaits it, so this is
        the queue's only consumer, and the event loop only appends (atomic on a deque)."""
        taken: list[Job] = []
        while self._jobs and room > 0:
            job = self._jobs[0]
            if job.future.done():                          # its caller timed out meanwhile
                self._jobs.popleft()
                continue
            if job.endpoint != endpoint or job.join != join or job.size > room:
                break
            taken.append(self._jobs.popleft())
            room -= job.size
        return taken

    def _run_joining(self, loop: asyncio.AbstractEventLoop, endpoint: str, join: Hashable,
                     batch: list[tuple[int, Job, int, Any]]) -> None:
        """A batch that takes in newcomers as it runs: rows are answered as they end (``Joining``)."""
        joining = Joining(self, loop, endpoint, join, [(job, i, payload) for _, job, i, payload in batch])
        payloads = [payload for _, _, _, payload in batch]
        try:
            results = self.run(endpoint, payloads, joining)
        except Exception as e:  # noqa: BLE001 - a failed batch must fail its callers, never the model thread
            log.exception("batch of %d on %s failed", joining.size, endpoint)
            joining.fail(e)
            return
        for payload, result in zip(payloads, results):
            joining.finish(payload, result)                # no-op for rows answered already
        loop.call_soon_threadsafe(self.on_batch, endpoint, joining.size)

    def _run_batch(self, loop: asyncio.AbstractEventLoop, endpoint: str,
                   batch: list[tuple[int, Job, int, Any]]) -> None:
        try:
            results = self.run(endpoint, [payload for _, _, _, payload in batch])
        except Exception as e:  # noqa: BLE001 - a failed batch must fail its callers, never the model thread
            log.exception("batch of %d on %s failed", len(batch), endpoint)
            _fail(loop, [job for _, job, _, _ in batch], e, (self.on_batch, endpoint, len(batch)))
            return
        done = []
        for (_, job, i, _), r in zip(batch, results):
            job.results[i] = r
            job.left -= 1
            if job.left == 0:
                done.append((job, None))
        loop.call_soon_threadsafe(_answer, done, (self.on_batch, endpoint, len(batch)))


class Joining:
    """A running batch of jobs submitted with a join key (serve/streams.py decodes one). Between
    two steps it ``take``s the jobs of its kind that queued since it started; it answers each row
    as soon as the row ends (``finish``): newcomers may keep the batch going for long, and a row
    that ended must not wait for the batch. Used on the model thread only."""

    def __init__(self, batcher: MicroBatcher, loop: asyncio.AbstractEventLoop, endpoint: str, join: Hashable,
                 rows: list[tuple[Job, int, Any]]):
        self._batcher, self._loop, self._endpoint, self._join = batcher, loop, endpoint, join
        self._open: dict[int, tuple[Job, int, Any]] = {}        # id(payload) -> its job, index, payload
        self.size = 0                                           # rows run, newcomers included (metrics)
        self._add(rows)

    def _add(self, rows: list[tuple[Job, int, Any]]) -> None:
        for job, i, payload in rows:
            self._open[id(payload)] = (job, i, payload)
        self.size += len(rows)

    def take(self, busy: int) -> list[Any]:
        """The payloads of the newly queued jobs that may join now, tokenised (a refused one is
        answered at once); ``busy``: rows running or waiting, the batch stays within max_batch."""
        jobs = self._batcher._take_head(self._endpoint, self._join, self._batcher.max_batch - busy)
        rows = [(job, i, payload) for job, items in _prepared(self._loop, jobs)
                for i, (_, _, payload) in enumerate(items)]
        self._add(rows)
        return [payload for _, _, payload in rows]

    def finish(self, payload: Any, result: Any) -> None:
        """``payload``'s row ended with ``result``: its job is answered once all of its rows are."""
        row = self._open.pop(id(payload), None)
        if row is None:                                         # answered already
            return
        job, i, _ = row
        job.results[i] = result
        job.left -= 1
        if job.left == 0:
            self._loop.call_soon_threadsafe(_answer, [(job, None)])

    def fail(self, error: BaseException) -> None:
        """The batch failed: every job with a row not yet answered gets ``error``."""
        jobs = [job for job, _, _ in self._open.values()]
        self._open.clear()
        _fail(self._loop, jobs, error, (self._batcher.on_batch, self._endpoint, self.size))


def _prepared(loop: asyncio.AbstractEventLoop, jobs: list[Job]) -> list[tuple[Job, list[WorkItem]]]:
    """Tokenise each job (on the model thread): the jobs with their items. Bad input fails that
    request alone (a 422), answered at once, as is a job with no items."""
    ready, refused = [], []
    for job in jobs:
        try:
            items = job.prepare()
        except PlmkitError as e:
            refused.append((job, e))
            continue
        job.results, job.left = [None] * len(items), len(items)
        if items:
            ready.append((job, items))
        else:
            refused.append((job, None))
    if refused:
        loop.call_soon_threadsafe(_answer, refused)
    return ready


def _fail(loop: asyncio.AbstractEventLoop, jobs: list[Job], error: BaseException, observe: tuple) -> None:
    """A batch failed: each of its jobs (once, however many rows it had there) gets ``error``."""
    failed = list({id(job): job for job in jobs}.values())
    for job in failed:
        job.left = -1                                      # never answered with results now
    loop.call_soon_threadsafe(_answer, [(job, error) for job in failed], observe)


def _common_join(batch: list[tuple[int, Job, int, Any]]) -> Hashable:
    """The join key the jobs of ``batch`` that have one share (None: the batch runs as it is). Its
    other jobs (e.g. non-streamed answers) came in the same haul; their rows are answered as they end."""
    keys = {job.join for _, job, _, _ in batch if job.join is not None}
    return keys.pop() if len(keys) == 1 else None


def _answer(jobs: list[tuple[Job, BaseException | None]], observe: tuple | None = None) -> None:
    """On the event loop: resolve each job's future (its results, or the exception)."""
    if observe is not None:
        on_batch, endpoint, size = observe
        on_batch(endpoint, size)
    for job, error in jobs:
        if job.future.done():
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(job.results)


def cut_by_length(group: list[tuple[int, Any, Any, Any]], max_batch: int, call_rows: float) -> list[list]:
    """Items sorted by token length (each a tuple whose first entry is the length), cut into
    consecutive batches of at most ``max_batch`` that minimise the work: the padded token rows of
    every batch (its size x its longest length) plus ``call_rows`` per batch. Fixed cuts of
    ``max_batch`` waste the most where lengths spread: on 256 waiting SST-2 sentences (13 tokens on
    average) they run 1.27x the real token rows, these cuts 1.04x at ``call_rows`` 16 (1.02x at 8,
    in 2.7x the calls). Items of one length (a generation batch key) get the fixed cuts, full
    batches first. Dynamic programming over the cut points: O(len(group) x max_batch). An infinite
    ``call_rows`` (a call that decodes: cutting it would run a second decoding after the first)
    gives the fixed cuts."""
    n = len(group)
    if math.isinf(call_rows):
        return [group[i:i + max_batch] for i in range(0, n, max_batch)]
    best = [0.0] + [float("inf")] * n          # best[j]: the least work for the first j items
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = group[j - 1][0]
        for i in range(j - 1, max(0, j - max_batch) - 1, -1):     # ties keep the later cut: full batches first
            work = best[i] + call_rows + (j - i) * longest
            if work < best[j]:
                best[j], start[j] = work, i
    cuts, j = [], n
    while j:
        cuts.append(group[start[j]:j])
        j = start[j]
    return cuts[::-1]
