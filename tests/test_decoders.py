"""Llama-shaped decoders (Llama, Qwen2, Qwen3) against transformers: logits on padded batches, greedy
generation token for token, the export round trip, LoRA on the fused gate/up projection, pruning
and distillation of decoders, and the refusals (rope kinds, sliding windows, architectures)."""
from __future__ import annotations

import json

import pytest
import torch

from decoders import make_hf_decoder, tiny_config
from plmkit.adapters import AdapterSettings, apply_strategy, merge
from plmkit.cli import main
from plmkit.compress import distill as D
from plmkit.errors import PlmkitError
from plmkit.models.checkpoint import export_hf, load_model
from plmkit.models.generate import generate
from plmkit.models.model import PlmModel

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install .[hf])")

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 256}   # head_dim 16: all three bands
FAMILIES = {
    "llama-llama3-tied-biases": ("llama", dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True,
                                               attention_bias=True, mlp_bias=True)),
    "llama-linear-rope": ("llama", dict(rope_theta=5000.0, rope_scaling={"type": "linear", "factor": 2.0})),
    "qwen2": ("qwen2", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "qwen3": ("qwen3", dict(tie_word_embeddings=True)),
}


def _hf(tmp_path, name: str, scale: float = 1.0):
    family, kw = FAMILIES[name]
    d = make_hf_decoder(tmp_path / name, family, style=None, scale=scale, **kw)
    return transformers.AutoModelForCausalLM.from_pretrained(str(d)).eval(), d


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 320, (3, 13), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return ids, mask


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_transformers_on_a_padded_batch_and_export_round_trips(tmp_path, name):
    hf, d = _hf(tmp_path, name)
    ours = load_model(d).eval()
    assert ours.task == "clm" and ours.config.layout == FAMILIES[name][0]
    ids, mask = _batch()
    real = mask.bool()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask).logits
        assert (got - want)[real].abs().max() < 1e-4                      # right padding
        left = torch.stack([torch.cat([r[~m], r[m]]) for r, m in zip(ids, real)])
        lmask = torch.stack([torch.cat([m[~m], m[m]]) for m in real]).long()
        pos = (lmask.cumsum(-1) - 1).clamp(min=0)
        want_left = hf(input_ids=left, attention_mask=lmask, position_ids=pos).logits
        assert (ours(left, lmask).logits - want_left)[lmask.bool()].abs().max() < 1e-4   # left padding
    export_hf(ours, tmp_path / "out", tokenizer=None)
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    assert type(back) is type(hf)
    with torch.no_grad():
        assert (back(input_ids=ids, attention_mask=mask).logits - want)[real].abs().max() < 1e-4
        assert (load_model(tmp_path / "out")(ids, mask).logits - got)[real].abs().max() < 1e-5


@pytest.mark.parametrize("name", ["llama-llama3-tied-biases", "qwen2", "qwen3"])
def test_greedy_generation_with_the_cache_equals_transformers_generate(tmp_path, name):
    hf, d = _hf(tmp_path, name, scale=6.0)                  # sharp logits: no near-ties between tokens
    ours = load_model(d).eval()
    ids = torch.randint(5, 320, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0                                         # a left-padded batch
    ids = ids * mask
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    single = hf.generate(input_ids=ids[:1], **kw)
    assert torch.equal(generate(ours, ids[:1], 12, temperature=0.0), single)
    free = hf.generate(input_ids=ids, attention_mask=mask, **kw)[:, 7:]
    eos = [int(free[0, 2]), int(free[1, 5])]                # two EOS ids (a Llama 3 list) that rows hit early
    want = hf.generate(input_ids=ids, attention_mask=mask, eos_token_id=eos, **kw)[:, 7:]
    got = generate(ours, ids, 12, temperature=0.0, eos_token_id=eos, attention_mask=mask)[:, 7:]
    for w, g in zip(want.tolist(), got.tolist()):
        n = min([w.index(e) + 1 for e in eos if e in w] or [len(w)])       # up to and with the first EOS
        assert g[:n] == w[:n] and all(t == eos[0] for t in g[n:])
    assert all(any(e in row for e in eos) for row in got[:2].tolist())   # the EOS handling was exercised
    nocache = generate(ours, ids, 12, temperature=0.0, eos_token_id=eos, attention_mask=mask, use_cache=False)
    assert torch.equal(nocache[:, 7:], got)


@pytest.mark.parametrize("field,value,match", [
    ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}, "rope_scaling kind 'yarn'"),
    ("rope_scaling", {"type": "dynamic", "factor": 2.0}, "rope_scaling kind 'dynamic'"),
    ("use_sliding_window", True, "sliding-window"),
    ("model_type", "mistral", "unsupported model_type 'mistral'"),
])
def test_unsupported_decoders_are_refused_in_one_line(tmp_path, capsys, field, value, match):
    d = make_hf_decoder(tmp_path / "m", "qwen2", style=None)
    cfg = json.loads((d / "config.json").read_text())
    cfg[field] = value
    if field == "rope_scaling":
        cfg.pop("rope_parameters")
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PlmkitError, match=match):
        load_model(d)
    capsys.readouterr()
    assert main(["info", str(d)]) == 1
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and "Traceback" not in err


def _llama_model() -> PlmModel:
    from plmkit.models.hf import llama

    torch.manual_seed(0)
    cfg = llama.LLAMA.config_from_hf(tiny_config("llama").to_dict(), "test")
    return PlmModel(cfg, "clm").eval()


