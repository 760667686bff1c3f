"""Local attention: memory and time of one ModernBERT-base local layer at 512, 2,048 and 8,192 tokens.

    python benchmarks/local_attention.py                   # memory + time (median of --repeats)
    python benchmarks/local_attention.py --repeats 0       # memory only (fine on a busy machine)
    python benchmarks/local_attention.py --lengths 512 2048

The layer: ModernBERT-base's shape (hidden 768, 12 heads of 64, GeGLU FFN 1152, window 128:
|i - j| <= 64), one sliding-window layer (pre-LN norm, rotary with theta 10,000, attention,
FFN), batch 1, fp32, inference (no_grad), random weights (cost does not depend on them).
Rows, each in a fresh subprocess per length:

  plmkit-chunked   plmkit's Block as it runs: above 4 x the half window it takes the chunked
                   path (models/layers.py ``banded_attend``): queries in chunks of 64 against
                   the 192 keys around them, O(T x window) memory.
  plmkit-dense     the same Block forced onto the dense path: a T x T additive band mask and
                   ``F.scaled_dot_product_attention`` (what a model without a chunked path does).
  transformers     transformers' ``ModernBertEncoderLayer`` (sdpa attention), its sliding-window
                   mask from ``create_bidirectional_sliding_window_mask`` and its rotary tables,
                   built inside the measured call as ``ModernBertModel.forward`` builds them.

Memory: the growth of the process's resident set during one forward pass: the peak
(``VmHWM`` in /proc/self/status, reset just before the call by writing 5 to
/proc/self/clear_refs) minus the resident set just before it. Large tensors are mmap-ed by
glibc and returned on free, so this is the peak of what the call held at once (its output
included), as the kernel saw it; Linux only. Time: median wall time of ``--repeats`` calls
after that first one (only meaningful on an otherwise idle machine).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ROWS = ("plmkit-chunked", "plmkit-dense", "transformers")
HIDDEN, HEADS, FFN, WINDOW = 768, 12, 1152, 128


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _plmkit_call(T: int, dense: bool):
    sys.path.insert(0, str(REPO))
    from plmkit.models import layers as L
    from plmkit.models.config import ModelConfig

    cfg = ModelConfig(vocab_size=50368, hidden_size=HIDDEN, num_layers=3, num_heads=HEADS, intermediate_size=FFN,
                      max_position=8192, local_window=WINDOW, global_every=3, attn_bias=False, attn_out_bias=False,
                      positions="rotary", rope_theta=160_000.0, rope_theta_local=10_000.0, type_vocab_size=0,
                      norm_bias=False, layer_norm_eps=1e-5, pre_ln=True, first_attn_norm=False, ffn_kind="gated",
                      ffn_bias=False, hidden_dropout=0.0, attention_dropout=0.0, use_pooler=False, layout="modernbert")
    block = L.Block(cfg, 1).eval()                    # layer 1: local
    assert cfg.window(1) == WINDOW // 2
    if dense:
        L.Context.banded = lambda self, T, half: False
    x = torch.randn(1, T, HIDDEN)
    pos = torch.arange(T)[None]

    def call():
        ctx = L.Context(cfg, None, pos, T, T, x.dtype, False)
        return block(x, ctx, None)[0]
    return call


def _hf_call(T: int):
    from transformers import ModernBertConfig
    from transformers.masking_utils import create_bidirectional_sliding_window_mask
    from transformers.models.modernbert.modeling_modernbert import ModernBertEncoderLayer, ModernBertRotaryEmbedding

    cfg = ModernBertConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=FFN, num_hidden_layers=3,
                           local_attention=WINDOW, max_position_embeddings=8192, attn_implementation="sdpa")
    assert cfg.layer_types[1] == "sliding_attention"
    layer = ModernBertEncoderLayer(cfg, 1).eval()
    rotary = ModernBertRotaryEmbedding(cfg)
    x = torch.randn(1, T, HIDDEN)
    pos = torch.arange(T)[None]

    def call():
        mask = create_bidirectional_sliding_window_mask(config=cfg, inputs_embeds=x, attention_mask=None)
        return layer(x, attention_mask=mask, position_embeddings=rotary(x, pos, "sliding_attention"))
    return call


def worker(row: str, T: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    call = _hf_call(T) if row == "transformers" else _plmkit_call(T, dense=row == "plmkit-dense")
    with torch.no_grad():
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")          # reset the peak resident set
        out = call()
        peak = _status("VmHWM") - before
        del out
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
    return {"row": row, "tokens": T, "peak_bytes": peak, "ms": statistics.median(times) * 1e3 if times else None}


def run(row: str, T: int, repeats: int, threads: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", row, str(T), "--repeats", str(repeats),
                           "--threads", str(threads)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{row} at {T} tokens failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per row and length (0: memory only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", nargs=2, metavar=("ROW", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.threads)))
        return
    results = {}
    for T in args.lengths:
        for row in args.rows:
            results[row, T] = r = run(row, T, args.repeats, args.threads)
            ms = f", {r['ms']:.1f} ms" if r["ms"] is not None else ""
            print(f"{row} @ {T}: {r['peak_bytes'] / 2**20:.1f} MiB{ms}", flush=True)
    first, last = min(args.lengths), max(args.lengths)
    print(f"\n| tokens | {' | '.join(f'{r} MiB' for r in args.rows)} |"
          + ("".join(f" {r} ms |" for r in args.rows) if args.repeats else ""))
    print("|---" * (1 + len(args.rows) * (2 if args.repeats else 1)) + "|")
    for T in args.lengths:
        mem = " | ".join(f"{results[r, T]['peak_bytes'] / 2**20:.1f}" for r in args.rows)
        ms = "".join(f" {results[r, T]['ms']:.1f} |" for r in args.rows) if args.repeats else ""
        print(f"| {T:,} | {mem} |{ms}")
    growth = ", ".join(f"{r} {results[r, last]['peak_bytes'] / results[r, first]['peak_bytes']:.1f}x"
                       for r in args.rows)
    print(f"\nmemory growth {first} -> {last} tokens ({last // first}x the tokens): {growth}")


if __name__ == "__main__":
    main()
