"""INT8 embedding tables: a graph rewrite of each ``Gather`` that looks rows up in a large float table.

Why: the MatMul weights of a small model are INT8 after quantization, but its word embeddings stay
float and then dominate the file (an SST-2 student distilled from all-MiniLM-L6-v2: 46.9 of 47.8
MB are its 30,522 x 384 fp32 word table). A lookup does no arithmetic, so a table costs no speed,
only bytes; stored as int8 it is a quarter of the size.

Per table [V, H] (symmetric, one scale per row, so a rare token's small row is not crushed by
the largest row of the table): s_v = max|row_v| / 127, q_v = round(row_v / s_v) in int8, and the
lookup ``y = Gather(table, ids)`` becomes
    y = Cast(Gather(q, ids), float) * Gather(s, ids)         (s stored as [V, 1]: broadcasts over H)
so only the looked-up rows are dequantized, per run; the table stays int8 in memory too. Each
element is off by at most s_v / 2 (rounding), i.e. 1/254 of its row's largest value.

A table read by anything but such Gathers (a tied LM head that multiplies by the same initializer)
is left float: rewriting it would change what the other reader sees. plmkit's export folds the
tied head's transpose into an initializer of its own, which the MatMul quantization already makes
int8, so the tied case keeps both copies, each quantized. Tables under ``MIN_ROWS`` rows (the
token-type table: 2 rows in BERT) stay float: their saving is a few KB, and the rewrite adds three
nodes to every run.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .token_int8 import quantize_weight

# Smallest table rewritten: vocabularies and position tables (512 rows in BERT), not type tables.
MIN_ROWS = 256


def quantize_table(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[V, H] float -> (int8 [V, H], scale [V]): the MatMul weights' symmetric rule, one scale per row."""
    q, scale = quantize_weight(table.T, per_channel=True, reduce_range=False)
    return np.ascontiguousarray(q.T), scale


def _readers(graph: onnx.GraphProto) -> Counter[str]:
    """How many node inputs (subgraphs included) and graph outputs read each tensor name."""
    count: Counter[str] = Counter(o.name for o in graph.output)
    for node in graph.node:
        count.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                count.update(_readers(sub))
    return count


def _lookup_tables(graph: onnx.GraphProto, min_rows: int) -> dict[str, onnx.TensorProto]:
    """Float 2-D initializers of at least ``min_rows`` rows whose every reader is a row lookup
    (``Gather`` on axis 0 with the table as its data input)."""
    weights = {t.name: t for t in graph.initializer}
    readers = _readers(graph)
    lookups: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in weights:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            lookups[node.input[0]] += axis == 0
    return {name: weights[name] for name, n in lookups.items()
            if n == readers[name] and weights[name].data_type == TensorProto.FLOAT
            and len(weights[name].dims) == 2 and weights[name].dims[0] >= min_rows and weights[name].dims[1] > 0}


def _lookup_nodes(node: onnx.NodeProto, table: str) -> list[onnx.NodeProto]:
    """``Gather(table, ids) -> y`` as int8 rows, cast, times their scales, still writing ``y``."""
    ids, y = node.input[1], node.output[0]
    n = helper.make_node
    return [n("Gather", [f"{table}_int8", ids], [f"{y}_int8"], name=f"{y}_int8_rows", axis=0),
            n("Cast", [f"{y}_int8"], [f"{y}_rows"], name=f"{y}_cast", to=TensorProto.FLOAT),
            n("Gather", [f"{table}_row_scale", ids], [f"{y}_scale"], name=f"{y}_scales", axis=0),
            n("Mul", [f"{y}_rows", f"{y}_scale"], [y], name=f"{y}_dequantize")]


def quantize_embeddings(model: onnx.ModelProto, min_rows: int = MIN_ROWS) -> tuple[onnx.ModelProto, list[str]]:
    """Rewrite, in place, every lookup in a float table of at least ``min_rows`` rows read only by
    lookups; returns (model, the names of the tables now stored as int8)."""
    graph = model.graph
    tables = _lookup_tables(graph, min_rows)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        rewrite = node.op_type == "Gather" and node.input[0] in tables
        nodes.extend(_lookup_nodes(node, node.input[0]) if rewrite else [node])
    added = []
    for name, tensor in tables.items():
        q, scale = quantize_table(numpy_helper.to_array(tensor))
        added += [numpy_helper.from_array(q, f"{name}_int8"),
                  numpy_helper.from_array(scale.reshape(-1, 1), f"{name}_row_scale")]
    kept = [t for t in graph.initializer if t.name not in tables]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    inputs = [i for i in graph.input if i.name not in tables]   # old IRs list initializers as inputs too
    del graph.input[:]
    graph.input.extend(inputs)
    return model, sorted(tables)
