"""Chat templates: tokenizer_config.json's ``chat_template``, rendered as transformers renders it,
and the assistant turns found in the rendered text.

Rendering: Jinja2's ``ImmutableSandboxedEnvironment`` (templates come from model repositories:
untrusted code) with transformers' settings and helpers (trim_blocks, lstrip_blocks, loop
controls, ``raise_exception``, ``strftime_now``, a ``tojson`` that does not escape HTML, a
``namespace`` that refuses underscore attributes, the ``{% generation %}`` tag rendered as its
body), and the tokenizer's special-token names (``bos_token``, ``eos_token``, ...) as variables.
``tests/test_chat.py`` holds the text and the token ids to ``apply_chat_template``.

Assistant turns: few templates mark them (``{% generation %}``), so they are found by rendering
incrementally and diffing: assistant message i starts where ``render(messages[:i],
add_generation_prompt=True)`` ends and stops where ``render(messages[:i + 1])`` ends, each checked
to be a prefix of the whole conversation's rendering. Templates that render a turn differently
once later turns follow (Qwen3 drops past reasoning) fail that check; for those turns the span is
the message's content, found in the rendering after the previous turn, plus the text the
template closes an assistant turn with (``<|im_end|>\\n``, ``<|eot_id|>``, found by a probe).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache
from typing import Any

from tokenizers import Tokenizer

from ..errors import PlmkitError
from .load import source_config

Message = dict[str, Any]
_PROBE = "PLMKIT_PROBE_7f3a"


class ChatError(PlmkitError):
    """The template failed on a conversation, or an assistant turn cannot be located in its rendering."""


@lru_cache(maxsize=8)
def _compile(source: str) -> Any:
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' assistant marker): the body as is."""
        tags = {"generation"}

        def parse(self, parser: Any) -> nodes.Node:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    class Namespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:      # noqa: N805 (Jinja's own signature trick)
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set {name!r} on a namespace")

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, namespace=Namespace,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise PlmkitError(f"chat_template: Jinja syntax error on line {e.lineno}: {e.message}") from None


