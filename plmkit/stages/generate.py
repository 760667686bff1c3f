"""Generate text from a decoder (GPT) checkpoint, with the KV cache."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from ..config import option
from ..errors import PlmkitError, a_or_an
from ..loading import load
from ..models.generate import generate
from ..models.weight_int8 import DEFAULT as WEIGHTS_DEFAULT
from ..models.weight_int8 import HELP as WEIGHTS_HELP
from ..models.weight_int8 import WEIGHTS, use_weights
from ..tokenizer import load_tokenizer
from ..tokenizer.chat import encode_prompt, end_ids


@dataclass
class Config:
    model: str = option(help="decoder checkpoint directory")
    prompt: str = option(help="text to continue")
    max_new_tokens: int = option(50, help="tokens to generate (at most: the model's context ends generation "
                                 "earlier, and says so)", ge=1)
    temperature: float = option(1.0, help="sampling temperature; 0 = greedy", ge=0)
    top_k: int | None = option(None, help="sample among the k most likely tokens", ge=1)
    top_p: float | None = option(None, help="nucleus sampling mass", gt=0, le=1)
    seed: int = option(0, help="random seed")
    weights: str = option(WEIGHTS_DEFAULT, help=WEIGHTS_HELP, choices=list(WEIGHTS))
    no_cache: bool = option(False, help="recompute every position (slow; for checking the cache)")
    chat: bool = option(False, help="send the prompt as a user message through the model's chat template "
                        "and print only the answer")


def run(cfg: Config) -> int:
    model = load(cfg.model, needs_torch="generation (the KV cache)")
    if not model.config.can_generate:
        raise PlmkitError(f"{cfg.model}: generate needs a decoder (GPT) model, "
                          f"this one is {a_or_an(model.family)}")
    use_weights(model, cfg.weights)
    tok = load_tokenizer(cfg.model)
    # BOS when the tokenizer adds one (Llama); with --chat, the template's rendering of one user turn
    turn = [{"role": "user", "content": cfg.prompt}]
    ids = encode_prompt(tok, messages=turn) if cfg.chat else encode_prompt(tok, cfg.prompt)
    if not ids:
        raise PlmkitError("the prompt is empty after tokenisation")
    stops = end_ids(tok, model.config.eos_token_id)
    out = generate(model, torch.tensor([ids]), cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                   eos_token_id=stops, generator=torch.Generator().manual_seed(cfg.seed),
                   use_cache=not cfg.no_cache)
    new = out[0, len(ids):].tolist()
    # generation ends at the end-of-text (or end-of-turn) token: it is not part of the text
    end = min([new.index(s) for s in stops if s in new] or [len(new)])
    if end == len(new) < cfg.max_new_tokens:     # neither an end token nor the limit: the context ended it
        print(f"note: generation stopped after {len(new)} new tokens: the model's context is "
              f"{model.config.max_position} tokens and the prompt has {len(ids)} "
              f"(--max-new-tokens {cfg.max_new_tokens})", file=sys.stderr)
    new = new[:end]
    if cfg.chat:   # the answer alone
        print(tok.decode(new).strip())
    else:
        print(tok.decode(ids + new, skip_special_tokens=False))
    return 0
