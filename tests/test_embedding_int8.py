"""INT8 embedding tables (compress/embedding_int8.py): the per-row rule, the graph rewrite after each
ONNX Runtime method, the bytes it saves, ``--embeddings fp32``, and tables a tied head also reads."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra 'onnx')")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from plmkit import cli  # noqa: E402
from plmkit.compress.embedding_int8 import MIN_ROWS, quantize_embeddings, quantize_table  # noqa: E402
from plmkit.compress.onnx_export import example_batch, export_onnx_dir  # noqa: E402
from plmkit.compress.quantize import FeatureReader, QuantOptions, quantize_file  # noqa: E402
from plmkit.models.checkpoint import save_checkpoint  # noqa: E402
from plmkit.models.config import DecoderConfig, EncoderConfig  # noqa: E402
from plmkit.models.model import PlmModel  # noqa: E402
from plmkit.models.onnx_model import session  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

HC = {"num_labels": 3, "labels": ["a", "b", "c"]}
# Both tables at least MIN_ROWS rows, so the word and the position table are rewritten; the
# 2-row token-type table is not.
VOCAB, POSITIONS, H = 300, 256, 32
WORD, POSITION, SEGMENT = (f"model.backbone.embeddings.{t}.weight" for t in ("word", "position", "segment"))
# Largest logit change allowed, as a share of the largest |logit|. Each embedding element moves at most
# 1/254 of its row's peak (0.4%); in these random tiny models the layers add little to the residual
# stream, so the change reaches the logits almost whole: measured 0.44-0.70% over seeds 0-2, and
# 0.5-0.9% between two per-token INT8 graphs. A 3x margin.
REL_TOL = 0.02
# Per-tensor and static activation ranges are set by the whole batch (or the calibration set),
# so the embeddings' change moves every row's range too: measured 1.9-3.4% of the largest logit.
REL_TOL_BATCH_RANGES = 0.05
# The rewrite adds four nodes per table and renames its initializers: under 2 KB of protobuf.
GRAPH_OVERHEAD = 2048


def _table_saving(*shapes: tuple[int, int]) -> int:
    """Bytes an int8 table saves: 3 of each fp32 element's 4, less one fp32 scale per row."""
    return sum(v * h * 3 - v * 4 for v, h in shapes)


def _export(directory: Path, task: str, seed: int = 0) -> tuple[PlmModel, Path]:
    """A seeded tiny model (encoder classifier, or a decoder with its LM head tied to the word table)."""
    torch.manual_seed(seed)
    if task == "classify":
        cfg = EncoderConfig(vocab_size=VOCAB, hidden_size=H, num_layers=2, num_heads=4, intermediate_size=64,
                            max_position=POSITIONS, hidden_dropout=0.0, attention_dropout=0.0)
    else:
        cfg = DecoderConfig(vocab_size=VOCAB, hidden_size=H, num_layers=2, num_heads=4, max_position=POSITIONS,
                            hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=1, eos_token_id=1)
    model = PlmModel(cfg, task, HC).eval()
    if task == "classify":
        with torch.no_grad():       # spread the logits so an argmax comparison means something
            model.head.classifier.weight.normal_(0.0, 1.0)
    export_onnx_dir(model, directory, None, {"parent": "test"})
    return model, directory / "model.onnx"


def _logits(file: Path, feeds: dict[str, torch.Tensor]) -> np.ndarray:
    sess = session(file, threads=1)
    names = {i.name for i in sess.get_inputs()}
    return sess.run(["logits"], {k: v.numpy() for k, v in feeds.items() if k in names})[0]


def _initializers(file: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(file)).graph.initializer}


@pytest.fixture(scope="module")
def clf(tmp_path_factory) -> tuple[PlmModel, Path]:
    return _export(tmp_path_factory.mktemp("emb") / "fp32", "classify")


