"""The INT8 engine registry (plmkit/compress/engines.py): lookups, and that reading it loads no engine."""
from __future__ import annotations

import subprocess
import sys

import pytest

from plmkit.compress.engines import CALIBRATION, CANDIDATES, ENGINE_NAMES, ENGINES, engine
from plmkit.errors import PlmkitError
from plmkit.models.onnx_model import GRAPH_FILES


def test_every_record_writes_a_format_the_loader_reads():
    for record in ENGINES:
        assert record.format in GRAPH_FILES and record.calibration in CALIBRATION, record
    assert ENGINE_NAMES == ["onnxruntime", "openvino"]


def test_lookup_by_engine_and_method():
    assert engine("onnxruntime", "dynamic").calibration == "none"
    assert engine("onnxruntime", "static").calibration == "per_batch"
    # OpenVINO has one method: --method (default dynamic) does not change it
    assert engine("openvino", "dynamic") is engine("openvino", "static")
    assert engine("openvino", "dynamic").calibration == "per_example"
    with pytest.raises(PlmkitError, match="unknown engine 'tvm'"):
        engine("tvm", "dynamic")
    with pytest.raises(PlmkitError, match="no method 'qat'"):
        engine("onnxruntime", "qat")


def test_compress_reads_its_candidates_from_the_records():
    got = {c.name: (dict(c.settings), c.calibrated, c.engine.extra) for c in CANDIDATES}
    assert got == {
        "ort-token": ({"engine": "onnxruntime", "method": "dynamic", "activation_ranges": "token"}, False,
                      "plmkit[onnx]"),
        "ort-tensor": ({"engine": "onnxruntime", "method": "dynamic", "activation_ranges": "tensor"}, False,
                       "plmkit[onnx]"),
        "ort-static": ({"engine": "onnxruntime", "method": "static"}, True, "plmkit[onnx]"),
        "openvino": ({"engine": "openvino"}, True, "plmkit[openvino]")}      # one method: --method left out
    assert all(c.engine is engine(c.settings["engine"], c.settings.get("method", "")) for c in CANDIDATES)


def test_the_registry_and_the_stage_import_no_engine():
    code = ("import sys, plmkit.compress.engines, plmkit.stages.quantize; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'openvino', 'nncf')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
