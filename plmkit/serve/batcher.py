"""Micro-batching: merge the items of concurrent requests into few model calls.

Requests put their items (texts, questions, prompts) on one queue and await one future per
item. A single collector task on the event loop takes the first waiting item, then keeps
collecting until it has ``max_batch`` items or ``max_wait`` has passed since that first
item; it also takes whatever else is already queued (up to ``GROUP_WINDOW`` batches'
worth: items that piled up while the previous call ran). The haul is split by batch key
(endpoint, plus e.g. prompt length for generation), sorted by token length and cut into
batches of at most ``max_batch``, so each batch pads little. Each batch runs on one
dedicated model thread: torch is never called concurrently, and the event loop stays free
to accept and parse requests meanwhile. Results go to each item's own future, so every
caller gets its own answers in its own order.

``close()`` lets everything already queued run, then stops: with uvicorn's graceful
shutdown (in-flight requests finish first) nothing accepted is dropped.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

log = logging.getLogger("plmkit.serve")

# Take up to this many batches' worth of already-waiting items per round. Grouping by length
# needs a wide window: on SST-2 sentences cut into batches of 32, sorting 128 waiting texts
# leaves 1.53x padded/real tokens, sorting 512 leaves 1.13x.
GROUP_WINDOW = 16

RunBatch = Callable[[str, list[Any]], list[Any]]          # (endpoint, payloads) -> one result per payload


@dataclass
class Job:
    endpoint: str
    key: Hashable
    length: int
    payload: Any
    future: asyncio.Future = field(repr=False)


class ServerClosing(Exception):
    """The server is shutting down and takes no new work."""


class MicroBatcher:
    def __init__(self, run: RunBatch, max_batch: int = 32, max_wait_ms: float = 5.0,
                 on_batch: Callable[[str, int], None] | None = None):
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch or (lambda endpoint, size: None)
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plmkit-model")
        self._task: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect_forever(), name="plmkit-batcher")

    async def close(self) -> None:
        """Run what is queued, then stop the collector and the model thread."""
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, endpoint: str, items: list[tuple[Hashable, int, Any]]) -> list[Any]:
        """items: (batch key, token length, payload). Returns one result per item, in order.

        Cancelling the caller (a request timeout) cancels its items still waiting in the queue.
        """
        if self._closing or self._task is None or self._task.done():
            raise ServerClosing("the server is shutting down")
        loop = asyncio.get_running_loop()
        futures = []
        for key, length, payload in items:
            fut = loop.create_future()
            self._queue.put_nowait(Job(endpoint, (endpoint, key), length, payload, fut))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                break
            jobs = [first]
            deadline = loop.time() + self.max_wait
            while len(jobs) < self.max_batch and not stop:
                try:
                    job = await asyncio.wait_for(self._queue.get(), deadline - loop.time())
                except asyncio.TimeoutError:
                    break
                stop = job is None
                if job is not None:
                    jobs.append(job)
            while not stop and len(jobs) < self.max_batch * GROUP_WINDOW and not self._queue.empty():
                job = self._queue.get_nowait()
                stop = job is None
                if job is not None:
                    jobs.append(job)
            for batch in self._group(jobs):
                await self._run_batch(batch)

    def _group(self, jobs: list[Job]) -> list[list[Job]]:
        """Same key together, sorted by length, cut into batches of at most max_batch."""
        by_key: dict[Hashable, list[Job]] = defaultdict(list)
        for job in jobs:
            by_key[job.key].append(job)
        batches = []
        for group in by_key.values():
            group.sort(key=lambda j: j.length)
            batches += [group[i:i + self.max_batch] for i in range(0, len(group), self.max_batch)]
        return batches

    async def _run_batch(self, batch: list[Job]) -> None:
        batch = [j for j in batch if not j.future.done()]      # callers that timed out meanwhile
        if not batch:
            return
        endpoint = batch[0].endpoint
        self.on_batch(endpoint, len(batch))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run, endpoint, [j.payload for j in batch])
        except Exception as e:  # noqa: BLE001 - a failed batch must fail its callers, never the collector
            log.exception("batch of %d on %s failed", len(batch), endpoint)
            for j in batch:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        for j, r in zip(batch, results):
            if not j.future.done():
                j.future.set_result(r)
