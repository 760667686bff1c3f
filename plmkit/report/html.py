"""Render a collected run as one self-contained HTML page.

Everything is inline: CSS in a <style> element, charts as inline SVG from ``svg.py``, no
scripts, fonts or images from anywhere else, so the file opens offline and can be mailed.
Sections appear only when the run has their data.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from .. import __version__
from . import svg
from .collect import Run, Stage, dir_size_mb, safetensors_params
from .svg import esc, fmt

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #f6f7f9; }
header { background: #1f2d3d; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 0; color: #c8d1db; font-size: 13px; }
main { padding: 8px 32px 40px 32px; max-width: 1400px; }
section { background: #fff; border: 1px solid #e1e4e8; border-radius: 6px; padding: 12px 20px 16px 20px;
          margin-top: 18px; }
h2 { font-size: 18px; margin: 4px 0 10px 0; }
h3 { font-size: 15px; margin: 14px 0 6px 0; color: #333; }
p.note { color: #555; font-size: 13px; margin: 4px 0 10px 0; }
.charts { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
.charts svg { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 10px 0; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 4px 10px; text-align: left; white-space: nowrap; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.front td { background: #fff3e8; }
code { font-size: 12px; }
"""


def render(run: Run) -> str:
    """The whole page as a string."""
    body = [s for s in (
        _stages_section(run),
        _compress_section(run),
        _variants_section(run),
        _curves_section(run),
        _comparison_section(run),
        _pruning_section(run),
        _errors_section(run),
        _compression_section(run),
        _analysis_section(run),
    ) if s]
    title = f"plmkit report: {run.path.resolve().name}"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request: the page must not touch the network
        f"<title>{esc(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f"<header><h1>{esc(title)}</h1><p>{esc(str(run.path.resolve()))} &middot; generated "
        f"{esc(time.strftime('%Y-%m-%d %H:%M'))} by plmkit {esc(__version__)}</p></header>",
        "<main>", *body, "</main>", "</body>", "</html>", ""])


def _section(title: str, *parts: str, note: str = "") -> str:
    note_html = f'<p class="note">{esc(note)}</p>' if note else ""
    return f"<section><h2>{esc(title)}</h2>{note_html}\n" + "\n".join(p for p in parts if p) + "\n</section>"


def _charts(*charts: str) -> str:
    charts = tuple(c for c in charts if c)
    return '<div class="charts">\n' + "\n".join(charts) + "\n</div>" if charts else ""


