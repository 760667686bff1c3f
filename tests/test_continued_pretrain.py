"""plmkit pretrain --init (continued pre-training), --add-tokens, --recipe budget and ALBERT pre-training.

The parents are tiny random HF checkpoints made with transformers' own config classes (BERT,
GPT-2, ModernBERT), as a user would bring them; a first ``--init`` run trains each a little, a
second continues that one: its first loss must be far below the random start's on the same
batch (same seed, corpus and tokenizer give the same first batch).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from plmkit.cli import main
from plmkit.config import build, compose, from_args, from_recipe
from plmkit.models.checkpoint import load_model
from plmkit.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install .[hf])")
transformers.utils.logging.disable_progress_bar()

from family_fixtures import _wordpiece, sentence  # noqa: E402

RUN = ["--seq-len", "32", "--batch-size", "8", "--log-every", "1", "--eval-batches", "0", "--precision", "fp32",
       "--progress-every", "0"]
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models run on one thread


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A corpus of the fixture vocabulary's words, and tiny random HF checkpoints beside it."""
    d = tmp_path_factory.mktemp("cpt")
    rng = random.Random(0)
    docs = ["\n".join(sentence(rng, rng.random() < 0.5) + " ." for _ in range(rng.randint(3, 6))) for _ in range(300)]
    (d / "corpus.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    tok = _wordpiece("BertTokenizer")
    bert = transformers.BertConfig(vocab_size=len(tok), max_position_embeddings=64, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0, **SIZES)
    transformers.BertForPreTraining(bert).save_pretrained(d / "bert")
    tok.save_pretrained(d / "bert")
    bert.num_labels = 2
    transformers.BertForSequenceClassification(bert).save_pretrained(d / "bert-clf")
    tok.save_pretrained(d / "bert-clf")
    return d


def _gpt2(root: Path) -> Path:
    out = root / "gpt2"
    if not out.is_dir():
        tok = train_tokenizer([root / "corpus.txt"], kind="bpe", vocab_size=300, show_progress=False)
        eos = tok.token_to_id("<|endoftext|>")
        cfg = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=eos, eos_token_id=eos, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0)
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(cfg).save_pretrained(out)
        save_tokenizer(tok, out)
    return out


def _modernbert(root: Path) -> Path:
    from test_modernbert import SPECIALS, hf_config, modernbert_tokenizer

    out = root / "modernbert"
    if not out.is_dir():
        tok = modernbert_tokenizer((root / "corpus.txt").read_text().splitlines())
        ids = {t: tok.token_to_id(t) for t in SPECIALS}
        cfg = hf_config(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=3, intermediate_size=48,
                        local_attention=8, pad_token_id=ids["[PAD]"], bos_token_id=ids["[CLS]"],
                        eos_token_id=ids["[SEP]"], cls_token_id=ids["[CLS]"], sep_token_id=ids["[SEP]"],
                        embedding_dropout=0.0, mlp_dropout=0.0, attention_dropout=0.0)
        torch.manual_seed(0)
        transformers.ModernBertForMaskedLM(cfg).save_pretrained(out)
        tok.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "cls_token": "[CLS]", "sep_token": "[SEP]",
            "pad_token": "[PAD]", "mask_token": "[MASK]", "unk_token": "[UNK]"}))
    return out


def pretrain(root: Path, init: Path | None, out: str, *extra: str) -> int:
    args = ["pretrain", "--corpus", str(root / "corpus.txt"), "--out", str(root / out), "--cache-dir",
            str(root / "cache"), *RUN, *extra]
    return main(args + (["--init", str(init)] if init else []))


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


PARENTS = {"bert": (lambda r: r / "bert", "mlm+nsp", "mlm", "mlm_loss"),
           "gpt2": (_gpt2, "clm", "clm", "clm_loss"),
           "modernbert": (_modernbert, "mlm", "mlm", "mlm_loss")}


