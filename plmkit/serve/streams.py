"""Token-by-token generation for the OpenAI routes (serve/openai.py): each request's text goes
out as it is made, cut at its stop strings.

A request is one ``Stream``: the model thread fills it (``push`` per generated token, then
``end``) and the event loop reads its events (``("text", delta)`` ..., then ``("end", reason)``).

What the micro-batcher keeps: streams that wait together (one haul, serve/batcher.py) with the
same sampling settings run as one left-padded batch and decode together, step by step; after each
step every client's new text goes out in one hop to the event loop, and the batch stops as soon
as every row has finished (an end-of-text id, a stop string, its own max_tokens, or its client
gone). What it does not do is continuous batching: a request arriving while a batch decodes waits
for that batch to end (as a non-streamed one does), since joining it would mean merging KV caches
mid-decode. A seeded sample runs alone, so its tokens do not depend on its neighbours.

Detokenising is incremental (as Text Generation Inference does it): each step decodes the last
few ids and keeps back a character that is still an incomplete UTF-8 sequence ("\\ufffd") and
any tail that may begin a stop string, so no client ever sees text that is later taken back.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from .backend import ServedModel

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


def _fitting(payloads: list[dict[str, Any]], limit: int) -> list[list[dict[str, Any]]]:
    """Cut a length-sorted batch where the longest prompt plus the most new tokens would pass the
    context: a short prompt padded to a long one must still get all of its max_tokens."""
    groups: list[list[dict[str, Any]]] = [[]]
    for p in payloads:
        trial = groups[-1] + [p]
        if groups[-1] and max(len(q["ids"]) for q in trial) + max(q["max_new_tokens"] for q in trial) > limit:
            groups.append([p])
        else:
            groups[-1] = trial
    return groups


def run_streams(sm: ServedModel, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One micro-batch of streams (same sampling settings): decode them together, step by step."""
    for group in _fitting(payloads, sm.config.max_position):
        _decode_together(sm, group)
    return [p["stream"].result() for p in payloads]


def _decode_together(sm: ServedModel, payloads: list[dict[str, Any]]) -> None:
    p0, streams = payloads[0], [p["stream"] for p in payloads]
    width = max(len(p["ids"]) for p in payloads)
    ids = torch.tensor([[sm.pad] * (width - len(p["ids"])) + p["ids"] for p in payloads])     # left-padded
    mask = None
    if any(len(p["ids"]) < width for p in payloads):
        mask = torch.tensor([[0] * (width - len(p["ids"])) + [1] * len(p["ids"]) for p in payloads])
    gen = torch.Generator().manual_seed(p0["seed"]) if p0["seed"] is not None else None

    def step(nxt: torch.Tensor) -> bool:
        for stream, token in zip(streams, nxt.tolist()):
            stream.push(token)
        _publish(streams)
        return all(s.done for s in streams)

    if not all(s.done for s in streams):        # every client may have left while it queued
        sm.backend.generate(ids, max_new_tokens=max(p["max_new_tokens"] for p in payloads),
                            temperature=p0["temperature"], top_k=p0["top_k"], top_p=p0["top_p"],
                            eos_token_id=sm.eos, generator=gen, attention_mask=mask, on_step=step)
    for s in streams:
        s.end("length")                         # the context ran out first (no-op for finished rows)
    _publish(streams)
