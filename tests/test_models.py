"""Model core: shapes, per-layer sizes, heads and losses, attention paths, KV cache."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from plmkit.errors import PlmkitError
from plmkit.models.config import EncoderConfig, preset
from plmkit.models.model import PlmModel


def batch(vocab=120, B=3, T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 6:] = 0
    return ids, mask


def test_presets_have_documented_shapes():
    mini = preset("bert", "mini")
    assert (mini.num_layers, mini.hidden_size, mini.heads, mini.ffn) == (4, 256, [4] * 4, [1024] * 4)
    base = preset("bert", "base")
    assert (base.num_layers, base.hidden_size, base.head_dim) == (12, 768, 64)
    with pytest.raises(PlmkitError, match="unknown size"):
        preset("bert", "huge")


def test_per_layer_sizes_make_a_physically_smaller_model(tiny_encoder_cfg):
    full = PlmModel(tiny_encoder_cfg, "classify", {"num_labels": 2})
    small_cfg = dataclasses.replace(tiny_encoder_cfg, heads=[2, 1], ffn=[16, 8])
    small = PlmModel(small_cfg, "classify", {"num_labels": 2})
    assert small.backbone.layers[1].attn.q.weight.shape == (8, 32)     # 1 head x head_dim 8
    assert small.backbone.layers[0].ffn.fc1.weight.shape == (16, 32)
    assert small.num_parameters() < full.num_parameters()
    ids, mask = batch()
    assert small(ids, mask).logits.shape == (3, 2)


def test_attention_probabilities_path_matches_sdpa(tiny_encoder_cfg):
    torch.manual_seed(0)
    model = PlmModel(tiny_encoder_cfg, "base").eval()
    ids, mask = batch()
    fast = model(ids, mask).last_hidden_state
    slow = model(ids, mask, output_attentions=True, output_hidden_states=True)
    assert torch.allclose(fast, slow.last_hidden_state, atol=1e-5)
    assert len(slow.hidden_states) == 3 and len(slow.attentions) == 2
    probs = slow.attentions[0]
    assert probs.shape == (3, 4, 10, 10)
    assert torch.allclose(probs.sum(-1), torch.ones(3, 4, 10), atol=1e-5)
    assert probs[0, :, :, 6:].abs().max() < 1e-6          # padded keys get no attention


def test_padding_does_not_change_real_tokens(tiny_encoder_cfg):
    torch.manual_seed(0)
    model = PlmModel(tiny_encoder_cfg, "base").eval()
    ids, _ = batch(B=1, T=6)
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], 1).long()
    a = model(ids).last_hidden_state
    b = model(padded, mask).last_hidden_state[:, :6]
    assert torch.allclose(a, b, atol=1e-5)


def test_fully_pruned_layer_contributes_only_biases(tiny_encoder_cfg):
    cfg = dataclasses.replace(tiny_encoder_cfg, heads=[4, 0], ffn=[64, 0])
    model = PlmModel(cfg, "base").eval()
    ids, mask = batch()
    out = model(ids, mask, output_attentions=True)
    assert out.attentions[1].shape == (3, 0, 10, 10)
    assert torch.isfinite(out.last_hidden_state).all()


def test_mlm_loss_counts_only_masked_positions(tiny_encoder_cfg):
    torch.manual_seed(0)
    model = PlmModel(tiny_encoder_cfg, "mlm").eval()
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[1, 2], labels[2, 5] = 7, 9
    out = model(ids, mask, labels=labels)
    full = model(ids, mask).logits                               # [B, T, V]
    expected = F.cross_entropy(torch.stack([full[1, 2], full[2, 5]]), torch.tensor([7, 9]))
    assert out.logits.shape == (2, 120)
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert model.head.decoder.weight is model.backbone.embeddings.word.weight   # tied


def test_pretrain_head_adds_nsp_loss(tiny_encoder_cfg):
    torch.manual_seed(0)
    model = PlmModel(tiny_encoder_cfg, "mlm+nsp").eval()
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 1] = 3
    nsp = torch.tensor([0, 1, 0])
    out = model(ids, mask, labels=labels, next_sentence_label=nsp)
    expected = out.aux["mlm_loss"] + F.cross_entropy(out.nsp_logits, nsp)
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert 0.0 <= float(out.aux["nsp_acc"]) <= 1.0


def test_task_heads_losses(tiny_encoder_cfg):
    torch.manual_seed(0)
    ids, mask = batch()
    cls = PlmModel(tiny_encoder_cfg, "classify", {"num_labels": 3}).eval()
    y = torch.tensor([0, 2, 1])
    out = cls(ids, mask, labels=y)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, y), atol=1e-6)
    tok = PlmModel(tiny_encoder_cfg, "token", {"num_labels": 5}).eval()
    tags = torch.full_like(ids, -100)
    tags[:, 1:4] = 2
    out = tok(ids, mask, labels=tags)
    assert out.logits.shape == (3, 10, 5)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits[:, 1:4].reshape(-1, 5), tags[:, 1:4].reshape(-1)))
    span = PlmModel(tiny_encoder_cfg, "span").eval()
    out = span(ids, mask, start_positions=torch.tensor([1, 2, 3]), end_positions=torch.tensor([2, 2, 4]))
    assert out.start_logits.shape == (3, 10) and out.loss > 0
    assert out.start_logits[0, 6:].max() < -1e30                  # padding never predicted


def test_albert_factorised_and_shared(tiny_encoder_cfg):
    cfg = dataclasses.replace(tiny_encoder_cfg, embedding_size=16, share_layers=True, num_layers=3,
                              heads=None, ffn=None)
    cfg.__post_init__()
    model = PlmModel(cfg, "mlm")
    assert len(model.backbone.layers) == 1
    assert model.backbone.embeddings.word.weight.shape == (120, 16)
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 2] = 4
    assert torch.isfinite(model(ids, mask, labels=labels).loss)
    unshared = PlmModel(dataclasses.replace(cfg, share_layers=False), "mlm")
    assert model.num_parameters() < unshared.num_parameters()


def test_pre_ln_encoder_block_and_final_norm(tiny_encoder_cfg):
    from plmkit.models.hf import check_expressible
    from plmkit.models.layers import Context

    cfg = dataclasses.replace(tiny_encoder_cfg, pre_ln=True, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = PlmModel(cfg, "base").eval()
    with torch.no_grad():   # BERT's 0.02 init makes every sub-layer ~0: post- and pre-LN would agree
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    ids, mask = batch()
    out = model(ids, mask, output_hidden_states=True)
    # Recompute by hand: x + Attn(LN(x)), then x + FFN(LN(x)), then the final LayerNorm.
    x = out.hidden_states[0]
    ctx = Context(cfg, mask, torch.arange(ids.size(1))[None], ids.size(1), ids.size(1), torch.float32, False)
    for layer in model.backbone.layers:
        x = x + layer.attn(layer.attn_norm(x), ctx, None)[0]
        x = x + layer.ffn(layer.ffn_norm(x))
    expected = model.backbone.final_norm(x)
    assert torch.allclose(out.last_hidden_state, expected, atol=1e-5)
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    # Post-LN differs on the same weights; the HF BERT layout cannot hold a pre-LN model.
    post = PlmModel(dataclasses.replace(cfg, pre_ln=False), "base").eval()
    post.load_state_dict({k: v for k, v in model.state_dict().items() if "final_norm" not in k})
    assert not torch.allclose(post(ids, mask).last_hidden_state, expected, atol=1e-3)
    with pytest.raises(PlmkitError, match="pre-LN"):
        check_expressible(cfg, "mlm")


def test_wrong_family_for_task(tiny_decoder_cfg):
    with pytest.raises(PlmkitError, match="needs an encoder"):
        PlmModel(tiny_decoder_cfg, "mlm")
    with pytest.raises(PlmkitError, match="not divisible"):
        EncoderConfig(hidden_size=30, num_heads=4)


def test_decoder_kv_cache_matches_full_forward(tiny_decoder_cfg):
    torch.manual_seed(0)
    model = PlmModel(tiny_decoder_cfg, "clm").eval()
    ids, _ = batch(T=12)
    full = model(ids).logits
    first = model(ids[:, :5], use_cache=True)
    logits = [first.logits]
    past = first.past_key_values
    for t in range(5, 12):                                       # one token at a time
        step = model(ids[:, t:t + 1], past_key_values=past, use_cache=True)
        logits.append(step.logits)
        past = step.past_key_values
    assert torch.allclose(torch.cat(logits, 1), full, atol=1e-5)


def test_decoder_is_causal(tiny_decoder_cfg):
    torch.manual_seed(0)
    model = PlmModel(tiny_decoder_cfg, "clm").eval()
    ids, _ = batch(T=8)
    changed = ids.clone()
    changed[:, 5:] = 3
    assert torch.allclose(model(ids).logits[:, :5], model(changed).logits[:, :5], atol=1e-6)


def test_clm_loss_is_shifted(tiny_decoder_cfg):
    torch.manual_seed(0)
    model = PlmModel(tiny_decoder_cfg, "clm").eval()
    ids, _ = batch(T=8)
    labels = ids.clone()
    labels[:, :3] = -100                                          # prompt positions ignored
    out = model(ids, labels=labels)
    full = model(ids).logits                                      # [B, T, V] without labels
    expected = F.cross_entropy(full[:, 2:-1].reshape(-1, 120), ids[:, 3:].reshape(-1))
    assert torch.allclose(out.loss, expected, atol=1e-5)
    # With labels only the positions that predict a labelled token reach the LM head: [N, V].
    assert out.logits.shape == (ids.size(0) * 5, 120)
    assert torch.allclose(out.logits, full[:, 2:-1].reshape(-1, 120), atol=1e-5)


def test_clm_batch_without_labelled_tokens_has_zero_loss_and_gradient(tiny_decoder_cfg):
    torch.manual_seed(0)
    model = PlmModel(tiny_decoder_cfg, "clm")
    ids, _ = batch(T=8)
    out = model(ids, labels=torch.full_like(ids, -100))
    assert out.logits.shape == (0, 120) and out.loss.item() == 0.0
    out.loss.backward()                                           # a graph, with zero gradients
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_rate_scale_gradient_and_seeding(p):
    from plmkit.models.dropout import Dropout

    drop = Dropout(p)
    # Nonzero inputs (so y == 0 means dropped); an odd element count, not a multiple of 4.
    x = (torch.rand(256, 64, 65) + 0.5).requires_grad_()
    torch.manual_seed(3)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / (1 - p))
    torch.manual_seed(3)
    assert torch.equal(drop(x) != 0, kept)                  # the seeded generator reproduces the mask
    assert not torch.equal(drop(x) != 0, kept)              # and the next call draws a new one
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_vocabulary_cross_entropy_in_chunks_is_fp32_cross_entropy(monkeypatch, dtype, reduction):
    """Half-precision logits over a vocabulary: the chunked loss (models/cross_entropy.py) is
    F.cross_entropy of the fp32 logits, ignored positions left out, and so is its gradient; small
    chunks so that several are taken, a last one partial."""
    from plmkit.models import cross_entropy as CE

    monkeypatch.setattr(CE, "CHUNK_BYTES", 4 * 2048 * 3)          # 3 rows a chunk
    torch.manual_seed(0)
    z0 = (torch.randn(11, 2048) * 4).to(dtype)
    y = torch.randint(0, 2048, (11,))
    y[[2, 7]] = CE.IGNORE

    def run(loss_fn):
        z = z0.clone().requires_grad_(True)
        loss = loss_fn(z)
        loss.backward()
        return loss, z.grad

    got, got_grad = run(lambda z: CE.cross_entropy(z, y, reduction))
    want, want_grad = run(lambda z: F.cross_entropy(z.float(), y, ignore_index=CE.IGNORE, reduction=reduction))
    assert _in_graph(got, "ChunkedCrossEntropy")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert got_grad.dtype == dtype and got_grad[[2, 7]].eq(0).all()
    torch.testing.assert_close(got_grad.float(), want_grad.float(), rtol=1e-2, atol=1e-6)   # one half-precision ulp
    assert (got_grad == want_grad).float().mean() > 0.99
    # narrow outputs (tags, classes) and fp32 logits take F.cross_entropy itself
    assert not _in_graph(CE.cross_entropy(z0[:, :8].float().requires_grad_(), y % 8), "Chunked")
    assert not _in_graph(CE.cross_entropy(z0.float().requires_grad_(), y), "Chunked")


def _in_graph(t: torch.Tensor, name: str) -> bool:
    """Whether a node of ``t``'s autograd graph is named ``name``."""
    todo, seen = [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if name in type(node).__name__:
            return True
        todo += [n for n, _ in node.next_functions]
    return False