def _table(headers: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(_td(v) for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _td(v: Any) -> str:
    """Numbers right-aligned (they compare down a column), text left-aligned."""
    numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
    return f'<td class="num">{esc(_cell(v))}</td>' if numeric else f"<td>{esc(_cell(v))}</td>"


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return fmt(v) if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


# --------------------------------------------------------------------------- stages


def _stages_section(run: Run) -> str:
    rows = []
    for s in run.stages:
        wall, cpu = s.stamp.get("seconds"), s.stamp.get("cpu_seconds")
        rows.append([s.name, s.kind or "–", _parent_name(run, s), None if wall is None else round(wall, 1),
                     None if cpu is None else round(cpu, 1)])
    total = sum(s.stamp.get("seconds", 0.0) for s in run.stages)
    note = f"total stage time {total / 60:.1f} min (wall clock, as last run)" if total else ""
    return _section("Stages", _table(["stage", "kind", "input model", "seconds", "CPU seconds"], rows), note=note)


def _parent_name(run: Run, s: Stage) -> str:
    parent = s.meta.get("parent")
    found = run.by_path(parent)
    if found is not None:
        return found.name
    return Path(parent).name if parent else "–"


# --------------------------------------------------------------------------- variants


def _variants_section(run: Run) -> str:
    """The bench table (or, without a bench stage, what the checkpoints themselves record)."""
    benches = run.find("bench.json")
    if benches:
        bench = benches[-1][1]
        return _bench_section(bench)
    rows = _variants_from_checkpoints(run)
    if not rows:
        return ""
    metric = _metric_name(run)
    table = _table(["variant", "stage", "params", "size MB", metric],
                   [[r["name"], r["kind"], r["params"], r["size_mb"], r["metric"]] for r in rows])
    return _section("Model variants", table, note="No bench stage in this run: latency and throughput "
                    "were not measured (add a bench stage to the recipe).")


def _bench_section(bench: dict[str, Any]) -> str:
    rows = bench.get("rows", [])
    metric = bench.get("metric_name") or "metric"
    # With several batch sizes in the rows, the chart uses the largest (the throughput regime).
    sizes = sorted({r["batch_size"] for r in rows if r.get("batch_size") is not None})
    chart_rows = [r for r in rows if not sizes or r.get("batch_size") == sizes[-1]]
    front = pareto_front([(r.get("throughput"), r.get("metric")) for r in chart_rows])
    front_names = {r["name"] for r, f in zip(chart_rows, front) if f}
    headers = ["variant", "kind", "precision", "params", "size MB", "p50 ms", "p95 ms", "throughput /s",
               metric, "speedup", "Pareto"]
    if sizes:
        headers.insert(5, "batch")
    table_rows, classes = [], []
    for r in rows:
        on_front = r["name"] in front_names and (not sizes or r.get("batch_size") == sizes[-1])
        row = [r.get("name"), r.get("kind"), r.get("precision"), r.get("params"), r.get("size_mb"),
               r.get("latency_p50_ms"), r.get("latency_p95_ms"), r.get("throughput"), r.get("metric"),
               f"{r['speedup']:.2f}x" if isinstance(r.get("speedup"), (int, float)) else None, on_front]
        if sizes:
            row.insert(5, r.get("batch_size"))
        table_rows.append(row)
        classes.append("front" if on_front else "")
    points = [{"x": r.get("throughput"), "y": r.get("metric"), "label": r.get("name"), "front": f}
              for r, f in zip(chart_rows, front)]
    chart = svg.scatter(points, title=f"{metric} vs throughput", x_label="throughput (examples/s)",
                        y_label=metric)
    machine = bench.get("machine")
    note = (f"data {bench.get('data', '?')}; batch sizes {bench.get('batch_sizes', sizes)}"
            + (f"; machine {_machine_text(machine)}" if machine else "")
            + ". Highlighted rows are on the Pareto front: no other variant is both faster and more accurate.")
    return _section("Model variants", _table(headers, table_rows, classes), _charts(chart), note=note)


def _machine_text(machine: Any) -> str:
    if isinstance(machine, dict):
        return ", ".join(f"{k} {v}" for k, v in machine.items() if not isinstance(v, (dict, list)))
    return str(machine)


def pareto_front(points: list[tuple[Any, Any]]) -> list[bool]:
    """For each (speed, quality) point: True when no other point is at least as good in both and
    better in one (higher is better in both). Points with a missing value are never on it."""
    ok = [x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))
          for x, y in points]
    out = []
    for i, (x, y) in enumerate(points):
        if not ok[i]:
            out.append(False)
            continue
        dominated = any(ok[j] and qx >= x and qy >= y and (qx > x or qy > y)
                        for j, (qx, qy) in enumerate(points) if j != i)
        out.append(not dominated)
    return out


def _metric_name(run: Run) -> str:
    for s in run.stages:
        name = s.meta.get("metrics", {}).get("metric")
        if isinstance(name, str):
            return name
    return "metric"


def _stage_metric(s: Stage, metric: str) -> float | None:
    """The task metric a stage records for its own output model."""
    m = s.meta.get("metrics") or {}
    for key in ("student", "eval", "int8"):   # distill / finetune, prune / quantize
        value = (m.get(key) or {}).get(metric) if isinstance(m.get(key), dict) else None
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _variants_from_checkpoints(run: Run) -> list[dict[str, Any]]:
    metric = _metric_name(run)
    rows = []
    for s in run.stages:
        if s.kind not in ("finetune", "distill", "prune", "quantize", "merge"):
            continue
        rows.append({"name": s.name, "kind": s.kind, "params": safetensors_params(s.path / "model.safetensors"),
                     "size_mb": round(dir_size_mb(s.path), 2), "metric": _stage_metric(s, metric)})
    return rows


# --------------------------------------------------------------------------- curves


