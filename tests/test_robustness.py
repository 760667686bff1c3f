"""What a hostile tester tried: unwritable outputs, files that parse but are the wrong shape, devices
and pipes as inputs, outputs that would be silently replaced, temporary directories left by a kill.
Each answer is one line naming the file, exit code 1, and nothing half-written."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from plmkit import cli, io
from plmkit.errors import PlmkitError
from plmkit.models.checkpoint import save_checkpoint
from plmkit.models.config import DecoderConfig, EncoderConfig
from plmkit.models.model import PlmModel
from plmkit.tokenizer import train_tokenizer

TEXT = "a fine film\nthe plot is dull\ngood acting and a clever plot\nbad film\n" * 20
UNWRITABLE = "/proc/plmkit-no-such-dir"        # mkdir fails here even for root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny fine-tuned-looking classifier, its data, and a tiny GPT-style decoder."""
    d = tmp_path_factory.mktemp("robust")
    (d / "corpus.txt").write_text(TEXT, encoding="utf-8")
    (d / "data.tsv").write_text("sentence\tlabel\na fine film\t1\nbad film\t0\n", encoding="utf-8")
    tok = train_tokenizer([d / "corpus.txt"], kind="wordpiece", vocab_size=80, show_progress=False)
    cfg = EncoderConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_layers=1, num_heads=2,
                        intermediate_size=32, max_position=64, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    clf = PlmModel(cfg, "classify", {"num_labels": 2, "labels": ["0", "1"], "finetune_task": "classify"})
    bpe = train_tokenizer([d / "corpus.txt"], kind="bpe", vocab_size=280, show_progress=False)
    dec = DecoderConfig(vocab_size=bpe.get_vocab_size(), hidden_size=16, num_layers=1, num_heads=2,
                        max_position=64, hidden_dropout=0.0, attention_dropout=0.0)
    return {"dir": d, "data": d / "data.tsv", "corpus": d / "corpus.txt",
            "clf": save_checkpoint(clf, d / "clf", tokenizer=tok, meta={"stage": "finetune"}),
            "gpt": save_checkpoint(PlmModel(dec, "clm"), d / "gpt", tokenizer=bpe, meta={"stage": "pretrain"})}


