"""What the server runs: a checkpoint, the endpoints it can answer, and the code that turns
request items into features and model outputs back into answers.

Two halves, both on the single model thread (the event loop only parses and answers):
  * ``ServedModel.prepare_*`` per request: checks and tokenises the input (bad input raises
    ``PlmkitError`` -> HTTP 422 for that request) and returns ``Item``s, each with a token
    length (the batcher groups by it) and a batch key (items with equal keys may share one
    model call).
  * ``ServedModel.run(endpoint, payloads)`` per micro-batch: pads it, calls the backend once
    and post-processes each item.

Backends (registry ``BACKENDS``) wrap the network: ``torch`` (the PlmModel itself),
``onnxruntime`` (an ONNX export written by ``plmkit export --format onnx`` or ``plmkit quantize``)
and ``openvino`` (``plmkit quantize --engine openvino``).
Each names the directory formats it runs (``plmkit.loading.peek``); without an explicit backend
the directory picks it.
"""
from __future__ import annotations

import contextlib
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Protocol

import numpy as np
import torch
from torch import Tensor

from ..data.features import TextFrame, collate, configured, word_predictions
from ..data.qa import best_span, prepare_qa_features
from ..data.readers import QAExample
from ..errors import PlmkitError
from ..eval.metrics import get_entities
from ..loading import load, peek
from ..models.generate import MIN_TEMPERATURE, Decoding, generate, next_logits
from ..models.heads import ModelOutput
from ..models.weight_int8 import DEFAULT as WEIGHTS_DEFAULT
from ..models.weight_int8 import WEIGHTS, use_weights
from ..precision import DEFAULT as PRECISION_DEFAULT
from ..precision import PRECISIONS, autocast, resolve
from ..tasks import TASKS, TaskSpec, prep_of
from ..tasks.classify import pool_windows
from ..tokenizer import INPUT_KEYS, load_tokenizer, pad_id
from ..tokenizer.chat import encode_prompt, end_ids
from .streams import Stream, run_streams, stream_key

if TYPE_CHECKING:
    from .batcher import Joining

ENDPOINTS = ("classify", "ner", "qa", "embed", "generate")
TASK_ENDPOINTS = ("classify", "ner", "qa")     # answered by a model of that task (embed, generate: by capability)
WORD = re.compile(r"\S+")          # NER input is split into words at whitespace, offsets kept


class Backend(Protocol):
    """The network behind the endpoints; every method gets a padded batch of [B, T] tensors."""
    name: str
    formats: tuple[str, ...]   # the directory formats it runs (plmkit.loading.peek)
    precision: str
    model: Any                 # PlmModel or OnnxModel: .config, .task, .head_config, .family
    can_embed: bool
    can_generate: bool
    call_rows: float           # a call's own cost in padded token rows (serve/batcher.py: cut_by_length)

    def heads(self, batch: dict[str, Tensor]) -> ModelOutput: ...          # task head outputs

    def hidden(self, batch: dict[str, Tensor]) -> Tensor: ...              # last_hidden_state [B, T, H]

    def generate(self, ids: Tensor, **kw: Any) -> Tensor: ...              # [B, T] -> [B, T + n]

    def next_logits(self, state: Decoding) -> Tensor: ...                   # [B, V]: one step (serve/streams.py)


class TorchBackend:
    """The checkpoint in PyTorch under ``plmkit.precision``'s autocast, as predict runs it (on a
    CPU with AVX512-BF16 a batch of 32 SST-2 sentences runs ~1.9x faster in bf16 than in fp32)."""
    name = "torch"
    formats = ("plmkit", "huggingface", "adapter")
    # A call's own cost in padded token rows, for the batcher's cuts (serve/batcher.py): eager
    # all-MiniLM-L6-v2 in bf16 on 1 thread takes ~5.5 ms a call beyond ~0.17 ms a token row.
    call_rows = 32

    def __init__(self, path: Path, precision: str = PRECISION_DEFAULT, weights: str = WEIGHTS_DEFAULT):
        self.precision = resolve(precision, "cpu")     # what runs (bf16 or fp32); refused here if impossible
        model = load(path, needs_torch="the torch backend (--backend torch)")
        if model.config.tied_lm_head and model.task == "base":
            model = load(path, task="clm")                # a bare GPT-2: its LM head is tied, nothing new
        if weights != WEIGHTS_DEFAULT and not model.can_generate:
            # measured for decoding only (batch-1 steps read every weight); other endpoints keep the checkpoint's
            raise PlmkitError(f"--weights {weights} is for a decoder (GPT) language model; {path} is a "
                              f"'{model.task}' {model.family} model")
        self.model = use_weights(model, weights)
        self.can_embed = model.config.can_embed
        self.can_generate = model.can_generate

    def _mode(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(self.precision, torch.device("cpu")))
        return stack

    def heads(self, batch: dict[str, Tensor]) -> ModelOutput:
        with self._mode():
            return self.model(**batch)

    def hidden(self, batch: dict[str, Tensor]) -> Tensor:
        # the backbone alone: an MLM or classification head would be wasted work here
        with self._mode():
            return self.model.backbone(batch["input_ids"], batch.get("attention_mask"),
                                       batch.get("token_type_ids")).last_hidden_state

    def generate(self, ids: Tensor, **kw: Any) -> Tensor:
        with self._mode():
            return generate(self.model, ids, use_cache=True, **kw)

    def next_logits(self, state: Decoding) -> Tensor:
        with self._mode():
            return next_logits(self.model, state)


