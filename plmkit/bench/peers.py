"""Peer rows of ``plmkit bench``: the same model in the engines a user would pick instead of plmkit.

    optimum-ort  optimum-onnx: export, then ``ORTQuantizer`` dynamic INT8 with its default
                 AVX-512 VNNI config (``AutoQuantizationConfig.avx512_vnni(is_static=False)``)
    openvino     optimum-intel: export to OpenVINO, then ``OVQuantizer`` INT8 with its default
                 weight + activation config (``OVQuantizationConfig()``), calibrated on the first
                 ``calibration_examples`` examples of ``--calibration`` (default: ``--data``)

Both start from the HF export of the same checkpoint the transformers row runs. They live in a
virtual environment of their own (``benchmarks/peers_env.py`` makes ``.peers-venv``): optimum-intel
pins transformers 4.x, and plmkit's own install never needs any of them. In that environment
``peer_worker.py`` (a standalone script: it imports nothing of plmkit) quantizes the export in one
process and times it in another, so the row's peak RSS is the timed process's alone.

Why pre-encoded token ids rather than plmkit on that environment's path: plmkit here encodes
FILE once with the checkpoint's own tokenizer and preprocessing and collates the batches exactly
as the plmkit rows get them (the same padded ``int64`` arrays, as ``.npz``); the peer times only
the model call on those arrays and hands back its logits for the batches ``plmkit evaluate``
forms, which plmkit scores with the task's own ``evaluate`` (``Replay``, bench/replay.py). So every row sees the
same token ids and is scored by the same code, and the peer environment needs no plmkit
dependency at the versions plmkit pins (its transformers may be 4.x, its tokenizers older).
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import PlmkitError
from ..io import read_json, write_json
from ..tokenizer import INPUT_KEYS
from .rows import EVAL_BATCH, Settings, Variant, bench_task, encoding, hf_export, row_of, weights_size

if TYPE_CHECKING:
    from ..tasks import TaskData

PEER_WORKER = Path(__file__).with_name("peer_worker.py")
VENV = ".peers-venv"
CREATE = "python benchmarks/peers_env.py"


def find_peer_python(explicit: str | None) -> str:
    """``explicit``, else ``.peers-venv/bin/python`` in the current directory or the repository
    plmkit runs from; else one line saying how to make it."""
    if explicit:
        if not Path(explicit).is_file():
            raise PlmkitError(f"--peer-python {explicit}: not found (create the peers' environment with {CREATE})")
        return explicit
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        python = root / VENV / "bin" / "python"
        if python.is_file():
            return str(python)
    raise PlmkitError(f"the peer baselines need their own virtual environment, and there is none: create it with "
                      f"`{CREATE}` (makes {VENV}; optimum-onnx, optimum-intel, OpenVINO), or pass --peer-python")


def _peer(cmd: list[str], what: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}     # the peer's own packages only
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["no output"]
        raise PlmkitError(f"{what} failed (exit {proc.returncode}): {lines[-1][:300]}")


def peer_versions(python: str) -> dict[str, str]:
    """The peers' package versions, from their environment (a missing package fails here, in one line)."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"plmkit-peer-versions-{os.getpid()}.json"
    try:
        _peer([python, str(PEER_WORKER), "versions", str(out)], f"the peers' environment ({python})")
        return read_json(out)
    finally:
        out.unlink(missing_ok=True)


@lru_cache(maxsize=4)
def _task_data(features_from: str, task_name: str, data: str, max_examples: int | None) -> "TaskData":
    """FILE encoded with the checkpoint's tokenizer and settings, as the plmkit worker encodes it."""
    from ..tasks import Infer, TaskData

    task, prep, tok, head_config = encoding(features_from, task_name)
    examples = task.read(data, prep, labels=head_config.get("labels"))[:max_examples]
    return TaskData(examples, task.encode(tok, examples, head_config, prep), tok, head_config,
                    Infer(EVAL_BATCH, "fp32"))


def _arrays(batches: list[dict[str, Any]], prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}/{i}/{k}": np.asarray(v, dtype=np.int64) for i, b in enumerate(batches)
            for k, v in b.items() if k in INPUT_KEYS}


