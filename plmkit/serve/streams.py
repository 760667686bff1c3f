"""Token-by-token generation for the OpenAI routes (serve/openai.py): each request's text goes
out as it is made, cut at its stop strings.

A request is one ``Stream``: the model thread fills it (``push`` per generated token, then
``end``) and the event loop reads its events (``("text", delta)`` ..., then ``("end", reason)``).

Continuous batching: streams with the same sampling settings (``stream_key``) decode as one
left-padded batch, step by step, and after each step every client's new text goes out in one hop
to the event loop. Between two steps the model thread takes the streams that queued meanwhile
(serve/batcher.py's ``Joining``), prefills them together, sends their first token at once and
merges them into the running batch (models/generate.py's ``merge``: the shorter KV cache and mask
are left-padded along time, then rows are stacked). A row that ends (an end-of-text id, a stop
string, its own max_tokens, its client gone) leaves the batch (``select``) and is answered then;
the batch stops when no row is left. A newcomer joins only if every row still gets all of its
max_tokens within the context afterwards; else it waits (first come, first served) until rows
have left or the batch is done. Padding and merging change no row's logits beyond float noise,
so a greedy answer is the same alone, together or joined mid-way. A seeded sample runs alone
(nothing joins it), so its tokens do not depend on its neighbours; a non-streamed answer starts
in a batch, as before, and does not join one mid-way.

Detokenising is incremental (as Text Generation Inference does it): each step decodes the last
few ids and keeps back a character that is still an incomplete UTF-8 sequence ("\\ufffd") and
any tail that may begin a stop string, so no client ever sees text that is later taken back.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
from typing import TYPE_CHECKING, Any, Hashable, Sequence

import torch

from ..models.generate import Decoding, choose, merge, select

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from .backend import ServedModel
    from .batcher import Joining

Event = tuple[str, str]          # ("text", delta) or ("end", finish_reason)


class Stream:
    """One request's generated text. ``loop`` is None when nobody reads along (a non-streamed
    answer: the text comes back as the batch's result)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None, stops: Sequence[str] = ()):
        self.loop = loop
        self.events: asyncio.Queue[Event] | None = asyncio.Queue() if loop is not None else None
        self.started = asyncio.Event()          # set once the prompt is tokenised and accepted
        self.stops = [s for s in stops if s]
        self.left = False                       # the client went away: stop decoding its row
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.ids: list[int] = []
        self.text = ""                          # all text decoded so far
        self._sent = 0                          # characters of it handed out
        self._reported = False                  # the "end" event went out
        self._window = (0, 0)                   # incremental decoding: (prefix start, read position)
        self._tok: Tokenizer | None = None
        self._eos: frozenset[int] = frozenset()
        self._max_new = 0

    # -- the model thread ----------------------------------------------------------------

    def begin(self, tok: Tokenizer, eos: Sequence[int], prompt_tokens: int, max_new: int) -> None:
        """The prompt was accepted (called by ``prepare``): the reader may start answering."""
        self._tok, self._eos, self.prompt_tokens, self._max_new = tok, frozenset(eos), prompt_tokens, max_new
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.started.set)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.left

    def push(self, token: int) -> None:
        if self.done:
            return
        if token in self._eos:
            self.end("stop")
            return
        self.ids.append(token)
        self._decode(final=False)
        if not self.done and len(self.ids) >= self._max_new:
            self.end("length")

    def end(self, reason: str) -> None:
        """No more tokens: flush what was kept back (a stop string found now still wins)."""
        if self.finish_reason is not None:
            return
        self._decode(final=True)
        if self.finish_reason is None:
            self.finish_reason = reason

    def _decode(self, final: bool) -> None:
        start, read = self._window
        before = self._tok.decode(self.ids[start:read])
        now = self._tok.decode(self.ids[start:])
        if len(now) > len(before) and (final or not now.endswith("\ufffd")):
            self.text += now[len(before):]
            self._window = (read, len(self.ids))
        hits = [i for i in (self.text.find(s, self._sent) for s in self.stops) if i >= 0]
        if hits:                                # a match starts at or after _sent: its start was kept back
            self.text = self.text[:min(hits)]
            self.finish_reason = "stop"

    def take(self) -> list[Event]:
        """The events not yet handed out: new text that can no longer change, then the end."""
        events: list[Event] = []
        keep = 0 if self.finish_reason is not None else self._held()
        if len(self.text) - keep > self._sent:
            events.append(("text", self.text[self._sent:len(self.text) - keep]))
            self._sent = len(self.text) - keep
        if self.finish_reason is not None and not self._reported:
            self._reported = True
            events.append(("end", self.finish_reason))
        return events

    def _held(self) -> int:
        """Length of the longest unsent tail that a stop string starts with (it may yet match)."""
        tail = self.text[self._sent:]
        longest = max((len(s) - 1 for s in self.stops), default=0)
        for k in range(min(len(tail), longest), 0, -1):
            if any(s.startswith(tail[-k:]) for s in self.stops):
                return k
        return 0

    def result(self) -> dict[str, Any]:
        return {"text": self.text, "finish_reason": self.finish_reason or "length",
                "prompt_tokens": self.prompt_tokens, "completion_tokens": len(self.ids)}


def _publish(streams: list[Stream]) -> None:
    """Hand every live stream's new events to the event loop, in one hop."""
    out = [(s, e) for s in streams if s.loop is not None and not s.left for e in s.take()]
    if out:
        out[0][0].loop.call_soon_threadsafe(_deliver, out)


