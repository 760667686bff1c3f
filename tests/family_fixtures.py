"""Tiny random HF checkpoints of every encoder family, as a user would bring them, and tiny data.

Each family is made with transformers' own config and model classes (hidden 32, 2 layers,
seeded) and saved with ``save_pretrained`` next to a tokenizer built by transformers' own
tokenizer class from a small local vocabulary (byte-level BPE for RoBERTa, SentencePiece
Unigram for XLM-R and ALBERT, WordPiece for the others), so the directory holds the same
files a downloaded checkpoint does: config.json, model.safetensors, tokenizer.json,
tokenizer_config.json. No downloads.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

POS = ["good", "great", "fine", "nice", "superb"]
NEG = ["bad", "awful", "poor", "dull", "boring"]
FILL = ["the", "film", "was", "really", "plot", "story", "quite", "a", "and", "music", "it"]
NAMES, CITIES = ["alice", "bob", "carol", "dave"], ["paris", "rome", "oslo", "lima"]
EXTRA = ["new", "lives", "in", "where", "does", "live", "?", ".", "apple", "pie", "company", "rose", "she", "ate"]
WORDS = POS + NEG + FILL + NAMES + CITIES + EXTRA
LETTERS = sorted(set("".join(WORDS)) | set("abcdefghijklmnopqrstuvwxyz"))


# ------------------------------------------------------------------------------------ tokenizers

def _wordpiece(cls_name: str) -> Any:
    import transformers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = specials + WORDS + LETTERS + [f"##{c}" for c in LETTERS]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    return getattr(transformers, cls_name)(vocab=vocab)


def _unigram(cls_name: str, specials: list[str]) -> Any:
    import transformers

    pieces = [(s, 0.0) for s in specials] + [(f"\u2581{w}", -2.0) for w in WORDS] + [("\u2581", -3.0)]
    pieces += [(c, -5.0) for c in LETTERS]
    return getattr(transformers, cls_name)(vocab=pieces)


def _byte_bpe() -> Any:
    """RoBERTa's byte-level BPE: merges learnt from the word list by the tokenizers trainer."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rng = random.Random(0)
    tok.train_from_iterator([" ".join(rng.sample(WORDS, 8)) for _ in range(300)], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return transformers.RobertaTokenizer(vocab=model["vocab"], merges=merges)


TOKENIZERS: dict[str, Callable[[], Any]] = {
    "bpe": _byte_bpe,
    "xlmr-unigram": lambda: _unigram("XLMRobertaTokenizer", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]),
    "albert-unigram": lambda: _unigram("AlbertTokenizer", ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]),
    "wordpiece": lambda: _wordpiece("BertTokenizer"),
    "distil-wordpiece": lambda: _wordpiece("DistilBertTokenizer"),
}


# ------------------------------------------------------------------------------------ families

SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


@dataclass(frozen=True)
class Spec:
    name: str                               # model_type
    config: Callable[[int], Any]            # vocab size -> transformers config
    tokenizer: str                          # key of TOKENIZERS
    archs: dict[str, str]                   # plmkit head -> HF class name
    pretraining: str | None = None          # the ForPreTraining head (mlm+nsp / mlm+sop)
    extra: dict[str, Any] = field(default_factory=dict)


def _archs(stem: str, *, pretraining: str | None = None, base: str | None = None) -> dict[str, str]:
    out = {"base": base or f"{stem}Model", "mlm": f"{stem}ForMaskedLM", "classify": f"{stem}ForSequenceClassification",
           "token": f"{stem}ForTokenClassification", "span": f"{stem}ForQuestionAnswering"}
    if pretraining:
        out[pretraining] = f"{stem}ForPreTraining"
    return out


def _cfg(cls_name: str, **kw: Any) -> Callable[[int], Any]:
    def make(vocab: int) -> Any:
        import transformers

        return getattr(transformers, cls_name)(vocab_size=vocab, **kw)
    return make


