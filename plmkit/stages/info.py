"""Show a checkpoint's architecture, parameter count, per-layer sizes and lineage."""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..config import option
from ..loading import describe


@dataclass
class Config:
    model: str = option(help="model directory: plmkit or local HF BERT/GPT-2 checkpoint, adapter, ONNX export",
                        positional=True)
    json: bool = option(False, help="print JSON instead of a table")


def run(cfg: Config) -> int:
    info = describe(cfg.model)
    if cfg.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    lineage = info.pop("lineage")
    rows = [
        ("path", info["path"]), ("format", info["format"]), ("family", info["family"]), ("task", info["task"]),
        ("parameters", f"{info['parameters']:,}"), ("size on disk", f"{info['size_bytes'] / 2**20:.1f} MiB"),
        ("layers", info["layers"]), ("hidden", info["hidden_size"]), ("head dim", info["head_dim"]),
        ("heads/layer", " ".join(map(str, info["heads_per_layer"]))),
        ("ffn/layer", " ".join(map(str, info["ffn_per_layer"]))),
        ("vocab", info["vocab_size"]), ("max positions", info["max_position"]),
    ]
    if info["labels"]:
        rows.append(("labels", ", ".join(map(str, info["labels"]))))
    if info["embedding_size"]:
        rows.append(("embedding size", info["embedding_size"]))
    if info["share_layers"]:
        rows.append(("shared layers", "one layer's weights, reused by every layer"))
    for key in ("stage", "parent", "created"):
        if lineage.get(key):
            rows.append((key, lineage[key]))
    for name, value in (lineage.get("metrics") or {}).items():
        rows.append((f"metric {name}", value))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