@dataclass
class ChatTemplate:
    source: str                                               # the Jinja text
    variables: dict[str, Any] = field(default_factory=dict)   # bos_token, eos_token, ... as the template sees them

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        import jinja2

        try:
            return _compile(self.source).render(messages=messages, tools=None, documents=None,
                                                add_generation_prompt=add_generation_prompt, **self.variables)
        except jinja2.TemplateError as e:
            raise ChatError(f"the chat template failed: {e}") from None

    def prompt_ids(self, tok: Tokenizer, messages: list[Message]) -> list[int]:
        """The ids a model continues to answer ``messages``: the rendering with the generation prompt,
        tokenized as ``apply_chat_template`` does (no special tokens added: the template has its own)."""
        return tok.encode(self.render(messages, add_generation_prompt=True), add_special_tokens=False).ids

    @cached_property
    def turn_end(self) -> str:
        """The text the template puts after an assistant message's content ('<|im_end|>\\n')."""
        try:
            text = self.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}])
        except ChatError:
            return ""
        return text[text.rfind(_PROBE) + len(_PROBE):] if _PROBE in text else ""

    def assistant_spans(self, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the [start, end) character span of every assistant turn:
        what the model must learn to write, the turn's closing marker included."""
        full = self.render(messages)
        spans: list[tuple[int, int]] = []
        for i, msg in enumerate(messages):
            if msg.get("role") != "assistant":
                continue
            prev = spans[-1][1] if spans else 0
            head = self._prefix(messages[:i], True, full)
            upto = self._prefix(messages[:i + 1], False, full)
            start = head if head is not None and head >= prev else None
            end = upto if upto is not None and start is not None and upto > start else None
            if start is None or end is None:
                start, end = self._by_content(full, msg, i, prev, start)
            spans.append((start, end))
        return full, spans

    def _prefix(self, messages: list[Message], generation_prompt: bool, full: str) -> int | None:
        """len(render(messages)) when that rendering is a prefix of ``full``, else None."""
        try:
            text = self.render(messages, add_generation_prompt=generation_prompt)
        except ChatError:          # e.g. templates that index messages[0] fail on no messages
            return None
        return len(text) if full.startswith(text) else None

    def _by_content(self, full: str, msg: Message, i: int, prev: int, start: int | None) -> tuple[int, int]:
        content = str(msg.get("content") or "").strip()
        at = full.find(content, prev if start is None else start) if content else -1
        if at < 0:
            raise ChatError(f"message {i + 1} (assistant): its content does not appear in the rendered chat "
                            "template, so its tokens cannot be found")
        end = at + len(content)
        suffix = self.turn_end
        if suffix and full.startswith(suffix, end):
            end += len(suffix)
        return (at if start is None else start), end


def _template_text(value: Any) -> str | None:
    """tokenizer_config.json's chat_template: a string, or a list of named templates (take 'default')."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        return named.get("default")
    return None


def chat_template(tok: Tokenizer) -> ChatTemplate | None:
    """The chat template of a tokenizer loaded with ``load_tokenizer`` (None: it has none)."""
    src = source_config(tok)
    text = _template_text(src.get("chat_template"))
    if not text:
        return None
    names = ("bos_token", "eos_token", "unk_token", "pad_token")
    return ChatTemplate(text, {k: src[k] for k in names if isinstance(src.get(k), str)})


def stop_token_ids(tok: Tokenizer, template: ChatTemplate | None) -> list[int]:
    """The special token that closes an assistant turn in the template (<|im_end|>, <|eot_id|>), as a
    generation stop id: a base model fine-tuned on chats learns to end its turns with it."""
    if template is None:
        return []
    suffix = template.turn_end
    added = tok.get_added_tokens_decoder()
    for i in tok.encode(suffix, add_special_tokens=False).ids if suffix else []:
        if i in added:
            return [i]
    return []


def special_prefix(tok: Tokenizer) -> list[int]:
    """The special ids the tokenizer's post-processor puts before a text (Llama's <s> or
    <|begin_of_text|>; nothing for GPT-2, SmolLM2 or Qwen), as transformers' ``tokenizer(text)`` adds them."""
    enc = tok.encode("a")
    n = 0
    while n < len(enc.ids) and enc.special_tokens_mask[n]:
        n += 1
    return enc.ids[:n]


def end_ids(tok: Tokenizer, model_eos: int | list[int] | None) -> list[int]:
    """Every id that ends a generated answer: the model config's EOS ids that are special tokens of
    this tokenizer (Llama 3 lists several; a plmkit GPT-2's default 50256 is not in its vocabulary),
    the tokenizer's own EOS, and the token closing an assistant turn in its chat template."""
    from .load import special_ids

    added = tok.get_added_tokens_decoder()
    config = [model_eos] if isinstance(model_eos, int) else list(model_eos or [])
    ids = [i for i in config if i in added] + [special_ids(tok).get("eos")] + stop_token_ids(tok, chat_template(tok))
    return list(dict.fromkeys(i for i in ids if i is not None))


def encode_prompt(tok: Tokenizer, text: str | None = None, messages: list[Message] | None = None) -> list[int]:
    """What a decoder continues: ``messages`` rendered by the tokenizer's chat template (with the
    generation prompt), or ``text`` after the tokenizer's special prefix (BOS), as ``tokenizer(text)``
    in transformers. ``tok`` as ``load_tokenizer`` returned it (it carries the template)."""
    if messages is None:
        return special_prefix(tok) + tok.encode(text or "", add_special_tokens=False).ids
    template = chat_template(tok)
    if template is None:
        raise PlmkitError("the model's tokenizer has no chat_template (tokenizer_config.json): give a plain "
                          "prompt instead of messages")
    return template.prompt_ids(tok, messages)
