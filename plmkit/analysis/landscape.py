"""The loss surface around a model along filter-normalised random directions (Li et al. 2018).

    L(a, b) = loss(w + a * d1 + b * d2)     a, b in [-span, span]

w is every parameter of the model (tied weights once), d1 and d2 independent Gaussian
directions, each filter-normalised: for every weight matrix (and embedding table) each row --
a filter: one output neuron of a Linear, one token's vector of an Embedding -- is rescaled to
the norm of the same row of the weight. A step of a = 1 therefore moves every neuron by as much
as its own size, which makes surfaces of differently scaled models comparable. Parameters with
one dimension (biases, LayerNorm gains and shifts) get a zero direction: they stay put, as in
the paper's released code (its default ``--xignore biasbn``).

The loss is the task head's loss with labels, in fp32 and eval mode (no dropout), averaged over
a fixed set of examples: per example for classification and QA, per labelled token for NER and
generation, so it equals one forward pass over all of them at once.

Sharpness (one number): the mean, over the two directions, of the largest loss increase over
the centre within the span, read off the 2D grid's axes through the centre:

    sharpness = ( max_a L(a, 0) - L(0, 0)  +  max_b L(0, b) - L(0, 0) ) / 2

It is an epsilon-sharpness (Keskar et al. 2017) restricted to two random filter-normalised
directions: larger means a narrower, steeper basin; it depends on --span. Compare models with
the same --span, --seed, data and --max-examples.

The weights are put back exactly afterwards (copied back from a saved clone, also on error).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..data.features import IGNORE, collate, length_bucketed_batches
from ..errors import PlmkitError
from ..train.logging import progress_enabled


def grid(span: float, steps: int) -> list[float]:
    """``steps`` evenly spaced points in [-span, span] with 0 exactly in the middle."""
    if steps < 3 or steps % 2 == 0:
        raise PlmkitError(f"--steps must be odd and >= 3 (so the grid holds the model itself), got {steps}")
    if not span > 0:
        raise PlmkitError(f"--span must be > 0, got {span}")
    c = (steps - 1) // 2
    return [span * (i - c) / c for i in range(steps)]


def named_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every parameter once (a tied weight, like the MLM decoder = word embeddings, counted once)."""
    return list(model.named_parameters())


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> dict[str, Tensor]:
    """A Gaussian direction, each row of each >=2-D parameter scaled to that weight row's norm.

    Rows are dim 0: a Linear weight [out, in] has one row per output neuron, an Embedding
    [V, E] one per token. 1-D parameters (biases, LayerNorm) get zeros.
    """
    direction = {}
    for name, p in named_weights(model):
        if p.dim() <= 1:
            direction[name] = torch.zeros_like(p)
            continue
        # Drawn on the CPU from the seeded generator, so a seed gives the same direction anywhere.
        d = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
        w_norm = p.detach().flatten(1).norm(dim=1)                   # [rows]
        d_norm = d.flatten(1).norm(dim=1)                             # [rows]
        scale = w_norm / d_norm.clamp_min(torch.finfo(d.dtype).tiny)
        direction[name] = d * scale.view(-1, *([1] * (p.dim() - 1)))
    return direction


@dataclass
class Batches:
    """A fixed labelled batch set and the weight of each batch's mean loss in the overall mean."""
    batches: list[dict[str, Tensor]]
    weights: list[float]


def make_batches(features: Sequence[dict[str, Any]], pad: int, batch_size: int, *, causal: bool,
                 device: torch.device) -> Batches:
    """Collate ``features`` (which must carry labels) into fixed batches on ``device``."""
    if not features:
        raise PlmkitError("no examples to compute the loss on")
    if not any(k in features[0] for k in ("labels", "start_positions")):
        raise PlmkitError("the loss landscape needs labelled data (no labels found in the data file)")
    lengths = [len(f["input_ids"]) for f in features]
    out = Batches([], [])
    for idx in length_bucketed_batches(lengths, batch_size, seed=0, shuffle=False):
        batch = collate([features[i] for i in idx], pad)
        labels = batch.get("labels")
        if labels is not None and labels.dim() == 2:
            # Token losses are means over labelled tokens; the causal-LM head shifts labels by one.
            counted = labels[:, 1:] if causal else labels
            weight = float((counted != IGNORE).sum())
        else:
            weight = float(len(idx))
        if weight > 0:
            out.batches.append({k: v.to(device) for k, v in batch.items()})
            out.weights.append(weight)
    if not out.batches:
        raise PlmkitError("no labelled tokens in the data: nothing to compute a loss on")
    return out


