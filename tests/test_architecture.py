"""The architecture holds: inside plmkit, imports only point down the layers of pyproject.toml's
import-linter contract (errors -> io, config -> data -> tokenizer, train, report, eval -> models
-> adapters -> loading -> tasks -> compress, analysis, serve, bench -> stages -> cli), imports
inside functions included."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """import-linter on the plmkit package under ``root``, in a process that imports nothing else."""
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, capture_output=True, text=True,
                          env={"PATH": "", "PYTHONPATH": str(root)}, timeout=120)


def test_imports_only_point_down():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout and "BROKEN" not in result.stdout


def _lint_with(tmp_path: Path, module: str, code: str) -> subprocess.CompletedProcess:
    """import-linter on a copy of plmkit where ``code`` is appended to ``module`` (a path under plmkit/)."""
    shutil.copytree(ROOT / "plmkit", tmp_path / "plmkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "plmkit" / module
    target.write_text(target.read_text() + code)
    return _lint(tmp_path)


def test_an_import_that_points_up_breaks_the_contract(tmp_path):
    """The check is live: models/checkpoint.py importing the loader (one level up, inside a
    function, as it once imported adapters/ and compress/) fails it, naming the import."""
    result = _lint_with(tmp_path, "models/checkpoint.py", "\n\ndef _up():\n    from ..loading import load\n    return load\n")
    assert result.returncode == 1
    assert "BROKEN" in result.stdout and "plmkit.models.checkpoint -> plmkit.loading" in result.stdout


def test_a_stage_importing_another_breaks_the_contract(tmp_path):
    """Stages do not import each other (the recipe runner excepted): evaluate borrowing predict's
    option set, inside a function, is named."""
    result = _lint_with(tmp_path, "stages/evaluate.py", "\n\ndef _side():\n    from .predict import Config\n    return Config\n")
    assert result.returncode == 1
    assert "BROKEN" in result.stdout and "plmkit.stages.evaluate -> plmkit.stages.predict" in result.stdout