def _eval_batches(data: "TaskData", task_name: str) -> list[dict[str, np.ndarray]]:
    from ..tasks import TASKS
    from .replay import Recorder

    task = TASKS[task_name]
    recorder = Recorder(task.head, len(data.head_config.get("labels") or []))
    task.evaluate(recorder, data)
    return recorder.batches


def onnx_export(source: Path, work: Path) -> tuple[str, int]:
    """plmkit's fp32 ONNX export of ``source`` (once per work directory, by ``plmkit export`` in a
    process of its own: the bench layer does not import compress) and its parameter count: the
    peers' input for graphs the HF layout cannot hold (a pruned model's per-layer heads)."""
    import sys

    from ..loading import load

    out = work / "onnx-baseline"
    if not out.is_dir():
        proc = subprocess.run([sys.executable, "-m", "plmkit.cli", "export", "--model", str(source), "--format",
                               "onnx", "--out", str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["no output"]
            raise PlmkitError(f"--peer-input onnx: exporting {source} failed: {lines[-1][:300]}")
    return str(out), load(source, needs_torch="the peers' ONNX input").num_parameters()


@dataclass(frozen=True)
class PeerEngine:
    """One peer: its row kind (also its --baselines name) and whether it calibrates."""
    kind: str
    calibrates: bool

    def prepare(self, source: Path, work: Path, s: Settings) -> Path:
        """The checkpoint exported to HF (``--peer-input onnx``: plmkit's fp32 ONNX export of it),
        then converted and quantized by the peer (in its environment)."""
        out = work / f"peer-{self.kind}"
        spec = {"engine": self.kind, "task": bench_task(source), "out": str(out), "threads": s.threads,
                "calibration": None, "hf": None, "onnx": None, "params": None}
        if s.peer_input == "onnx":
            spec["onnx"], spec["params"] = onnx_export(source, work)
        else:
            spec["hf"] = str(hf_export(source, work))
        if self.calibrates:
            calib = _task_data(str(source), spec["task"], s.calibration or s.data, s.calibration_examples)
            spec["calibration"] = str(work / f"calibration-{self.kind}.npz")
            np.savez(spec["calibration"], **_arrays([{k: [v] for k, v in f.items() if k in INPUT_KEYS}
                                                     for f in calib.features], "sample"))
        write_json(work / f"quantize-{self.kind}.json", spec)
        _peer([s.peer_python or find_peer_python(None), str(PEER_WORKER), "quantize",
               str(work / f"quantize-{self.kind}.json")], f"{self.kind}: quantizing {source}")
        return out

    def command(self, v: Variant, s: Settings, spec: Path, out: Path) -> list[str]:
        """Writes the batches beside ``spec`` (timed ones per batch size, then the evaluation ones)."""
        from ..data.features import collate
        from ..tokenizer import pad_id

        data = _task_data(v.features_from, v.task, s.data, s.max_examples)
        pad, arrays = pad_id(data.tok), {}
        for bs in s.batch_sizes:
            feats = data.features[:s.latency_examples] if bs == 1 else data.features
            arrays.update(_arrays([collate(feats[i:i + bs], pad) for i in range(0, len(feats), bs)], f"bs{bs}"))
        arrays.update(_arrays(_eval_batches(data, v.task), "eval"))
        np.savez(spec.with_suffix(".npz"), **arrays)
        return [s.peer_python or find_peer_python(None), str(PEER_WORKER), "measure", str(spec), str(out)]

    def finish(self, result: dict[str, Any], v: Variant, s: Settings) -> dict[str, Any]:
        """The peer's timings + plmkit's score of the peer's logits -> a row like every other."""
        from ..tasks import TASKS
        from .replay import Replay

        data = _task_data(v.features_from, v.task, s.data, s.max_examples)
        with np.load(result["outputs"]) as z:
            n = 1 + max(int(k.split("/")[1]) for k in z.files)
            outputs = [{k.split("/")[2]: z[k] for k in z.files if k.startswith(f"eval/{i}/")} for i in range(n)]
        task = TASKS[v.task]
        metrics = {k: float(x) for k, x in task.evaluate(Replay(outputs), data).items()}
        row = row_of(v, s, result["by_batch"], result["params"], weights_size(Path(v.path)), result["peak_rss_kb"],
                     metrics, task.metric, len(data.examples))
        return {**row, "engine": result["engine"]}


PEERS = (PeerEngine("optimum-ort", calibrates=False), PeerEngine("openvino", calibrates=True))
