"""The HTTP API: a FastAPI app over one ``ServedModel`` and its micro-batcher.

    POST /v1/classify  {"texts": [...], "text_pairs": [...]?}    -> {"predictions": [{label, score, scores}]}
    POST /v1/ner       {"texts": [...]}                          -> {"predictions": [{entities, tags}]}
    POST /v1/qa        {"question": "...", "context": "..."}     -> {answer, score, start, end}
    POST /v1/embed     {"texts": [...], "normalize": false}      -> {"embeddings": [[...]], "dimensions": H}
    POST /v1/generate  {"prompt": "...", "max_new_tokens": 50, temperature, top_k, top_p, seed}
                       or {"messages": [{"role", "content"}, ...], ...}: the model's chat template renders them
                                                                 -> {text, tokens, finish_reason, prompt_tokens_dropped}
    GET  /health, GET /metrics (Prometheus text), GET /openapi.json

and two protocols other clients already speak: OpenAI's (/v1/chat/completions with streaming,
/v1/completions, /v1/embeddings, /v1/models: serve/openai.py) and Text Embeddings Inference's
(/embed, /predict, /rerank, /tokenize, /info: serve/tei.py).

There is no /docs page: FastAPI's page loads Swagger UI from a CDN, which is blank offline; the
OpenAPI document at /openapi.json opens in any OpenAPI viewer.

Errors are JSON ``{"detail": "what is wrong"}``: 400 malformed JSON (or not UTF-8), 404 an endpoint the
model's task cannot answer, 413 a body over --max-body-bytes, 415 a POST without
``Content-Type: application/json``, 422 wrong types, empty lists or a limit exceeded, 503
the request timed out or the server is shutting down. The protocol routes answer the same
errors in their own clients' shape (serve/common.py).
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable, Hashable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import PlmkitError
from .backend import ENDPOINTS, Item, ServedModel
from .batcher import MicroBatcher, ServerClosing
from .common import OPENAI_ROUTES, TEI_ROUTES, ApiError, Limits, Routes, error_body, error_param, error_response
from .common import check_text as _check_text
from .common import check_texts as _check_texts
from .common import json_answer as _json
from .metrics import Metrics
from .openai import openai_routes
from .tei import tei_routes

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


# ---------------------------------------------------------------------------------------
# Request and response schemas (they make the OpenAPI document). Strict: "1" is not a number,
# 1 is not a string, unknown fields are an error (a typo should not pass silently).

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


TextList = Annotated[list[str], Field(min_length=1, description="input texts (at least one)")]


class ClassifyRequest(_Strict):
    texts: TextList
    text_pairs: list[str] | None = Field(None, description="second sentences, one per text, for pair tasks")


class Prediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    predictions: list[Prediction]


class NerRequest(_Strict):
    texts: list[str] = Field(min_length=1, description="texts; split into words at whitespace")


class Entity(BaseModel):
    type: str
    text: str
    start: int = Field(description="character offset of the first character")
    end: int = Field(description="character offset after the last character")
    score: float


class NerPrediction(BaseModel):
    entities: list[Entity]
    tags: list[str] = Field(description="one tag per whitespace-separated word")


class NerResponse(BaseModel):
    predictions: list[NerPrediction]


class QARequest(_Strict):
    question: str
    context: str


class QAResponse(BaseModel):
    answer: str
    score: float
    start: int | None = Field(description="character offset of the answer in the context (null: none found)")
    end: int | None


class EmbedRequest(_Strict):
    texts: TextList
    normalize: bool = Field(False, description="scale each vector to unit length")


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dimensions: int


class ChatMessage(_Strict):
    role: str
    content: str


class GenerateRequest(_Strict):
    prompt: str | None = Field(None, description="text to continue (or give messages)")
    messages: list[ChatMessage] | None = Field(None, min_length=1, description="a conversation, rendered by the "
                                               "model's chat template with the generation prompt (or give prompt)")
    max_new_tokens: int = Field(50, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=100.0, allow_inf_nan=False, description="0: greedy")
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


class GenerateResponse(BaseModel):
    text: str
    tokens: int
    finish_reason: str = Field(description="eos: the model ended the text; length: max_new_tokens were generated")
    prompt_tokens_dropped: int = Field(description="tokens cut from the start of the prompt so that it and "
                                       "max_new_tokens fit the model's context (0: the whole prompt was read)")


# ---------------------------------------------------------------------------------------
# ASGI middleware: outermost metrics, then the body limit (before any JSON parsing).

class MetricsMiddleware:
    """Counts requests by endpoint and status and times them."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.known = ({f"/v1/{e}" for e in ENDPOINTS} | {"/health", "/metrics", "/openapi.json"}
                      | set(OPENAI_ROUTES) | set(TEI_ROUTES))

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in self.known else "other"
            self.metrics.observe_request(path, status, time.perf_counter() - start)


