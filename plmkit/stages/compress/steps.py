"""``plmkit compress``'s steps: plmkit stages run as cached, resumable steps of its work folder, with the
recipe runner's fingerprints and stamps (stages/recipe.py), and the time left said after each."""
from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

from ...compress import plan as P
from ...config import build
from ...errors import PlmkitError
from .. import recipe

FALLBACK_S = {"bench": 30.0, "quantize": 45.0, "distill": 600.0, "prune": 300.0, "finetune": 300.0}


class Steps:
    """Runs plmkit stages as cached, resumable steps of the work folder, with the recipe runner's
    fingerprints and stamps (stages/recipe.py), and says after each how much time is left."""

    def __init__(self, work: Path, clock: P.Clock, t0: float):
        self.work, self.clock, self.t0 = work, clock, t0
        self.fps: dict[str, str] = {}
        self.log: list[dict[str, Any]] = []
        self.todo: list[str] = []              # kinds of the steps still planned, for the time left
        self.tail: list[str] = []              # kinds of the steps kept for the end (the rebuild from the teacher)
        self.seconds_per_step: float | None = None   # distillation's, to estimate a pruning recovery
        self.recover_steps = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def estimate(self, kind: str) -> float:
        fallback = FALLBACK_S[kind]
        if kind == "prune" and self.seconds_per_step:
            fallback = 1.2 * self.seconds_per_step * self.recover_steps
        return self.clock.estimate(kind, fallback)

    def planned(self) -> float:
        return sum(self.estimate(k) for k in self.todo) + self.reserved()

    def reserved(self) -> float:
        """Seconds kept for the steps at the end: the search must leave them room in the budget."""
        return sum(self.estimate(k) for k in self.tail)

    def run(self, name: str, command: str, values: dict[str, Any], deps: list[str], inputs: list[Path]) -> Path:
        """The step's output folder WORK/NAME, from its stamp when command and inputs are unchanged."""
        from .. import COMMANDS

        module = importlib.import_module(COMMANDS[command][0])
        folder = self.work / name
        values = {**values, "out": str(folder / "bench.json") if command == "bench" else str(folder)}
        cfg = build(module.Config, values, source=f"compress step '{name}'")
        step = recipe.Step(name, command, module, cfg, deps, [Path(p).resolve() for p in inputs])
        self.fps[name] = fp = recipe.fingerprint(step, self.work, self.fps)
        stamp = recipe.read_stamp(folder)
        cached = stamp.get("fingerprint") == fp
        seconds = float(stamp.get("seconds", 0.0)) if cached else recipe.run_step(step, self.work, fp, quiet=True)
        self.clock.record(command, seconds, cached)
        if command in self.todo:
            self.todo.remove(command)
        self.log.append({"step": name, "command": command, "seconds": round(seconds, 1), "cached": cached})
        print(f"[compress] {name}: {'cached' if cached else f'{seconds:.0f} s'}; "
              f"{self.clock.left_text(self.elapsed(), self.planned())}", flush=True)
        return folder

    def failed(self, name: str, error: PlmkitError) -> None:
        self.log.append({"step": name, "failed": str(error)})
        print(f"[compress] {name}: failed, left out: {error}", flush=True)
