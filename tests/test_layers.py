"""The model core's choices: local attention, grouped-query attention, rotary, RMSNorm, gated FFNs."""
from __future__ import annotations

import pytest
import torch

from plmkit.compress import prune as P
from plmkit.errors import PlmkitError
from plmkit.models.config import DecoderConfig, EncoderConfig
from plmkit.models.generate import generate
from plmkit.models.layers import attend, band_mask, banded_attend
from plmkit.models.model import PlmModel


def _modern(**kw) -> EncoderConfig:
    """A tiny ModernBERT-shaped encoder: pre-LN, rotary, gated FFN, local layers, no biases."""
    base = dict(vocab_size=100, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=48, max_position=256,
                positions="rotary", rope_theta=160000.0, rope_theta_local=10000.0, type_vocab_size=0,
                pre_ln=True, first_attn_norm=False, ffn_kind="gated", activation="gelu", norm_bias=False,
                attn_bias=False, attn_out_bias=False, ffn_bias=False, local_window=8, global_every=3,
                use_pooler=False, hidden_dropout=0.0, attention_dropout=0.0, layer_norm_eps=1e-5)
    return EncoderConfig(**{**base, **kw})


def _llama(**kw) -> DecoderConfig:
    base = dict(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=40,
                max_position=128, positions="rotary", norm="rmsnorm", ffn_kind="gated", activation="silu",
                attn_bias=False, attn_out_bias=False, ffn_bias=False, layer_norm_eps=1e-6, qk_norm=True,
                tie_embeddings=False, hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=1, eos_token_id=2)
    return DecoderConfig(**{**base, **kw})


def _padded(B: int, T: int, V: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[-1, T // 2:] = 0
    return ids * mask, mask


@pytest.mark.parametrize("T,half", [(40, 4), (37, 5), (9, 4), (64, 1)])
def test_banded_local_attention_equals_the_dense_band_mask(T, half):
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, 3, T, 8, generator=g) for _ in range(3))
    keep = torch.ones(2, T, dtype=torch.bool)
    keep[1, T - T // 3:] = False
    dense, _ = attend(q, k, v, band_mask(T, half, keep, torch.float32, q.device), 0.0, want_probs=True)
    chunked = banded_attend(q, k, v, keep, half, 0.0)
    real = keep[:, None, :, None].expand_as(dense)
    assert torch.allclose(chunked[real], dense[real], atol=1e-5)


def test_local_layers_see_only_their_window():
    """ModernBERT's pattern: layer 0 (and every third) global, the others |i - j| <= window / 2."""
    torch.manual_seed(0)
    model = PlmModel(_modern(), "base").eval()
    ids, mask = _padded(2, 20)
    with torch.no_grad():
        probs = model(ids, mask, output_attentions=True).attentions      # 3 x [B, h, T, T]
    i = torch.arange(20)
    far = (i[:, None] - i[None, :]).abs() > 4
    assert probs[0][0][:, far].abs().max() > 1e-3                       # global layer: sees everything
    for layer in (1, 2):
        assert probs[layer][0][:, far].abs().max() == 0                  # local: nothing beyond the window
    assert probs[1][1][:, :10, 10:].abs().max() == 0                     # real queries never see padding


def test_long_local_input_takes_the_chunked_path_and_agrees_with_the_dense_one():
    torch.manual_seed(0)
    model = PlmModel(_modern(), "base").eval()
    ids, mask = _padded(2, 50)
    with torch.no_grad():
        chunked = model(ids, mask).last_hidden_state              # T=50 > 4 * half=16: chunked local layers
        dense = model(ids, mask, output_attentions=True).last_hidden_state   # probabilities force the dense path
    real = mask.bool()
    assert torch.allclose(chunked[real], dense[real], atol=1e-5)


def test_grouped_query_attention_matches_repeated_heads():
    torch.manual_seed(0)
    gqa = PlmModel(_llama(qk_norm=False), "clm").eval()
    mha_cfg = _llama(qk_norm=False, num_kv_heads=None)
    mha = PlmModel(mha_cfg, "clm").eval()
    state = gqa.state_dict()
    for i in range(2):                                            # each kv head serves 2 query heads
        for name in ("k", "v"):
            w = state[f"backbone.layers.{i}.attn.{name}.weight"].view(2, 8, 32)
            state[f"backbone.layers.{i}.attn.{name}.weight"] = w.repeat_interleave(2, 0).reshape(32, 32)
    mha.load_state_dict(state)
    ids, mask = _padded(2, 12)
    with torch.no_grad():
        a, b = gqa(ids, mask).logits, mha(ids, mask).logits
        explicit = gqa(ids, mask, output_attentions=True).logits
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, explicit, atol=1e-5)


