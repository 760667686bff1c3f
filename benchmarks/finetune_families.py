"""Fine-tuning other families: `plmkit finetune` against transformers' Trainer, same model, bf16.

    python benchmarks/finetune_families.py                       # ModernBERT-base and roberta-base shapes
    python benchmarks/finetune_families.py --families modernbert --runs 1
    python benchmarks/finetune_families.py --quick               # smoke run: tiny models, 256 sentences

The models are random-initialised (speed does not depend on the weights) at the real shapes,
written locally with transformers' own config classes: ModernBERT-base (22 layers, hidden 768,
12 heads, GeGLU FFN 1152, local window 128 with every third layer global, vocabulary 50,368)
and roberta-base (12 layers, hidden 768, 12 heads, FFN 3072, vocabulary 50,265). The tokenizer
is a byte-level BPE trained here on the training sentences (ModernBERT's specials [CLS] [SEP]
[PAD] [MASK] [UNK]; RoBERTa's <s> <pad> </s> <unk> <mask> and its template); the configs keep the
real vocabulary sizes, so the embedding matrices (and their optimizer updates) are real-sized.
Both sides load the same saved model directory; the classification head is new on both.

Setup as benchmarks/finetune_vs_hf.py: the first 8,000 SST-2 train sentences, 1 epoch, batch 32,
max length 64, linear decay with 10% warmup, weight decay 0.01, bf16 autocast on both sides;
lr 1e-4 (random init learns little at 5e-5). Each side is a whole process timed by wall clock;
pairs alternate which side goes first; both are scored by `plmkit evaluate --precision fp32` on
SST-2 train sentences 60,000-62,000. The RoBERTa rows need plmkit's RoBERTa converter.
On a 2-core CPU one ModernBERT-base pair takes very roughly 15-25 minutes.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_vs_hf import DATA, timed, write_slices  # noqa: E402

LR, BATCH, MAX_LEN = 1e-4, 32, 64
SHAPES = {   # transformers config fields: the real base shapes, and the --quick ones
    "modernbert": {"base": dict(vocab_size=50368, hidden_size=768, num_hidden_layers=22, num_attention_heads=12,
                                intermediate_size=1152, local_attention=128, global_attn_every_n_layers=3,
                                max_position_embeddings=8192),
                   "quick": dict(vocab_size=2048, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                 intermediate_size=96, local_attention=16, global_attn_every_n_layers=3,
                                 max_position_embeddings=512)},
    "roberta": {"base": dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1),
                "quick": dict(vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=128, max_position_embeddings=130, type_vocab_size=1)},
}


# ----------------------------------------------------------------------------- model directories

def train_tokenizer(family: str, texts: list[str], vocab: int):
    """A byte-level BPE with the family's special tokens and [CLS]/<s> templates."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=family == "roberta")
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>"] if family == "roberta" else []
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if family == "roberta":
        tok.add_special_tokens(["<mask>"])
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=True)
        names = {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
                 "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"}
    else:                                          # ModernBERT: specials after the BPE vocabulary
        tok.add_special_tokens(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        names = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]",
                 "unk_token": "[UNK]"}
    return tok, names


def build_model_dir(family: str, size: str, train: Path, out: Path) -> Path:
    """config.json + random weights (transformers' own init) + tokenizer files, as a hub directory has them."""
    import torch
    import transformers

    texts = [line.split("\t")[0] for line in train.read_text(encoding="utf-8").splitlines()[1:]]
    tok, names = train_tokenizer(family, texts, vocab=16000 if size == "base" else 1000)
    ids = {n: tok.token_to_id(t) for n, t in names.items()}
    shape = SHAPES[family][size]
    assert tok.get_vocab_size() <= shape["vocab_size"]
    torch.manual_seed(0)
    if family == "modernbert":
        cfg = transformers.ModernBertConfig(**shape, pad_token_id=ids["pad_token"], cls_token_id=ids["cls_token"],
                                            sep_token_id=ids["sep_token"], bos_token_id=ids["cls_token"],
                                            eos_token_id=ids["sep_token"])
        model, inputs = transformers.ModernBertForMaskedLM(cfg), ["input_ids", "attention_mask"]
    else:
        cfg = transformers.RobertaConfig(**shape, pad_token_id=1, bos_token_id=0, eos_token_id=2)
        model, inputs = transformers.RobertaForMaskedLM(cfg), ["input_ids", "attention_mask"]
    model.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, "model_input_names": inputs,
        **names}, indent=2))
    return out


# ----------------------------------------------------------------------------- the two sides

