"""An exported graph (ONNX Runtime or OpenVINO) that looks like a ``PlmModel`` to the task code.

A graph directory holds the graph, the plmkit ``config.json`` (task, head_config, model config),
the tokenizer and ``plmkit.json`` with ``{"format": ..., "precision": "fp32" | "int8", ...}``:
  format "onnx"      ``model.onnx`` (``plmkit export --format onnx``, ``plmkit quantize``), run by an
                     ONNX Runtime ``InferenceSession``;
  format "openvino"  ``model.xml`` + ``model.bin`` (``plmkit quantize --engine openvino``), run by an
                     OpenVINO compiled model (models/openvino_runtime.py, behind the same session API).
``OnnxModel`` returns the same ``ModelOutput`` fields (torch tensors) the PyTorch model gives, so
``evaluate`` / ``predict`` / ``bench`` / ``serve`` need no change.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import PlmkitError
from ..io import read_json
from .config import DecoderConfig, EncoderConfig, config_from_dict
from .heads import ModelOutput
from .openvino_runtime import OPENVINO_FILE, OpenVinoSession

ONNX_FILE = "model.onnx"
# ORT graph rewrites left out: on this CPU (onnxruntime 1.32, AVX-512) the fused
# SkipLayerNormalization kernel took 6x the time of the Add + LayerNormalization it replaces
# (a quarter of an INT8 BERT's run time), and BiasGelu about twice Add + Gelu.
SLOW_FUSIONS = ["SkipLayerNormFusion", "BiasGeluFusion"]
ONNX_FORMAT = "onnx"
GRAPH_FILES = {ONNX_FORMAT: ONNX_FILE, "openvino": OPENVINO_FILE}    # plmkit.json format -> graph file


def ort_errors() -> tuple[type[Exception], ...]:
    """ONNX Runtime's error classes (they derive from Exception directly, not RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as st

    return (st.Fail, st.InvalidArgument, st.InvalidProtobuf, st.InvalidGraph, st.NoSuchFile,
            st.NotImplemented, st.RuntimeException)


def graph_format(path: str | Path) -> str | None:
    """"onnx" or "openvino" for a graph directory (plmkit.json's format, with its graph file), else None."""
    path = Path(path)
    meta = path / "plmkit.json"
    fmt = read_json(meta).get("format") if meta.is_file() else None
    return fmt if fmt in GRAPH_FILES and (path / GRAPH_FILES[fmt]).is_file() else None


def is_onnx_dir(path: str | Path) -> bool:
    """A directory written by the ONNX export or quantization (plmkit.json format "onnx")."""
    return graph_format(path) == ONNX_FORMAT


def open_session(file: str | Path, threads: int | None = None) -> Any:
    """The engine the graph file is for: an OpenVINO IR (.xml) or an ONNX graph (ONNX Runtime)."""
    return OpenVinoSession(file, threads) if Path(file).suffix == ".xml" else session(file, threads)


def session(file: str | Path, threads: int | None = None) -> Any:
    """A CPU InferenceSession with every graph optimisation, one intra-op thread per core."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.log_severity_level = 3          # errors only: ORT warns about every unused initializer
    try:
        return ort.InferenceSession(str(file), sess_options=opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=SLOW_FUSIONS)
    except ort_errors() as e:
        raise PlmkitError(f"{file}: cannot load the ONNX model ({str(e).splitlines()[0][:160]})") from None


class OnnxModel(nn.Module):
    """``model(input_ids, attention_mask, token_type_ids) -> ModelOutput`` on ONNX Runtime or OpenVINO.

    An ``nn.Module`` only so code written for ``PlmModel`` works unchanged: ``model.eval()``
    and ``next(model.parameters()).device`` (a zero-size CPU parameter; ORT runs on the CPU).
    """

    def __init__(self, file: str | Path, config: EncoderConfig | DecoderConfig, task: str,
                 head_config: dict[str, Any], meta: dict[str, Any] | None = None, threads: int | None = None):
        super().__init__()
        self.file = Path(file)
        self.config, self.task, self.head_config = config, task, dict(head_config)
        self.meta = dict(meta or {})
        self.session = open_session(file, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def precision(self) -> str:
        return str(self.meta.get("precision", "fp32"))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, **ignored: Any) -> ModelOutput:
        """Labels and PyTorch-only options (output_hidden_states, ...) are ignored: no loss here."""
        if ignored.get("past_key_values") is not None or ignored.get("use_cache"):
            raise PlmkitError("an ONNX model has no KV cache (generate with the PyTorch checkpoint)")
        ids = input_ids.detach().cpu().numpy().astype(np.int64)
        given = {"input_ids": ids,
                 "attention_mask": None if attention_mask is None else attention_mask.detach().cpu().numpy(),
                 "token_type_ids": None if token_type_ids is None else token_type_ids.detach().cpu().numpy()}
        defaults = {"attention_mask": np.ones_like, "token_type_ids": np.zeros_like}
        feeds = {name: (given[name] if given[name] is not None else defaults[name](ids)).astype(np.int64)
                 for name in self.input_names}
        outs = self.session.run(self.output_names, feeds)
        return ModelOutput(**{name: torch.from_numpy(v) for name, v in zip(self.output_names, outs)})

    def source_parameters(self) -> int:
        """The parameter count of the PyTorch model the graph was exported from (what ``plmkit info``
        and ``plmkit bench`` report), from the config alone: built on the meta device, no memory used."""
        from .model import PlmModel

        with torch.device("meta"):
            return PlmModel(self.config, self.task, self.head_config).num_parameters()


def load_onnx_dir(path: str | Path, threads: int | None = None) -> OnnxModel:
    """Load a graph directory (ONNX or OpenVINO) as an ``OnnxModel`` in eval mode."""
    path = Path(path)
    fmt = graph_format(path)
    if fmt is None:
        raise PlmkitError(f"{path}: not an ONNX model directory (expected {ONNX_FILE} and plmkit.json "
                          f"with format 'onnx'; make one with 'plmkit export --format onnx')")
    raw = read_json(path / "config.json")
    if "model" not in raw:
        raise PlmkitError(f"{path / 'config.json'}: not a plmkit config (no 'model' section)")
    cfg = config_from_dict(raw["model"], source=str(path / "config.json"))
    model = OnnxModel(path / GRAPH_FILES[fmt], cfg, raw.get("task", "base"), raw.get("head_config", {}),
                      read_json(path / "plmkit.json"), threads)
    return model.eval()
