"""Export a ``PlmModel`` to ONNX (fp32), one graph per task head, and check it against PyTorch.

Exporter: the TorchScript tracer (``torch.onnx.export(dynamo=False)``), opset 17. The
dynamo exporter needs ``onnxscript`` and gains nothing for these static graphs. Tracing
records one path through Python branches, and the encoder skips the attention mask when
nothing is padded (``padding_mask`` returns None). So the trace example is a *padded* batch:
the graph always applies the mask, which is exact for unpadded inputs too. ``verify`` runs
the exported graph on a padded and an unpadded batch of other shapes than the trace (so
the batch and sequence axes are really dynamic) and compares every output with PyTorch.
SDPA is decomposed by the exporter into MatMul / Softmax (opset >= 14), so no custom op.

Inputs: ``input_ids``, ``attention_mask`` [B, T] int64 (+ ``token_type_ids`` for encoders).
Outputs per task: see ``OUTPUTS``; all have dynamic batch and sequence axes.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from .. import __version__
from ..errors import PlmkitError
from ..io import atomic_dir, write_json
from ..models.checkpoint import write_config
from ..models.model import PlmModel
from ..models.onnx_model import ONNX_FILE, ONNX_FORMAT, session

OPSET = 17
# task -> ModelOutput fields exported as graph outputs (same names in the graph).
# "pooled" is dropped for backbones without a pooler (GPT-2, BERT saved without one).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "base": ("last_hidden_state", "pooled"),
    "mlm": ("logits",),
    "mlm+nsp": ("logits", "nsp_logits"),
    "mlm+sop": ("logits", "nsp_logits"),
    "clm": ("logits",),
    "classify": ("logits",),
    "token": ("logits",),
    "span": ("start_logits", "end_logits"),
    "embed": ("embeddings", "last_hidden_state"),    # the sentence vectors; the token states for serve
}
# Outputs without a sequence axis.
PER_SEQUENCE = {"pooled", "nsp_logits", "embeddings"}


class _Graph(nn.Module):
    """PlmModel -> plain tuple of tensors, the signature the ONNX graph gets."""

    def __init__(self, model: PlmModel, outputs: tuple[str, ...]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, input_ids: Tensor, attention_mask: Tensor,
                token_type_ids: Tensor | None = None) -> tuple[Tensor, ...]:
        out = self.model(input_ids, attention_mask, token_type_ids)
        return tuple(getattr(out, name) for name in self.outputs)


def input_names(model: PlmModel) -> list[str]:
    return model.config.input_names


def example_batch(model: PlmModel, batch: int, length: int, padded: bool, seed: int = 0) -> dict[str, Tensor]:
    """Random token ids; with ``padded`` the last row ends in padding (so the masked path runs)."""
    g = torch.Generator().manual_seed(seed)
    T = min(length, model.config.max_position)
    ids = torch.randint(1, model.config.vocab_size, (batch, T), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[-1, max(1, T // 2):] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in model.config.input_names:
        types = torch.zeros_like(ids)
        types[:, T // 2:] = 1 if model.config.type_vocab_size > 1 else 0
        feeds["token_type_ids"] = types * mask
    return feeds


def output_names(model: PlmModel) -> tuple[str, ...]:
    with torch.no_grad():
        out = model(**example_batch(model, 1, 2, padded=False))
    return tuple(n for n in OUTPUTS[model.task] if getattr(out, n) is not None)


def export_onnx(model: PlmModel, file: str | Path, opset: int = OPSET) -> dict[str, Any]:
    """Trace ``model`` (fp32, eval) into ``file``; returns {"inputs", "outputs", "opset"}."""
    if model.task not in OUTPUTS:
        raise PlmkitError(f"no ONNX export for task head '{model.task}' (known: {', '.join(OUTPUTS)})")
    was_training = model.training
    model = model.float().eval()
    inputs, outputs = input_names(model), output_names(model)
    example = example_batch(model, 2, 8, padded=True)
    axes = {n: {0: "batch", 1: "sequence"} for n in inputs}
    axes.update({n: {0: "batch"} if n in PER_SEQUENCE else {0: "batch", 1: "sequence"} for n in outputs})
    graph = _Graph(model, outputs).eval()
    with warnings.catch_warnings():
        # The tracer warns about the padding branch; the padded example makes it take the masked path.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(graph, tuple(example[n] for n in inputs), str(file), dynamo=False,
                          opset_version=opset, input_names=inputs, output_names=list(outputs),
                          dynamic_axes=axes, do_constant_folding=True)
    model.train(was_training)
    return {"inputs": inputs, "outputs": list(outputs), "opset": opset}


def verify(model: PlmModel, file: str | Path, rtol: float = 1e-3, atol: float = 1e-4) -> float:
    """Max |ONNX - PyTorch| over all outputs on a padded and an unpadded batch (of new shapes).

    Raises when the graph disagrees beyond the tolerance: a silent wrong export is the worst case.
    """
    sess = session(file)
    names = [o.name for o in sess.get_outputs()]
    worst = 0.0
    for batch, length, padded in ((3, 13, True), (2, 5, False)):
        feeds = example_batch(model.eval(), batch, length, padded, seed=1)
        with torch.no_grad():
            ref = model(**feeds)
        got = sess.run(names, {k: v.numpy() for k, v in feeds.items()})
        for name, value in zip(names, got):
            want = getattr(ref, name).float().numpy()
            if value.shape != want.shape or not np.allclose(value, want, rtol=rtol, atol=atol):
                diff = np.abs(value - want).max() if value.shape == want.shape else float("inf")
                raise PlmkitError(f"ONNX export check failed: output '{name}' differs from PyTorch by "
                                  f"{diff:.3g} (batch {batch}x{length}, padded={padded})")
            finite = np.abs(want) < 1e30     # span logits at padding are float32 min on both sides
            worst = max(worst, float(np.abs(value - want)[finite].max(initial=0.0)))
    return worst


def write_onnx_dir(model: PlmModel, directory: Path, tokenizer: Tokenizer | None,
                   meta: dict[str, Any], opset: int = OPSET) -> dict[str, Any]:
    """Export + verify into an existing (temporary) directory: model.onnx, config.json,
    tokenizer files, plmkit.json. Returns the plmkit.json content."""
    from ..tokenizer import save_tokenizer

    info = export_onnx(model, directory / ONNX_FILE, opset)
    info["max_abs_diff"] = verify(model, directory / ONNX_FILE)
    write_config(model, directory)
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory, model_max_length=model.config.max_position)
    full = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "plmkit": __version__, "format": ONNX_FORMAT,
            "precision": "fp32", **info, **meta}
    write_json(directory / "plmkit.json", full)
    return full


def export_onnx_dir(model: PlmModel, out_dir: str | Path, tokenizer: Tokenizer | None,
                    meta: dict[str, Any], opset: int = OPSET, overwrite: bool = False) -> dict[str, Any]:
    """``write_onnx_dir`` into ``out_dir`` atomically (nothing is left behind on failure)."""
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        return write_onnx_dir(model, tmp, tokenizer, meta, opset)


def graph_inputs(file: Path) -> list[str]:
    """The graph's input names (weights stored as initializers left out), read without its weights."""
    import onnx

    graph = onnx.load(str(file), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in weights]


def graph_outputs(file: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(file), load_external_data=False).graph.output]


def graph_bytes(file: Path) -> int:
    """The graph file, with OpenVINO's weights file (model.bin) beside model.xml."""
    return sum(f.stat().st_size for f in (file, file.with_suffix(".bin")) if f.is_file())
