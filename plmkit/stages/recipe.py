"""``plmkit run RECIPE.yaml``: run a list of stages, skipping those whose inputs did not change.

A recipe is YAML::

    name: demo
    vars: {train: null, epochs: 2}            # null: must be given with --set train=FILE
    stages:
      - name: finetune                         # output directory RUN/finetune/
        stage: finetune                        # a plmkit command (or a recipe-only stage)
        config: {model: "${run}/pretrain", train: "${vars.train}", epochs: "${vars.epochs}"}

In strings, ``${run}`` is the run directory, ``${out}`` this stage's directory, ``${vars.NAME}``
a variable and ``${recipe_dir}`` the recipe's own directory; a string that is exactly one
``${vars.NAME}`` takes the variable's value with its type. A stage's ``out`` defaults to
``${out}``, and what a stage writes must stay inside ``${out}`` (symlinks and ``..``
resolved): the runner replaces stage outputs, so anything else is refused before any stage
runs. ``overwrite`` and ``resume`` are the runner's to set.

Skipping: each completed stage leaves ``RUN/<name>/.recipe-stage.json`` with a fingerprint of its
resolved config, the fingerprints of the stages it reads (a path into ``RUN/<other>``, or
``${run}`` itself for all earlier stages) and the contents of the input files it reads. A stage
whose fingerprint matches is skipped; any change re-runs it, and through the fingerprints
everything that reads it. An interrupted stage has no stamp: the next run starts it again, with
``resume`` where the stage has it. ``--from STAGE`` re-runs STAGE and every stage after it.

Before any stage runs (and all that ``--dry-run`` does), every stage is checked as far as it can be
without running: inputs from outside the run exist, and stages that define
``check_inputs(cfg, pending)`` parse their data and check their options (the similarity stage:
every sentence has the word).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import io
import json
import re
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..config import build, load_yaml, option, to_dict
from ..errors import PlmkitError
from ..io import atomic_write_text, check_input_dir, check_input_file, write_json
from ..train.logging import format_seconds, watching

STAMP = ".recipe-stage.json"
STATE_DIR = ".recipe"
RUNNER_FIELDS = {"overwrite", "resume"}      # set by the runner, not part of a stage's identity
OUTPUT_FIELDS = ("out", "output")            # options that name what a stage writes ...
INPUT_FILES = ("corpus", "train", "eval", "data", "calibration", "input", "sentences")   # ... and reads
INPUT_DIRS = ("model", "teacher", "models", "baseline")
RECIPE_ONLY = {"reinit": "plmkit.stages.reinit", "synthetic": "plmkit.stages.synthetic"}
HASH_LIMIT = 256 * 2**20                     # bigger input files are fingerprinted by size and mtime
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STATUS_EVERY = 30.0          # quiet: seconds between a stage's progress lines off a terminal ...
STATUS_EVERY_TTY = 0.5       # ... and between rewrites of its line on one
REF_RE = re.compile(r"\$\{([^}]*)\}")


@dataclass
class Config:
    recipe: str = option(help="recipe YAML file (plmkit ships one: plmkit/recipes/demo.yaml)", positional=True)
    out: str | None = option(None, help="run directory (default: runs/<recipe name>)")
    set: list[str] | None = option(None, help="override recipe variables: --set train=data/train.tsv epochs=3")
    from_stage: str | None = option(None, flag="--from", help="re-run this stage and every stage after it")
    dry_run: bool = option(False, help="validate the recipe and show which stages would run; run nothing")
    quiet: bool = option(False, help="stage output only into RUN/.recipe/logs/<stage>.log; the terminal shows "
                         "each stage's progress (steps, loss, ETA) and time")


@dataclass
class Step:
    name: str
    kind: str                    # the command, e.g. "tokenizer train"
    module: Any                  # the stage module (Config + run)
    cfg: Any                     # the built stage Config
    deps: list[str]              # earlier stages whose outputs it reads
    inputs: list[Path]           # files / directories outside the run that it reads


def run(cfg: Config) -> int:
    recipe_path = Path(cfg.recipe)
    recipe = load_yaml(recipe_path)
    run_dir = Path(cfg.out or Path("runs") / str(recipe.get("name") or recipe_path.stem))
    execute(recipe, recipe_path, run_dir, parse_sets(cfg.set or [], recipe_path), from_stage=cfg.from_stage,
            dry_run=cfg.dry_run, quiet=cfg.quiet)
    return 0


def execute(recipe: dict[str, Any], recipe_path: Path, run_dir: Path, overrides: dict[str, Any], *,
            from_stage: str | None = None, dry_run: bool = False, quiet: bool = False) -> list[tuple]:
    """Validate the whole recipe, then run its stages in order, skipping unchanged ones.

    Returns (stage, what happened, seconds or None) per stage.
    """
    run_dir = run_dir.resolve()
    steps = plan(recipe, recipe_path, run_dir, overrides)
    if from_stage is not None and from_stage not in [s.name for s in steps]:
        raise PlmkitError(f"{recipe_path}: --from {from_stage}: no such stage "
                          f"(stages: {', '.join(s.name for s in steps)})")
    check_steps(steps, recipe_path, run_dir)
    if not dry_run:
        write_json(run_dir / STATE_DIR / "state.json", {"recipe": str(recipe_path.resolve()),
                                                         "order": [s.name for s in steps]})
    forced = False
    fingerprints: dict[str, str] = {}
    results: list[tuple] = []
    for step in steps:
        forced = forced or step.name == from_stage
        fingerprints[step.name] = fingerprint(step, run_dir, fingerprints)
        if not forced and read_stamp(run_dir / step.name).get("fingerprint") == fingerprints[step.name]:
            results.append((step.name, "skipped (unchanged)", None))
            _say(f"- {step.name}: unchanged, skipped")
        elif dry_run:
            results.append((step.name, "would run", None))
        else:
            results.append((step.name, "ran", run_step(step, run_dir, fingerprints[step.name], quiet)))
    _summary(results, run_dir)
    return results


# --------------------------------------------------------------------------- building the plan


def parse_sets(items: list[str], recipe_path: Path) -> dict[str, Any]:
    """``NAME=VALUE`` pairs; values are read as YAML scalars (3 -> int, a/b.tsv -> str)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise PlmkitError(f"{recipe_path}: --set {item!r}: expected NAME=VALUE")
        try:
            out[name.strip()] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out[name.strip()] = value
    return out


