"""Issue 29's student goal: a half-depth embedding student distilled from a fine-tuned MiniLM, its INT8.

    python benchmarks/embed_student.py                      # teacher fine-tuned here, student, INT8, scores, speed
    python benchmarks/embed_student.py --teacher zero-shot  # the untouched all-MiniLM-L6-v2 is the teacher
    python benchmarks/embed_student.py --teacher DIR        # an embed checkpoint made before (same held-out seed!)
    python benchmarks/embed_student.py --smoke              # 48 questions, 1 held-out article, 2 bench runs: wiring

Data and scoring are embed_vs_st.py's (imported, not copied): ../shared/data/squad/train-half.json,
--held-out whole articles (seeded) held out, every question of the others a training pair
(question, paragraph); each held-out question must find its own paragraph among all the held-out
paragraphs, scored by ``plmkit evaluate --task embed --precision fp32`` (MRR@10, recall@1,
recall@10, nDCG@10). The commands, as a user types them:

1. teacher: ``plmkit finetune --model all-MiniLM-L6-v2 --task embed --train train.json`` at the embed
   task's defaults (one pass, batch 32, lr 2e-5, the model's max length 256, bf16 autocast), the
   teacher of goal 3. ``--teacher zero-shot``: MiniLM untouched.
2. student: ``plmkit distill --task embed --teacher TEACHER --train train.json --student-layers 0,2,4``,
   every other setting at distill's defaults (3 epochs, batch 32, the teacher's max length, and embed's
   measured ones: lr 5e-4, alpha 0 with the cosine to the teacher's vectors, no hidden-state loss). Task
   distillation has no default student (it asks for exactly one of --student-layers, --student-size,
   --student-config, --student-model), so the script passes --student-layers with every second
   teacher layer from 0 (``compress.general.default_student_layers``) but the top one in place of
   the last (0,2,5: the student keeps the teacher's output space; mean cosine to the teacher's
   vectors before training 0.64, against 0.29 for 0,2,4): half the layers, full width.
   ``--distill-args`` adds flags (e.g. '--epochs 1').
3. INT8: ``plmkit export --format onnx`` then ``plmkit quantize`` at its defaults (ONNX Runtime
   dynamic, per-channel weights, per-token activation ranges, fused attention, int8 embedding
   tables), of the student and of the teacher.
4. speed: ``--pairs`` runs of ``plmkit bench --batch-sizes 32 --precision fp32 --baselines none`` over
   teacher, student, teacher INT8 and student INT8 in one process each (the order reversed on every
   other run), on --bench-examples SQuAD paragraphs (the texts an index embeds; shortest first, so
   each batch of 32 pads as little as plmkit's length-grouped batches do). Ratios per run, median
   and range: student / teacher in PyTorch fp32, student INT8 / teacher INT8, student INT8 / student fp32.

Goals (issue 29): the student within 2 points of MRR@10 of its teacher at >= 2x its throughput
(PyTorch fp32, batch 32); its INT8 within 0.5 point of its fp32 MRR@10. Results in --work
(summary.md, summary.json; the models too). Run it alone on the machine: step 4 times (each bench
run also says when other processes took the CPU; the summary repeats it). About 4,100 training
questions: on a quiet 2-core CPU, an estimated 40-60 min (teacher ~5, distillation ~15, bench ~15).
``plmkit bench`` times embed models with plmkit's rows only (no transformers or peer baseline rows).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))          # this checkout's plmkit, in this process and (cwd) in the commands
import embed_vs_st as E  # noqa: E402  (the split, the runner, the scoring and the teacher's settings)

from plmkit.compress.general import default_student_layers  # noqa: E402
from plmkit.loading import model_config, peek  # noqa: E402

PLMKIT = [sys.executable, "-m", "plmkit.cli"]
BUDGET = {"mrr": 2.0, "speed": 2.0, "int8": 0.5}


def plmkit(*args: str) -> str:
    return E.run([*PLMKIT, *args])


def teacher_model(arg: str, train: Path, work: Path, smoke: bool, precision: str) -> tuple[Path, str]:
    """The teacher and how it was made."""
    minilm = E.minilm()
    if arg == "zero-shot":
        return minilm, "all-MiniLM-L6-v2 untouched"
    if arg != "finetune":
        return Path(arg), f"given: {arg}"
    t = time.perf_counter()
    plmkit("finetune", "--model", str(minilm), "--task", "embed", "--train", str(train), "--out", str(work / "teacher"),
           "--overwrite", "--precision", precision, *(["--max-length", "128"] if smoke else []))
    return work / "teacher", (f"plmkit finetune --task embed (the task's defaults, --precision {precision}): "
                              f"{time.perf_counter() - t:.0f} s")


def student_model(teacher: Path, train: Path, work: Path, extra: list[str]) -> tuple[Path, str]:
    n = model_config(peek(teacher)).num_layers
    keep = default_student_layers(n)[:-1] + [n - 1]     # every second layer, the top one kept: its output space
    layers = ",".join(map(str, keep))
    out = work / "student"
    t = time.perf_counter()
    plmkit("distill", "--task", "embed", "--teacher", str(teacher), "--train", str(train), "--out", str(out),
           "--student-layers", layers, "--overwrite", *extra)
    return out, f"plmkit distill --student-layers {layers} {' '.join(extra)}: {time.perf_counter() - t:.0f} s"


def int8(model: Path, work: Path, name: str) -> Path:
    onnx, out = work / f"{name}-onnx", work / f"{name}-int8"
    plmkit("export", "--model", str(model), "--format", "onnx", "--out", str(onnx), "--overwrite")
    plmkit("quantize", "--model", str(onnx), "--out", str(out), "--overwrite")
    return out


def passages(dst: Path, limit: int) -> Path:
    """The first ``limit`` SQuAD paragraphs (each with its first question, as the pairs format wants),
    shortest first."""
    doc = json.loads(E.SQUAD.read_text(encoding="utf-8"))
    rows = [{"anchor": p["context"], "positive": p["qas"][0]["question"]}
            for a in doc["data"] for p in a["paragraphs"] if p["qas"]][:limit]
    rows.sort(key=lambda r: len(r["anchor"]))
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return dst


def speed(models: dict[str, Path], data: Path, work: Path, pairs: int,
          repeats: int) -> tuple[dict[str, list[float]], list[str]]:
    """Interleaved ``plmkit bench`` runs of all models; per run: the ratios of the goal. Also the
    runs' warnings (bench says when other processes took the CPU while it timed)."""
    names = list(models)
    thr: dict[str, list[float]] = {n: [] for n in names}
    warnings = []
    for i in range(pairs):
        order = names if i % 2 == 0 else names[::-1]
        out = work / f"bench-{i}.json"
        plmkit("bench", "--models", *(str(models[n]) for n in order), "--data", str(data), "--batch-sizes", "32",
               "--baselines", "none", "--precision", "fp32", "--repeats", str(repeats), "--out", str(out))
        result = json.loads(out.read_text())
        rows = {Path(r["path"]).resolve(): r["throughput"] for r in result["rows"]}
        warnings += [f"run {i + 1}: {w}" for w in result.get("notes", []) if w.startswith("warning")]
        for n in names:
            thr[n].append(rows[models[n].resolve()])
        print(f"bench {i + 1}/{pairs}: " + ", ".join(f"{n} {thr[n][-1]:.1f}/s" for n in names), flush=True)
    ratios = {"student / teacher (torch fp32)": ("student", "teacher")}
    if "student INT8" in models:
        ratios.update({"student INT8 / teacher INT8": ("student INT8", "teacher INT8"),
                       "student INT8 / student fp32": ("student INT8", "student")})
    out = {label: [thr[a][k] / thr[b][k] for k in range(pairs)] for label, (a, b) in ratios.items()}
    return {**out, **{f"{n} texts/s": thr[n] for n in names}}, warnings


