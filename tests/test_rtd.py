"""ELECTRA replaced-token detection (`pretrain --objective rtd`): the generator's size and shared
embeddings, the labels the discriminator learns, the HF ELECTRA export with equal outputs, an
exact resume, the refusals; and the unigram start of a new MLM head for checkpoints without one."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plmkit.cli import main
from plmkit.models.checkpoint import load_model
from plmkit.models.config import preset
from plmkit.models.heads import IGNORE
from plmkit.models.rtd import RTDPretrainer, discriminator_config

transformers = pytest.importorskip("transformers")

RUN = ["--seq-len", "32", "--batch-size", "8", "--log-every", "1", "--eval-batches", "0", "--precision", "fp32",
       "--progress-every", "0", "--size", "tiny", "--vocab-size", "200"]
WORDS = "the a cat dog sat ran on under mat tree house big small red green quickly slowly and but".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rtd")
    rng = random.Random(0)
    docs = ["\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + " ." for _ in range(4))
            for _ in range(120)]
    (d / "corpus.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return d


def pretrain(d: Path, name: str, *extra: str) -> int:
    return main(["pretrain", "--objective", "rtd", "--corpus", str(d / "corpus.txt"), "--out", str(d / name),
                 "--cache-dir", str(d / "cache"), *RUN, *extra])


def test_generator_shares_embeddings_and_labels_mark_replacements():
    torch.manual_seed(0)
    model = RTDPretrainer.new(discriminator_config(preset("bert", "mini", vocab_size=300)))
    d, g = model.discriminator, model.generator
    assert (d.config.hidden_size, g.config.hidden_size, g.config.num_layers) == (256, 64, 4)
    assert g.backbone.embeddings.word is d.backbone.embeddings.word
    assert g.head.decoder.weight is d.backbone.embeddings.word.weight
    assert g.backbone.embeddings.proj is not None and d.backbone.embeddings.proj is None   # E=256 -> 64
    ids = torch.randint(5, 300, (2, 10), generator=torch.Generator().manual_seed(1))
    labels = torch.full_like(ids, IGNORE)
    labels[:, [2, 5]] = ids[:, [2, 5]]
    masked = ids.clone()
    masked[:, [2, 5]] = 4
    seen = {}
    d.register_forward_hook(lambda m, a, kw, out: seen.update(kw), with_kwargs=True)
    d.register_forward_pre_hook(lambda m, a: seen.update(ids=a[0]))
    out = model(masked, torch.ones_like(ids), None, labels=labels)
    fake, replaced = seen["ids"], seen["labels"]
    # untouched positions keep the original token and are labelled 0; a replacement is labelled 1
    keep = labels == IGNORE
    assert torch.equal(fake[keep], ids[keep]) and (replaced[keep] == 0).all()
    assert torch.equal(replaced[~keep], (fake[~keep] != ids[~keep]).long())
    assert out.loss > 0 and {"mlm_loss", "rtd_loss", "replaced"} <= set(out.aux)


def test_rtd_pretrains_and_exports_to_hf_electra(corpus, tmp_path):
    assert pretrain(corpus, "electra", "--max-steps", "4", "--lr", "2e-3") == 0
    model = load_model(corpus / "electra").eval()
    assert (model.task, model.config.layout, model.config.use_pooler) == ("rtd", "electra", False)
    gen = load_model(corpus / "electra" / "generator")
    assert gen.task == "mlm" and gen.config.hidden_size == 32            # a quarter of tiny's 128
    torch.testing.assert_close(gen.backbone.embeddings.word.weight, model.backbone.embeddings.word.weight)
    records = [json.loads(x) for x in (corpus / "electra" / "metrics.jsonl").read_text().splitlines()]
    assert all({"mlm_loss", "rtd_loss"} <= set(r) for r in records if "loss" in r)
    assert main(["export", "--model", str(corpus / "electra"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    theirs = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(5, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, ref = model(input_ids=ids), theirs(input_ids=ids)
    torch.testing.assert_close(ours.logits, ref.logits, atol=1e-4, rtol=1e-4)
    # and it fine-tunes like any checkpoint (the RTD head is dropped)
    clf = load_model(corpus / "electra", task="classify", head_config={"num_labels": 2, "labels": ["a", "b"]})
    assert clf.task == "classify"


def test_resume_of_an_rtd_run_is_exact(corpus):
    args = ("--max-steps", "6", "--save-every", "3", "--lr", "2e-3", "--dropout", "0.1")
    for run in ("full", "cut"):
        assert pretrain(corpus, run, *args) == 0
    shutil.rmtree(corpus / "cut" / "checkpoints" / "step-6")              # as if killed after step 3's save
    for name in ("config.json", "model.safetensors", "plmkit.json"):
        (corpus / "cut" / name).unlink()
    shutil.rmtree(corpus / "cut" / "generator")
    assert pretrain(corpus, "cut", *args, "--resume") == 0
    for part in ("model.safetensors", "generator/model.safetensors"):
        a, b = load_file(str(corpus / "full" / part)), load_file(str(corpus / "cut" / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rtd_refusals(corpus, capsys):
    assert main(["pretrain", "--objective", "rtd", "--arch", "gpt", "--corpus", str(corpus / "corpus.txt"),
                 "--out", str(corpus / "x"), "--max-steps", "1"]) == 1
    assert "objective 'rtd' does not fit arch 'gpt'" in capsys.readouterr().err
    assert pretrain(corpus, "electra-init", "--max-steps", "1", "--init", str(corpus / "electra")) == 1 \
        or not (corpus / "electra").exists()
    err = capsys.readouterr().err
    assert "from scratch" in err or "contradict" in err
    assert not (corpus / "x").exists()


def test_a_new_mlm_head_starts_at_the_unigram_frequencies(corpus, tmp_path):
    """A checkpoint without an MLM head (a bare encoder, as sentence-transformers ship): the new head's
    bias is the corpus's log unigram distribution, so the first loss is far below a random head's."""
    letters = sorted(set("".join(WORDS)))
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS, *letters, *(f"##{c}" for c in letters)]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bare")
    transformers.BertTokenizer(vocab=vocab).save_pretrained(tmp_path / "bare")
    common = ["pretrain", "--init", str(tmp_path / "bare"), "--objective", "mlm", "--corpus",
              str(corpus / "corpus.txt"), "--max-steps", "1", "--lr", "1e-9", "--seq-len", "32", "--batch-size",
              "8", "--eval-batches", "0", "--precision", "fp32", "--cache-dir", str(tmp_path / "cache"),
              "--log-every", "1", "--progress-every", "0"]
    assert main([*common, "--out", str(tmp_path / "out")]) == 0
    first = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    model = load_model(tmp_path / "out")
    bias = model.head.decoder.bias.detach()
    # the most frequent words get the largest bias; a token the corpus lacks the smallest
    assert bias[vocab["the"]] > bias[vocab["[UNK]"]] and float(bias.exp().sum()) < 1.01
    import math
    assert first < math.log(len(vocab)) - 1.0      # a random head starts at about ln V or above
