from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from plmkit.errors import PlmkitError
from plmkit.eval.metrics import (accuracy, confusion_matrix, entity_counts, entity_prf, entity_report, get_entities,
                                 macro_f1, normalize_answer, per_class_prf, squad_em_f1, squad_f1,
                                 squad_question_scores)

# ---------------------------------------------------------------- classification


def test_accuracy_and_macro_f1_by_hand():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    # a: p=2/2 r=2/3 f=0.8; b: p=1/2 r=1/2 f=0.5; c: p=1/2 r=1/1 f=2/3
    assert macro_f1(y_true, y_pred) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    report = per_class_prf(y_true, y_pred)
    assert report["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})


def test_macro_f1_counts_a_never_right_class_as_zero():
    assert macro_f1([0, 0, 1], [0, 0, 0]) == pytest.approx((0.8 + 0.0) / 2)


def test_confusion_matrix():
    assert confusion_matrix([0, 0, 1, 2], [0, 1, 1, 0]) == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert confusion_matrix(["x", "y"], ["y", "y"], labels=["y", "x"]) == [[1, 0], [1, 0]]


def test_empty_and_mismatched_inputs():
    with pytest.raises(PlmkitError):
        accuracy([], [])
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])


# ---------------------------------------------------------------- NER

SEQEVAL_TRUE = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
SEQEVAL_PRED = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]


def test_seqeval_documented_example():
    prf = entity_prf(SEQEVAL_TRUE, SEQEVAL_PRED)
    assert prf == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    report = entity_report(SEQEVAL_TRUE, SEQEVAL_PRED)
    assert report["PER"] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1})
    assert report["MISC"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})


def test_iob1_style_i_after_o_or_other_type_starts_an_entity():
    assert get_entities([["I-PER", "I-PER", "O", "I-LOC"]]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_entities([["B-PER", "I-LOC", "I-LOC"]]) == [("PER", 0, 0), ("LOC", 1, 2)]
    # Entities never run across a sentence boundary.
    assert get_entities([["B-PER"], ["I-PER"]]) == [("PER", 0, 0), ("PER", 2, 2)]


def test_entity_prf_by_hand():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-LOC"]]
    # gold {PER, LOC, ORG}; pred {PER, ORG(wrong span), ORG, LOC(wrong span)}: 2 correct
    assert entity_prf(true, pred) == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7})
    assert entity_prf([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # per sentence (compress pairs models sentence by sentence): the sums give the same F1
    counts = entity_counts(true, pred)
    assert counts == [(1, 2, 2), (1, 2, 1)]
    tp, n_pred, n_gold = map(sum, zip(*counts))
    assert 2 * tp / (n_pred + n_gold) == pytest.approx(4 / 7)


def _random_tags(rng: random.Random, n: int) -> list[str]:
    vocab = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "B-ORG"]
    return [rng.choice(vocab) for _ in range(n)]


@pytest.mark.filterwarnings("ignore")  # seqeval warns about 0/0 recall
def test_matches_seqeval_on_random_sequences():
    seqeval = pytest.importorskip("seqeval.metrics", reason="seqeval not installed")
    rng = random.Random(0)
    for _ in range(30):
        lengths = [rng.randint(1, 12) for _ in range(rng.randint(1, 6))]
        true = [_random_tags(rng, n) for n in lengths]
        pred = [_random_tags(rng, n) for n in lengths]
        ours = entity_prf(true, pred)
        assert ours["precision"] == pytest.approx(seqeval.precision_score(true, pred))
        assert ours["recall"] == pytest.approx(seqeval.recall_score(true, pred))
        assert ours["f1"] == pytest.approx(seqeval.f1_score(true, pred))
        theirs = seqeval.classification_report(true, pred, output_dict=True, zero_division=0)
        report = entity_report(true, pred)
        assert set(report) == {k for k in theirs if not k.endswith(" avg")}
        for type_, row in report.items():
            assert row["f1"] == pytest.approx(theirs[type_]["f1-score"])
            assert row["support"] == theirs[type_]["support"]


# ---------------------------------------------------------------- SQuAD


def _qa(qid: str, *golds: str) -> SimpleNamespace:
    return SimpleNamespace(id=qid, answers=[{"text": g, "answer_start": 0} for g in golds])


def test_squad_normalisation():
    assert normalize_answer("The Cat!") == "cat"
    assert normalize_answer("  an  Apple, a day ") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert squad_em_f1({"q": "The Cat!"}, [_qa("q", "cat")]) == {"exact_match": 100.0, "f1": 100.0}


def test_squad_partial_overlap_by_hand():
    # normalised: pred [big, black, cat], gold [black, cat, sat] -> 2 common; p = r = 2/3
    assert squad_f1("the big black cat", "black cat sat") == pytest.approx(2 / 3)
    # repeated tokens count by multiplicity: pred [cat, cat], gold [cat] -> p 1/2 r 1 -> 2/3
    assert squad_f1("cat cat", "cat") == pytest.approx(2 / 3)


def test_squad_aggregate_max_over_golds_and_missing_predictions():
    examples = [_qa("a", "Denver Broncos", "Broncos"), _qa("b", "1990"), _qa("c", "Paris")]
    preds = {"a": "the Broncos", "b": "in 1990 and 1991"}  # "c" unanswered -> 0
    scores = squad_em_f1(preds, examples)
    # a: EM 1 (matches "Broncos"); b: EM 0, F1 p=1/4 (in,1990,and,1991) r=1 -> 0.4
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.4 + 0) / 3)
    assert squad_question_scores(preds, examples) == [(1.0, 1.0), (0.0, pytest.approx(0.4)), (0.0, 0.0)]


def test_squad_impossible_question_needs_empty_prediction():
    examples = [_qa("x")]
    assert squad_em_f1({"x": ""}, examples)["exact_match"] == 100.0
    assert squad_em_f1({"x": "something"}, examples)["f1"] == 0.0
