"""Recipe stage ``synthetic``: the demo's generated data (plmkit/data/synthetic.py) in one directory:
``corpus.txt`` (blank-line separated documents), ``train.tsv`` and ``eval.tsv`` (sentence, label).

By default both labelled sets use every sentiment adjective. ``train_words: seen`` and
``eval_words: unseen`` split the vocabulary instead (half the adjectives for training, the other
half, which only the unlabelled corpus holds, for evaluation), so the evaluation measures only
what pre-training transferred (see plmkit/data/synthetic.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..data import synthetic
from ..io import atomic_dir


@dataclass
class Config:
    out: str = option(help="output directory")
    n_docs: int = option(3000, help="pre-training documents")
    n_train: int = option(2000, help="labelled training sentences")
    n_eval: int = option(500, help="labelled evaluation sentences")
    train_words: str = option("all", help="sentiment adjectives in train.tsv", choices=list(synthetic.WORD_SETS))
    eval_words: str = option("all", help="sentiment adjectives in eval.tsv", choices=list(synthetic.WORD_SETS))
    seed: int = option(0, help="random seed")
    overwrite: bool = option(False, help="replace an existing --out")


def run(cfg: Config) -> int:
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        synthetic.write_corpus(tmp / "corpus.txt", cfg.n_docs, seed=cfg.seed)
        synthetic.write_sentiment(tmp / "train.tsv", cfg.n_train, seed=cfg.seed + 1, words=cfg.train_words)
        synthetic.write_sentiment(tmp / "eval.tsv", cfg.n_eval, seed=cfg.seed + 2, words=cfg.eval_words)
    print(f"generated {cfg.n_docs} documents and {cfg.n_train}+{cfg.n_eval} labelled sentences in {cfg.out}")
    return 0
