"""Generation: fine-tune a decoder (causal LM) on prompt -> completion pairs.

Training input is ``prompt \\n completion EOS`` with the loss on the completion only. Scores:
the completion loss per token (lower is better; it selects the best checkpoint) and exact
match of the greedy completion against the gold one (whitespace-normalised).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from ..data.features import EOS_CANDIDATES, IGNORE, collate, configured, encode_generation, length_bucketed_batches
from ..data.readers import GenExample, _json_objects, _rows, read_generation, read_lines
from ..errors import InputError, PlmkitError
from ..models.generate import generate
from ..precision import autocast
from ..train.logging import progress_enabled
from .common import Prep, TaskData, pad_id

SEP = "\n"   # between prompt and completion, as in encode_generation


class GenerateTask:
    name = "generate"
    head = "clm"
    metric = "loss"
    greater_is_better = False
    help = "JSONL {prompt, completion} or TSV prompt<TAB>completion (predict: prompt alone is enough)"

    def read(self, path: str, prep: Prep, labels: list[str] | None = None,
             require_labels: bool = True) -> list[GenExample]:
        return read_generation(path) if require_labels else read_prompts(path)

    def head_config(self, examples: list[GenExample], prep: Prep) -> dict[str, Any]:
        return {}

    def encode(self, tok: Tokenizer, examples: list[GenExample], head_config: dict[str, Any],
               prep: Prep) -> list[dict[str, Any]]:
        return encode_generation(tok, examples, prep.max_length, sep=SEP)

    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        completions = self._complete(model, data)
        hits = [_norm(c) == _norm(ex.completion) for c, ex in zip(completions, data.examples)]
        return {"loss": completion_loss(model, data), "exact_match": sum(hits) / len(hits)}

    def predict(self, model: nn.Module, data: TaskData) -> list[dict[str, Any]]:
        return [{"prompt": ex.prompt, "completion": c}
                for ex, c in zip(data.examples, self._complete(model, data))]

    def _complete(self, model: nn.Module, data: TaskData) -> list[str]:
        """Greedy completions. Prompts of equal length share a batch: the decoder's positions
        are absolute, so left padding would shift them; equal lengths need no padding."""
        tok = configured(data.tok, None)
        eos = _eos_id(tok)
        limit = min(data.head_config.get("preprocess", {}).get("max_length", 128), model.config.max_position)
        room = max(limit - data.infer.max_new_tokens, 1)
        sep = tok.encode(SEP, add_special_tokens=False).ids
        prompts = [(p.ids + sep)[-room:] for p in
                   tok.encode_batch([ex.prompt for ex in data.examples], add_special_tokens=False)]
        groups: dict[int, list[int]] = defaultdict(list)
        for i, ids in enumerate(prompts):
            groups[len(ids)].append(i)
        out: list[str] = [""] * len(prompts)
        device = next(model.parameters()).device
        bar = tqdm(total=len(prompts), desc=data.infer.progress, unit="ex",
                   disable=data.infer.progress is None or not progress_enabled())
        with autocast(data.infer.precision, device):
            for members in groups.values():
                for k in range(0, len(members), data.infer.batch_size):
                    idx = members[k:k + data.infer.batch_size]
                    ids = torch.tensor([prompts[i] for i in idx], device=device)
                    new = generate(model, ids, data.infer.max_new_tokens, temperature=0.0, eos_token_id=eos)
                    for i, row in zip(idx, new[:, ids.size(1):].tolist()):
                        out[i] = tok.decode(row[:row.index(eos)] if eos in row else row).strip()
                    bar.update(len(idx))
        bar.close()
        return out


def completion_loss(model: nn.Module, data: TaskData) -> float:
    """Mean loss per completion token over the whole set (not a mean of batch means)."""
    lengths = [len(f["input_ids"]) for f in data.features]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad(), autocast(data.infer.precision, device):
        for idx in length_bucketed_batches(lengths, data.infer.batch_size, seed=0, shuffle=False):
            batch = collate([data.features[i] for i in idx], pad_id(data.tok))
            n = int((batch["labels"][:, 1:] != IGNORE).sum())   # the head scores shifted labels
            total += float(model(**{k: v.to(device) for k, v in batch.items()}).loss) * n
            count += n
    return total / max(count, 1)


def _eos_id(tok: Tokenizer) -> int:
    for name in EOS_CANDIDATES:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    raise PlmkitError(f"tokenizer has no end-of-sequence token (looked for {', '.join(EOS_CANDIDATES)})")


def _norm(text: str) -> str:
    return " ".join(text.split())


def read_prompts(path: str) -> list[GenExample]:
    """Prompts to complete: JSONL {prompt[, completion]} or one prompt per line (TSV: first column)."""
    lines = read_lines(path)
    examples = []
    if str(path).lower().endswith((".jsonl", ".json")):
        for line, obj in _json_objects(path, lines):
            if not isinstance(obj.get("prompt"), str):
                raise InputError(path, "expected a string field 'prompt'", line)
            examples.append(GenExample(obj["prompt"], str(obj.get("completion", "")), line))
    else:
        for line, cells in _rows(path, lines, "tsv"):
            if line == 1 and [c.strip() for c in cells[:2]] in (["prompt"], ["prompt", "completion"]):
                continue   # header
            examples.append(GenExample(cells[0], cells[1] if len(cells) > 1 else "", line))
    if not examples:
        raise PlmkitError(f"{path}: no prompts")
    return examples


TASK = GenerateTask()
