"""Fuse the attention ORT's BERT optimizer leaves as separate nodes: rotary models (ModernBERT).

ORT's own fusion (``quantize.fuse_encoder``) recognises BERT's attention only. A layer with rotary
positions or a local window stays, after it, a chain of about 30 small nodes: per head layout
Reshape + Transpose of q, k and v, the rotation (two Slices, Neg, Concat, two Muls and an Add, on
q and on k), the score MatMul, Div, the mask's Add, Softmax, the second MatMul, Transpose and
Reshape; each reads and writes a [B, h, T, d] or [B, h, T, T] tensor. This pass rewrites each such
layer into ORT's contrib operators:

    q, k  [B, T, H] --RotaryEmbedding--> --+
    v     [B, T, H] ----------------------+--> MultiHeadAttention(attention_bias) --> [B, T, H]

``RotaryEmbedding`` takes the graph's own cos / sin tables (computed from the positions, as
exported: the first half of each row, since rotate-half tables repeat it) with positions
0..T-1; the additive mask (padding, or band and padding for a local layer) becomes
``attention_bias`` [B, 1, T, T]. Only the pattern plmkit's exporter emits is matched (see
``attend`` and ``apply_rotary`` in models/layers.py); anything else is left as it is, so a graph
this pass does not understand stays correct, only slower; attention without rotary positions is
left to ORT's fusion, which knows it (and packs BERT's q, k and v into one INT8 GEMM). The result is checked against PyTorch
by the tests and, in ``quantize``, by its --eval metric.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .token_int8 import MS_DOMAIN, declare_ms_domain

FUSED_PREFIX = "attnfuse_"      # the names of the attention nodes this pass adds start with it


@dataclass
class _Layer:
    """One matched attention: the projections it reads and the tensor it writes."""
    q: str                          # [B, T, H] outputs of the q / k / v projections
    k: str
    v: str
    rotary: tuple[str, str]         # (cos, sin) [.., T, d] tables of q's and k's rotation
    mask: str                       # additive mask, [B, 1, 1|T, T]
    out: onnx.NodeProto             # the Reshape to [B, T, H] that the output projection reads
    heads: int


class _Graph:
    """Who makes and who reads each tensor, and the constants."""

    def __init__(self, graph: onnx.GraphProto):
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.consts = {t.name: t for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = n.attribute[0].t

    def node(self, name: str, op: str) -> onnx.NodeProto | None:
        """The node of type ``op`` that makes ``name``, looking through Casts (the exporter's
        fp32 ``.float()`` of fp32 tensors)."""
        n = self.producer.get(name)
        while n is not None and n.op_type == "Cast" and op != "Cast":
            n = self.producer.get(n.input[0])
        return n if n is not None and n.op_type == op else None

    def value(self, name: str) -> np.ndarray | None:
        t = self.consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def only_user(self, name: str, op: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None


def _attr(node: onnx.NodeProto | None, name: str):
    a = next((a for a in node.attribute if a.name == name), None) if node is not None else None
    return None if a is None else helper.get_attribute_value(a)


def _heads_input(g: _Graph, name: str) -> tuple[str, int, int] | None:
    """[B, h, T, d] made by Transpose(0, 2, 1, 3) of Reshape([B, T, H] -> [B, T, h, d]) ->
    (the [B, T, H] tensor, h, d); h and d are the constants of the Reshape's target shape."""
    t = g.node(name, "Transpose")
    r = g.node(t.input[0], "Reshape") if _attr(t, "perm") == [0, 2, 1, 3] else None
    target = g.node(r.input[1], "Concat") if r is not None else None
    if target is None or len(target.input) != 4:
        return None
    h, d = g.value(target.input[2]), g.value(target.input[3])
    if h is None or d is None or h.size != 1 or d.size != 1:
        return None
    return r.input[0], int(h.reshape(())), int(d.reshape(()))


def _unrotated(g: _Graph, name: str) -> tuple[str, str, str] | None:
    """x * cos + cat(-x[.., d/2:], x[.., :d/2]) * sin (``apply_rotary``) -> (x, cos, sin)."""
    add = g.node(name, "Add")
    muls = [g.node(i, "Mul") for i in add.input] if add is not None else [None]
    if None in muls:
        return None
    for plain, turned in (muls, muls[::-1]):
        cat = g.node(turned.input[0], "Concat")
        neg = g.node(cat.input[0], "Neg") if cat is not None and len(cat.input) == 2 else None
        if neg is None:
            continue
        x = plain.input[0]
        slices = [g.node(neg.input[0], "Slice"), g.node(cat.input[1], "Slice")]
        if None not in slices and all(s.input[0] == x for s in slices):
            return x, plain.input[1], turned.input[1]
    return None


