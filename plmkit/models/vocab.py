"""Grow a model's vocabulary (``plmkit pretrain --init DIR --add-tokens FILE``).

New words go into the tokenizer as added tokens (matched as whole words, after the tokenizer's
normalisation), and every vocabulary-sized tensor of the model (the word embeddings, an untied
output matrix, the MLM output bias) gets a row for each: the mean of the rows of the sub-word
pieces the old tokenizer split the word into. A new word then starts where the model already
placed its pieces, not at a random point (Hewitt 2021; the usual practice for domain vocabularies).

Which tensors are vocabulary-sized is not listed by name: the model is rebuilt with a larger
``vocab_size`` and every tensor whose shape changed is one. A family with another output layout
needs nothing here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer

from ..errors import PlmkitError
from .model import PlmModel


def read_tokens(path: str | Path) -> list[str]:
    """The words of a tokens file: one per line, blank lines skipped, duplicates once."""
    path = Path(path)
    if not path.is_file():
        raise PlmkitError(f"{path}: tokens file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise PlmkitError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x})") from None
    words: list[str] = []
    for n, line in enumerate(lines, 1):
        word = line.strip()
        if not word:
            continue
        if len(word.split()) > 1:
            raise PlmkitError(f"{path}:{n}: one token per line, got {word!r}")
        words.append(word)
    if not words:
        raise PlmkitError(f"{path}: no tokens (one word per line)")
    return list(dict.fromkeys(words))


def add_tokens(tok: Tokenizer, words: list[str]) -> tuple[Tokenizer, dict[int, list[int]], list[str]]:
    """A copy of ``tok`` with ``words`` added; returns (new tokenizer, new id -> the old tokenizer's
    piece ids for that word, the words it already had as one token and were left out)."""
    known = [w for w in words if _single_token(tok, w)]
    new_words = [w for w in words if w not in known]
    grown = Tokenizer.from_str(tok.to_str())
    for attr in ("plmkit_source_config",):       # what load_tokenizer attached (chat template, names)
        if hasattr(tok, attr):
            setattr(grown, attr, getattr(tok, attr))
    grown.add_tokens([AddedToken(w, single_word=True, normalized=True) for w in new_words])
    pieces = {}
    for w in new_words:
        new_id = grown.token_to_id(w)
        if new_id is None:
            raise PlmkitError(f"cannot add the token {w!r} to this tokenizer")
        ids = tok.encode(w, add_special_tokens=False).ids
        if not ids:
            raise PlmkitError(f"the tokenizer turns {w!r} into no tokens at all; it cannot be added")
        pieces[new_id] = ids
    return grown, pieces, known


def _single_token(tok: Tokenizer, word: str) -> bool:
    """The tokenizer already reads ``word`` as one known token (not as its unknown token)."""
    ids = tok.encode(word, add_special_tokens=False).ids
    unk = getattr(tok.model, "unk_token", None)
    return len(ids) == 1 and (unk is None or ids[0] != tok.token_to_id(unk))


@torch.no_grad()
def grow_vocab(model: PlmModel, vocab_size: int, pieces: dict[int, list[int]]) -> PlmModel:
    """``model`` with at least ``vocab_size`` rows in every vocabulary-sized tensor; row ``i`` of
    ``pieces`` becomes the mean of the rows ``pieces[i]`` (ids past the old size, or unused rows of
    a vocabulary padded beyond its tokenizer)."""
    old_v = model.config.vocab_size
    cfg = dataclasses.replace(model.config, vocab_size=max(vocab_size, old_v))
    with torch.device("meta"):   # which tensors depend on the vocabulary size: those whose shape moves
        probe = PlmModel(dataclasses.replace(cfg, vocab_size=cfg.vocab_size + 1), model.task,
                         model.head_config).state_dict()
    grown = PlmModel(cfg, model.task, model.head_config)
    old, new = model.state_dict(), grown.state_dict()
    for name, t in new.items():
        src = old[name]
        if probe[name].shape == t.shape:
            t.copy_(src)
            continue
        if probe[name].shape[1:] != t.shape[1:] or probe[name].shape[0] != t.shape[0] + 1:
            raise PlmkitError(f"cannot grow the vocabulary of {name}: its vocabulary is not its first dimension")
        t[:old_v].copy_(src)
        for i, ids in pieces.items():
            t[i] = src[ids].float().mean(0).to(t.dtype)
    grown.load_state_dict(new)
    return grown
