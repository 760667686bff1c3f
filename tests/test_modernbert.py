"""ModernBERT in and out of the HF layout, and every stage on a tiny one.

Tiny random models built with transformers' own ``ModernBertConfig`` (no downloads): 3-4
layers, hidden 32-48, a local window (``local_attention`` 8: |i - j| <= 4) far below the test
lengths, so local layers really attend locally; 40 tokens exceed 4 x the half window, so the
chunked O(T x window) local path runs (the dense band mask serves shorter inputs and ONNX).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from plmkit import cli
from plmkit.models import layers as L
from plmkit.models.checkpoint import load_model, save_checkpoint

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install .[hf])")
transformers.utils.logging.disable_progress_bar()

SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]     # after the BPE vocabulary, as in ModernBERT's
ARCH_OF = {"base": "ModernBertModel", "mlm": "ModernBertForMaskedLM",
           "classify": "ModernBertForSequenceClassification", "token": "ModernBertForTokenClassification",
           "span": "ModernBertForQuestionAnswering"}


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models run on one thread


def hf_config(**kw) -> "transformers.ModernBertConfig":
    base = dict(vocab_size=200, hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=128, local_attention=8, global_attn_every_n_layers=3, pad_token_id=0,
                bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    return transformers.ModernBertConfig(**{**base, **kw})


def sharpen(model: torch.nn.Module, std: float = 0.25) -> None:
    """HF's N(0, 0.02) init leaves attention almost uniform; wider weights make every position count."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def padded_batch(T: int, vocab: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, T // 2:] = 0
    mask[2, T - 3:] = 0
    return ids * mask, mask          # padding positions hold the pad id 0


