"""Generation: fine-tune a decoder (causal LM) on prompt -> completion pairs or on chats.

Prompt/completion: the input is ``[BOS] prompt \\n completion EOS`` with the loss on the
completion only (BOS when the tokenizer adds one to every text, as Llama's do; EOS is the
tokenizer's own). Chats (JSONL ``{"messages": [...]}``, tasks/chat.py): the tokenizer's chat
template renders the conversation and the loss covers the assistant turns only. Scores: the
loss per completion token (lower is better; it selects the best checkpoint) and exact match of
the greedy completion (of the last assistant turn, for chats) against the gold one
(whitespace-normalised).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from .chat import ChatExample, encode_chat, is_chat_file, read_chat
from ..data.features import IGNORE, collate, configured, encode_generation, length_bucketed_batches
from ..data.readers import GenExample, _json_objects, _rows, read_generation, read_lines
from ..errors import InputError, PlmkitError
from ..models.generate import generate
from ..precision import autocast
from ..tokenizer import pad_id, special_ids
from ..tokenizer.chat import ChatTemplate, chat_template, end_ids, special_prefix
from ..train.logging import progress_enabled
from ..train.defaults import FixedTraining
from .common import Prep, TaskData

SEP = "\n"   # between prompt and completion, as in encode_generation


class GenerateTask:
    name = "generate"
    head = "clm"
    metric = "loss"
    greater_is_better = False
    group_by_length = True
    labelled = False
    detailed = False
    on_graph = False            # its evaluation needs the loss and a KV cache
    file_layout = "lines"
    max_length_from = "fixed"  # --max-length's default: 128
    hf_auto = None
    what = "a language model"
    help = ("JSONL {prompt, completion}, TSV prompt<TAB>completion, or chat JSONL {messages: [{role, content}]} "
            "(predict: the prompt, or the conversation so far, is enough)")

    def train_defaults(self, examples: list[Any]) -> FixedTraining | None:
        return None            # batch, passes and lr from the data-size rule (train/defaults.py)

    def read(self, path: str, prep: Prep, labels: list[str] | None = None,
             require_labels: bool = True) -> list[GenExample | ChatExample]:
        if is_chat_file(path):
            return read_chat(path, require_assistant=require_labels)
        return read_generation(path) if require_labels else read_prompts(path)

    def head_config(self, examples: list[Any], prep: Prep) -> dict[str, Any]:
        return {}

    def encode(self, tok: Tokenizer, examples: list[Any], head_config: dict[str, Any],
               prep: Prep) -> list[dict[str, Any]]:
        if examples and isinstance(examples[0], ChatExample):
            return encode_chat(tok, _template(tok), examples, prep.max_length)
        prefix = special_prefix(tok)
        eos = special_ids(tok).get("eos")
        feats = encode_generation(tok, examples, prep.max_length - len(prefix), sep=SEP,
                                  eos=tok.id_to_token(eos) if eos is not None else None)
        return [{"input_ids": prefix + f["input_ids"], "attention_mask": [1] * len(prefix) + f["attention_mask"],
                 "labels": [IGNORE] * len(prefix) + f["labels"]} for f in feats]

    def metric_of(self, examples: list[Any]) -> str:
        return self.metric

    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        completions = self._complete(model, data)
        hits = [_norm(c) == _norm(_gold(ex)) for c, ex in zip(completions, data.examples)]
        return {"loss": completion_loss(model, data), "exact_match": sum(hits) / len(hits)}

    def predict(self, model: nn.Module, data: TaskData) -> list[dict[str, Any]]:
        out = []
        for ex, c in zip(data.examples, self._complete(model, data)):
            out.append({"messages": _history(ex), "completion": c} if isinstance(ex, ChatExample)
                       else {"prompt": ex.prompt, "completion": c})
        return out

    def _complete(self, model: nn.Module, data: TaskData) -> list[str]:
        """Greedy completions. Prompts of equal length share a batch (no padding needed)."""
        tok = configured(data.tok, None)
        stops = end_ids(data.tok, model.config.eos_token_id)
        prompts = self._prompts(model, data, tok)
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
                    new = generate(model, ids, data.infer.max_new_tokens, temperature=0.0, eos_token_id=stops)
                    for i, row in zip(idx, new[:, ids.size(1):].tolist()):
                        out[i] = tok.decode(_until(row, stops)).strip()
                    bar.update(len(idx))
        bar.close()
        return out

    def _prompts(self, model: nn.Module, data: TaskData, tok: Tokenizer) -> list[list[int]]:
        """Prompt ids per example. A prompt/completion prompt longer than the room left for the
        completion loses its start (as in training); a chat that does not fit is an error."""
        limit = min(data.head_config.get("preprocess", {}).get("max_length", 128), model.config.max_position)
        room = max(limit - data.infer.max_new_tokens, 1)
        chats = [ex for ex in data.examples if isinstance(ex, ChatExample)]
        if chats:
            template = _template(data.tok)
            room = model.config.max_position - data.infer.max_new_tokens
            prompts = []
            for ex in chats:
                ids = template.prompt_ids(tok, _history(ex))
                if len(ids) > room:
                    raise InputError(ex.source or "<chat>", f"the conversation's prompt has {len(ids)} tokens; with "
                                     f"{data.infer.max_new_tokens} new tokens it exceeds the model's context of "
                                     f"{model.config.max_position}", ex.line)
                prompts.append(ids)
            return prompts
        prefix, sep = special_prefix(tok), tok.encode(SEP, add_special_tokens=False).ids
        keep = max(room - len(prefix), 1)
        return [prefix + (p.ids + sep)[-keep:] for p in
                tok.encode_batch([ex.prompt for ex in data.examples], add_special_tokens=False)]


def _template(tok: Tokenizer) -> ChatTemplate:
    template = chat_template(tok)
    if template is None:
        raise PlmkitError("the data is in chat form ({\"messages\": [...]}) but the model's tokenizer has no "
                          "chat_template (tokenizer_config.json); use prompt/completion data, or a model that has one")
    return template


def _history(ex: ChatExample) -> list[dict[str, Any]]:
    """The conversation before the last assistant turn (the whole one when it has none)."""
    last = ex.last_assistant
    return ex.messages[:last] if last is not None else ex.messages


def _gold(ex: GenExample | ChatExample) -> str:
    if isinstance(ex, ChatExample):
        last = ex.last_assistant
        return ex.messages[last]["content"] if last is not None else ""
    return ex.completion


def _until(row: list[int], stops: list[int]) -> list[int]:
    """The generated ids before the first end id."""
    ends = [row.index(s) for s in stops if s in row]
    return row[:min(ends)] if ends else row


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
