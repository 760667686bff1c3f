"""What every route module of the server shares: the limits, the input checks, the JSON answer,
and errors in the shape of the protocol the route belongs to.

Three protocols answer on one server, each with its clients' error shape:
  * plmkit's own routes (/v1/classify ...):  {"detail": "what is wrong"}
  * OpenAI's (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models):
    {"error": {"message", "type", "param", "code"}}, and 400 where plmkit says 422 (OpenAI's
    status for a bad request)
  * Text Embeddings Inference's (/embed, /predict, /rerank, /tokenize, /info):
    {"error": "what is wrong", "error_type": "validation" | "empty" | "overloaded" | "backend"}
The middlewares (413, 415), the validation handler (400, 422) and every ``HTTPException`` go
through ``error_body``, so a client gets its own shape from every layer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

if TYPE_CHECKING:
    from .backend import ServedModel


@dataclass
class Limits:
    max_batch: int = 32              # items per model call
    max_wait_ms: float = 5.0         # how long the first item of a batch waits for company
    max_body_bytes: int = 1 << 20
    max_texts: int = 64              # texts per request
    max_chars: int = 10_000          # characters per text (QA: per question and per context)
    timeout_s: float = 30.0          # per request, queueing included


# (endpoint, items, prepare, timeout_s=limits.timeout_s (None: no limit), join=None: the running
# batches it may enter, serve/batcher.py) -> one result per item
Infer = Callable[..., Awaitable[list[dict[str, Any]]]]


@dataclass
class Routes:
    """What create_app hands a protocol's route module."""
    served: ServedModel
    limits: Limits
    infer: Infer

    def need(self, endpoint: str, route: str) -> Callable[[], None]:
        """A dependency: 404 unless the model answers what ``endpoint`` needs."""
        def check() -> None:
            reason = self.served.supports(endpoint, route)
            if reason is not None:
                raise ApiError(404, reason)
        return check


class ApiError(HTTPException):
    """An HTTPException that also names the request field at fault (OpenAI's ``param``) and a
    machine-readable ``code`` (OpenAI's ``code``; TEI's ``error_type``)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(status, message, headers=dict(headers) if headers else None)
        self.param, self.code = param, code


# ---------------------------------------------------------------------------------------

OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models")
TEI_ROUTES = ("/embed", "/predict", "/rerank", "/tokenize", "/info")


def protocol(path: str) -> str:
    if path in OPENAI_ROUTES or path.startswith("/v1/models/"):
        return "openai"
    return "tei" if path in TEI_ROUTES else "plmkit"


def error_body(path: str, status: int, message: str, param: str | None = None,
               code: str | None = None) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of an error, in the shape of the protocol ``path`` belongs to."""
    kind = protocol(path)
    if kind == "openai":
        status = 400 if status == 422 else status
        error_type = "invalid_request_error" if status < 500 else "server_error"
        return status, {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    if kind == "tei":
        error_type = code or ("validation" if status < 500 else "overloaded" if status == 503 else "backend")
        return status, {"error": message, "error_type": error_type}
    return status, {"detail": message}


def error_response(path: str, exc: HTTPException) -> JSONResponse:
    status, body = error_body(path, exc.status_code, str(exc.detail), getattr(exc, "param", None),
                              getattr(exc, "code", None))
    return JSONResponse(body, status_code=status, headers=exc.headers)


def error_param(exc: RequestValidationError) -> str | None:
    """The request field of the first validation error, as OpenAI names it ('messages[0].role')."""
    errors = exc.errors()
    if not errors or errors[0].get("type") == "json_invalid":      # a position in the text, not a field
        return None
    param = ""
    for part in errors[0].get("loc", ()):
        if part == "body":
            continue
        param += f"[{part}]" if isinstance(part, int) else f".{part}" if param else str(part)
    return param or None


# ---------------------------------------------------------------------------------------

def check_texts(texts: list[str], limits: Limits, field: str = "texts") -> None:
    if len(texts) > limits.max_texts:
        raise ApiError(422, f"{field}: {len(texts)} texts, at most {limits.max_texts} per request (--max-texts)",
                       param=field)
    for i, t in enumerate(texts):
        check_text(t, limits, f"{field}[{i}]")


def check_text(text: str, limits: Limits, field: str) -> None:
    if len(text) > limits.max_chars:
        raise ApiError(422, f"{field}: {len(text)} characters, at most {limits.max_chars} (--max-chars)", param=field)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(422, f"{field}: not valid Unicode (an unpaired surrogate \\ud800-\\udfff)",
                       param=field) from None


def json_answer(answer: Any) -> Response | Any:
    """The answer as JSON bytes directly: FastAPI would otherwise validate the dicts the server
    built itself against ``response_model`` and then serialise them, two passes over every score
    on the event loop for nothing. The models stay, for /openapi.json. A NaN or infinity
    (invalid JSON) goes the validated way, where pydantic writes null."""
    try:
        body = json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return answer
    return Response(body.encode(), media_type="application/json")


def model_id(served: ServedModel) -> str:
    """The name clients use for the served model (OpenAI's ``model``, TEI's ``model_id``): its directory's."""
    return served.path.resolve().name


def embedding_size(served: ServedModel, dimensions: int | None, field: str = "dimensions") -> int:
    """The length embeddings are cut to. A checkpoint trained for shorter prefixes of its vectors
    (Matryoshka) lists them in ``head_config.matryoshka_dims``; any other model allows only its
    full size, since a cut vector of a model not trained for it loses much of its meaning."""
    full = served.config.hidden_size
    if dimensions is None or dimensions == full:
        return full
    allowed = sorted(int(d) for d in served.head_config.get("matryoshka_dims") or [] if 0 < int(d) < full)
    if dimensions not in allowed:
        sizes = f"one of {', '.join(map(str, allowed + [full]))}" if allowed else \
            f"{full} (the model was not trained for shorter vectors: no head_config.matryoshka_dims)"
        raise ApiError(422, f"{field}: {dimensions} is not a size this model's embeddings can be cut to; use {sizes}",
                       param=field)
    return dimensions
