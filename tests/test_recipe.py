"""plmkit run: recipe validation, skipping unchanged stages, re-running what changed, resuming.

The stage modules' ``run`` functions are replaced by fakes that record their calls and write
a file into their output, so these tests check the runner's logic in milliseconds; the demo
test runs real stages through the same runner.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml

from plmkit.cli import main
from plmkit.stages import recipe as R

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """
name: chain
vars: {train: null, lr: 0.001, steps: 5}
stages:
  - name: tokenizer
    stage: tokenizer train
    config: {corpus: ["${vars.train}"], vocab_size: 100}
  - name: pretrain
    stage: pretrain
    config: {corpus: ["${vars.train}"], tokenizer: "${run}/tokenizer", max_steps: "${vars.steps}",
             cache_dir: "${run}/.cache"}
  - name: finetune
    stage: finetune
    config: {model: "${run}/pretrain", task: classify, train: "${vars.train}", lr: "${vars.lr}"}
  - name: distill
    stage: distill
    config: {teacher: "${run}/finetune", task: classify, train: "${vars.train}", student_layers: "0"}
  - name: prune
    stage: prune
    config: {model: "${run}/distill", heads: 0.5, train: "${vars.train}"}
  - name: report
    stage: report
    config: {run: "${run}", out: "${out}/report.html"}
"""
MODULES = {"tokenizer": "plmkit.stages.tokenizer", "pretrain": "plmkit.stages.pretrain",
           "finetune": "plmkit.stages.finetune", "distill": "plmkit.stages.distill",
           "prune": "plmkit.stages.prune", "report": "plmkit.stages.report"}


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, object]]:
    """Fake every stage: record (stage, config) and write the output a real stage would."""
    seen: list[tuple[str, object]] = []
    for name, mod in MODULES.items():
        def fake(cfg, _name=name):
            seen.append((_name, cfg))
            out = Path(cfg.out)
            target = out.parent if out.suffix else out
            target.mkdir(parents=True, exist_ok=True)
            (target / "done.txt").write_text(json.dumps({"stage": _name}), encoding="utf-8")
            return 0
        monkeypatch.setattr(importlib.import_module(mod), "run", fake)
    return seen


@pytest.fixture
def setup(tmp_path) -> dict[str, Path]:
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n", encoding="utf-8")
    recipe = tmp_path / "chain.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    return {"recipe": recipe, "train": train, "run": tmp_path / "run"}


def _run(setup, *extra: str) -> int:
    return main(["run", str(setup["recipe"]), "--out", str(setup["run"]), "--set", f"train={setup['train']}",
                 *extra])


def _names(calls) -> list[str]:
    return [name for name, _ in calls]


def test_unchanged_rerun_skips_every_stage(setup, calls, capsys):
    assert _run(setup) == 0
    assert _names(calls) == list(MODULES)
    assert all((setup["run"] / n / R.STAMP).is_file() for n in MODULES)
    calls.clear()
    capsys.readouterr()
    assert _run(setup) == 0
    assert calls == []
    out = capsys.readouterr().out
    assert out.count("unchanged, skipped") == len(MODULES) and "0 stage(s) ran" in out


def test_changed_finetune_config_reruns_it_and_everything_after(setup, calls):
    assert _run(setup) == 0
    calls.clear()
    assert _run(setup, "lr=0.01") == 0          # --set train=... lr=0.01: only finetune reads lr
    assert _names(calls) == ["finetune", "distill", "prune", "report"]
    assert calls[0][1].lr == 0.01
    calls.clear()
    assert _run(setup, "lr=0.01") == 0
    assert calls == []


def test_changed_input_file_reruns_its_readers(setup, calls):
    assert _run(setup) == 0
    calls.clear()
    setup["train"].write_text("sentence\tlabel\ngreat film\t1\nbad film\t0\n", encoding="utf-8")
    assert _run(setup) == 0
    assert _names(calls) == list(MODULES)      # every stage reads train.tsv, or a stage that does


def test_from_forces_a_stage_and_all_after(setup, calls):
    assert _run(setup) == 0
    calls.clear()
    assert _run(setup, "--from", "distill") == 0
    assert _names(calls) == ["distill", "prune", "report"]


def test_runner_sets_out_overwrite_and_resume(setup, calls):
    assert _run(setup) == 0
    cfgs = dict(calls)
    run = setup["run"].resolve()
    assert cfgs["pretrain"].out == str(run / "pretrain") and cfgs["pretrain"].tokenizer == str(run / "tokenizer")
    assert cfgs["finetune"].overwrite is True and cfgs["finetune"].resume is False
    assert cfgs["report"].run == str(run) and cfgs["report"].out == str(run / "report" / "report.html")


def test_interrupted_run_continues_where_it_stopped(setup, calls, monkeypatch):
    ft = importlib.import_module(MODULES["finetune"])
    fake = ft.run

    def interrupted(cfg):
        calls.append(("finetune", cfg))
        Path(cfg.out).mkdir(parents=True)           # half an output, no stamp
        raise KeyboardInterrupt
    monkeypatch.setattr(ft, "run", interrupted)
    assert _run(setup) == 130
    assert _names(calls) == ["tokenizer", "pretrain", "finetune"]
    assert not (setup["run"] / "finetune" / R.STAMP).exists()
    monkeypatch.setattr(ft, "run", fake)
    calls.clear()
    assert _run(setup) == 0
    assert _names(calls) == ["finetune", "distill", "prune", "report"]
    assert calls[0][1].resume is True               # the stage supports --resume: it continues


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["stages"][2].update(stage="finetuen"), "stage 'finetune': unknown stage 'finetuen'"),
    (lambda r: r["stages"][2]["config"].update(epochz=3), "stage 'finetune': unknown option 'epochz'"),
    (lambda r: r["stages"][2]["config"].update(lr="${vars.nope}"), "unknown reference ${vars.nope}"),
    (lambda r: r["stages"][1]["config"].update(tokenizer="${run}/finetune"), "which no earlier stage writes"),
    (lambda r: r["stages"][3].update(name="finetune"), "a stage of this name comes earlier"),
    (lambda r: r["stages"][2]["config"].update(overwrite=True), "'overwrite' is set by the runner"),
    (lambda r: r["stages"][2]["config"].pop("task"), "missing required option(s): --task"),
    (lambda r: r.update(stagez=[]), "unknown top-level key(s) stagez"),
])
def test_bad_recipe_is_one_line_and_runs_nothing(setup, calls, capsys, edit, message):
    data = yaml.safe_load(RECIPE)
    edit(data)
    setup["recipe"].write_text(yaml.safe_dump(data), encoding="utf-8")
    assert _run(setup) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(setup["recipe"]) in err and message in err, err
    assert calls == [] and not setup["run"].exists()


def test_missing_variable_and_bad_set(setup, calls, capsys):
    assert main(["run", str(setup["recipe"]), "--out", str(setup["run"])]) == 1
    assert "variable 'train' has no value: give it with --set train=VALUE" in capsys.readouterr().err
    assert _run(setup, "nosuch=1") == 1
    assert "--set nosuch: no such variable" in capsys.readouterr().err
    assert main(["run", str(setup["recipe"]), "--out", str(setup["run"]), "--from", "nostage",
                 "--set", f"train={setup['train']}"]) == 1
    assert "--from nostage: no such stage" in capsys.readouterr().err
    assert calls == []


def test_dry_run_runs_nothing(setup, calls, capsys):
    assert _run(setup, "--dry-run") == 0
    assert calls == [] and capsys.readouterr().out.count("would run") == len(MODULES)
    assert not setup["run"].exists()


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")) + [ROOT / "plmkit/recipes/demo.yaml"],
                         ids=lambda p: p.name)
def test_shipped_recipes_validate(path, tmp_path):
    """Every worked example parses and every stage config builds (required vars set to dummies)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    sets = {k: str(tmp_path / f"{k}.data") for k, v in (data.get("vars") or {}).items() if v is None}
    steps = R.plan(data, path, tmp_path / "run", sets)
    assert [s.name for s in steps] == [s.get("name") or s["stage"].split()[0] for s in data["stages"]]
    assert data.get("description")


