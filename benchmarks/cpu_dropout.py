"""Benchmark: one BERT-mini MLM+NSP training step on CPU, plmkit's dropout vs torch's.

    python benchmarks/cpu_dropout.py [--repeats 5] [--steps 10]

The same model (BERT mini: L4-H256, vocabulary 8,000, dropout 0.1), batch (32 x 128, 15% of the
tokens masked, NSP labels), bf16 autocast, AdamW and clipping, in one process:
  * torch   the anchor: ``nn.Dropout`` modules and attention dropout inside
            ``F.scaled_dot_product_attention`` (what plmkit did before models/dropout.py);
  * plmkit  ``plmkit.models.dropout`` (16-bit uniforms cut from 64-bit draws; attention dropout
            on the explicit softmax path).
Both variants share the weights' starting point and alternate repeat by repeat; each repeat
times ``--steps`` steps after 3 warm-up steps. Prints the median ms/step of each and the ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.models import layers
from plmkit.models.config import preset
from plmkit.models.dropout import Dropout
from plmkit.models.model import PlmModel


def torch_attend(q, k, v, mask, dropout, is_causal=False, want_probs=False):
    """The pre-change attention: SDPA with its own dropout (its explicit path and Bernoulli on CPU)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal), None


@contextmanager
def torch_dropout(model: nn.Module) -> Iterator[None]:
    """Swap every plmkit Dropout for nn.Dropout and attention for torch_attend, then restore."""
    swapped = []
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, name, nn.Dropout(child.p))
                swapped.append((module, name, child))
    original = layers.attend
    layers.attend = torch_attend
    try:
        yield
    finally:
        layers.attend = original
        for module, name, child in swapped:
            setattr(module, name, child)


def make_batch(vocab: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, vocab, (32, 128), generator=g)
    labels = torch.full_like(ids, -100)
    masked = torch.rand(ids.shape, generator=g) < 0.15
    labels[masked] = ids[masked]
    ids[masked] = 4                                                   # [MASK]
    types = torch.zeros_like(ids)
    types[:, 64:] = 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": types,
            "labels": labels, "next_sentence_label": torch.randint(0, 2, (32,), generator=g)}


def time_steps(model: nn.Module, opt: torch.optim.Optimizer, batch: dict, steps: int) -> float:
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = PlmModel(preset("bert", "mini", vocab_size=8000), "mlm+nsp").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = make_batch(8000, torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"torch": [], "plmkit": []}
    for r in range(args.repeats):
        order = ("torch", "plmkit") if r % 2 == 0 else ("plmkit", "torch")
        for name in order:
            if name == "torch":
                with torch_dropout(model):
                    times[name].append(time_steps(model, opt, batch, args.steps))
            else:
                times[name].append(time_steps(model, opt, batch, args.steps))
            print(f"repeat {r + 1} {name}: {1e3 * times[name][-1]:.0f} ms/step", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nthreads {torch.get_num_threads()}, torch {torch.__version__}")
    print("| dropout | ms/step (median) | all repeats ms | speed-up |")
    print("|---|---|---|---|")
    for name in ("torch", "plmkit"):
        shown = ", ".join(f"{1e3 * t:.0f}" for t in times[name])
        print(f"| {name} | {1e3 * med[name]:.0f} | {shown} | {med['torch'] / med[name]:.2f}x |")


if __name__ == "__main__":
    main()
