"""``plmkit report RUN``: one self-contained HTML file about a run.

Reads what the stages wrote (plmkit.json, metrics.jsonl, bench.json, similarity.json,
landscape.json) and renders curves, the variants table, the accuracy-vs-throughput chart,
pruning per layer, the confusion matrix or per-entity F1, and the pre-trained vs
from-scratch comparison. Inline SVG and CSS only: it opens offline.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import option
from ..io import atomic_write_text, check_out_file
from ..report.collect import collect
from ..report.html import render


@dataclass
class Config:
    run: str = option(help="run directory (plmkit run's RUN, or a directory of stage outputs)", positional=True)
    out: str | None = option(None, help="HTML file to write (default: RUN/report.html)")
    overwrite: bool = option(False, help="replace an existing report file")


def run(cfg: Config) -> int:
    out = check_out_file(Path(cfg.out) if cfg.out else Path(cfg.run) / "report.html", cfg.overwrite)
    data = collect(cfg.run)
    atomic_write_text(out, render(data))
    print(f"report: {out}")
    return 0
