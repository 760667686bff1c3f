"""Fine-tuning strategies: which parameters train, and what gets injected.

A strategy is named by a spec string (``full``, ``probe``, ``freeze:N``, ``adapter``, ``lora``,
``bitfit``). Applying it (1) injects modules where needed (LoRA / adapter wrappers), then
(2) sets ``requires_grad`` from one predicate on parameter names. The same predicate selects
the adapter-only state, so "what trains" and "what is saved" cannot drift apart.

Parameter names come from ``model.named_parameters()``, which lists a tied parameter once,
under its first (backbone) name. So a head tied to the word embeddings (GPT-2 / BERT MLM)
does not drag the embedding matrix into ``probe``/``lora``/``adapter``/``bitfit``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..config import build, option, to_dict
from ..errors import PlmkitError
from .houlsby import ACTIVATIONS, inject_adapters
from .lora import TARGETS, inject_lora, merge_lora

Predicate = Callable[[str], bool]   # parameter name -> trains?


@dataclass
class AdapterSettings:
    """Knobs of the parameter-efficient strategies (ignored by the others)."""

    lora_r: int = option(8, help="LoRA rank r")
    lora_alpha: float = option(16.0, help="LoRA alpha; the update is scaled by alpha / r")
    lora_dropout: float = option(0.05, help="dropout on the LoRA input")
    lora_targets: list[str] = option(["q", "v"], help="modules LoRA wraps in every layer",
                                     choices=list(TARGETS))
    adapter_size: int = option(64, help="Houlsby adapter bottleneck size")
    adapter_activation: str = option("gelu", help="Houlsby adapter activation", choices=list(ACTIVATIONS))


@dataclass
class Plan:
    """What a strategy builder decided: which parameters train, which modules it wrapped."""

    trains: Predicate
    wrapped: list[str] = field(default_factory=list)


@dataclass
class Strategy:
    build: Callable[[nn.Module, int | None, AdapterSettings], Plan]
    help: str
    lr: float                       # default peak learning rate (finetune without --lr): benchmarks/strategy_lr.py
    arg: str | None = None          # name of the ":N" argument, when the strategy takes one
    adapter_only: bool = True       # save only the trained weights (+ a pointer to the parent)
    structural: bool = False        # adds modules: loading needs the strategy re-applied first
    fold: Callable[[nn.Module], nn.Module] | None = None   # folds added modules into the base


@dataclass
class StrategyInfo:
    name: str                       # registry key, e.g. "freeze"
    spec: str                       # as given, e.g. "freeze:4"
    settings: AdapterSettings
    trainable: int
    total: int
    wrapped: list[str]
    trains: Predicate = field(repr=False)

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    @property
    def adapter_only(self) -> bool:
        return STRATEGIES[self.name].adapter_only

    def summary(self) -> str:
        return format_summary(self.trainable, self.total)


def _is_head(name: str) -> bool:
    return name.startswith("head.")


# A language-model head comes pre-trained with the model (an untied lm_head: Llama, Qwen): LoRA,
# adapters and BitFit leave it frozen, as PEFT does; probe still trains it. (A tied one is the
# word embedding matrix and never counts as head.)
PRETRAINED_HEADS = ("head.lm_head.",)


def _is_new_head(name: str) -> bool:
    return _is_head(name) and not name.startswith(PRETRAINED_HEADS)


def _full(model: nn.Module, arg: int | None, cfg: AdapterSettings) -> Plan:
    return Plan(lambda name: True)


def _probe(model: nn.Module, arg: int | None, cfg: AdapterSettings) -> Plan:
    return Plan(_is_head)


# The embedding block of every backbone (word, positions, segments, norm, projection).
EMBEDDINGS = ("backbone.embeddings.",)


def _freeze(model: nn.Module, n: int | None, cfg: AdapterSettings) -> Plan:
    assert n is not None  # parse_spec guarantees it
    frozen = EMBEDDINGS + tuple(f"backbone.layers.{i}." for i in range(n))
    return Plan(lambda name: not name.startswith(frozen))


def _bitfit(model: nn.Module, arg: int | None, cfg: AdapterSettings) -> Plan:
    return Plan(lambda name: _is_new_head(name) or name.endswith(".bias"))


def _lora(model: nn.Module, arg: int | None, cfg: AdapterSettings) -> Plan:
    wrapped = inject_lora(model, list(cfg.lora_targets), cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    return Plan(lambda name: _is_new_head(name) or ".lora_A." in name or ".lora_B." in name, wrapped)


def _adapter(model: nn.Module, arg: int | None, cfg: AdapterSettings) -> Plan:
    wrapped = inject_adapters(model, cfg.adapter_size, cfg.adapter_activation)
    return Plan(lambda name: _is_new_head(name) or ".adapter." in name, wrapped)


# Default learning rates: the best on SST-2 dev of a sweep per strategy (all-MiniLM-L6-v2, 2,000
# sentences, 2 epochs; benchmarks/strategy_lr.py, benchmarks/RESULTS.md). Fewer trained weights
# want a larger rate: the head alone, or biases alone, barely move at full fine-tuning's rate.
# probe, bitfit and lora were best at the top of their grids (the next step up is untried).
STRATEGIES: dict[str, Strategy] = {
    "full": Strategy(_full, "train every parameter", lr=1e-4, adapter_only=False),
    "probe": Strategy(_probe, "backbone frozen, head trained", lr=1e-1),
    "freeze": Strategy(_freeze, "embeddings and bottom N layers frozen", lr=1e-4, arg="N", adapter_only=False),
    "adapter": Strategy(_adapter, "Houlsby bottleneck adapters after attention and FFN outputs", lr=1e-3,
                        structural=True),
    "lora": Strategy(_lora, "low-rank updates on the target Linears", lr=3e-3, structural=True, fold=merge_lora),
    "bitfit": Strategy(_bitfit, "only biases and the head train", lr=1e-2),
}


def default_lr(spec: str) -> float:
    """The learning rate a strategy spec ('lora', 'freeze:4', ...) trains with when none is given."""
    name = str(spec).strip().partition(":")[0]
    if name not in STRATEGIES:
        raise PlmkitError(f"strategy '{spec}': unknown strategy; valid forms: {valid_forms()}")
    return STRATEGIES[name].lr


def lr_help() -> str:
    """'full 2e-05, probe 0.03, ...' for --help."""
    return ", ".join(f"{name} {s.lr:g}" for name, s in STRATEGIES.items())


def _num_layers(model: nn.Module) -> int:
    backbone = model.get_submodule("backbone")
    cfg = getattr(backbone, "config", None)
    return int(getattr(cfg, "num_layers", len(backbone.get_submodule("layers"))))


def valid_forms(num_layers: int | None = None) -> str:
    bound = f"0..{num_layers}" if num_layers is not None else "0..L"
    return ", ".join(f"{k}:{s.arg} ({s.arg}={bound})" if s.arg else k for k, s in STRATEGIES.items())


def parse_spec(spec: str, num_layers: int, shared_layers: bool = False) -> tuple[str, int | None]:
    """'freeze:4' -> ('freeze', 4); 'lora' -> ('lora', None). Raises PlmkitError on anything else."""
    name, sep, raw = str(spec).strip().partition(":")
    strategy = STRATEGIES.get(name)

    def bad(why: str) -> PlmkitError:
        return PlmkitError(f"strategy '{spec}': {why}; valid forms: {valid_forms(num_layers)}")

    if strategy is None:
        raise bad("unknown strategy")
    if strategy.arg is None:
        if sep:
            raise bad(f"'{name}' takes no argument")
        return name, None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()):
        raise bad(f"'{name}' needs a non-negative integer {strategy.arg}, got '{raw}'")
    n = int(raw)
    if n > num_layers:
        raise bad(f"{strategy.arg}={n} but the model has {num_layers} layers")
    if shared_layers and 0 < n < num_layers:
        raise bad(f"layers share weights (ALBERT): only {strategy.arg}=0 or {num_layers} make sense")
    return name, n


def apply_strategy(model: nn.Module, spec: str, cfg: AdapterSettings | None = None) -> StrategyInfo:
    """Inject modules for ``spec`` and set ``requires_grad``, in place. Apply once per model."""
    cfg = cfg or AdapterSettings()
    if getattr(model, "plmkit_strategy", None) is not None:
        raise PlmkitError(f"model already has strategy '{model.plmkit_strategy.spec}' applied")
    backbone_cfg = getattr(model.get_submodule("backbone"), "config", None)
    name, arg = parse_spec(spec, _num_layers(model), bool(getattr(backbone_cfg, "share_layers", False)))
    plan = STRATEGIES[name].build(model, arg, cfg)
    for pname, p in model.named_parameters():
        p.requires_grad_(plan.trains(pname))
    trainable, total, _ = trainable_summary(model)
    if trainable == 0:   # e.g. probe on a head tied to the embeddings (clm, mlm without bias)
        raise PlmkitError(f"strategy '{spec}' leaves no parameter to train on this model")
    info = StrategyInfo(name, str(spec).strip(), cfg, trainable, total, plan.wrapped, plan.trains)
    model.plmkit_strategy = info
    return info


def trainable_summary(model: nn.Module) -> tuple[int, int, float]:
    """(trainable, total, share) over unique parameters (tied weights counted once)."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total, (trainable / total if total else 0.0)