def _split_records(records: list[dict[str, Any]]) -> tuple[dict[str, list], dict[str, list]]:
    """(loss-like series, other eval metric series) from metrics.jsonl records."""
    losses: dict[str, list] = {}
    scores: dict[str, list] = {}
    for rec in records:
        step = rec.get("step")
        for k, v in rec.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or k == "step":
                continue
            if k == "loss" or (k.endswith("loss") and (k.startswith("eval_") or "_" in k)):
                losses.setdefault("train loss" if k == "loss" else k.replace("_", " "), []).append((step, v))
            elif k.startswith("eval_") and "perplexity" not in k:
                scores.setdefault(k[5:].replace("_", " "), []).append((step, v))
    return losses, scores


def _curves_section(run: Run) -> str:
    parts = []
    for s in run.stages:
        if not s.records:
            continue
        losses, scores = _split_records(s.records)
        positive = all(v > 0 for pts in losses.values() for _, v in pts)
        charts = [svg.line_chart(losses, title=f"{s.name}: loss", x_label="step", y_label="loss",
                                 log_y=positive and _spans_decade(losses))] if losses else []
        if scores:
            charts.append(svg.line_chart(scores, title=f"{s.name}: evaluation", x_label="step", y_label="score"))
        if charts:
            parts.append(f"<h3>{esc(s.name)}</h3>" + _charts(*charts))
    return _section("Training curves", *parts) if parts else ""


def _spans_decade(series: dict[str, list]) -> bool:
    values = [v for pts in series.values() for _, v in pts]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10


def _origin(run: Run, s: Stage) -> str:
    """'from scratch' when a fine-tune started from a re-initialised model, else 'pre-trained'."""
    parent = run.by_path(s.meta.get("parent"))
    if parent is not None and parent.kind == "reinit":
        return "from scratch"
    return "pre-trained"


def _comparison_section(run: Run) -> str:
    """Pre-trained vs from-scratch fine-tuning, when the run has both."""
    runs = [s for s in run.of_kind("finetune") if s.records]
    origins = {_origin(run, s) for s in runs}
    if len(runs) < 2 or origins != {"pre-trained", "from scratch"}:
        return ""
    metric = _metric_name(run)
    evals, losses, rows = {}, {}, []
    for s in runs:
        label = f"{s.name} ({_origin(run, s)})"
        evals[label] = [(r["step"], r[f"eval_{metric}"]) for r in s.records if f"eval_{metric}" in r]
        losses[label] = [(r["step"], r["loss"]) for r in s.records if "loss" in r]
        m = s.meta.get("metrics", {})
        rows.append([label, m.get("steps"), m.get("best_step"), _stage_metric(s, metric)])
    charts = _charts(svg.line_chart(evals, title=f"Held-out {metric} while fine-tuning", x_label="step",
                                    y_label=metric),
                     svg.line_chart(losses, title="Training loss while fine-tuning", x_label="step",
                                    y_label="loss"))
    return _section("Pre-trained vs from scratch", charts,
                    _table(["fine-tuning", "steps", "best step", f"best {metric}"], rows),
                    note="The same fine-tuning from the pre-trained weights and from a random "
                         "initialisation of the same architecture: what pre-training buys.")


# --------------------------------------------------------------------------- pruning


def _pruning_section(run: Run) -> str:
    parts = []
    for s in run.of_kind("prune"):
        report = s.meta.get("pruning") or {}
        charts = []
        st = report.get("structured")
        if st:
            layers = [str(i) for i in range(len(st["heads_before"]))]
            charts.append(svg.bar_chart({"before": st["heads_before"], "kept": st["heads_kept"]},
                                        categories=layers, title="Attention heads per layer", y_label="heads"))
            charts.append(svg.bar_chart({"before": st["ffn_before"], "kept": st["ffn_kept"]},
                                        categories=layers, title="FFN width per layer", y_label="neurons"))
            if st.get("head_importance"):
                width = max(len(r) for r in st["head_importance"])
                matrix = [list(r) + [float("nan")] * (width - len(r)) for r in st["head_importance"]]
                charts.append(svg.heatmap(matrix, row_labels=[f"layer {i}" for i in layers],
                                          col_labels=[f"h{j}" for j in range(width)],
                                          title="Head importance (before pruning)"))
        un = report.get("unstructured")
        if un:
            per_layer = un.get("per_layer", [])
            charts.append(svg.bar_chart({"sparsity": per_layer}, categories=[str(i) for i in range(len(per_layer))],
                                        title=f"Sparsity per layer (overall {un.get('overall', 0):.1%})",
                                        y_label="fraction of weights zero"))
        if charts:
            summary = _prune_summary(report)
            parts.append(f"<h3>{esc(s.name)}</h3>" + (f'<p class="note">{esc(summary)}</p>' if summary else "")
                         + _charts(*charts))
    return _section("Pruning", *parts) if parts else ""