def test_every_row_round_trips_within_half_its_scale():
    rng = np.random.default_rng(0)
    table = rng.normal(0.0, 0.05, (500, 48)).astype(np.float32)
    table[:100] *= rng.uniform(1e-3, 100.0, (100, 1)).astype(np.float32)    # rows of very different size
    table[7] = 0.0                                                            # an all-zero row
    table[9, 3] = 40.0                                                        # one outlier in a row
    q, scale = quantize_table(table)
    assert q.dtype == np.int8 and q.shape == table.shape and scale.shape == (500,)
    peak = np.abs(table).max(axis=1)
    live = peak > 0
    assert np.allclose(scale[live], peak[live] / 127, rtol=1e-6)
    assert (np.abs(q[live]).max(axis=1) == 127).all()          # each row uses the full int8 range
    error = np.abs(q * scale[:, None] - table)
    assert (error.max(axis=1) <= scale / 2 * (1 + 1e-5)).all()
    assert (q[7] == 0).all() and (q[7] * scale[7] == 0).all()


def test_the_rewrite_alone_follows_the_float_graph_and_drops_the_float_tables(clf, tmp_path):
    model, fp32 = clf
    rewritten, tables = quantize_embeddings(onnx.load(str(fp32)))
    assert tables == [POSITION, WORD]
    onnx.save(rewritten, str(tmp_path / "model.onnx"))
    weights = _initializers(tmp_path / "model.onnx")
    assert WORD not in weights and POSITION not in weights and SEGMENT in weights    # 2 rows: stays float
    assert weights[f"{WORD}_int8"].dtype == np.int8 and weights[f"{WORD}_row_scale"].shape == (VOCAB, 1)
    q, scale = quantize_table(_initializers(fp32)[WORD])
    assert np.array_equal(weights[f"{WORD}_int8"], q) and np.array_equal(weights[f"{WORD}_row_scale"][:, 0], scale)

    feeds = example_batch(model, 64, 24, padded=True, seed=5)
    want, got = _logits(fp32, feeds), _logits(tmp_path / "model.onnx", feeds)
    assert (got.argmax(-1) == want.argmax(-1)).all()
    assert np.abs(got - want).max() <= REL_TOL * np.abs(want).max()


def _calibration(names: list[str]) -> FeatureReader:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (32, 12), generator=g).tolist()
    feats = [{"input_ids": row, "attention_mask": [1] * 12, "token_type_ids": [0] * 12} for row in ids]
    return FeatureReader(feats, names, pad_id=0, batch_size=8)


@pytest.mark.parametrize("method,ranges,tol", [("dynamic", "token", REL_TOL),
                                               ("dynamic", "tensor", REL_TOL_BATCH_RANGES),
                                               ("static", "token", REL_TOL_BATCH_RANGES)])
def test_each_method_stores_the_tables_as_int8_and_follows_its_float_table_graph(clf, tmp_path, method, ranges, tol):
    model, fp32 = clf
    files = {}
    for emb in ("int8", "fp32"):
        files[emb] = tmp_path / f"{emb}.onnx"
        reader = _calibration(model.config.input_names) if method == "static" else None
        tables = quantize_file(fp32, files[emb], method, tmp_path, reader,
                               QuantOptions(activation_ranges=ranges, embeddings=emb))
        assert tables == ([POSITION, WORD] if emb == "int8" else [])
    saved = files["fp32"].stat().st_size - files["int8"].stat().st_size
    expected = _table_saving((VOCAB, H), (POSITIONS, H))
    assert expected - 2 * GRAPH_OVERHEAD <= saved <= expected
    feeds = example_batch(model, 64, 24, padded=True, seed=5)
    want, got = _logits(files["fp32"], feeds), _logits(files["int8"], feeds)
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.95
    assert np.abs(got - want).max() <= tol * np.abs(want).max()


