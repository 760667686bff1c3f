"""The built-in demo: the whole path on text plmkit generates itself, in minutes on 2 CPU cores.

It runs the shipped recipe ``plmkit/recipes/demo.yaml`` through the recipe runner (``plmkit
run``): generate data -> WordPiece tokenizer -> pre-train a tiny BERT (MLM + NSP) -> fine-tune it
for sentiment, next to the same fine-tuning from random initialisation -> distil -> prune ->
INT8 -> bench -> HTML report. It ends with the comparison tables and the report's path.
Stages already done with the same settings are skipped, so a second ``plmkit demo`` is quick.
"""
from __future__ import annotations

import importlib.util
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import option
from ..errors import PlmkitError
from ..io import read_json
from . import recipe as recipe_runner


@dataclass
class Config:
    out: str = option("demo_run", help="run directory for everything the demo writes")
    pretrain_steps: int = option(2000, help="pre-training steps for the tiny BERT")
    finetune_epochs: float = option(2.0, help="fine-tuning epochs")
    n_docs: int = option(3000, help="generated pre-training documents")
    n_train: int = option(2000, help="generated labelled training sentences")
    n_eval: int = option(500, help="generated labelled evaluation sentences")
    seed: int = option(0, help="random seed")
    fresh: bool = option(False, help="delete --out first instead of reusing the stages already done")
    quiet: bool = option(True, help="stage output only into OUT/.recipe/logs/<stage>.log, each stage's progress "
                         "(steps, loss, ETA) and time on the terminal (--no-quiet: all of the output)")


def run(cfg: Config) -> int:
    out = Path(cfg.out)
    if cfg.fresh and out.exists():
        shutil.rmtree(out)
    recipe_path = Path(str(resources.files("plmkit").joinpath("recipes/demo.yaml")))
    recipe = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        print("note: onnx/onnxruntime are not installed, so the demo has no INT8 variant "
              "(pip install 'plmkit[onnx]' to add it)")
        recipe = without_stage(recipe, "quantize")
    overrides = {"pretrain_steps": cfg.pretrain_steps, "finetune_epochs": cfg.finetune_epochs,
                 "n_docs": cfg.n_docs, "n_train": cfg.n_train, "n_eval": cfg.n_eval, "seed": cfg.seed}
    t0 = time.perf_counter()
    recipe_runner.execute(recipe, recipe_path, out, overrides, quiet=cfg.quiet)
    elapsed = time.perf_counter() - t0
    print_results(out.resolve(), elapsed)
    return 0


def without_stage(recipe: dict[str, Any], name: str) -> dict[str, Any]:
    """The recipe minus one stage and every reference to its output in list options (bench models)."""
    ref = "${run}/" + name
    stages = []
    for stage in recipe["stages"]:
        if stage.get("name") == name:
            continue
        config = {k: [x for x in v if x != ref] if isinstance(v, list) else v
                  for k, v in (stage.get("config") or {}).items()}
        stages.append({**stage, "config": config})
    return {**recipe, "stages": stages}


def print_results(out: Path, elapsed: float) -> None:
    """The variants table (from the bench stage), pre-trained vs from scratch, the report path."""
    bench_file = out / "bench" / "bench.json"
    if not bench_file.is_file():
        raise PlmkitError(f"{bench_file}: the bench stage left no results")
    bench = read_json(bench_file)
    metric = bench.get("metric_name", "metric")
    head = ["variant", "params", "size MB", "p50 ms", f"ex/s @{max(bench.get('batch_sizes', [0]))}",
            "speedup", metric]
    body = [[r["name"] + (" (baseline)" if r.get("baseline") else ""), f"{r['params'] / 1e6:.3f}M",
             f"{r['size_mb']:.2f}", f"{r['latency_p50_ms']:.2f}", f"{r['throughput']:.0f}",
             "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x", f"{r['metric']:.3f}"]
            for r in bench["rows"]]
    print("\nmodel variants on the held-out generated sentences:")
    print(_format(head, body))
    for note in bench.get("notes", []):      # e.g. why the transformers baseline row is missing
        print(f"  ({note})")
    rows = []
    for name, start in (("finetune", "pre-trained"), ("finetune_scratch", "from scratch")):
        meta = out / name / "plmkit.json"
        if meta.is_file():
            scores = read_json(meta).get("metrics", {}).get("eval", {})
            rows.append([start, f"{scores.get('accuracy', float('nan')):.3f}", f"{scores.get('f1', float('nan')):.3f}"])
    if rows:
        print("\nfine-tuning the tiny BERT for sentiment, same settings:")
        print(_format(["start", "accuracy", "macro F1"], rows))
    print(f"\ndemo finished in {elapsed / 60:.1f} min; everything is in {out}/")
    print(f"report: {out / 'report' / 'report.html'}")


def _format(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  " + "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in
                              enumerate(zip(line, widths))) for line in [head, *body]]
    lines.insert(1, "  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)