@pytest.mark.parametrize("out", ["/tmp/plmkit-elsewhere", "${run}/../outside", "${run}/tokenizer",
                                 "${run}", "${out}/../pretrain"])
def test_stage_output_outside_its_directory_is_refused_before_any_work(setup, calls, capsys, tmp_path, out):
    """The runner forces --overwrite: an out: anywhere else could delete what is not the run's."""
    victim = tmp_path / "outside"
    victim.mkdir()
    (victim / "precious.txt").write_text("mine")
    data = yaml.safe_load(RECIPE)
    data["stages"][2]["config"]["out"] = out
    setup["recipe"].write_text(yaml.safe_dump(data), encoding="utf-8")
    assert _run(setup) == 1
    err = capsys.readouterr().err
    assert "stage 'finetune'" in err and "writes outside the stage's directory" in err, err
    assert calls == [] and not setup["run"].exists()
    assert (victim / "precious.txt").read_text() == "mine"


def test_stage_directory_symlinked_out_of_the_run_is_refused(setup, calls, capsys, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("mine")
    setup["run"].mkdir()
    (setup["run"] / "finetune").symlink_to(elsewhere, target_is_directory=True)
    assert _run(setup) == 1
    link = setup["run"].resolve() / "finetune"
    err = capsys.readouterr().err
    assert f"writes outside the stage's directory: {link} is a symlink to {elsewhere.resolve()};" in err, err
    assert calls == [] and (elsewhere / "precious.txt").read_text() == "mine"


def test_output_inside_the_stage_directory_is_fine(setup, calls):
    data = yaml.safe_load(RECIPE)
    data["stages"][2]["config"]["out"] = "${out}/model"
    setup["recipe"].write_text(yaml.safe_dump(data), encoding="utf-8")
    assert _run(setup) == 0
    assert dict(calls)["finetune"].out == str(setup["run"].resolve() / "finetune" / "model")


SIMILARITY = """
name: sim
vars: {sentences: null, word: apple, train: null, model: null}
stages:
  - name: finetune
    stage: finetune
    config: {model: "${vars.model}", task: classify, train: "${vars.train}"}
  - name: similarity
    stage: similarity
    config: {model: "${run}/finetune", sentences: "${vars.sentences}", word: "${vars.word}"}
"""


@pytest.mark.parametrize("word, train, message", [
    ("bank", "sentence\tlabel\ngood\t1\nbad\t0\n", "sentences.txt:1: the word 'bank' is not in this sentence"),
    ("apple", "sentence\tlabel\ngood\t1\nbad\t0\t7\n", "stage 'finetune': ", ),
    ("apple", None, "train.tsv: file not found"),
])
def test_dry_run_validates_inputs_without_running(tmp_path, calls, capsys, word, train, message):
    """--dry-run (and every run, before its first stage) parses what it can: data, options, the word."""
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("An apple a day.\nApple makes phones.\n", encoding="utf-8")
    if train is not None:
        (tmp_path / "train.tsv").write_text(train, encoding="utf-8")
    recipe = tmp_path / "sim.yaml"
    recipe.write_text(SIMILARITY, encoding="utf-8")
    sets = [f"sentences={sentences}", f"word={word}", f"train={tmp_path / 'train.tsv'}", f"model={tmp_path}"]
    for extra in (["--dry-run"], []):
        assert main(["run", str(recipe), "--out", str(tmp_path / "run"), *extra, "--set", *sets]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not (tmp_path / "run").exists() and calls == []
    if train and "bad\t0\t7" in train:
        assert "train.tsv:3: expected 2 columns, found 3" in err


def test_quiet_run_shows_each_stage_progress_its_log_and_time(setup, calls, monkeypatch, capsys):
    """--quiet (as plmkit demo runs): the stage's output goes to its log only, but the terminal gets
    the stage's progress lines (from the training loop's Progress) and where the log is."""
    from plmkit.train.logging import Progress

    ft = importlib.import_module(MODULES["finetune"])
    fake = ft.run

    def training(cfg):
        progress = Progress(4, 0, True, every=0)
        for step in range(1, 5):
            progress.update(step, 2.0 / step, 100, None)
        progress.close()
        print("finetune's own output")
        return fake(cfg)
    monkeypatch.setattr(ft, "run", training)
    monkeypatch.setattr(R, "STATUS_EVERY", 0.0)
    monkeypatch.chdir(setup["run"].parent)
    assert _run(setup, "--quiet") == 0
    out = capsys.readouterr().out
    begin = out.index("- finetune (finetune) ... output: run/.recipe/logs/finetune.log")
    stage = out[begin:out.index("finetune done in")]
    shown = [line for line in stage.splitlines() if line.startswith("  finetune: step ")]
    assert shown[0].startswith("  finetune: step 1/4 (25%) | loss 2.0000 | ") and " | ETA " in shown[0], shown
    assert shown[-1].startswith("  finetune: step 4/4 (100%) | loss 0.5000"), shown
    assert "finetune's own output" not in out
    log = (setup["run"] / R.STATE_DIR / "logs" / "finetune.log").read_text()
    assert "finetune's own output" in log and "  finetune: step" not in log


def test_status_line_is_rewritten_on_a_terminal(monkeypatch):
    import io as stdio

    class Terminal(stdio.StringIO):
        def isatty(self) -> bool:
            return True
    term = Terminal()
    status = R._Status(term, "pretrain")
    assert status.every == R.STATUS_EVERY_TTY
    status.show("step 1/2 (50%) | loss 3.0000 | ETA 1s")
    status.show("step 2/2 (100%) | loss 2.0000 | ETA 0s")
    status.end()
    assert term.getvalue() == ("\r\033[K  pretrain: step 1/2 (50%) | loss 3.0000 | ETA 1s"
                               "\r\033[K  pretrain: step 2/2 (100%) | loss 2.0000 | ETA 0s\n")


def test_stage_log_is_written_while_the_stage_runs(setup, calls, monkeypatch):
    seen = {}
    ft = importlib.import_module(MODULES["finetune"])
    fake = ft.run

    def chatty(cfg):
        print("epoch 1 of 3 ...")
        log = setup["run"].resolve() / R.STATE_DIR / "logs" / "finetune.log"
        seen["log"] = log.read_text(encoding="utf-8")      # read mid-stage, as `tail -f` would
        return fake(cfg)
    monkeypatch.setattr(ft, "run", chatty)
    assert _run(setup, "--quiet") == 0
    assert seen["log"] == "epoch 1 of 3 ...\n"
