"""Tiny Llama-shaped HF directories for the decoder tests: a random model made with transformers'
own config classes, a byte-level BPE tokenizer trained here, and a chat template (no downloads)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

TEXT = [
    "The cat sat on the mat.", "What is the capital of France?", "Paris is the capital of France.",
    "Say hello.", "Hello! How can I help you today?", "Two plus two is four.", "Translate cat to French.",
    "chat le chat", "The quick brown fox jumps over the lazy dog.", "I like green apples and red pears.",
] * 4

# SmolLM2-Instruct / Qwen2.5's ChatML (a default system turn when there is none).
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Llama 3's shape: BOS from the template, header tokens, <|eot_id|> closes every turn.
LLAMA3 = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
# Qwen3's reasoning logic: the last assistant turn after the last user message gets a think block, earlier
# ones do not (so a turn renders differently once a later user turn follows).
QWEN3 = (
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == 'user' %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and loop.index0 > ns.last_query_index %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

STYLES = {
    # style: (special tokens, bos, eos, template, post-processor adds BOS)
    "chatml": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", CHATML, False),
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"], "<|begin_of_text|>", "<|end_of_text|>", LLAMA3, True),
    "qwen3": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"], None, "<|im_end|>",
              QWEN3, False),
}
VOCAB = 320


def make_tokenizer(style: str) -> Tokenizer:
    specials, bos, _, _, adds_bos = STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer=trainer)
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def write_tokenizer(directory: Path, style: str) -> Tokenizer:
    """tokenizer.json + tokenizer_config.json (chat template, special names) as transformers saves them."""
    specials, bos, eos, template, _ = STYLES[style]
    tok = make_tokenizer(style)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
           "pad_token": specials[0] if style != "llama3" else None, "chat_template": template,
           "model_max_length": 128}
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tok


def tiny_config(family: str, **kw):
    import transformers

    base = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, max_position_embeddings=128)
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "qwen3": transformers.Qwen3Config}[family]
    if family == "qwen3":
        base["head_dim"] = 32            # != hidden / heads, as Qwen3 has
    return cls(**{**base, **kw})


def make_hf_decoder(directory: Path, family: str = "llama", style: str | None = "chatml", seed: int = 0,
                    scale: float = 1.0, **kw) -> Path:
    """A random transformers model of ``family`` saved in ``directory`` (+ a tokenizer of ``style``).
    ``scale`` multiplies every weight: sharper logits, so greedy ties cannot happen."""
    import transformers

    torch.manual_seed(seed)
    cfg = tiny_config(family, **kw)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02).mul_(scale)      # non-trivial norms and biases too
    model.save_pretrained(str(directory))
    if style is not None:
        tok = write_tokenizer(directory, style)
        eos = tok.token_to_id(STYLES[style][2])
        conf = json.loads((directory / "config.json").read_text())
        conf["eos_token_id"] = eos
        (directory / "config.json").write_text(json.dumps(conf))
    return directory
