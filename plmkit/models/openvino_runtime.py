"""An OpenVINO compiled model behind the part of ONNX Runtime's ``InferenceSession`` API that
``OnnxModel`` uses (``get_inputs``, ``get_outputs``, ``run``), so one model class, and every task,
stage and backend written for it, runs either engine.

Why OpenVINO at all (benchmarks/RESULTS.md, "OpenVINO backend"): on this project's 2-core AVX-512
CPU, OpenVINO ran plmkit's own INT8 graphs (NNCF-quantized, plmkit/compress/openvino_quant.py)
faster at batch 32 than ONNX Runtime ran plmkit's INT8 graphs. Part of that is precision: on a CPU
with AVX512-BF16 or AMX, OpenVINO's default inference precision for the layers left in float
(LayerNorm, Softmax, GELU) is bf16, not fp32. ``precision_hint`` keeps that default ("auto");
"f32" asks for fp32.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import PlmkitError

OPENVINO_FILE = "model.xml"         # the IR: model.xml (graph) + model.bin (weights)
MISSING = "the OpenVINO backend needs the 'openvino' package (pip install 'plmkit[openvino]')"


@dataclass(frozen=True)
class Port:
    """What ``InferenceSession.get_inputs()`` items give: the name."""
    name: str


def openvino_errors() -> tuple[type[Exception], ...]:
    """What OpenVINO raises on a bad model or input (its errors are plain RuntimeErrors)."""
    return (RuntimeError,)


class OpenVinoSession:
    """``compile_model(file, "CPU")`` with ``threads`` inference threads and the latency hint (one
    request at a time, all cores on it: how evaluate, bench and the server's model thread call it)."""

    def __init__(self, file: str | Path, threads: int | None = None, precision_hint: str = "auto"):
        try:
            import openvino
        except ImportError:
            raise PlmkitError(f"{file}: {MISSING}") from None
        config: dict[str, str] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        if precision_hint != "auto":
            config["INFERENCE_PRECISION_HINT"] = precision_hint
        try:
            self.compiled = openvino.Core().compile_model(str(file), "CPU", config)
        except openvino_errors() as e:
            raise PlmkitError(f"{file}: OpenVINO cannot load the model ({str(e).splitlines()[0][:160]})") from None
        self.request = self.compiled.create_infer_request()
        self._inputs = [Port(p.get_any_name()) for p in self.compiled.inputs]
        self._outputs = [Port(p.get_any_name()) for p in self.compiled.outputs]

    def get_inputs(self) -> list[Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[Port]:
        return list(self._outputs)

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The named outputs (all when None) as numpy arrays the caller owns (copied out of the
        request's buffers, which the next call overwrites)."""
        try:
            result = self.request.infer(feeds, share_inputs=True)
        except openvino_errors() as e:
            raise PlmkitError(f"OpenVINO inference failed ({str(e).splitlines()[0][:200]})") from None
        by_name: dict[str, Any] = {port.get_any_name(): value for port, value in result.items()}
        names = output_names or [p.name for p in self._outputs]
        return [np.array(by_name[n], copy=True) for n in names]
