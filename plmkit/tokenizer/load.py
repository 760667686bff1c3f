"""Save and load tokenizers in the layout HF ``transformers`` reads.

A saved directory holds ``tokenizer.json`` (the whole pipeline), ``tokenizer_config.json``
(class, max length, special token names, casing) and ``special_tokens_map.json``, so both
``PreTrainedTokenizerFast(tokenizer_file=...)`` and ``AutoTokenizer.from_pretrained(dir)`` load it.

``load_tokenizer`` also reads plain HF model directories: one with ``tokenizer.json`` (any
model: WordPiece, byte-level BPE, SentencePiece Unigram, with the template it carries), an
old BERT one with only ``vocab.txt`` (+ optional ``tokenizer_config.json``), or an old GPT-2 /
RoBERTa one with ``vocab.json`` + ``merges.txt``. ``save_tokenizer`` writes BERT's and GPT-2's
configs as before; any other vocabulary is saved under the special tokens it has.

What ``tokenizer.json`` cannot hold and decoders need (the chat template, the names of the special
tokens: Llama 3's ``<|eot_id|>``, Qwen's ``<|im_end|>``) is read from the source directory's
``tokenizer_config.json`` (and ``chat_template.jinja``), travels with the loaded tokenizer
(``source_config``) and is written back by ``save_tokenizer``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from tokenizers import Tokenizer, models, pre_tokenizers, processors

from ..data.shards import TokenShards, token_share
from ..errors import PlmkitError
from ..io import atomic_write_text, read_json, write_json
from .train import BERT_SPECIALS, GPT_EOS, GPT_PAD, bert_pipeline, bert_post_processor, gpt_pipeline

# role -> candidate tokens, first match wins (BERT, GPT-2/plmkit, RoBERTa/sentencepiece styles).
_ROLE_TOKENS: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", GPT_PAD, "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
    "bos": (GPT_EOS, "<s>"),
    "eos": (GPT_EOS, "</s>"),
}

ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
SENTENCEPIECE_FILES = ("spiece.model", "sentencepiece.bpe.model", "tokenizer.model")

# model type (tokenizers class name) -> plmkit kind
_KIND_OF_MODEL = {"WordPiece": "wordpiece", "BPE": "bpe", "Unigram": "unigram", "WordLevel": "wordlevel"}


# tokenizer_config.json fields kept from the source directory: they travel with the Tokenizer object
# as an attribute (tokenizers.Tokenizer takes one) and save_tokenizer writes them back.
KEPT_FIELDS = ("chat_template", "bos_token", "eos_token", "pad_token", "unk_token")
_SOURCE_ATTR = "plmkit_source_config"


def source_config(tok: Tokenizer) -> dict[str, Any]:
    """The kept tokenizer_config.json fields of the directory ``tok`` was loaded from ({} if none)."""
    return dict(getattr(tok, _SOURCE_ATTR, None) or {})


def _read_source_config(directory: Path) -> dict[str, Any]:
    cfg_file = directory / "tokenizer_config.json"
    cfg = read_json(cfg_file) if cfg_file.is_file() else {}
    kept = {}
    for key in KEPT_FIELDS:
        value = cfg.get(key) if isinstance(cfg, dict) else None
        value = value.get("content") if isinstance(value, dict) and key.endswith("_token") else value
        if value is not None:
            kept[key] = value
    jinja = directory / "chat_template.jinja"      # where transformers >= 4.50 saves the template
    if jinja.is_file():
        kept["chat_template"] = jinja.read_text(encoding="utf-8")
    return kept


# The model inputs a tokenizer's features feed (a batch's other keys are labels and bookkeeping).
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """Ids of the special roles this vocabulary has: a subset of pad/unk/cls/sep/mask/bos/eos.
    The source's tokenizer_config.json names win (Llama 3's eos is <|eot_id|> or <|end_of_text|>)."""
    out = {}
    for role, name in ((k[:-6], v) for k, v in source_config(tok).items() if k.endswith("_token")):
        if isinstance(name, str) and tok.token_to_id(name) is not None:
            out[role] = tok.token_to_id(name)
    for role, candidates in _ROLE_TOKENS.items():
        for token in candidates if role not in out else ():
            i = tok.token_to_id(token)
            if i is not None:
                out[role] = i
                break
    return out


def pad_id(tok: Tokenizer) -> int:
    """[PAD] / <|pad|> when the vocabulary has one, else EOS (GPT-2), else 0."""
    ids = special_ids(tok)
    return ids.get("pad", ids.get("eos", 0))


def tokenizer_kind(tok: Tokenizer) -> str:
    """"wordpiece" or "bpe" (or "unigram"/"wordlevel" for foreign tokenizers)."""
    name = type(tok.model).__name__
    return _KIND_OF_MODEL.get(name, name.lower())


def _lowercases(tok: Tokenizer) -> bool:
    """Whether the normaliser lowercases (BertNormalizer, Lowercase, or inside a Sequence)."""
    def walk(n: dict[str, Any] | None) -> bool:
        if not n:
            return False
        if n["type"] == "Sequence":
            return any(walk(x) for x in n["normalizers"])
        return n["type"] == "Lowercase" or bool(n.get("lowercase"))
    return walk(json.loads(tok.to_str()).get("normalizer"))


def _wordpiece_config(tok: Tokenizer) -> dict[str, Any]:
    lower = _lowercases(tok)
    return {"tokenizer_class": "BertTokenizer", "do_lower_case": lower, "strip_accents": None,
            "tokenize_chinese_chars": _splits_cjk(tok), "model_max_length": 512, **BERT_SPECIALS}


def _splits_cjk(tok: Tokenizer) -> bool:
    """Whether a BertNormalizer makes each CJK character a word (BertTokenizer's tokenize_chinese_chars)."""
    norm = json.loads(tok.to_str()).get("normalizer") or {}
    return bool(norm.get("handle_chinese_chars", True))


def _bpe_config(tok: Tokenizer) -> dict[str, Any]:
    names = {"bos_token": GPT_EOS, "eos_token": GPT_EOS, "unk_token": GPT_EOS}
    if tok.token_to_id(GPT_PAD) is not None:
        names["pad_token"] = GPT_PAD
    if tok.token_to_id(BERT_SPECIALS["cls_token"]) is not None:   # a BPE with BERT's specials (ModernBERT)
        names = {k: t for k, t in BERT_SPECIALS.items() if tok.token_to_id(t) is not None}
    # PreTrainedTokenizerFast takes the pipeline from tokenizer.json as is.
    return {"tokenizer_class": "PreTrainedTokenizerFast", "add_prefix_space": False,
            "do_lower_case": _lowercases(tok), "model_max_length": 1024, **names}


def _roles_config(tok: Tokenizer) -> dict[str, Any]:
    """Any other tokenizer (RoBERTa's byte-level BPE with <s>/</s>, XLM-R's and ALBERT's SentencePiece
    Unigram): tokenizer.json is the whole pipeline, so transformers' generic class reads it as is;
    the special tokens are the ones this vocabulary has, under HF's role names."""
    names = {f"{role}_token": tok.id_to_token(i) for role, i in special_ids(tok).items()}
    return {"tokenizer_class": "PreTrainedTokenizerFast", "do_lower_case": _lowercases(tok),
            "model_max_length": 512, **names}


def _bpe_or_roles_config(tok: Tokenizer) -> dict[str, Any]:
    return _bpe_config(tok) if tok.token_to_id(GPT_EOS) is not None else _roles_config(tok)


_CONFIG_OF_KIND: dict[str, Callable[[Tokenizer], dict[str, Any]]] = {
    "wordpiece": _wordpiece_config, "bpe": _bpe_or_roles_config, "unigram": _roles_config}


def save_tokenizer(tok: Tokenizer, out_dir: str | Path, kind: str | None = None,
                   model_max_length: int | None = None, model_input_names: list[str] | None = None) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``out_dir``.

    ``out_dir`` must exist (callers create it, usually via ``io.atomic_dir``); files in it are
    replaced atomically. ``kind`` defaults to ``tokenizer_kind(tok)``. ``model_input_names``: what
    HF's tokenizer returns (a model without segment embeddings must not get token_type_ids).
    Returns the paths written.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise PlmkitError(f"{out_dir}: not a directory")
    kind = kind or tokenizer_kind(tok)
    if kind not in _CONFIG_OF_KIND:
        raise PlmkitError(f"cannot save a '{kind}' tokenizer (known: {', '.join(_CONFIG_OF_KIND)})")
    config = _with_source(_CONFIG_OF_KIND[kind](tok), tok)
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    if model_input_names is not None:
        config["model_input_names"] = list(model_input_names)
    special_map = {k: v for k, v in config.items() if k.endswith("_token")}
    paths = [out_dir / n for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")]
    atomic_write_text(paths[0], tok.to_str(pretty=True))
    write_json(paths[1], config)
    write_json(paths[2], special_map)
    return paths


def _with_source(config: dict[str, Any], tok: Tokenizer) -> dict[str, Any]:
    """The generated config with the source's kept fields over it; a generated special-token name
    the vocabulary lacks (GPT-2's <|endoftext|> in a Llama vocabulary) is dropped."""
    src = source_config(tok)
    if not src:
        return config
    config = {k: v for k, v in config.items() if not (k.endswith("_token") and tok.token_to_id(v) is None)}
    return {**config, **src}


def has_tokenizer(path: str | Path) -> bool:
    """The directory holds tokenizer files (tokenizer.json, BERT's vocab.txt or GPT-2's vocab.json)."""
    return any((Path(path) / n).is_file() for n in ("tokenizer.json", "vocab.txt", "vocab.json"))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from a plmkit or HF directory (or a tokenizer.json file).

    The returned tokenizer has padding and truncation switched off: callers set their own.
    """
    path = Path(path)
    if path.is_file():
        tok = _from_json(path)
    elif not path.is_dir():
        raise PlmkitError(f"{path}: tokenizer directory not found")
    elif (path / "tokenizer.json").is_file():
        tok = _from_json(path / "tokenizer.json")
    elif (path / "vocab.txt").is_file():
        tok = _from_bert_vocab(path)
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        tok = _from_gpt2_files(path)
    elif any((path / n).is_file() for n in SENTENCEPIECE_FILES):
        raise PlmkitError(f"{path}: a SentencePiece model without tokenizer.json is not read; write one with "
                          "transformers: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)")
    else:
        raise PlmkitError(f"{path}: no tokenizer found (expected tokenizer.json, vocab.txt, "
                          "or vocab.json + merges.txt)")
    tok.no_padding()
    tok.no_truncation()
    kept = _read_source_config(path) if path.is_dir() else {}
    if kept:
        setattr(tok, _SOURCE_ATTR, kept)
    return tok


def _from_json(file: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for any parse error
        raise PlmkitError(f"{file}: not a valid tokenizer.json ({e})") from None


def _read_vocab_txt(file: Path) -> dict[str, int]:
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise PlmkitError(f"{file}: not valid UTF-8") from None
    vocab: dict[str, int] = {}
    for token in lines:
        vocab.setdefault(token, len(vocab))  # first occurrence wins, like BertTokenizer
    return vocab


def _from_bert_vocab(path: Path) -> Tokenizer:
    """BERT's vocab.txt: rebuild the BertWordPiece pipeline, casing from tokenizer_config.json."""
    cfg_file = path / "tokenizer_config.json"
    cfg = read_json(cfg_file) if cfg_file.is_file() else {}
    lowercase = bool(cfg.get("do_lower_case", True))
    vocab = _read_vocab_txt(path / "vocab.txt")
    unk = cfg.get("unk_token", BERT_SPECIALS["unk_token"])
    unk = unk["content"] if isinstance(unk, dict) else unk
    if unk not in vocab:
        raise PlmkitError(f"{path / 'vocab.txt'}: unknown token {unk!r} not in the vocabulary")
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    bert_pipeline(tok, lowercase)
    strip = cfg.get("strip_accents")
    if strip is not None:  # explicit setting overrides "strip when lowercasing"
        tok.normalizer.strip_accents = bool(strip)
    tok.normalizer.handle_chinese_chars = bool(cfg.get("tokenize_chinese_chars", True))
    # Specials are never split or normalised ("[CLS]" in text stays one token), as in BertTokenizer.
    tok.add_special_tokens([t for t in BERT_SPECIALS.values() if t in vocab])
    bert_post_processor(tok)
    return tok


def _from_gpt2_files(path: Path) -> Tokenizer:
    """GPT-2's vocab.json + merges.txt; with <s> and </s> in the vocabulary, RoBERTa's (its
    ``<s> A </s></s> B </s>`` template, ``add_prefix_space`` from tokenizer_config.json)."""
    try:
        bpe = models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))
    except Exception as e:  # tokenizers raises a bare Exception for any parse error
        raise PlmkitError(f"{path}: cannot read vocab.json/merges.txt ({e})") from None
    tok = Tokenizer(bpe)
    gpt_pipeline(tok, lowercase=False)
    cls, sep = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    if cls is not None and sep is not None:
        cfg_file = path / "tokenizer_config.json"
        prefix = bool((read_json(cfg_file) if cfg_file.is_file() else {}).get("add_prefix_space", False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
        tok.add_special_tokens([t for t in ROBERTA_SPECIALS if tok.token_to_id(t) is not None])
        tok.post_processor = processors.RobertaProcessing(("</s>", sep), ("<s>", cls), trim_offsets=True,
                                                          add_prefix_space=prefix)
    return tok


def unk_id(tok: Tokenizer) -> int | None:
    """The id the tokenizer model emits for what it cannot read (None: byte-level BPE has none)."""
    name = getattr(tok.model, "unk_token", None)
    if name:
        return tok.token_to_id(name)
    unk = json.loads(tok.to_str()).get("model", {}).get("unk_id")
    return unk if isinstance(unk, int) else None


UNKNOWN_WARN = 0.05   # warn when more of a corpus than this is the unknown token


def report_unknown(tok: Tokenizer, shards: TokenShards, files: list[str], advice: str = "") -> None:
    """Print how much of a corpus (token shards) the tokenizer reads as its unknown token, and warn
    above UNKNOWN_WARN: a corpus in another script than the tokenizer covers trains mostly [UNK]."""
    unk = unk_id(tok)
    if unk is None:
        return
    rate = token_share(shards, unk)
    print(f"unknown tokens: {rate:.2%} of the corpus")
    if rate > UNKNOWN_WARN:
        print(f"warning: {rate:.1%} of the corpus ({', '.join(files)}) is the unknown token: the tokenizer does "
              f"not cover its script or vocabulary{advice}", file=sys.stderr)
