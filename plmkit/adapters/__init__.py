"""Parameter-efficient fine-tuning: full, probe, freeze:N, Houlsby adapters, LoRA, BitFit.

    info = apply_strategy(model, "lora", AdapterSettings(lora_r=8))
    print(info.summary())                       # trainable params: 12,345 / 4,400,000 (0.28%)
    state = adapter_state_dict(model)           # LoRA A/B + head only
    ...
    restore_strategy(fresh_parent, strategy_meta(info)); load_adapter_state(fresh_parent, state)
    merge(model)                                # LoRA folded in; a plain model again
"""
from __future__ import annotations

from .houlsby import AdapterLinear, Bottleneck, inject_adapters
from .lora import LoraLinear, inject_lora, merge_lora
from .strategies import (
    STRATEGIES,
    AdapterSettings,
    Strategy,
    StrategyInfo,
    adapter_state_dict,
    apply_strategy,
    format_summary,
    load_adapter_state,
    merge,
    parse_spec,
    restore_strategy,
    strategy_meta,
    trainable_summary,
    valid_forms,
)

__all__ = [
    "STRATEGIES", "AdapterLinear", "AdapterSettings", "Bottleneck", "LoraLinear", "Strategy",
    "StrategyInfo", "adapter_state_dict", "apply_strategy", "format_summary", "inject_adapters",
    "inject_lora", "load_adapter_state", "merge", "merge_lora", "parse_spec", "restore_strategy",
    "strategy_meta", "trainable_summary", "valid_forms",
]
