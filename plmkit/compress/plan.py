"""What ``plmkit compress`` decides, apart from running anything: the candidates it measured, the rule
that picks one, the pruning schedule it walks, how big its dev slice must be, and its time budget.

Pure functions on plain records, so the rules are tested with a fake scorer.

**The selection rule** (``select``). A candidate is one model (the teacher, the distilled student,
the student pruned at one ratio) in one engine (PyTorch, ONNX Runtime INT8 per token / per tensor /
static, OpenVINO INT8), with its dev score, parameters, size, batch-1 latency and batch-32
throughput measured on this machine. Its drop is ``100 * (teacher score - its score)`` points, the
teacher being the fine-tuned fp32 model in PyTorch, which is itself a candidate (drop 0), so some
candidate is always within any ``max_drop >= 0``.

A candidate is **within** ``max_drop`` when its drop plus ``margin`` standard errors of its paired
dev difference from the teacher (``se``, below) is at most ``max_drop``. Why the margin: the rule
keeps the smallest of a dozen or more candidates that pass, so the one it keeps is the one the dev
slice flattered most (the winner's curse). Measured on AG News (RESULTS.md, compress): with the raw
dev drop (margin 0) compress kept a model 0.88 points down on its dev slice and 1.20 down on held-out
data; the smallest candidates sat 0.72-0.88 points down with paired errors of 0.34-0.36, and with
margin 1 it kept a milder pruning, 0.40 down on dev and 0.80 on held-out data.

* By default: among the candidates within ``max_drop`` points, the **smallest** (fewest parameters);
  equal size (one model in several engines) goes to the **faster** one.
* With ``target_speedup`` X: among the candidates within ``max_drop`` points that are at least X
  times as fast as the teacher, the **most accurate**; an equal score goes to the faster one. When
  none is that fast, the fastest within ``max_drop``, and the choice says the target was missed.

"Faster" is batch-32 throughput (``speed="throughput"``) or batch-1 p50 latency (``"latency"``).

**The paired standard error** (``paired_se``). Every candidate is scored on the same dev units, each
unit's score kept (``unit_stats`` of the task: correct or not; NER: entities right, predicted and
gold per sentence). The error of a candidate's difference from the teacher is the standard deviation
of that difference over bootstrap resamples of the units, the same resamples for both models: it
is small when the two disagree on few units, whatever the scores' own errors.

**The dev slice** (``dev_units_needed``). Candidates are told apart by differences of half a point
(``RESOLUTION``). A dev score p measured on n scored units (sentences for classification,
questions for QA, gold entities for NER) has the standard error ``sqrt(p (1 - p) / n)``; the rule
asks that it be at most 0.5 points at the teacher's dev score: ``n >= p (1 - p) / 0.005**2``
(3,600 at p = 0.9, 10,000 at 0.5). Every candidate is scored on the same units, so the error of
a difference between two of them, which grows with the share of units they disagree on, is
smaller still. A smaller dev slice is refused before anything is trained, naming the count.

**The schedule** (``next_ratio``). Pruning ratios form a chain from mild to aggressive, each
removing at least the heads and FFN neurons of the one before. The search starts at the task's
measured ratio and steps one ratio at a time towards the boundary it looks for: the most
aggressive ratio within ``max_drop`` (a ratio that passes sends it on to a more aggressive one, a
failure to a milder one), or, with a target speedup, the mildest ratio that reaches it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import PlmkitError
from .measured import Ratio

RESOLUTION = 0.5             # points: the smallest difference between candidates the dev slice must resolve
MARGIN = 1.0                 # standard errors of the paired difference added to a drop (see the module doc)
DRAWS = 1000                 # bootstrap resamples for the paired standard error
SPEEDS = ("throughput", "latency")
UNITS = {"classify": "examples", "ner": "gold entities", "qa": "questions"}


@dataclass
class Candidate:
    name: str                    # e.g. "pruned-h0.67-f0.9/openvino"
    model: str                   # teacher | student | pruned-h0.67-f0.9
    engine: str                  # torch | ort-token | ort-tensor | ort-static | openvino
    path: str
    params: int
    size_mb: float
    score: float                 # dev metric, 0..1
    latency_ms: float            # batch 1, p50
    throughput: float            # batch 32, examples / s
    se: float = 0.0              # points: standard error of its paired dev difference from the teacher

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Choice:
    candidate: Candidate
    met: bool                    # the rule's goal was reached (else: the closest candidate, and why)
    reasons: list[str] = field(default_factory=list)


def drop(teacher: Candidate, c: Candidate) -> float:
    """Points below the teacher's dev score (negative: above it)."""
    return 100.0 * (teacher.score - c.score)


def bound(teacher: Candidate, c: Candidate, margin: float) -> float:
    """The drop the rule compares with ``max_drop``: the dev drop plus ``margin`` paired standard errors."""
    return drop(teacher, c) + margin * c.se


def speedup(teacher: Candidate, c: Candidate, speed: str) -> float:
    """How many times as fast as the teacher: throughput ratio, or latency ratio (teacher / candidate)."""
    if speed == "latency":
        return teacher.latency_ms / c.latency_ms if c.latency_ms > 0 else math.inf
    return c.throughput / teacher.throughput if teacher.throughput > 0 else math.inf


