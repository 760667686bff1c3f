"""Greedy generation speed of plmkit (KV cache) against transformers' generate, and peak memory at 2k context.

    python benchmarks/generate_speed.py                # SmolLM2-135M-shaped model (medians of --runs)
    python benchmarks/generate_speed.py --quick        # a tiny model, short prompts: checks the script

Model: SmolLM2-135M's architecture (LlamaConfig: 30 layers, hidden 576, 9 query / 3 key-value heads,
SwiGLU 1536, vocabulary 49,152, tied embeddings) with random weights, loaded by each side from the
same transformers directory. Greedy decoding, no EOS (every row generates --new tokens), the same
prompt ids on both sides: batch 1 (one prompt of --prompt tokens) and batch 8 (prompts of
--prompt/2 .. --prompt tokens, left-padded with an attention mask). fp32 by default (--dtype bf16
casts both models' weights). Each measurement is a whole process (model loaded, one warm-up
generation, then the timed one); tokens/s = batch x new tokens / seconds of the timed call. Runs
alternate which side goes first; medians. The generated ids are compared (fp32: they must match).

Memory: one prompt of 2,048 - --new tokens, then --new tokens (a 2k context): the process's peak
resident memory (CPU; ru_maxrss) or peak allocated CUDA memory, and its growth over the loaded
model. Goal: plmkit >= 1.5x transformers' tokens/s at batch 1 and 8.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
TINY = dict(SMOLLM2_135M, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=4096)
SIDES = ("transformers", "plmkit")


def make_model(work: Path, shape: dict) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    d = work / "model"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape)).save_pretrained(str(d))
    return d


def prompts(batch: int, length: int, vocab: int):
    """Prompt ids [B, T] (rows of length T/2..T, left-padded with 0) and the attention mask."""
    import torch

    g = torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for b in range(1, batch):
        mask[b, :(length // 2) * b // batch] = 0
    return ids * mask, mask


def peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux: KiB


def worker(side: str, model_dir: Path, batch: int, length: int, new: int, dtype: str) -> None:
    """One measurement: load, warm up, time one generate call; JSON on stdout."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    if side == "plmkit":
        from plmkit.models.checkpoint import load_model
        from plmkit.models.generate import generate

        model = load_model(model_dir).to(device, torch_dtype).eval()
        run = lambda ids, mask, n: generate(model, ids, n, temperature=0.0, eos_token_id=None,  # noqa: E731
                                            attention_mask=mask if batch > 1 else None)
    else:
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype).to(device).eval()
        model.generation_config.eos_token_id = None
        run = lambda ids, mask, n: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,  # noqa: E731
                                                  do_sample=False, pad_token_id=0)
    ids, mask = prompts(batch, length, model.config.vocab_size)
    ids, mask = ids.to(device), mask.to(device)
    with torch.inference_mode():
        run(ids[:, -8:], mask[:, -8:], 4)                                   # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        loaded = peak_mb() if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t = time.perf_counter()
        out = run(ids, mask, new)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
    gen = out[:, ids.size(1):].cpu()
    assert gen.size(1) == new, f"{side} generated {gen.size(1)} tokens, not {new}"
    print(json.dumps({"seconds": seconds, "tokens_per_s": batch * new / seconds, "peak_mb": peak_mb(),
                      "loaded_mb": loaded, "digest": hashlib.sha1(gen.numpy().tobytes()).hexdigest()[:12],
                      "threads": torch.get_num_threads()}))


def measure(side: str, model: Path, batch: int, length: int, new: int, dtype: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, str(model), str(batch), str(length), str(new), dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PLMKIT_QUIET": "1"})
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="measurements per side and batch size (medians)")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (batch 8: the longest row)")
    ap.add_argument("--new", type=int, default=128, help="tokens to generate")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="weights of both models")
    ap.add_argument("--quick", action="store_true", help="tiny model, 16 + 8 tokens, one run: a smoke run")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        side, model, batch, length, new, dtype = args.worker
        worker(side, Path(model), int(batch), int(length), int(new), dtype)
        return
    shape, runs, length, new, context = ((TINY, 1, 16, 8, 64) if args.quick
                                         else (SMOLLM2_135M, args.runs, args.prompt, args.new, 2048))
    with tempfile.TemporaryDirectory(prefix="plmkit-gen-bench-") as tmp:
        model = make_model(Path(tmp), shape)
        print("| batch | transformers tok/s | plmkit tok/s | speed-up | same tokens |\n|---|---|---|---|---|")
        for batch in (1, 8):
            res: dict[str, list[dict]] = {s: [] for s in SIDES}
            for i in range(runs):
                for side in (SIDES if i % 2 == 0 else SIDES[::-1]):
                    res[side].append(measure(side, model, batch, length, new, args.dtype))
            tps = {s: statistics.median(r["tokens_per_s"] for r in res[s]) for s in SIDES}
            same = res["plmkit"][0]["digest"] == res["transformers"][0]["digest"]
            print(f"| {batch} | {tps['transformers']:.1f} | {tps['plmkit']:.1f} | "
                  f"{tps['plmkit'] / tps['transformers']:.2f}x | {'yes' if same else 'no'} |", flush=True)
        print(f"\n| {context}-token context, batch 1 | peak MiB | growth over the loaded model MiB |\n|---|---|---|")
        for side in SIDES:
            r = measure(side, model, 1, context - new, new, args.dtype)
            print(f"| {side} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['loaded_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
