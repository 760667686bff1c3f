"""Does a dynamic INT8 model's metric depend on the batch size? fp32 ONNX vs INT8 per token / per tensor.

    python benchmarks/int8_batch_invariance.py --model runs/sst2 --data held-out.tsv

``--model``: a fine-tuned checkpoint (classify or ner). It is exported to fp32 ONNX and quantized
twice with ``plmkit quantize``: ``--activation-ranges token`` (the default: one range per token
row) and ``--activation-ranges tensor`` (ONNX Runtime's quantize_dynamic: one range per tensor).
Each model then runs the task's own evaluation (length-sorted batches, as ``plmkit evaluate``)
at every ``--batch-sizes``; the table gives the metric and how many predictions differ from
batch 1. Accuracy-only: it may run on a busy machine.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from plmkit.tasks import Infer, TaskData, load_finetuned
from plmkit.tasks.common import forward_batches


def predictions(model_dir: Path, data: str, batch_size: int) -> tuple[float, list]:
    """(task metric, per-example predictions) at ``batch_size``."""
    model, task, prep, tok = load_finetuned(str(model_dir))
    examples = task.read(data, prep, labels=model.head_config.get("labels"))
    td = TaskData(examples, task.encode(tok, examples, model.head_config, prep), tok, model.head_config,
                  Infer(batch_size, "fp32"))
    preds: list = [None] * len(td.features)
    for idx, out in forward_batches(model, td):
        for i, row in zip(idx, out.logits.argmax(-1).tolist()):
            preds[i] = row if task.name == "classify" else row[:len(td.features[i]["input_ids"])]
    return float(task.evaluate(model, td)[task.metric]), preds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="fine-tuned checkpoint (classify or ner)")
    ap.add_argument("--data", required=True, help="labelled evaluation file of the model's task")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="plmkit-int8-batch-") as tmp:
        work = Path(tmp)
        plmkit = [sys.executable, "-m", "plmkit.cli"]
        subprocess.run([*plmkit, "export", "--model", args.model, "--format", "onnx", "--out", str(work / "fp32")],
                       check=True, stdout=subprocess.DEVNULL)
        for ranges in ("token", "tensor"):
            subprocess.run([*plmkit, "quantize", "--model", str(work / "fp32"), "--out", str(work / ranges),
                            "--activation-ranges", ranges], check=True, stdout=subprocess.DEVNULL)
        print("| model | " + " | ".join(f"batch {b}" for b in args.batch_sizes) + " |")
        print("|---|" + "---|" * len(args.batch_sizes))
        for name, label in (("fp32", "fp32 ONNX"), ("token", "INT8, per-token ranges"),
                            ("tensor", "INT8, per-tensor ranges")):
            cells, first = [], None
            for bs in args.batch_sizes:
                metric, preds = predictions(work / name, args.data, bs)
                first = first or preds
                changed = sum(a != b for a, b in zip(preds, first))
                cells.append(f"{metric:.4f} ({changed} changed)" if first is not preds else f"{metric:.4f}")
            print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
