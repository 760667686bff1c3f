"""The INT8 engines ``plmkit quantize`` can write for: one record per engine and method.

A record names the ``--engine`` value, the method (``--method``; an engine with one method ignores
the option), the output's format (plmkit.json "format", the loader of ``plmkit.loading`` that reads
it), how calibration examples are fed (``CALIBRATION``), the function that writes the INT8 graph,
the modules it needs (and the pip extra that installs them) and the candidates ``plmkit compress``
quantizes with it (``CANDIDATES``: those of the installed engines are tried). Adding an engine is
one record here and one quantize function beside the others.

Importing this module imports no engine: ONNX Runtime, OpenVINO and NNCF are imported inside the
quantize functions, so ``plmkit quantize --help`` works without them.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import PlmkitError

# none: no data needed (a calibration file, if given, is only the default evaluation file);
# per_batch: padded batches of --batch-size; per_example: one example at a time (as optimum-intel feeds NNCF).
CALIBRATION = ("none", "per_batch", "per_example")

# (fp32 model.onnx, int8 graph file, scratch directory, calibration reader or None, the stage's options)
# -> how it was done (plmkit.json "quantization")
QuantizeFn = Callable[[Path, Path, Path, Any, Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Engine:
    name: str                  # --engine
    method: str                # --method (and plmkit.json quantization.method)
    format: str                # the output's format: "onnx" | "openvino"
    calibration: str           # one of CALIBRATION
    quantize: QuantizeFn
    flag: str                  # the option that asked for calibration, as the error message names it
    needs: tuple[str, ...]     # the modules quantize and its output's loader import
    extra: str                 # the pip extra that installs them
    # plmkit compress: its candidates, name -> plmkit quantize options besides --engine and --method
    # ({}: compress does not try this engine)
    candidates: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.needs)


def _onnxruntime(fp32: Path, int8: Path, work: Path, reader: Any, settings: Mapping[str, Any],
                 method: str) -> dict[str, Any]:
    from ..config import to_dict
    from .quantize import QuantOptions, quantize_file

    options = QuantOptions(**{f.name: settings[f.name] for f in fields(QuantOptions)})
    tables = quantize_file(fp32, int8, method, work, reader, options)
    return {"engine": "onnxruntime", "method": method, "weights": "qint8", **to_dict(options),
            "int8_tables": tables, "format": "QDQ" if method == "static" else "QOperator"}


def _openvino(fp32: Path, int8: Path, work: Path, reader: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    from .openvino_quant import quantize_openvino

    quantize_openvino(fp32, int8, reader, subset_size=settings["calibration_size"])
    return {"engine": "openvino", "method": "static", "tool": "nncf", "preset": "mixed",
            "model_type": "transformer", "weights": "qint8", "format": "OpenVINO IR"}


ORT_NEEDS, OPENVINO_NEEDS = ("onnx", "onnxruntime"), ("onnx", "onnxruntime", "openvino", "nncf")
ENGINES = (
    Engine("onnxruntime", "dynamic", "onnx", "none", partial(_onnxruntime, method="dynamic"),
           "--method dynamic", ORT_NEEDS, "plmkit[onnx]",
           {"ort-token": {"activation_ranges": "token"}, "ort-tensor": {"activation_ranges": "tensor"}}),
    Engine("onnxruntime", "static", "onnx", "per_batch", partial(_onnxruntime, method="static"),
           "--method static", ORT_NEEDS, "plmkit[onnx]", {"ort-static": {}}),
    Engine("openvino", "static", "openvino", "per_example", _openvino, "--engine openvino", OPENVINO_NEEDS,
           "plmkit[openvino]", {"openvino": {}}),
)
ENGINE_NAMES = list(dict.fromkeys(e.name for e in ENGINES))


@dataclass(frozen=True)
class Candidate:
    """One way ``plmkit compress`` quantizes a model: its name, its engine record and the plmkit
    quantize options that select them."""
    name: str
    engine: Engine
    settings: Mapping[str, Any] = field(compare=False)

    @property
    def calibrated(self) -> bool:       # reads --calibration
        return self.engine.calibration != "none"


def _selecting(record: Engine) -> dict[str, Any]:
    """The quantize options that pick ``record``: --engine, and --method where the engine has several."""
    methods = [e.method for e in ENGINES if e.name == record.name]
    return {"engine": record.name, **({"method": record.method} if len(methods) > 1 else {})}


CANDIDATES = tuple(Candidate(name, e, {**_selecting(e), **options})
                   for e in ENGINES for name, options in e.candidates.items())


def engine(name: str, method: str) -> Engine:
    """The record for ``--engine name --method method``; an engine with a single method ignores ``method``."""
    found = [e for e in ENGINES if e.name == name]
    if not found:
        raise PlmkitError(f"unknown engine '{name}' (choose {', '.join(ENGINE_NAMES)})")
    if len(found) == 1:
        return found[0]
    for e in found:
        if e.method == method:
            return e
    raise PlmkitError(f"engine '{name}' has no method '{method}' (choose {', '.join(e.method for e in found)})")


def calibration_reader(record: Engine, features: list[dict[str, Any]] | None, inputs: list[str], tok: Any,
                       batch_size: int, calibrate_method: str) -> Any:
    """The calibration examples as the engine takes them (None without any): ``FeatureReader`` batches
    of ``batch_size``, or one example at a time for a per-example engine (OpenVINO / NNCF)."""
    if not features:
        return None
    from ..tokenizer import pad_id
    from .quantize import HISTOGRAM_METHODS, FeatureReader

    per_example = record.calibration == "per_example"
    return FeatureReader(features, inputs, pad_id(tok), 1 if per_example else batch_size,
                         fixed_shape=calibrate_method in HISTOGRAM_METHODS and not per_example)
