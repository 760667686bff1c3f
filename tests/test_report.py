"""plmkit report: the HTML from a fixture run, its SVG charts, and the page in headless Chromium."""
from __future__ import annotations

import os
import re
import shutil
import xml.dom.minidom
from pathlib import Path

import pytest
from report_fixture import make_run

from plmkit.cli import main
from plmkit.report import svg
from plmkit.report.html import pareto_front

CHART_KINDS = ("line", "heatmap", "scatter", "bar")


def _charts(html: str) -> list[str]:
    return re.findall(r'<svg [^>]*class="chart" data-chart="(\w+)"', html)


def test_svg_functions_are_well_formed_and_escaped():
    charts = [
        svg.line_chart({"train <loss>": [(0, 2.0), (10, 1.0), (20, 0.5)], "eval": [(10, 1.2)]},
                       title="a & b", x_label="step", y_label="loss", log_y=True),
        svg.heatmap([[1, 2], [3, float("nan")]], row_labels=["r<1>", "r2"], col_labels=["c1", "c2"], title="h"),
        svg.scatter([{"x": 1, "y": 0.9, "label": "a", "front": True}, {"x": 3, "y": 0.8, "label": "b", "front": True},
                     {"x": 2, "y": 0.7, "label": "c"}], title="s", x_label="x", y_label="y"),
        svg.bar_chart({"before": [2, 2], "kept": [1, 2]}, categories=["0", "1"], title="b", y_label="heads"),
        svg.line_chart({}, title="empty", x_label="x", y_label="y"),
    ]
    for kind, chart in zip((*CHART_KINDS, "line"), charts):
        root = xml.dom.minidom.parseString(chart).documentElement      # well-formed XML
        assert root.tagName == "svg" and root.getAttribute("class") == "chart"
        assert root.getAttribute("data-chart") == kind
        assert "<script" not in chart and "http://" not in chart.replace("http://www.w3.org/2000/svg", "")
    assert "r&lt;1&gt;" in charts[1] and "a &amp; b" in charts[0]
    assert charts[2].count("<polyline") == 1                            # the Pareto front, joined


@pytest.mark.parametrize("chart", [
    lambda: svg.line_chart({"loss": [(100, 0.85)]}, title="t", x_label="step", y_label="loss"),
    lambda: svg.scatter([{"x": 500, "y": 0.85, "label": "only"}], title="t", x_label="ex/s", y_label="acc"),
], ids=["line", "scatter"])
def test_a_single_point_sits_mid_chart_between_ticks(chart):
    """One eval point or one bench row: the axes get room on both sides instead of starting at the value."""
    text = chart()
    (cx, cy), = [(float(x), float(y)) for x, y in re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', text)]
    x0, x1 = svg.MARGIN["left"], svg.WIDTH - svg.MARGIN["right"]
    y1, y0 = svg.MARGIN["top"], svg.HEIGHT - svg.MARGIN["bottom"]
    assert x0 + 0.25 * (x1 - x0) < cx < x1 - 0.25 * (x1 - x0)
    assert y1 + 0.25 * (y0 - y1) < cy < y0 - 0.25 * (y0 - y1)
    ticks = [float(t) for t in re.findall(r'text-anchor="end" fill="#555">([\d.]+)<', text)]
    assert min(ticks) < 0.85 < max(ticks) and max(ticks) - min(ticks) < 0.5      # round ticks around it


def test_pareto_front():
    # (throughput, accuracy): b dominates a; c is faster but worse; d has no metric.
    assert pareto_front([(1, 0.8), (2, 0.9), (5, 0.7), (9, None)]) == [False, True, True, False]


def test_report_sections_from_fixture(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["report", str(run)]) == 0
    out = run / "report.html"
    assert f"report: {out}" in capsys.readouterr().out
    html = out.read_text(encoding="utf-8")
    kinds = _charts(html)
    for kind in CHART_KINDS:
        assert kind in kinds
    for heading in ("Stages", "Model variants", "Training curves", "Pre-trained vs from scratch", "Pruning",
                    "Errors on the evaluation set", "Distillation and quantization", "Analysis"):
        assert f"<h2>{heading}</h2>" in html, heading
    assert "finetune: confusion matrix" in html and "ner: per-entity scores" in html
    assert "finetune_scratch (from scratch)" in html and "finetune (pre-trained)" in html
    assert "<script" not in html and "https://" not in html


def test_report_without_bench_lists_checkpoints(tmp_path):
    run = make_run(tmp_path)
    shutil.rmtree(run / "bench")
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "latency and throughput were not measured" in html and ">prune<" in html


def test_report_bad_run_dir(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    assert "no stage outputs" in capsys.readouterr().err


def _chromium() -> str | None:
    for name in (os.environ.get("PLMKIT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def open_in_chromium(html_file: Path, screenshot: Path) -> dict:
    """Load the page offline in headless Chromium: console errors, outside requests, charts, screenshot."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright "
                                   "(pip install -e '.[test]')")
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary found (apt-get install chromium, or set PLMKIT_CHROMIUM)")
    errors: list[str] = []
    outside: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            # Anything but the file itself would be a network dependency: record and block it.
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                       else (outside.append(route.request.url), route.abort()))
            page.goto(html_file.resolve().as_uri())
            counts = {k: page.locator(f'svg.chart[data-chart="{k}"]').count() for k in CHART_KINDS}
            visible = page.locator("svg.chart").first.is_visible()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "outside": outside, "counts": counts, "visible": visible}


def test_report_in_headless_chromium(tmp_path):
    run = make_run(tmp_path)
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    shot = tmp_path / "report.png"
    seen = open_in_chromium(out, shot)
    assert seen["errors"] == [] and seen["outside"] == []
    assert seen["visible"] and all(seen["counts"][k] >= 1 for k in CHART_KINDS), seen["counts"]
    assert sum(seen["counts"].values()) == len(_charts(out.read_text(encoding="utf-8")))
    assert shot.stat().st_size > 10_000