def _prune_summary(report: dict[str, Any]) -> str:
    text = []
    if report.get("params_before") and report.get("params_after"):
        text.append(f"parameters {report['params_before']:,} -> {report['params_after']:,}")
    metric = report.get("metric") or {}
    name = metric.get("name")
    if name:
        text.append(", ".join(f"{k} {v.get(name):.3f}" for k, v in metric.items()
                              if isinstance(v, dict) and isinstance(v.get(name), (int, float))))
    return "; ".join(t for t in text if t)


# --------------------------------------------------------------------------- errors


def _errors_section(run: Run) -> str:
    """Confusion matrices (classification) and per-entity F1 (NER) of the fine-tuned models."""
    parts = []
    for s in run.stages:
        details = (s.meta.get("metrics") or {}).get("eval_details") or {}
        if "confusion_matrix" in details:
            labels = [str(x) for x in details.get("labels", [])]
            matrix = details["confusion_matrix"]
            parts.append(svg.heatmap(matrix, row_labels=[f"true {x}" for x in labels],
                                     col_labels=[f"pred {x}" for x in labels], title=f"{s.name}: confusion matrix",
                                     vmin=0, annotate=len(labels) <= 12))
        if "per_entity" in details:
            types = sorted(details["per_entity"])
            per = details["per_entity"]
            parts.append(svg.bar_chart({k: [per[t][k] for t in types] for k in ("precision", "recall", "f1")},
                                       categories=types, title=f"{s.name}: per-entity scores", y_label="score"))
            parts.append(_table(["entity", "precision", "recall", "F1", "support"],
                                [[t, per[t]["precision"], per[t]["recall"], per[t]["f1"], per[t]["support"]]
                                 for t in types]))
    return _section("Errors on the evaluation set", _charts(*[p for p in parts if p.startswith("<svg")]),
                    *[p for p in parts if not p.startswith("<svg")]) if parts else ""


# --------------------------------------------------------------------------- distill / quantize


def _compression_section(run: Run) -> str:
    rows = []
    for s in run.stages:
        m = s.meta.get("metrics") or {}
        if s.kind == "distill" and isinstance(m.get("teacher"), dict):
            for k in sorted(set(m["teacher"]) & set(m.get("student", {}))):
                rows.append([s.name, "teacher -> student", k, m["teacher"][k], m["student"][k]])
        if s.kind == "quantize":
            for k in sorted(set(m.get("fp32", {})) & set(m.get("int8", {}))):
                rows.append([s.name, "fp32 -> int8", k, m["fp32"][k], m["int8"][k]])
            size = s.meta.get("size_bytes") or {}
            if size.get("fp32") and size.get("int8"):
                rows.append([s.name, "fp32 -> int8", "size MB", size["fp32"] / 2**20, size["int8"] / 2**20])
    if not rows:
        return ""
    return _section("Distillation and quantization", _table(["stage", "compared", "measure", "before", "after"], rows))


