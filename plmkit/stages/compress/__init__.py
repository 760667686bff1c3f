"""``plmkit compress``: the measured compression recipe as one command, its choices made on a dev slice.

    plmkit compress --model runs/sst2 --train train.tsv --out runs/sst2-small          # within 1.0 point
    plmkit compress --model runs/sst2 --train train.tsv --out runs/sst2-fast --target-speedup 8

Reads top to bottom: check the request -> the teacher and the dev slice (carved from --train, which
the student then never trains on, or --eval), the teacher's dev score, and the refusal of a dev slice
too small to tell half a point (compress/plan.py); all bad input stops here -> when the teacher
was fine-tuned on --train (so it has seen the carved slice), the reference: its recipe fine-tuned
without the slice, which stands in for the teacher below (``_reference``) -> every candidate,
each step a plmkit stage run as a cached step of the work folder ``.OUT.compress`` beside --out:
  1. the teacher, measured by ``plmkit bench`` on the dev slice in PyTorch (the reference: dev
     score, batch-1 latency, batch-32 throughput) and INT8-quantized by every available engine
     (ONNX Runtime dynamic per token and per tensor, static; OpenVINO: the ``CANDIDATES`` of
     compress/engines.py), each measured alike;
  2. the student distilled from it (every second teacher layer, or --student-size), with the task's
     measured loss weights (compress/measured.py) or, with --search-loss, the best of logits /
     + hidden states / + attention on the dev slice; measured and quantized as the teacher;
  3. the student pruned along the task's chain of (heads, FFN) ratios, each recovered by
     distillation from the teacher, measured and quantized, the search stepping towards the most
     aggressive ratio within --max-drop (or the mildest reaching --target-speedup) while the
     --budget lasts;
Every bench scores the dev slice example by example (``--unit-stats``): each candidate's dev score
and the standard error of its paired difference from the teacher come from those (compress/plan.py
``Paired``), and the search and the rule count a candidate within --max-drop only when its drop
plus --margin such errors is.
-> the rule (compress/plan.py ``select``) picks one candidate (with a reference: its recipe is run
again from the teacher, ``_rebuild``) -> --out, written atomically: that
model (evaluate, predict, serve and bench take it as is), ``compress.json`` (every candidate's dev
score, size, latency and throughput, the Pareto front, the schedule, the steps, why this one) and
``report.html`` (plmkit report's page of it, with the Pareto chart).

A step whose command and inputs did not change is reused (the recipe runner's stamps), so a killed
run continues where it stopped (the distillation from its last checkpoint), and the same command
with another --max-drop or --target-speedup measures only what it has not measured yet. The work
folder stays after a successful run for that reason; delete it to free the disk.
"""
from __future__ import annotations

import filecmp
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...compress import measured
from ...compress import plan as P
from ...compress.engines import CANDIDATES, ENGINE_NAMES, Candidate
from ...config import option
from ...data.readers import read_lines
from ...data.split import sample_dev, split_lines, split_squad
from ...errors import PlmkitError
from ...eval.metrics import get_entities
from ...io import atomic_write_text, check_out_dir, read_json, write_json
from ...models.checkpoint import read_meta
from ...models.config import BERT_PRESETS
from ...tasks import BENCH_TASKS, Infer, TaskData, load_finetuned
from ...train import parse_budget
from .. import recipe
from . import output
from .steps import Steps

COMPRESS_TASKS = BENCH_TASKS        # compress measures its candidates with plmkit bench
DEV_SHARE, DEV_MAX = 0.25, 10_000          # default dev slice: a quarter of --train, at most this many examples
# --search-loss: (hidden-state weight, attention weight) of each distillation tried on the dev slice
LOSSES = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0))


