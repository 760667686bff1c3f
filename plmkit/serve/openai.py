"""OpenAI-compatible routes: the official ``openai`` client, and anything else that speaks its
API, talks to ``plmkit serve`` unchanged (base URL ``http://HOST:PORT/v1``).

    GET  /v1/models, /v1/models/{id}   the one served model (id: its directory's name)
    POST /v1/chat/completions          messages through the model's chat template; stream: true
                                       sends chat.completion.chunk events, then ``data: [DONE]``
    POST /v1/completions               a plain prompt (OpenAI's max_tokens default, 16)
    POST /v1/embeddings                a string or a list; encoding_format float | base64;
                                       dimensions where the model was trained for shorter vectors

Generation runs through serve/streams.py (token by token, stop strings, micro-batched; what the
batching keeps is said there); a non-streamed answer is the same decoding, read at its end.
Errors come in OpenAI's shape (serve/common.py). A setting plmkit cannot honour (n > 1,
logprobs, penalties, echo, best_of; tools or any other field: unknown) is refused with a 400 that
names it, never ignored.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any, AsyncIterator, Literal

import numpy as np
from fastapi import Depends, FastAPI
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..tokenizer.chat import chat_template
from .common import ApiError, Limits, Routes, check_text, check_texts, embedding_size, json_answer, model_id
from .streams import Stream, stream_key

ROLES = ("system", "user", "assistant")
MAX_STOPS = 4                    # OpenAI's limit


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: str
    content: str | list[TextPart]
    name: str | None = None


class StreamOptions(_Request):
    include_usage: bool = False


class _Generation(_Request):
    model: str = Field(description="the served model's id (GET /v1/models)")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False, description="0: greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOPS} strings; the text ends before the first")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, description="choices per request: only 1")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, description="only 0")
    frequency_penalty: float = Field(0.0, description="only 0")
    user: str | None = None


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="as max_tokens")
    logprobs: bool | None = Field(None, description="only false")


class CompletionRequest(_Generation):
    prompt: str | list[str] = Field(description="a string (or a list of one)")
    max_tokens: int | None = Field(16, ge=1, description="null: up to the end of the context")
    echo: bool = Field(False, description="only false")
    logprobs: int | None = Field(None, description="only null")
    best_of: int | None = Field(None, description="only 1")
    suffix: str | None = Field(None, description="only null")


class EmbeddingRequest(_Request):
    model: str = Field(description="the served model's id (GET /v1/models)")
    input: Any = Field(description="a string or a list of strings")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


def openai_routes(app: FastAPI, routes: Routes) -> None:
    served, limits = routes.served, routes.limits
    name = model_id(served)
    card = {"id": name, "object": "model", "created": int(served.path.stat().st_mtime), "owned_by": "plmkit"}

    def check_model(model: str) -> None:
        if model != name:
            raise ApiError(404, f"model '{model}' is not served here; this server serves '{name}' (GET /v1/models)",
                           param="model", code="model_not_found")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The served model, as OpenAI lists models."""
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model}")
    async def one_model(model: str) -> dict[str, Any]:
        check_model(model)
        return card

    @app.post("/v1/chat/completions", dependencies=[Depends(routes.need("generate", "/v1/chat/completions"))])
    async def chat(req: ChatRequest) -> Response:
        """Answer a conversation: the messages go through the model's chat template."""
        check_model(req.model)
        _refuse_unsupported(req, logprobs=req.logprobs)
        messages = _messages(req.messages, limits)
        if chat_template(served.tok) is None:
            raise ApiError(422, "this model's tokenizer has no chat template (tokenizer_config.json's chat_template), "
                                "so it cannot take messages: send a plain prompt to /v1/completions",
                           param="messages", code="no_chat_template")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        return await _answer(routes, req, None, messages, max_tokens, ChatShape(name))

    @app.post("/v1/completions", dependencies=[Depends(routes.need("generate", "/v1/completions"))])
    async def completions(req: CompletionRequest) -> Response:
        """Continue a plain prompt (the tokenizer's BOS first, as transformers adds it)."""
        check_model(req.model)
        _refuse_unsupported(req, logprobs=req.logprobs, echo=req.echo, best_of=req.best_of not in (None, 1),
                            suffix=req.suffix is not None)
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(422, f"prompt: {len(prompt)} prompts given; only one per request", param="prompt")
            prompt = prompt[0]
        check_text(prompt, limits, "prompt")
        return await _answer(routes, req, prompt, None, req.max_tokens, CompletionShape(name))

    @app.post("/v1/embeddings", dependencies=[Depends(routes.need("embed", "/v1/embeddings"))])
    async def embeddings(req: EmbeddingRequest) -> Response:
        """Unit-length embeddings (mean of the last hidden states, or an embed model's own pooling), cut to
        ``dimensions`` first."""
        check_model(req.model)
        texts = _inputs(req.input)
        check_texts(texts, limits, "input")
        size = embedding_size(served, req.dimensions)
        rows = await routes.infer("embed", len(texts), lambda: served.prepare_embed(texts, False))
        vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32)[:, :size]
        vectors /= np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if req.encoding_format == "base64"
                 else v.tolist()} for i, v in enumerate(vectors)]
        tokens = sum(r["tokens"] for r in rows)
        return json_answer({"object": "list", "data": data, "model": name,
                            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _refuse_unsupported(req: _Generation, **asked: Any) -> None:
    """A 400 naming the first setting plmkit cannot honour."""
    if req.n != 1:
        raise ApiError(422, f"n: {req.n} choices asked for; plmkit serve answers one per request", param="n")
    for field in ("presence_penalty", "frequency_penalty"):
        if getattr(req, field) != 0:
            raise ApiError(422, f"{field}: not supported (only 0)", param=field)
    for field, value in asked.items():
        if value:
            raise ApiError(422, f"{field}: not supported by plmkit serve", param=field)
    if req.stream_options is not None and not req.stream:
        raise ApiError(422, "stream_options: only allowed with stream: true", param="stream_options")


def _messages(messages: list[ChatMessage], limits: Limits) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise ApiError(422, f"messages[{i}].role: unknown role {m.role!r} (known: {', '.join(ROLES)})",
                           param=f"messages[{i}].role", code="invalid_value")
        content = m.content if isinstance(m.content, str) else "\n".join(p.text for p in m.content)
        out.append({"role": m.role, "content": content})
    check_texts([m["content"] for m in out], limits, "messages")
    return out


def _inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and value and all(isinstance(v, (int, list)) for v in value):
        raise ApiError(422, "input: token ids are not supported; send the text", param="input")
    raise ApiError(422, "input: must be a string or a non-empty list of strings", param="input")


def _stops(stop: str | list[str] | None, limits: Limits) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise ApiError(422, f"stop: {len(stops)} sequences, at most {MAX_STOPS}", param="stop")
    for i, s in enumerate(stops):
        check_text(s, limits, f"stop[{i}]")
    return stops


# ---------------------------------------------------------------------------------------
# One answer: run it, then write it whole or as server-sent events.

class ChatShape:
    """OpenAI's chat.completion object and chat.completion.chunk events."""

    def __init__(self, model: str):
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "system_fingerprint": None}

    def whole(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._head("chat.completion"), "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": finish}]}

    def chunk(self, text: str | None, finish: str | None = None) -> dict[str, Any]:
        """A chunk with new ``text``; the closing one with ``finish``; with neither, the opening one
        (it names the role)."""
        if finish is not None:
            delta = {}
        elif text is None:
            delta = {"role": "assistant", "content": ""}
        else:
            delta = {"content": text}
        return {**self._head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage}


