"""Dynamic INT8 with one activation range per token: a graph rewrite of MatMuls with constant weights.

Why not ORT's ``quantize_dynamic``: its ``DynamicQuantizeLinear`` takes one range per *tensor*,
i.e. over every token of the whole [B, T, H] batch, padding included. A sentence's INT8 result
then depends on which sentences share its batch and how far they are padded (a fine-tuned
MiniLM on 1,000 SST-2 sentences: 11-17 predictions change between batch 1 and batch 8/32/64).
Here each row (one token's activation vector) gets its own scale, so a token's result depends on
that token alone: padding and neighbours cannot move it, and ``evaluate``, ``bench``, ``serve``'s
dynamic batches and ``quantize``'s own accuracy agree at any batch size.

Per MatMul ``y = x @ W`` (W constant, [K, N]):
  weights:     int8, symmetric, one scale per output column (or per tensor), computed here once;
  activations: per row r, s_r = max|x_r| / 127 and q = round(x / s_r) + 128 (uint8; the offset
               is a *scalar* zero point, which ORT's integer kernels need: a per-row zero point is
               not supported by ``MatMulInteger`` on CPU; int8 x int8 is, but ~10x slower);
  product:     ``MatMulIntegerToFloat(q, Wq, 1, w_scale, 128)`` (u8 x s8 GEMM, the VNNI path),
               then times s_r. One quantization of x serves every MatMul that reads x (Q, K, V).
The quantization is six small nodes per activation (max |x| along the last axis, the scale,
x / scale, ``QuantizeLinear`` with scale 1 and zero point 128). Gemm nodes (pooler and classifier on [B, H]) and MatMuls
of two activations (attention scores) stay float.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"


def quantize_weight(w: np.ndarray, per_channel: bool, reduce_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] float -> (int8 [K, N], scale [N]); 7-bit with ``reduce_range`` (AVX2 without VNNI)."""
    qmax = 63 if reduce_range else 127
    peak = np.abs(w).max(axis=0) if per_channel else np.full(w.shape[1], np.abs(w).max())
    scale = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    return np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8), scale


class _Builder:
    """New nodes and constants, with names derived from the tensors they serve."""

    def __init__(self, graph: onnx.GraphProto):
        self.consts = {t.name for t in graph.initializer}
        self.new_consts: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.consts:
            self.consts.add(name)
            self.new_consts.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def quantize_rows(self, x: str) -> tuple[list[onnx.NodeProto], str, str]:
        """Nodes quantizing ``x`` [..., K] per row; returns (nodes, uint8 q [..., K], scale [..., 1])."""
        p = f"{x}_rowq"
        n = helper.make_node
        inv, tiny = self.const("rowq_inv127", np.float32(1 / 127)), self.const("rowq_tiny", np.float32(1e-30))
        one, offset = self.const("rowq_one", np.float32(1.0)), self.const("rowq_offset", np.uint8(128))
        nodes = [
            n("Abs", [x], [f"{p}_abs"]),
            n("ReduceMax", [f"{p}_abs"], [f"{p}_peak"], axes=[-1], keepdims=1),
            n("Mul", [f"{p}_peak", inv], [f"{p}_s"]),
            n("Max", [f"{p}_s", tiny], [f"{p}_scale"]),                 # [..., 1]; an all-zero row stays 0
            n("Div", [x, f"{p}_scale"], [f"{p}_unit"]),                 # each row within [-127, 127]
            n("QuantizeLinear", [f"{p}_unit", one, offset], [f"{p}_q"]),  # round, + 128, as uint8
        ]
        return nodes, f"{p}_q", f"{p}_scale"


def _constant_weight(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The [K, N] float weight of ``x @ W`` (None when W is an activation, not 2-D, or empty)."""
    if node.op_type != "MatMul" or node.input[1] not in weights:
        return None
    w = weights[node.input[1]]
    if w.data_type != TensorProto.FLOAT or len(w.dims) != 2 or 0 in w.dims:
        return None
    return numpy_helper.to_array(w)


def quantize_per_token(model: onnx.ModelProto, per_channel: bool = True,
                       reduce_range: bool = False) -> tuple[onnx.ModelProto, int]:
    """Rewrite every MatMul with a constant, non-empty weight in place (a layer pruned to nothing
    keeps its zero-size float MatMul). Returns (model, number of MatMuls quantized)."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    b = _Builder(graph)
    quantized: dict[str, tuple[str, str]] = {}       # activation -> (q, scale), emitted before first use
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        w = _constant_weight(node, weights)
        if w is None:
            nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        if x not in quantized:
            qnodes, q, s = b.quantize_rows(x)
            nodes.extend(qnodes)
            quantized[x] = (q, s)
        q, s = quantized[x]
        wq, ws = quantize_weight(w, per_channel, reduce_range)
        one = b.const("rowq_one", np.float32(1.0))
        nodes.append(helper.make_node(
            "MatMulIntegerToFloat", [q, b.const(f"{y}_wq", wq), one, b.const(f"{y}_ws", ws), "rowq_offset"],
            [f"{y}_unscaled"], name=f"{y}_rowq", domain=MS_DOMAIN))
        nodes.append(helper.make_node("Mul", [f"{y}_unscaled", s], [y], name=f"{y}_rowscale"))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in [*graph.initializer, *b.new_consts] if t.name in used]
    dropped = {t.name for t in graph.initializer} - used       # the float weights now stored as int8
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in dropped]  # old IRs list initializers as inputs too
    del graph.input[:]
    graph.input.extend(inputs)
    if count:
        declare_ms_domain(model)
    return model, count


def declare_ms_domain(model: onnx.ModelProto) -> None:
    """Import ONNX Runtime's contrib operator set (com.microsoft) once, for the nodes added from it."""
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