@dataclass
class Config:
    model: str = option(help="the fine-tuned teacher (plmkit finetune's output)")
    train: str = option(help="training data of the task (the teacher's); the dev slice is carved from it")
    out: str = option(help="output directory: the chosen model, compress.json, report.html")
    task: str | None = option(None, help="the teacher's task (default: the one it records)",
                              choices=list(COMPRESS_TASKS))
    eval: str | None = option(None, help="dev data for every choice, instead of a slice of --train; never the data "
                              "you report on")
    dev_size: int | None = option(None, help="examples of --train held out as the dev slice (default: a quarter, at "
                                  f"most {DEV_MAX:,}); it must resolve 0.5-point differences (compress/plan.py)", ge=1)
    resolution: float = option(P.RESOLUTION, help="points: the smallest difference the dev slice must resolve; "
                               "one too small for it (standard error of the teacher's dev score above this) is "
                               "refused, saying how many examples it needs", gt=0)
    max_drop: float = option(1.0, help="accuracy budget: points below the teacher's dev score a candidate may lose",
                             ge=0)
    margin: float = option(P.MARGIN, help="standard errors of a candidate's paired dev difference from the teacher "
                           "added to its drop before --max-drop applies, so that a candidate the dev slice flattered "
                           "is not kept (0: the raw dev drop)", ge=0)
    target_speedup: float | None = option(None, help="instead of the smallest model: the most accurate one within "
                                          "--max-drop at this many times the teacher's speed (--speed)", gt=0)
    speed: str = option("throughput", help="what faster means: batch-32 throughput or batch-1 p50 latency",
                        choices=list(P.SPEEDS))
    engine: str = option("auto", help="INT8 engines tried: auto (every one installed), onnxruntime (dynamic per "
                         "token and per tensor, static), openvino, one of those by name, or none (PyTorch only)",
                         choices=["auto", *ENGINE_NAMES, *[c.name for c in CANDIDATES if c.name not in ENGINE_NAMES],
                                  "none"])
    budget: str = option("1h", help="wall-clock limit of the whole run (a resumed run counts what the killed one "
                         "did): pruning ratios that would not fit are skipped")
    student_layers: str | None = option(None, help="the student: these teacher layers (default: every second "
                                        "one, 0,2,4 of 6)")
    student_size: str | None = option(None, help="the student: a fresh model of this preset size instead",
                                      choices=list(BERT_PRESETS))
    hidden_weight: float | None = option(None, help="distillation and recovery: hidden-state MSE weight (default: the "
                                         f"task's measured one, {measured.described()})", ge=0)
    attention_weight: float = option(0.0, help="distillation: attention KL weight", ge=0)
    search_loss: bool = option(False, help="distil once per loss (logits; + hidden states; + attention) and keep "
                               "the best student on the dev slice, instead of the task's measured weights")
    ratios: str | None = option(None, help="pruning schedule, HEADS:FFN fractions removed, mild to aggressive "
                                "(default per task: compress/measured.py, e.g. classify "
                                "0.5:0.75,0.5:0.9,0.67:0.9,0.75:0.9)")
    distill_epochs: float = option(3.0, help="distillation epochs", gt=0)
    distill_lr: float | None = option(None, help="distillation peak learning rate (default: the task's measured "
                                      f"one, {measured.described('lr')})", gt=0)
    temperature: float = option(2.0, help="distillation temperature", gt=0)
    alpha: float = option(0.5, help="weight of the hard-label loss (1 - alpha: the teacher's soft targets)",
                          ge=0, le=1)
    recover_steps: int = option(400, help="pruning recovery steps (distilled from the teacher)", ge=1)
    recover_lr: float = option(5e-5, help="pruning recovery peak learning rate", gt=0)
    importance_batches: int = option(30, help="batches that rank heads and neurons for pruning", ge=1)
    calibration_size: int = option(300, help="static and OpenVINO INT8: training examples that calibrate "
                                   "activations", ge=1)
    batch_size: int = option(32, help="training batch size", ge=1)
    repeats: int = option(3, help="bench: timed passes per candidate (medians)", ge=1)
    latency_examples: int = option(200, help="bench: examples timed at batch size 1", ge=1)
    threads: int | None = option(None, help="bench: threads (default: all cores)", ge=1)
    seed: int = option(0, help="random seed: the dev slice, distillation, pruning")
    work: str | None = option(None, help="cache folder of the steps (default: .OUT.compress beside --out)")
    overwrite: bool = option(False, help="replace an existing --out")