GRAPHS = {"onnx": "an ONNX export (plmkit export --format onnx) or its INT8 (plmkit quantize)",
          "openvino": "an OpenVINO export (plmkit quantize --engine openvino --calibration FILE)"}


class GraphBackend:
    """An exported graph in ``path`` (plmkit.models.onnx_model): ``onnxruntime`` runs an ONNX
    directory, ``openvino`` an OpenVINO one; one class, the engine is the directory's.

    The graph has only its task's outputs: embeddings need an export of a bare encoder
    (task 'base', output last_hidden_state); generation needs the KV cache, so torch.
    """
    # A call's own cost in padded token rows (the batcher's cuts, serve/batcher.py): all-MiniLM-L6-v2
    # INT8 on ONNX Runtime, 1 thread, takes ~0.6 ms a call beyond ~0.12 ms a token row, and the
    # server's own work per batch (tensors in, vectors out, the hand-back) about as much again.
    # Served /v1/embeddings texts/s at 8, 16, 24 rows were within noise of each other (+8-17% over
    # fixed cuts of 32).
    call_rows = 16

    def __init__(self, path: Path, precision: str = PRECISION_DEFAULT, weights: str = WEIGHTS_DEFAULT, *,
                 name: str, fmt: str):
        # precision: the export's own (fp32 or int8), whatever was asked for the torch backend
        self.name, self.formats = name, (fmt,)
        if weights != WEIGHTS_DEFAULT:
            raise PlmkitError(f"--weights {weights} is for a decoder on the torch backend; the {name} backend "
                              "runs the export's own weights")
        if peek(path).format != fmt:
            raise PlmkitError(f"{path}: the {name} backend needs {GRAPHS[fmt]}; use --backend torch "
                              "for a checkpoint")
        self.model = load(path, threads=torch.get_num_threads())
        self.precision = self.model.precision
        self.can_embed = self.model.config.can_embed and "last_hidden_state" in self.model.output_names
        self.can_generate = False

    def heads(self, batch: dict[str, Tensor]) -> ModelOutput:
        return self.model(**batch)

    def hidden(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(**batch).last_hidden_state

    def generate(self, ids: Tensor, **kw: Any) -> Tensor:
        raise PlmkitError("generation runs on the torch backend only (plmkit serve --backend torch)")

    def next_logits(self, state: Decoding) -> Tensor:
        return self.generate(state.ids)


# --backend name -> (the directory formats it runs, how to make it)
BACKENDS: dict[str, tuple[tuple[str, ...], Callable[[Path, str, str], Backend]]] = {
    "torch": (TorchBackend.formats, TorchBackend),
    "onnxruntime": (("onnx",), functools.partial(GraphBackend, name="onnxruntime", fmt="onnx")),
    "openvino": (("openvino",), functools.partial(GraphBackend, name="openvino", fmt="openvino")),
}


@dataclass
class Item:
    """One unit of batched work: a text, a question, a prompt."""
    length: int                 # tokens; the batcher sorts by it so a batch pads little
    payload: dict[str, Any]
    key: Hashable = None        # items with equal keys may share a model call (None: any of the endpoint)
    truncated: bool = False     # the text was longer than max_length (TEI's truncate: false refuses it)


class ServedModel:
    """A checkpoint loaded for serving. ``supports(endpoint)`` is None or the reason it cannot."""

    def __init__(self, path: str | Path, backend: str | None = None, precision: str = PRECISION_DEFAULT,
                 weights: str = WEIGHTS_DEFAULT):
        self.path = Path(path)
        if backend is None:              # the directory decides: an ONNX export runs on onnxruntime
            fmt = peek(self.path).format
            backend = next(name for name, (formats, _) in BACKENDS.items() if fmt in formats)
        if backend not in BACKENDS:
            raise PlmkitError(f"unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
        if precision not in PRECISIONS:
            raise PlmkitError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
        if weights not in WEIGHTS:
            raise PlmkitError(f"unknown weights '{weights}' (known: {', '.join(WEIGHTS)})")
        self.backend = BACKENDS[backend][1](self.path, precision, weights)
        self.weights = weights
        model = self.backend.model
        self.task, self.family, self.head_config = model.task, model.family, model.head_config
        self.labels: list[str] = list(model.head_config.get("labels") or [])
        self.config = model.config
        self.prep = prep_of(self.path, model.head_config)
        self.max_length = min(self.prep.max_length, model.config.max_position)
        self.tok = load_tokenizer(self.path)
        # configured once: the task encoders copy the tokenizer on every call, too slow per request
        self.enc = configured(self.tok, self.max_length)
        self.plain = configured(self.tok, None)
        self.frame = TextFrame(self.tok, self.max_length)
        self.pad = pad_id(self.tok)
        self.eos = end_ids(self.tok, getattr(model.config, "eos_token_id", None))   # every id that ends an answer
        self.vocab_size = model.config.vocab_size

    # -- which endpoints this model answers ---------------------------------------------

    def supports(self, endpoint: str, route: str | None = None) -> str | None:
        """``route``: the path named in the reason (a protocol route needs what ``endpoint`` does)."""
        what = f"the served model is a '{self.task}' {self.family} model"
        needs = {**{name: self._task_need(TASKS[name]) for name in TASK_ENDPOINTS},
                 "embed": (self.backend.can_embed,
                           "an encoder model (on onnxruntime or openvino: an export of task 'base')"),
                 "generate": (self.backend.can_generate, "a decoder (GPT) language model on the torch backend")}
        ok, need = needs[endpoint]
        return None if ok else f"{route or '/v1/' + endpoint} needs {need}; {what} on {self.backend.name}"

    def _task_need(self, task: TaskSpec) -> tuple[bool, str]:
        """Whether the model answers ``task``'s endpoint (its head, and label names if it predicts them)."""
        return self.task == task.head and (bool(self.labels) or not task.labelled), f"{task.what} (task '{task.name}')"

    def endpoints(self) -> list[str]:
        return [e for e in ENDPOINTS if self.supports(e) is None]

    def info(self) -> dict[str, Any]:
        return {"model": str(self.path), "task": self.task, "family": self.family, "labels": self.labels or None,
                "backend": self.backend.name, "precision": self.backend.precision, "weights": self.weights,
                "max_length": self.max_length, "endpoints": self.endpoints()}

    # -- per request (on the model thread, see serve/batcher.py): check and tokenise -----

    def prepare_classify(self, texts: list[str], pairs: list[str] | None) -> list[Item]:
        if pairs is not None:
            return [_feature_item(enc) for enc in self.enc.encode_batch(list(zip(texts, pairs)))]
        items = []   # a long text is cut as in fine-tuning (head_config.preprocess.long_text)
        for enc in self.plain.encode_batch(texts, add_special_tokens=False):
            windows = self.frame.features(enc.ids, self.prep.long_text, self.prep.doc_stride)
            items.append(Item(sum(len(w["input_ids"]) for w in windows), {"windows": windows},
                              truncated=len(enc.ids) > self.frame.budget))
        return items

    def prepare_embed(self, texts: list[str], normalize: bool) -> list[Item]:
        items = [_feature_item(enc) for enc in self.enc.encode_batch(texts)]
        for it in items:
            it.payload["normalize"] = normalize
        return items

    def prepare_ner(self, texts: list[str]) -> list[Item]:
        words = [[(m.group(), m.start(), m.end()) for m in WORD.finditer(t)] for t in texts]
        encs = self.enc.encode_batch([[w for w, _, _ in ws] for ws in words], is_pretokenized=True)
        items = []
        for text, ws, enc in zip(texts, words, encs):
            item = _feature_item(enc)
            item.payload.update(text=text, spans=[(s, e) for _, s, e in ws], word_ids=enc.word_ids)
            items.append(item)
        return items

    def prepare_qa(self, question: str, context: str) -> list[Item]:
        ex = QAExample(id="q", question=question, context=context)
        windows = prepare_qa_features(self.tok, [ex], self.max_length, self.prep.doc_stride)
        return [Item(sum(len(w["input_ids"]) for w in windows), {"windows": windows, "context": context})]

    def prepare_generate(self, prompt: str | None, max_new_tokens: int, temperature: float, top_k: int | None,
                         top_p: float | None, seed: int | None, messages: list[dict] | None = None) -> list[Item]:
        limit = self.config.max_position
        if 0 < temperature < MIN_TEMPERATURE:        # logits / 1e-300 overflow to inf, then NaN
            raise PlmkitError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {temperature}")
        if max_new_tokens >= limit:
            raise PlmkitError(f"max_new_tokens must be below the model's context of {limit} tokens, "
                              f"got {max_new_tokens}")
        ids = encode_prompt(self.tok, prompt, messages)      # BOS when the tokenizer adds one; chat template
        if not ids:
            raise PlmkitError("prompt is empty after tokenisation")
        if messages is not None and len(ids) > limit - max_new_tokens:
            raise PlmkitError(f"the conversation has {len(ids)} tokens; with max_new_tokens {max_new_tokens} it "
                              f"exceeds the model's context of {limit} tokens")
        # Keep the end of a long prompt: the context holds it and max_new_tokens; the answer says
        # how many tokens of its start were dropped.
        dropped = max(0, len(ids) - (limit - max_new_tokens))
        ids = ids[dropped:]
        params = {"max_new_tokens": max_new_tokens, "temperature": temperature,
                  "top_k": min(top_k, self.vocab_size) if top_k else None, "top_p": top_p}
        # Equal-length prompts with the same settings can share a call (no padding: positions
        # are absolute). A seeded sample runs alone so it does not depend on its neighbours.
        key: Hashable = object() if (seed is not None and temperature > 0) else (len(ids), *params.values())
        return [Item(len(ids), {"ids": ids, "seed": seed, "dropped": dropped, **params}, key)]

    def prepare_stream(self, stream: Stream, prompt: str | None, messages: list[dict] | None,
                       max_new_tokens: int | None, temperature: float, top_p: float | None,
                       seed: int | None) -> list[Item]:
        """A prompt for the OpenAI routes (serve/streams.py decodes it). Unlike /v1/generate a long
        prompt is refused, not cut; max_new_tokens None: up to the end of the context."""
        limit = self.config.max_position
        if 0 < temperature < MIN_TEMPERATURE:
            raise PlmkitError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {temperature}")
        ids = encode_prompt(self.tok, prompt, messages)
        if not ids:
            raise PlmkitError("the prompt is empty after tokenisation")
        room = limit - len(ids)
        if room < 1:
            raise PlmkitError(f"the prompt has {len(ids)} tokens: no room left in the model's context of {limit}")
        new = room if max_new_tokens is None else max_new_tokens
        if new > room:
            raise PlmkitError(f"the prompt has {len(ids)} tokens and max_tokens is {new}: more than the model's "
                              f"context of {limit} tokens")
        params = {"max_new_tokens": new, "temperature": temperature, "top_k": None, "top_p": top_p}
        stream.begin(self.tok, self.eos, len(ids), new)
        key = stream_key(temperature, top_p, seed)
        key = object() if key is None else key          # a seeded sample: a batch of its own
        return [Item(len(ids), {"ids": ids, "seed": seed, "stream": stream, **params}, key)]

    # -- model thread side: one micro-batch ----------------------------------------------

    def run(self, endpoint: str, payloads: list[dict[str, Any]], joining: Joining | None = None
            ) -> list[dict[str, Any]]:
        """``joining``: the batcher's, for a batch that takes in newcomers as it runs (streams)."""
        if joining is not None:
            return RUNNERS[endpoint](self, payloads, joining)
        return RUNNERS[endpoint](self, payloads)

    def call_rows(self, endpoint: str) -> float:
        """What one more call of ``endpoint`` costs in padded token rows, for the batcher's cuts: the
        backend's, or infinite for a decoding (a second batch would wait for the first's last token)."""
        return math.inf if endpoint in DECODING else self.backend.call_rows

    def _batch(self, feats: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch = collate(feats, self.pad)
        return {k: v for k, v in batch.items() if k in INPUT_KEYS}


def _feature_item(enc: Any) -> Item:
    return Item(len(enc.ids), {"input_ids": enc.ids, "attention_mask": enc.attention_mask,
                               "token_type_ids": enc.type_ids}, truncated=bool(enc.overflowing))


def _class_logits(sm: ServedModel, payloads: list[dict[str, Any]]) -> Tensor:
    """[B, C]: each item's logits, averaged over the windows of a long text."""
    windows = [w for p in payloads for w in p.get("windows", [p])]       # a pair is one window
    logits = sm.backend.heads(sm._batch(windows)).logits.float()         # [W, C]
    owner = [i for i, p in enumerate(payloads) for _ in p.get("windows", [p])]
    return pool_windows(logits, owner, len(payloads))                    # as the classify task pools them


def _run_classify(sm: ServedModel, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    probs = _class_logits(sm, payloads).softmax(-1)                      # [B, C]
    out = []
    for row in probs.tolist():
        best = int(np.argmax(row))
        out.append({"label": sm.labels[best], "score": row[best],
                    "scores": dict(zip(sm.labels, row))})
    return out


def _run_embed(sm: ServedModel, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    batch = sm._batch(payloads)
    if sm.task == "embed":     # a sentence encoder (finetune --task embed): its own pooling, mean or [CLS]
        vec = sm.backend.heads(batch).embeddings.float()
    else:
        h = sm.backend.hidden(batch).float()                                     # [B, T, H]
        mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)                 # [B, T, 1]
        vec = (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)                     # mean over real tokens
    out = []
    for p, v in zip(payloads, vec):
        if p["normalize"]:
            v = torch.nn.functional.normalize(v, dim=-1)
        out.append({"embedding": v.tolist(), "tokens": len(p["input_ids"])})
    return out


def _run_scores(sm: ServedModel, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The raw logits (TEI's /predict and /rerank score them as asked)."""
    return [{"logits": row} for row in _class_logits(sm, payloads).tolist()]


def _run_tokenize(sm: ServedModel, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return payloads                      # nothing to run: ``prepare`` tokenised on the model thread


def _run_ner(sm: ServedModel, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    probs = sm.backend.heads(sm._batch(payloads)).logits.float().softmax(-1)      # [B, T, C]
    score, best = probs.max(-1)
    out = []
    for p, s_row, b_row in zip(payloads, score.tolist(), best.tolist()):
        spans, word_ids = p["spans"], p["word_ids"]
        tags = word_predictions(word_ids, b_row[:len(word_ids)], len(spans), sm.labels)
        word_score = [1.0] * len(spans)         # words cut off by max_length are "O" with no evidence
        prev = None
        for t, w in enumerate(word_ids):
            if w is not None and w != prev:
                word_score[w] = s_row[t]
            prev = w
        entities = []
        for type_, first, last in get_entities([tags]):
            start, end = spans[first][0], spans[last][1]
            entities.append({"type": type_, "text": p["text"][start:end], "start": start, "end": end,
                             "score": float(np.mean(word_score[first:last + 1]))})
        out.append({"entities": entities, "tags": tags})
    return out


def _run_qa(sm: ServedModel, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    windows = [w for p in payloads for w in p["windows"]]
    res = sm.backend.heads(sm._batch(windows))
    starts = res.start_logits.float().log_softmax(-1).numpy()                       # [W, T]
    ends = res.end_logits.float().log_softmax(-1).numpy()
    out, i = [], 0
    for p in payloads:
        best = (-np.inf, None, None)
        for w in p["windows"]:
            # the QA task's span search (data/qa.py), on log p: a score comparable across windows
            best = max(best, best_span(w["offset_mapping"], starts[i], ends[i]), key=lambda b: b[0])
            i += 1
        score, start, end = best
        if start is None:
            out.append({"answer": "", "score": 0.0, "start": None, "end": None})
        else:
            out.append({"answer": p["context"][start:end], "score": float(np.exp(score)),
                        "start": start, "end": end})
    return out


def _run_generate(sm: ServedModel, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    p0 = payloads[0]                     # one key: same length and settings for the whole batch
    gen = torch.Generator().manual_seed(p0["seed"]) if p0["seed"] is not None else None
    ids = torch.tensor([p["ids"] for p in payloads])                                 # [B, T]
    new = sm.backend.generate(ids, max_new_tokens=p0["max_new_tokens"], temperature=p0["temperature"],
                              top_k=p0["top_k"], top_p=p0["top_p"], eos_token_id=sm.eos,
                              generator=gen)[:, ids.size(1):].tolist()
    out = []
    for row, p in zip(new, payloads):
        stop = min([row.index(e) for e in sm.eos if e in row] or [len(row)])
        out.append({"text": sm.tok.decode(row[:stop]), "tokens": stop,
                    "finish_reason": "eos" if stop < len(row) else "length", "prompt_tokens_dropped": p["dropped"]})
    return out


# (served, payloads) -> one result per payload; run_streams also takes the batcher's Joining
RUNNERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "classify": _run_classify, "embed": _run_embed, "ner": _run_ner, "qa": _run_qa, "generate": _run_generate,
    # the protocol routes' own (serve/openai.py, serve/tei.py): not endpoints of their own
    "stream": run_streams, "scores": _run_scores, "tokenize": _run_tokenize}
DECODING = ("generate", "stream")     # endpoints whose call runs a whole decoding