FAMILIES: dict[str, Spec] = {
    "roberta": Spec("roberta", _cfg("RobertaConfig", **SIZES, max_position_embeddings=66, type_vocab_size=1,
                                    pad_token_id=1, bos_token_id=0, eos_token_id=2),
                    "bpe", _archs("Roberta")),
    "xlm-roberta": Spec("xlm-roberta", _cfg("XLMRobertaConfig", **SIZES, max_position_embeddings=66,
                                            type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2),
                        "xlmr-unigram", _archs("XLMRoberta")),
    "distilbert": Spec("distilbert", _cfg("DistilBertConfig", dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                          max_position_embeddings=64, activation="gelu"),
                       "distil-wordpiece", _archs("DistilBert")),
    "albert": Spec("albert", _cfg("AlbertConfig", **SIZES, embedding_size=16, max_position_embeddings=64,
                                  hidden_act="gelu_new"),
                   "albert-unigram", _archs("Albert", pretraining="mlm+sop"), pretraining="mlm+sop"),
    "electra": Spec("electra", _cfg("ElectraConfig", **SIZES, embedding_size=16, max_position_embeddings=64),
                    "wordpiece", _archs("Electra")),
    "ernie": Spec("ernie", _cfg("ErnieConfig", **SIZES, max_position_embeddings=64, use_task_id=True,
                                task_type_vocab_size=3),
                  "wordpiece", _archs("Ernie", pretraining="mlm+nsp"), pretraining="mlm+nsp"),
}
HEAD_CONFIG = {"classify": {"num_labels": 3}, "token": {"num_labels": 5}}


def hf_tokenizer(family: str) -> Any:
    return TOKENIZERS[FAMILIES[family].tokenizer]()


def make_hf(family: str, head: str, out: Path, seed: int = 0, tokenizer: Any = None,
            labels: list[str] | None = None) -> Path:
    """A random HF checkpoint of ``family`` with the HF class for plmkit ``head``, saved to ``out``."""
    import transformers

    spec = FAMILIES[family]
    tok = tokenizer if tokenizer is not None else hf_tokenizer(family)
    cfg = spec.config(len(tok))
    if labels:
        cfg.num_labels = len(labels)
        cfg.id2label = dict(enumerate(labels))
        cfg.label2id = {n: i for i, n in enumerate(labels)}
    elif head in HEAD_CONFIG:
        cfg.num_labels = HEAD_CONFIG[head]["num_labels"]
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    torch.manual_seed(seed)
    model = getattr(transformers, spec.archs[head])(cfg).eval()
    with torch.no_grad():          # random, not zero, LayerNorm and bias values: a wrong mapping shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------ data

def sentence(rng: random.Random, positive: bool) -> str:
    words = rng.sample(FILL, rng.randint(2, 5)) + [rng.choice(POS if positive else NEG)]
    rng.shuffle(words)
    return " ".join(words)


def write_classify(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = ["sentence\tlabel"]
    for _ in range(n):
        y = rng.random() < 0.5
        rows.append(f"{sentence(rng, y)}\t{'pos' if y else 'neg'}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_conll(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    blocks = []
    for _ in range(n):
        rows = []
        for _ in range(rng.randint(3, 6)):
            r = rng.random()
            if r < 0.25:
                rows.append(f"{rng.choice(NAMES)} NN O B-PER")
            elif r < 0.4:
                rows += ["new NN O B-LOC", f"{rng.choice(CITIES)} NN O I-LOC"]
            else:
                rows.append(f"{rng.choice(FILL)} NN O O")
        blocks.append("\n".join(rows))
    path.write_text("-DOCSTART- -X- -X- O\n\n" + "\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def write_squad(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        name, city = rng.choice(NAMES), rng.choice(CITIES)
        context = f"{' '.join(rng.sample(FILL, 3))} . {name} lives in {city} and the film was good ."
        paragraphs.append({"context": context, "qas": [
            {"id": f"q{i}", "question": f"where does {name} live ?",
             "answers": [{"text": city, "answer_start": context.index(f"in {city}") + 3}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path