def _compress_section(run: Run) -> str:
    """plmkit compress: every candidate on the dev slice, the Pareto chart, and why it chose what it chose."""
    parts = []
    for s, data in run.find("compress.json"):
        rows = data.get("candidates", [])
        metric, rule = data.get("metric", "metric"), data.get("rule") or {}
        speed = "latency" if rule.get("speed") == "latency" else "throughput"
        table = _table(["candidate", "engine", "params", "size MB", f"dev {metric}", "points vs teacher",
                        "p50 ms (b=1)", "ex/s (b=32)", "speedup", "Pareto", "chosen"],
                       [[r.get("name"), r.get("engine"), r.get("params"), r.get("size_mb"), r.get("score"),
                         None if r.get("drop_points") is None else -r["drop_points"], r.get("latency_ms"),
                         r.get("throughput"), r.get("speedup"), r.get("pareto"), r.get("chosen")] for r in rows],
                       ["front" if r.get("chosen") else "" for r in rows])
        x = "latency_ms" if speed == "latency" else "throughput"
        points = [{"x": r.get(x), "y": r.get("score"), "label": r.get("name"), "front": r.get("pareto")}
                  for r in rows]
        chart = svg.scatter(points, title=f"dev {metric} vs {speed}", y_label=f"dev {metric}",
                            x_label="p50 latency, batch 1 (ms)" if speed == "latency" else "examples/s, batch 32")
        choice = data.get("choice") or {}
        reasons = "".join(f"<li>{esc(str(t))}</li>" for t in choice.get("reasons", []))
        schedule = _table(["heads removed", "FFN removed", "what happened"],
                          [[e.get("heads"), e.get("ffn"), e.get("status")] for e in data.get("schedule", [])])
        dev = data.get("dev") or {}
        note = (f"{s.name}: teacher {data.get('teacher', '?')}, dev {metric} {data.get('teacher_score', '?')} on "
                f"{dev.get('examples', '?')} examples ({dev.get('source', '?')}); rule: {rule.get('text', '?')} "
                f"(--max-drop {rule.get('max_drop')}, --target-speedup {rule.get('target_speedup')}).")
        parts.append(f'<p class="note">{esc(note)}</p><h3>Chosen: {esc(str(choice.get("name")))}</h3>'
                     f"<ul>{reasons}</ul>" + table + _charts(chart) + "<h3>Pruning schedule</h3>" + schedule)
    return _section("Compression: the candidates and the choice", *parts) if parts else ""


# --------------------------------------------------------------------------- analysis views


def _analysis_section(run: Run) -> str:
    parts = []
    for s, data in run.find("similarity.json"):
        parts.append(_similarity(s, data))
    for s, data in run.find("landscape.json"):
        parts.append(_landscape(s, data))
    parts = [p for p in parts if p]
    return _section("Analysis", *parts) if parts else ""


def _similarity(s: Stage, data: dict[str, Any]) -> str:
    layers = data.get("layers") or {}
    n = len(data.get("sentences", []))
    labels = [f"s{i}" for i in range(n)]
    wanted = [str(data.get("static_layer", 0)), str(data.get("contextual_layer", ""))]
    charts = [svg.heatmap(layers[k], row_labels=labels, col_labels=labels, vmin=-1.0, vmax=1.0,
                          title=f"'{data.get('word', '?')}': cosine similarity, layer {k}")
              for k in dict.fromkeys(wanted) if k in layers]
    sentences = "".join(f"<li><code>s{i}</code> {esc(t)}</li>" for i, t in enumerate(data.get("sentences", [])))
    return f"<h3>{esc(s.name)}: contextual similarity</h3>" + _charts(*charts) + (
        f"<ol style='list-style:none;padding-left:0;font-size:13px'>{sentences}</ol>" if sentences else "")


def _landscape(s: Stage, data: dict[str, Any]) -> str:
    charts = []
    if data.get("alphas") and data.get("loss_1d"):
        charts.append(svg.line_chart({"loss": list(zip(data["alphas"], data["loss_1d"]))},
                                     title="Loss along one random direction", x_label="alpha", y_label="loss"))
    if data.get("loss_2d"):
        charts.append(svg.heatmap(data["loss_2d"], row_labels=[fmt(b) for b in data.get("betas", [])],
                                  col_labels=[fmt(a) for a in data.get("alphas", [])], annotate=False,
                                  title="Loss over two random directions (rows: beta, columns: alpha)"))
    sharp = data.get("sharpness")
    note = f'<p class="note">sharpness {fmt(sharp)}</p>' if isinstance(sharp, (int, float)) else ""
    return f"<h3>{esc(s.name)}: loss landscape of {esc(data.get('model', '?'))}</h3>" + note + _charts(*charts)
