"""The peers' side of ``plmkit bench --baselines optimum-ort,openvino``; run with the peers' python.

    PEER_PYTHON peer_worker.py versions OUT.json
    PEER_PYTHON peer_worker.py quantize SPEC.json          # HF export -> the peer's INT8 model
    PEER_PYTHON peer_worker.py measure SPEC.json OUT.json  # time it on plmkit's batches (SPEC.npz)

A standalone script: it imports nothing of plmkit, only the peer's packages (optimum-onnx,
optimum-intel, OpenVINO, NNCF, their transformers) and numpy / torch. Its inputs are the token ids
plmkit encoded and padded (``SPEC.npz``: ``bs{B}/{i}/{input}`` timed batches per batch size,
``eval/{i}/{input}`` the batches ``plmkit evaluate`` forms); it writes its timings as JSON and the
logits of the evaluation batches as ``OUT.npz``, which plmkit scores. Timing is the plmkit worker's
(``plmkit/bench/worker.py``): ``warmup`` untimed batches, then ``repeats`` timed passes over every
batch, the clock around the model call alone.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

OUTPUTS = {"classify": ("logits",), "ner": ("logits",), "qa": ("start_logits", "end_logits")}
MODEL_CLASS = {"classify": "ForSequenceClassification", "ner": "ForTokenClassification", "qa": "ForQuestionAnswering"}
ORT_FILE = "model_quantized.onnx"
OV_GRAPH = "plmkit_graph.xml"            # OpenVINO IR of plmkit's own export, quantized


# ----------------------------------------------------------------------------- the engines

def _ort_class(task: str):
    import optimum.onnxruntime as ort

    return getattr(ort, "ORTModel" + MODEL_CLASS[task])


def _ov_class(task: str):
    import optimum.intel as ov

    return getattr(ov, "OVModel" + MODEL_CLASS[task])


def quantize_ort(spec: dict) -> None:
    """optimum-onnx as its docs show it: export, then ORTQuantizer with the AVX-512 VNNI dynamic config.
    With ``spec["onnx"]`` (plmkit's own fp32 export of a graph HF cannot hold, e.g. a pruned
    model), the same quantizer and config run on that graph instead of optimum's export."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)
    if spec.get("onnx"):
        ORTQuantizer(Path(spec["onnx"]) / "model.onnx").quantize(save_dir=spec["out"], quantization_config=config)
        return
    fp32 = Path(spec["out"] + "-fp32")
    _ort_class(spec["task"]).from_pretrained(spec["hf"], export=True).save_pretrained(fp32)
    ORTQuantizer.from_pretrained(fp32).quantize(save_dir=spec["out"], quantization_config=config)
    shutil.rmtree(fp32)


class Graph:
    """A quantized graph of plmkit's ONNX export behind ``model(**batch) -> .logits``: ``run``
    maps {input name: int64 array} to {output name: array}, in the peer's engine."""

    def __init__(self, run, inputs: list[str]):
        self.run, self.inputs = run, inputs

    def __call__(self, **batch):
        import types

        import torch

        outs = self.run({k: v.numpy() for k, v in batch.items() if k in self.inputs})
        return types.SimpleNamespace(**{k: torch.from_numpy(np.asarray(v)) for k, v in outs.items()})


def load_ort(path: str, task: str, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if not (Path(path) / "config.json").is_file():            # quantized from plmkit's export
        sess = onnxruntime.InferenceSession(str(Path(path) / ORT_FILE), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return Graph(lambda feed: dict(zip(names, sess.run(names, feed))), [i.name for i in sess.get_inputs()])
    return _ort_class(task).from_pretrained(path, file_name=ORT_FILE, session_options=options)


def quantize_openvino(spec: dict) -> None:
    """optimum-intel as its docs show it: export to OpenVINO, then OVQuantizer with the default
    INT8 weight + activation config, calibrated on plmkit's samples (one example per sample)."""
    import nncf
    from optimum.intel import OVConfig, OVQuantizationConfig, OVQuantizer

    with np.load(spec["calibration"]) as z:
        n = 1 + max(int(k.split("/")[1]) for k in z.files)
        samples = [{k.split("/")[2]: z[k] for k in z.files if k.startswith(f"sample/{i}/")} for i in range(n)]
    if spec.get("onnx"):
        _quantize_openvino_graph(spec, samples)
        return
    model = _ov_class(spec["task"]).from_pretrained(spec["hf"], export=True, compile=False)
    names = {p.get_any_name() for p in model.model.inputs}
    samples = [{k: v for k, v in s.items() if k in names} for s in samples]
    OVQuantizer.from_pretrained(model).quantize(
        ov_config=OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(samples))),
        calibration_dataset=nncf.Dataset(samples), save_directory=spec["out"])


def _quantize_openvino_graph(spec: dict, samples: list[dict]) -> None:
    """plmkit's fp32 ONNX graph read by OpenVINO, then nncf.quantize with exactly the arguments
    optimum-intel's default ``OVQuantizationConfig`` gives it (``to_nncf_dict``)."""
    import nncf
    import openvino
    from optimum.intel import OVQuantizationConfig

    model = openvino.Core().read_model(str(Path(spec["onnx"]) / "model.onnx"))
    names = {p.get_any_name() for p in model.inputs}
    samples = [{k: v for k, v in s.items() if k in names} for s in samples]
    kwargs = OVQuantizationConfig(num_samples=len(samples)).to_nncf_dict()
    kwargs.pop("weight_only", None)
    quantized = nncf.quantize(model, calibration_dataset=nncf.Dataset(samples), **kwargs)
    Path(spec["out"]).mkdir(parents=True, exist_ok=True)
    openvino.save_model(quantized, str(Path(spec["out"]) / OV_GRAPH))


