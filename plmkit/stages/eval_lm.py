"""Language-model evaluation: perplexity (GPT) or MLM loss/accuracy (BERT), as JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..config import option
from ..data.pretrain import make_batch_source
from ..data.shards import build_shards, open_shards
from ..errors import PlmkitError
from ..eval.lm import evaluate_lm
from ..loading import load
from ..tokenizer import load_tokenizer, special_ids


@dataclass
class Config:
    model: str = option(help="checkpoint directory (plmkit or HF)")
    data: str = option(help="UTF-8 text file; documents are blank-line separated")
    seq_len: int = option(128, help="tokens per sequence")
    batch_size: int = option(16, help="sequences per batch")
    max_batches: int | None = option(None, help="stop after this many batches")
    seed: int = option(0, help="seed for the MLM masks")
    cache_dir: str = option(".plmkit_cache", help="token shard cache directory")


def run(cfg: Config) -> int:
    model = load(cfg.model, needs_torch="eval-lm")
    if model.config.tied_lm_head and model.task != "clm":
        model = load(cfg.model, task="clm")   # the LM head is tied to the word embeddings: nothing untrained added
    if model.task not in ("clm", "mlm", "mlm+nsp", "mlm+sop"):
        raise PlmkitError(f"{cfg.model}: eval-lm needs a language-model head (mlm or clm), this model is "
                          f"'{model.task}'")
    task = "clm" if model.task == "clm" else "mlm"   # BERT: MLM loss/accuracy, NSP is not scored
    tok = load_tokenizer(cfg.model)
    shard_dir = build_shards([cfg.data], tok, cfg.cache_dir, val_fraction=0.0, newlines=task == "clm")
    source = make_batch_source(task, open_shards(shard_dir, "train"), tok, seq_len=cfg.seq_len,
                               batch_size=cfg.batch_size, seed=cfg.seed, shuffle=False, loop=False,
                               eos=special_ids(tok).get("eos"))
    metrics = evaluate_lm(model.eval(), source, cfg.max_batches)
    print(json.dumps({"model": cfg.model, "data": cfg.data, **metrics}))
    return 0