DRAIN_BYTES = 1 << 20    # the most of an oversized streamed body read (and dropped) before its 413


async def _drain(receive: Callable, limit: int) -> None:
    """Receive and drop the rest of a request body, at most ``limit`` bytes."""
    dropped = 0
    while dropped <= limit:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        dropped += len(message.get("body", b""))


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``, declared (Content-Length) or streamed; the body read
    here is handed on, so the app sees it as usual."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not declared.isdigit():
            return await _refuse(scope, send, 400, f"invalid Content-Length header {declared.decode('latin-1')!r}")
        if declared is not None and int(declared) > self.max_bytes:
            return await self._too_large(scope, send, declared.decode())
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                # A client still sending when the 413 goes out gets a connection reset instead
                # of the answer: read (and drop) a bounded tail of the body first.
                if message.get("more_body", False):
                    await _drain(receive, DRAIN_BYTES)
                return await self._too_large(scope, send, f"more than {self.max_bytes}")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, send: Callable, got: str) -> None:
        await _refuse(scope, send, 413, f"request body too large: {got} bytes, the limit is {self.max_bytes} "
                                        "(--max-body-bytes)")


class JsonOnlyMiddleware:
    """415 for a POST whose Content-Type is missing or not JSON (FastAPI would parse a body
    without Content-Type as JSON). It sits inside the body limit, so the body it drains before
    answering has been read (and size-checked) already."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            ctype = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
            if "json" not in ctype.lower():
                await _drain(receive, DRAIN_BYTES)
                got = f"got Content-Type {ctype!r}" if ctype else "got no Content-Type header"
                return await _refuse(scope, send, 415, f"the body must be JSON (Content-Type: application/json), {got}")
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Callable, status: int, detail: str) -> None:
    """Answer without reading (the rest of) the body; the connection closes afterwards."""
    status, answer = error_body(scope["path"], status, detail)
    body = json.dumps(answer).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------

def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        ctx = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {})
        return 400, f"malformed JSON body: {ctx.get('error', 'cannot be parsed')}"
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return 422, "; ".join(parts)


def _undecodable(e: UnicodeDecodeError) -> str:
    bad = e.object[e.start:e.end].hex(" ")
    return f"malformed JSON body: not valid UTF-8 (byte {e.start}: {bad}, {e.reason}); JSON is sent as UTF-8"


def create_app(served: ServedModel, limits: Limits | None = None, metrics: Metrics | None = None) -> FastAPI:
    limits = limits or Limits()
    metrics = metrics or Metrics()
    batcher = MicroBatcher(served.run, limits.max_batch, limits.max_wait_ms, metrics.observe_batch,
                           served.call_rows)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.close()          # in-flight requests are done by now (uvicorn drains them first)

    app = FastAPI(title="plmkit serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"Inference for {served.path.name} ({served.task}, {served.family}).")
    app.state.served, app.state.limits, app.state.metrics = served, limits, metrics

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, detail = _validation_message(exc)
        return error_response(request.url.path, ApiError(status, detail, param=error_param(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _refused(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers a body json.loads cannot decode (invalid UTF-8) with a bare "There was
        # an error parsing the body"; its cause says what was wrong.
        if isinstance(exc.__cause__, UnicodeDecodeError):
            exc = StarletteHTTPException(400, detail=_undecodable(exc.__cause__))
        return error_response(request.url.path, exc)     # unknown paths and methods too

    def need(endpoint: str) -> Callable[[], None]:
        def check() -> None:
            reason = served.supports(endpoint)
            if reason is not None:
                raise HTTPException(404, reason)
        return check

    async def infer(endpoint: str, size: int, prepare: Callable[[], list[Item]],
                    timeout_s: float | None = limits.timeout_s, join: Hashable = None) -> list[dict[str, Any]]:
        """Tokenising (``prepare``) and the model call both run on the model thread, in one hop
        per micro-batch (serve/batcher.py); bad input found there is a 422 for this request.
        ``join``: the batch key of running batches the request may enter (streams)."""
        def work() -> list[tuple[Any, int, Any]]:
            return [(it.key, it.length, it.payload) for it in prepare()]

        try:
            return await asyncio.wait_for(batcher.submit(endpoint, size, work, join), timeout_s)
        except PlmkitError as e:
            raise HTTPException(422, str(e)) from None
        except asyncio.TimeoutError:
            raise HTTPException(503, f"request timed out after {limits.timeout_s:g} s (--timeout-s)",
                                headers={"Retry-After": "1"}) from None
        except ServerClosing as e:
            raise HTTPException(503, str(e)) from None

    _task_routes(app, served, limits, need, infer)
    routes = Routes(served, limits, infer)
    openai_routes(app, routes)
    tei_routes(app, routes)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "plmkit": __version__, **served.info(), "limits": asdict(limits)}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    app.add_middleware(JsonOnlyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)      # added last = outermost
    return app


Infer = Callable[[str, int, Callable[[], list[Item]]], Awaitable[list[dict[str, Any]]]]


def _task_routes(app: FastAPI, served: ServedModel, limits: Limits, need: Callable[[str], Callable[[], None]],
                 infer: Infer) -> None:
    """The five inference endpoints: check limits, tokenise (prepare_*), await the batcher."""

    @app.post("/v1/classify", response_model=ClassifyResponse, dependencies=[Depends(need("classify"))])
    async def classify(req: ClassifyRequest) -> dict[str, Any]:
        """Label each text (or text pair) with the model's classes."""
        _check_texts(req.texts, limits)
        if req.text_pairs is not None:
            if len(req.text_pairs) != len(req.texts):
                raise HTTPException(422, f"text_pairs: {len(req.text_pairs)} given for {len(req.texts)} texts "
                                         "(one per text)")
            _check_texts(req.text_pairs, limits, "text_pairs")
        rows = await infer("classify", len(req.texts), lambda: served.prepare_classify(req.texts, req.text_pairs))
        return _json({"predictions": rows})

    @app.post("/v1/ner", response_model=NerResponse, dependencies=[Depends(need("ner"))])
    async def ner(req: NerRequest) -> dict[str, Any]:
        """Entities with character offsets; words are the whitespace-separated parts of each text."""
        _check_texts(req.texts, limits)
        return _json({"predictions": await infer("ner", len(req.texts), lambda: served.prepare_ner(req.texts))})

    @app.post("/v1/qa", response_model=QAResponse, dependencies=[Depends(need("qa"))])
    async def qa(req: QARequest) -> dict[str, Any]:
        """The answer span of the context, with its character offsets."""
        _check_text(req.question, limits, "question")
        _check_text(req.context, limits, "context")
        return _json((await infer("qa", 1, lambda: served.prepare_qa(req.question, req.context)))[0])

    @app.post("/v1/embed", response_model=EmbedResponse, dependencies=[Depends(need("embed"))])
    async def embed(req: EmbedRequest) -> dict[str, Any]:
        """Mean of the last hidden states over each text's real tokens."""
        _check_texts(req.texts, limits)
        rows = await infer("embed", len(req.texts), lambda: served.prepare_embed(req.texts, req.normalize))
        return _json({"embeddings": [r["embedding"] for r in rows], "dimensions": served.config.hidden_size})

    @app.post("/v1/generate", response_model=GenerateResponse, dependencies=[Depends(need("generate"))])
    async def generate(req: GenerateRequest) -> dict[str, Any]:
        """Continue the prompt (KV cache; temperature 0 is greedy)."""
        if (req.prompt is None) == (req.messages is None):
            raise HTTPException(422, "give exactly one of 'prompt' and 'messages'")
        messages = [m.model_dump() for m in req.messages] if req.messages is not None else None
        for k, text in enumerate([req.prompt] if messages is None else [m["content"] for m in messages]):
            _check_text(text, limits, "prompt" if messages is None else f"messages[{k}].content")
        return _json((await infer("generate", 1, lambda: served.prepare_generate(
            req.prompt, req.max_new_tokens, req.temperature, req.top_k, req.top_p, req.seed, messages)))[0])


# Several uvicorn worker processes import the app by name and build it from the environment.
ENV_CONFIG = "PLMKIT_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    import torch

    cfg = json.loads(os.environ[ENV_CONFIG])
    torch.set_num_threads(cfg["threads"])
    served = ServedModel(cfg["model"], cfg["backend"], cfg["precision"], cfg["weights"])
    return create_app(served, Limits(**cfg["limits"]))
