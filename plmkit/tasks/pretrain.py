"""``plmkit pretrain --init DIR``: continued pre-training from a checkpoint (the stage is
``stages/pretrain.py``; this is the checkpoint it starts from). Not a ``TaskSpec``: the pre-training
objectives as what a checkpoint is trained for, beside the fine-tuning tasks, above the loader.

Any directory the loader reads (a plmkit checkpoint or a Hugging Face one of a supported family)
starts the run. Its architecture and tokenizer are kept: options that would say otherwise
(--arch, --size, --tokenizer, --vocab-size, --pre-ln, --embedding-size, --share-layers) are
refused when they contradict it. Its pre-training head is reused where the objective allows: an
MLM head serves mlm, mlm+nsp and mlm+sop (the sentence-pair head only for the same objective),
an LM head serves clm. A fine-tuned checkpoint continues from its encoder (or decoder): its task
head is dropped, a new pre-training head starts, and the run says so. ``--add-tokens FILE``
grows the vocabulary first (``models/vocab.py``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from ..data.cooccurrence import ppmi_vectors
from ..data.shards import TokenShards, token_counts
from ..errors import PlmkitError
from ..loading import load, peek
from ..models.config import ARCHS, arch_of, preset
from ..models.heads import HEAD_CAUSAL
from ..models.model import PlmModel
from ..models.vocab import add_tokens, grow_vocab, read_tokens
from ..tokenizer import load_tokenizer

# the objectives a checkpoint continues with, in order of preference: those whose head fits its
# backbone (HEAD_CAUSAL); rtd trains a new generator and discriminator, so never from a checkpoint
CONTINUED = ("mlm", "mlm+nsp", "mlm+sop", "clm")
# where an MLM head's weights live under each pre-training head
MLM_PREFIX = {"mlm": "head.", "mlm+nsp": "head.mlm.", "mlm+sop": "head.mlm."}
# options that describe a new model's architecture, tokenizer or first weights: with --init they come
# from it (a recipe's value is dropped, a given one is refused unless equal)
ARCH_OPTIONS = ("arch", "size", "tokenizer", "vocab_size", "split_cjk", "pre_ln", "embedding_size", "share_layers",
                "embedding_init")


@dataclass
class Parent:
    """The checkpoint a continued pre-training starts from."""
    path: Path
    model: PlmModel
    tokenizer: Tokenizer
    pieces: dict[int, list[int]] = field(default_factory=dict)    # added token id -> its old pieces
    added: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)               # --add-tokens words it already had

    @property
    def family(self) -> str:
        return self.model.config.family

    @property
    def objectives(self) -> tuple[str, ...]:
        """What it can continue with: masked LM objectives (encoder) or causal LM (decoder)."""
        causal = self.model.config.causal
        return tuple(t for t in CONTINUED if HEAD_CAUSAL[t] in (None, causal))

    def default_objective(self) -> str:
        """The checkpoint's own pre-training objective, else MLM (encoder) / causal LM (decoder)."""
        return self.model.task if self.model.task in self.objectives else self.objectives[0]


def load_parent(cfg: Any) -> Parent:
    """The --init checkpoint and its tokenizer, or a one-line error; nothing is written."""
    path = Path(cfg.init)
    saved = peek(path)                    # not a directory / no config.json: said here
    if saved.format == "adapter":
        raise PlmkitError(f"{path}: an adapter checkpoint; merge it into its parent first (plmkit merge), "
                          "then continue pre-training the merged model")
    model = load(path, needs_torch="continued pre-training")
    tok = _parent_tokenizer(path, cfg.tokenizer, model.config.vocab_size)
    parent = Parent(path, model, tok)
    _check_agrees(cfg, parent)
    if cfg.add_tokens:
        grown, parent.pieces, parent.known = add_tokens(tok, read_tokens(cfg.add_tokens))
        parent.tokenizer, parent.added = grown, [grown.id_to_token(i) for i in parent.pieces]
    return parent


