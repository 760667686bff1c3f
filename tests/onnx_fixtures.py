"""A briefly trained tiny BERT classifier and its ONNX / OpenVINO predictions (test_onnx, test_openvino)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from plmkit.data.features import collate
from plmkit.data.synthetic import write_sentiment
from plmkit.models.checkpoint import save_checkpoint
from plmkit.models.model import PlmModel
from plmkit.models.onnx_model import load_onnx_dir
from plmkit.tasks import TASKS, Infer, Prep, TaskData
from plmkit.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def clf(tmp_path_factory) -> dict[str, Path]:
    """Tiny BERT trained for a few steps on synthetic sentiment, so logits are not near-ties."""
    d = tmp_path_factory.mktemp("clf")
    train, dev = write_sentiment(d / "train.tsv", 300, seed=1), write_sentiment(d / "dev.tsv", 200, seed=2)
    tok = train_tokenizer([train], kind="wordpiece", vocab_size=150, show_progress=False)
    prep = Prep(max_length=32)
    task = TASKS["classify"]
    examples = task.read(str(train), prep)
    hc = {**task.head_config(examples, prep), "finetune_task": "classify", "preprocess": {"max_length": 32}}
    feats = task.encode(tok, examples, hc, prep)
    cfg = dataclasses.replace(_tiny_cfg(), vocab_size=tok.get_vocab_size())
    torch.manual_seed(0)
    model = PlmModel(cfg, "classify", hc)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # a 32-wide model: one thread is faster on a busy machine
    for _ in range(60):
        idx = torch.randint(0, len(feats), (32,), generator=g).tolist()
        loss = model(**collate([feats[i] for i in idx], 0)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    ck = save_checkpoint(model.eval(), d / "ck", tokenizer=tok, meta={"stage": "test"})
    return {"ck": ck, "train": train, "dev": dev, "dir": d}


def _tiny_cfg():
    from plmkit.models.config import EncoderConfig

    return EncoderConfig(vocab_size=150, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                         max_position=64, hidden_dropout=0.0, attention_dropout=0.0)


def _predictions(model_dir: Path, data_file: Path) -> torch.Tensor:
    """Class probabilities of an ONNX directory, through the classify task's own code."""
    from plmkit.tokenizer import load_tokenizer

    onnx = load_onnx_dir(model_dir, threads=1)
    task, prep = TASKS["classify"], Prep(max_length=32)
    tok = load_tokenizer(model_dir)
    examples = task.read(str(data_file), prep, labels=onnx.head_config["labels"])
    data = TaskData(examples, task.encode(tok, examples, onnx.head_config, prep), tok, onnx.head_config,
                    Infer(batch_size=32, precision="fp32"))
    return task._probs(onnx, data)