def format_summary(trainable: int, total: int) -> str:
    """'trainable params: 12,345 / 22,713,216 (0.05%)'."""
    share = trainable / total if total else 0.0
    return f"trainable params: {trainable:,} / {total:,} ({100 * share:.2f}%)"


def _info(model: nn.Module) -> StrategyInfo:
    info = getattr(model, "plmkit_strategy", None)
    if info is None:
        raise PlmkitError("no fine-tuning strategy applied to this model (apply_strategy first)")
    return info


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The strategy's own weights and the head, by parameter name (cloned, contiguous)."""
    info = _info(model)
    return {name: p.detach().clone().contiguous()
            for name, p in model.named_parameters() if info.trains(name)}


@torch.no_grad()
def load_adapter_state(model: nn.Module, state: dict[str, Tensor], source: str = "adapter state") -> None:
    """Copy an ``adapter_state_dict`` into ``model`` (the strategy re-applied to a fresh parent)."""
    info = _info(model)
    params = {name: p for name, p in model.named_parameters() if info.trains(name)}
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise PlmkitError(f"{source}: does not match strategy '{info.spec}': "
                          f"missing {_few(missing)}, unexpected {_few(unexpected)}")
    for name, p in params.items():
        if tuple(state[name].shape) != tuple(p.shape):
            raise PlmkitError(f"{source}: '{name}' has shape {tuple(state[name].shape)}, "
                              f"the model expects {tuple(p.shape)}")
        p.copy_(state[name])