def plan(recipe: dict[str, Any], recipe_path: Path, run_dir: Path, overrides: dict[str, Any]) -> list[Step]:
    """Every stage resolved and built, before anything runs: a bad recipe fails here, whole."""
    src = str(recipe_path)
    unknown_keys = set(recipe) - {"name", "description", "vars", "stages"}
    if unknown_keys:
        raise PlmkitError(f"{src}: unknown top-level key(s) {', '.join(sorted(map(str, unknown_keys)))} "
                          "(expected name, description, vars, stages)")
    variables = _variables(recipe.get("vars") or {}, overrides, src)
    stages = recipe.get("stages")
    if not isinstance(stages, list) or not stages:
        raise PlmkitError(f"{src}: 'stages' must be a non-empty list")
    steps: list[Step] = []
    for i, raw in enumerate(stages):
        steps.append(_build_step(raw, i, steps, variables, recipe_path, run_dir))
    return steps


def _variables(declared: Any, overrides: dict[str, Any], src: str) -> dict[str, Any]:
    if not isinstance(declared, dict):
        raise PlmkitError(f"{src}: 'vars' must be a mapping of names to values")
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise PlmkitError(f"{src}: --set {unknown[0]}: no such variable (vars: {', '.join(map(str, declared))})")
    return {**declared, **overrides}


def _build_step(raw: Any, index: int, earlier: list[Step], variables: dict[str, Any], recipe_path: Path,
                run_dir: Path) -> Step:
    src = f"{recipe_path}: stage {index + 1}"
    if not isinstance(raw, dict) or "stage" not in raw:
        raise PlmkitError(f"{src}: expected a mapping with 'stage' (the command), 'name' and 'config'")
    name = str(raw.get("name") or str(raw["stage"]).split()[0])
    src = f"{recipe_path}: stage '{name}'"
    extra = set(raw) - {"name", "stage", "config"}
    if extra:
        raise PlmkitError(f"{src}: unknown key(s) {', '.join(sorted(map(str, extra)))} (expected name, stage, config)")
    if not NAME_RE.match(name) or name == STATE_DIR.strip("."):
        raise PlmkitError(f"{src}: the name must be a plain directory name (letters, digits, _ . -)")
    if any(s.name == name for s in earlier):
        raise PlmkitError(f"{src}: a stage of this name comes earlier; give each stage its own 'name'")
    module = _stage_module(str(raw["stage"]), src)
    values = raw.get("config") or {}
    if not isinstance(values, dict):
        raise PlmkitError(f"{src}: 'config' must be a mapping of option names to values")
    context = {"run": str(run_dir), "out": str(run_dir / name), "recipe_dir": str(recipe_path.resolve().parent)}
    values = {str(k).replace("-", "_"): substitute(v, context, variables, src) for k, v in values.items()}
    fields = {f.name for f in dataclasses.fields(module.Config)}
    set_by_runner = sorted(RUNNER_FIELDS & set(values))
    if set_by_runner:
        raise PlmkitError(f"{src}: '{set_by_runner[0]}' is set by the runner; leave it out of the recipe")
    if "out" in fields and values.get("out") is None:
        values["out"] = context["out"]
    cfg = build(module.Config, values, source=src)
    _check_outputs(cfg, run_dir.resolve() / name, src)
    deps, inputs = _references(cfg, name, earlier, run_dir, src)
    return Step(name, str(raw["stage"]), module, cfg, deps, inputs)


