"""CLI: help, config precedence, info/export/generate, and one-line errors with exit code 1."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from plmkit import cli
from plmkit.config import add_arguments, from_args, option
from plmkit.models.checkpoint import save_checkpoint
from plmkit.models.generate import generate
from plmkit.models.model import PlmModel


def test_help_lists_subcommands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("tokenizer", "info", "export", "generate"):
        assert name in out


@dataclass
class _Cfg:
    steps: int = option(10, help="steps")
    lr: float = option(1e-3, help="lr")
    name: str = option("x", help="name")
    flag: bool = option(False, help="flag")
    files: list[str] = option(["a"], help="files")


def test_config_precedence_defaults_yaml_flags(tmp_path):
    import argparse

    (tmp_path / "c.yaml").write_text("steps: 50\nlr: 0.5\nfiles: [p, q]\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser, _Cfg)
    cfg = from_args(_Cfg, parser.parse_args(["--config", str(tmp_path / "c.yaml"), "--lr", "0.1", "--flag"]))
    assert (cfg.steps, cfg.lr, cfg.name, cfg.flag, cfg.files) == (50, 0.1, "x", True, ["p", "q"])


def test_config_rejects_unknown_yaml_key(tmp_path):
    import argparse

    from plmkit.errors import PlmkitError

    (tmp_path / "c.yaml").write_text("stepz: 5\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser, _Cfg)
    with pytest.raises(PlmkitError, match="unknown option 'stepz'"):
        from_args(_Cfg, parser.parse_args(["--config", str(tmp_path / "c.yaml")]))


def test_info_prints_sizes_and_lineage(tmp_path, tiny_encoder_cfg, capsys):
    import dataclasses

    cfg = dataclasses.replace(tiny_encoder_cfg, heads=[4, 2])
    save_checkpoint(PlmModel(cfg, "classify", {"num_labels": 2, "labels": ["no", "yes"]}), tmp_path / "ck",
                    meta={"stage": "finetune", "parent": "somewhere"})
    assert cli.main(["info", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "heads/layer    4 2" in out and "finetune" in out and "no, yes" in out
    assert cli.main(["info", str(tmp_path / "ck"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["heads_per_layer"] == [4, 2]


def test_errors_are_one_line_exit_1(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plmkit: error:") and "missing" in err[0]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    assert cli.main(["info", str(tmp_path / "bad")]) == 1
    assert "config.json:1: not valid JSON" in capsys.readouterr().err


def test_export_refuses_existing_output(tmp_path, tiny_encoder_cfg, capsys):
    save_checkpoint(PlmModel(tiny_encoder_cfg, "base"), tmp_path / "ck")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert cli.main(["export", "--model", str(tmp_path / "ck"), "--out", str(tmp_path / "out")]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_greedy_generation_same_with_and_without_cache(tiny_decoder_cfg):
    torch.manual_seed(0)
    model = PlmModel(tiny_decoder_cfg, "clm").eval()
    prompt = torch.tensor([[5, 9, 17, 3]])
    a = generate(model, prompt, max_new_tokens=20, temperature=0, use_cache=True)
    b = generate(model, prompt, max_new_tokens=20, temperature=0, use_cache=False)
    assert a.shape == (1, 24) and torch.equal(a, b)


def test_sampling_is_seeded_and_respects_top_k(tiny_decoder_cfg):
    from plmkit.models.generate import filter_logits

    torch.manual_seed(0)
    model = PlmModel(tiny_decoder_cfg, "clm").eval()
    prompt = torch.tensor([[5, 9]])
    run = lambda s: generate(model, prompt, 10, temperature=1.0, top_k=5,  # noqa: E731
                             generator=torch.Generator().manual_seed(s))
    assert torch.equal(run(1), run(1))
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2, top_p=None))
    assert kept.tolist() == [[False, True, False, True, False]]
    kept = torch.isfinite(filter_logits(logits, top_k=None, top_p=0.5))
    assert kept[0, 1] and kept.sum() <= 2