def _few(names: list[str], n: int = 3) -> str:
    if not names:
        return "none"
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def merge(model: nn.Module) -> nn.Module:
    """Fold LoRA into the base weights; the result is a plain model with the parent's names.

    Houlsby adapters are non-linear and cannot be folded: an ``adapter`` model is returned
    unchanged (its export keeps the adapter modules, and records the strategy so that a
    loader re-applies it first). Other strategies change no structure; nothing to do.
    """
    strategy = STRATEGIES[_info(model).name]
    if strategy.fold is not None:
        strategy.fold(model)
    if strategy.fold is not None or not strategy.structural:
        model.plmkit_strategy = None   # a plain model now: no adapter state left to save
    return model


def strategy_meta(info: StrategyInfo) -> dict[str, Any]:
    """JSON-able record of a strategy for plmkit.json: {"name", "spec", "settings", ...}."""
    s = STRATEGIES[info.name]
    return {"name": info.name, "spec": info.spec, "settings": to_dict(info.settings),
            "adapter_only": s.adapter_only, "structural": s.structural,
            "trainable": info.trainable, "total": info.total}


def restore_strategy(model: nn.Module, meta: dict[str, Any], source: str = "plmkit.json") -> StrategyInfo:
    """Re-apply a recorded strategy to a freshly loaded parent (then ``load_adapter_state``)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("spec"), str):
        raise PlmkitError(f"{source}: 'strategy' must be a mapping with a 'spec' string")
    settings = meta.get("settings", {})
    if not isinstance(settings, dict):
        raise PlmkitError(f"{source}: 'strategy.settings' must be a mapping")
    cfg = build(AdapterSettings, settings, source=f"{source} strategy.settings")
    return apply_strategy(model, meta["spec"], cfg)
