"""Fine-tuning strategies: what trains, what stays bit-identical, merge and adapter-only round trips."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from plmkit.adapters import (
    AdapterLinear,
    AdapterSettings,
    LoraLinear,
    adapter_state_dict,
    apply_strategy,
    format_summary,
    load_adapter_state,
    merge,
    merge_lora,
    restore_strategy,
    strategy_meta,
    trainable_summary,
)
from plmkit.errors import PlmkitError

VOCAB, H, L, LABELS = 40, 32, 2, 3
SETTINGS = AdapterSettings(lora_r=4, lora_alpha=8.0, lora_dropout=0.0, adapter_size=8)


# --- a stand-in with the naming contract (no dependency on the model code) -------------------

class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(H, H) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # [B, T, H], single head
        a = (self.q(x) @ self.k(x).transpose(1, 2) / H ** 0.5).softmax(-1)
        return self.o(a @ self.v(x))


class _FFN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(H, 2 * H), nn.Linear(2 * H, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn, self.attn_norm = _Attn(), nn.LayerNorm(H)
        self.ffn, self.ffn_norm = _FFN(), nn.LayerNorm(H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x))
        return self.ffn_norm(x + self.ffn(x))


class StandIn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.embeddings = nn.Module()
        self.backbone.embeddings.word = nn.Embedding(VOCAB, H)
        self.backbone.embeddings.norm = nn.LayerNorm(H)
        self.backbone.layers = nn.ModuleList(_Layer() for _ in range(L))
        self.head = nn.Linear(H, LABELS)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_: torch.Tensor):
        x = self.backbone.embeddings.norm(self.backbone.embeddings.word(input_ids))
        for layer in self.backbone.layers:
            x = layer(x)
        logits = self.head(x[:, 0])
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(logits=logits, loss=loss)


def _standin() -> nn.Module:
    return StandIn()


def _plm(family: str, task: str) -> nn.Module:
    models = pytest.importorskip("plmkit.models.model")
    from plmkit.models.config import DecoderConfig, EncoderConfig
    common = dict(vocab_size=VOCAB, hidden_size=H, num_layers=L, num_heads=2, intermediate_size=2 * H,
                  max_position=16, hidden_dropout=0.0, attention_dropout=0.0)
    cfg = EncoderConfig(**common) if family == "encoder" else DecoderConfig(**common, bos_token_id=1,
                                                                           eos_token_id=1)
    return models.PlmModel(cfg, task, {"num_labels": LABELS})


FACTORIES = {
    "standin": _standin,
    "bert-classify": lambda: _plm("encoder", "classify"),
    "gpt-classify": lambda: _plm("decoder", "classify"),
    "bert-mlm": lambda: _plm("encoder", "mlm"),
    "gpt-clm": lambda: _plm("decoder", "clm"),
}


def make(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return FACTORIES[kind]()


def batch(kind: str, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (4, 8), generator=g)
    if kind.endswith(("clm", "mlm")):
        return {"input_ids": ids, "labels": ids.clone()}
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, LABELS, (4,), generator=g)}


def logits(model: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in b.items() if k != "labels"}).logits


def train(model: nn.Module, b: dict[str, torch.Tensor], steps: int = 4) -> None:
    """AdamW over *all* parameters: frozen ones get no grad, so they must not move at all."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        model(**b).loss.backward()
        opt.step()


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# --- which parameters train ------------------------------------------------------------------

def _expected_standin(spec: str) -> set[str]:
    names = {n for n, _ in StandIn().named_parameters()}
    head = {"head.weight", "head.bias"}
    layer = [f"backbone.layers.{i}." for i in range(L)]
    return {
        "full": names,
        "probe": head,
        "freeze:0": names - {n for n in names if n.startswith("backbone.embeddings.")},
        "freeze:1": {n for n in names if n.startswith((layer[1], "head."))},
        "freeze:2": head,
        "bitfit": head | {n for n in names if n.endswith(".bias")},
        "lora": head | {f"{p}attn.{m}.lora_{ab}.weight" for p in layer for m in "qv" for ab in "AB"},
        "adapter": head | {f"{p}{m}.adapter.{d}.{w}" for p in layer for m in ("attn.o", "ffn.fc2")
                           for d in ("down", "up") for w in ("weight", "bias")},
    }[spec]


@pytest.mark.parametrize("spec", ["full", "probe", "freeze:0", "freeze:1", "freeze:2", "bitfit", "lora",
                                  "adapter"])
def test_standin_trainable_names(spec: str) -> None:
    model = make("standin")
    info = apply_strategy(model, spec, SETTINGS)
    assert trainable_names(model) == _expected_standin(spec)
    t, total, share = trainable_summary(model)
    assert (info.trainable, info.total) == (t, total)
    assert info.summary() == format_summary(t, total)
    assert share == pytest.approx(t / total)