def test_quantize_cli_writes_a_smaller_directory_and_fp32_keeps_the_float_tables(clf, tmp_path, capsys):
    model, fp32 = clf
    ck = save_checkpoint(model, tmp_path / "ck", meta={"stage": "test"})
    out = {}
    for emb in ("int8", "fp32"):
        out[emb] = tmp_path / emb
        assert cli.main(["quantize", "--model", str(ck), "--out", str(out[emb]), "--embeddings", emb]) == 0
    capsys.readouterr()
    # The INT8 directory holds the INT8 graph only: the fp32 export stays in the scratch folder, removed.
    assert sorted(p.name for p in out["int8"].iterdir()) == ["config.json", "model.onnx", "plmkit.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    meta = {emb: json.loads((out[emb] / "plmkit.json").read_text()) for emb in out}
    assert meta["int8"]["quantization"]["embeddings"] == "int8"
    assert meta["int8"]["quantization"]["int8_tables"] == [POSITION, WORD]
    assert meta["fp32"]["quantization"]["embeddings"] == "fp32" and meta["fp32"]["quantization"]["int8_tables"] == []
    assert meta["int8"]["size_bytes"]["int8"] == (out["int8"] / "model.onnx").stat().st_size
    size = {emb: sum(p.stat().st_size for p in out[emb].iterdir()) for emb in out}
    expected = _table_saving((VOCAB, H), (POSITIONS, H))
    assert expected - GRAPH_OVERHEAD <= size["fp32"] - size["int8"] <= expected

    # --embeddings fp32: the lookups read the exported float tables, unchanged, and nothing casts.
    graph = onnx.load(str(out["fp32"] / "model.onnx")).graph
    weights, exported = _initializers(out["fp32"] / "model.onnx"), _initializers(fp32)
    lookups = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in weights}
    assert lookups == {WORD, POSITION, SEGMENT}
    assert all(np.array_equal(weights[t], exported[t]) for t in lookups)
    assert not [n for n in graph.node if n.op_type == "Cast" and n.name.endswith("_cast")]


def test_a_decoder_with_a_tied_lm_head_gets_both_copies_int8(tmp_path):
    """plmkit's export folds the tied head's transpose into an initializer of its own: the lookup
    table is read by the Gather alone (rewritten) and the head's copy by its MatMul (INT8 weights)."""
    model, fp32 = _export(tmp_path / "fp32", "clm")
    graph = onnx.load(str(fp32)).graph
    head = next(n for n in graph.node if n.name == "/model/head/lm_head/MatMul")
    assert head.input[1] != WORD and WORD not in {i for n in graph.node if n.op_type != "Gather" for i in n.input}
    files = {emb: tmp_path / f"{emb}.onnx" for emb in ("int8", "fp32")}
    for emb, file in files.items():
        quantize_file(fp32, file, "dynamic", tmp_path, options=QuantOptions(embeddings=emb))
    weights = _initializers(files["int8"])
    assert WORD not in weights and weights[f"{WORD}_int8"].shape == (VOCAB, H)
    assert not [w for w in weights.values() if w.dtype == np.float32 and w.size >= VOCAB * H]
    feeds = example_batch(model, 16, 24, padded=True, seed=5)
    want, got = _logits(files["fp32"], feeds), _logits(files["int8"], feeds)
    real = feeds["attention_mask"].numpy().astype(bool)
    assert (got.argmax(-1) == want.argmax(-1))[real].mean() >= 0.95
    assert np.abs(got - want)[real].max() <= REL_TOL * np.abs(want[real]).max()


def test_a_table_a_gemm_also_reads_is_left_float():
    """A tied head that multiplies by the lookup table itself (``Gemm(x, table, transB=1)``): the
    table must stay as it is, or the head would read the int8 bytes as another tensor."""
    rng = np.random.default_rng(0)
    table = rng.normal(0, 1, (MIN_ROWS, 8)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
             helper.make_node("Gemm", ["rows", "table"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, MIN_ROWS])],
                              [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    rewritten, tables = quantize_embeddings(model, min_rows=1)
    assert tables == [] and rewritten.SerializeToString() == before
    # The same graph without the Gemm (the lookup alone) is rewritten: the guard is the second reader.
    lookup = onnx.ModelProto()
    lookup.CopyFrom(model)
    del lookup.graph.node[1:]
    lookup.graph.output[0].name = "rows"
    assert quantize_embeddings(lookup, min_rows=1)[1] == ["table"]