def mean_loss(model: nn.Module, data: Batches) -> float:
    """The example- (or token-) weighted mean of the task loss over the fixed batches."""
    total = 0.0
    with torch.no_grad():
        for batch, w in zip(data.batches, data.weights):
            total += float(model(**batch).loss) * w
    return total / sum(data.weights)


@contextlib.contextmanager
def perturbable(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Yield a clone of the weights; whatever happens inside, the weights are copied back exactly."""
    saved = {name: p.detach().clone() for name, p in named_weights(model)}
    try:
        yield saved
    finally:
        with torch.no_grad():
            for name, p in named_weights(model):
                p.copy_(saved[name])


def set_point(model: nn.Module, w0: dict[str, Tensor], d1: dict[str, Tensor], d2: dict[str, Tensor],
              a: float, b: float) -> None:
    """weights <- w0 + a * d1 + b * d2, always in this order so equal (a, b) give equal bits."""
    with torch.no_grad():
        for name, p in named_weights(model):
            p.copy_(w0[name]).add_(d1[name], alpha=a).add_(d2[name], alpha=b)


def _finite(x: float) -> float | None:
    """JSON has no NaN/inf: a diverged point is written as null."""
    return x if math.isfinite(x) else None


@dataclass
class Landscape:
    alphas: list[float]
    loss_1d: list[float | None]
    betas: list[float]
    loss_2d: list[list[float | None]]      # [len(alphas)][len(betas)]: row a, column b
    sharpness: float | None
    center_loss: float


def sharpness(loss_2d: Sequence[Sequence[float | None]]) -> float | None:
    """Mean over the two directions of (largest loss on the axis through the centre - centre loss)."""
    c = len(loss_2d) // 2
    centre = loss_2d[c][c]
    along_a = [row[c] for row in loss_2d]
    along_b = list(loss_2d[c])
    if centre is None or None in along_a or None in along_b:
        return None
    return ((max(along_a) - centre) + (max(along_b) - centre)) / 2


def scan(model: nn.Module, data: Batches, *, span: float = 1.0, steps: int = 9, seed: int = 0,
         progress: str | None = None) -> Landscape:
    """The 1D curve along d1 and the 2D grid over (d1, d2); weights restored afterwards."""
    alphas = grid(span, steps)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    d1 = filter_normalized_direction(model, gen)
    d2 = filter_normalized_direction(model, gen)
    bar = tqdm(total=steps + steps * steps, desc=progress, unit="point", dynamic_ncols=True,
               disable=progress is None or not progress_enabled())
    try:
        with perturbable(model) as w0:
            loss_1d = []
            for a in alphas:
                set_point(model, w0, d1, d2, a, 0.0)
                loss_1d.append(_finite(mean_loss(model, data)))
                bar.update(1)
            loss_2d = []
            for a in alphas:
                row = []
                for b in alphas:
                    set_point(model, w0, d1, d2, a, b)
                    row.append(_finite(mean_loss(model, data)))
                    bar.update(1)
                loss_2d.append(row)
    finally:
        bar.close()
    centre = loss_1d[steps // 2]
    return Landscape(alphas, loss_1d, list(alphas), loss_2d, sharpness(loss_2d),
                     centre if centre is not None else math.nan)


def landscape_json(result: Landscape, model: str) -> dict[str, Any]:
    """landscape.json, exactly: alphas, loss_1d, betas, loss_2d, sharpness, model."""
    return {"alphas": result.alphas, "loss_1d": result.loss_1d, "betas": result.betas,
            "loss_2d": result.loss_2d, "sharpness": result.sharpness, "model": model}


def landscape_svgs(result: Landscape, model: str) -> tuple[str, str]:
    """(1D line chart, 2D heatmap) of the loss around ``model``."""
    from ..report.svg import heatmap, line_chart

    one = line_chart({"loss": [(a, v) for a, v in zip(result.alphas, result.loss_1d) if v is not None]},
                     title=f"loss along a filter-normalised direction: {model}", x_label="alpha (d1)",
                     y_label="loss")
    two = heatmap(result.loss_2d, row_labels=[f"{a:g}" for a in result.alphas],
                  col_labels=[f"{b:g}" for b in result.betas], annotate=len(result.betas) <= 11,
                  title=f"loss surface (rows alpha along d1, columns beta along d2): {model}")
    return one, two