def check_inputs(cfg: Config, pending: Callable[[str], bool]) -> None:
    """``plmkit run`` calls this before any stage: the options."""
    _check_request(cfg)


@dataclass
class _Request:
    engines: list[Candidate]
    ratios: tuple[measured.Ratio, ...]
    start: int
    budget_s: float


@dataclass
class _Data:
    task: str
    metric: str
    train: Path                      # what the student trains on (never the dev slice)
    dev: Path
    calibration: Path
    teacher_score: float             # in-process, fp32, on the dev slice
    paired: P.Paired                 # candidates' dev scores and paired errors from their unit stats
    hidden_size: int
    layers: int
    teacher: Path                    # what the search distils from and measures drops against
    teacher_step: str | None = None  # the step that made it (the reference), None for the user's teacher
    info: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] | None = None   # the teacher saw the dev slice: the search's stand-in (_reference)


def run(cfg: Config) -> int:
    req = _check_request(cfg)
    out = check_out_dir(Path(cfg.out), cfg.overwrite)
    work = (Path(cfg.work) if cfg.work else out.with_name(f".{out.name}.compress")).resolve()
    steps = Steps(work, P.Clock(req.budget_s), time.perf_counter())
    data = _prepare(cfg, work)
    if not req.ratios:
        req.ratios, req.start = measured.defaults(data.task).ratios, measured.defaults(data.task).start
    cfg.distill_lr = cfg.distill_lr or measured.defaults(data.task).lr    # resolved: compress.json's config says it
    steps.todo, steps.recover_steps = _initial_plan(cfg, req, data), cfg.recover_steps
    print(f"steps cached in {work} (each step's output: {work / recipe.STATE_DIR / 'logs'})", flush=True)
    if data.info["teacher_saw_dev"]:
        data = _reference(steps, cfg, data)
    cands = _measure(steps, cfg, data, req.engines, data.teacher_step or "teacher", data.teacher, data.teacher_step)
    teacher = cands[0]
    student, loss = _distil(steps, cfg, data)
    cands += _measure(steps, cfg, data, req.engines, "student", student, student.name)
    schedule = _walk(steps, cfg, data, req, student, teacher, cands, loss["hidden_weight"])
    choice = P.select(cands, teacher, cfg.max_drop, cfg.target_speedup, cfg.speed, cfg.margin)
    final = _rebuild(steps, cfg, data, req, choice.candidate, loss) if data.reference else None
    summary = output.summary(cfg, data, _teacher_dir(cfg), cands, teacher, choice, final, loss, schedule, steps)
    output.write_output(out, cfg.overwrite, summary["choice"]["path"], summary)
    output.print_result(summary, out)
    return 0


