"""Tiny seeded models and in-process servers for the protocol tests (test_serve_openai.py,
test_serve_tei.py): a Llama-shaped decoder with and without a chat template, plmkit encoders
(a classifier, a one-output cross-encoder, a sentence encoder trained for shorter vectors)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from decoders import make_hf_decoder
from plmkit.models.checkpoint import save_checkpoint
from plmkit.models.config import EncoderConfig
from plmkit.models.model import PlmModel
from plmkit.serve.app import Limits, create_app
from plmkit.serve.backend import ServedModel
from plmkit.tokenizer import train_tokenizer
from test_serve import CORPUS, ThreadServer

LIMITS = dict(max_batch=32, max_wait_ms=2.0, max_body_bytes=8192, max_texts=8, max_chars=200, timeout_s=20.0)


def make_decoders(root: Path) -> dict[str, Path]:
    """'chat': Llama with Llama 3's chat template; 'plain': the same without a template."""
    chat = make_hf_decoder(root / "llama", "llama", "llama3", scale=6.0)     # sharp logits: no greedy ties
    plain = make_hf_decoder(root / "plain", "llama", "llama3", scale=6.0)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    return {"chat": chat, "plain": plain}


def make_encoders(root: Path) -> dict[str, Path]:
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS)
    wp = train_tokenizer([corpus], "wordpiece", vocab_size=200, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=wp.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=64, max_position=128, hidden_dropout=0.0, attention_dropout=0.0)
    short = {"preprocess": {"max_length": 16}}             # long texts are easy to make
    models = {"classify": PlmModel(cfg, "classify", {"num_labels": 2, "labels": ["negative", "positive"], **short}),
              "cross": PlmModel(cfg, "classify", {"num_labels": 1, "labels": ["relevant"], **short}),
              "sentence": PlmModel(cfg, "base", {"matryoshka_dims": [8, 16], **short})}
    return {name: save_checkpoint(m, root / name, tokenizer=wp) for name, m in models.items()}


def start(path: Path, **limits) -> ThreadServer:
    return ThreadServer(create_app(ServedModel(path, precision="fp32"), Limits(**{**LIMITS, **limits})))


def batches(metrics_text: str, endpoint: str) -> tuple[int, int]:
    """(model calls of one item, all model calls) of ``endpoint`` in /metrics."""
    ones = re.search(rf'plmkit_batch_size_bucket{{endpoint="{endpoint}",le="1"}} (\d+)', metrics_text)
    total = re.search(rf'plmkit_batch_size_count{{endpoint="{endpoint}"}} (\d+)', metrics_text)
    return (int(ones.group(1)), int(total.group(1))) if total else (0, 0)


def openai_error(r) -> dict:
    """The error of an OpenAI-shaped answer, checked to have exactly OpenAI's fields."""
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]
