"""The LoRA step's parts, each against what it replaced (issue 28, item 3), in-process A/B.

    python benchmarks/clm_sparse_head.py [PAIRS] [ARM]      # default 6 interleaved pairs, ARM head
    python benchmarks/clm_sparse_head.py 5 loss             # the chunked vocabulary cross-entropy
    python benchmarks/clm_sparse_head.py 5 scaling          # LoRA's alpha / r on the rank-r activation

ARM ``head`` (the default): the causal LM head on labelled positions only against the head on every
position; ``loss``: models/cross_entropy.py's chunked loss against ``F.cross_entropy`` of the fp32
logits; ``scaling``: ``LoraLinear.forward`` scaling ``A x`` against scaling the out-wide ``B A x``.

In one process: a SmolLM2-135M-shaped random Llama (lora_vs_peft.py's model, tokenizer and chat data:
"Continue: <first sentence>" -> the rest of a WikiText-2 paragraph, loss on the assistant turn only),
LoRA r 16 on q, k, v, o, gate, up, down, batch 8 (length-sorted), bf16 autocast, AdamW on the LoRA
weights. Each timed pass is forward + backward + step over the same 6 batches with one of two
``CLMHead.forward``s: ``dense`` (the LM head over all B x T positions, then the shifted loss: the
implementation before 2026-12-07) and plmkit's (only the positions whose next token is labelled
reach the vocabulary projection). Passes alternate which goes first; reported: dense / plmkit
seconds per pair, median and range. Run it alone on the machine.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import lora_vs_peft as L  # noqa: E402  (the model, tokenizer and chat data of the LoRA benchmark)

from plmkit.adapters import lora as LM  # noqa: E402
from plmkit.adapters.lora import inject_lora  # noqa: E402
from plmkit.data.features import collate  # noqa: E402
from plmkit.loading import load  # noqa: E402
from plmkit.models import cross_entropy as CE  # noqa: E402
from plmkit.models import heads as H  # noqa: E402
from plmkit.models.heads import ModelOutput, token_loss  # noqa: E402


def dense_forward(self, out, batch):
    """CLMHead.forward before 2026-12-07: logits at every position, then the shifted loss."""
    logits = self.lm_head(out.last_hidden_state)
    labels = batch.get("labels")
    if labels is None:
        return ModelOutput(logits=logits)
    loss = token_loss(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), batch)
    return ModelOutput(loss=loss, logits=logits, aux={"clm_loss": loss.detach()})


def wide_scaling_forward(self, x):
    """LoraLinear.forward before 2026-12-08: the scaling on the out-wide update."""
    return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling


def arms_of(arm: str) -> dict[str, Callable[[], None]]:
    """(old, plmkit): each a function that puts that implementation in place."""
    sparse, rank, wide = H.CLMHead.forward, LM.LoraLinear.forward, CE.WIDE
    table = {"head": (lambda: setattr(H.CLMHead, "forward", dense_forward),
                      lambda: setattr(H.CLMHead, "forward", sparse)),
             "loss": (lambda: setattr(CE, "WIDE", 1 << 62), lambda: setattr(CE, "WIDE", wide)),
             "scaling": (lambda: setattr(LM.LoraLinear, "forward", wide_scaling_forward),
                         lambda: setattr(LM.LoraLinear, "forward", rank))}
    if arm not in table:
        sys.exit(f"unknown arm {arm!r}: choose {', '.join(table)}")
    return {"old": table[arm][0], "plmkit": table[arm][1]}


def batches_of(encoded: Path, size: int = 8) -> list[dict[str, torch.Tensor]]:
    """Length-sorted batches of ``size``, padded by plmkit's own collate (labels with -100)."""
    feats = sorted(({**f, "attention_mask": [1] * len(f["input_ids"])}
                    for f in map(json.loads, encoded.read_text().splitlines())), key=lambda f: len(f["input_ids"]))
    return [collate(feats[i:i + size], pad_id=0) for i in range(0, len(feats) - size + 1, size)]


def main() -> None:
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    arms = arms_of(sys.argv[2] if len(sys.argv) > 2 else "head")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "plmkit-clm-sparse-head"
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        L.make_model(work, L.SMOLLM2_135M)
    _, encoded, _ = L.write_data(work, model_dir, 96, 256)
    batches = batches_of(encoded)
    share = (sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
             / sum(b["labels"][:, 1:].numel() for b in batches))
    print(f"{len(batches)} batches; labelled share of the positions: {share:.2f}", flush=True)
    torch.manual_seed(0)
    model = load(str(model_dir))
    inject_lora(model, L.TARGETS, 16, 32.0, 0.05)
    for name, p in model.named_parameters():
        p.requires_grad = "lora" in name
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

    def timed(put, bs) -> float:
        put()
        model.train()
        t = time.perf_counter()
        for b in bs:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(**b).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    model.eval()
    losses = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for name, put in arms.items():
            put()
            losses[name] = float(model(**batches[3]).loss)
    print(f"eval loss of one batch: old {losses['old']:.6f}, plmkit {losses['plmkit']:.6f}", flush=True)
    timed_batches = batches[::max(1, len(batches) // 6)][:6]       # 6 batches of all lengths per pass
    timed(arms["plmkit"], timed_batches[:2])                         # warm-up
    ratios = []
    for i in range(pairs):
        order = list(arms) if i % 2 == 0 else list(arms)[::-1]
        t = {name: timed(arms[name], timed_batches) for name in order}
        ratios.append(t["old"] / t["plmkit"])
        print(f"pair {i}: old {t['old']:.2f} s, plmkit {t['plmkit']:.2f} s -> {ratios[-1]:.3f}x", flush=True)
    arms["plmkit"]()
    print(f"old / plmkit: median {statistics.median(ratios):.3f}x, range {min(ratios):.3f}-{max(ratios):.3f}")


if __name__ == "__main__":
    main()
