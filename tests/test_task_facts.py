"""Task facts live on the tasks (TaskSpec attributes), and one resolver says which task a model
directory serves; serve searches QA spans with the task's own span search."""
from __future__ import annotations

import numpy as np
import pytest

from plmkit.data.qa import best_span, postprocess_qa
from plmkit.data.readers import QAExample
from plmkit.errors import PlmkitError
from plmkit.tasks import BENCH_TASKS, TASKS, selection_metric, task_and_prep, task_of


def test_task_facts_replace_the_name_lists():
    assert BENCH_TASKS == ("classify", "ner", "qa")                       # those with a transformers baseline
    assert [n for n, t in TASKS.items() if t.labelled] == ["classify", "ner"]
    assert [n for n, t in TASKS.items() if t.detailed] == ["classify", "ner"]
    assert [n for n, t in TASKS.items() if not t.on_graph] == ["generate"]
    assert {n: t.file_layout for n, t in TASKS.items()} == {"classify": "lines", "ner": "blocks", "qa": "squad",
                                                            "generate": "lines", "embed": "lines"}
    assert selection_metric(TASKS["classify"], []) == "accuracy"


def test_one_resolver_names_the_task_of_a_directory():
    assert task_of("m", "token", {}) is TASKS["ner"]                          # by its head
    assert task_of("m", "mlm", {}) is None                                    # pre-trained: no task
    assert task_of("m", "classify", {"finetune_task": "classify"}, "classify") is TASKS["classify"]
    with pytest.raises(PlmkitError, match="fine-tuned for 'classify', not 'ner'"):
        task_of("m", "classify", {"finetune_task": "classify"}, "ner")
    with pytest.raises(PlmkitError, match="unknown task 'nope'"):
        task_of("m", "classify", {"finetune_task": "nope"})


def test_a_model_taken_with_its_head_serves_its_task_within_its_positions():
    config = {"task": "classify", "head_config": {"finetune_task": "classify"}, "model": {"max_position": 64}}
    task, prep = task_and_prep("m", config)
    assert task is TASKS["classify"] and prep.max_length == 64               # never beyond the position table
    assert task_and_prep("m", {**config, "task": "mlm", "head_config": {}})[0] is None     # pre-trained: no task
    with pytest.raises(PlmkitError, match="a 'mlm' model cannot do task 'ner'"):
        task_and_prep("m", {**config, "task": "mlm", "head_config": {}}, "ner")


def test_best_span_is_the_span_postprocess_qa_picks():
    offsets = [None, (0, 3), (4, 9), (10, 12), None]
    starts, ends = np.array([9.0, 1.0, 5.0, 0.5, 9.0]), np.array([9.0, 0.1, 4.0, 6.0, 9.0])
    assert best_span(offsets, starts, ends) == (11.0, 4, 12)                  # context tokens only
    ex = QAExample(id="q", question="?", context="abc defgh ij")
    feature = {"example_id": "q", "offset_mapping": offsets}
    assert postprocess_qa([ex], [feature], [starts], [ends]) == {"q": "defgh ij"}
    assert best_span([None, None], starts[:2], ends[:2]) == (-np.inf, None, None)
