"""INT8-quantize a model for ONNX Runtime or OpenVINO; accuracy before and after goes into plmkit.json.

Input: a plmkit (or HF) checkpoint, exported to fp32 ONNX first (internally), or an fp32 ONNX
directory from ``plmkit export --format onnx``. dynamic needs no data; static calibrates
activation ranges on ``--calibration`` (the task's labelled training format, encoded with the
checkpoint's tokenizer and preprocessing settings; plain text lines for a model without a
fine-tuning task). ``--engine openvino`` quantizes the same fp32 graph with NNCF for OpenVINO
(compress/openvino_quant.py: weights and activations, calibrated on ``--calibration``) and writes
OpenVINO IR (format "openvino"), which evaluate, predict, bench and serve run like an ONNX
directory. Accuracy of fp32 and int8 is measured on ``--eval`` (default: the calibration file)
with the task's own ``evaluate``, on both directories as ``plmkit.loading.load`` reads them.
Everything is checked before the output directory is created, and it is written atomically.
The model comes from the one loader (``plmkit.loading.load_fp32``), the task, its settings and its
files from ``plmkit.tasks`` (``task_and_prep``, ``read_task_file``); the engines (format,
calibration, quantize function) are records in compress/engines.py; graph inspection lives beside
the export (compress/onnx_export.py).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from .. import __version__
from ..compress.engines import ENGINE_NAMES, calibration_reader, engine
from ..config import option, to_dict
from ..errors import PlmkitError
from ..io import atomic_dir, work_dir, write_json
from ..loading import load, load_fp32
from ..models.onnx_model import GRAPH_FILES, ONNX_FILE
from ..tasks import TASKS, Infer, TaskData, read_task_file, task_and_prep
from ..tokenizer import has_tokenizer, load_tokenizer, save_tokenizer

@dataclass
class Config:
    model: str = option(help="fine-tuned checkpoint, or an fp32 ONNX directory (plmkit export --format onnx)")
    out: str = option(help="output directory (model.onnx, or model.xml + model.bin for openvino; config, "
                      "tokenizer)")
    engine: str = option("onnxruntime", help="what runs the INT8 model: onnxruntime (model.onnx) or openvino "
                         "(OpenVINO IR quantized by NNCF, weights and activations: needs --calibration; "
                         "pip install 'plmkit[openvino]')", choices=ENGINE_NAMES)
    method: str = option("dynamic", help="onnxruntime: dynamic: weights only, activations at run time; "
                         "static: activation ranges from calibration data", choices=["dynamic", "static"])
    calibration: str | None = option(None, help="static and openvino: labelled data file of the model's task "
                                     "(plain text lines for a model without a task)")
    calibration_size: int = option(256, help="static and openvino: calibration examples used (the first N)", ge=1)
    eval: str | None = option(None, help="labelled file for accuracy before/after (default: the calibration file)")
    per_channel: bool = option(True, help="one weight scale per output channel")
    reduce_range: bool = option(False, help="7-bit weights (avoids saturation on AVX2 CPUs without VNNI)")
    activation_type: str = option("quint8", help="static: activation type", choices=["quint8", "qint8"])
    calibrate_method: str = option("minmax", help="static: range estimate",
                                   choices=["minmax", "percentile", "entropy"])
    fuse: bool = option(True, help="dynamic, encoders: fuse attention and GELU (ONNX Runtime's BERT "
                        "optimizer) and quantize the fused attention")
    activation_ranges: str = option("token", help="dynamic: one activation range per token (results do not "
                                    "depend on the batch) or per tensor (ONNX Runtime's quantize_dynamic: "
                                    "padding and the other examples of a batch change a prediction)",
                                    choices=["token", "tensor"])
    embeddings: str = option("int8", help="onnxruntime: embedding tables (word, position) stored as int8 with "
                             "one scale per row, a quarter of their fp32 bytes; fp32 leaves them float",
                             choices=["int8", "fp32"])
    task: str | None = option(None, help="task, for checkpoints that do not record it", choices=list(TASKS))
    batch_size: int = option(32, help="examples per calibration batch (accuracy is measured in batches "
                             "of 64, as plmkit evaluate and bench do)", ge=1)
    opset: int = option(17, help="ONNX opset when a checkpoint is exported first")
    overwrite: bool = option(False, help="replace an existing output directory")


def run(cfg: Config) -> int:
    from ..compress.onnx_export import graph_bytes, graph_inputs, graph_outputs, write_onnx_dir

    record = engine(cfg.engine, cfg.method)
    if record.calibration != "none" and not cfg.calibration:
        raise PlmkitError(f"{record.flag} needs --calibration FILE (data of the model's task)")
    source = load_fp32(cfg.model)
    task, prep = task_and_prep(source.path, source.config, cfg.task)
    head_config = source.config.get("head_config", {})
    eval_file = cfg.eval or cfg.calibration
    tok = load_tokenizer(source.path) if cfg.calibration or eval_file else None
    calib = None
    if cfg.calibration:
        calib = read_task_file(task, prep, tok, head_config, cfg.calibration, "calibration", cfg.calibration_size)[1]
    evaluation = None
    if eval_file and task is not None and task.on_graph:
        examples, features = read_task_file(task, prep, tok, head_config, eval_file, "evaluation")
        # Evaluate's batch size (also bench's): with --activation-ranges tensor the INT8 metric
        # depends on the batching, and this way the three commands report the same number.
        evaluation = TaskData(examples, features, tok, head_config, Infer(precision="fp32"))
    # The fp32 export and the quantizers' own scratch go beside --out, where a killed run's are removed
    with atomic_dir(cfg.out, cfg.overwrite) as tmp, work_dir(cfg.out, libraries=True) as work:
        fp32 = source.graph
        if fp32 is None:      # a checkpoint: export fp32 first (verified against PyTorch)
            write_onnx_dir(source.model, work, None, {"parent": str(source.path.resolve())}, cfg.opset)
            fp32 = work / ONNX_FILE
        inputs = graph_inputs(fp32)
        reader = calibration_reader(record, calib, inputs, tok, cfg.batch_size, cfg.calibrate_method)
        int8 = tmp / GRAPH_FILES[record.format]
        t0 = time.perf_counter()
        how = record.quantize(fp32, int8, work, reader, to_dict(cfg))
        seconds = time.perf_counter() - t0
        write_json(tmp / "config.json", source.config)
        if tok is not None or has_tokenizer(source.path):
            save_tokenizer(tok or load_tokenizer(source.path), tmp,
                           model_max_length=source.config["model"].get("max_position"))
        meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "plmkit": __version__, "format": record.format,
                "precision": "int8", "stage": "quantize", "parent": str(source.path.resolve()),
                "inputs": inputs, "outputs": graph_outputs(fp32),
                "quantization": {**how, "calibration_examples": len(calib or []), "seconds": round(seconds, 2)},
                "size_bytes": {"fp32": fp32.stat().st_size, "int8": graph_bytes(int8)},
                "metrics": {}, "config": to_dict(cfg)}
        write_json(tmp / "plmkit.json", meta)       # the output is a graph directory now: load reads it
        if evaluation is not None and task is not None:
            meta["metrics"] = {"fp32": task.evaluate(load(fp32.parent), evaluation),
                               "int8": task.evaluate(load(tmp), evaluation)}
            write_json(tmp / "plmkit.json", meta)
    print(json.dumps({"out": cfg.out, "engine": cfg.engine, "method": meta["quantization"]["method"],
                      "size_bytes": meta["size_bytes"], "metrics": meta["metrics"]}))
    return 0
