"""A family is data: one record per architecture (models/config.py ``ARCHS``), read by the stages.

- No string comparison against a family or architecture name ("encoder", "decoder", an --arch, an
  HF layout or model type) appears in plmkit outside the records (models/config.py) and the HF
  converters (models/hf/): stages and serve ask the record or the config's capabilities.
- A new encoder architecture is one record: registered here (in the test only), it pre-trains,
  fine-tunes and exports to ONNX through the CLI, and no stage knows its name.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from plmkit import cli
from plmkit.models import hf
from plmkit.models.config import ARCHS, Arch, EncoderConfig, arch_of, preset
from plmkit.models.layers import implementation
from plmkit.models import config as C

from family_fixtures import write_classify

ROOT = Path(__file__).resolve().parents[1] / "plmkit"
RECORDS = ("models/config.py", "models/hf/")       # where family names belong


def family_names() -> set[str]:
    """Every name of a family or architecture plmkit knows."""
    names = {"encoder", "decoder", *ARCHS, *hf.FAMILIES, *hf.REFUSED}
    names |= {t for family in hf.FAMILIES.values() for t in family.model_types}
    names |= {a.defaults.layout for a in ARCHS.values()}
    return names


def _named(node: ast.AST, names: set[str]) -> bool:
    """A string constant that is a family name, or a tuple / list / set literal holding one."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in names
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_named(e, names) for e in node.elts)
    return False


def family_branches(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, code) of each comparison against a family name (==, !=, in, not in), each lookup by
    one (x["albert"]) and each table keyed by them ({"encoder": ...})."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            hit = any(_named(n, names) for n in (node.left, *node.comparators))
        elif isinstance(node, ast.Subscript):
            hit = _named(node.slice, names)
        elif isinstance(node, ast.Dict):
            hit = any(k is not None and _named(k, names) for k in node.keys)
        else:
            continue
        if hit:
            found.append((node.lineno, (ast.get_source_segment(source, node) or "").splitlines()[0]))
    return sorted(found)


def branches_under(root: Path) -> list[str]:
    names = family_names()
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(RECORDS):
            continue
        found += [f"plmkit/{rel}:{line}: {code}" for line, code in family_branches(path.read_text(), names)]
    return found


def test_no_family_name_is_compared_outside_the_records():
    assert branches_under(ROOT) == []


def test_the_family_check_is_live():
    """It finds what the stages once held: arch and family comparisons, tables keyed by them."""
    names = family_names()
    source = '''
if arch == "gpt" and model.family != "decoder":
    pass
x = 1024 if cfg.arch in ("gpt", "other") else 512
OBJECTIVES = {"encoder": ("mlm",), "decoder": ("clm",)}
shown = info["albert"]
ok = task == "clm" and layout == cfg.layout
'''
    assert [line for line, _ in family_branches(source, names)] == [2, 2, 4, 5, 6]


def test_every_layer_choice_names_what_builds_it():
    """models/config.py names the class or function of each choice; layers.py has each one."""
    for table in (C.POSITIONS, C.NORMS, C.FFN_KINDS, C.ACTIVATIONS, C.ROPE_KINDS):
        for choice, name in table.items():
            assert name is None or callable(implementation(table, choice)), (choice, name)


def test_the_records_say_what_stages_used_to_branch_on():
    assert [arch_of(preset(a, "tiny")) for a in ARCHS] == list(ARCHS)
    gpt, bert = ARCHS["gpt"].defaults, ARCHS["bert"].defaults
    assert gpt.can_generate and gpt.tied_lm_head and not gpt.can_embed
    assert bert.can_embed and not bert.can_generate and not bert.tied_lm_head
    assert preset("gpt", "tiny").pre_ln and ARCHS["gpt"].positions == 1024 and ARCHS["bert"].tokenizer == "wordpiece"


# A hypothetical encoder family: rotary positions, RMSNorm, a gated SiLU FFN, pre-LN, mean pooling,
# no segments, no pooler; its HF layout does not exist (no converter), which ONNX export never needs.
NEW = Arch(EncoderConfig, {"tiny": dict(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=48,
                                        positions="rotary", norm="rmsnorm", ffn_kind="gated", activation="silu",
                                        pre_ln=True, use_pooler=False, pooling="mean", type_vocab_size=0,
                                        embedding_norm=False, layout="newenc")},
           objectives=("mlm",), tokenizer="wordpiece", positions=96)


def test_a_new_encoder_family_is_one_record(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="ONNX export check needs onnxruntime (pip install .[onnx])")
    from plmkit.data.synthetic import write_corpus
    from plmkit.loading import load

    monkeypatch.setitem(ARCHS, "newenc", NEW)
    corpus = write_corpus(tmp_path / "stories.txt", n_docs=60, seed=0)
    base, clf, onnx = tmp_path / "base", tmp_path / "clf", tmp_path / "onnx"
    assert cli.main(["pretrain", "--arch", "newenc", "--size", "tiny", "--corpus", str(corpus), "--out", str(base),
                     "--cache-dir", str(tmp_path / "cache"), "--vocab-size", "300", "--seq-len", "32",
                     "--batch-size", "4", "--max-steps", "2", "--eval-batches", "0", "--precision", "fp32"]) == 0
    model = load(base)
    assert model.task == "mlm" and model.config.family == "encoder"                  # the record's objective
    assert (model.config.positions, model.config.ffn_kind, model.config.max_position) == ("rotary", "gated", 96)
    assert json.loads((base / "tokenizer" / "tokenizer.json").read_text())["model"]["type"] == "WordPiece"

    train = write_classify(tmp_path / "train.tsv", 24, 0)
    assert cli.main(["finetune", "--model", str(base), "--task", "classify", "--train", str(train),
                     "--out", str(clf), "--epochs", "1", "--max-steps", "2", "--batch-size", "8",
                     "--max-length", "32", "--precision", "fp32"]) == 0
    torch_model = load(clf)
    assert torch_model.task == "classify" and torch_model.config.layout == "newenc"
    assert cli.main(["export", "--model", str(clf), "--format", "onnx", "--out", str(onnx)]) == 0
    graph = load(onnx)
    batch = {"input_ids": torch.tensor([[2, 10, 11, 12, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.no_grad():
        want = torch_model.eval()(**batch).logits
    assert torch.allclose(graph(**batch).logits, want, atol=1e-4)