def plmkit_finetune(model: Path, train: Path, out: Path) -> dict:
    wall, stdout = timed(["plmkit", "finetune", "--model", str(model), "--task", "classify", "--train", str(train),
                          "--out", str(out), "--overwrite", "--epochs", "1", "--batch-size", str(BATCH),
                          "--lr", str(LR), "--max-length", str(MAX_LEN), "--seed", "0"])
    return {"wall": wall, "train": float(re.search(r"trained \d+ steps in ([\d.]+) s", stdout).group(1))}


def hf_finetune(model: Path, train: Path, out: Path) -> dict:
    wall, stdout = timed([sys.executable, __file__, "--hf-worker", str(model), str(train), str(out)])
    return {"wall": wall, "train": float(re.search(r"train_seconds ([\d.]+)", stdout).group(1))}


def hf_worker(model_dir: Path, train: Path, out: Path) -> None:
    """The transformers side, as a user would write it: Trainer, bf16, dynamic padding."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)

    rows = [line.split("\t") for line in train.read_text(encoding="utf-8").splitlines()[1:]]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})
    enc = tok([r[0] for r in rows], truncation=True, max_length=MAX_LEN)
    ds = [{**{k: v[i] for k, v in enc.items()}, "labels": int(r[1])} for i, r in enumerate(rows)]
    warmup = round(0.1 * -(-len(ds) // BATCH))
    args = TrainingArguments(output_dir=str(out / "trainer"), per_device_train_batch_size=BATCH, num_train_epochs=1,
                             learning_rate=LR, warmup_steps=warmup, weight_decay=0.01, lr_scheduler_type="linear",
                             bf16=True, use_cpu=True, save_strategy="no", report_to=[], logging_steps=50,
                             seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok))
    t = time.perf_counter()
    trainer.train()
    print(f"train_seconds {time.perf_counter() - t:.2f} threads {torch.get_num_threads()}")
    trainer.save_model(str(out))
    tok.save_pretrained(str(out))


def accuracy(model: Path, held: Path) -> float:
    _, stdout = timed(["plmkit", "evaluate", "--model", str(model), "--task", "classify", "--data", str(held),
                       "--precision", "fp32", "--batch-size", "128"])
    return json.loads(stdout.strip().splitlines()[-1])["accuracy"]


def family_pairs(family: str, size: str, work: Path, train: Path, held: Path, runs: int) -> dict:
    model = build_model_dir(family, size, train, work / f"{family}-init")
    results: dict[str, list[dict]] = {"transformers": [], "plmkit": []}
    for i in range(runs):
        for name in (["transformers", "plmkit"] if i % 2 == 0 else ["plmkit", "transformers"]):
            out = work / f"{family}-{name}-{i}"
            r = (hf_finetune if name == "transformers" else plmkit_finetune)(model, train, out)
            r["accuracy"] = accuracy(out, held)
            results[name].append(r)
            print(f"{family} run {i + 1} {name}: wall {r['wall']:.1f} s, train {r['train']:.1f} s, "
                  f"accuracy {r['accuracy']:.4f}", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["modernbert", "roberta"], choices=list(SHAPES))
    ap.add_argument("--runs", type=int, default=3, help="pairs per family (medians reported)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny models, 256 train / 200 held sentences")
    ap.add_argument("--train-size", type=int, default=8000, help="SST-2 sentences in the epoch (fewer: shorter "
                    "runs, with start-up a larger share of each side's wall time)")
    ap.add_argument("--hf-worker", nargs=3, metavar=("MODEL", "TRAIN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_worker:
        hf_worker(*(Path(p) for p in args.hf_worker))
        return
    if not DATA.is_dir():
        sys.exit(f"data not found: {DATA} (expected ../shared/data beside the repo)")
    size = "quick" if args.quick else "base"
    with tempfile.TemporaryDirectory(prefix="plmkit-families-") as tmp:
        work = Path(tmp)
        train, held = write_slices(work, 256 if args.quick else args.train_size)
        if args.quick:
            held.write_text("\n".join(held.read_text(encoding="utf-8").splitlines()[:201]) + "\n", encoding="utf-8")
        table = {f: family_pairs(f, size, work, train, held, 1 if args.quick else args.runs) for f in args.families}
    print(f"\n| family ({size} shape) | transformers wall s | plmkit wall s | wall speed-up | "
          "transformers acc | plmkit acc |")
    print("|---|---|---|---|---|---|")
    for family, results in table.items():
        med = {n: {k: statistics.median(r[k] for r in rs) for k in ("wall", "accuracy")} for n, rs in results.items()}
        hf, pk = med["transformers"], med["plmkit"]
        print(f"| {family} | {hf['wall']:.1f} | {pk['wall']:.1f} | {hf['wall'] / pk['wall']:.2f}x | "
              f"{hf['accuracy']:.4f} | {pk['accuracy']:.4f} |")
    print("\nall runs:", json.dumps(table))


if __name__ == "__main__":
    main()