def _fast(c: Candidate, speed: str) -> float:
    return -c.latency_ms if speed == "latency" else c.throughput


def select(candidates: list[Candidate], teacher: Candidate, max_drop: float, target_speedup: float | None = None,
           speed: str = "throughput", margin: float = MARGIN) -> Choice:
    """The rule of the module doc. ``teacher`` is the fp32 PyTorch teacher (one of ``candidates``)."""
    if max_drop < 0:
        raise PlmkitError(f"--max-drop must be >= 0 points, got {max_drop}")
    within = [c for c in candidates if bound(teacher, c, margin) <= max_drop + 1e-9] or [teacher]
    tag = f"within {max_drop:g} point{'s' * (max_drop != 1)} of the teacher's dev score {teacher.score:.4f}"
    if margin:
        tag += f" (dev drop + {margin:g} standard error{'s' if margin != 1 else ''} of the paired difference)"
    if target_speedup is None:
        best = min(within, key=lambda c: (c.params, -_fast(c, speed)))
        reasons = [f"{best.name}: the smallest of the {len(within)} candidates {tag} "
                   f"({best.params:,} parameters, {_points(teacher, best)})"]
        smaller = sorted((c for c in candidates if c.params < best.params), key=lambda c: c.params)
        if smaller:
            reasons.append("smaller ones lost more: " + ", ".join(f"{c.name} {_points(teacher, c)}"
                                                                  for c in smaller[:4]))
        twins = sorted((c for c in within if c.params == best.params), key=lambda c: -_fast(c, speed))
        if len(twins) > 1:
            reasons.append(f"of the same model in {len(twins)} engines within the budget, the fastest by {speed}: "
                           + ", ".join(f"{c.engine} {_speed_text(c, speed)}" for c in twins))
        return Choice(best, True, reasons)
    fast = [c for c in within if speedup(teacher, c, speed) >= target_speedup]
    if fast:
        best = max(fast, key=lambda c: (c.score, _fast(c, speed)))
        return Choice(best, True, [f"{best.name}: the most accurate of the {len(fast)} candidates {tag} at "
                                   f">= {target_speedup:g}x the teacher's {speed} ({_points(teacher, best)}, "
                                   f"{speedup(teacher, best, speed):.2f}x)"])
    best = max(within, key=lambda c: _fast(c, speed))
    quickest = max(candidates, key=lambda c: _fast(c, speed))
    reasons = [f"no candidate {tag} reached {target_speedup:g}x the teacher's {speed}; kept the fastest within "
               f"it: {best.name} ({speedup(teacher, best, speed):.2f}x, {_points(teacher, best)})"]
    if quickest is not best:
        reasons.append(f"the fastest of all, {quickest.name}, reached {speedup(teacher, quickest, speed):.2f}x "
                       f"at {_points(teacher, quickest)}")
    return Choice(best, False, reasons)


def _points(teacher: Candidate, c: Candidate) -> str:
    se = f" ± {c.se:.2f}" if c.se else ""
    return f"{0.0 - drop(teacher, c) + 0.0:+.2f}{se} points vs the teacher"


def _speed_text(c: Candidate, speed: str) -> str:
    return f"{c.latency_ms:.3f} ms" if speed == "latency" else f"{c.throughput:.1f} ex/s"


def pareto(candidates: list[Candidate], speed: str) -> list[bool]:
    """True where no other candidate is at least as fast and as accurate, and better in one."""
    out = []
    for c in candidates:
        dominated = any(o is not c and _fast(o, speed) >= _fast(c, speed) and o.score >= c.score
                        and (_fast(o, speed) > _fast(c, speed) or o.score > c.score) for o in candidates)
        out.append(not dominated)
    return out


# ----------------------------------------------------------------------------- the paired standard error