class CompletionShape(ChatShape):
    """OpenAI's text_completion object; its stream sends text_completion chunks."""

    def __init__(self, model: str):
        super().__init__(model)
        self.id = f"cmpl-{uuid.uuid4().hex}"

    def whole(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._head("text_completion"), "usage": usage,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

    def chunk(self, text: str | None, finish: str | None = None) -> dict[str, Any] | None:
        if text is None and finish is None:
            return None                         # no opening chunk
        return {**self._head("text_completion"),
                "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._head("text_completion"), "choices": [], "usage": usage}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _answer(routes: Routes, req: _Generation, prompt: str | None, messages: list[dict[str, str]] | None,
                  max_tokens: int | None, shape: ChatShape) -> Response:
    stops = _stops(req.stop, routes.limits)
    stream = Stream(asyncio.get_running_loop() if req.stream else None, stops)

    def prepare() -> list[Any]:
        return routes.served.prepare_stream(stream, prompt, messages, max_tokens, req.temperature, req.top_p,
                                            req.seed)

    if not req.stream:
        r = (await routes.infer("stream", 1, prepare))[0]
        return json_answer(shape.whole(r["text"], r["finish_reason"],
                                       _usage(r["prompt_tokens"], r["completion_tokens"])))
    # The time limit covers the wait for the first token (queueing, the prompt); after that the
    # client sees progress, and max_tokens bounds the rest.
    # It may join a batch that is decoding already (continuous batching; a non-streamed answer
    # waits for a batch of its own, as before).
    join = stream_key(req.temperature, req.top_p, req.seed)
    job = asyncio.ensure_future(routes.infer("stream", 1, prepare, timeout_s=None, join=join))
    await _started(stream, job, routes.limits.timeout_s)
    job.add_done_callback(lambda j: _failed(stream, j))
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return StreamingResponse(_events(stream, shape, include_usage), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _started(stream: Stream, job: asyncio.Future, timeout_s: float) -> None:
    """Wait until the prompt is accepted; a refused prompt raises its error here, before any
    event is sent (so it is a plain error response, not a broken stream)."""
    ready = asyncio.ensure_future(stream.started.wait())
    try:
        done, _ = await asyncio.wait({job, ready}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
    if not done:
        stream.left = True
        job.cancel()
        raise ApiError(503, f"request timed out after {timeout_s:g} s (--timeout-s)", headers={"Retry-After": "1"})
    if not stream.started.is_set():
        job.result()                            # raises the request's error


def _failed(stream: Stream, job: asyncio.Future) -> None:
    """A decode that failed after the stream began: the reader gets an error event."""
    if job.cancelled() or job.exception() is None:
        return
    error = job.exception()
    stream.events.put_nowait(("error", str(getattr(error, "detail", None) or error or type(error).__name__)))


def _sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _events(stream: Stream, shape: ChatShape, include_usage: bool) -> AsyncIterator[bytes]:
    """The answer as server-sent events: the opening chunk, a chunk per piece of new text, the
    closing chunk with the finish reason, the usage (when asked), ``data: [DONE]``."""
    try:
        opening = shape.chunk(None)
        if opening is not None:
            yield _sse(_with_usage(opening, include_usage))
        while True:
            kind, value = await stream.events.get()
            if kind == "error":
                yield _sse({"error": {"message": f"generation failed: {value}", "type": "server_error",
                                      "param": None, "code": None}})
                return
            if kind == "text":
                yield _sse(_with_usage(shape.chunk(value), include_usage))
                continue
            yield _sse(_with_usage(shape.chunk(None, value), include_usage))
            break
        if include_usage:
            yield _sse(shape.usage_chunk(_usage(stream.prompt_tokens, len(stream.ids))))
        yield b"data: [DONE]\n\n"
    finally:
        stream.left = True                      # a client that went away frees its row at the next step


def _with_usage(chunk: dict[str, Any], include_usage: bool) -> dict[str, Any]:
    return {**chunk, "usage": None} if include_usage else chunk