def test_rotary_decoder_cache_and_left_padding_match_the_full_forward():
    torch.manual_seed(0)
    model = PlmModel(_llama(), "clm").eval()
    ids = torch.randint(3, 100, (1, 9))
    with torch.no_grad():
        full = model(ids).logits
        step = model(ids[:, :6], use_cache=True)
        nxt = model(ids[:, 6:], past_key_values=step.past_key_values, use_cache=True).logits
        assert torch.allclose(full[:, 6:], nxt, atol=1e-5)
        # The same prompt left-padded by 3 in a batch gives the same next-token logits.
        padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
        mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
        left = model(padded, mask).logits
    assert torch.allclose(left[:, -1], full[:, -1], atol=1e-5)
    out = generate(model, ids, max_new_tokens=5, temperature=0.0)
    assert torch.equal(out, generate(model, ids, max_new_tokens=5, temperature=0.0, use_cache=False))


def test_gated_ffn_pruning_removes_both_halves_of_a_neuron():
    torch.manual_seed(0)
    model = PlmModel(_modern(), "base").eval()
    ids, mask = _padded(2, 12)
    keep = [torch.tensor([0, 3, 5, 7]) for _ in range(3)]
    # Reference: zero the other neurons' fc2 columns (their output then contributes nothing).
    ref = PlmModel(model.config, "base").eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for b, kept in zip(ref.backbone.layers, keep):
            drop = torch.ones(48, dtype=torch.bool)
            drop[kept] = False
            b.ffn.fc2.weight[:, drop] = 0
        want = ref(ids, mask).last_hidden_state
    P.prune_ffn(model, keep)
    assert model.config.ffn == [4, 4, 4] and model.backbone.layers[0].ffn.fc1.out_features == 8
    with torch.no_grad():
        got = model(ids, mask).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5)


def test_grouped_query_heads_are_pruned_a_group_at_a_time():
    torch.manual_seed(0)
    model = PlmModel(_llama(), "clm").eval()
    ids = torch.randint(3, 100, (2, 10))
    ref = PlmModel(model.config, "clm").eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():     # group 1 of layer 0 = query heads 2, 3: zero their o columns
        ref.backbone.layers[0].attn.o.weight[:, 16:32] = 0
        want = ref(ids).logits
    P.prune_heads(model, [torch.tensor([0]), torch.tensor([0, 1])])
    assert model.config.heads == [2, 4] and model.config.kv_heads == [1, 2]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, want, atol=1e-5)
    with pytest.raises(PlmkitError, match="multiple of 2"):
        P.heads_to_units(model, [1, 0])


def test_config_refuses_choices_it_cannot_build():
    with pytest.raises(PlmkitError, match="rope_scaling kind 'yarn'"):
        _llama(rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(PlmkitError, match="multiple of num_kv_heads"):
        _llama(num_kv_heads=3)
    with pytest.raises(PlmkitError, match="local attention"):
        _llama(local_window=8)
    with pytest.raises(PlmkitError, match="norm must be one of"):
        _modern(norm="batchnorm")