def load_openvino(path: str, task: str, threads: int):
    if (Path(path) / OV_GRAPH).is_file():                      # quantized from plmkit's export
        import openvino

        compiled = openvino.Core().compile_model(str(Path(path) / OV_GRAPH), "CPU",
                                                 {"INFERENCE_NUM_THREADS": str(threads)})
        names = [o.get_any_name() for o in compiled.outputs]
        run = lambda feed: dict(zip(names, compiled(feed).values()))       # noqa: E731
        return Graph(run, [i.get_any_name() for i in compiled.inputs])
    return _ov_class(task).from_pretrained(path, ov_config={"INFERENCE_NUM_THREADS": str(threads)})


ENGINES = {"optimum-ort": (quantize_ort, load_ort), "openvino": (quantize_openvino, load_openvino)}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    import transformers  # noqa: F401  (a broken environment fails here, not mid-benchmark)

    return {p: version(p) for p in ("optimum", "optimum-onnx", "optimum-intel", "onnxruntime", "openvino", "nncf",
                                    "transformers", "torch")}


# ----------------------------------------------------------------------------- measuring

def _batches(z, prefix: str) -> list[dict]:
    import torch

    keys = [k for k in z.files if k.startswith(prefix + "/")]
    n = 1 + max(int(k.split("/")[1]) for k in keys)
    return [{k.split("/")[2]: torch.from_numpy(z[k]) for k in keys if k.startswith(f"{prefix}/{i}/")}
            for i in range(n)]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _timed(model, batches: list[dict], warmup: int, repeats: int) -> tuple[list[float], list[float]]:
    import torch

    per_batch, per_pass = [], []
    with torch.inference_mode():
        for b in batches[:warmup]:
            model(**b)
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            for b in batches:
                t = time.perf_counter()
                model(**b)
                per_batch.append(time.perf_counter() - t)
            per_pass.append(time.perf_counter() - start)
    return per_batch, per_pass


def peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def params_of(hf_dir: str) -> int:
    from safetensors import safe_open

    total = 0
    for f in Path(hf_dir).glob("*.safetensors"):
        with safe_open(str(f), "np") as st:
            for name in st.keys():
                total += int(np.prod(st.get_slice(name).get_shape()))
    return total


def measure(spec_file: str, out_file: str) -> None:
    import torch

    spec = json.loads(Path(spec_file).read_text())
    v, s = spec["variant"], spec["settings"]
    torch.set_num_threads(s["threads"])
    model = ENGINES[v["kind"]][1](v["path"], v["task"], s["threads"])
    outputs = OUTPUTS[v["task"]]
    by_batch = {}
    with np.load(Path(spec_file).with_suffix(".npz")) as z:
        for bs in s["batch_sizes"]:
            batches = _batches(z, f"bs{bs}")
            per_batch, per_pass = _timed(model, batches, s["warmup"], s["repeats"])
            n = sum(int(b["input_ids"].shape[0]) for b in batches)
            by_batch[str(bs)] = {"latency_p50_ms": round(1000 * _percentile(per_batch, 0.5), 3),
                                 "latency_p95_ms": round(1000 * _percentile(per_batch, 0.95), 3),
                                 "throughput": round(n / statistics.median(per_pass), 2), "examples": n,
                                 "pass_spread": round(max(per_pass) / min(per_pass) - 1, 4)}
        logits = {}
        with torch.inference_mode():
            for i, b in enumerate(_batches(z, "eval")):
                out = model(**b)
                logits.update({f"eval/{i}/{name}": getattr(out, name).float().numpy() for name in outputs})
    logits_file = Path(out_file).with_suffix(".npz")
    np.savez(logits_file, **logits)
    hf = json.loads((Path(v["path"]) / "plmkit_peer.json").read_text())
    Path(out_file).write_text(json.dumps({"row": {
        "by_batch": by_batch, "params": hf["params"], "peak_rss_kb": peak_rss_kb(), "outputs": str(logits_file),
        "engine": hf["engine"]}}))


def quantize(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    out = Path(spec["out"])
    shutil.rmtree(out, ignore_errors=True)
    ENGINES[spec["engine"]][0](spec)
    info = {"params": spec.get("params") or params_of(spec["hf"]),
            "engine": {"name": spec["engine"], "graph": "plmkit-onnx" if spec.get("onnx") else "optimum-export",
                       **versions()}}
    (out / "plmkit_peer.json").write_text(json.dumps(info))


def main(argv: list[str]) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if len(argv) == 2 and argv[0] == "versions":
        Path(argv[1]).write_text(json.dumps(versions()))
    elif len(argv) == 2 and argv[0] == "quantize":
        quantize(argv[1])
    elif len(argv) == 3 and argv[0] == "measure":
        measure(argv[1], argv[2])
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