def _check_request(cfg: Config) -> _Request:
    """Settings that are wrong whatever the data: fail before reading anything."""
    if cfg.student_layers is not None and cfg.student_size is not None:
        raise PlmkitError("choose the student with --student-layers or --student-size, not both")
    if cfg.eval is not None and cfg.dev_size is not None:
        raise PlmkitError("--dev-size carves the dev slice out of --train; with --eval FILE the file is the dev slice")
    if cfg.target_speedup is not None and cfg.target_speedup <= 1:
        raise PlmkitError(f"--target-speedup is a factor over the teacher's speed and must be > 1, "
                          f"got {cfg.target_speedup}")
    ratios = P.parse_ratios(cfg.ratios) if cfg.ratios else ()       # () : the task's, once it is known
    return _Request(_engines(cfg.engine), ratios, len(ratios) // 2, parse_budget(cfg.budget))


def _engines(choice: str) -> list[Candidate]:
    """The candidates --engine asks for (compress/engines.py); one it names that is not installed is an
    error, auto skips it."""
    if choice == "none":
        return []
    chosen = [c for c in CANDIDATES if choice in ("auto", c.engine.name, c.name)]
    usable = [c for c in chosen if c.engine.installed()]
    if choice != "auto" and len(usable) < len(chosen):
        raise PlmkitError(f"--engine {choice}: not installed (pip install '{chosen[0].engine.extra}')")
    if not usable:
        print("note: no INT8 engine is installed (pip install 'plmkit[onnx]'): PyTorch candidates only")
    return usable


# ----------------------------------------------------------------------------- the teacher and the dev slice

def _prepare(cfg: Config, work: Path) -> _Data:
    """The teacher's task, the carved files in WORK/data, the teacher's dev score and the dev-size rule.
    A refusal removes a work folder this run created."""
    teacher, task, prep, tok = load_finetuned(cfg.model, cfg.task, needs_torch="compression")
    if task.name not in COMPRESS_TASKS:
        raise PlmkitError(f"{cfg.model}: compress takes {', '.join(COMPRESS_TASKS)} models, not '{task.name}'")
    fresh = not work.exists()
    try:
        train, dev, calibration, info = _carve(cfg, work, task, prep, teacher.head_config.get("labels"))
        dev_examples = task.read(str(dev), prep, labels=teacher.head_config.get("labels"))
        data = TaskData(dev_examples, task.encode(tok, dev_examples, teacher.head_config, prep), tok,
                        teacher.head_config, Infer(64, "fp32"))
        paired = P.Paired(task.score_of_sums, cfg.seed)
        score = float(task.score_of_sums(task.unit_stats(teacher, data).sum(0), len(dev_examples)))
        units = _units(task.name, dev_examples)
        P.check_dev(units, score, task.name, str(cfg.eval or f"the dev slice of {cfg.train}"),
                    units / len(dev_examples), cfg.resolution)
    except BaseException:
        if fresh:
            shutil.rmtree(work, ignore_errors=True)
        raise
    info.update(examples=len(dev_examples), units=units, unit=P.UNITS[task.name], resolution=cfg.resolution,
                needed=P.dev_units_needed(score, cfg.resolution), teacher_saw_dev=_teacher_saw(cfg))
    if info["teacher_saw_dev"]:
        print(f"note: the teacher was fine-tuned on {cfg.train}, so it has seen the dev slice carved from it: "
              "its dev score is partly a training score. The search runs against a reference, the teacher's "
              "recipe fine-tuned without the slice, and the chosen recipe is then run from the teacher "
              "(--eval FILE with data the teacher never saw spares both)")
    print(f"dev slice: {len(dev_examples):,} examples ({units:,} {P.UNITS[task.name]}; the rule needs "
          f"{info['needed']:,}); teacher {task.metric} {score:.4f}")
    return _Data(task.name, task.metric, train, dev, calibration, score, paired, teacher.config.hidden_size,
                 teacher.config.num_layers, Path(_teacher_dir(cfg)), info=info)


def _teacher_dir(cfg: Config) -> str:
    """The teacher as the steps name it: resolved, so that ./teacher and /abs/teacher hit the same cache."""
    return str(Path(cfg.model).resolve())


def _teacher_saw(cfg: Config) -> bool:
    """Whether plmkit fine-tuned the teacher on the --train file (the same file, or the same bytes), so
    that a dev slice carved from it is data the teacher trained on (_reference says what follows)."""
    meta = read_meta(cfg.model) if cfg.eval is None else {}
    seen = (meta.get("config") or {}).get("train")
    if meta.get("stage") != "finetune" or not seen or not Path(seen).is_file():
        return False
    return Path(seen).resolve() == Path(cfg.train).resolve() or filecmp.cmp(seen, cfg.train, shallow=False)


def _carve(cfg: Config, work: Path, task: Any, prep: Any, labels: list[str] | None) -> tuple[Path, Path, Path, dict]:
    """(train file, dev file, calibration file, how): --eval as the dev slice, or a seeded slice of --train."""
    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = Path(cfg.train).suffix or ".txt"
    if cfg.eval is not None:
        train, dev, how = Path(cfg.train).resolve(), Path(cfg.eval).resolve(), {"source": "--eval"}
    else:
        n = len(task.read(cfg.train, prep, labels=labels))
        k = cfg.dev_size or min(DEV_MAX, max(1, round(DEV_SHARE * n)))
        train, dev = folder / f"train{suffix}", folder / f"dev{suffix}"
        if task.file_layout == "squad":
            rest, held, k = split_squad(read_json(cfg.train), k, cfg.seed)
            if not rest["data"]:
                raise PlmkitError(f"{cfg.train}: holding out {k:,} questions for the dev slice leaves none to "
                                  "train on (--dev-size, or --eval FILE)")
            _write_json(train, rest)
            _write_json(dev, held)
        else:
            parts = _split_file(cfg.train, task, prep, labels, sample_dev(n, k, cfg.seed))
            _write_lines(train, parts[0])
            _write_lines(dev, parts[1])
        how = {"source": f"carved from --train: {k:,} of {n:,} {P.UNITS.get(task.name, 'examples')}, seed {cfg.seed}"}
    calibration = folder / f"calibration{suffix}"
    _write_calibration(calibration, train, task, prep, labels, cfg.calibration_size)
    return train, dev, calibration, {**how, "file": str(dev)}


def _split_file(path: str | Path, task: Any, prep: Any, labels: list[str] | None,
                dev: set[int]) -> tuple[list[str], list[str]]:
    """A line-based file cut at its examples' first lines (data/split.py)."""
    examples = task.read(str(path), prep, labels=labels)
    blocks = task.file_layout == "blocks" and Path(path).suffix.lower() not in (".jsonl", ".json")
    return split_lines(read_lines(path), [ex.line for ex in examples], dev, blocks)


def _write_calibration(path: Path, train: Path, task: Any, prep: Any, labels: list[str] | None, n: int) -> None:
    """The first ``n`` training examples (QA: the first paragraphs holding ``n`` questions)."""
    if task.file_layout == "squad":
        _write_json(path, split_squad(read_json(train), n, None)[1])
        return
    count = len(task.read(str(train), prep, labels=labels))
    _write_lines(path, _split_file(train, task, prep, labels, set(range(min(n, count), count)))[0])


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    if not path.is_file() or read_json(path) != doc:
        write_json(path, doc)


def _write_lines(path: Path, lines: list[str]) -> None:
    """Rewritten only when the text changes (the steps' fingerprints hash the bytes anyway)."""
    text = "\n".join(lines) + "\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def _units(task: str, examples: list[Any]) -> int:
    """What the dev score counts: gold entities for NER, else examples (sentences, questions)."""
    if task == "ner":
        return len(get_entities([ex.tags for ex in examples]))
    return len(examples)


def _initial_plan(cfg: Config, req: _Request, data: _Data) -> list[str]:
    """The kinds of step a run is expected to take (the search usually measures two ratios)."""
    model = ["bench"] + ["quantize", "bench"] * len(req.engines)
    students = (len(LOSSES) if cfg.search_loss else 1)
    return (["finetune"] * data.info["teacher_saw_dev"] + model + ["distill"] * students
            + ["bench"] * (students if cfg.search_loss else 0) + model + (["prune"] + model) * min(2, len(req.ratios)))


# ----------------------------------------------------------------------------- a teacher that saw the dev slice

def _reference(steps: Steps, cfg: Config, data: _Data) -> _Data:
    """A teacher fine-tuned on --train has seen the slice carved from it, so its dev score is partly a
    training score (SST-2: 0.925 on such a slice vs 0.896 on unseen sentences) and every drop would be
    measured against that. The search then runs against a reference: the teacher's own recipe (its
    plmkit.json config) fine-tuned on the rest of --train, every candidate distilled from that
    reference, so that no model of the search has seen the slice; the chosen recipe is then run again
    from the teacher (_rebuild). Measuring drops against such a reference while distilling from the
    teacher was tried and over-corrects (RESULTS.md, compress run B: the students inherit part of what
    the teacher learned on the slice). Where the recipe cannot run here (its base model is not a local
    folder, or its options are not this plmkit's), that is said and the search runs against the teacher."""
    as_is = "drops are measured against the teacher itself (a high bar: often a larger model than needed)"
    recorded = dict(read_meta(cfg.model).get("config") or {})
    base = recorded.get("model")
    if not base or not Path(base).is_dir():
        print(f"note: the teacher's base model {base!r} is not a folder here: {as_is}")
        return data
    values = {**recorded, "train": str(data.train), "eval": None, "resume": False, "overwrite": False}
    try:
        folder = steps.run("reference", "finetune", values, [], [Path(base), data.train])
    except PlmkitError as e:
        steps.failed("reference", e)
        print(f"note: {as_is}")
        return data
    steps.tail = ["distill", "prune", "bench", "quantize", "bench"]     # the rebuild, kept for the end
    info = {"path": str(folder), "trained_on": str(data.train), "teacher_dev_score": data.teacher_score,
            "why": "the teacher saw the dev slice: every drop is measured against its recipe fine-tuned without it"}
    return replace(data, teacher=folder, teacher_step="reference", reference=info)


def _rebuild(steps: Steps, cfg: Config, data: _Data, req: _Request, chosen: P.Candidate,
             loss: dict[str, Any]) -> dict[str, Any]:
    """The chosen candidate's recipe run again from the user's teacher (same student, ratio, engine,
    data and seed): the model compress writes. Its dev score is not comparable (its teacher saw the
    slice); the chosen candidate's drop against the reference is the estimate of its own."""
    ratio = next((r for r in req.ratios if _pruned_label(r) == chosen.model), None)
    engines = [e for e in req.engines if e.name == chosen.engine]
    steps.tail = []
    steps.todo = (["distill"] * (chosen.model != data.teacher_step) + ["prune"] * (ratio is not None) + ["bench"]
                  + ["quantize", "bench"] * len(engines))
    final = replace(data, teacher=Path(_teacher_dir(cfg)), teacher_step=None)
    path, dep, label = final.teacher, None, "final-teacher"
    if chosen.model != data.teacher_step:
        path = _distil_step(steps, cfg, final, "final-student", loss["hidden_weight"], loss["attention_weight"])
        dep = label = path.name
    if ratio is not None:
        label = f"final-{chosen.model}"
        path = _prune_step(steps, cfg, final, label, path, ratio, loss["hidden_weight"])
        dep = label
    built = _measure(steps, cfg, final, engines, label, path, dep)
    mine = next((c for c in built if c.engine == chosen.engine), None)
    if mine is None:
        raise PlmkitError(f"{chosen.engine} failed on the rebuilt {label} (see {steps.work / recipe.STATE_DIR})")
    name = chosen.name.replace(f"{data.teacher_step}/", "teacher/")
    return {**mine.as_dict(), "name": name, "dev_score_seen": True,
            "why": f"rebuilt from the teacher: {chosen.name}'s recipe (distilled from the reference) run again "
                   f"from {cfg.model}; its dev score ({mine.score:.4f}) is not comparable, its teacher saw the slice"}


# ----------------------------------------------------------------------------- candidates

def _bench_values(cfg: Config, data: _Data, model: Path) -> dict[str, Any]:
    return {"models": [str(model)], "data": str(data.dev), "batch_sizes": [1, 32], "baselines": "none",
            "precision": "fp32", "unit_stats": True, "repeats": cfg.repeats, "latency_examples": cfg.latency_examples,
            "threads": cfg.threads}


def _row(bench_dir: Path) -> dict[str, Any]:
    return read_json(bench_dir / "bench.json")["rows"][0]


def _measure(steps: Steps, cfg: Config, data: _Data, engines: list[Candidate], label: str, path: Path,
             dep: str | None) -> list[P.Candidate]:
    """``path`` in PyTorch and quantized by every engine, each benched on the dev slice: its candidates,
    PyTorch first. ``dep``: the step that made ``path`` (None: the teacher, an input). An engine that
    fails on this model is left out and logged."""
    deps, inputs = ([dep], [data.dev]) if dep else ([], [data.dev, path])
    torch_row = _row(steps.run(f"{label}-torch", "bench", _bench_values(cfg, data, path), deps, inputs))
    params = int(torch_row["params"])       # the model's size in every engine: its parameters
    cands = [_candidate(label, "torch", path, torch_row, params, data.paired)]
    for engine in engines:
        name = f"{label}-{engine.name}"
        values: dict[str, Any] = {"model": str(path), **engine.settings}
        if engine.calibrated:
            values.update(calibration=str(data.calibration), calibration_size=cfg.calibration_size)
        try:
            quantized = steps.run(name, "quantize", values, deps, [*inputs[1:], data.calibration])
            row = _row(steps.run(f"{name}-bench", "bench", _bench_values(cfg, data, quantized), [name], [data.dev]))
        except PlmkitError as e:
            steps.failed(name, e)
            continue
        cands.append(_candidate(label, engine.name, quantized, row, params, data.paired))
    return cands


def _candidate(label: str, engine: str, path: Path, row: dict[str, Any], params: int,
               paired: P.Paired) -> P.Candidate:
    """A bench row as a candidate: its dev score and paired error from its unit stats (every task's
    score in 0-1, QA's F1 included)."""
    score, se = paired.score(np.asarray(row["unit_stats"], dtype=np.float64))
    return P.Candidate(f"{label}/{engine}", label, engine, str(path), params, float(row["size_mb"]), score,
                       float(row["latency_p50_ms"]), float(row["throughput"]), round(se, 4))


def _distil(steps: Steps, cfg: Config, data: _Data) -> tuple[Path, dict[str, Any]]:
    """The student (its folder) and how its loss was chosen: the task's measured weights, or the best
    of LOSSES on the dev slice (--search-loss; an equal score keeps the earlier, simpler loss)."""
    given = cfg.hidden_weight is not None
    default = (cfg.hidden_weight if given else measured.hidden_weight(data.task), cfg.attention_weight)
    losses = list(LOSSES) if cfg.search_loss else [default]
    tried = []
    for hidden, attention in losses:
        name = f"student-h{hidden:g}-a{attention:g}"
        path = _distil_step(steps, cfg, data, name, hidden, attention)
        score = None
        if cfg.search_loss:
            score = _row(steps.run(f"{name}-torch", "bench", _bench_values(cfg, data, path), [name], [data.dev]))
            score = float(score["metric"])
        tried.append({"step": name, "hidden_weight": hidden, "attention_weight": attention, "dev_score": score})
    best = max(tried, key=lambda t: (t["dev_score"] or 0.0, -tried.index(t)))
    distilled = read_json(steps.work / best["step"] / "plmkit.json").get("metrics", {})
    if distilled.get("steps"):
        seconds = next(e["seconds"] for e in steps.log if e.get("step") == best["step"])
        steps.seconds_per_step = seconds / distilled["steps"] if seconds else None
    how = ("the best on the dev slice (--search-loss)" if cfg.search_loss else
           "--hidden-weight" if given else f"the task's measured weights ({measured.defaults(data.task).source})")
    return steps.work / best["step"], {**best, "chosen_by": how, "tried": tried}


def _distil_step(steps: Steps, cfg: Config, data: _Data, name: str, hidden: float, attention: float) -> Path:
    """The student distilled from ``data.teacher`` with these loss weights: the step's folder."""
    layers = None if cfg.student_size else (cfg.student_layers or ",".join(map(str, range(0, data.layers, 2))))
    values = {"teacher": str(data.teacher), "task": data.task, "train": str(data.train), "student_layers": layers,
              "student_size": cfg.student_size, "hidden_weight": hidden, "attention_weight": attention,
              "cache_teacher": not (hidden or attention), "epochs": cfg.distill_epochs, "lr": cfg.distill_lr,
              "temperature": cfg.temperature, "alpha": cfg.alpha, "batch_size": cfg.batch_size, "seed": cfg.seed}
    deps = [data.teacher_step] if data.teacher_step else []
    return steps.run(name, "distill", values, deps, [data.teacher, data.train])


def _prune_step(steps: Steps, cfg: Config, data: _Data, label: str, student: Path, ratio: measured.Ratio,
                hidden: float) -> Path:
    """``student`` pruned at ``ratio`` and recovered by distillation from ``data.teacher``: the step's folder.
    The hidden-state loss pairs each layer with the teacher's: only when the widths agree."""
    width = read_json(student / "config.json")["model"]["hidden_size"]
    values = {"model": str(student), "task": data.task, "train": str(data.train), "heads": ratio[0], "ffn": ratio[1],
              "importance_batches": cfg.importance_batches, "max_steps": cfg.recover_steps,
              "lr": cfg.recover_lr, "distill": True, "teacher": str(data.teacher), "temperature": cfg.temperature,
              "alpha": cfg.alpha, "hidden_weight": hidden if width == data.hidden_size else 0.0,
              "batch_size": cfg.batch_size, "seed": cfg.seed}
    deps = [student.name, *([data.teacher_step] if data.teacher_step else [])]
    return steps.run(label, "prune", values, deps, [data.teacher, data.train])


def _pruned_label(ratio: measured.Ratio) -> str:
    return f"pruned-h{ratio[0]:g}-f{ratio[1]:g}"


# ----------------------------------------------------------------------------- the pruning schedule

def _walk(steps: Steps, cfg: Config, data: _Data, req: _Request, student: Path, teacher: P.Candidate,
          cands: list[P.Candidate], hidden: float) -> list[dict[str, Any]]:
    """Prune, recover, measure along the chain of ratios (``plan.next_ratio``) while the budget lasts;
    the candidates join ``cands``. Returns the schedule: each ratio and what became of it."""
    schedule: list[dict[str, Any]] = [{"heads": h, "ffn": f, "status": "not needed by the search"}
                                      for h, f in req.ratios]
    reason = _no_pruning(cfg, teacher, [c for c in cands if c.model == "student"])
    if reason:
        for entry in schedule:
            entry["status"] = reason
        steps.todo = []
        return schedule
    passed: dict[int, bool] = {}
    while (i := P.next_ratio(passed, req.start, len(req.ratios), cfg.target_speedup is not None)) is not None:
        if "prune" not in steps.todo:
            steps.todo += ["prune", "bench"] + ["quantize", "bench"] * len(req.engines)
        cost = steps.estimate("prune") + sum(steps.estimate(k) for k in ["bench"] + ["quantize", "bench"] * len(
            req.engines))
        if not steps.clock.fits(steps.elapsed(), cost + steps.reserved()):
            schedule[i]["status"] = (f"skipped: about {P.fmt_duration(cost)} more would pass the --budget "
                                     f"{cfg.budget}")
            break
        label = _pruned_label(req.ratios[i])
        path = _prune_step(steps, cfg, data, label, student, req.ratios[i], hidden)
        mine = _measure(steps, cfg, data, req.engines, label, path, label)
        cands.extend(mine)
        passed[i] = _passes(cfg, teacher, mine)
        best = max(mine, key=lambda c: c.score)
        schedule[i].update(status="measured", passed=passed[i], params=mine[0].params,
                           best=best.name, best_drop=round(P.drop(teacher, best), 3))
    steps.todo = [k for k in steps.todo if k != "prune"]
    return schedule


def _passes(cfg: Config, teacher: P.Candidate, mine: list[P.Candidate]) -> bool:
    """The search's criterion: some engine of this ratio is within --max-drop (or reaches the speedup)."""
    if cfg.target_speedup is not None:
        return any(P.speedup(teacher, c, cfg.speed) >= cfg.target_speedup for c in mine)
    return any(P.bound(teacher, c, cfg.margin) <= cfg.max_drop + 1e-9 for c in mine)


def _no_pruning(cfg: Config, teacher: P.Candidate, student: list[P.Candidate]) -> str | None:
    """Why pruning cannot help (None: it may): the student already misses the budget, or already
    reaches the target speedup (pruning only trades accuracy for more speed)."""
    best = min(student, key=lambda c: P.bound(teacher, c, cfg.margin))
    if cfg.target_speedup is None and P.bound(teacher, best, cfg.margin) > cfg.max_drop + 1e-9:
        return (f"skipped: the unpruned student is already {P.drop(teacher, best):.2f} points below the teacher "
                f"(± {best.se:.2f}; --max-drop {cfg.max_drop:g}, --margin {cfg.margin:g})")
    fast = [c for c in student if P.speedup(teacher, c, cfg.speed) >= (cfg.target_speedup or float("inf"))]
    if fast:
        return f"skipped: the unpruned student reaches {cfg.target_speedup:g}x already ({fast[0].name})"
    return None