def _one_line_error(capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("plmkit: error:") and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err


def _report_run(root: Path) -> Path:
    run = root / "run"
    (run / "finetune").mkdir(parents=True)
    (run / "finetune" / "plmkit.json").write_text(json.dumps({"stage": "finetune", "metrics": {}}))
    return run


# ---------------------------------------------------------------- unwritable output locations

@pytest.mark.parametrize("command", [
    lambda f, out: ["tokenizer", "train", "--corpus", str(f["corpus"]), "--out", out, "--vocab-size", "60"],
    lambda f, out: ["predict", "--model", str(f["clf"]), "--input", str(f["data"]), "--output", out + ".jsonl"],
    lambda f, out: ["export", "--model", str(f["clf"]), "--out", out],
    lambda f, out: ["embed", "--model", str(f["clf"]), "--input", str(f["data"]), "--out", out],
    lambda f, out: ["report", str(_report_run(f["dir"] / "rep")), "--out", out + ".html"],
], ids=["tokenizer", "predict", "export", "embed", "report"])
def test_unwritable_output_is_one_line_naming_it(files, capsys, command):
    out = f"{UNWRITABLE}/out"
    assert cli.main(command(files, out)) == 1
    _one_line_error(capsys, UNWRITABLE)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_one_line(files, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    assert cli.main(["predict", "--model", str(files["clf"]), "--input", str(files["data"]),
                     "--output", str(ro / "p.jsonl")]) == 1
    _one_line_error(capsys, str(ro))


# ---------------------------------------------------------------- outputs are not silently replaced

def test_predict_and_report_refuse_to_replace_a_file_without_overwrite(files, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    out.write_text("mine\n")
    predict = ["predict", "--model", str(files["clf"]), "--input", str(files["data"]), "--output", str(out)]
    assert cli.main(predict) == 1
    _one_line_error(capsys, str(out), "--overwrite")
    assert out.read_text() == "mine\n"
    assert cli.main([*predict, "--overwrite"]) == 0
    assert [json.loads(line)["label"] in ("0", "1") for line in out.read_text().splitlines()] == [True, True]

    run = _report_run(tmp_path)
    (run / "report.html").write_text("mine")
    assert cli.main(["report", str(run)]) == 1
    _one_line_error(capsys, "report.html", "--overwrite")
    assert (run / "report.html").read_text() == "mine"
    assert cli.main(["report", str(run), "--overwrite"]) == 0
    assert "<html" in (run / "report.html").read_text()


# ---------------------------------------------------------------- parseable but wrong

def test_json_files_of_the_wrong_shape(files, tmp_path, capsys):
    for name in ("config.json", "plmkit.json"):
        bad = tmp_path / name.split(".")[0]
        bad.mkdir()
        for f in files["clf"].iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        (bad / name).write_text("[1, 2]")
        assert cli.main(["info", str(bad)]) == 1
        _one_line_error(capsys, f"{bad / name}: expected a JSON object")
    run = _report_run(tmp_path / "rep")
    (run / "bench").mkdir()
    for rows, words in (({"rows": 5}, "'rows' must be a list"), ({"rows": [{"name": "a", "metric": "x"}]},
                                                                 "rows[0].metric must be a number")):
        (run / "bench" / "bench.json").write_text(json.dumps(rows))
        assert cli.main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 1
        _one_line_error(capsys, "bench.json", words)
    assert not (tmp_path / "r.html").exists()


def _set(path: tuple, value):
    def edit(raw: dict) -> None:
        parent = raw
        for key in path[:-1]:
            parent = parent[key]
        if value is _DROP:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return edit


_DROP = object()


@pytest.mark.parametrize("edit, words", [
    (_set(("model", "hidden_size"), "16"), 'model.hidden_size must be a whole number, got "16"'),     # types
    (_set(("model", "num_heads"), 0), "num_heads must be >= 1, got 0"),                              # sizes
    (_set(("model", "heads"), [2, 2, 2]), "'heads' has 3 entries for 1 layers"),                      # per layer
    (_set(("model", "norm"), "batchnorm"), "norm must be one of layernorm, rmsnorm"),                 # choices
    (_set(("task",), "sentiment"), '"task" must be one of base, mlm'),                                # the head
    (_set(("head_config", "num_labels"), _DROP), "head_config.num_labels must be a whole number >= 1"),
    (_set(("head_config", "preprocess"), [128]), "head_config.preprocess must be an object, got [128]"),
    (_set(("model", "pad_token_id"), 10**6), "pad_token_id 1000000 is not a token id"),
], ids=["type", "size", "per-layer", "choice", "task", "head_config", "preprocess", "token-id"])
def test_damaged_config_json_is_one_line_naming_it(files, tmp_path, capsys, edit, words):
    """Each family of damage once failed deep in torch or the head code, or without the file's name."""
    bad = tmp_path / "clf"
    bad.mkdir()
    for f in files["clf"].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    raw = json.loads((bad / "config.json").read_text())
    edit(raw)
    (bad / "config.json").write_text(json.dumps(raw))
    for command in (["info", str(bad)], ["evaluate", "--model", str(bad), "--data", str(files["data"])]):
        assert cli.main(command) == 1
        _one_line_error(capsys, f"{bad / 'config.json'}: ", words)


def test_config_that_is_binary_or_a_directory(files, tmp_path, capsys):
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    for config, words in ((binary, "not a YAML text file"), (tmp_path, "not a regular file")):
        assert cli.main(["info", str(files["clf"]), "--config", str(config)]) == 1
        _one_line_error(capsys, str(config), words)


def test_output_that_is_a_directory(files, tmp_path, capsys):
    assert cli.main(["predict", "--model", str(files["clf"]), "--input", str(files["data"]),
                     "--output", str(tmp_path)]) == 1
    _one_line_error(capsys, f"{tmp_path}: is a directory")


# ---------------------------------------------------------------- inputs that are not regular files

def test_devices_and_pipes_are_refused_before_reading():
    for path in ("/dev/zero", "/dev/null"):
        with pytest.raises(PlmkitError, match=f"{path}: not a regular file"):
            io.check_input_file(path)


def test_finetune_refuses_a_pipe_as_training_data(files, tmp_path, capsys):
    """A FIFO (like /dev/zero or /dev/stdin) would be read until it ends, or forever: refused unread."""
    fifo = tmp_path / "train.fifo"
    os.mkfifo(fifo)

    def writer() -> None:                  # feeds it valid data, should anyone read it
        with open(fifo, "w") as f:
            f.write("sentence\tlabel\na fine film\t1\nbad film\t0\n")
    threading.Thread(target=writer, daemon=True).start()
    assert cli.main(["finetune", "--model", str(files["clf"]), "--task", "classify", "--train", str(fifo),
                     "--out", str(tmp_path / "ft"), "--max-steps", "1"]) == 1
    _one_line_error(capsys, f"{fifo}: not a regular file")
    assert not (tmp_path / "ft").exists()


# ---------------------------------------------------------------- temporary siblings and durability

def test_stale_temp_dirs_of_killed_writers_are_removed_on_the_next_write(tmp_path):
    out = tmp_path / "export"
    dead = 2 ** 22 + 12345                  # above the default pid_max: no such process
    stale = [tmp_path / f".export.tmp-{dead}-abcd1234", tmp_path / f".export.old-{dead}",
             tmp_path / ".export.tmp-k3y9x_2q"]                       # an unnamed one, from before the pid
    live = tmp_path / f".export.tmp-{os.getppid()}-efgh5678"        # a writer still running
    other = tmp_path / f".exports.tmp-{dead}-abcd1234"              # another output's
    for d in (*stale, live, other):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    old = time.time() - 3600
    os.utime(stale[2], (old, old))
    with io.atomic_dir(out) as tmp:
        (tmp / "x.txt").write_text("new")
    assert (out / "x.txt").read_text() == "new"
    assert not any(d.exists() for d in stale)
    assert live.exists() and other.exists()


def test_files_and_directory_are_fsynced_before_the_rename_that_publishes(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b))[1])
    with io.atomic_dir(tmp_path / "ck") as tmp:
        (tmp / "weights.bin").write_bytes(b"w" * 100)         # written the way torch / safetensors do
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.json").write_text("{}")
    publish = events.index(("replace", str(tmp)))
    synced = {p for kind, p in events[:publish] if kind == "fsync"}
    assert {str(tmp / "weights.bin"), str(tmp / "sub" / "a.json"), str(tmp / "sub"), str(tmp)} <= synced
    assert ("fsync", str(tmp_path)) in events[publish:]      # the rename itself is made durable


# ---------------------------------------------------------------- generate

def test_generate_stops_at_end_of_text(files, capsys, monkeypatch):
    """The model's EOS ends the text: it is not printed, nor anything after it."""
    from plmkit.stages import generate as stage
    from plmkit.tokenizer import load_tokenizer, special_ids

    tok = load_tokenizer(files["gpt"])
    eos = special_ids(tok)["eos"]
    prompt = tok.encode("a fine", add_special_tokens=False).ids
    tail = tok.encode(" film", add_special_tokens=False).ids

    def fake_generate(model, ids, *args, eos_token_id=None, **kw):
        assert eos in eos_token_id           # among the stop ids (end of text, end of turn)
        return torch.tensor([ids[0].tolist() + tail + [eos] + tail])
    monkeypatch.setattr(stage, "generate", fake_generate)
    assert cli.main(["generate", "--model", str(files["gpt"]), "--prompt", "a fine"]) == 0
    out = capsys.readouterr().out
    assert out == tok.decode(prompt + tail, skip_special_tokens=False) + "\n" and "<|endoftext|>" not in out


@pytest.mark.parametrize("flag, value", [("--max-new-tokens", "-1"), ("--max-new-tokens", "0"),
                                         ("--temperature", "-1"), ("--top-k", "0"), ("--top-p", "1.5")])
def test_generate_refuses_out_of_bounds_sampling(files, capsys, flag, value):
    assert cli.main(["generate", "--model", str(files["gpt"]), "--prompt", "a fine", flag, value]) == 1
    _one_line_error(capsys, flag)


def test_generate_says_when_the_context_ends_it(files, capsys):
    """A limit past the context (64 tokens) is not refused, but the cut is said, on stderr."""
    from plmkit.tokenizer import load_tokenizer

    prompt = len(load_tokenizer(files["gpt"]).encode("a fine", add_special_tokens=False).ids)
    assert cli.main(["generate", "--model", str(files["gpt"]), "--prompt", "a fine", "--max-new-tokens",
                     "100000", "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert (f"generation stopped after {64 - prompt} new tokens: the model's context is 64 tokens and the prompt "
            f"has {prompt} (--max-new-tokens 100000)") in err, err
    assert cli.main(["generate", "--model", str(files["gpt"]), "--prompt", "a fine", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().err == ""


def test_messages_say_an_encoder(files, capsys):
    assert cli.main(["generate", "--model", str(files["clf"]), "--prompt", "a fine"]) == 1
    _one_line_error(capsys, "this one is an encoder")
