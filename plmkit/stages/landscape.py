"""The loss surface around a fine-tuned model along filter-normalised random directions.

Reads top to bottom: the model and its task settings -> labelled data, encoded as for
fine-tuning, a seeded subset of --max-examples -> fixed batches -> the loss along one direction
(1D) and over a plane of two (2D), weights restored afterwards (plmkit/analysis/landscape.py)
-> files in --out:

    landscape.json    {"alphas", "loss_1d", "betas", "loss_2d", "sharpness", "model"}
                      loss_2d[i][j] = loss at alphas[i] * d1 + betas[j] * d2; loss_1d[i] at
                      alphas[i] * d1 (the same points as the 2D column at beta = 0)
    landscape_1d.svg, landscape_2d.svg, landscape.yaml (the resolved config)

Run it on a pre-trained-then-fine-tuned model and on one fine-tuned from scratch (same task,
data, --seed and --span) to compare their basins; the sharpness is defined in the module above.
Cost: (steps + steps^2) passes over --max-examples examples.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..analysis.landscape import landscape_json, landscape_svgs, make_batches, scan
from ..config import dump_yaml, option
from ..errors import PlmkitError
from ..io import atomic_dir, atomic_write_text, check_out_dir, write_json
from ..tasks import TASKS, load_finetuned
from ..tokenizer import pad_id


@dataclass
class Config:
    model: str = option(help="fine-tuned checkpoint (its task head gives the loss)")
    data: str = option(help="labelled data file, same format as for finetune")
    task: str | None = option(None, help="task, for checkpoints that do not record it", choices=list(TASKS))
    out: str = option("landscape", help="output directory")
    overwrite: bool = option(False, help="replace an existing output directory")
    steps: int = option(9, help="grid points per axis, odd (1D: steps points, 2D: steps x steps)")
    span: float = option(1.0, help="the grid covers [-span, span] along each direction")
    max_examples: int = option(256, help="examples the loss is averaged over (a seeded subset; 0: all)")
    seed: int = option(0, help="seed of the directions and of the example subset")
    batch_size: int = option(64, help="examples per batch")


def run(cfg: Config) -> int:
    check_out_dir(cfg.out, cfg.overwrite)
    if cfg.max_examples < 0:
        raise PlmkitError(f"--max-examples must be >= 0 (0: all), got {cfg.max_examples}")
    model, task, prep, tok = load_finetuned(cfg.model, cfg.task, needs_torch="the analysis views")
    examples = task.read(cfg.data, prep, labels=model.head_config.get("labels"))
    features = task.encode(tok, examples, model.head_config, prep)
    if len(features) > cfg.max_examples > 0:
        keep = sorted(random.Random(cfg.seed).sample(range(len(features)), cfg.max_examples))
        features = [features[i] for i in keep]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    data = make_batches(features, pad_id(tok), cfg.batch_size, causal=model.task == "clm", device=device)
    result = scan(model, data, span=cfg.span, steps=cfg.steps, seed=cfg.seed, progress="landscape")
    one, two = landscape_svgs(result, cfg.model)
    with atomic_dir(cfg.out, overwrite=cfg.overwrite) as tmp:
        write_json(tmp / "landscape.json", landscape_json(result, cfg.model))
        atomic_write_text(tmp / "landscape_1d.svg", one + "\n")
        atomic_write_text(tmp / "landscape_2d.svg", two + "\n")
        atomic_write_text(tmp / "landscape.yaml", dump_yaml(cfg))
    sharp = "n/a (a point diverged)" if result.sharpness is None else f"{result.sharpness:.4f}"
    print(f"loss at the model {result.center_loss:.4f} on {len(features)} {task.name} examples; "
          f"sharpness (span {cfg.span:g}) {sharp}; wrote {cfg.out}/landscape.json, landscape_1d.svg, "
          "landscape_2d.svg")
    return 0
