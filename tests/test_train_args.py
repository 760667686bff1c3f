"""The training options every training stage shares (TrainArgs), their bounds, the one precision
resolver, and what a refused pretrain leaves behind (nothing)."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plmkit import precision as P
from plmkit.cli import main
from plmkit.config import add_arguments, flag_name
from plmkit.data.synthetic import write_corpus
from plmkit.errors import PlmkitError
from plmkit.tokenizer import save_tokenizer, train_tokenizer
from plmkit.train import TrainArgs

TRAINING_STAGES = ["pretrain", "finetune", "distill", "prune"]
DEFAULT = re.compile(r" \(default: [^)]*\)$")


def _help(stage: str) -> dict[str, str]:
    """flag -> help text (its default stripped) of a stage's --help."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, importlib.import_module(f"plmkit.stages.{stage}").Config)
    return {s: DEFAULT.sub("", a.help) for a in parser._actions for s in a.option_strings}


def test_training_stages_show_the_same_training_flags():
    shared = {flag_name(f) for f in dataclasses.fields(TrainArgs)}
    helps = {stage: _help(stage) for stage in TRAINING_STAGES}
    own = {"pretrain": {"--layerwise-lr-decay"}, "finetune": {"--fsdp"},
           "distill": {"--fsdp", "--layerwise-lr-decay"},
           "prune": {"--resume", "--eval-every", "--patience", "--tensorboard", "--fsdp", "--layerwise-lr-decay"}}
    for stage, h in helps.items():   # every shared flag but the ones a stage leaves out, by name
        assert shared - own[stage] <= set(h), stage
        assert not (own[stage] & set(h)), stage
    for flag in shared:              # ... with the same help text everywhere
        texts = {h[flag] for h in helps.values() if flag in h}
        assert len(texts) == 1, (flag, texts)
    common = shared - own["distill"] - own["finetune"] - own["pretrain"]
    assert {"--max-steps", "--epochs", "--lr", "--precision", "--compile", "--patience", "--tensorboard",
            "--resume", "--seed", "--warmup-ratio"} <= common
    assert "--steps" not in helps["pretrain"] and "--recover-steps" not in helps["prune"]


def test_stage_defaults_are_declared_once_and_shown():
    from plmkit.stages import distill, finetune, pretrain

    assert pretrain.Config.__dataclass_fields__["lr"].default == 5e-4
    parser = argparse.ArgumentParser()
    add_arguments(parser, pretrain.Config)
    (action,) = [a for a in parser._actions if "--lr" in a.option_strings]
    assert action.help.endswith("(default: 0.0005)")
    # distillation's default depends on the mode: task distillation 1e-4, general (--corpus) 1e-3,
    # resolved into the config the run writes
    assert distill.Config.__dataclass_fields__["lr"].default is None
    base = dict(teacher="t", out="o")
    assert distill.resolved(distill.Config(**base, task="classify", train="x")).lr == 1e-4
    assert distill.resolved(distill.Config(**base, corpus=["x"])).lr == 1e-3
    assert distill.resolved(distill.Config(**base, corpus=["x"], lr=5e-5)).lr == 5e-5
    assert "--lr 1e-3" in distill.Config.__dataclass_fields__["corpus"].metadata["help"]
    # fine-tuning's default depends on the strategy (issue 17.6): each strategy's rate is in the help
    from plmkit.adapters.strategies import STRATEGIES

    assert finetune.Config.__dataclass_fields__["lr"].default is None
    parser = argparse.ArgumentParser()
    add_arguments(parser, finetune.Config)
    (action,) = [a for a in parser._actions if "--lr" in a.option_strings]
    assert all(f"{name} {s.lr:g}" in action.help for name, s in STRATEGIES.items())
    for module in (pretrain, finetune, distill):   # one precision default, auto, said in --help
        field = module.Config.__dataclass_fields__["precision"]
        assert field.default == "auto" and field.metadata["choices"] == ["auto", "bf16", "fp32"]
        assert "auto" in field.metadata["help"]