def bootstrap_draws(n: int, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """[draws, n] how many times each of n units is drawn in each resample (with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def paired_se(reference: np.ndarray, other: np.ndarray, score_of: Callable[[np.ndarray, int], np.ndarray],
              counts: np.ndarray) -> float:
    """Points: the standard deviation over the resamples ``counts`` (``bootstrap_draws``) of
    score(other) - score(reference), both scored on the same resampled units. ``reference`` and
    ``other``: [n, k] unit stats; ``score_of``: column sums [..., k] and n -> the metric in 0-1."""
    if reference.shape != other.shape or counts.shape[1] != reference.shape[0]:
        raise PlmkitError(f"unit scores of {other.shape[0]} and {reference.shape[0]} units cannot be paired "
                          "(internal error)")
    n = reference.shape[0]
    diff = score_of(counts @ other, n) - score_of(counts @ reference, n)
    return float(100.0 * diff.std(ddof=1))


class Paired:
    """Each candidate's dev score from its unit stats, and its paired standard error against the first
    one scored (the teacher): the same bootstrap resamples for every candidate of a run."""

    def __init__(self, score_of: Callable[[np.ndarray, int], np.ndarray], seed: int = 0):
        self.score_of, self.seed = score_of, seed
        self.reference: np.ndarray | None = None
        self.counts = np.zeros((0, 0))

    def score(self, stats: np.ndarray) -> tuple[float, float]:
        """(dev score in 0-1, standard error in points of its difference from the reference)."""
        if self.reference is None:
            self.reference, self.counts = stats, bootstrap_draws(len(stats), seed=self.seed)
        return (float(self.score_of(stats.sum(0), len(stats))),
                paired_se(self.reference, stats, self.score_of, self.counts))


# ----------------------------------------------------------------------------- the dev slice

def dev_units_needed(p: float, resolution: float = RESOLUTION) -> int:
    """Scored units a dev slice needs so that a score near ``p`` has a standard error of at most
    ``resolution`` points: ``p (1 - p) / (resolution / 100) ** 2`` (p taken in [0.01, 0.99])."""
    p = min(max(p, 0.01), 0.99)
    return math.ceil(p * (1.0 - p) / (resolution / 100.0) ** 2 - 1e-9)


def check_dev(units: int, p: float, task: str, where: str, per_example: float | None = None,
              resolution: float = RESOLUTION) -> None:
    """Refuse a dev slice that cannot resolve ``resolution`` points at the teacher's dev score ``p``.
    ``per_example``: units per example (NER's entities per sentence), to say how many examples."""
    need = dev_units_needed(p, resolution)
    if units >= need:
        return
    unit = UNITS.get(task, "examples")
    more = ""
    if per_example and unit != "examples":
        more = f" (about {math.ceil(need / per_example):,} examples at {per_example:.2f} {unit} each)"
    raise PlmkitError(f"{where}: {units:,} {unit} cannot measure {resolution:g}-point differences at the teacher's "
                      f"dev score {p:.4f}: the standard error sqrt(p(1-p)/n) must be at most {resolution:g} points, "
                      f"so it needs at least {need:,} {unit}{more}; give a larger --dev-size, more --train data, "
                      "or an --eval file that big")


# ----------------------------------------------------------------------------- the schedule

def parse_ratios(text: str) -> tuple[Ratio, ...]:
    """'0.5:0.75,0.67:0.9' -> ((0.5, 0.75), (0.67, 0.9)); each in [0, 1), a chain from mild to aggressive."""
    ratios: list[Ratio] = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        heads, sep, ffn = item.partition(":")
        try:
            ratio = (float(heads), float(ffn))
        except ValueError:
            raise PlmkitError(f"--ratios: {item!r} is not HEADS:FFN (fractions removed, e.g. 0.5:0.75)") from None
        if not sep or not all(0.0 <= r < 1.0 for r in ratio) or ratio == (0.0, 0.0):
            raise PlmkitError(f"--ratios: {item!r}: both fractions in [0, 1), not both 0")
        if ratios and not (ratio[0] >= ratios[-1][0] and ratio[1] >= ratios[-1][1] and ratio != ratios[-1]):
            raise PlmkitError(f"--ratios must go from mild to aggressive, each removing at least the heads and the "
                              f"FFN neurons of the one before: {item} after {ratios[-1][0]:g}:{ratios[-1][1]:g}")
        ratios.append(ratio)
    if not ratios:
        raise PlmkitError("--ratios: give at least one HEADS:FFN pair")
    return tuple(ratios)


def next_ratio(passed: dict[int, bool], start: int, n: int, aggressive_passes: bool) -> int | None:
    """The next index of the chain to measure (None: done), from what was measured so far.

    ``passed[i]``: ratio i met the criterion. ``aggressive_passes=False`` (the accuracy budget):
    milder ratios are expected to pass too, and the search wants the most aggressive that passes.
    ``True`` (a speed target): more aggressive ones are expected to pass, and it wants the mildest.
    """
    if not passed:
        return min(max(start, 0), n - 1)
    up = 1 if not aggressive_passes else -1          # the direction in which a pass sends the search
    last = list(passed)[-1]
    step = up if passed[last] else -up
    nxt = last + step
    if not 0 <= nxt < n or nxt in passed:
        return None
    return nxt


# ----------------------------------------------------------------------------- the time budget

@dataclass
class Clock:
    """Seconds spent (a resumed run counts what the killed one did) and estimates per kind of step."""
    budget_s: float
    spent_s: float = 0.0
    seen: dict[str, list[float]] = field(default_factory=dict)

    def record(self, kind: str, seconds: float, cached: bool = False) -> None:
        self.seen.setdefault(kind, []).append(seconds)
        self.spent_s += seconds if cached else 0.0

    def estimate(self, kind: str, fallback: float) -> float:
        seen = self.seen.get(kind)
        return sum(seen) / len(seen) if seen else fallback

    def fits(self, elapsed_s: float, planned_s: float) -> bool:
        return self.spent_s + elapsed_s + planned_s <= self.budget_s

    def left_text(self, elapsed_s: float, planned_s: float) -> str:
        spent = self.spent_s + elapsed_s
        return (f"{fmt_duration(spent)} spent, about {fmt_duration(planned_s)} of planned work left "
                f"(budget {fmt_duration(self.budget_s)}, {fmt_duration(max(self.budget_s - spent, 0))} left)")


def fmt_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
