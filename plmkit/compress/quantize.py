"""INT8 quantization of an fp32 ONNX graph through ``onnxruntime.quantization``.

dynamic: weights INT8 ahead of time, activations quantized per batch at run time
         (``quantize_dynamic``; no calibration data).
static:  weights INT8 and activation ranges fixed from calibration batches
         (``quantize_static``, QDQ format); ``FeatureReader`` feeds real examples encoded
         with the checkpoint's tokenizer and the task's own ``encode``.

Only MatMul / Gemm are quantized, and in static mode only those with a constant weight
(``MatMulConstBOnly``): the attention score matmuls, the additive padding mask (float32
min) and Softmax stay in float, since one INT8 range cannot hold both -3.4e38 and the
scores. Embedding tables stay fp32 too: a lookup costs no arithmetic.
Before quantizing, ORT's ``quant_pre_process`` (symbolic shape inference + graph
optimisation) runs, as ORT recommends, so more MatMuls are seen with known shapes.
"""
from __future__ import annotations

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
from .onnx_model import ort_errors

QUANT_OPS = ["MatMul", "Gemm"]
# Histogram methods need every calibration batch in one shape (see FeatureReader).
HISTOGRAM_METHODS = ("percentile", "entropy")
CALIBRATE_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
ACTIVATION_TYPES: dict[str, QuantType] = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}


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


def quantize_dynamic_file(src: Path, dst: Path, reader: FeatureReader | None, o: QuantOptions) -> None:
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=QUANT_OPS, per_channel=o.per_channel,
                     reduce_range=o.reduce_range, weight_type=QuantType.QInt8,
                     nodes_to_exclude=_empty_weight_nodes(src))


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


def quantize_file(src: Path, dst: Path, method: str, work: Path, reader: FeatureReader | None = None,
                  options: QuantOptions | None = None) -> None:
    """Pre-process ``src`` into ``work``, then quantize it into ``dst`` with ``method``."""
    if method not in METHODS:
        raise PlmkitError(f"unknown quantization method '{method}' (choose {', '.join(METHODS)})")
    pre = work / "model.pre.onnx"
    try:
        preprocess(src, pre)
        METHODS[method](pre, dst, reader, options or QuantOptions())
    except ort_errors() as e:
        raise PlmkitError(f"{src}: ONNX Runtime failed while quantizing ({str(e).splitlines()[0][:200]})") from None