@pytest.mark.parametrize("argv, flag", [
    (["pretrain", "--max-steps", "-5"], "--max-steps must be >= 1"),
    (["pretrain", "--epochs", "0"], "--epochs must be > 0"),
    (["pretrain", "--save-every", "-1"], "--save-every must be >= 0"),
    (["pretrain", "--grad-accum", "0"], "--grad-accum must be >= 1"),
    (["pretrain", "--lr", "-0.1"], "--lr must be > 0"),
    (["pretrain", "--lr", "nan"], "--lr must be a finite number"),
    (["pretrain", "--mlm-prob", "1.5"], "--mlm-prob must be in (0, 1)"),
    (["finetune", "--epochs", "0"], "--epochs must be > 0"),
    (["finetune", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["distill", "--max-steps", "0"], "--max-steps must be >= 1"),
    (["prune", "--max-steps", "-3"], "--max-steps must be >= 1"),
    (["quantize", "--calibration-size", "-5"], "--calibration-size must be >= 1"),
])
def test_zero_or_negative_counts_are_refused_naming_the_flag(tmp_path, capsys, argv, flag):
    required = {"pretrain": ["--corpus", "c.txt"], "finetune": ["--model", "m", "--task", "classify", "--train", "t"],
                "distill": ["--teacher", "m", "--task", "classify", "--train", "t"],
                "prune": ["--model", "m"], "quantize": ["--model", "m"]}[argv[0]]
    assert main([argv[0], *required, "--out", str(tmp_path / "out"), *argv[1:]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0], err
    assert not (tmp_path / "out").exists()


# ---- precision ----

def test_precision_resolver(monkeypatch):
    assert P.autocast_dtype("fp32", "cpu") is None
    assert P.autocast_dtype("bf16", "cpu") is torch.bfloat16          # torch autocasts bf16 on any CPU
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert P.autocast_dtype("auto", "cpu") is torch.bfloat16 and P.resolve("auto", "cpu") == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert P.autocast_dtype("auto", "cpu") is None and P.resolve("auto", "cpu") == "fp32"
    # a GPU without bf16: auto is fp32, bf16 is an error rather than a silent fallback
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert P.autocast_dtype("auto", "cuda") is None
    with pytest.raises(PlmkitError, match="bf16 is not supported"):
        P.autocast_dtype("bf16", "cuda")
    with pytest.raises(PlmkitError, match="unknown precision"):
        P.autocast_dtype("fp16", "cpu")
    with P.autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with P.autocast("bf16", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_evaluation_and_training_follow_the_resolver(monkeypatch):
    """tasks (evaluate/predict/serve) and the loop ask plmkit.precision, so auto means one thing."""
    from plmkit.tasks import common
    from plmkit.train import loop

    assert common.autocast is P.autocast and loop.autocast_dtype is P.autocast_dtype
    assert common.Infer().precision == P.DEFAULT == TrainArgs().precision == "auto"


# ---- a refused pretrain leaves nothing in --out ----

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("corpus")
    text = write_corpus(d / "c.txt", n_docs=200, seed=0)
    (d / "tok").mkdir()
    save_tokenizer(train_tokenizer([text], kind="wordpiece", vocab_size=300, show_progress=False), d / "tok")
    return text, d / "tok"


@pytest.mark.parametrize("bad, message", [
    (["--max-steps", "2", "--lr", "-1"], "--lr must be > 0"),
    (["--max-steps", "2", "--lr", "nan"], "--lr must be a finite number"),
    (["--max-steps", "2", "--budget", "soon"], "--budget: cannot parse"),
    (["--max-steps", "2", "--grad-accum", "0"], "--grad-accum must be >= 1"),
    (["--max-steps", "2", "--mlm-prob", "1.5"], "--mlm-prob must be in (0, 1)"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--budget", "5m", "--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
    (["--max-steps", "2", "--patience", "2"], "--patience"),       # refused by the loop, after setup
])
def test_refused_pretrain_leaves_nothing_and_the_corrected_run_works(tmp_path, corpus, capsys, bad, message):
    text, tok = corpus
    base = ["pretrain", "--corpus", str(text), "--tokenizer", str(tok), "--size", "tiny", "--seq-len", "32",
            "--batch-size", "4", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
            "--eval-batches", "0"]
    assert main(base + bad) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()
    assert main(base + ["--max-steps", "2"]) == 0                    # no --overwrite needed


# ---- feedback off a terminal ----

def test_progress_lines_off_a_terminal(tmp_path, corpus):
    text, tok = corpus
    env = {k: v for k, v in os.environ.items() if k != "PLMKIT_QUIET"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                                 env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "plmkit.cli", "pretrain", "--corpus", str(text), "--tokenizer", str(tok),
           "--size", "tiny", "--seq-len", "32", "--batch-size", "4", "--max-steps", "12", "--eval-batches", "0",
           "--cache-dir", str(tmp_path / "cache")]
    with open(tmp_path / "log.txt", "w") as log:             # output to a file, as `> log`
        subprocess.run(cmd + ["--out", str(tmp_path / "a"), "--progress-every", "0.001"], stdout=log,
                       env=env, check=True, timeout=300)
    lines = [x for x in (tmp_path / "log.txt").read_text().splitlines() if x.startswith("step ")]
    assert len(lines) >= 2 and lines[-1].startswith("step 12/12 (100%)")
    assert re.fullmatch(r"step \d+/12 \(\d+%\) \| loss \d+\.\d{4} \| [\d,]+ tokens/s \| ETA \d+s", lines[0]), lines[0]
    quiet = subprocess.run(cmd + ["--out", str(tmp_path / "b"), "--progress-every", "0"], env=env, check=True,
                           capture_output=True, text=True, timeout=300)
    assert "step " not in quiet.stdout + quiet.stderr