@pytest.mark.parametrize("family", list(PARENTS))
def test_init_continues_a_trained_checkpoint(root, family, capsys):
    make, first, second, key = PARENTS[family]
    parent = make(root)
    capsys.readouterr()
    # 1. the random HF checkpoint, trained a little (its first loss: a random start's)
    assert pretrain(root, parent, f"{family}-1", "--max-steps", "50", "--lr", "3e-3", "--objective", first) == 0
    said = capsys.readouterr().out
    assert f"its {first} head is reused" in said
    assert ("unknown tokens: 0.00%" in said) == (family == "bert")     # byte-level BPE has no unknown token
    # 2. continue that: the same first batch, a much lower loss
    assert pretrain(root, root / f"{family}-1", f"{family}-2", "--max-steps", "2", "--objective", second) == 0
    said = capsys.readouterr().out
    reused = f"its MLM head (from {first}) is reused" if first != second else f"its {second} head is reused"
    assert reused in said
    random_start = records(root / f"{family}-1")[0][key]
    continued = records(root / f"{family}-2")[0][key]
    assert continued < random_start - 1.0, (continued, random_start)
    model = load_model(root / f"{family}-2")
    assert model.task == second and model.config.layout == {"gpt2": "gpt2", "bert": "bert"}.get(family, family)
    meta = json.loads((root / f"{family}-2" / "plmkit.json").read_text())
    assert meta["parent"] == str((root / f"{family}-1").resolve()) and meta["init"]["parent_task"] == first
    assert load_tokenizer(root / f"{family}-2").get_vocab() == load_tokenizer(parent).get_vocab()
    saved = yaml.safe_load((root / f"{family}-2" / "pretrain.yaml").read_text())  # the checkpoint decides
    assert saved["objective"] == second and saved["arch"] is saved["size"] is saved["vocab_size"] is None


