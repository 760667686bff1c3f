"""Chat templates and chat fine-tuning: the rendering equals transformers' apply_chat_template (text and
ids), the loss covers exactly the assistant turns, the template survives save/export, and a LoRA
fine-tune of a Llama-shaped model on a chat file goes through finetune -> merge -> generate -> serve."""
from __future__ import annotations

import json

import pytest

from decoders import STYLES, make_hf_decoder, write_tokenizer
from plmkit.cli import main
from plmkit.tasks.chat import ChatExample
from plmkit.data.features import IGNORE
from plmkit.tasks import Prep
from plmkit.tasks.generate import TASK
from plmkit.tokenizer import load_tokenizer, save_tokenizer
from plmkit.tokenizer.chat import ChatError, ChatTemplate, chat_template, end_ids, special_prefix

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install .[hf])")

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Two plus two is four."}]
# What the loss must cover in CHAT, per style: the answers with the template's closing marker (and Qwen3's
# think block on the last turn, which the template writes only there).
ANSWERS = {"chatml": ["Hello! How can I help you today?<|im_end|>\n", "Two plus two is four.<|im_end|>\n"],
           "llama3": ["Hello! How can I help you today?<|eot_id|>", "Two plus two is four.<|eot_id|>"],
           "qwen3": ["Hello! How can I help you today?<|im_end|>\n",
                     "<think>\n\n</think>\n\nTwo plus two is four.<|im_end|>\n"]}


def _ids(x):
    return x["input_ids"] if isinstance(x, dict) or hasattr(x, "keys") else x


@pytest.mark.parametrize("style", list(STYLES))
def test_rendering_equals_apply_chat_template(tmp_path, style):
    write_tokenizer(tmp_path, style)
    tok, hf = load_tokenizer(tmp_path), transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    template = chat_template(tok)
    for messages in (CHAT, CHAT[1:], CHAT[:4]):
        for gen in (False, True):
            text = template.render(messages, gen)
            assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert (tok.encode(text, add_special_tokens=False).ids
                    == _ids(hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)))
    assert special_prefix(tok) == _ids(hf("a"))[:len(special_prefix(tok))]      # BOS as tokenizer(text) adds it
    assert (special_prefix(tok) != []) == (style == "llama3")


@pytest.mark.parametrize("style", list(STYLES))
def test_chat_features_put_the_loss_on_the_assistant_turns_only(tmp_path, style):
    write_tokenizer(tmp_path, style)
    tok = load_tokenizer(tmp_path)
    [feat] = TASK.encode(tok, [ChatExample(CHAT, 1, "chat.jsonl")], {}, Prep(max_length=256))
    ids, labels = feat["input_ids"], feat["labels"]
    assert tok.decode(ids, skip_special_tokens=False) == chat_template(tok).render(CHAT)
    runs, cur = [], []                                    # maximal runs of labelled tokens
    for i, lab in zip(ids, labels):
        if lab == IGNORE:
            if cur:
                runs.append(cur)
            cur = []
        else:
            assert lab == i
            cur.append(i)
    runs += [cur] if cur else []
    assert [tok.decode(r, skip_special_tokens=False) for r in runs] == ANSWERS[style]
    eos = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "qwen3": "<|im_end|>"}[style]
    assert tok.token_to_id(eos) in end_ids(tok, None)     # generation stops where a turn ends


def test_template_and_special_names_survive_save_and_load(tmp_path):
    write_tokenizer(tmp_path / "src", "llama3")
    tok = load_tokenizer(tmp_path / "src")
    (tmp_path / "out").mkdir()
    save_tokenizer(tok, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == STYLES["llama3"][3] and saved["eos_token"] == "<|end_of_text|>"
    assert "unk_token" not in saved            # GPT-2's <|endoftext|> default is not in this vocabulary
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert hf.apply_chat_template(CHAT, tokenize=False) == chat_template(load_tokenizer(tmp_path / "out")).render(CHAT)


def test_templates_run_sandboxed_and_fail_in_one_line():
    escape = ChatTemplate("{{ ().__class__.__base__.__subclasses__() }}")
    with pytest.raises(ChatError, match="chat template failed"):
        escape.render(CHAT)
    with pytest.raises(ChatError, match="only user and assistant"):
        ChatTemplate("{{ raise_exception('only user and assistant') }}").render(CHAT)


def _write_chat(path, n: int = 16, assistant: bool = True) -> None:
    rows = [{"messages": [{"role": "user", "content": f"Say hello {i % 4}."}]
             + ([{"role": "assistant", "content": "Hello!"}] if assistant else [])} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def llama_chat(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    model = make_hf_decoder(root / "llama", "llama", "llama3")
    _write_chat(root / "chat.jsonl")
    return root, model


def test_lora_chat_finetune_merge_generate_and_serve(llama_chat, capsys):
    root, model = llama_chat
    out, merged = root / "lora", root / "merged"
    assert main(["finetune", "--model", str(model), "--task", "generate", "--train", str(root / "chat.jsonl"),
                 "--out", str(out), "--strategy", "lora", "--lora-targets", "q", "k", "v", "o", "gate", "up", "down",
                 "--lora-r", "8", "--lora-dropout", "0", "--epochs", "3", "--lr", "1e-2",
                 "--batch-size", "8", "--precision", "fp32"]) == 0
    assert main(["merge", "--model", str(out), "--out", str(merged)]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(merged), "--prompt", "Say hello 2.", "--chat", "--temperature", "0",
                 "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == "Hello!"
    from fastapi.testclient import TestClient

    from plmkit.serve.app import Limits, create_app
    from plmkit.serve.backend import ServedModel

    app = create_app(ServedModel(merged, precision="fp32"), Limits(max_wait_ms=1.0))
    with TestClient(app) as client:
        body = {"messages": [{"role": "user", "content": "Say hello 3."}], "max_new_tokens": 6, "temperature": 0.0}
        r = client.post("/v1/generate", json=body)
        assert r.status_code == 200 and r.json()["text"] == "Hello!" and r.json()["finish_reason"] == "eos"
        r = client.post("/v1/generate", json={**body, "prompt": "x"})
        assert r.status_code == 422 and "exactly one" in r.json()["detail"]


def _one_line_error(capsys, argv: list[str], *parts: str) -> None:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for p in parts:
        assert p in err


def test_bad_chat_input_fails_in_one_line(llama_chat, tmp_path, capsys):
    root, model = llama_chat
    base = ["finetune", "--model", str(model), "--task", "generate", "--out", str(tmp_path / "o")]
    _write_chat(tmp_path / "no_answer.jsonl", n=3, assistant=False)
    _one_line_error(capsys, base + ["--train", str(tmp_path / "no_answer.jsonl")],
                    "no_answer.jsonl:1", "no assistant message")
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"messages": [{"role": "user", "content": "hello " * 40},
                                             {"role": "assistant", "content": "Hello!"}]}) + "\n")
    _one_line_error(capsys, base + ["--train", str(long), "--max-length", "16"], "long.jsonl:1", "--max-length 16")
    plain = make_hf_decoder(tmp_path / "plain", "qwen2", "chatml")
    (plain / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))   # no chat_template
    _one_line_error(capsys, ["finetune", "--model", str(plain), "--task", "generate", "--out", str(tmp_path / "p"),
                             "--train", str(root / "chat.jsonl")], "no chat_template")
    _one_line_error(capsys, ["generate", "--model", str(model), "--prompt", "hello " * 200],
                    "more than the model's context of 128 tokens")
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()
