"""LoRA fine-tuning speed: `plmkit finetune --strategy lora` against transformers' Trainer + PEFT (bf16).

    python benchmarks/lora_vs_peft.py                  # SmolLM2-135M-shaped model (medians of --runs)
    python benchmarks/lora_vs_peft.py --quick          # a tiny model and 16 conversations: checks the script

Model: SmolLM2-135M's architecture (LlamaConfig: 30 layers, hidden 576, 9 query / 3 key-value heads,
SwiGLU FFN 1536, vocabulary 49,152, tied embeddings, rope theta 100,000) with random weights: the
speed does not depend on the values. Tokenizer: a byte-level BPE trained here on the data, with
ChatML special tokens and SmolLM2-Instruct's chat template.

Data: --examples conversations built from WikiText-2 paragraphs (user: "Continue: <first sentence>",
assistant: the rest of the paragraph), max length 256, the loss on the assistant turn only. plmkit
encodes them (chat template, assistant mask); the Trainer gets exactly those token ids and labels,
batched by length as plmkit batches (group_by_length), so both sides see the same tokens.

Same LoRA on both sides: r 16, alpha 32, dropout 0.05 on q, k, v, o, gate, up, down (PEFT's
q_proj ... down_proj; plmkit's gate/up are the two blocks of its fused [gate; up] projection, the
same maths), lm_head frozen, AdamW lr 2e-4, weight decay 0.01, linear decay after 10% warmup,
batch 8, 1 epoch, bf16 autocast over fp32 weights. Each side is a whole process; the pairs run
back to back, alternating which goes first. Reported: input tokens of the epoch / the training
seconds each process measures (plmkit: its "trained N steps in S s" line; transformers: around
trainer.train()), medians, and the ratio. Goal: plmkit >= 2x.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGETS = ["q", "k", "v", "o", "gate", "up", "down"]
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = dict(r=16, alpha=32, dropout=0.05)
TRAIN = dict(lr=2e-4, batch=8, max_length=256, weight_decay=0.01, warmup=0.1)
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
TINY = dict(SMOLLM2_135M, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=4096)
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
          "<|im_end|>\\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def paragraphs(n: int) -> list[tuple[str, str]]:
    """(first sentence, rest) of the first n WikiText-2 paragraphs long enough to have both, with a
    first sentence of at most 400 characters."""
    text = (DATA / "corpus" / "wikitext2-valid.txt").read_text(encoding="utf-8")
    out = []
    for para in (p.strip() for p in text.split("\n")):
        if para.startswith("=") or len(para) < 200 or ". " not in para:
            continue
        first, rest = para.split(". ", 1)
        if len(first) > 400:      # the prompt must leave room for the answer within --max-length
            continue
        out.append((first + ".", rest))
        if len(out) == n:
            break
    return out


def make_model(work: Path, shape: dict) -> Path:
    """A random SmolLM2-shaped model + tokenizer + chat template, saved as transformers saves them."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    d = work / "model"
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape)).save_pretrained(str(d))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    vocab = min(8192, shape["vocab_size"])
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([f + " " + r for f, r in paragraphs(2000)], trainer=trainer)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "chat_template": CHATML, "model_max_length": 8192}))
    return d


def write_data(work: Path, model: Path, n: int, max_length: int) -> tuple[Path, Path, int]:
    """The chat file (plmkit's input) and its encoding (the Trainer's input); total input tokens."""
    from plmkit.tasks import Prep
    from plmkit.tasks.chat import read_chat
    from plmkit.tasks.generate import TASK
    from plmkit.tokenizer import load_tokenizer

    chat = work / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Continue: {first}"},
                                                     {"role": "assistant", "content": rest}]}) + "\n"
                            for first, rest in paragraphs(n)), encoding="utf-8")
    feats = TASK.encode(load_tokenizer(model), read_chat(chat), {}, Prep(max_length=max_length))
    encoded = work / "features.jsonl"
    encoded.write_text("".join(json.dumps({k: f[k] for k in ("input_ids", "labels")}) + "\n" for f in feats))
    return chat, encoded, sum(len(f["input_ids"]) for f in feats)