def _parent_tokenizer(path: Path, given: str | None, vocab_size: int) -> Tokenizer:
    try:
        tok = load_tokenizer(path)
    except PlmkitError:
        if given is None:
            raise PlmkitError(f"{path}: the checkpoint has no tokenizer; pass --tokenizer with the one it was "
                              "trained with") from None
        tok = load_tokenizer(given)
    else:
        if given is not None and load_tokenizer(given).to_str() != tok.to_str():
            raise PlmkitError(f"--tokenizer {given} contradicts --init {path}, which has a tokenizer of its own; "
                              "continued pre-training keeps it (leave --tokenizer out; --add-tokens grows it)")
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > vocab_size:
        raise PlmkitError(f"{path}: the tokenizer has {n} tokens but the model only {vocab_size} embedding rows")
    return tok


def _check_agrees(cfg: Any, parent: Parent) -> None:
    """Refuse architecture options that contradict the checkpoint (a value equal to it is fine)."""
    m = parent.model.config
    kind = f"{_a(m.family)} checkpoint (layout {m.layout})"
    wrong = []
    arch = arch_of(m)
    if cfg.arch is not None and cfg.arch != arch:
        wrong.append(f"--arch {cfg.arch}")
    if cfg.size is not None and not _same_size(arch, cfg.size, m):
        wrong.append(f"--size {cfg.size}")
    if cfg.vocab_size is not None and cfg.vocab_size != m.vocab_size:
        wrong.append(f"--vocab-size {cfg.vocab_size}")
    for name, flag in (("pre_ln", "pre-ln"), ("share_layers", "share-layers")):
        value = getattr(cfg, name)
        if value is not None and value != getattr(m, name):
            wrong.append(f"--{flag}" if value else f"--no-{flag}")
    if cfg.embedding_size is not None and cfg.embedding_size != m.embedding_width:
        wrong.append(f"--embedding-size {cfg.embedding_size}")
    if cfg.embedding_init == "ppmi":
        wrong.append("--embedding-init ppmi")
    if cfg.split_cjk is not None:      # the checkpoint's tokenizer is kept as it is
        wrong.append("--split-cjk" if cfg.split_cjk else "--no-split-cjk")
    if wrong:
        raise PlmkitError(f"{', '.join(wrong)} contradict{'s' if len(wrong) == 1 else ''} --init {parent.path}: "
                          f"{kind} with {m.num_layers} layers of {m.hidden_size}, vocabulary {m.vocab_size}"
                          f"{', pre-LN' if m.pre_ln else ''}. Continued pre-training keeps the checkpoint's "
                          "architecture and tokenizer; leave these options out")


def _same_size(arch: str | None, size: str, m: Any) -> bool:
    """The size preset ``size`` of ``arch`` has the checkpoint's depth and widths."""
    if arch is None or size not in ARCHS[arch].presets:
        return False
    want = preset(arch, size, vocab_size=m.vocab_size)
    return all(getattr(want, k) == getattr(m, k) for k in ("num_layers", "hidden_size", "num_heads")) \
        and want.ffn[0] == m.ffn[0]


def _a(family: str) -> str:
    return f"{'an' if family[0] in 'aeiou' else 'a'} {family}"


def check_objective(task: str, parent: Parent) -> None:
    allowed = parent.objectives
    if task == "rtd":
        raise PlmkitError(f"--objective rtd trains a new ELECTRA generator and discriminator from scratch; with "
                          f"--init {parent.path} choose {', '.join(allowed)}")
    if task not in allowed:
        need = "a decoder (causal LM)" if task == "clm" else "an encoder (masked LM)"
        raise PlmkitError(f"--objective {task} needs {need}; --init {parent.path} is {_a(parent.family)} "
                          f"(layout {parent.model.config.layout}): choose {', '.join(allowed)}")