def outputs(task: str, ours, theirs, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(plmkit, HF) tensor pairs to compare, on real tokens only (QA masks padding, HF does not)."""
    real = mask.bool()
    if task == "base":
        return [(ours.last_hidden_state[real], theirs.last_hidden_state[real])]
    if task == "classify":
        return [(ours.logits, theirs.logits)]
    if task == "span":
        return [(ours.start_logits[real], theirs.start_logits[real]), (ours.end_logits[real], theirs.end_logits[real])]
    return [(ours.logits[real], theirs.logits[real])]


# ----------------------------------------------------------------------------- parity

VARIANTS = {
    "plain": dict(),
    # every optional bias on, mean pooling, no MLM decoder bias, untied decoder, v4-style rope keys
    "biases": dict(attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True, decoder_bias=False,
                   classifier_pooling="mean", tie_word_embeddings=False, global_attn_every_n_layers=2,
                   classifier_activation="silu"),
}


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_head_matches_transformers_on_padded_batches(tmp_path, monkeypatch, impl, variant):
    chunked = []
    real_banded = L.banded_attend
    monkeypatch.setattr(L, "banded_attend", lambda *a, **k: chunked.append(a[0].size(2)) or real_banded(*a, **k))
    worst = 0.0
    for task, arch in ARCH_OF.items():
        torch.manual_seed(0)
        cfg = hf_config(num_labels=2 if task == "span" else 3, attn_implementation=impl, **VARIANTS[variant])
        theirs = getattr(transformers, arch)(cfg).eval()
        sharpen(theirs)
        theirs.save_pretrained(tmp_path / task)
        ours = load_model(tmp_path / task).eval()
        assert ours.task == task and ours.config.layout == "modernbert"
        assert [ours.config.window(i) for i in range(4)] == (
            [None, 4, 4, None] if variant == "plain" else [None, 4, None, 4])
        for T in (12, 40):
            ids, mask = padded_batch(T)
            with torch.no_grad():
                pairs = outputs(task, ours(ids, mask), theirs(input_ids=ids, attention_mask=mask), mask)
            for a, b in pairs:
                assert b.abs().max() > 0.1                 # values with a scale, not near-zero noise
                worst = max(worst, float((a - b).abs().max()))
    assert worst < 1e-4, worst
    assert chunked and set(chunked) == {40}                # the O(T x window) path ran, and only at 40


def test_local_window_and_thetas_are_really_used(tmp_path):
    """The parity test can fail: a wrong window or swapped rotary bases change the output."""
    torch.manual_seed(0)
    theirs = transformers.ModernBertModel(hf_config()).eval()
    sharpen(theirs)
    theirs.save_pretrained(tmp_path / "m")
    ids, mask = padded_batch(40)
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
    for change in (dict(local_window=12), dict(global_every=4), dict(rope_theta_local=160_000.0)):
        ours = load_model(tmp_path / "m").eval()
        wrong = type(ours)(dataclasses.replace(ours.config, **change), "base")
        wrong.load_state_dict(ours.state_dict())
        with torch.no_grad():
            assert (wrong(ids, mask).last_hidden_state - want)[mask.bool()].abs().max() > 1e-2, change


def test_v4_config_keys_load(tmp_path):
    """config.json written by transformers 4.x: global_attn_every_n_layers and the two rope thetas."""
    torch.manual_seed(0)
    theirs = transformers.ModernBertModel(hf_config(global_attn_every_n_layers=2)).eval()
    sharpen(theirs)
    theirs.save_pretrained(tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    thetas = {k: v["rope_theta"] for k, v in raw.pop("rope_parameters").items()}
    raw.pop("layer_types")
    raw.update(global_attn_every_n_layers=2, global_rope_theta=thetas["full_attention"],
               local_rope_theta=thetas["sliding_attention"])
    (tmp_path / "m" / "config.json").write_text(json.dumps(raw))
    ours = load_model(tmp_path / "m").eval()
    assert ours.config.global_every == 2 and ours.config.rope_theta == 160_000.0
    ids, mask = padded_batch(40)
    with torch.no_grad():
        a = ours(ids, mask).last_hidden_state
        b = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (a - b)[mask.bool()].abs().max() < 1e-4


@pytest.mark.parametrize("edit, message", [
    (dict(rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}), "rope_type 'linear'"),
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_scaling is not supported"),
    (dict(layer_types=["sliding_attention", "full_attention", "full_attention", "sliding_attention"]),
     "global every n-th layer"),
    (dict(classifier_pooling="max"), "classifier_pooling 'max'"),
    (dict(hidden_activation="gelu_python_weird"), "activation 'gelu_python_weird'"),
    (dict(architectures=["ModernBertForMultipleChoice"]), "ModernBertForQuestionAnswering"),
])
def test_unsupported_options_are_one_line_errors(tmp_path, capsys, edit, message):
    torch.manual_seed(0)
    transformers.ModernBertModel(hf_config()).save_pretrained(tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**raw, **edit}))
    assert cli.main(["info", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("plmkit: error:") and message in err, err


def test_missing_tensor_is_named(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    transformers.ModernBertModel(hf_config()).save_pretrained(tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    del state["layers.2.mlp_norm.weight"]
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    assert cli.main(["info", str(tmp_path / "m")]) == 1
    assert "backbone.layers.2.ffn_norm.weight" in capsys.readouterr().err


# ----------------------------------------------------------------------------- export round trip

@pytest.mark.parametrize("task", list(ARCH_OF))
def test_export_round_trip_through_transformers(tmp_path, task):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    cfg = hf_config(num_labels=2 if task == "span" else 3, attention_bias=task == "classify",
                    classifier_pooling="mean" if task == "classify" else "cls")
    theirs = getattr(transformers, ARCH_OF[task])(cfg).eval()
    sharpen(theirs)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    save_checkpoint(ours, tmp_path / "ours")
    out = tmp_path / "out"
    assert cli.main(["export", "--model", str(tmp_path / "ours"), "--format", "hf", "--out", str(out)]) == 0
    back, info = getattr(transformers, ARCH_OF[task]).from_pretrained(str(out), output_loading_info=True)
    assert not any(info.values()), info                      # nothing missing, unexpected or mismatched
    before, after = (load_file(str(d / "model.safetensors")) for d in (tmp_path / "hf", out))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    ids, mask = padded_batch(40)
    with torch.no_grad():
        for a, b in outputs(task, back.eval()(input_ids=ids, attention_mask=mask),
                            theirs(input_ids=ids, attention_mask=mask), mask):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------- every stage, through the CLI

def modernbert_tokenizer(corpus: list[str]) -> Tokenizer:
    """A byte-level BPE with ModernBERT's pipeline: OLMo's <|padding|> and <|endoftext|> first, BERT's
    specials at the end of the vocabulary, [CLS] A [SEP] (B [SEP])."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, min_frequency=1, show_progress=False,
                                                        special_tokens=["<|padding|>", "<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(SPECIALS)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


@pytest.fixture(scope="module")
def mb(tmp_path_factory) -> dict[str, Path]:
    """A tiny HF ModernBertForMaskedLM directory with its tokenizer, the task files, and a classifier
    fine-tuned from it through the CLI (the teacher, quantization and serving subject)."""
    from test_finetune import _write_classify, _write_conll, _write_squad

    d = tmp_path_factory.mktemp("modernbert")
    files = {"train": _write_classify(d / "train.tsv", 240, 0), "dev": _write_classify(d / "dev.tsv", 200, 1),
             "ner": _write_conll(d / "ner.txt", 120, 2), "qa": _write_squad(d / "qa.json", 60, 4)}
    corpus = [line.split("\t")[0] for line in files["train"].read_text().splitlines()[1:]]
    corpus += [" ".join(line.split(" ")[0] for line in block.splitlines())
               for block in files["ner"].read_text().split("\n\n")]
    corpus += [p["context"] + " " + q["question"] for a in json.loads(files["qa"].read_text())["data"]
               for p in a["paragraphs"] for q in p["qas"]]
    tok = modernbert_tokenizer(corpus)
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    cfg = hf_config(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=3, intermediate_size=48,
                    local_attention=8, pad_token_id=ids["[PAD]"], bos_token_id=ids["[CLS]"], eos_token_id=ids["[SEP]"],
                    cls_token_id=ids["[CLS]"], sep_token_id=ids["[SEP]"])
    torch.manual_seed(0)
    transformers.ModernBertForMaskedLM(cfg).save_pretrained(d / "hf")
    tok.save(str(d / "hf" / "tokenizer.json"))
    (d / "hf" / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 128,
        "model_input_names": ["input_ids", "attention_mask"], "cls_token": "[CLS]", "sep_token": "[SEP]",
        "pad_token": "[PAD]", "mask_token": "[MASK]", "unk_token": "[UNK]"}))
    files["hf"] = d / "hf"
    files["clf"] = d / "clf"
    assert cli.main(["finetune", "--model", str(d / "hf"), "--task", "classify", "--train", str(files["train"]),
                     "--eval", str(files["dev"]), "--out", str(files["clf"]), "--epochs", "3", "--lr", "3e-3",
                     "--batch-size", "16", "--max-length", "48", "--precision", "fp32", "--log-every", "10"]) == 0
    return files


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_finetuned_classifier_learned(mb, capsys):
    meta = json.loads((mb["clf"] / "plmkit.json").read_text())
    assert meta["metrics"]["eval"]["accuracy"] > 0.8, meta["metrics"]
    model = load_model(mb["clf"])
    assert model.config.layout == "modernbert" and model.config.local_window == 8