def _check_outputs(cfg: Any, stage_dir: Path, src: str) -> None:
    """A stage writes only inside its own directory RUN/<name>: the runner replaces its output
    (``overwrite``) and clears that directory, so an ``out`` anywhere else (an absolute path,
    ``${run}/../x``, a symlink out of the run, another stage's directory) could delete
    what is not the run's. Paths are compared after resolving ``..`` and symlinks."""
    for key in OUTPUT_FIELDS:
        value = getattr(cfg, key, None)
        if not isinstance(value, str) or not value:
            continue
        target = Path(value).expanduser().resolve()
        if not target.is_relative_to(stage_dir):
            link = _link_out(Path(value).expanduser().absolute(), stage_dir)
            where = (f": {link} is a symlink to {link.resolve()}" if link is not None
                     else f" {stage_dir}")
            raise PlmkitError(f"{src}: '{key}: {value}' writes outside the stage's directory{where}; "
                              "a recipe stage writes only to ${out} or a path inside it")


def _link_out(path: Path, stage_dir: Path) -> Path | None:
    """The last symlink on ``path`` that leads out of ``stage_dir`` (the stage's directory itself
    linked elsewhere, say), or None: then ``..`` or an absolute path is what leads out."""
    found, walked = None, Path(path.anchor)
    for part in path.parts[1:]:
        walked = walked / part
        if walked.is_symlink() and not walked.resolve().is_relative_to(stage_dir):
            found = walked
    return found


def _stage_module(kind: str, src: str) -> Any:
    from . import COMMANDS

    modules = {**{k: v[0] for k, v in COMMANDS.items() if k not in ("run", "demo", "serve")}, **RECIPE_ONLY}
    if kind not in modules:
        raise PlmkitError(f"{src}: unknown stage '{kind}' (known: {', '.join(sorted(modules))})")
    try:
        return importlib.import_module(modules[kind])
    except ModuleNotFoundError as e:
        raise PlmkitError(f"{src}: stage '{kind}' is not available in this installation ({e.name})") from None


def substitute(value: Any, context: dict[str, str], variables: dict[str, Any], src: str) -> Any:
    """Replace ``${...}`` references in strings, recursively through lists and mappings."""
    if isinstance(value, list):
        return [substitute(v, context, variables, src) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, context, variables, src) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    whole = REF_RE.fullmatch(value)
    if whole:
        return _lookup(whole.group(1), context, variables, src)
    return REF_RE.sub(lambda m: str(_lookup(m.group(1), context, variables, src)), value)