def _match(g: _Graph, softmax: onnx.NodeProto) -> _Layer | None:
    """The attention around ``softmax``, or None when it is not the exporter's pattern."""
    add = g.node(softmax.input[0], "Add") if _attr(softmax, "axis") in (-1, 3) else None
    div = g.node(add.input[0], "Div") if add is not None else None
    scores = g.node(div.input[0], "MatMul") if div is not None else None
    scale = g.value(div.input[1]) if div is not None else None
    kt = g.node(scores.input[1], "Transpose") if scores is not None else None
    if scale is None or scale.size != 1 or _attr(kt, "perm") != [0, 1, 3, 2]:
        return None
    rq, rk = _unrotated(g, scores.input[0]), _unrotated(g, kt.input[0])
    if rq is None or rk is None or rq[1:] != rk[1:]:
        return None      # no rotary: BERT's pattern, which ORT's own fusion takes (QAttention and all)
    q, k = _heads_input(g, rq[0]), _heads_input(g, rk[0])
    ctx = g.only_user(softmax.output[0], "MatMul")
    v = _heads_input(g, ctx.input[1]) if ctx is not None else None
    back = g.only_user(ctx.output[0], "Transpose") if ctx is not None else None
    out = g.only_user(back.output[0], "Reshape") if _attr(back, "perm") == [0, 2, 1, 3] else None
    if None in (q, k, v, out) or len({(x[1], x[2]) for x in (q, k, v)}) != 1:
        return None                # (grouped-query layers differ in k / v heads: left as they are)
    heads, d = q[1], q[2]
    if not math.isclose(float(scale.reshape(())), math.sqrt(d), rel_tol=1e-6):
        return None
    return _Layer(q[0], k[0], v[0], rq[1:], add.input[1], out, heads)


class _Builder:
    """The new nodes and constants; tables and biases shared by layers are built once."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.consts: dict[str, onnx.TensorProto] = {}
        self.memo: dict[tuple[str, str], str] = {}

    def const(self, name: str, values: list[int]) -> str:
        name = f"{FUSED_PREFIX}{name}"
        self.consts.setdefault(name, numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def add(self, op: str, inputs: list[str], name: str, domain: str | None = None, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, domain=domain, **attrs))
        return name

    def half_table(self, table: str) -> str:
        """[.., T, d] rotate-half table -> [T, d / 2], RotaryEmbedding's cache."""
        key = ("half", table)
        if key not in self.memo:
            shape = self.add("Shape", [table], f"{table}/attnfuse_shape")
            width = self.add("Slice", [shape, self.const("minus1", [-1]), self.const("max", [2 ** 62])],
                             f"{table}/attnfuse_width")
            half = self.add("Div", [width, self.const("two", [2])], f"{table}/attnfuse_half")
            first = self.add("Slice", [table, self.const("zero", [0]), half, self.const("minus1", [-1])],
                             f"{table}/attnfuse_first")
            rows = self.add("Concat", [self.const("minus1", [-1]), half], f"{table}/attnfuse_rows", axis=0)
            self.memo[key] = self.add("Reshape", [first, rows], f"{table}/attnfuse_cache")
        return self.memo[key]

    def square_bias(self, mask: str, tokens: str) -> str:
        """[B, 1, 1|T, T] additive mask -> [B, 1, T, T] (MultiHeadAttention's attention_bias);
        ``tokens``: a [B, T, H] tensor, for T."""
        key = ("bias", mask)
        if key not in self.memo:
            lead = self.add("Slice", [self.add("Shape", [mask], f"{mask}/attnfuse_shape"), self.const("zero", [0]),
                                      self.const("two", [2])], f"{mask}/attnfuse_lead")
            t = self.add("Slice", [self.add("Shape", [tokens], f"{mask}/attnfuse_tshape"), self.const("one", [1]),
                                   self.const("two", [2])], f"{mask}/attnfuse_t")
            target = self.add("Concat", [lead, t, t], f"{mask}/attnfuse_target", axis=0)
            self.memo[key] = self.add("Expand", [mask, target], f"{mask}/attnfuse_bias")
        return self.memo[key]


def fuse_attention(model: onnx.ModelProto) -> int:
    """Rewrite every matched attention of ``model`` in place; returns how many were fused."""
    g = _Graph(model.graph)
    layers = [m for m in (_match(g, n) for n in model.graph.node if n.op_type == "Softmax") if m is not None]
    if not layers:
        return 0
    b = _Builder()
    for i, layer in enumerate(layers):
        cos, sin = (b.half_table(t) for t in layer.rotary)
        q, k = (b.add("RotaryEmbedding", [x, b.const("zero", [0]), cos, sin], f"{FUSED_PREFIX}{i}_{n}",
                      domain=MS_DOMAIN, num_heads=layer.heads, interleaved=0) for x, n in ((layer.q, "q"), (layer.k, "k")))
        bias = b.square_bias(layer.mask, layer.q)
        b.nodes.append(helper.make_node("MultiHeadAttention", [q, k, layer.v, "", "", bias], [layer.out.output[0]],
                                        name=f"{FUSED_PREFIX}{i}_mha", domain=MS_DOMAIN, num_heads=layer.heads))
    replaced = {id(layer.out) for layer in layers}    # the rest of each old chain is read by nothing now
    nodes = _prune([n for n in model.graph.node if id(n) not in replaced] + b.nodes,
                   {o.name for o in model.graph.output})
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(b.consts.values())
    declare_ms_domain(model)
    return len(layers)


def _prune(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` without those whose outputs nothing reads (repeated until none is left), in
    topological order (the new nodes come last in ``nodes``; ORT wants producers first)."""
    while True:
        read = {i for n in nodes for i in n.input} | outputs
        alive = [n for n in nodes if any(o in read for o in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    made = {o for n in nodes for o in n.output}
    ready: set[str] = set()
    ordered: list[onnx.NodeProto] = []
    while nodes:
        rest = []
        for n in nodes:
            if all(i == "" or i not in made or i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(nodes):
            raise ValueError("attention fusion: the rewritten graph has a cycle")
        nodes = rest
    return ordered