def test_ner_and_qa_finetune_and_evaluate(mb, tmp_path, capsys):
    for task, data, extra in (("ner", mb["ner"], ["--epochs", "4"]),
                              ("qa", mb["qa"], ["--epochs", "2", "--max-length", "32", "--doc-stride", "8"])):
        out = tmp_path / task
        assert cli.main(["finetune", "--model", str(mb["hf"]), "--task", task, "--train", str(data), "--out", str(out),
                         "--lr", "3e-3", "--batch-size", "16", "--precision", "fp32", *extra]) == 0
        model = load_model(out)
        assert model.task == {"ner": "token", "qa": "span"}[task] and model.head.transform is not None
        capsys.readouterr()
        assert cli.main(["evaluate", "--model", str(out), "--data", str(data), "--precision", "fp32"]) == 0
        metrics = _last_json(capsys)
        if task == "ner":
            assert metrics["f1"] > 0.5, metrics
        else:
            assert 0 <= metrics["exact_match"] <= metrics["f1"] <= 100


@pytest.mark.parametrize("strategy", ["freeze:1", "probe", "bitfit", "lora", "adapter"])
def test_strategies_on_classify(mb, tmp_path, capsys, strategy):
    """full is the fixture's own run; the others train what they say and reload through evaluate."""
    out = tmp_path / "m"
    assert cli.main(["finetune", "--model", str(mb["hf"]), "--task", "classify", "--train", str(mb["train"]),
                     "--out", str(out), "--max-steps", "6", "--lr", "3e-3", "--batch-size", "16",
                     "--precision", "fp32", "--strategy", strategy, "--lora-targets", "q", "k", "v", "o", "fc1",
                     "fc2", "--adapter-size", "8"]) == 0
    meta = json.loads((out / "plmkit.json").read_text())
    assert meta["strategy"]["spec"] == strategy
    assert (out / ("model.safetensors" if strategy == "freeze:1" else "adapter.safetensors")).is_file()
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(out), "--data", str(mb["dev"]), "--precision", "fp32"]) == 0
    assert 0 <= _last_json(capsys)["accuracy"] <= 1


