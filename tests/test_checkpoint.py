"""Checkpoint directories: round trip, atomicity, safe loading, clear errors."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from plmkit.errors import PlmkitError
from plmkit.loading import describe
from plmkit.models.checkpoint import load_model, read_meta, save_checkpoint
from plmkit.models.model import PlmModel


def _ids():
    return torch.randint(5, 120, (2, 9), generator=torch.Generator().manual_seed(1))


def test_round_trip_with_uneven_layers(tmp_path, tiny_encoder_cfg):
    cfg = dataclasses.replace(tiny_encoder_cfg, heads=[3, 1], ffn=[40, 12])
    torch.manual_seed(0)
    model = PlmModel(cfg, "classify", {"num_labels": 2, "labels": ["neg", "pos"]}).eval()
    out = save_checkpoint(model, tmp_path / "ck", meta={"stage": "test", "parent": None})
    back = load_model(out).eval()
    assert back.config.heads == [3, 1] and back.config.ffn == [40, 12]
    assert back.head_config["labels"] == ["neg", "pos"]
    ids = _ids()
    assert torch.equal(model(ids).logits, back(ids).logits)
    assert read_meta(out)["stage"] == "test"
    info = describe(out)
    assert info["heads_per_layer"] == [3, 1] and info["parameters"] == model.num_parameters()


def test_tied_weights_stay_tied_after_reload(tmp_path, tiny_encoder_cfg):
    model = PlmModel(tiny_encoder_cfg, "mlm+nsp")
    back = load_model(save_checkpoint(model, tmp_path / "ck"))
    assert back.head.mlm.decoder.weight is back.backbone.embeddings.word.weight
    assert torch.equal(back.backbone.embeddings.word.weight, model.backbone.embeddings.word.weight)


def test_reload_makes_the_saved_tensors_fp32_trainable_parameters(tmp_path, tiny_encoder_cfg):
    """The model is built on the meta device and the loaded tensors assigned: none may stay on meta,
    a bf16 checkpoint still loads as an fp32 model, and every parameter trains and holds the saved value."""
    torch.manual_seed(0)
    model = PlmModel(tiny_encoder_cfg, "mlm+nsp").to(torch.bfloat16)
    back = load_model(save_checkpoint(model, tmp_path / "ck"))
    params = dict(back.named_parameters())
    assert params and all(p.device.type == "cpu" and p.dtype == torch.float32 and p.requires_grad
                          for p in params.values())
    for name, p in model.named_parameters():
        assert torch.equal(params[name], p.float()), name


def test_new_task_keeps_backbone_and_adds_fresh_head(tmp_path, tiny_encoder_cfg):
    torch.manual_seed(0)
    pre = PlmModel(tiny_encoder_cfg, "mlm+nsp")
    path = save_checkpoint(pre, tmp_path / "pre")
    ft = load_model(path, task="token", head_config={"num_labels": 4})
    assert ft.task == "token" and ft.head.classifier.out_features == 4
    assert torch.equal(ft.backbone.layers[1].attn.q.weight, pre.backbone.layers[1].attn.q.weight)


def test_existing_output_is_refused_unless_overwrite(tmp_path, tiny_encoder_cfg):
    model = PlmModel(tiny_encoder_cfg, "base")
    save_checkpoint(model, tmp_path / "ck")
    with pytest.raises(PlmkitError, match="--overwrite"):
        save_checkpoint(model, tmp_path / "ck")
    save_checkpoint(model, tmp_path / "ck", overwrite=True)


def test_failed_save_leaves_nothing(tmp_path, tiny_encoder_cfg, monkeypatch):
    import plmkit.models.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_model", boom)
    with pytest.raises(OSError):
        save_checkpoint(PlmModel(tiny_encoder_cfg, "base"), tmp_path / "ck")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_safetensors_is_a_clear_error(tmp_path, tiny_encoder_cfg):
    path = save_checkpoint(PlmModel(tiny_encoder_cfg, "base"), tmp_path / "ck")
    (path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(PlmkitError, match="model.safetensors: corrupt"):
        load_model(path)


def test_unsupported_hf_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5Model"]}))
    with pytest.raises(PlmkitError, match="supported HF architectures: .*BertModel"):
        load_model(tmp_path)


def test_legacy_bin_uses_weights_only(tmp_path, tiny_encoder_cfg):
    """A pickle that is not plain tensors is refused rather than executed."""
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": 120, "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(PlmkitError, match="cannot load safely"):
        load_model(tmp_path)


def test_missing_dir_and_config(tmp_path):
    with pytest.raises(PlmkitError, match="not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(PlmkitError, match="no config.json"):
        load_model(tmp_path)