def _deliver(events: list[tuple[Stream, Event]]) -> None:
    for stream, event in events:
        stream.events.put_nowait(event)


def stream_key(temperature: float, top_p: float | None, seed: int | None) -> Hashable:
    """Which streams may decode together, from the first step or by joining a running batch: prompts
    of any length (left-padded) with the same sampling settings. None: a seeded sample, which runs
    alone so that its tokens do not depend on its neighbours."""
    return None if (seed is not None and temperature > 0) else (temperature, top_p)


def run_streams(sm: ServedModel, payloads: list[dict[str, Any]], joining: Joining | None = None
                ) -> list[dict[str, Any]]:
    """One micro-batch of streams (same sampling settings), decoded together step by step; with
    ``joining`` (serve/batcher.py) streams that queue meanwhile join it and every row is answered
    as it ends."""
    _Batch(sm, payloads[0], joining).run(payloads)
    return [p["stream"].result() for p in payloads]


class _Batch:
    """The rows decoding together (payloads, in the order of the cache's rows) and the prompts
    waiting to join them."""

    def __init__(self, sm: ServedModel, settings: dict[str, Any], joining: Joining | None):
        self.sm, self.joining = sm, joining
        gen = torch.Generator().manual_seed(settings["seed"]) if settings["seed"] is not None else None
        self.pick = functools.partial(choose, temperature=settings["temperature"], top_k=settings["top_k"],
                                      top_p=settings["top_p"], generator=gen)
        self.rows: list[dict[str, Any]] = []
        self.state: Decoding | None = None
        self.waiting: list[dict[str, Any]] = []

    def run(self, payloads: list[dict[str, Any]]) -> None:
        self.waiting = list(payloads)
        while True:
            self._admit()
            if not self.rows:                   # nothing waits either: the first waiting prompt always fits
                return
            self._step()
            self._drop_finished()

    def _step(self) -> None:
        if self.state.ids.size(1) >= self.sm.config.max_position:     # cannot happen (see _fits); never overrun
            for p in self.rows:
                p["stream"].end("length")
            _publish([p["stream"] for p in self.rows])
        else:
            nxt = self.pick(self.sm.backend.next_logits(self.state))
            self.state.append(nxt)
            self._push(self.rows, nxt)

    def _admit(self) -> None:
        """Prefill the waiting prompts that fit (together, left-padded), send their first tokens,
        then merge them into the running rows."""
        self._refill()
        n = self._fits()
        if n == 0:
            return
        group, self.waiting = self.waiting[:n], self.waiting[n:]
        new = _left_padded(group, self.sm.pad)
        nxt = self.pick(self.sm.backend.next_logits(new))
        new.append(nxt)
        self._push(group, nxt)
        self.state = new if self.state is None else merge(self.state, new, self.sm.pad)
        self.rows += group
        self._drop_finished()

    def _refill(self) -> None:
        """The streams queued meanwhile become the waiting ones, if none wait still (else they stay
        in the queue, behind them); a waiting one whose client went away leaves."""
        if self.joining is not None and not self.waiting:
            self.waiting = self.joining.take(len(self.rows))
        waiting, self.waiting = self.waiting, []
        for p in waiting:
            if p["stream"].done:
                self._finish(p)
            else:
                self.waiting.append(p)

    def _fits(self) -> int:
        """How many of the waiting prompts, in order, can join now: after the merge, every row must
        still get all of its max_tokens within the context (a short prompt padded to a long one
        included); the first that cannot waits, and so do those behind it (first come, first served)."""
        limit = self.sm.config.max_position
        length = self.state.ids.size(1) if self.state is not None else 0
        left = max((p["max_new_tokens"] - len(p["stream"].ids) for p in self.rows), default=0)
        width = 0
        for n, p in enumerate(self.waiting):
            width, left = max(width, len(p["ids"])), max(left, p["max_new_tokens"] - 1)
            if max(length, width + 1) + left > limit:   # the prompts and their first token, then the rest
                return n
        return len(self.waiting)

    def _push(self, rows: list[dict[str, Any]], nxt: torch.Tensor) -> None:
        """Each row's new token to its stream; every client's new text goes out in one hop."""
        streams = [p["stream"] for p in rows]
        for stream, token in zip(streams, nxt.tolist()):
            stream.push(token)
        _publish(streams)

    def _drop_finished(self) -> None:
        """Rows that ended (end-of-text, a stop string, their max_tokens, their client gone) leave
        the batch and are answered now; the rest decode on without them."""
        ended = [p["stream"].done for p in self.rows]          # read once: a client may leave meanwhile
        if not any(ended):
            return
        for p in itertools.compress(self.rows, ended):
            self._finish(p)
        keep = [i for i, e in enumerate(ended) if not e]
        self.rows = [self.rows[i] for i in keep]
        self.state = select(self.state, keep) if keep else None

    def _finish(self, p: dict[str, Any]) -> None:
        p["stream"].end("length")               # a client that left (no-op for a row that ended)
        if self.joining is not None:
            self.joining.finish(p, p["stream"].result())


def _left_padded(payloads: list[dict[str, Any]], pad: int) -> Decoding:
    width = max(len(p["ids"]) for p in payloads)
    ids = torch.tensor([[pad] * (width - len(p["ids"])) + p["ids"] for p in payloads])
    if all(len(p["ids"]) == width for p in payloads):
        return Decoding(ids)
    mask = torch.tensor([[0] * (width - len(p["ids"])) + [1] * len(p["ids"]) for p in payloads])
    return Decoding(ids, mask)
