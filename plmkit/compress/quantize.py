"""INT8 quantization of an fp32 ONNX graph through ``onnxruntime.quantization``.

dynamic: weights INT8 ahead of time, activations quantized per batch at run time
         (``quantize_dynamic``; no calibration data).
static:  weights INT8 and activation ranges fixed from calibration batches
         (``quantize_static``, QDQ format); ``FeatureReader`` feeds real examples encoded
         with the checkpoint's tokenizer and the task's own ``encode``.

Only MatMul / Gemm are quantized, and in static mode only those with a constant weight
(``MatMulConstBOnly``): the attention score matmuls, the additive padding mask (float32
min) and Softmax stay in float, since one INT8 range cannot hold both -3.4e38 and the
scores. Embedding tables are stored as int8 with one scale per row after either method
(``embeddings``, compress/embedding_int8.py): the lookup costs no arithmetic, but in a small model
the float word table is most of the file.
Before quantizing, ORT's ``quant_pre_process`` (symbolic shape inference + graph
optimisation) runs, as ORT recommends, so more MatMuls are seen with known shapes.
Dynamic activation ranges (``activation_ranges``):
  token (default): one range per token row (compress/token_int8.py). A token's result depends on
         that token only, so INT8 outputs do not change with the batch size, the padding or the
         other sentences of a batch: ``quantize``, ``evaluate``, ``bench`` and ``serve`` agree.
  tensor: ORT's ``quantize_dynamic`` (``DynamicQuantizeLinear``): one range over the whole
         [B*T, H] input of each MatMul, padded positions included. Padding widens it (the
         embedding LayerNorm's range grows by ~50% on padded SST-2 batches: a padded position is
         a pad embedding + a position embedding, normalised) and so do the other sentences of the
         batch, so a sentence's prediction depends on its batch (11-17 of 1,000 SST-2 predictions
         changed between batch 1 and 8/32/64). Zeroing the padded positions before each
         quantization removes the first cause only (8-13 still changed): the per-tensor range
         itself is the leak. It allows ORT's fused ``QAttention`` (see below).
Dynamic quantization of an encoder first fuses the graph with ORT's BERT optimizer (one attention
node per layer, ``Gelu``; not the LayerNorm and bias fusions that are slower on CPU, see
``SLOW_FUSIONS``): ``MultiHeadAttention`` with per-token ranges (the Q/K/V MatMuls stay, and are
quantized), ``Attention`` -> ``QAttention`` (Q/K/V in one INT8 GEMM) with per-tensor ranges.
This needs the attention pattern the encoder emits under export (see ``attend`` in
models/layers.py); a layer whose pattern does not match (a layer pruned to zero heads) simply
stays unfused. The attention ORT's fusion does not know (rotary positions, local windows:
ModernBERT) is fused before all of this, on the exporter's own graph, by ``attention_fusion``
(``RotaryEmbedding`` + ``MultiHeadAttention``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..data.features import collate, length_bucketed_batches
from ..errors import PlmkitError
from ..models.onnx_model import ort_errors
from .attention_fusion import FUSED_PREFIX, fuse_attention
from .embedding_int8 import quantize_embeddings
from .token_int8 import quantize_per_token

QUANT_OPS = ["MatMul", "Gemm"]
FUSED_QUANT_OPS = QUANT_OPS + ["Attention"]
# Histogram methods need every calibration batch in one shape (see FeatureReader).
HISTOGRAM_METHODS = ("percentile", "entropy")
CALIBRATE_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
ACTIVATION_TYPES: dict[str, QuantType] = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}
ACTIVATION_RANGES = ("token", "tensor")   # dynamic: one activation range per token row / per tensor
EMBEDDINGS = ("int8", "fp32")             # lookup tables: int8 rows with a scale each, or left float


class FeatureReader(CalibrationDataReader):
    """Calibration batches from token features, padded like inference batches (length-sorted).

    ``fixed_shape``: every batch [batch_size, longest feature] (the last partial batch is
    dropped): ORT's histogram calibrators (percentile, entropy) stack all batches of a tensor.
    """

    def __init__(self, features: Sequence[dict[str, Any]], input_names: Sequence[str], pad_id: int,
                 batch_size: int = 16, fixed_shape: bool = False):
        if not features:
            raise PlmkitError("calibration data is empty")
        self.features, self.names, self.pad_id = features, list(input_names), pad_id
        lengths = [len(f["input_ids"]) for f in features]
        self.length = max(lengths) if fixed_shape else None
        if fixed_shape:
            size = min(batch_size, len(features))
            self.batches = [list(range(i, i + size)) for i in range(0, len(features) - size + 1, size)]
        else:
            self.batches = length_bucketed_batches(lengths, batch_size, seed=0, shuffle=False)
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        idx = next(self._it, None)
        if idx is None:
            return None
        batch = collate([{k: v for k, v in self.features[i].items() if k in self.names} for i in idx],
                        self.pad_id)
        ids = batch["input_ids"]
        feeds = {"input_ids": ids, "attention_mask": batch.get("attention_mask", (ids != self.pad_id).long()),
                 "token_type_ids": batch.get("token_type_ids", ids * 0)}
        out = {k: feeds[k].numpy().astype(np.int64) for k in self.names}
        if self.length is not None:         # pad on to the fixed length: pad id / 0
            extra = ((0, 0), (0, self.length - ids.size(1)))
            out = {k: np.pad(v, extra, constant_values=self.pad_id if k == "input_ids" else 0)
                   for k, v in out.items()}
        return out

    def rewind(self) -> None:
        self._it = iter(self.batches)


def preprocess(src: Path, dst: Path) -> None:
    """ORT's recommended pre-processing: symbolic shape inference, then graph optimisation."""
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=False, auto_merge=True)


