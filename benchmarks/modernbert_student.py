"""A ModernBERT-shaped teacher into a BERT-shaped student: the speed half of issue 24's first goal.

    python benchmarks/modernbert_student.py             # ModernBERT-base shape, random weights (~15 min)
    python benchmarks/modernbert_student.py --quick     # tiny shapes: checks the wiring only

1. A random ModernBERT-base-shaped masked LM (22 layers, hidden 768, GeGLU 1152, local window 128,
   the real 50,368 vocabulary; ``finetune_families.build_model_dir``): speed does not depend on the
   weights, so no download.
2. ``plmkit distill --teacher T --corpus SST2-TEXT --student-size medium --max-steps 20`` (general
   distillation; every loss at its default): the student is a BERT (learned positions, post-LN,
   GELU FFN, 8 layers of width 512) on the teacher's tokenizer, under a third of the teacher's
   transformer compute. The steps only show that the path runs; the accuracy half of the goal is
   the MiniLM run of ``general_distill.py``.
3. Both become SST-2 classifiers (``plmkit finetune --max-steps 1``: the real shapes and heads).
4. ``general_distill.speed``: batch-32 throughput and batch-1 latency, student / teacher, in PyTorch
   and as ONNX Runtime INT8 (``plmkit quantize`` defaults), from ``--pairs`` interleaved
   ``plmkit bench`` runs: median and range.

Run it alone on the machine. Output in bench_out/modernbert-student[-quick]/ (results.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretraining_benefit as PB   # noqa: E402
from compress_sst2 import OUT, sst2_slices   # noqa: E402
from finetune_families import build_model_dir   # noqa: E402
from general_distill import speed, unlabelled_sst2   # noqa: E402


def step(out: Path, *cmd: str) -> Path:
    if not (out / "config.json").is_file():
        PB.plmkit_subprocess(*cmd, "--out", str(out), "--overwrite")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--student-size", default="medium")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--bench-examples", type=int, default=512)
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.bench_examples, args.student_size = 2, 64, "tiny"
    work = OUT / ("modernbert-student" + ("-quick" if args.quick else ""))
    work.mkdir(parents=True, exist_ok=True)
    train, held = sst2_slices(work, 256 if args.quick else 2_000, (60_000, 60_000 + args.bench_examples))
    teacher = work / "teacher-mlm"
    if not (teacher / "config.json").is_file():
        build_model_dir("modernbert", "quick" if args.quick else "base", train, teacher)
    text = unlabelled_sst2(work / "sst2-unlabelled.txt", True)     # 2,000 sentences: enough for 20 steps
    student = step(work / "student-mlm", "distill", "--teacher", str(teacher), "--corpus", str(text),
                   "--student-size", args.student_size, "--max-steps", "4" if args.quick else "20")
    clf = {}
    for name, src in (("teacher", teacher), ("student", student)):
        clf[name] = step(work / name, "finetune", "--model", str(src), "--task", "classify", "--train", str(train),
                         "--max-steps", "1", "--max-length", "64")
    table = speed(clf["student"], clf["teacher"], held, work / "speed", args, teacher_name="ModernBERT-base")
    (work / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
