"""Pruning: importance scores, physical removal of heads / FFN neurons, and weight masks.

Structured pruning makes a really smaller model. Attention heads and FFN neurons are
ranked by importance, the least important are removed, and the per-layer ``heads`` /
``ffn`` lists of the config are updated, so ``PlmModel(config)`` builds exactly the new
shape and ``load_model`` loads it:

    heads go in whole key/value groups: group j of a layer (G query heads sharing one key/value
    head, G = 1 without grouped-query attention) owns rows j*G*d..(j+1)*G*d of q and the same
    columns of o, and rows j*d..(j+1)*d of k and v;
    FFN neuron j owns row j of fc1 (rows j and F + j of a gated FFN's fused fc1) and column j of fc2.

Head importance is scored per query head and summed over each group; "heads" in counts,
fractions and reports are query heads, removed a group at a time.

Importance (``head_importance_gradient``) follows Michel et al. 2019, "Are Sixteen Heads
Really Better than One?": a mask variable ξ_h (all ones) multiplies each head's context
before the output projection, and I_h = Σ_batches |∂L/∂ξ_h|, then each layer's scores are
divided by their L2 norm (as in the paper's code) so that layers compare in a global ranking.
FFN neurons get the analogous first-order Taylor score |Σ a_j ∂L/∂a_j| (Molchanov et al.
2017) through a mask on the input of fc2. The masks are forward pre-hooks, so the model code
is untouched. ``magnitude_importance`` is the data-free alternative: the L2 norm of the
weights a unit owns. ``activation_importance`` scores FFN neurons on unlabelled text (mean
|activation| x the norm of the neuron's output weights), for a model that has no task yet.

Unstructured pruning zeroes individual weights of the transformer layers' Linear matrices
by magnitude, globally or per matrix, at once or on the cubic schedule of Zhu & Gupta 2017.
Masks live in a ``torch.nn.utils.parametrize`` parametrization (the effective weight is
``original * mask``, so a masked weight stays zero through fine-tuning) and are folded into
the weights before saving. Zeros do not make dense kernels faster: the gain is in
compressed size, or with a sparse runtime.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import PlmkitError
from ..models.layers import linear
from ..models.model import PlmModel
from ..tokenizer import INPUT_KEYS

# ---------------------------------------------------------------- structure access


def blocks(model: PlmModel) -> list[nn.Module]:
    """The transformer layers (each has ``.attn.{q,k,v,o}`` and ``.ffn.{fc1,fc2}``)."""
    return list(model.backbone.layers)


def check_prunable(model: PlmModel, structured: bool = True) -> None:
    """Pruning needs plain Linear projections (no adapters); removal also one module per layer."""
    if getattr(model, "plmkit_strategy", None) is not None:
        raise PlmkitError("the model has adapter/LoRA weights applied; fold them first (plmkit merge)")
    for i, b in enumerate(blocks(model)):
        parts = [b.attn.q, b.attn.k, b.attn.v, b.attn.o, b.ffn.fc1, b.ffn.fc2]
        if any(type(p) is not nn.Linear for p in parts):
            raise PlmkitError(f"layer {i} has wrapped projections (adapters?); pruning needs a plain model "
                              "(plmkit merge first)")
    if structured and getattr(model.config, "share_layers", False):
        raise PlmkitError("structured pruning of a model with shared layers (ALBERT) is not supported: "
                          "every layer would need the same sizes")


# ---------------------------------------------------------------- importance


@dataclass
class Importance:
    heads: list[Tensor]   # per layer: [h_l]
    ffn: list[Tensor]     # per layer: [F_l]


def _normalize_per_layer(scores: list[Tensor]) -> list[Tensor]:
    """Divide each layer's scores by their L2 norm (Michel et al.'s code, exponent 2)."""
    return [s / (s.norm(p=2) + 1e-20) for s in scores]


def _mask_hook(mask: Tensor, width: int):
    """Forward pre-hook multiplying [B, T, n*width] by a per-unit mask [n] (repeated width times)."""
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * mask.repeat_interleave(width).to(args[0].dtype), *args[1:])
    return hook


def head_importance_gradient(model: PlmModel, batches: Iterable[dict[str, Tensor]],
                             max_batches: int = 0, normalize: bool = True) -> Importance:
    """Michel et al. head importance and Taylor FFN-neuron importance over task batches.

    Each batch must hold labels (``model(**batch).loss``). The model runs in eval mode (no
    dropout); only the masks get gradients. ``max_batches`` 0 means all.
    """
    device = next(model.parameters()).device
    d = model.config.head_dim
    heads = [torch.ones(b.attn.n_heads, device=device, requires_grad=True) for b in blocks(model)]
    ffns = [torch.ones(b.ffn.fc2.in_features, device=device, requires_grad=True) for b in blocks(model)]
    hooks = [b.attn.o.register_forward_pre_hook(_mask_hook(m, d)) for b, m in zip(blocks(model), heads)]
    hooks += [b.ffn.fc2.register_forward_pre_hook(_mask_hook(m, 1)) for b, m in zip(blocks(model), ffns)]
    was_training = model.training
    grads = {id(p): p.requires_grad for p in model.parameters()}
    model.eval().requires_grad_(False)
    head_imp = [torch.zeros_like(m) for m in heads]
    ffn_imp = [torch.zeros_like(m) for m in ffns]
    n = 0
    try:
        for batch in batches:
            if max_batches and n >= max_batches:
                break
            out = model(**{k: v.to(device) for k, v in batch.items()})
            if out.loss is None:
                raise PlmkitError("importance scoring needs labelled data (the batch has no labels)")
            out.loss.backward()
            for acc, m in zip(head_imp + ffn_imp, heads + ffns):
                if m.grad is not None:       # a 0-width layer's mask gets no gradient
                    acc += m.grad.abs()
                    m.grad = None
            n += 1
    finally:
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(grads[id(p)])
        model.train(was_training)
    if n == 0:
        raise PlmkitError("importance scoring got no batches of task data")
    head_imp, ffn_imp = [t.detach() for t in head_imp], [t.detach() for t in ffn_imp]
    if normalize:
        head_imp, ffn_imp = _normalize_per_layer(head_imp), _normalize_per_layer(ffn_imp)
    return Importance(_group_sums(model, head_imp), ffn_imp)


def group_size(block: nn.Module) -> int:
    """Query heads per key/value head in a layer (1 without grouped-query attention)."""
    a = block.attn
    return a.n_heads // a.n_kv if a.n_kv else 1


def _group_sums(model: PlmModel, per_head: list[Tensor]) -> list[Tensor]:
    """Per-query-head scores [h] -> per-group scores [g]: a group is kept or removed whole."""
    return [s.view(b.attn.n_kv, -1).sum(1) if b.attn.n_kv else s[:0] for s, b in zip(per_head, blocks(model))]


@torch.no_grad()
def magnitude_importance(model: PlmModel) -> Importance:
    """L2 norm of the weights each unit owns: q/k/v rows + o columns, fc1 row + fc2 column."""
    d = model.config.head_dim
    heads, ffns = [], []
    for b in blocks(model):
        a, g = b.attn, b.attn.n_kv
        per_group = lambda w, n: w.float().reshape(g, n, -1).pow(2).sum((1, 2))  # noqa: E731
        G = group_size(b)
        total = (per_group(a.q.weight, G * d) + per_group(a.k.weight, d) + per_group(a.v.weight, d)
                 + per_group(a.o.weight.t(), G * d)) if g else a.q.weight.new_zeros(0)
        heads.append(total.sqrt())
        width = b.ffn.fc2.in_features
        fc1 = b.ffn.fc1.weight.float().pow(2).sum(1).view(-1, width).sum(0)   # gated: rows j and F + j
        ffns.append((fc1 + b.ffn.fc2.weight.float().pow(2).sum(0)).sqrt())
    return Importance(heads, ffns)


@torch.no_grad()
def activation_importance(model: PlmModel, batches: Iterable[dict[str, Tensor]],
                          max_batches: int) -> tuple[list[Tensor], int]:
    """Per layer [F_l]: neuron j's mean |activation| over real tokens (the input of fc2, after the
    gate of a gated FFN) times the L2 norm of fc2's column j, i.e. how much the neuron adds to the
    layer's output on this text. Unlabelled batches suffice (forward only, eval mode: no dropout);
    returns the scores and the tokens they were measured on."""
    device = next(model.parameters()).device
    state: dict[str, Tensor] = {}
    sums = [torch.zeros(b.ffn.fc2.in_features, device=device) for b in blocks(model)]

    def hook(acc: Tensor):
        def add(_m: nn.Module, args: tuple[Any, ...]) -> None:
            acc.add_(args[0].detach().float().abs()[state["keep"]].sum(0))
        return add
    handles = [b.ffn.fc2.register_forward_pre_hook(hook(acc)) for b, acc in zip(blocks(model), sums)]
    was_training = model.training
    model.eval()
    tokens = n = 0
    try:
        for batch in batches:
            if n >= max_batches:
                break
            inputs = {k: batch[k].to(device) for k in INPUT_KEYS if k in batch}
            mask = inputs.get("attention_mask")
            state["keep"] = mask.bool() if mask is not None else torch.ones_like(inputs["input_ids"], dtype=torch.bool)
            model.backbone(**inputs)
            tokens += int(state["keep"].sum())
            n += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if tokens == 0:
        raise PlmkitError("FFN activation importance got no tokens")
    return [s / tokens * b.ffn.fc2.weight.float().norm(dim=0) for s, b in zip(sums, blocks(model))], tokens


# ---------------------------------------------------------------- which units go


@dataclass
class Removal:
    """How many units go: exact counts per layer, or a total ranked globally across layers."""
    per_layer: list[int] | None = None
    total: int = 0
    asked: int = 0            # what a fraction asked for, before keeping min_keep per layer

    def count(self) -> int:
        return sum(self.per_layer) if self.per_layer is not None else self.total


def plan_removal(sizes: list[int], what: str, fraction: float = 0.0, counts: list[int] | None = None,
                 per_layer: bool = False, min_keep: int = 1) -> Removal:
    """Check a request against the layer sizes and turn it into a ``Removal``.

    ``counts`` (units to remove in each layer) must fit exactly; a ``fraction`` is capped so
    every layer keeps ``min_keep`` units (a layer already smaller keeps what it has).
    """
    if min_keep < 0:
        raise PlmkitError(f"--min-{what} must be >= 0, got {min_keep}")
    if counts is not None:
        if len(counts) != len(sizes):
            raise PlmkitError(f"--remove-{what} has {len(counts)} counts for a model of {len(sizes)} layers")
        for i, (c, n) in enumerate(zip(counts, sizes)):
            if c < 0 or c > n:
                raise PlmkitError(f"--remove-{what}: layer {i} has {n} {what}, cannot remove {c}")
            if c and n - c < min_keep:
                raise PlmkitError(f"--remove-{what}: removing {c} of {n} {what} in layer {i} leaves fewer than "
                                  f"--min-{what} {min_keep}")
        return Removal(per_layer=list(counts), asked=sum(counts))
    if not 0.0 <= fraction < 1.0:
        raise PlmkitError(f"--{what} is the fraction of {what} to remove and must be in [0, 1), got {fraction}")
    spare = [max(0, n - min_keep) for n in sizes]
    if per_layer:
        asked = [math.floor(fraction * n + 0.5) for n in sizes]
        return Removal(per_layer=[min(s, a) for s, a in zip(spare, asked)], asked=sum(asked))
    asked_total = math.floor(fraction * sum(sizes) + 0.5)
    return Removal(total=min(sum(spare), asked_total), asked=asked_total)


def select_keep(scores: list[Tensor], removal: Removal, min_keep: int) -> list[Tensor]:
    """Indices (sorted) of the units each layer keeps: the lowest-scored go first."""
    if removal.per_layer is not None:
        return [torch.sort(s.argsort(descending=True, stable=True)[:len(s) - c].cpu()).values
                for s, c in zip(scores, removal.per_layer)]
    flat = torch.cat([s.float().cpu() for s in scores])
    layer = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    index = torch.cat([torch.arange(len(s)) for s in scores])
    left = [len(s) for s in scores]
    drop: list[set[int]] = [set() for _ in scores]
    todo = removal.total
    for j in flat.argsort(stable=True).tolist():   # ascending importance
        if todo == 0:
            break
        li = int(layer[j])
        if left[li] > min_keep:
            drop[li].add(int(index[j]))
            left[li] -= 1
            todo -= 1
    return [torch.tensor([u for u in range(len(s)) if u not in drop[i]], dtype=torch.long)
            for i, s in enumerate(scores)]


# ---------------------------------------------------------------- physical removal


@torch.no_grad()
def _sliced(lin: nn.Linear, idx: Tensor, dim: int) -> nn.Linear:
    """A new Linear holding only rows (dim 0: outputs) or columns (dim 1: inputs) ``idx``."""
    w = lin.weight.index_select(dim, idx.to(lin.weight.device))
    new = linear(w.shape[1], w.shape[0], bias=lin.bias is not None).to(device=w.device, dtype=w.dtype)
    new.weight.copy_(w)
    if lin.bias is not None:
        new.bias.copy_(lin.bias.index_select(0, idx.to(lin.bias.device)) if dim == 0 else lin.bias)
    return new


def _rows(units: Tensor, width: int) -> Tensor:
    """Row indices [len(units) * width] of the units (each ``width`` rows wide)."""
    return (units[:, None] * width + torch.arange(width)).reshape(-1)


def prune_heads(model: PlmModel, keep: list[Tensor]) -> None:
    """Keep only key/value groups ``keep[i]`` in layer i: q/k/v lose rows, o loses columns;
    config.heads and config.kv_heads follow."""
    d = model.config.head_dim
    for b, kept in zip(blocks(model), keep):
        a, G = b.attn, group_size(b)
        if len(kept) == a.n_kv:
            continue
        q_rows, kv_rows = _rows(kept, G * d), _rows(kept, d)
        a.q, a.o = _sliced(a.q, q_rows, 0), _sliced(a.o, q_rows, 1)
        a.k, a.v = _sliced(a.k, kv_rows, 0), _sliced(a.v, kv_rows, 0)
        a.n_heads, a.n_kv = len(kept) * G, len(kept)
    _set_sizes(model, heads=[b.attn.n_heads for b in blocks(model)])


def prune_ffn(model: PlmModel, keep: list[Tensor]) -> None:
    """Keep only neurons ``keep[i]`` in layer i: fc1 loses rows (a gated FFN's both halves),
    fc2 columns; config.ffn follows."""
    for b, kept in zip(blocks(model), keep):
        f = b.ffn
        width = f.fc2.in_features
        if len(kept) == width:
            continue
        halves = f.fc1.out_features // width if width else 1            # 2 for a gated FFN
        rows = torch.cat([kept + j * width for j in range(halves)])
        f.fc1, f.fc2 = _sliced(f.fc1, rows, 0), _sliced(f.fc2, kept, 1)
    _set_sizes(model, ffn=[b.ffn.fc2.in_features for b in blocks(model)])


def head_units(model: PlmModel) -> list[int]:
    """Removable head units per layer: key/value groups (= heads without grouped-query attention)."""
    return [b.attn.n_kv for b in blocks(model)]


def heads_to_units(model: PlmModel, counts: list[int] | None) -> list[int] | None:
    """Per-layer query-head counts -> group counts; a count must be a whole number of groups."""
    if counts is None:
        return None
    sizes = [group_size(b) for b in blocks(model)]
    if len(counts) == len(sizes):
        for i, (c, G) in enumerate(zip(counts, sizes)):
            if c % G:
                raise PlmkitError(f"--remove-heads: layer {i} shares each key/value head among {G} query heads; "
                                  f"remove a multiple of {G}, not {c}")
        return [c // G for c, G in zip(counts, sizes)]
    return counts     # a count mismatch is reported by plan_removal


def _set_sizes(model: PlmModel, **sizes: list[int]) -> None:
    """A new config with the per-layer sizes (the old object may be shared, e.g. with a teacher)."""
    cfg = dataclasses.replace(model.config, **sizes)
    model.config = model.backbone.config = cfg


# ---------------------------------------------------------------- unstructured masks


def prunable_linears(model: PlmModel, include_head: bool = False) -> dict[str, nn.Linear]:
    """Linear layers of the transformer blocks (and with ``include_head`` the pooler and head).

    Embeddings and LayerNorms are never included, nor a Linear whose weight is tied to an
    embedding (the MLM / LM decoder), nor empty (fully pruned) ones.
    """
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    prefixes = ("backbone.layers.",) + (("backbone.pooler.", "head.") if include_head else ())
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name.startswith(prefixes) and m.weight.numel():
            if id(m.weight) not in tied:
                out[name] = m
    return out


def _smallest(values: Tensor, k: int) -> Tensor:
    """Boolean mask (shape of ``values``) of its ``k`` smallest entries; exactly k, ties by position."""
    mask = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if k > 0:
        mask[torch.topk(values.flatten(), k, largest=False, sorted=False).indices] = True
    return mask.view_as(values)


@torch.no_grad()
def magnitude_masks(weights: dict[str, Tensor], sparsity: float, scope: str = "global") -> dict[str, Tensor]:
    """Keep-masks (True = keep) zeroing the ``sparsity`` fraction of smallest |w|.

    ``global``: one ranking over all matrices; ``layer``: each matrix to the same sparsity.
    The count is exact: round(sparsity * n) weights are pruned.
    """
    if not 0.0 <= sparsity < 1.0:
        raise PlmkitError(f"--sparsity must be in [0, 1), got {sparsity}")
    if scope == "layer":
        return {n: ~_smallest(w.abs().float(), round(sparsity * w.numel())) for n, w in weights.items()}
    if scope != "global":
        raise PlmkitError(f"unknown pruning scope '{scope}' (global or layer)")
    flat = torch.cat([w.abs().float().flatten() for w in weights.values()])
    drop = _smallest(flat, round(sparsity * flat.numel()))
    out, start = {}, 0
    for n, w in weights.items():
        out[n] = ~drop[start:start + w.numel()].view_as(w)
        start += w.numel()
    return out


class WeightMask(nn.Module):
    """Parametrization: effective weight = original * mask (mask is a buffer, saved with the model)."""

    def __init__(self, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask.clone())

    def forward(self, w: Tensor) -> Tensor:
        return w * self.mask.to(w.dtype)


def attach_masks(linears: dict[str, nn.Linear]) -> None:
    """Give every Linear an all-ones mask parametrization."""
    for m in linears.values():
        parametrize.register_parametrization(m, "weight", WeightMask(torch.ones_like(m.weight)))


@torch.no_grad()
def update_masks(linears: dict[str, nn.Linear], sparsity: float, scope: str) -> None:
    """Re-rank the effective weights (already-masked ones are 0, so they stay pruned) and mask."""
    masks = magnitude_masks({n: m.weight for n, m in linears.items()}, sparsity, scope)
    for n, m in linears.items():
        m.parametrizations.weight[0].mask.copy_(masks[n])


def fold_masks(linears: dict[str, nn.Linear]) -> None:
    """Write original * mask into plain weights and drop the parametrizations."""
    for m in linears.values():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def cubic_schedule(final: float, events: int, total_steps: int) -> list[tuple[int, float]]:
    """Zhu & Gupta: s_k = s_f (1 - (1 - k/n)^3), k = 1..n, spread over the first 3/4 of training.

    Returns (optimizer step, sparsity) pairs; the first is applied before training starts, the
    last quarter of the steps fine-tunes at the final sparsity.
    """
    if events < 1:
        return [(0, final)]
    dt = max(1, (3 * total_steps // 4) // events)
    return [(k * dt, final * (1.0 - (1.0 - (k + 1) / events) ** 3)) for k in range(events)]


class GradualPruning(nn.Module):
    """Wraps a model for the training loop: re-masks on schedule, counted in optimizer steps.

    The loop calls ``forward`` ``grad_accum`` times per optimizer step in train mode, so the
    step index is (train-mode calls) // grad_accum. Between events the parametrization keeps
    the masks applied after every optimizer step.
    """

    def __init__(self, model: PlmModel, linears: dict[str, nn.Linear], schedule: list[tuple[int, float]],
                 scope: str, grad_accum: int = 1):
        super().__init__()
        self.model, self.linears, self.scope, self.grad_accum = model, linears, scope, grad_accum
        self.events = dict(schedule)
        self.calls = 0

    def forward(self, **batch: Tensor) -> Any:
        if self.training:
            step, first = divmod(self.calls, self.grad_accum)
            if first == 0 and step in self.events:
                update_masks(self.linears, self.events[step], self.scope)
            self.calls += 1
        return self.model(**batch)


@torch.no_grad()
def sparsity_report(model: PlmModel, names: Iterable[str]) -> dict[str, Any]:
    """Fraction of zero weights: overall (over ``names``), per transformer layer, per matrix."""
    modules = dict(model.named_modules())
    per_matrix: dict[str, float] = {}
    zeros: dict[int | None, list[int]] = {}
    for n in names:
        w = modules[n].weight
        z = int((w == 0).sum())
        per_matrix[n] = round(z / w.numel(), 6)
        acc = zeros.setdefault(model.layer_of(n + ".weight"), [0, 0])
        acc[0] += z
        acc[1] += w.numel()
    total_z = sum(z for z, _ in zeros.values())
    total_n = sum(n for _, n in zeros.values())
    layers = [round(zeros[i][0] / zeros[i][1], 6) if i in zeros and zeros[i][1] else 0.0
              for i in range(model.config.num_layers)]
    return {"overall": round(total_z / total_n, 6) if total_n else 0.0, "per_layer": layers,
            "matrices": per_matrix, "pruned_weights": total_z, "weights": total_n}


def nonzero_parameters(model: PlmModel) -> int:
    """Non-zero parameter values (tied weights once: ``parameters()`` de-duplicates)."""
    return sum(int((p != 0).sum()) for p in model.parameters())