def test_resume_of_an_init_run_is_exact(root, capsys):
    args = ("--max-steps", "6", "--save-every", "3", "--lr", "2e-3", "--objective", "mlm", "--dropout", "0.1")
    for run in ("full", "cut"):
        assert pretrain(root, root / "bert", run, *args) == 0
    shutil.rmtree(root / "cut" / "checkpoints" / "step-6")              # as if killed after step 3's save
    for name in ("config.json", "model.safetensors", "plmkit.json"):
        (root / "cut" / name).unlink()
    assert pretrain(root, root / "bert", "cut", *args, "--resume") == 0
    assert "resuming from step 3" in capsys.readouterr().out
    a, b = load_file(str(root / "full" / "model.safetensors")), load_file(str(root / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the checkpoint's pooler gets no gradient from MLM alone: kept as it was, frozen
    parent = load_model(root / "bert")
    assert torch.equal(a["backbone.pooler.dense.weight"], parent.state_dict()["backbone.pooler.dense.weight"])


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plmkit: error:"), err
    return err[0]


def test_refusals_are_one_line_and_write_nothing(root, capsys, tmp_path):
    (tmp_path / "noweights").mkdir()
    shutil.copy(root / "bert" / "config.json", tmp_path / "noweights")
    (tmp_path / "notok").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(root / "bert" / name, tmp_path / "notok")
    other = tmp_path / "tok"
    other.mkdir()
    save_tokenizer(train_tokenizer([root / "corpus.txt"], kind="wordpiece", vocab_size=90, show_progress=False), other)
    cases = [
        (tmp_path / "noweights", [], "no weights found"),
        (tmp_path / "missing", [], "model directory not found"),
        (tmp_path / "notok", [], "the checkpoint has no tokenizer; pass --tokenizer"),
        (root / "bert", ["--objective", "clm"], "--objective clm needs a decoder"),
        (root / "bert", ["--arch", "gpt"], "--arch gpt contradicts --init"),
        (root / "bert", ["--size", "base", "--pre-ln"], "--size base, --pre-ln contradict --init"),
        (root / "bert", ["--vocab-size", "500"], "--vocab-size 500 contradicts"),
        (root / "bert", ["--embedding-init", "ppmi"], "--embedding-init ppmi contradicts --init"),
        (root / "bert", ["--tokenizer", str(other)], f"--tokenizer {other} contradicts --init"),
        (None, ["--add-tokens", str(root / "corpus.txt")], "--add-tokens grows the vocabulary of an --init"),
        (None, ["--arch", "gpt", "--embedding-size", "16"],
         "--embedding-size is not an option of --arch gpt (only of --arch bert or albert)"),
    ]
    capsys.readouterr()
    for init, extra, message in cases:
        assert pretrain(root, init, "refused", "--max-steps", "2", *extra) == 1
        assert message in _err(capsys), message
        assert not (root / "refused").exists()
    assert pretrain(root, _gpt2(root), "refused", "--max-steps", "2", "--objective", "mlm") == 1
    message = _err(capsys)
    assert "--objective mlm needs an encoder" in message and "is a decoder (layout gpt2)" in message
    # no --arch builds a ModernBERT: --arch bert contradicts it too (and so does any --size)
    assert pretrain(root, _modernbert(root), "refused", "--max-steps", "2", "--arch", "bert", "--size", "tiny") == 1
    assert "--arch bert, --size tiny contradict --init" in _err(capsys)
    # agreeing values are fine: --arch bert, --no-pre-ln, its own vocabulary size
    n = load_model(root / "bert").config.vocab_size
    assert pretrain(root, root / "bert", "agrees", "--max-steps", "1", "--arch", "bert", "--no-pre-ln",
                    "--vocab-size", str(n)) == 0


def test_a_task_head_checkpoint_continues_from_its_encoder(root, capsys):
    capsys.readouterr()
    assert pretrain(root, root / "bert-clf", "from-clf", "--max-steps", "2") == 0
    out = capsys.readouterr().out
    assert "a 'classify' checkpoint: its encoder continues; the classify head is dropped and a new mlm head" in out
    assert load_model(root / "from-clf").task == "mlm"


def test_a_corpus_the_tokenizer_cannot_read_is_reported(root, capsys, tmp_path):
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("\n\n".join("这间酒店环境和服务态度亦算不错 the film was good ." for _ in range(80)) + "\n",
                       encoding="utf-8")
    capsys.readouterr()
    assert main(["pretrain", "--init", str(root / "bert"), "--corpus", str(foreign), "--out", str(tmp_path / "r"),
                 "--cache-dir", str(tmp_path / "cache"), *RUN, "--max-steps", "1"]) == 0
    captured = capsys.readouterr()
    rate = float(captured.out.split("unknown tokens: ")[1].split("%")[0])
    assert 40 < rate < 90                                    # 14 unknown characters per 19 tokens
    assert f"warning: {rate:.1f}% of the corpus ({foreign}) is the unknown token" in captured.err


# ---------------------------------------------------------------------------- --add-tokens

def test_grow_vocab_starts_new_rows_at_the_mean_of_their_pieces(tiny_encoder_cfg):
    from plmkit.models.model import PlmModel
    from plmkit.models.vocab import grow_vocab

    for tie in (True, False):
        tiny_encoder_cfg.tie_embeddings = tie
        torch.manual_seed(0)
        model = PlmModel(tiny_encoder_cfg, "mlm+nsp")
        with torch.no_grad():
            model.head.mlm.decoder.bias.normal_()
        grown = grow_vocab(model, 122, {120: [5, 7, 9], 121: [3]})
        old, new = model.state_dict(), grown.state_dict()
        assert grown.config.vocab_size == 122
        for name in ("backbone.embeddings.word.weight", "head.mlm.decoder.weight", "head.mlm.decoder.bias"):
            assert new[name].shape[0] == 122 and torch.equal(new[name][:120], old[name])
            torch.testing.assert_close(new[name][120], old[name][[5, 7, 9]].mean(0))
            torch.testing.assert_close(new[name][121], old[name][3])
        same = [k for k in old if old[k].shape == new[k].shape]
        assert all(torch.equal(old[k], new[k]) for k in same)
        assert (grown.head.mlm.decoder.weight is grown.backbone.embeddings.word.weight) == tie


def test_add_tokens_grows_the_vocabulary_and_keeps_it(root, capsys, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("zebra\n\nquokka\nfilm\nzebra\n", encoding="utf-8")
    parent = load_model(root / "bert")
    old_tok = load_tokenizer(root / "bert")
    capsys.readouterr()
    assert pretrain(root, root / "bert", "grown", "--add-tokens", str(words), "--max-steps", "1", "--lr", "1e-9") == 0
    assert "2 tokens added" in capsys.readouterr().out
    tok, model = load_tokenizer(root / "grown"), load_model(root / "grown")
    n = old_tok.get_vocab_size()
    assert model.config.vocab_size == tok.get_vocab_size() == n + 2
    assert tok.encode("a Zebra and a quokka", add_special_tokens=False).tokens == ["a", "zebra", "and", "a", "quokka"]
    assert tok.encode("zebras", add_special_tokens=False).tokens != ["zebra", "##s"]   # whole words only
    pieces = old_tok.encode("zebra", add_special_tokens=False).ids
    emb = parent.state_dict()["backbone.embeddings.word.weight"]
    row = model.state_dict()["backbone.embeddings.word.weight"][tok.token_to_id("zebra")]
    torch.testing.assert_close(row, emb[pieces].mean(0), atol=1e-6, rtol=0)     # lr 1e-9: still the mean
    meta = json.loads((root / "grown" / "plmkit.json").read_text())["init"]
    assert meta["added_tokens"] == ["zebra", "quokka"] and meta["already_in_vocabulary"] == ["film"]
    words.write_text("two words\n", encoding="utf-8")
    assert pretrain(root, root / "bert", "bad-words", "--add-tokens", str(words), "--max-steps", "1") == 1
    assert f"{words}:1: one token per line" in _err(capsys)


# ---------------------------------------------------------------------------- --recipe budget

def test_recipe_defaults_sit_under_yaml_and_flags(tmp_path, capsys):
    from plmkit.stages import pretrain as P

    base = {"corpus": ["c.txt"], "out": "o"}
    assert from_recipe(build(P.Config, base)) == frozenset()
    cfg = build(P.Config, {**base, "recipe": "budget"})
    assert (cfg.lr, cfg.pre_ln, cfg.dropout, cfg.objective, cfg.grad_accum, cfg.betas) == \
        (1e-3, True, 0.0, "mlm", 4, [0.9, 0.98])
    assert {"lr", "pre_ln", "grad_accum"} <= from_recipe(cfg)
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("recipe: budget\nlr: 2.0e-4\nobjective: mlm+nsp\n")
    ns = argparse.Namespace(_config=str(yaml_file), corpus=["c.txt"], out="o", lr=3e-4)
    cfg = from_args(P.Config, ns)                      # defaults < recipe < YAML < flags
    assert (cfg.lr, cfg.objective, cfg.pre_ln, cfg.grad_accum) == (3e-4, "mlm+nsp", True, 4)
    assert "lr" not in from_recipe(cfg) and "objective" not in from_recipe(cfg)
    with pytest.raises(Exception, match="option 'recipe' must be one of budget"):
        build(P.Config, {**base, "recipe": "fast"})
    with pytest.raises(TypeError, match="recipe 'x' sets unknown options"):
        compose("C", __name__, P._Options, recipes={"x": {"no_such": 1}})


def test_budget_recipe_trains_on_a_time_schedule(root, capsys):
    capsys.readouterr()
    assert pretrain(root, None, "budget", "--recipe", "budget", "--size", "tiny", "--vocab-size", "200",
                    "--budget", "6s", "--batch-size", "4", "--seq-len", "32", "--grad-accum", "2") == 0
    model = load_model(root / "budget")
    assert model.task == "mlm" and model.config.pre_ln and model.config.hidden_dropout == 0.0
    recs = [r for r in records(root / "budget") if "lr" in r]
    assert json.loads((root / "budget" / "plmkit.json").read_text())["metrics"]["stopped"] == "budget"
    peak = max(r["lr"] for r in recs)
    assert peak <= 1e-3 and recs[-1]["lr"] < 0.3 * peak         # decayed towards 0 as the budget ran out
    saved = (root / "budget" / "pretrain.yaml").read_text()
    assert "recipe: budget" in saved and "grad_accum: 2" in saved and "lr: 0.001" in saved
    assert "embedding_init: ppmi" in saved and "split_cjk: false" in saved and "vocab_size: 200" in saved
    assert "start at the corpus's PPMI-SVD word vectors" in capsys.readouterr().out
    # with --init the checkpoint's architecture (and embeddings) win over the recipe's
    assert pretrain(root, root / "bert", "budget-init", "--recipe", "budget", "--max-steps", "1") == 0
    assert "note: --recipe budget: embedding_init ppmi, pre_ln True, split_cjk False, vocab_size 16000 not applied" in capsys.readouterr().out
    assert not load_model(root / "budget-init").config.pre_ln


# ---------------------------------------------------------------------------- ALBERT

def test_albert_pretrains_with_sop_and_exports_to_hf(root, capsys, tmp_path):
    assert pretrain(root, None, "albert", "--arch", "albert", "--size", "tiny", "--vocab-size", "200",
                    "--max-steps", "3") == 0
    model = load_model(root / "albert").eval()
    cfg = model.config
    assert (model.task, cfg.layout, cfg.share_layers, cfg.embedding_size, len(model.backbone.layers)) == \
        ("mlm+sop", "albert", True, 64, 1)
    saved = yaml.safe_load((root / "albert" / "pretrain.yaml").read_text())     # the defaults it resolved
    assert (saved["arch"], saved["size"], saved["objective"], saved["pre_ln"], saved["vocab_size"]) == \
        ("albert", "tiny", "mlm+sop", False, 200)
    assert main(["export", "--model", str(root / "albert"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    theirs = transformers.AlbertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(5, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, ref = model(input_ids=ids), theirs(input_ids=ids)
    torch.testing.assert_close(ours.logits, ref.prediction_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.nsp_logits, ref.sop_logits, atol=1e-4, rtol=1e-4)
    # factorised embeddings and shared layers in the BERT layout: refused on export, with the reason
    assert pretrain(root, None, "bert-shared", "--size", "tiny", "--vocab-size", "200", "--embedding-size", "32",
                    "--share-layers", "--max-steps", "1") == 0
    capsys.readouterr()
    assert main(["export", "--model", str(root / "bert-shared"), "--format", "hf", "--out", str(tmp_path / "x")]) == 1
    assert "factorised embeddings (ALBERT)" in _err(capsys)