def test_distill_modernbert_teacher_into_a_bert_student(mb, tmp_path, capsys):
    out = tmp_path / "student"
    assert cli.main(["distill", "--teacher", str(mb["clf"]), "--task", "classify", "--train", str(mb["train"]),
                     "--out", str(out), "--student-size", "tiny", "--hidden-weight", "1", "--attention-weight", "1",
                     "--embedding-weight", "1", "--max-steps", "6", "--batch-size", "16", "--precision", "fp32",
                     "--log-every", "2"]) == 0
    student, teacher = load_model(out), load_model(mb["clf"])
    c = student.config
    assert (c.layout, c.positions, c.pre_ln, c.ffn_kind, c.local_window) == ("bert", "learned", False, "plain", None)
    assert c.hidden_size == 128 != teacher.config.hidden_size and c.vocab_size == teacher.config.vocab_size
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    terms = {k for row in logged for k in row}
    assert {"hidden_mse", "attention_kl", "embedding_mse"} <= {k.split("/")[-1].removeprefix("train_") for k in terms}
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(out), "--data", str(mb["dev"]), "--precision", "fp32"]) == 0
    # A ModernBERT student from teacher layers: each copied layer must stay local or global.
    args = ["distill", "--teacher", str(mb["clf"]), "--task", "classify", "--train", str(mb["train"]),
            "--max-steps", "2", "--batch-size", "16", "--precision", "fp32", "--attention-weight", "1"]
    assert cli.main([*args, "--student-layers", "1,2", "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "teacher layer 1 is local (window 8) but would be student layer 0, which is global" in err
    assert not (tmp_path / "bad").exists()
    assert cli.main([*args, "--student-layers", "0,2", "--out", str(tmp_path / "layers")]) == 0
    assert load_model(tmp_path / "layers").config.local_window == 8


def ort_outputs(onnx_dir: Path, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run an exported model.onnx with ONNX Runtime directly: graph output name -> tensor."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]     # no token types
    names = [o.name for o in sess.get_outputs()]
    got = sess.run(names, {k: v.numpy() for k, v in feeds.items()})
    return {n: torch.from_numpy(x) for n, x in zip(names, got)}


def test_pruned_modernbert_saves_reloads_and_exports(mb, tmp_path, capsys):
    from plmkit.compress.onnx_export import example_batch

    out = tmp_path / "pruned"
    assert cli.main(["prune", "--model", str(mb["clf"]), "--train", str(mb["train"]), "--heads", "0.5",
                     "--ffn", "0.5", "--max-steps", "2", "--batch-size", "16", "--precision", "fp32",
                     "--out", str(out)]) == 0
    pruned, parent = load_model(out).eval(), load_model(mb["clf"])
    assert sum(pruned.config.heads) == 6 and sum(pruned.config.ffn) == 72
    for i, layer in enumerate(pruned.backbone.layers):              # physically smaller, gated fc1 = [a; g]
        assert layer.ffn.fc1.out_features == 2 * pruned.config.ffn[i]
        assert layer.attn.q.out_features == pruned.config.heads[i] * 8
    assert pruned.num_parameters() < parent.num_parameters()
    assert cli.main(["export", "--model", str(out), "--format", "hf", "--out", str(tmp_path / "hf")]) == 1
    assert "per-layer head/FFN sizes" in capsys.readouterr().err
    assert cli.main(["export", "--model", str(out), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    feeds = example_batch(pruned, 4, 40, padded=True, seed=2)
    with torch.no_grad():
        assert (ort_outputs(tmp_path / "onnx", feeds)["logits"] - pruned(**feeds).logits).abs().max() < 1e-4


@pytest.mark.parametrize("task", ["classify", "token", "span", "mlm", "base"])
def test_onnx_export_matches_pytorch(tmp_path, task):
    """The export that fails elsewhere (transformers #35545, optimum #2149): every head, long padded inputs."""
    from plmkit.compress.onnx_export import example_batch, export_onnx_dir

    torch.manual_seed(0)
    theirs = getattr(transformers, ARCH_OF[task])(hf_config(num_labels=2 if task == "span" else 3)).eval()
    sharpen(theirs)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    export_onnx_dir(ours, tmp_path / "onnx", None, {"parent": "test"})
    for T in (12, 40, 100):
        feeds = example_batch(ours, 3, T, padded=True, seed=T)
        with torch.no_grad():
            want = ours(**feeds)
        got = ort_outputs(tmp_path / "onnx", feeds)
        real = feeds["attention_mask"].bool()
        assert set(got) == ({"logits"} if task in ("classify", "token", "mlm") else
                            {"start_logits", "end_logits"} if task == "span" else {"last_hidden_state"})
        for name in got:
            # Real tokens only: the outputs at padding carry nothing, and the chunked local path (PyTorch,
            # T = 40, 100) fills them otherwise than the dense band mask (the ONNX graph).
            a, b = got[name], getattr(want, name)
            a, b = (a, b) if name == "logits" and task == "classify" else (a[real], b[real])
            assert float((a - b).abs().max()) < 1e-4, (name, T)


def test_rotary_attention_fuses_into_ort_contrib_ops(tmp_path):
    """Each layer's rotation and attention become RotaryEmbedding + MultiHeadAttention, local windows
    and padding kept (attention_bias): the fused graph gives PyTorch's outputs; BERT's graph is left alone."""
    import onnx
    import onnxruntime as ort
    from plmkit.compress.attention_fusion import fuse_attention
    from plmkit.compress.onnx_export import example_batch, export_onnx_dir

    torch.manual_seed(0)
    theirs = transformers.ModernBertForSequenceClassification(hf_config(num_labels=3)).eval()
    sharpen(theirs)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    export_onnx_dir(ours, tmp_path / "onnx", None, {"parent": "test"})
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    # GeGLU exports as two projections (no Slice of one [.., 2F] result): 3 FFN MatMuls a layer
    ffn = [n.op_type for n in graph.graph.node if "/ffn/" in n.name]
    assert (ffn.count("MatMul"), ffn.count("Slice"), ffn.count("Split")) == (3 * 4, 0, 0)
    assert fuse_attention(graph) == 4
    ops = [n.op_type for n in graph.graph.node]
    assert (ops.count("MultiHeadAttention"), ops.count("RotaryEmbedding"), ops.count("Softmax")) == (4, 8, 0)
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for T in (12, 40):      # 40 > the local window: local layers really mask
        feeds = example_batch(ours, 3, T, padded=True, seed=T)
        with torch.no_grad():
            want = ours(**feeds).logits
        got = torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in feeds.items()})[0])
        assert float((got - want).abs().max()) < 1e-4, T
    bert = onnx.load(str(_bert_onnx(tmp_path)))
    assert fuse_attention(bert) == 0


def _bert_onnx(tmp_path: Path) -> Path:
    """A tiny BERT classifier's fp32 graph: attention without rotary, which ORT's own fusion takes."""
    from plmkit.compress.onnx_export import export_onnx_dir

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, num_labels=2)
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "bert-hf")
    export_onnx_dir(load_model(tmp_path / "bert-hf").eval(), tmp_path / "bert-onnx", None, {"parent": "test"})
    return tmp_path / "bert-onnx" / "model.onnx"


