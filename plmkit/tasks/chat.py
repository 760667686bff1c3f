"""Chat-form generation data: JSONL ``{"messages": [{"role": ..., "content": ...}, ...]}``.

A conversation becomes one feature: the tokenizer's chat template renders it (tokenizer/chat.py),
the rendering is tokenized as transformers' ``apply_chat_template`` tokenizes it (no special
tokens added: the template writes its own BOS), and ``labels`` keep only the tokens of the
assistant turns (their closing marker included, so the model learns to stop); everything else
is -100. Too long a conversation loses its end; one whose first assistant turn starts beyond
``max_length`` is an error naming its line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tokenizers import Tokenizer

from ..errors import InputError, PlmkitError
from ..tokenizer.chat import ChatError, ChatTemplate
from ..data.features import IGNORE, configured
from ..data.readers import _json_objects, read_lines

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class ChatExample:
    messages: list[dict[str, Any]]
    line: int = 0
    source: str = ""

    @property
    def last_assistant(self) -> int | None:
        """Index of the last assistant message (the gold answer when evaluating), or None."""
        found = [i for i, m in enumerate(self.messages) if m["role"] == "assistant"]
        return found[-1] if found else None


def is_chat_file(path: str | Path) -> bool:
    """A JSON-lines file whose first object has a 'messages' key."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json") or not path.is_file():
        return False
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(obj, dict) and "messages" in obj
    return False


def read_chat(path: str | Path, require_assistant: bool = True) -> list[ChatExample]:
    """Conversations, checked: a non-empty list of {role, content} strings each, roles among ROLES;
    with ``require_assistant`` every conversation has an assistant turn to learn from."""
    path = Path(path)
    examples = []
    for line, obj in _json_objects(path, read_lines(path)):
        messages = obj.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InputError(path, "expected 'messages': a non-empty list of {\"role\", \"content\"} objects", line)
        for k, m in enumerate(messages, 1):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise InputError(path, f"message {k}: expected {{\"role\": str, \"content\": str}}", line)
            if m["role"] not in ROLES:
                raise InputError(path, f"message {k}: unknown role {m['role']!r} (known: {', '.join(ROLES)})", line)
        ex = ChatExample([dict(m) for m in messages], line, str(path))
        if require_assistant and ex.last_assistant is None:
            raise InputError(path, "the conversation has no assistant message: nothing to learn from", line)
        examples.append(ex)
    if not examples:
        raise PlmkitError(f"{path}: no conversations")
    return examples


def encode_chat(tok: Tokenizer, template: ChatTemplate, examples: Sequence[ChatExample],
                max_length: int) -> list[dict[str, Any]]:
    """One feature per conversation; labels = the input ids on assistant turns, -100 elsewhere."""
    tok = configured(tok, None)
    rendered = []
    for ex in examples:
        try:
            rendered.append(template.assistant_spans(ex.messages))
        except ChatError as e:
            raise InputError(ex.source or "<chat>", str(e), ex.line) from None
    encodings = tok.encode_batch([text for text, _ in rendered], add_special_tokens=False)
    features = []
    for ex, (_, spans), enc in zip(examples, rendered, encodings):
        labels = [i if any(s <= off[0] < e for s, e in spans) else IGNORE for i, off in zip(enc.ids, enc.offsets)]
        if max_length < len(labels) and all(v == IGNORE for v in labels[:max_length]):
            first = next((k for k, v in enumerate(labels) if v != IGNORE), len(labels))
            raise InputError(ex.source or "<chat>", f"the first assistant turn starts at token {first}, beyond "
                             f"--max-length {max_length}: nothing to learn from (raise --max-length)", ex.line)
        ids = enc.ids[:max_length]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels[:max_length]})
    return features
