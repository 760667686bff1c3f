"""The causal LM head on labelled positions only, against the head on every position (issue 28, item 3).

    python benchmarks/clm_sparse_head.py [PAIRS]      # default 6 interleaved pairs

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

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import lora_vs_peft as L  # noqa: E402  (the model, tokenizer and chat data of the LoRA benchmark)

from plmkit.adapters.lora import inject_lora  # noqa: E402
from plmkit.data.features import collate  # noqa: E402
from plmkit.loading import load  # noqa: E402
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


def batches_of(encoded: Path, size: int = 8) -> list[dict[str, torch.Tensor]]:
    """Length-sorted batches of ``size``, padded by plmkit's own collate (labels with -100)."""
    feats = sorted(({**f, "attention_mask": [1] * len(f["input_ids"])}
                    for f in map(json.loads, encoded.read_text().splitlines())), key=lambda f: len(f["input_ids"]))
    return [collate(feats[i:i + size], pad_id=0) for i in range(0, len(feats) - size + 1, size)]


def main() -> None:
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 6
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
    sparse = H.CLMHead.forward

    def timed(impl, bs) -> float:
        H.CLMHead.forward = impl
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
    with torch.no_grad():
        for name, impl in (("dense", dense_forward), ("plmkit", sparse)):
            H.CLMHead.forward = impl
            losses[name] = float(model(**batches[3]).loss)
    print(f"eval loss of one batch: dense {losses['dense']:.6f}, plmkit {losses['plmkit']:.6f}", flush=True)
    timed_batches = batches[::max(1, len(batches) // 6)][:6]       # 6 batches of all lengths per pass
    timed(sparse, timed_batches[:2])                                 # warm-up
    ratios = []
    for i in range(pairs):
        arms = [("dense", dense_forward), ("plmkit", sparse)]
        t = {name: timed(impl, timed_batches) for name, impl in (arms if i % 2 == 0 else arms[::-1])}
        ratios.append(t["dense"] / t["plmkit"])
        print(f"pair {i}: dense {t['dense']:.2f} s, plmkit {t['plmkit']:.2f} s -> {ratios[-1]:.3f}x", flush=True)
    H.CLMHead.forward = sparse
    print(f"dense / plmkit: median {statistics.median(ratios):.3f}x, range {min(ratios):.3f}-{max(ratios):.3f}")


if __name__ == "__main__":
    main()