def _empty_weight_nodes(file: Path) -> list[str]:
    """Nodes reading a zero-size initializer (a layer pruned to 0 heads / 0 FFN units):
    their weights have no range to quantize, so they stay float (they cost nothing anyway)."""
    graph = onnx.load(str(file)).graph
    empty = {t.name for t in graph.initializer if 0 in t.dims}
    return [n.name for n in graph.node if empty.intersection(n.input)]


@dataclass
class QuantOptions:
    per_channel: bool = True
    reduce_range: bool = False           # 7-bit weights: avoids U8S8 saturation on AVX2 CPUs without VNNI
    activation_type: str = "quint8"      # static only
    calibrate_method: str = "minmax"     # static only
    fuse: bool = True                    # dynamic, encoders only: ORT's BERT fusions first
    activation_ranges: str = "token"     # dynamic: "token" (batch-invariant) or "tensor" (ORT's)
    embeddings: str = "int8"             # either method: lookup tables as int8 rows ("fp32": left float)


def is_encoder_graph(file: Path) -> bool:
    """An encoder's graph: plmkit's BERT-style graphs take ``token_type_ids``; a rotary encoder's
    (ModernBERT: none) is known by the attention ``attention_fusion`` already fused in it. Either
    takes ORT's encoder fusions (a rotary graph gains ``Gelu``: its Erf pattern is not fused by
    ONNX Runtime's session optimizer, only by this offline pass)."""
    graph = onnx.load(str(file), load_external_data=False).graph
    return any(i.name == "token_type_ids" for i in graph.input) or \
        any(n.op_type == "MultiHeadAttention" and n.name.startswith(FUSED_PREFIX) for n in graph.node)