def build_model(parent: Parent, task: str, dropout: float | None, seed: int,
                shards: TokenShards | None = None) -> tuple[PlmModel, str]:
    """The model continued pre-training starts from, and a sentence on what it reuses. A new MLM
    head starts from the corpus's unigram frequencies (``shards``, see ``unigram_head``)."""
    src = parent.model
    model_cfg = dataclasses.replace(src.config)
    if dropout is not None:
        model_cfg.hidden_dropout = model_cfg.attention_dropout = dropout
    torch.manual_seed(seed)                          # a new head is initialised from the run's seed
    model = PlmModel(model_cfg, task)
    state = {k: v for k, v in src.state_dict().items() if k.startswith("backbone.")}
    head, said = _head_state(src, task)
    missing, _ = model.load_state_dict({**state, **head}, strict=False)
    tied = {n for n, p in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    lost = [k for k in missing if k.startswith("backbone.") and k not in tied]
    if lost:
        raise PlmkitError(f"{parent.path}: weights missing for {len(lost)} backbone parameters, e.g. {lost[:3]}")
    if parent.pieces or parent.tokenizer.get_vocab_size(with_added_tokens=True) > model_cfg.vocab_size:
        model = grow_vocab(model, parent.tokenizer.get_vocab_size(with_added_tokens=True), parent.pieces)
    if not head and task in MLM_PREFIX and shards is not None:
        unigram_head(model, shards)
        said += "; its output bias starts at the corpus's token frequencies"
    return model, said


def unigram_head(model: PlmModel, shards: TokenShards) -> None:
    """Start a new MLM head's output bias at the log frequency of each token in the corpus (add-one
    smoothed). A checkpoint without an MLM head (sentence-transformers models, classifiers) would
    otherwise start above a uniform guess (all-MiniLM-L6-v2 on SST-2 text: loss 10.8 against ln V =
    10.3) and spend its first steps, and the encoder's gradients, on learning word frequencies; the
    bias starts it at the unigram entropy (7.3 there). The decoder matrix is already the word
    embeddings (tied)."""
    mlm = model.head.mlm if hasattr(model.head, "mlm") else model.head
    counts = token_counts(shards, mlm.decoder.bias.numel())
    with torch.no_grad():
        mlm.decoder.bias.copy_(torch.from_numpy(np.log((counts + 1.0) / (counts + 1.0).sum())).float())


def ppmi_embeddings(model: torch.nn.Module, shards: TokenShards) -> int:
    """Start a new model's token embeddings at the corpus's PPMI-SVD word vectors
    (``data/cooccurrence.py``), at the standard deviation of their random start; tokens the corpus
    never shows (special tokens among them) keep their random rows. An RTD pre-trainer's generator
    reads the same table. Returns how many rows were set."""
    backbone = model.discriminator.backbone if hasattr(model, "discriminator") else model.backbone
    word = backbone.embeddings.word.weight
    vectors, seen = ppmi_vectors(shards, word.shape[0], word.shape[1])
    with torch.no_grad():
        word[seen] = (vectors[seen] * word.std()).to(word.dtype)
    return int(seen.sum())


def _head_state(src: PlmModel, task: str) -> tuple[dict[str, torch.Tensor], str]:
    state = src.state_dict()
    if src.task == task:
        return {k: v for k, v in state.items() if k.startswith("head.")}, f"its {task} head is reused"
    if src.task in MLM_PREFIX and task in MLM_PREFIX:
        a, b = MLM_PREFIX[src.task], MLM_PREFIX[task]
        pair = "" if task == "mlm" else f"; the {task[4:].upper()} head is new"
        return ({b + k[len(a):]: v for k, v in state.items() if k.startswith(a) and not k.startswith("head.pair.")},
                f"its MLM head (from {src.task}) is reused{pair}")
    what = src.config.family
    if src.task in ("base",):
        return {}, f"a bare {what}: a new {task} head starts"
    return {}, (f"a '{src.task}' checkpoint: its {what} continues; the {src.task} head is dropped and a new "
                f"{task} head starts")


def frozen_pooler(model: PlmModel, task: str) -> bool:
    """An MLM-only run leaves a checkpoint's pooler without gradient: it stays as it is (frozen),
    kept for the fine-tuning that reads it (and DDP needs every trainable parameter used)."""
    return task == "mlm" and model.backbone.pooler is not None