def _predict(model: Path, data: Path, out: Path) -> list[dict]:
    """plmkit predict on an ONNX directory (or a checkpoint): one row per example."""
    assert cli.main(["predict", "--model", str(model), "--input", str(data), "--output", str(out),
                     "--precision", "fp32"]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_export_onnx_then_dynamic_and_static_int8(mb, tmp_path, capsys):
    import onnx

    fp32 = tmp_path / "fp32"
    assert cli.main(["export", "--model", str(mb["clf"]), "--format", "onnx", "--out", str(fp32)]) == 0
    want = _predict(fp32, mb["dev"], tmp_path / "fp32.jsonl")
    assert len(want) == 200 and sum(r["score"] for r in want) / 200 > 0.6     # trained: not near-ties
    runs = {"dyn": ["--model", str(fp32), "--method", "dynamic", "--eval", str(mb["dev"])],
            "static": ["--model", str(mb["clf"]), "--method", "static", "--calibration", str(mb["train"]),
                       "--calibration-size", "64", "--eval", str(mb["dev"])]}
    for name, args in runs.items():
        assert cli.main(["quantize", *args, "--out", str(tmp_path / name)]) == 0, capsys.readouterr().err
        meta = json.loads((tmp_path / name / "plmkit.json").read_text())
        assert meta["precision"] == "int8"
        if name == "dyn":       # rotary attention fused, and then ORT's encoder fusions (Gelu) ran too
            ops = [n.op_type for n in onnx.load(str(tmp_path / name / "model.onnx")).graph.node]
            layers = load_model(mb["clf"]).config.num_layers
            assert ops.count("MultiHeadAttention") == layers and "Gelu" in ops and "Erf" not in ops
        got = _predict(tmp_path / name, mb["dev"], tmp_path / f"{name}.jsonl")
        agree = sum(a["label"] == b["label"] for a, b in zip(got, want)) / len(want)
        assert len(got) == len(want) and agree >= 0.99, (name, agree)
    # bench: the INT8 model against the transformers fp32 eager row (an HF export of its parent)
    assert cli.main(["bench", "--models", str(tmp_path / "dyn"), "--data", str(mb["dev"]), "--max-examples", "64",
                     "--batch-sizes", "1", "8", "--repeats", "1", "--warmup", "1", "--latency-examples", "4",
                     "--threads", "1", "--out", str(tmp_path / "bench.json")]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["kind"] for r in rows] == ["transformers", "onnx"] and rows[0]["path"] == str(mb["clf"].resolve())
    assert rows[0]["metric"] > 0.9 and abs(rows[0]["metric"] - rows[1]["metric"]) <= 0.02


def test_openvino_int8_of_modernbert_keeps_the_predictions(mb, tmp_path, capsys):
    """optimum-intel refuses ModernBERT; plmkit's OpenVINO engine quantizes its fp32 graph (rotary,
    local windows) with NNCF, and the INT8 model predicts what the fp32 graph predicts."""
    pytest.importorskip("openvino", reason="openvino not installed (extra 'openvino')")
    pytest.importorskip("nncf", reason="nncf not installed (extra 'openvino')")
    fp32, ov = tmp_path / "fp32", tmp_path / "ov"
    assert cli.main(["export", "--model", str(mb["clf"]), "--format", "onnx", "--out", str(fp32)]) == 0
    assert cli.main(["quantize", "--model", str(fp32), "--engine", "openvino", "--calibration", str(mb["train"]),
                     "--calibration-size", "64", "--out", str(ov)]) == 0, capsys.readouterr().err
    assert json.loads((ov / "plmkit.json").read_text())["quantization"]["engine"] == "openvino"
    want = _predict(fp32, mb["dev"], tmp_path / "fp32.jsonl")
    got = _predict(ov, mb["dev"], tmp_path / "ov.jsonl")
    agree = sum(a["label"] == b["label"] for a, b in zip(got, want)) / len(want)
    assert len(got) == len(want) == 200 and agree >= 0.98, agree


def test_hf_export_with_tokenizer_runs_in_transformers(mb, tmp_path):
    out = tmp_path / "hf"
    assert cli.main(["export", "--model", str(mb["clf"]), "--format", "hf", "--out", str(out)]) == 0
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert (tok.cls_token, tok.sep_token, tok.pad_token, tok.mask_token) == ("[CLS]", "[SEP]", "[PAD]", "[MASK]")
    texts = ["the film was great", "bob lives in paris and the plot was really awful"]
    enc = tok(texts, padding=True, return_tensors="pt")
    assert "token_type_ids" not in enc and enc["input_ids"][0, 0] == tok.cls_token_id
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    ours = load_model(mb["clf"]).eval()
    with torch.no_grad():
        assert (theirs(**enc).logits - ours(**enc).logits).abs().max() < 1e-4


def test_serve_embed_and_similarity(mb, tmp_path):
    import numpy as np

    pytest.importorskip("fastapi", reason="serve extra not installed")
    from fastapi.testclient import TestClient

    from plmkit.serve.app import create_app
    from plmkit.serve.backend import ServedModel

    with TestClient(create_app(ServedModel(mb["clf"], precision="fp32"))) as client:
        r = client.post("/v1/classify", json={"texts": ["the film was great", "the plot was awful"]})
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == ["pos", "neg"]
        r = client.post("/v1/embed", json={"texts": ["the film was great"]})
        assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 32
    (tmp_path / "t.txt").write_text("the film was great\nbob lives in paris\n")
    assert cli.main(["embed", "--model", str(mb["hf"]), "--input", str(tmp_path / "t.txt"),
                     "--out", str(tmp_path / "vec")]) == 0
    assert np.load(tmp_path / "vec.npy").shape == (2, 32)
    (tmp_path / "s.txt").write_text("the film was great\nthe plot was great fun\ngreat music and a great story\n")
    assert cli.main(["similarity", "--model", str(mb["hf"]), "--word", "great", "--sentences", str(tmp_path / "s.txt"),
                     "--out", str(tmp_path / "sim")]) == 0
    res = json.loads((tmp_path / "sim" / "similarity.json").read_text())
    assert sorted(res["layers"]) == ["0", "1", "2", "3"]
