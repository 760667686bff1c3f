"""plmkit pretrain / eval-lm / generate through the CLI, on generated text."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plmkit.cli import main
from plmkit.data.synthetic import write_corpus
from plmkit.models.checkpoint import load_model
from plmkit.tokenizer import save_tokenizer, train_tokenizer

TINY = ["--size", "tiny", "--seq-len", "32", "--batch-size", "8", "--log-every", "5"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "stories.txt", n_docs=400, seed=0)


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer([corpus], kind="wordpiece", vocab_size=400), out)
    return out


def _args(corpus, out, cache, *extra):
    return ["pretrain", "--corpus", str(corpus), "--out", str(out), "--cache-dir", str(cache), *TINY, *extra]


def test_bert_mlm_nsp_learns_and_saves_a_checkpoint(tmp_path, corpus, wordpiece, capsys):
    assert main(_args(corpus, tmp_path / "run", tmp_path / "cache", "--tokenizer", str(wordpiece),
                      "--max-steps", "60", "--lr", "2e-3", "--eval-every", "30", "--val-fraction", "0.05")) == 0
    out = tmp_path / "run"
    model = load_model(out)
    assert model.task == "mlm+nsp" and model.config.num_layers == 2 and model.config.hidden_size == 128
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0] - 1.0                       # it learns
    evals = [r for r in records if "eval_loss" in r]
    assert evals and "eval_mlm_acc" in evals[-1] and "eval_nsp_acc" in evals[-1]
    meta = json.loads((out / "plmkit.json").read_text())
    assert meta["stage"] == "pretrain" and meta["metrics"]["steps"] == 60
    assert (out / "pretrain.yaml").is_file()
    capsys.readouterr()
    assert main(["eval-lm", "--model", str(out), "--data", str(corpus), "--seq-len", "32",
                 "--max-batches", "3", "--cache-dir", str(tmp_path / "cache")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["loss"] > 0 and 0 < result["mlm_acc"] <= 1


def test_shards_are_cached_between_runs(tmp_path, corpus, wordpiece):
    for i in range(2):
        assert main(_args(corpus, tmp_path / f"run{i}", tmp_path / "cache", "--tokenizer", str(wordpiece),
                          "--max-steps", "2", "--eval-batches", "0")) == 0
    assert len(list((tmp_path / "cache").glob("shards-*"))) == 1


def test_gpt_clm_trains_its_own_bpe_and_generates(tmp_path, corpus, capsys):
    assert main(_args(corpus, tmp_path / "gpt", tmp_path / "cache", "--arch", "gpt", "--vocab-size", "500",
                      "--max-steps", "40", "--lr", "3e-3", "--eval-every", "40")) == 0
    model = load_model(tmp_path / "gpt")
    assert model.task == "clm" and model.config.vocab_size <= 520
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "gpt"), "--prompt", "The film was",
                 "--max-new-tokens", "8", "--temperature", "0"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("The film was") and len(text) > len("The film was")
    assert main(["eval-lm", "--model", str(tmp_path / "gpt"), "--data", str(corpus), "--seq-len", "32",
                 "--max-batches", "2", "--cache-dir", str(tmp_path / "cache")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["perplexity"] == pytest.approx(torch.tensor(result["loss"]).exp().item(), rel=1e-4)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, corpus, wordpiece):
    base = _args(corpus, None, tmp_path / "cache", "--tokenizer", str(wordpiece), "--precision", "fp32",
                 "--max-steps", "120", "--save-every", "5", "--keep-last", "3", "--eval-batches", "0")

    def cmd(out, *extra):
        args = list(base)
        args[args.index("--out") + 1] = str(out)
        return [sys.executable, "-m", "plmkit.cli", *args, *extra]

    env = {**os.environ, "PLMKIT_QUIET": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd(tmp_path / "full"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((tmp_path / "killed" / "checkpoints").glob("step-*")) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "config.json").exists()        # no final model yet
    subprocess.run(cmd(tmp_path / "killed", "--resume"), check=True, env=env, capture_output=True)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plmkit: error:")
    return err[0]


def test_pre_ln_and_dropout_options_reach_the_saved_model(tmp_path, corpus, wordpiece, capsys):
    assert main(_args(corpus, tmp_path / "run", tmp_path / "cache", "--tokenizer", str(wordpiece), "--max-steps", "30",
                      "--lr", "2e-3", "--pre-ln", "--dropout", "0", "--eval-batches", "0")) == 0
    model = load_model(tmp_path / "run")
    assert model.config.pre_ln and model.config.hidden_dropout == model.config.attention_dropout == 0.0
    assert model.backbone.final_norm is not None
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 1.0
    capsys.readouterr()
    assert main(_args(corpus, tmp_path / "gpt", tmp_path / "cache", "--arch", "gpt", "--pre-ln", "--max-steps", "2")) == 1
    assert "--arch gpt fixes --pre-ln (pre_ln = True)" in _err(capsys)
    assert main(_args(corpus, tmp_path / "r", tmp_path / "cache", "--dropout", "1.5", "--max-steps", "2")) == 1
    assert "--dropout must be in [0, 1)" in _err(capsys)


def test_bad_inputs_are_one_line_errors(tmp_path, corpus, wordpiece, capsys):
    small = tmp_path / "small.txt"
    small.write_text("one short line.\n\nanother one.\n")
    assert main(_args(small, tmp_path / "r1", tmp_path / "cache", "--tokenizer", str(wordpiece),
                      "--max-steps", "2", "--val-fraction", "0")) == 1
    assert "corpus too small" in _err(capsys)
    assert not (tmp_path / "r1").exists()                                # nothing half-written
    (tmp_path / "notok").mkdir()
    assert main(_args(corpus, tmp_path / "r2", tmp_path / "cache", "--tokenizer", str(tmp_path / "notok"),
                      "--max-steps", "2")) == 1
    assert "no tokenizer found" in _err(capsys)
    assert not (tmp_path / "r2").exists()
    assert main(_args(corpus, tmp_path / "r3", tmp_path / "cache", "--tokenizer", str(wordpiece))) == 1
    assert "--max-steps" in _err(capsys)


def test_resume_refuses_a_changed_config_and_reuse_of_another_run(tmp_path, corpus, wordpiece, capsys):
    args = _args(corpus, tmp_path / "run", tmp_path / "cache", "--tokenizer", str(wordpiece), "--max-steps", "4",
                 "--eval-batches", "0")
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 1
    assert "--resume" in _err(capsys)
    changed = [a if a != "32" else "16" for a in args]                   # --seq-len 16
    assert main(changed + ["--resume"]) == 1
    assert "seq_len: 32 -> 16" in _err(capsys)
    assert main(args + ["--overwrite"]) == 0


def test_resume_may_lower_the_lr_change_precision_and_extend_the_run(tmp_path, corpus, wordpiece, capsys,
                                                                   monkeypatch):
    """The recovery a NaN or divergence stop advises; ./run and run are the same run."""
    monkeypatch.chdir(tmp_path)
    args = ["pretrain", "--corpus", str(corpus), "--cache-dir", str(tmp_path / "cache"), *TINY, "--tokenizer",
            str(wordpiece), "--eval-batches", "0", "--save-every", "2", "--max-steps", "4"]
    assert main([*args, "--out", "run", "--lr", "1e-3", "--precision", "bf16"]) == 0
    capsys.readouterr()
    assert main([*args, "--out", "./run", "--resume", "--lr", "5e-4", "--precision", "fp32",
                 "--max-steps", "6"]) == 0
    meta = json.loads((tmp_path / "run" / "plmkit.json").read_text())
    assert meta["metrics"]["steps"] == 6
    assert meta["metrics"]["resumes"] == [{"step": 4, "changed": {"lr": [0.001, 0.0005], "max_steps": [4, 6],
                                                                  "precision": ["bf16", "fp32"]}}]
    assert "resuming from step 4 (changed: lr 0.001 -> 0.0005" in capsys.readouterr().out
