"""Parity with transformers: the real all-MiniLM-L6-v2, a random GPT-2, and export round trips."""
from __future__ import annotations

import pytest
import torch

from plmkit.models.checkpoint import export_hf, load_model, save_checkpoint
from plmkit.models.model import PlmModel

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install .[hf])")

SENTENCES = [
    "A man is playing a guitar on the street.",
    "Hi!",
    "The quick brown fox jumps over the lazy dog while it rains in Paris.",
    "Caf\u00e9 owners in Z\u00fcrich said prices rose 3.5% in 2023.",
]


def test_minilm_hidden_states_match_transformers(minilm_dir):
    ours = load_model(minilm_dir).eval()
    theirs = transformers.AutoModel.from_pretrained(str(minilm_dir)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    assert enc["attention_mask"].min() == 0                      # the batch really is padded
    with torch.no_grad():
        a = ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        b = theirs(**enc)
    real = enc["attention_mask"].bool()
    assert (a.last_hidden_state - b.last_hidden_state)[real].abs().max() < 1e-4
    assert (a.pooled - b.pooler_output).abs().max() < 1e-4


def test_random_gpt2_logits_match_transformers(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "gpt2")
    ours = load_model(tmp_path / "gpt2").eval()
    assert ours.task == "clm"
    ids = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() < 1e-4


def test_bert_export_round_trip_through_transformers(tmp_path, tiny_encoder_cfg):
    torch.manual_seed(0)
    model = PlmModel(tiny_encoder_cfg, "classify", {"num_labels": 3, "labels": ["a", "b", "c"]}).eval()
    export_hf(model, tmp_path / "hf", tokenizer=None)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf")).eval()
    assert hf.config.id2label[2] == "c"
    ids = torch.randint(5, 120, (2, 11), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        assert (model(ids, mask).logits - hf(input_ids=ids, attention_mask=mask).logits).abs().max() < 1e-4
    back = load_model(tmp_path / "hf").eval()                    # and back into plmkit
    with torch.no_grad():
        assert (back(ids, mask).logits - model(ids, mask).logits).abs().max() < 1e-5


@pytest.mark.parametrize("task", ["mlm+nsp", "base"])
def test_bert_pretraining_export_loads_in_automodel(tmp_path, tiny_encoder_cfg, task):
    torch.manual_seed(0)
    model = PlmModel(tiny_encoder_cfg, task).eval()
    export_hf(model, tmp_path / "hf", tokenizer=None)
    hf = transformers.AutoModel.from_pretrained(str(tmp_path / "hf")).eval()
    ids = torch.randint(5, 120, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(ids).last_hidden_state - hf(input_ids=ids).last_hidden_state).abs().max() < 1e-4


def test_gpt2_export_round_trip(tmp_path, tiny_decoder_cfg):
    torch.manual_seed(0)
    model = PlmModel(tiny_decoder_cfg, "clm").eval()
    save_checkpoint(model, tmp_path / "ours")
    export_hf(load_model(tmp_path / "ours"), tmp_path / "hf", tokenizer=None)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    ids = torch.randint(0, 120, (2, 13), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() < 1e-4


def test_pruned_model_refuses_hf_export(tmp_path, tiny_encoder_cfg):
    import dataclasses

    from plmkit.errors import PlmkitError

    model = PlmModel(dataclasses.replace(tiny_encoder_cfg, heads=[4, 2]), "base")
    with pytest.raises(PlmkitError, match="per-layer"):
        export_hf(model, tmp_path / "hf", tokenizer=None)
    assert not (tmp_path / "hf").exists()