def timed(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PLMKIT_QUIET": "1"})
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t, proc.stdout


def plmkit_side(model: Path, chat: Path, out: Path, max_length: int) -> float:
    _, stdout = timed([sys.executable, "-m", "plmkit.cli", "finetune", "--model", str(model), "--task", "generate",
                       "--train", str(chat), "--out", str(out), "--overwrite", "--strategy", "lora",
                       "--lora-targets", *TARGETS, "--lora-r", str(LORA["r"]), "--lora-alpha", str(LORA["alpha"]),
                       "--lora-dropout", str(LORA["dropout"]), "--epochs", "1", "--batch-size", str(TRAIN["batch"]),
                       "--lr", str(TRAIN["lr"]), "--weight-decay", str(TRAIN["weight_decay"]),
                       "--warmup-ratio", str(TRAIN["warmup"]), "--max-length", str(max_length),
                       "--precision", "bf16", "--seed", "0", "--save-every", "100000"])
    return float(re.search(r"trained \d+ steps in ([\d.]+) s", stdout).group(1))


def hf_side(model: Path, encoded: Path, out: Path) -> float:
    _, stdout = timed([sys.executable, __file__, "--hf-worker", str(model), str(encoded), str(out)])
    return float(re.search(r"train_seconds ([\d.]+)", stdout).group(1))


def hf_worker(model_dir: Path, encoded: Path, out: Path) -> None:
    """The transformers + PEFT side, as a user would write it: Trainer, bf16, the same LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    feats = [json.loads(line) for line in encoded.read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules=PEFT_TARGETS, task_type="CAUSAL_LM"))

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)
        pad = lambda key, fill: torch.tensor([r[key] + [fill] * (n - len(r[key])) for r in rows])  # noqa: E731
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (n - len(r["input_ids"])) for r in rows])
        return {"input_ids": pad("input_ids", 0), "labels": pad("labels", -100), "attention_mask": mask}

    cuda = torch.cuda.is_available()
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}     # transformers 5 renamed the option
    by_length = ({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in fields
                 else {"group_by_length": True})
    args = TrainingArguments(output_dir=str(out / "trainer"), per_device_train_batch_size=TRAIN["batch"],
                             num_train_epochs=1, learning_rate=TRAIN["lr"], weight_decay=TRAIN["weight_decay"],
                             warmup_steps=round(TRAIN["warmup"] * -(-len(feats) // TRAIN["batch"])),
                             lr_scheduler_type="linear", bf16=True, use_cpu=not cuda,
                             save_strategy="no", report_to=[], logging_steps=50, seed=0,
                             dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False, **by_length)
    trainer = Trainer(model=model, args=args, train_dataset=feats, data_collator=collate)
    t = time.perf_counter()
    trainer.train()
    print(f"train_seconds {time.perf_counter() - t:.2f} threads {torch.get_num_threads()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="pairs of runs (medians reported)")
    ap.add_argument("--examples", type=int, default=512, help="conversations in the epoch")
    ap.add_argument("--quick", action="store_true", help="tiny model, 16 conversations, one pair: a smoke run")
    ap.add_argument("--hf-worker", nargs=3, metavar=("MODEL", "FEATURES", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_worker:
        hf_worker(*(Path(a) for a in args.hf_worker))
        return
    try:
        import peft  # noqa: F401
    except ImportError:
        sys.exit("PEFT is not installed: pip install peft (the transformers side of this benchmark)")
    if not DATA.is_dir():
        sys.exit(f"data not found: {DATA} (expected ../shared/data beside the repo)")
    shape, n, runs, max_length = ((TINY, 16, 1, 160) if args.quick
                                  else (SMOLLM2_135M, args.examples, args.runs, TRAIN["max_length"]))
    with tempfile.TemporaryDirectory(prefix="plmkit-lora-bench-") as tmp:
        work = Path(tmp)
        model = make_model(work, shape)
        chat, encoded, tokens = write_data(work, model, n, max_length)
        print(f"{n} conversations, {tokens:,} input tokens per epoch, max length {max_length}", flush=True)
        seconds: dict[str, list[float]] = {"transformers+peft": [], "plmkit": []}
        for i in range(runs):
            order = list(seconds) if i % 2 == 0 else list(reversed(seconds))
            for name in order:
                out = work / f"{name}-{i}"
                s = hf_side(model, encoded, out) if name != "plmkit" else plmkit_side(model, chat, out, max_length)
                seconds[name].append(s)
                print(f"run {i + 1} {name}: train {s:.1f} s, {tokens / s:,.0f} tokens/s", flush=True)
        med = {name: statistics.median(v) for name, v in seconds.items()}
        print("\n| tool | train s (median) | tokens/s | speed-up |")
        print("|---|---|---|---|")
        for name, s in med.items():
            print(f"| {name} | {s:.1f} | {tokens / s:,.0f} | {med['transformers+peft'] / s:.2f}x |")
        print("\nall runs:", json.dumps(seconds))


if __name__ == "__main__":
    main()
