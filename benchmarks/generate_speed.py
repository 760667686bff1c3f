"""Greedy generation speed of plmkit (KV cache) against transformers' generate, and peak memory at 2k context.

    python benchmarks/generate_speed.py                # SmolLM2-135M-shaped model (medians of --runs)
    python benchmarks/generate_speed.py --quick        # a tiny model, short prompts: checks the script
    python benchmarks/generate_speed.py --weights bf16 int8   # also plmkit with bf16 / INT8 weights

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

--weights adds plmkit arms that decode with those weights (``plmkit generate --weights``: bf16, or
weight-only INT8 with bf16 activations), each compared with plmkit fp32: tokens/s, and how many of
the rows generate the same tokens. The roofline table divides the machine's read bandwidth
(benchmarks/membw.py, measured first) by the bytes of weights one step reads (every weight but the
embedding rows): the batch-1 tokens/s that bandwidth alone would allow, and the share reached.
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


def worker(side: str, model_dir: Path, batch: int, length: int, new: int, dtype: str, weights: str) -> None:
    """One measurement: load, warm up, time one generate call; JSON on stdout."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    read = 0
    if side == "plmkit":
        from plmkit.models.checkpoint import load_model
        from plmkit.models.generate import generate
        from plmkit.models.weight_int8 import use_weights, weight_bytes

        model = load_model(model_dir).to(device, torch_dtype).eval()
        if weights != "fp32":
            use_weights(model, weights)
        read = weight_bytes(model)
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
                      "rows": [hashlib.sha1(r.numpy().tobytes()).hexdigest()[:12] for r in gen],
                      "weight_bytes": read, "threads": torch.get_num_threads()}))


def measure(side: str, model: Path, batch: int, length: int, new: int, dtype: str, weights: str = "fp32") -> dict:
    cmd = [sys.executable, __file__, "--worker", side, str(model), str(batch), str(length), str(new), dtype, weights]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PLMKIT_QUIET": "1"})
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


Arm = tuple[str, str]       # (side, --weights)


def arm_label(arm: Arm) -> str:
    side, weights = arm
    return side if weights == "fp32" else f"{side} --weights {weights}"


def speed_tables(model: Path, arms: list[Arm], runs: int, length: int, new: int,
                 dtype: str) -> tuple[dict[Arm, float], dict[Arm, int]]:
    """The transformers-vs-plmkit table (and one for the --weights arms); returns each arm's batch-1
    tokens/s and bytes of weights read per step."""
    t, p = arms[:2]                      # the transformers and plmkit fp32 arms
    extra = ["\n| batch | plmkit arm | tok/s | vs plmkit | rows with plmkit's tokens |\n|---|---|---|---|---|"]
    print("| batch | transformers tok/s | plmkit tok/s | speed-up | same tokens |\n|---|---|---|---|---|")
    batch1: dict[Arm, float] = {}
    read: dict[Arm, int] = {}
    for batch in (1, 8):
        res: dict[Arm, list[dict]] = {a: [] for a in arms}
        for i in range(runs):
            for arm in (arms if i % 2 == 0 else arms[::-1]):
                res[arm].append(measure(arm[0], model, batch, length, new, dtype, arm[1]))
        tps = {a: statistics.median(r["tokens_per_s"] for r in res[a]) for a in arms}
        same = res[p][0]["digest"] == res[t][0]["digest"]
        print(f"| {batch} | {tps[t]:.1f} | {tps[p]:.1f} | {tps[p] / tps[t]:.2f}x | {'yes' if same else 'no'} |",
              flush=True)
        for arm in arms[2:]:
            rows = sum(a == b for a, b in zip(res[arm][0]["rows"], res[p][0]["rows"]))
            extra.append(f"| {batch} | {arm_label(arm)} | {tps[arm]:.1f} | {tps[arm] / tps[p]:.2f}x | "
                         f"{rows}/{batch} |")
        if batch == 1:
            batch1 = {a: tps[a] for a in arms}
            read = {a: res[a][0]["weight_bytes"] for a in arms}
    if len(arms) > 2:
        print("\n".join(extra), flush=True)
    return batch1, read


def roofline(batch1: dict[Arm, float], read: dict[Arm, int], arms: list[Arm], size_mib: int) -> None:
    """Batch-1 tokens/s against what the read bandwidth allows for the bytes of weights a step reads."""
    from membw import bandwidth

    bw = bandwidth(size_mib, runs=5)
    print(f"\nRead bandwidth (benchmarks/membw.py, {size_mib} MiB, {bw['threads']} threads): "
          f"{bw['read_gbs']:.1f} GB/s (copy: {bw['copy_gbs']:.1f} GB/s read + write)\n")
    print("| batch 1 | weight MiB read per token | roofline tok/s | tok/s | share of the roofline |\n"
          "|---|---|---|---|---|")
    for arm in arms[1:]:                # the plmkit arms: transformers reads the same bytes as plmkit fp32
        top = bw["read_gbs"] * 1e9 / read[arm]
        print(f"| {arm_label(arm)} | {read[arm] / 2**20:.1f} | {top:.1f} | {batch1[arm]:.1f} | "
              f"{batch1[arm] / top:.0%} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="measurements per side and batch size (medians)")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (batch 8: the longest row)")
    ap.add_argument("--new", type=int, default=128, help="tokens to generate")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="weights of both models")
    ap.add_argument("--weights", nargs="+", default=[], choices=["bf16", "int8"],
                    help="extra plmkit arms decoding with these weights (plmkit generate --weights)")
    ap.add_argument("--membw-mib", type=int, default=1024, help="buffer of the bandwidth measurement (0: skip "
                    "it and the roofline table)")
    ap.add_argument("--quick", action="store_true", help="tiny model, 16 + 8 tokens, one run: a smoke run")
    ap.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        side, model, batch, length, new, dtype, weights = args.worker
        worker(side, Path(model), int(batch), int(length), int(new), dtype, weights)
        return
    shape, runs, length, new, context, membw = ((TINY, 1, 16, 8, 64, min(args.membw_mib, 64)) if args.quick
                                                else (SMOLLM2_135M, args.runs, args.prompt, args.new, 2048,
                                                      args.membw_mib))
    arms = [(side, "fp32") for side in SIDES] + [("plmkit", w) for w in args.weights]
    with tempfile.TemporaryDirectory(prefix="plmkit-gen-bench-") as tmp:
        model = make_model(Path(tmp), shape)
        batch1, read = speed_tables(model, arms, runs, length, new, args.dtype)
        print(f"\n| {context}-token context, batch 1 | peak MiB | growth over the loaded model MiB |\n|---|---|---|")
        for arm in arms:
            r = measure(arm[0], model, 1, context - new, new, args.dtype, arm[1])
            print(f"| {arm_label(arm)} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['loaded_mb']:.0f} |", flush=True)
    if membw:
        roofline(batch1, read, arms, membw)


if __name__ == "__main__":
    main()
