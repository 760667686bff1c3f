"""INT8 quantization of an fp32 ONNX graph for OpenVINO, through NNCF (``quantize --engine openvino``).

OpenVINO reads plmkit's fp32 export as it is, and ``nncf.quantize`` inserts weight and activation
quantizers (static: activation ranges from calibration examples), with the settings optimum-intel's
default ``OVQuantizationConfig`` passes it, so plmkit's OpenVINO model is the one a user of
optimum-intel would get from the same graph: the transformer model type (attention score matmuls
quantized, LayerNorm / Softmax / GELU left in float), the mixed preset (symmetric weights,
asymmetric activations), SmoothQuant and fast bias correction. Calibration examples go in one at a
time (optimum-intel's way; NNCF's statistics then never see a padded position).
The result is OpenVINO IR (model.xml + model.bin), run by plmkit.models.openvino_runtime.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import PlmkitError
from ..models.openvino_runtime import MISSING, openvino_errors
from .quantize import FeatureReader


def _examples(reader: FeatureReader) -> Iterator[dict[str, np.ndarray]]:
    reader.rewind()
    return iter(reader.get_next, None)


def quantize_openvino(src: Path, dst: Path, reader: FeatureReader | None, subset_size: int) -> None:
    """``src`` (fp32 model.onnx) -> ``dst`` (model.xml, its weights beside it in model.bin)."""
    if reader is None:
        raise PlmkitError("--engine openvino quantizes weights and activations: it needs calibration data "
                          "(--calibration FILE)")
    try:
        import nncf
        import openvino
    except ImportError:
        raise PlmkitError(MISSING) from None
    logging.getLogger("nncf").setLevel(logging.WARNING)      # its INFO lines repeat what the bars show
    try:
        model = openvino.Core().read_model(str(src))
        quantized = nncf.quantize(
            model, nncf.Dataset(list(_examples(reader))), preset=nncf.QuantizationPreset.MIXED,
            model_type=nncf.ModelType.TRANSFORMER, subset_size=subset_size, fast_bias_correction=True,
            advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.DISABLE))
        openvino.save_model(quantized, str(dst))
    except openvino_errors() as e:
        raise PlmkitError(f"{src}: OpenVINO / NNCF failed while quantizing ({str(e).splitlines()[0][:200]})") from None
