"""The data-size rule of fine-tuning defaults (train/defaults.py) and where finetune shows it."""
from __future__ import annotations

import math

import pytest

from plmkit.cli import main
from plmkit.train.defaults import fit_to_data


@pytest.mark.parametrize("examples, batch, epochs, steps", [
    (100, 8, 5, 65),          # even 5 passes of batch 8 fall short of 500 steps: capped at 5
    (500, 8, 5, 315),         # batch 8, 3 passes make 189 steps: passes grow, up to 5
    (1000, 8, 4, 500),
    (2000, 12, 3, 501),       # the batch shrinks to 12 and 3 passes make 501 steps
    (5000, 30, 3, 501),
    (5400, 32, 3, 507),       # from here on: the defaults of large data
    (10000, 32, 3, 939),
    (67349, 32, 3, 6315),
])
def test_rule_picks_batch_passes_and_steps(examples, batch, epochs, steps):
    fit = fit_to_data(examples, 1e-4)
    assert (fit.batch_size, fit.epochs, fit.steps) == (batch, epochs, steps)
    assert fit.lr == pytest.approx(1e-4 * math.sqrt(batch / 32))
    assert fit.fitted == (batch != 32 or epochs != 3)


def test_rule_keeps_what_the_user_set():
    fit = fit_to_data(500, 1e-4, batch_size=32)            # the batch is kept: the passes make up the steps
    assert (fit.batch_size, fit.epochs, fit.steps) == (32, 5, 80)
    assert fit.lr == pytest.approx(1e-4)
    fit = fit_to_data(500, 1e-4, epochs=2, lr=3e-5)        # passes and lr kept: only the batch shrinks
    assert (fit.batch_size, fit.epochs, fit.lr) == (8, 2, 3e-5)
    fit = fit_to_data(2000, 3e-3, min_steps=300)           # a strategy's own rate (lora) is scaled too
    assert (fit.batch_size, fit.epochs) == (20, 3)
    assert fit.lr == pytest.approx(3e-3 * math.sqrt(20 / 32))


def _write(path, n):
    path.write_text("sentence\tlabel\n" + "".join(f"text number {i}\t{i % 2}\n" for i in range(n)))
    return path


def test_help_shows_the_values_for_the_data(tmp_path, capsys):
    train = _write(tmp_path / "train.tsv", 700)
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--help", "--train", str(train), "--strategy", "lora"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(700 examples, classify, strategy lora): batch 8, 5 epochs, lr 0.0015, 440 optimizer steps" in out
    with pytest.raises(SystemExit):
        main(["finetune", "--help", "--train", str(tmp_path / "missing.tsv")])
    assert "missing.tsv: file not found" in " ".join(capsys.readouterr().out.split())