def test_lora_on_gate_and_up_equals_two_separate_adapters_and_merges_exactly():
    """PEFT puts one LoRA on gate_proj and one on up_proj; plmkit's blocks on the fused fc1 compute the same."""
    model = _llama_model()
    apply_strategy(model, "lora", AdapterSettings(lora_r=4, lora_dropout=0.0,
                                                  lora_targets=["q", "k", "v", "o", "gate", "up", "down"]))
    assert not any(n.startswith("head.") for n, p in model.named_parameters() if p.requires_grad)  # lm_head frozen
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    ffn = model.backbone.layers[0].ffn
    x = torch.randn(5, 64)
    W, A, B, s, F_ = ffn.fc1.base_layer.weight, ffn.fc1.lora_A.weight, ffn.fc1.lora_B.weight, ffn.fc1.scaling, 96
    gate = x @ W[:F_].T + s * (x @ A[:4].T) @ B[0].T            # PEFT: gate_proj's own A, B
    up = x @ W[F_:].T + s * (x @ A[4:].T) @ B[1].T              # and up_proj's
    with torch.no_grad():
        assert torch.allclose(ffn(x), ffn.fc2(torch.nn.functional.silu(gate) * up), atol=1e-5)
        ids = torch.randint(0, 320, (2, 9))
        before = model(ids).logits
        merge(model)
        assert type(model.backbone.layers[0].ffn.fc1) is torch.nn.Linear
        assert (model(ids).logits - before).abs().max() < 1e-4


def test_lora_gate_alone_updates_only_the_gate_half():
    model = _llama_model()
    apply_strategy(model, "lora", AdapterSettings(lora_r=2, lora_dropout=0.0, lora_targets=["gate"]))
    fc1 = model.backbone.layers[1].ffn.fc1
    torch.nn.init.normal_(fc1.lora_B.weight)
    delta = fc1.delta_weight()
    assert delta[:96].abs().sum() > 0 and delta[96:].abs().sum() == 0
    with pytest.raises(PlmkitError, match="name either fc1 or gate/up"):
        apply_strategy(_llama_model(), "lora", AdapterSettings(lora_targets=["fc1", "up"]))


def test_clm_distillation_covers_only_the_completion_tokens():
    torch.manual_seed(0)
    teacher, student = _llama_model(), _llama_model()
    module = D.DistillModule(student, teacher, D.DistillSpec(temperature=2.0, alpha=0.5))
    ids = torch.randint(5, 320, (2, 10))
    labels = ids.clone()
    labels[:, :6] = -100                                    # the prompt: no loss
    out = module(ids, torch.ones_like(ids), labels=labels)
    s, t = student(ids).logits, teacher(ids).logits
    keep = labels[:, 1:] != -100
    kl = D.distill_kl(s[:, :-1], t[:, :-1], 2.0, keep)
    ce = torch.nn.functional.cross_entropy(s[:, :-1][keep], labels[:, 1:][keep])
    assert torch.allclose(out.loss, 0.5 * ce + 0.5 * kl * 4.0, atol=1e-5)


def test_decoder_prune_and_distill_through_the_cli(tmp_path):
    d = make_hf_decoder(tmp_path / "qwen", "qwen2", "chatml", num_hidden_layers=3)
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say hello {i}."},
                                                     {"role": "assistant", "content": "Hello!"}]}) + "\n"
                            for i in range(8)))
    assert main(["prune", "--model", str(d), "--task", "generate", "--train", str(chat), "--out",
                 str(tmp_path / "pruned"), "--heads", "0.5", "--ffn", "0.25", "--no-recover",
                 "--precision", "fp32"]) == 0
    pruned = load_model(tmp_path / "pruned").eval()
    assert pruned.config.heads == [2, 2, 2] and pruned.config.kv_heads == [1, 1, 1]    # whole GQA groups
    ids = torch.randint(5, 320, (1, 6))
    assert torch.equal(generate(pruned, ids, 6, temperature=0.0), generate(pruned, ids, 6, 0.0, use_cache=False))
    assert main(["distill", "--teacher", str(d), "--task", "generate", "--train", str(chat), "--out",
                 str(tmp_path / "student"), "--student-layers", "0,2", "--max-steps", "2", "--batch-size", "4",
                 "--precision", "fp32"]) == 0
    student = load_model(tmp_path / "student")
    assert student.config.num_layers == 2 and student.config.layout == "qwen2"


def test_eval_lm_perplexity_equals_transformers_loss(tmp_path, capsys):
    from plmkit.tokenizer import load_tokenizer

    d = make_hf_decoder(tmp_path / "llama", "llama", "llama3")
    text = "The quick brown fox jumps over the lazy dog. I like green apples and red pears. " * 3
    (tmp_path / "doc.txt").write_text(text.strip() + "\n")
    tok = load_tokenizer(d)
    stream = tok.encode(text.strip(), add_special_tokens=False).ids + [tok.token_to_id("<|end_of_text|>")]
    n = len(stream) // 16                                                  # eval-lm's blocks, all in one batch
    capsys.readouterr()
    assert main(["eval-lm", "--model", str(d), "--data", str(tmp_path / "doc.txt"), "--seq-len", "16",
                 "--batch-size", str(n), "--cache-dir", str(tmp_path / "cache")]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    blocks = torch.tensor(stream[:n * 16]).view(n, 16)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(d)).eval()
    with torch.no_grad():
        want = float(hf(input_ids=blocks, labels=blocks).loss)
    assert abs(got["loss"] - want) < 1e-3 and abs(got["perplexity"] - float(torch.tensor(want).exp())) < 1e-2