def _rule(spec: str):
    """Expected-trainable rule for the real models (tied head weights appear under the backbone)."""
    head = lambda n: n.startswith("head.")  # noqa: E731
    emb = ("backbone.embeddings.",)
    return {
        "full": lambda n: True,
        "probe": head,
        "freeze:1": lambda n: not n.startswith(emb + ("backbone.layers.0.",)),
        "bitfit": lambda n: head(n) or n.endswith(".bias"),
        "lora": lambda n: head(n) or ".lora_" in n,
        "adapter": lambda n: head(n) or ".adapter." in n,
    }[spec]


@pytest.mark.parametrize("kind", ["standin", "bert-classify", "gpt-classify"])
@pytest.mark.parametrize("spec", ["full", "probe", "freeze:1", "bitfit", "lora", "adapter"])
def test_training_moves_only_trainable(kind: str, spec: str) -> None:
    model = make(kind)
    apply_strategy(model, spec, SETTINGS)
    if kind != "standin":
        rule = _rule(spec)
        assert trainable_names(model) == {n for n, _ in model.named_parameters() if rule(n)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, batch(kind))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert not moved & frozen, f"frozen parameters changed: {sorted(moved & frozen)[:3]}"
    assert moved, "nothing trained"
    assert {n for n in moved if n.startswith("head.")} == {n for n in trainable_names(model)
                                                           if n.startswith("head.")}
    if spec == "lora":   # the zero-initialised B and (from step 2) A must both have trained
        assert any(".lora_B." in n for n in moved) and any(".lora_A." in n for n in moved)
    if spec == "adapter":
        assert any(".adapter.up." in n for n in moved) and any(".adapter.down." in n for n in moved)


def test_tied_head_stays_out_of_peft() -> None:
    """GPT-2's lm_head is the embedding matrix: LoRA must not train or save it; probe has nothing."""
    model = make("gpt-clm")
    apply_strategy(model, "lora", SETTINGS)
    assert not model.backbone.embeddings.word.weight.requires_grad
    assert all(".lora_" in n for n in adapter_state_dict(model))
    with pytest.raises(PlmkitError, match="no parameter to train"):
        apply_strategy(make("gpt-clm"), "probe", SETTINGS)
    mlm = make("bert-mlm")
    apply_strategy(mlm, "probe", SETTINGS)
    assert not mlm.backbone.embeddings.word.weight.requires_grad
    assert {n for n in trainable_names(mlm)} == {n for n, _ in mlm.head.named_parameters(prefix="head")
                                                 if n != "head.decoder.weight"}


# --- init identity, merge, round trips ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["standin", "bert-classify", "gpt-clm"])
@pytest.mark.parametrize("spec", ["adapter", "lora"])
def test_wrapped_model_starts_identical(kind: str, spec: str) -> None:
    b = batch(kind)
    base = logits(make(kind), b)
    model = make(kind)
    apply_strategy(model, spec, SETTINGS)
    wrapper = AdapterLinear if spec == "adapter" else LoraLinear
    assert any(isinstance(m, wrapper) for m in model.modules())
    assert torch.equal(logits(model, b), base)