def fuse_encoder(src: Path, dst: Path, multi_head: bool = False) -> dict[str, int]:
    """ORT's BERT graph fusions (head count and width read per layer from the graph, so pruned
    layers of different sizes fuse too). ``multi_head``: ``MultiHeadAttention`` nodes that take
    the Q/K/V projections (left as MatMuls) instead of ``Attention`` nodes that do them.
    Returns the count of each fused operator."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    # The offline twins of the session-time fusions in onnx_model.SLOW_FUSIONS: left out likewise.
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
    options.enable_bias_gelu = False
    options.use_multi_head_attention = multi_head
    # A pruned layer's q/k/v are narrower than the hidden size; the attention fusion handles that
    # (outputs are checked against torch in the tests) but logs a warning per layer. Keep it quiet.
    # ORT puts onnxruntime/transformers on sys.path, so the module (and its logger) is "fusion_attention".
    fusion_log = logging.getLogger("fusion_attention")
    level = fusion_log.level
    fusion_log.setLevel(logging.ERROR)
    try:
        model = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                               optimization_options=options)
    finally:
        fusion_log.setLevel(level)
    model.save_model_to_file(str(dst))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def quantize_dynamic_file(src: Path, dst: Path, reader: FeatureReader | None, o: QuantOptions) -> None:
    if o.activation_ranges not in ACTIVATION_RANGES:
        raise PlmkitError(f"unknown activation ranges '{o.activation_ranges}' (choose {', '.join(ACTIVATION_RANGES)})")
    per_token = o.activation_ranges == "token"
    ops = QUANT_OPS
    if o.fuse and is_encoder_graph(src):
        fused = src.with_name("model.fused.onnx")
        fuse_encoder(src, fused, multi_head=per_token)
        src, ops = fused, FUSED_QUANT_OPS
    if per_token:
        model, _ = quantize_per_token(onnx.load(str(src)), o.per_channel, o.reduce_range)
        onnx.save(model, str(dst))
        return
    # Fused (com.microsoft) nodes have no ONNX type inference: outputs default to float.
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=ops, per_channel=o.per_channel,
                     reduce_range=o.reduce_range, weight_type=QuantType.QInt8,
                     nodes_to_exclude=_empty_weight_nodes(src),
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def quantize_static_file(src: Path, dst: Path, reader: FeatureReader | None, o: QuantOptions) -> None:
    if reader is None:
        raise PlmkitError("static quantization needs calibration data (--calibration FILE)")
    quantize_static(
        str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANT_OPS,
        per_channel=o.per_channel, reduce_range=o.reduce_range, activation_type=ACTIVATION_TYPES[o.activation_type],
        weight_type=QuantType.QInt8, calibrate_method=CALIBRATE_METHODS[o.calibrate_method],
        nodes_to_exclude=_empty_weight_nodes(src),
        # MatMul weights are [in, out]: per-channel scales run along the output axis.
        extra_options={"MatMulConstBOnly": True, "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})


METHODS = {"dynamic": quantize_dynamic_file, "static": quantize_static_file}


def quantize_embedding_file(file: Path) -> list[str]:
    """Store ``file``'s embedding tables as int8 (in place); returns the tables' names."""
    model, tables = quantize_embeddings(onnx.load(str(file)))
    if tables:
        onnx.save(model, str(file))
    return tables


def _fuse_rotary_attention(src: Path, dst: Path) -> Path:
    """``src`` with its rotary attention fused (``attention_fusion``), before ORT's pre-processing
    rearranges the exporter's pattern; ``src`` itself when there is none (BERT: ORT fuses it later)."""
    model = onnx.load(str(src))
    if not fuse_attention(model):
        return src
    onnx.save(model, str(dst))
    return dst


def quantize_file(src: Path, dst: Path, method: str, work: Path, reader: FeatureReader | None = None,
                  options: QuantOptions | None = None) -> list[str]:
    """Pre-process ``src`` into ``work``, then quantize it into ``dst`` with ``method``.
    Returns the embedding tables stored as int8 (none with ``embeddings="fp32"``)."""
    o = options or QuantOptions()
    if method not in METHODS:
        raise PlmkitError(f"unknown quantization method '{method}' (choose {', '.join(METHODS)})")
    if o.embeddings not in EMBEDDINGS:
        raise PlmkitError(f"unknown embeddings setting '{o.embeddings}' (choose {', '.join(EMBEDDINGS)})")
    pre = work / "model.pre.onnx"
    try:
        if method == "dynamic" and o.fuse:
            src = _fuse_rotary_attention(src, work / "model.attention.onnx")
        preprocess(src, pre)
        METHODS[method](pre, dst, reader, o)
    except ort_errors() as e:
        raise PlmkitError(f"{src}: ONNX Runtime failed while quantizing ({str(e).splitlines()[0][:200]})") from None
    return quantize_embedding_file(dst) if o.embeddings == "int8" else []
