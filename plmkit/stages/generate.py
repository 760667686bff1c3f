"""Generate text from a decoder (GPT) checkpoint, with the KV cache."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import option
from ..errors import PlmkitError, a_or_an
from ..models.checkpoint import load_model
from ..models.generate import generate
from ..tokenizer import load_tokenizer, special_ids


@dataclass
class Config:
    model: str = option(help="decoder checkpoint directory")
    prompt: str = option(help="text to continue")
    max_new_tokens: int = option(50, help="tokens to generate")
    temperature: float = option(1.0, help="sampling temperature; 0 = greedy")
    top_k: int | None = option(None, help="sample among the k most likely tokens")
    top_p: float | None = option(None, help="nucleus sampling mass")
    seed: int = option(0, help="random seed")
    no_cache: bool = option(False, help="recompute every position (slow; for checking the cache)")


def run(cfg: Config) -> int:
    model = load_model(cfg.model)
    if model.family != "decoder":
        raise PlmkitError(f"{cfg.model}: generate needs a decoder (GPT) model, "
                          f"this one is {a_or_an(model.family)}")
    tok = load_tokenizer(cfg.model)
    ids = tok.encode(cfg.prompt, add_special_tokens=False).ids
    if not ids:
        raise PlmkitError("the prompt is empty after tokenisation")
    eos = special_ids(tok).get("eos")
    out = generate(model, torch.tensor([ids]), cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                   eos_token_id=eos, generator=torch.Generator().manual_seed(cfg.seed),
                   use_cache=not cfg.no_cache)
    new = out[0, len(ids):].tolist()
    if eos in new:               # generation ends at the end-of-text token: it is not part of the text
        new = new[:new.index(eos)]
    print(tok.decode(ids + new, skip_special_tokens=False))
    return 0