@pytest.mark.parametrize("kind", ["standin", "bert-classify", "gpt-clm"])
def test_lora_merge_matches_unmerged(kind: str) -> None:
    model = make(kind)
    cfg = AdapterSettings(lora_r=4, lora_alpha=8.0, lora_dropout=0.1,
                          lora_targets=["q", "k", "v", "o", "fc1", "fc2"])
    apply_strategy(model, "lora", cfg)
    b = batch(kind)
    train(model, b)
    assert all(m.lora_B.weight.abs().sum() > 0 for m in model.modules() if isinstance(m, LoraLinear))
    before = logits(model, b)
    merged = merge(model)
    assert merged.plmkit_strategy is None
    assert not any(isinstance(m, LoraLinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(make(kind).state_dict())   # the parent's names again
    torch.testing.assert_close(logits(merged, b), before, atol=1e-5, rtol=0)


def test_merge_lora_folds_delta() -> None:
    base = nn.Linear(6, 5)
    w0 = base.weight.detach().clone()
    wrapped = LoraLinear(base, r=2, alpha=4.0, dropout=0.0)
    nn.init.normal_(wrapped.lora_B.weight)
    delta = 2.0 * wrapped.lora_B.weight @ wrapped.lora_A.weight
    root = nn.Sequential(wrapped)
    merge_lora(root)
    assert root[0] is base
    torch.testing.assert_close(base.weight, w0 + delta)


@pytest.mark.parametrize("kind", ["standin", "bert-classify", "gpt-clm"])
@pytest.mark.parametrize("spec", ["lora", "adapter", "bitfit", "probe"])
def test_adapter_only_round_trip(kind: str, spec: str, tmp_path) -> None:
    if (kind, spec) == ("gpt-clm", "probe"):
        pytest.skip("nothing to train: the clm head is tied to the embeddings")
    parent = make(kind)
    parent_state = {k: v.clone() for k, v in parent.state_dict().items()}
    model = make(kind)
    info = apply_strategy(model, spec, SETTINGS)
    b = batch(kind)
    train(model, b)
    want = logits(model, b)
    state = adapter_state_dict(model)
    assert set(state) == trainable_names(model)
    save_file(state, str(tmp_path / "adapter.safetensors"))
    meta = json.loads(json.dumps(strategy_meta(info)))          # what plmkit.json would hold
    assert meta["adapter_only"] and meta["spec"] == spec

    fresh = make(kind, seed=123)                                 # a "freshly loaded parent"
    fresh.load_state_dict(parent_state)
    restore_strategy(fresh, meta)
    load_adapter_state(fresh, load_file(str(tmp_path / "adapter.safetensors")))
    assert torch.equal(logits(fresh, b), want)


def test_adapter_merge_keeps_modules_and_full_state_reloads() -> None:
    model = make("bert-classify")
    info = apply_strategy(model, "adapter", SETTINGS)
    b = batch("bert-classify")
    train(model, b)
    want = logits(model, b)
    assert merge(model) is model and model.plmkit_strategy is info    # non-linear: kept
    assert any(isinstance(m, AdapterLinear) for m in model.modules())
    meta = strategy_meta(info)
    assert meta["structural"]
    fresh = make("bert-classify", seed=5)
    restore_strategy(fresh, meta)              # structure first, then the full state dict
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(logits(fresh, b), want)


def test_load_adapter_state_rejects_mismatch() -> None:
    model = make("standin")
    apply_strategy(model, "lora", SETTINGS)
    state = adapter_state_dict(model)
    other = make("standin")
    apply_strategy(other, "adapter", SETTINGS)
    with pytest.raises(PlmkitError, match="does not match strategy 'adapter'"):
        load_adapter_state(other, state)
    bigger = make("standin")
    apply_strategy(bigger, "lora", AdapterSettings(lora_r=8))
    with pytest.raises(PlmkitError, match="shape"):
        load_adapter_state(bigger, state)
    with pytest.raises(PlmkitError, match="apply_strategy first"):
        adapter_state_dict(make("standin"))


# --- summary line and errors -----------------------------------------------------------------

def test_summary_line(capsys) -> None:
    assert format_summary(12345, 22713216) == "trainable params: 12,345 / 22,713,216 (0.05%)"
    model = make("standin")
    info = apply_strategy(model, "probe", SETTINGS)
    print(info.summary())
    total = sum(p.numel() for p in model.parameters())
    share = f"{100 * (H * LABELS + LABELS) / total:.2f}%"
    assert capsys.readouterr().out == f"trainable params: {H * LABELS + LABELS:,} / {total:,} ({share})\n"


@pytest.mark.parametrize("spec, why", [
    ("nope", "unknown strategy"),
    ("freeze:3", "N=3 but the model has 2 layers"),
    ("freeze:x", "needs a non-negative integer"),
    ("freeze:-1", "needs a non-negative integer"),
    ("freeze", "needs a non-negative integer"),
    ("lora:4", "takes no argument"),
])
def test_bad_specs(spec: str, why: str) -> None:
    model = make("standin")
    with pytest.raises(PlmkitError) as e:
        apply_strategy(model, spec, SETTINGS)
    msg = str(e.value)
    assert why in msg
    assert "valid forms: full, probe, freeze:N (N=0..2), adapter, lora, bitfit" in msg
    assert all(p.requires_grad for p in model.parameters())     # model untouched


def test_bad_settings_and_reapply() -> None:
    with pytest.raises(PlmkitError, match="unknown adapter target"):
        apply_strategy(make("standin"), "lora", AdapterSettings(lora_targets=["qkv"]))
    with pytest.raises(PlmkitError, match="rank"):
        apply_strategy(make("standin"), "lora", AdapterSettings(lora_r=0))
    with pytest.raises(PlmkitError, match="activation"):
        apply_strategy(make("standin"), "adapter", AdapterSettings(adapter_activation="swish"))
    model = make("standin")
    apply_strategy(model, "lora", SETTINGS)
    with pytest.raises(PlmkitError, match="already has strategy 'lora'"):
        apply_strategy(model, "adapter", SETTINGS)
    with pytest.raises(PlmkitError, match="unknown option 'rank'"):
        restore_strategy(make("standin"), {"spec": "lora", "settings": {"rank": 4}})
    with pytest.raises(PlmkitError, match="'spec' string"):
        restore_strategy(make("standin"), {"name": "lora"})


def test_shared_layers_freeze() -> None:
    pytest.importorskip("plmkit.models.model")
    from plmkit.models.config import EncoderConfig
    from plmkit.models.model import PlmModel
    cfg = EncoderConfig(vocab_size=VOCAB, hidden_size=H, num_layers=3, num_heads=2, intermediate_size=H,
                        max_position=16, share_layers=True)
    with pytest.raises(PlmkitError, match="share weights"):
        apply_strategy(PlmModel(cfg, "classify", {"num_labels": 2}), "freeze:1", SETTINGS)
    model = PlmModel(cfg, "classify", {"num_labels": 2})
    apply_strategy(model, "freeze:3", SETTINGS)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("backbone.layers."))
