"""``plmkit compress``'s output: compress.json (every candidate, the rule, the choice, the schedule, the
steps), the chosen model's files and report.html written all or nothing, and the table it prints."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ...compress import plan as P
from ...config import to_dict
from ...io import atomic_dir, atomic_write_text, write_json
from ...report.collect import collect
from ...report.html import render
from .. import recipe
from .steps import Steps


def summary(cfg: Any, data: Any, teacher_dir: str, cands: list[P.Candidate], teacher: P.Candidate,
            choice: P.Choice, final: dict[str, Any] | None, loss: dict[str, Any], schedule: list[dict[str, Any]],
            steps: Steps) -> dict[str, Any]:
    """compress.json. ``teacher_dir``: the user's teacher; ``teacher``: the candidate every drop is
    measured against (the reference when the teacher saw the dev slice); ``final``: the chosen recipe
    rebuilt from the teacher, or None."""
    front = P.pareto(cands, cfg.speed)
    rows = [{**c.as_dict(), "drop_points": round(P.drop(teacher, c), 3),
             "speedup": round(P.speedup(teacher, c, cfg.speed), 3), "pareto": f,
             "chosen": c is choice.candidate} for c, f in zip(cands, front)]
    path = final["path"] if final else choice.candidate.path
    return {"teacher": teacher_dir, "task": data.task, "metric": data.metric,
            "teacher_score": teacher.score, "dev": data.info, "reference": data.reference,
            "rule": {"max_drop": cfg.max_drop, "margin": cfg.margin, "target_speedup": cfg.target_speedup,
                     "speed": cfg.speed,
                     "text": ("the most accurate at the target speedup within --max-drop; equal scores to the "
                              "faster" if cfg.target_speedup else
                              "the smallest within --max-drop; equal sizes to the faster")
                             + f" (within: dev drop + {cfg.margin:g} x its paired standard error <= --max-drop)"},
            "choice": {"name": final["name"] if final else choice.candidate.name, "candidate": choice.candidate.name,
                       "path": path, "met": choice.met,
                       "reasons": choice.reasons + ([final["why"]] if final else [])},
            "final": final, "candidates": rows, "loss": loss, "schedule": schedule, "steps": steps.log,
            "seconds": round(steps.clock.spent_s + steps.elapsed(), 1), "budget_s": steps.clock.budget_s,
            "work": str(steps.work), "config": to_dict(cfg)}


def write_output(out: Path, overwrite: bool, model: str, doc: dict[str, Any]) -> None:
    """The chosen model's files, compress.json and report.html, all or nothing."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        shutil.copytree(model, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(recipe.STAMP, "bench.json"))
        write_json(tmp / "compress.json", doc)
        page = collect(tmp)
        page.path = out
        for stage in page.stages:
            stage.path, stage.name = (out, out.name) if stage.path == tmp else (stage.path, stage.name)
        atomic_write_text(tmp / "report.html", render(page))


def print_result(doc: dict[str, Any], out: Path) -> None:
    metric, rows = doc["metric"], sorted(doc["candidates"], key=lambda r: (r["params"], -r["throughput"]))
    print(f"\n{'candidate':<34} {'params':>11} {'MB':>7} {metric:>9} {'pts':>6} {'±se':>5} {'p50 ms':>8} "
          f"{'ex/s':>9} {'speedup':>7}")
    for r in rows:
        mark = " <- chosen" if r["chosen"] else (" *" if r["pareto"] else "")
        points = 0.0 - r["drop_points"] + 0.0
        print(f"{r['name']:<34} {r['params']:>11,} {r['size_mb']:>7.1f} {r['score']:>9.4f} {points:>+6.2f} "
              f"{r['se']:>5.2f} {r['latency_ms']:>8.3f} {r['throughput']:>9.1f} {r['speedup']:>6.2f}x{mark}")
    print("(* on the Pareto front of dev score and speed)")
    if doc["reference"]:
        print(f"(drops against the reference, {doc['reference']['path']}: the teacher's recipe without the dev slice)")
    for reason in doc["choice"]["reasons"]:
        print(f"  {reason}")
    print(f"compressed model in {out} (compress.json, report.html); cached steps in {doc['work']}")