def _lookup(ref: str, context: dict[str, str], variables: dict[str, Any], src: str) -> Any:
    if ref in context:
        return context[ref]
    if ref.startswith("vars.") and ref[5:] in variables:
        value = variables[ref[5:]]
        if value is None:
            raise PlmkitError(f"{src}: variable '{ref[5:]}' has no value: give it with --set {ref[5:]}=VALUE")
        return substitute(value, context, variables, src)
    raise PlmkitError(f"{src}: unknown reference ${{{ref}}} (use ${{run}}, ${{out}}, ${{recipe_dir}} "
                      f"or ${{vars.NAME}} with NAME in: {', '.join(map(str, variables)) or 'no vars'})")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def _references(cfg: Any, name: str, earlier: list[Step], run_dir: Path, src: str) -> tuple[list[str], list[Path]]:
    """Earlier stages this one reads (paths into RUN/<stage>, or RUN itself: all of them), and
    input paths outside the run. Other paths inside the run (caches) are the run's own business."""
    deps: list[str] = []
    inputs: list[Path] = []
    names = [s.name for s in earlier]
    for text in _strings({k: v for k, v in to_dict(cfg).items() if k not in RUNNER_FIELDS}):
        if not text or "\n" in text or len(text) > 4096:
            continue
        path = Path(text).expanduser().resolve()
        if path == run_dir:
            deps += names
            continue
        if not path.is_relative_to(run_dir):
            if path.exists():
                inputs.append(path)
            continue
        top = path.relative_to(run_dir).parts[0]
        if top == name or top.startswith("."):
            continue
        if top not in names:
            raise PlmkitError(f"{src}: reads {path}, which no earlier stage writes (stages before it: "
                              f"{', '.join(names) or 'none'})")
        deps.append(top)
    return list(dict.fromkeys(deps)), list(dict.fromkeys(inputs))


def check_steps(steps: list[Step], recipe_path: Path, run_dir: Path) -> None:
    """Validate what can be validated without running anything (``--dry-run`` does only this):
    every input a stage reads from outside the run exists (``INPUT_FILES`` / ``INPUT_DIRS``),
    and a stage module's ``check_inputs(cfg, pending)``, where it has one, parses its inputs and
    checks its options. ``pending(path)`` is true for paths inside the run: an earlier stage
    writes them, so they are checked when it has."""
    def pending(path: str) -> bool:
        return Path(path).expanduser().resolve().is_relative_to(run_dir)

    for step in steps:
        try:
            for key, is_dir in [(k, False) for k in INPUT_FILES] + [(k, True) for k in INPUT_DIRS]:
                for path in _strings(getattr(step.cfg, key, None)):
                    if path and not pending(path):
                        (check_input_dir if is_dir else check_input_file)(path)
            hook = getattr(step.module, "check_inputs", None)
            if hook is not None:
                hook(step.cfg, pending)
        except PlmkitError as e:
            raise PlmkitError(f"{recipe_path}: stage '{step.name}': {e}") from None


# --------------------------------------------------------------------------- fingerprints and stamps


def fingerprint(step: Step, run_dir: Path, done: dict[str, str]) -> str:
    """sha256 of what decides a stage's output: kind, config, upstream fingerprints, input contents."""
    config = {k: v for k, v in to_dict(step.cfg).items() if k not in RUNNER_FIELDS}
    # The run directory's own location does not change a result: keep fingerprints movable.
    text = json.dumps(config, sort_keys=True, default=str).replace(str(run_dir), "${run}")
    h = hashlib.sha256()
    h.update(f"{step.kind}\n{text}\n".encode())
    for dep in step.deps:
        h.update(f"dep {dep} {done[dep]}\n".encode())
    for path in step.inputs:
        h.update(f"input {path} {_content_hash(path)}\n".encode())
    return h.hexdigest()


def _content_hash(path: Path) -> str:
    """Files: sha256 of the bytes (size and mtime above HASH_LIMIT); directories: every file's
    relative path, size and mtime (checkpoints are large, and rewritten whole when they change)."""
    if path.is_file():
        st = path.stat()
        if st.st_size > HASH_LIMIT:
            return f"size={st.st_size} mtime={st.st_mtime_ns}"
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        st = p.stat()
        h.update(f"{p.relative_to(path)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def read_stamp(stage_dir: Path) -> dict[str, Any]:
    path = stage_dir / STAMP
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}        # a damaged stamp only means the stage runs again
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- running a stage