def report(scores: dict[str, dict[str, float]], ratios: dict[str, list[float]], made: list[str],
           warnings: list[str]) -> str:
    lines = ["| model | " + " | ".join(E.METRICS) + " |", "|---|" + "---|" * len(E.METRICS)]
    lines += [f"| {name} | " + " | ".join(f"{s[m]:.4f}" for m in E.METRICS) + " |" for name, s in scores.items()]
    lines += ["", "| batch-32 throughput | median | range | runs |", "|---|---|---|---|"]
    for label, v in ratios.items():
        unit = "" if label.endswith("texts/s") else "x"
        lines.append(f"| {label} | {statistics.median(v):.2f}{unit} | {min(v):.2f}-{max(v):.2f} | {len(v)} |")
    mrr = {n: 100 * s["mrr@10"] for n, s in scores.items()}
    drop = mrr["teacher"] - mrr["student"]
    speedup = statistics.median(ratios["student / teacher (torch fp32)"])
    verdicts = [(f"student within {BUDGET['mrr']:g} points of the teacher's MRR@10", drop <= BUDGET["mrr"],
                 f"{-drop:+.2f} points"),
                (f"student >= {BUDGET['speed']:g}x the teacher's throughput", speedup >= BUDGET["speed"],
                 f"{speedup:.2f}x (median)")]
    if "student INT8" in mrr:
        q_drop = mrr["student"] - mrr["student INT8"]
        verdicts.append((f"student INT8 within {BUDGET['int8']:g} point of its fp32 MRR@10",
                         q_drop <= BUDGET["int8"], f"{-q_drop:+.2f} points"))
    if warnings:
        lines += ["", f"plmkit bench warned in {len({w.split(':')[0] for w in warnings})} of "
                  f"{len(next(iter(ratios.values())))} runs, e.g. {warnings[0]}"]
    lines += ["", "Goals:"] + [f"- {'MET' if ok else 'NOT MET'}: {what} ({how})" for what, ok, how in verdicts]
    return "\n".join(["How the models were made:", *(f"- {m}" for m in made), "", *lines])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="finetune", help="finetune (MiniLM fine-tuned here, embed_vs_st.py's "
                    "settings), zero-shot (MiniLM untouched), or an embed checkpoint directory")
    ap.add_argument("--held-out", type=int, default=4, help="SQuAD articles held out for evaluation")
    ap.add_argument("--seed", type=int, default=0, help="which articles are held out")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="the teacher's fine-tuning autocast")
    ap.add_argument("--distill-args", default="", help="extra flags for plmkit distill, e.g. '--epochs 1'")
    ap.add_argument("--pairs", type=int, default=6, help="interleaved bench runs (order reversed every other run)")
    ap.add_argument("--bench-examples", type=int, default=512, help="SQuAD paragraphs each bench run times")
    ap.add_argument("--no-int8", action="store_true", help="skip the INT8 models")
    ap.add_argument("--work", type=Path, default=None, help="models and summary (default runs/embed-student[-smoke])")
    ap.add_argument("--smoke", action="store_true", help="48 training questions, 1 held-out article, 2 short "
                    "bench runs of 64 paragraphs, 2 distillation steps of 16: checks the script, measures nothing")
    a = ap.parse_args()
    if not E.SQUAD.is_file():
        sys.exit(f"data not found: {E.SQUAD} (expected ../shared/data beside the repo)")
    if a.teacher not in ("finetune", "zero-shot"):
        a.teacher = str(Path(a.teacher).resolve())
    work = (a.work or REPO / "runs" / ("embed-student-smoke" if a.smoke else "embed-student")).resolve()
    extra = a.distill_args.split() + (["--max-steps", "2", "--batch-size", "16"] if a.smoke else [])
    pairs, repeats, examples = (2, 1, 64) if a.smoke else (a.pairs, 3, a.bench_examples)
    os.chdir(REPO)                     # python -m plmkit.cli: this checkout's plmkit
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    train, held, n = E.split(work, 1 if a.smoke else a.held_out, a.seed, 48 if a.smoke else None)
    print(f"{n} training questions; held out: {1 if a.smoke else a.held_out} articles (seed {a.seed})", flush=True)
    teacher, how_t = teacher_model(a.teacher, train, work, a.smoke, a.precision)
    print(f"teacher: {how_t}", flush=True)
    student, how_s = student_model(teacher, train, work, extra)
    print(f"student: {how_s}", flush=True)
    models = {"teacher": teacher, "student": student}
    if not a.no_int8:
        models.update({"teacher INT8": int8(teacher, work, "teacher"), "student INT8": int8(student, work, "student")})

    scores = {}
    zero_shot = {} if a.teacher == "zero-shot" else {"zero-shot MiniLM": E.minilm()}   # else it is the teacher
    for name, path in {**zero_shot, **models}.items():
        scores[name] = E.evaluate(path, held)
        print(f"{name}: mrr@10 {scores[name]['mrr@10']:.4f} ({scores[name]['queries']} questions, "
              f"{scores[name]['corpus']} paragraphs)", flush=True)
    ratios, warnings = speed(models, passages(work / "passages.jsonl", examples), work, pairs, repeats)

    text = report(scores, ratios, [f"teacher: {how_t}", f"student: {how_s}"], warnings)
    print("\n" + text)
    (work / "summary.md").write_text(text + "\n", encoding="utf-8")
    (work / "summary.json").write_text(json.dumps({"scores": scores, "ratios": ratios, "teacher": how_t,
                                                   "student": how_s, "bench_warnings": warnings,
                                                   "seconds": round(time.time() - t0)},
                                                  indent=1) + "\n", encoding="utf-8")
    print(f"\n{time.time() - t0:.0f} s; results in {work}")


if __name__ == "__main__":
    main()
