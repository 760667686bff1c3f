"""Text Embeddings Inference's routes, for encoders: clients written for TEI (huggingface_hub's
InferenceClient, LangChain's and LlamaIndex's TEI classes, plain HTTP) talk to plmkit serve unchanged.

    POST /embed     {"inputs": str | [str], "normalize": true, "truncate": false, "dimensions": null}
                    -> [[float, ...], ...]
    POST /predict   {"inputs": str | [a, b] | [[a], [a, b], ...], "truncate": false, "raw_scores": false}
                    -> [{"label", "score"}, ...] every label, best first (one such list per input of a batch)
    POST /rerank    {"query", "texts": [...], "truncate": false, "raw_scores": false, "return_text": false}
                    -> [{"index", "score", "text"?}, ...] best first
    POST /tokenize  {"inputs": str | [str], "add_special_tokens": true}
                    -> [[{"id", "text", "special", "start", "stop"}, ...], ...] (character offsets)
    GET  /info      the model, what kind of model TEI would call it, the limits

``truncate: false`` (TEI's default) refuses a text longer than the model's max_length instead of
cutting it; ``true`` reads it as fine-tuning did (for /predict: head_config.preprocess.long_text).
/rerank scores with a cross-encoder (a classification model with one output: sigmoid of it) or
a bi-encoder (a sentence encoder, task 'base' or 'embed': cosine of its embeddings).
Errors come in TEI's shape (serve/common.py).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from fastapi import Depends, FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..errors import PlmkitError
from ..tokenizer.chat import chat_template
from .backend import Item, ServedModel
from .common import ApiError, Infer, Limits, Routes, check_text, check_texts, embedding_size, json_answer, model_id

DTYPES = {"bf16": "bfloat16", "fp32": "float32", "int8": "int8"}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EmbedRequest(_Request):
    inputs: str | list[str]
    normalize: bool = True
    truncate: bool = Field(False, description="false: a text over the model's max_length is an error")
    dimensions: int | None = Field(None, ge=1, description="cut the vectors (Matryoshka-trained models only)")


class PredictRequest(_Request):
    inputs: str | list[str] | list[list[str]] = Field(description="a text, a pair [a, b], or a batch "
                                                              "[[a], [a, b], ...]")
    truncate: bool = False
    raw_scores: bool = Field(False, description="the logits instead of probabilities")


class RerankRequest(_Request):
    query: str
    texts: list[str] = Field(min_length=1)
    truncate: bool = False
    raw_scores: bool = Field(False, description="cross-encoder: the logit instead of its sigmoid")
    return_text: bool = False


class TokenizeRequest(_Request):
    inputs: str | list[str]
    add_special_tokens: bool = True


def reranker(served: ServedModel) -> str | None:
    """How /rerank scores with this model: 'cross' (one output scores a (query, text) pair),
    'bi' (a sentence encoder compares embeddings) or None."""
    if served.task == "classify" and len(served.labels) == 1:
        return "cross"
    return "bi" if served.task in ("base", "embed") and served.backend.can_embed else None


def tei_routes(app: FastAPI, routes: Routes) -> None:
    served, limits, infer = routes.served, routes.limits, routes.infer

    @app.post("/embed", dependencies=[Depends(routes.need("embed", "/embed"))])
    async def embed(req: EmbedRequest) -> Response:
        """Sentence embeddings (mean-pooled; an embed model pools as fine-tuned), unit length unless
        ``normalize`` is false."""
        texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
        _check_inputs(texts, limits)
        size = embedding_size(served, req.dimensions)
        rows = await infer("embed", len(texts), _fits(served, lambda: served.prepare_embed(texts, False), req.truncate))
        vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32)[:, :size]
        if req.normalize:
            vectors /= np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return json_answer(vectors.tolist())

    @app.post("/predict", dependencies=[Depends(routes.need("classify", "/predict"))])
    async def predict(req: PredictRequest) -> Response:
        """Scores of every label, best first: softmax over the classes (sigmoid for one output)."""
        single, inputs = _predict_inputs(req.inputs)
        _check_inputs([t for pair in inputs for t in pair], limits)
        rows = await infer("scores", len(inputs), _fits(served, lambda: _prepare_pairs(served, inputs), req.truncate))
        answers = []
        for row in rows:
            scores = _scores(np.asarray(row["logits"], dtype=np.float64), req.raw_scores)
            answers.append(sorted(({"score": float(s), "label": label} for label, s in zip(served.labels, scores)),
                                  key=lambda p: -p["score"]))
        return json_answer(answers[0] if single else answers)

    @app.post("/rerank")
    async def rerank(req: RerankRequest) -> Response:
        """The texts by relevance to the query, best first."""
        kind = reranker(served)
        if kind is None:
            raise ApiError(404, "/rerank needs a cross-encoder (a classification model with one output, like "
                                "ms-marco-MiniLM) or a sentence encoder (task 'base', like all-MiniLM-L6-v2); the "
                                f"served model is a '{served.task}' {served.family} model"
                                + (f" with {len(served.labels)} labels" if served.labels else ""))
        check_text(req.query, limits, "query")
        check_texts(req.texts, limits)
        scores = await (_cross(infer, served, req) if kind == "cross" else _bi(infer, served, req))
        ranks = [{"index": i, "score": float(s), **({"text": req.texts[i]} if req.return_text else {})}
                 for i, s in enumerate(scores)]
        return json_answer(sorted(ranks, key=lambda r: -r["score"]))

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> Response:
        """The tokens of each input: id, text, whether special, character offsets (null for specials)."""
        texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
        _check_inputs(texts, limits)
        rows = await infer("tokenize", len(texts), lambda: _prepare_tokens(served, texts, req.add_special_tokens))
        return json_answer([r["tokens"] for r in rows])

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """The served model and the limits, as TEI describes itself (plus plmkit's own fields)."""
        return {"model_id": model_id(served), "model_sha": None,
                "model_dtype": DTYPES.get(served.backend.precision, served.backend.precision),
                "model_type": _model_type(served), "max_input_length": served.max_length,
                "max_batch_requests": limits.max_batch, "max_client_batch_size": limits.max_texts,
                "auto_truncate": False, "version": __version__, "sha": None, "docker_label": None,
                "plmkit": served.info()}


def _check_inputs(texts: list[str], limits: Limits) -> None:
    if not texts:
        raise ApiError(422, "inputs: empty", param="inputs", code="empty")
    check_texts(texts, limits, "inputs")


def _fits(served: ServedModel, prepare: Callable[[], list[Item]], truncate: bool,
          name: Callable[[int], str] = lambda i: f"inputs[{i}]") -> Callable[[], list[Item]]:
    """``prepare``, refusing (on the model thread, where the tokens are made) a text that had to be
    cut unless ``truncate``; ``name(i)``: the request field of item i."""
    def checked() -> list[Item]:
        items = prepare()
        cut = next((i for i, it in enumerate(items) if it.truncated), None)
        if cut is not None and not truncate:
            raise PlmkitError(f"{name(cut)}: longer than the model's max_length of {served.max_length} tokens; "
                              "send \"truncate\": true to cut it")
        return items
    return checked


def _predict_inputs(value: str | list[str] | list[list[str]]) -> tuple[bool, list[list[str]]]:
    """TEI's /predict input: (one input?, [[text] or [text, pair], ...]). A list of strings is one
    text and its pair, not a batch (TEI reads it so)."""
    if isinstance(value, str):
        return True, [[value]]
    if value and isinstance(value[0], str):
        batch, single = [value], True
    else:
        batch, single = value, False
    if not batch:
        raise ApiError(422, "inputs: empty", param="inputs", code="empty")
    for i, item in enumerate(batch):
        if len(item) not in (1, 2):
            where = "inputs" if single else f"inputs[{i}]"
            raise ApiError(422, f"{where}: {len(item)} strings; a text is [text] or a pair [text, text]", param=where)
    return single, batch


def _prepare_pairs(served: ServedModel, inputs: list[list[str]]) -> list[Item]:
    """Texts and text pairs, in input order (each kind is tokenised as /v1/classify does it)."""
    alone = [i for i, x in enumerate(inputs) if len(x) == 1]
    pairs = [i for i, x in enumerate(inputs) if len(x) == 2]
    items: list[Item | None] = [None] * len(inputs)
    if alone:
        for i, it in zip(alone, served.prepare_classify([inputs[i][0] for i in alone], None)):
            items[i] = it
    if pairs:
        for i, it in zip(pairs, served.prepare_classify([inputs[i][0] for i in pairs], [inputs[i][1] for i in pairs])):
            items[i] = it
    return items


def _scores(logits: np.ndarray, raw: bool) -> np.ndarray:
    if raw:
        return logits
    if logits.size == 1:
        return 1.0 / (1.0 + np.exp(-logits))
    e = np.exp(logits - logits.max())
    return e / e.sum()


async def _cross(infer: Infer, served: ServedModel, req: RerankRequest) -> list[float]:
    """A cross-encoder reads each (query, text) pair: its one output, through a sigmoid."""
    n = len(req.texts)
    prepare = _fits(served, lambda: served.prepare_classify([req.query] * n, req.texts), req.truncate,
                    lambda i: f"texts[{i}] with the query")
    rows = await infer("scores", n, prepare)
    return [float(_scores(np.asarray(r["logits"]), req.raw_scores)[0]) for r in rows]


async def _bi(infer: Infer, served: ServedModel, req: RerankRequest) -> list[float]:
    """A bi-encoder embeds the query and the texts apart: cosine similarity."""
    prepare = _fits(served, lambda: served.prepare_embed([req.query, *req.texts], True), req.truncate,
                    lambda i: f"texts[{i - 1}]" if i else "query")
    rows = await infer("embed", len(req.texts) + 1, prepare)
    vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float64)
    return (vectors[1:] @ vectors[0]).tolist()


def _prepare_tokens(served: ServedModel, texts: list[str], special: bool) -> list[Item]:
    items = []
    for text, enc in zip(texts, served.plain.encode_batch(texts, add_special_tokens=special)):
        tokens = [{"id": i, "text": tok, "special": True, "start": None, "stop": None} if is_special else
                  {"id": i, "text": text[a:b], "special": False, "start": a, "stop": b}
                  for i, tok, is_special, (a, b) in zip(enc.ids, enc.tokens, enc.special_tokens_mask, enc.offsets)]
        items.append(Item(len(enc.ids), {"tokens": tokens}))
    return items


def _model_type(served: ServedModel) -> dict[str, Any]:
    """TEI's model_type: classifier, reranker or embedding; a decoder is 'generation' (not TEI's)."""
    labels = {"id2label": dict(enumerate(served.labels)), "label2id": {name: i for i, name in enumerate(served.labels)}}
    if served.supports("classify") is None:
        return {"reranker" if len(served.labels) == 1 else "classifier": labels}
    if served.supports("embed") is None:
        return {"embedding": {"pooling": served.head_config.get("pooling", "mean") if served.task == "embed"
                              else "mean"}}
    return {"generation": {"chat_template": chat_template(served.tok) is not None}}