def run_step(step: Step, run_dir: Path, fp: str, quiet: bool) -> float:
    """Run one stage into RUN/<name>/ and stamp it; returns its wall time in seconds."""
    stage_dir = run_dir / step.name
    started = run_dir / STATE_DIR / "started" / f"{step.name}.json"
    resume = _can_resume(step, started, fp)
    if not resume:
        _clear(run_dir, step.name)
    cfg = _runner_fields(step.cfg, resume)
    out = getattr(cfg, "out", None)
    if out is None or Path(out).resolve() != stage_dir:
        stage_dir.mkdir(parents=True, exist_ok=True)   # the stage writes a file inside, not the dir itself
    write_json(started, {"fingerprint": fp})
    log = run_dir / STATE_DIR / "logs" / f"{step.name}.log"
    where = f" output: {_shown(log)}" if quiet else ""       # quiet: where the stage's own output is
    _say(f"- {step.name} ({step.kind}){' resuming' if resume else ''} ...{where}")
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    code = _call(step, cfg, log, quiet)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    if isinstance(code, int) and code != 0:
        raise PlmkitError(f"stage '{step.name}' ({step.kind}) failed with exit code {code}")
    write_json(stage_dir / STAMP, {"stage": step.kind, "name": step.name, "fingerprint": fp,
                                   "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "deps": step.deps,
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": to_dict(cfg)})
    started.unlink(missing_ok=True)
    _say(f"  {step.name} done in {format_seconds(seconds)} ({cpu:.0f} CPU-s)")
    return seconds


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it (shorter to read and type)."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children: unlike wall time, not inflated by other
    jobs on a shared machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _can_resume(step: Step, started: Path, fp: str) -> bool:
    """Continue an interrupted stage only if it supports --resume and was started with this fingerprint."""
    has_resume = any(f.name == "resume" for f in dataclasses.fields(step.cfg))
    if not (has_resume and started.is_file()):
        return False
    try:
        return json.loads(started.read_text(encoding="utf-8")).get("fingerprint") == fp
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _clear(run_dir: Path, name: str) -> None:
    """Remove a stage's old output and the hidden work directories stages keep beside it."""
    shutil.rmtree(run_dir / name, ignore_errors=True)
    for hidden in run_dir.glob(f".{name}.*"):
        if hidden.is_dir():
            shutil.rmtree(hidden, ignore_errors=True)
        else:
            hidden.unlink(missing_ok=True)


def _runner_fields(cfg: Any, resume: bool) -> Any:
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {k: v for k, v in (("overwrite", True), ("resume", resume)) if k in names}
    return dataclasses.replace(cfg, **changes)


class _Status:
    """A quiet stage's progress (step, loss, ETA: ``train.logging.watching``) where the runner
    prints: one line rewritten in place on a terminal, a line every ``STATUS_EVERY`` seconds
    elsewhere (a pipe, a CI log), so a long stage never looks hung."""

    def __init__(self, stream: Any, name: str) -> None:
        self.stream, self.name, self.tty, self.open = stream, name, stream.isatty(), False
        self.every = STATUS_EVERY_TTY if self.tty else STATUS_EVERY

    def show(self, text: str) -> None:
        line = f"  {self.name}: {text}"
        if self.tty:        # rewrite the line: carriage return, clear to its end, cut to the width
            self.stream.write("\r\033[K" + line[:shutil.get_terminal_size().columns - 1])
            self.open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.open:       # the last progress line stays, and the runner's next line starts below it
            self.stream.write("\n")
            self.stream.flush()


class _Tee(io.TextIOBase):
    """Stage output to the log file, and to the terminal unless quiet. The log is flushed at
    every write, so ``tail -f RUN/.recipe/logs/STAGE.log`` follows a stage while it runs."""

    def __init__(self, log: io.TextIOBase, echo: Any | None) -> None:
        self.log, self.echo = log, echo

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        if self.echo is not None:
            self.echo.write(text)
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        if self.echo is not None:
            self.echo.flush()


def _call(step: Step, cfg: Any, log_path: Path, quiet: bool) -> Any:
    """Run the stage with its output teed to its log. Quiet, its stderr (progress bars, warnings)
    goes to the log too, and the terminal gets the runner's progress line instead."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log, contextlib.ExitStack() as stack:
        tee = _Tee(log, None if quiet else sys.stdout)
        if quiet:
            status = _Status(sys.stdout, step.name)
            stack.callback(status.end)
            stack.enter_context(watching(status.show, status.every))
            stack.enter_context(contextlib.redirect_stderr(tee))
        stack.enter_context(contextlib.redirect_stdout(tee))
        return step.module.run(cfg)


# --------------------------------------------------------------------------- output


def _say(text: str) -> None:
    print(text, flush=True)


def _summary(results: list[tuple], run_dir: Path) -> None:
    ran = sum(1 for _, what, _ in results if what == "ran")
    lines = [f"\nrun {run_dir}: {ran} stage(s) ran, {len(results) - ran} not run"]
    for name, what, seconds in results:
        lines.append(f"  {name:<20} {what}" + (f" in {seconds:.1f}s" if seconds is not None else ""))
    if run_dir.is_dir():
        atomic_write_text(run_dir / STATE_DIR / "last-run.txt", "\n".join(lines[1:]) + "\n")
    print("\n".join(lines), flush=True)
