"""A hand-made run directory with every kind of stage output the report reads.

The files follow what the stages write (plmkit.json, metrics.jsonl) and the bench /
analysis JSON interfaces, so the report can be tested without training anything.
"""
from __future__ import annotations

import json
import math
from pathlib import Path


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _records(path: Path, steps: int, start: float, floor: float, metric: str | None, good: float) -> None:
    lines = []
    for s in range(10, steps + 1, 10):
        lines.append({"step": s, "loss": floor + (start - floor) * math.exp(-s / (steps / 4)), "lr": 1e-3})
        if metric and s % (steps // 4) == 0:
            lines.append({"step": s, f"eval_{metric}": good * (1 - math.exp(-s / (steps / 3))), "eval_f1": good - 0.02})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")


def make_run(root: Path) -> Path:
    """RUN/ with pretrain, reinit, two fine-tunes, distill, prune, quantize, bench, NER, analysis views."""
    run = root / "run"
    _records(run / "pretrain" / "metrics.jsonl", 200, 7.5, 3.0, None, 0)
    with open(run / "pretrain" / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": 100, "eval_mlm_loss": 4.1, "eval_mlm_acc": 0.31, "eval_nsp_acc": 0.7}) + "\n")
        f.write(json.dumps({"step": 200, "eval_mlm_loss": 3.4, "eval_mlm_acc": 0.42, "eval_nsp_acc": 0.8}) + "\n")
        f.write('{"step": 210, "loss": 3.0, "lr"')    # a line cut short by a kill
    _write(run / "pretrain" / "plmkit.json", {"stage": "pretrain", "parent": None, "metrics": {"loss": 3.4}})
    _write(run / "scratch_init" / "plmkit.json", {"stage": "reinit", "parent": str(run / "pretrain")})
    details = {"labels": ["0", "1"], "confusion_matrix": [[230, 20], [31, 219]]}
    for name, parent, good in (("finetune", "pretrain", 0.9), ("finetune_scratch", "scratch_init", 0.7)):
        _records(run / name / "metrics.jsonl", 120, 0.7, 0.2 if good > 0.8 else 0.5, "accuracy", good)
        _write(run / name / "plmkit.json", {
            "stage": "finetune", "parent": str(run / parent),
            "metrics": {"steps": 120, "best_step": 120, "metric": "accuracy",
                        "eval": {"accuracy": good, "f1": good - 0.01}, "eval_details": details}})
    _write(run / "distill" / "plmkit.json", {
        "stage": "distill", "parent": str(run / "finetune"),
        "metrics": {"metric": "accuracy", "teacher": {"accuracy": 0.9, "f1": 0.89},
                    "student": {"accuracy": 0.87, "f1": 0.86}}})
    _records(run / "distill" / "metrics.jsonl", 80, 1.2, 0.4, "accuracy", 0.87)
    _write(run / "prune" / "plmkit.json", {"stage": "prune", "parent": str(run / "distill"), "pruning": {
        "params_before": 420000, "params_after": 300000,
        "structured": {"heads_before": [2, 2], "heads_kept": [1, 2], "ffn_before": [512, 512],
                       "ffn_kept": [200, 350], "head_importance": [[0.2, 0.8], [0.6, 0.4]]},
        "unstructured": {"overall": 0.5, "per_layer": [0.45, 0.55]},
        "metric": {"name": "accuracy", "before": {"accuracy": 0.87}, "pruned": {"accuracy": 0.8},
                   "recovered": {"accuracy": 0.85}}},
        "metrics": {"eval": {"accuracy": 0.85}}})
    _write(run / "quantize" / "plmkit.json", {
        "stage": "quantize", "format": "onnx", "precision": "int8", "parent": str(run / "prune"),
        "size_bytes": {"fp32": 1_600_000, "int8": 500_000},
        "metrics": {"fp32": {"accuracy": 0.85, "f1": 0.84}, "int8": {"accuracy": 0.845, "f1": 0.84}}})
    rows = [("finetune", "torch", "fp32", 4.4e5, 1.7, 6.0, 300.0, 0.90),
            ("distill", "torch", "fp32", 4.2e5, 1.6, 4.0, 450.0, 0.87),
            ("prune", "torch", "fp32", 3.0e5, 1.2, 3.0, 600.0, 0.85),
            ("quantize", "onnx", "int8", 3.0e5, 0.5, 1.5, 1200.0, 0.845),
            ("finetune_scratch", "torch", "fp32", 4.4e5, 1.7, 6.0, 290.0, 0.70)]
    _write(run / "bench" / "bench.json", {
        "data": "eval.tsv", "task": "classify", "metric_name": "accuracy", "batch_sizes": [1, 32],
        "machine": {"cpu": "test cpu", "threads": 2},
        "rows": [{"name": n, "path": str(run / n), "kind": k, "precision": p, "params": int(pa), "size_mb": sz,
                  "latency_p50_ms": lat, "latency_p95_ms": lat * 1.3, "throughput": thr, "peak_rss_mb": 300.0,
                  "metric": m, "baseline": n == "finetune", "speedup": thr / 300.0}
                 for n, k, p, pa, sz, lat, thr, m in rows]})
    _write(run / "ner" / "plmkit.json", {
        "stage": "finetune", "parent": "/models/all-MiniLM-L6-v2",
        "metrics": {"metric": "f1", "eval": {"precision": 0.8, "recall": 0.7, "f1": 0.75}, "eval_details": {
            "per_entity": {"LOC": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 40},
                           "PER": {"precision": 0.7, "recall": 0.6, "f1": 0.65, "support": 30}}}}})
    sentences = ["the bank of the river", "the bank raised rates", "a river bank", "she went to the bank"]
    sim = [[1.0 if i == j else 0.5 - 0.1 * abs(i - j) for j in range(4)] for i in range(4)]
    _write(run / "similarity" / "similarity.json", {"word": "bank", "sentences": sentences,
                                                     "layers": {"0": sim, "2": sim}, "static_layer": 0,
                                                     "contextual_layer": 2})
    alphas = [i / 5 - 1 for i in range(11)]
    _write(run / "landscape" / "landscape.json", {
        "alphas": alphas, "loss_1d": [0.3 + a * a for a in alphas], "betas": alphas,
        "loss_2d": [[0.3 + a * a + b * b for a in alphas] for b in alphas], "sharpness": 1.7, "model": "finetune"})
    return run
