"""Pre-training data pipeline: corpus validation, token shards, MLM masking, NSP/SOP/MLM/CLM batches."""
from __future__ import annotations

import itertools
import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from plmkit.data.cooccurrence import _cooccurrence, ppmi_vectors
from plmkit.data.corpus import check_text_files, iter_documents
from plmkit.data.masking import IGNORE_INDEX, is_continuation, mask_tokens, word_starts
from plmkit.data.pretrain import (ClmBlocks, DocStream, MlmPacked, SentencePairs, TokenIds,
                                  make_batch_source)
from plmkit.data.shards import build_shards, open_shards, val_split
from plmkit.errors import InputError, PlmkitError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _words(n: int, rng: random.Random) -> list[str]:
    syl = ["ka", "lo", "mi", "ne", "su", "ta", "vor", "pen", "dri", "ul", "os", "ar", "be", "qu"]
    return ["".join(rng.choice(syl) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def _write_corpus(path: Path, n_docs: int, seed: int = 0) -> Path:
    """Blank-line separated documents of 2-7 lines, each line 4-14 pseudo-words."""
    rng = random.Random(seed)
    vocab = _words(2000, rng)  # more words than the 500-piece vocab: words get split
    docs = []
    for _ in range(n_docs):
        lines = [" ".join(rng.choice(vocab) for _ in range(rng.randint(4, 14))) + " ."
                 for _ in range(rng.randint(2, 7))]
        docs.append("\n".join(lines))
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("corpus") / "docs.txt", 400)


@pytest.fixture(scope="module")
def tokenizer(corpus) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line]
    tok.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=500, special_tokens=SPECIALS))
    return tok


@pytest.fixture(scope="module")
def shard_dir(corpus, tokenizer, tmp_path_factory) -> Path:
    return build_shards([corpus], tokenizer, tmp_path_factory.mktemp("cache"), val_fraction=0.05)


@pytest.fixture(scope="module")
def train(shard_dir):
    return open_shards(shard_dir, "train")


# --------------------------------------------------------------------------- corpus
def test_documents_blank_lines_and_doc_per_file(tmp_path):
    a = tmp_path / "a.txt"
    a.write_bytes(b"\xef\xbb\xbfone\r\ntwo\r\n   \r\nthree\n\n\nfour\n")
    b = tmp_path / "b.txt"
    b.write_text("five\n\nsix\n", encoding="utf-8")
    assert list(iter_documents([a, b])) == [["one", "two"], ["three"], ["four"], ["five"], ["six"]]
    assert list(iter_documents([a, b], doc_per_file=True)) == [["one", "two", "three", "four"], ["five", "six"]]


@pytest.mark.parametrize("content, line, words", [
    (None, None, "file not found"),
    (b"", None, "file is empty"),
    (b"ok\nfine\nbin\x00ary\n", 3, "NUL byte"),
    (b"ok\n\xff\xfe bad\n", 2, "not valid UTF-8"),
    (b"\n  \n\t\n", None, "only blank lines"),
])
def test_bad_input_names_file_and_line(tmp_path, content, line, words, tokenizer):
    p = tmp_path / "bad.txt"
    if content is not None:
        p.write_bytes(content)
    where = f"{p}:{line}: " if line else f"{p}: "
    for call in (lambda: check_text_files([p]), lambda: list(iter_documents([p])),
                 lambda: build_shards([p], tokenizer, tmp_path / "cache")):
        with pytest.raises(InputError) as e:
            call()
        assert str(e.value).startswith(where) and words in str(e.value)
    assert not list((tmp_path / "cache").glob("shards-*"))  # nothing half-written left


# --------------------------------------------------------------------------- shards
def test_shards_hold_the_tokenised_corpus(corpus, tokenizer, shard_dir, train):
    val = open_shards(shard_dir, "val")
    docs = list(iter_documents([corpus]))
    assert train.n_docs + val.n_docs == len(docs) and val.n_docs == round(0.05 * len(docs))
    assert train.tokens.dtype == np.uint16 and isinstance(train.tokens, np.memmap)
    seg = np.asarray(train.segments)
    assert (seg[1:, 0] == seg[:-1, 1]).all() and seg[-1, 1] == len(train.tokens)  # contiguous
    for d in (0, 17, train.n_docs - 1):
        want = [tokenizer.encode(s, add_special_tokens=False).ids for s in docs[d]]
        got = [train.tokens[a:b].tolist() for a, b in train.doc_segments(d)]
        assert got == want
    last = [tokenizer.encode(s, add_special_tokens=False).ids for s in docs[-1]]
    assert [val.tokens[a:b].tolist() for a, b in val.doc_segments(val.n_docs - 1)] == last
    assert train.n_tokens + val.n_tokens == len(train.tokens)


@pytest.mark.parametrize("doc_per_file", [False, True])
def test_chunking_does_not_change_shards(tmp_path, tokenizer, doc_per_file):
    files = [_write_corpus(tmp_path / f"{i}.txt", 12, seed=i) for i in range(3)]
    whole = build_shards(files, tokenizer, tmp_path / "a", doc_per_file=doc_per_file, val_fraction=0.0)
    tiny = build_shards(files, tokenizer, tmp_path / "b", doc_per_file=doc_per_file, val_fraction=0.0,
                        chunk_chars=50)  # documents span many chunks
    for name in ("tokens.bin", "segments.bin", "docs.bin"):
        assert (whole / name).read_bytes() == (tiny / name).read_bytes()
    assert open_shards(whole).n_docs == (3 if doc_per_file else 36)


def test_newlines_kept_for_byte_level_bpe(tmp_path, corpus):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus.read_text(encoding="utf-8").splitlines()[:200],
                            trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    src = tmp_path / "two.txt"
    src.write_text("kalo mine .\nta vor .\n", encoding="utf-8")
    plain, kept = (open_shards(build_shards([src], tok, tmp_path / "c", val_fraction=0.0, newlines=nl))
                   for nl in (False, True))
    assert plain.path != kept.path
    assert tok.decode(plain.tokens[:].tolist()) == "kalo mine .ta vor ."
    assert tok.decode(kept.tokens[:].tolist()) == "kalo mine .\nta vor .\n"


def test_cache_reused_and_rebuilt_on_change(tmp_path, tokenizer, caplog):
    src = _write_corpus(tmp_path / "c.txt", 30, seed=1)
    cache = tmp_path / "cache"
    first = build_shards([src], tokenizer, cache)
    stamp = (first / "tokens.bin").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="plmkit.data.shards"):
        again = build_shards([src], tokenizer, cache)
    assert again == first and (first / "tokens.bin").stat().st_mtime_ns == stamp
    assert "reusing cached shards" in caplog.text
    assert build_shards([src], tokenizer, cache, val_fraction=0.2) != first  # settings
    _write_corpus(src, 31, seed=1)
    os.utime(src, ns=(stamp + 10**9, stamp + 10**9))
    changed = build_shards([src], tokenizer, cache)  # file content
    assert changed != first and open_shards(changed).n_docs + 1 == 31
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary left


def test_val_split_rule():
    """Whole documents when they are many; the last lines when documents are too few (one
    sentence a line, no blank lines) or the last one is most of the text."""
    many = np.array([[i, i + 3] for i in range(0, 600, 3)])              # 200 documents of 3 lines
    docs, n_train = val_split(many, 0.01)
    assert n_train == 198 and np.array_equal(docs, many)
    one = np.array([[0, 1000]])                                           # one document of 1,000 lines
    docs, n_train = val_split(one, 0.01)
    assert n_train == 1 and docs.tolist() == [[0, 990], [990, 1000]]
    big_last = np.array([[0, 10], [10, 20], [20, 1000]])
    docs, n_train = val_split(big_last, 0.01)
    assert n_train == 3 and docs.tolist() == [[0, 10], [10, 20], [20, 990], [990, 1000]]
    assert val_split(one, 0.0)[1] == 1
    with pytest.raises(PlmkitError, match="--val-fraction 0"):
        val_split(np.array([[0, 1]]), 0.01)


def test_one_sentence_per_line_file_holds_out_its_last_lines(tmp_path, tokenizer):
    lines = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(6)) + " ." for i in range(400)]
    src = tmp_path / "lines.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    shard_dir = build_shards([src], tokenizer, tmp_path / "cache")
    train, val = open_shards(shard_dir, "train"), open_shards(shard_dir, "val")
    assert (train.n_segments, val.n_segments) == (396, 4)
    assert tokenizer.decode(val.tokens[val.doc_tokens[0, 0]:val.doc_tokens[0, 1]].tolist()).startswith(
        tokenizer.decode(tokenizer.encode(lines[396]).ids))


# --------------------------------------------------------------------------- masking
def test_mask_rates_and_specials():
    g = torch.Generator().manual_seed(0)
    vocab, B, T = 1000, 256, 256
    ids = torch.randint(5, vocab, (B, T), generator=g)
    ids[:, 0], ids[:, -1], ids[:, -20:-1] = 2, 3, 0  # [CLS] ... [PAD]x19 [SEP]
    special = (ids == 0) | (ids == 2) | (ids == 3)
    out, labels = mask_tokens(ids, special, vocab, mask_id=4, generator=g, special_ids=[1])
    sel = labels != IGNORE_INDEX
    assert not (sel & special).any() and (out[special] == ids[special]).all()
    assert (labels[sel] == ids[sel]).all() and (out[~sel] == ids[~sel]).all()
    assert abs(sel.sum().item() / (~special).sum().item() - 0.15) < 0.01
    n = sel.sum().item()
    masked = (out == 4) & sel
    replaced = sel & (out != 4) & (out != ids)
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    assert abs(replaced.sum().item() / n - 0.1) < 0.01  # a draw equal to the original is 0.1%
    assert out[replaced].min() >= 5  # replacements are never special ids


def test_whole_word_masking_masks_whole_words(tokenizer, train):
    cont = is_continuation(tokenizer.get_vocab(with_added_tokens=True))
    assert cont[tokenizer.token_to_id("[CLS]")].item() is False
    ids = torch.from_numpy(np.asarray(train.tokens[:64 * 128], dtype=np.int64)).view(64, 128)
    ids[:, 0] = tokenizer.token_to_id("[CLS]")
    starts = word_starts(ids, cont)
    assert (~starts).float().mean() > 0.2  # the test vocab really splits words
    special = ids == tokenizer.token_to_id("[CLS]")
    _, labels = mask_tokens(ids, special, 500, 4, torch.Generator().manual_seed(1), word_starts=starts)
    sel = labels != IGNORE_INDEX
    # A continuation piece is selected exactly when the token before it is (same word).
    inner = ~starts[:, 1:] & ~special[:, :-1]
    assert (sel[:, 1:][inner] == sel[:, :-1][inner]).all()
    assert abs(sel.float().sum() / (~special).sum() - 0.15) < 0.03


# --------------------------------------------------------------------------- examples
def _doc_of(train, pos: int) -> int:
    return int(np.searchsorted(train.doc_tokens[:, 0], pos, side="right")) - 1


@pytest.mark.parametrize("order", [False, True])
def test_sentence_pairs(tokenizer, train, order):
    ids = TokenIds.from_tokenizer(tokenizer)
    pairs = SentencePairs(train, ids, seq_len=32, order=order)
    epochs = []
    for e in range(16):  # pairs are re-drawn each epoch
        pairs.start_epoch(seed=3, epoch=e)
        epochs.append(pairs.examples)
    assert not np.array_equal(epochs[0][:50], epochs[1][:50])
    rows = np.concatenate(epochs)
    assert len(rows) > 10000
    a0, a1, b0, b1, label = rows.T
    assert ((a1 > a0) & (b1 > b0) & (a1 - a0 + b1 - b0 <= 32 - 3)).all()
    assert abs(label.mean() - 0.5) < 0.02
    doc_a = np.array([_doc_of(train, x) for x in a0])
    doc_b = np.array([_doc_of(train, x) for x in b0])
    pos = label == 0
    assert (b0[pos] >= a1[pos]).all() and (doc_a[pos] == doc_b[pos]).all()  # B follows A
    if order:  # SOP negatives: the same two pieces, B before A
        assert (a0[~pos] >= b1[~pos]).all() and (doc_a[~pos] == doc_b[~pos]).all()
    else:  # NSP negatives: B from another document
        assert (doc_a[~pos] != doc_b[~pos]).all()
    batch = pairs.collate(np.arange(16))
    cls, sep, pad = ids.cls, ids.sep, ids.pad
    for i, (x0, x1, y0, y1, lab) in enumerate(pairs.examples[:16]):
        la, lb = x1 - x0, y1 - y0
        want = [cls, *train.tokens[x0:x1], sep, *train.tokens[y0:y1], sep]
        row = batch["input_ids"][i].tolist()
        assert row[:len(want)] == want and set(row[len(want):]) <= {pad}
        assert batch["token_type_ids"][i].tolist() == [0] * (la + 2) + [1] * (lb + 1) + [0] * (32 - len(want))
        assert batch["attention_mask"][i].sum() == len(want)
        assert batch["next_sentence_label"][i] == lab


def test_mlm_packing_covers_the_stream(tokenizer, train):
    ids = TokenIds.from_tokenizer(tokenizer)
    packed = MlmPacked(train, ids, seq_len=48)
    batch = packed.collate(np.arange(packed.start_epoch(0, 0)))
    body = []
    for row, att in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
        n = sum(att)
        assert row[0] == ids.cls and row[n - 1] == ids.sep and set(row[n:]) <= {ids.pad}
        assert row[1] != ids.sep and row[n - 2] != ids.sep  # no empty document piece at the edges
        body += row[1:n - 1]
    stream = [t for a, b in train.doc_tokens for t in train.tokens[a:b].tolist()]
    assert [t for t in body if t != ids.sep] == stream
    assert batch["attention_mask"].float().mean() > 0.75  # segments packed: little padding


def test_clm_blocks_are_contiguous_without_padding(tokenizer, train):
    ids = TokenIds.from_tokenizer(tokenizer)
    blocks = ClmBlocks(train, ids, seq_len=64)
    n = blocks.start_epoch(0, 0)
    batch = blocks.collate(np.arange(n))
    assert batch["attention_mask"].all() and torch.equal(batch["labels"], batch["input_ids"])
    stream = DocStream(train, ids.eos)
    assert n == stream.length // 64
    want = list(itertools.chain.from_iterable(train.tokens[a:b].tolist() + [ids.eos] for a, b in train.doc_tokens))
    assert batch["input_ids"].flatten().tolist() == want[:n * 64]


# --------------------------------------------------------------------------- batch sources
def _take(it, k):
    return [next(it) for _ in range(k)]


def _same(xs, ys) -> bool:
    return len(xs) == len(ys) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                      for x, y in zip(xs, ys))


@pytest.mark.parametrize("task", ["mlm", "mlm+nsp", "mlm+sop", "clm"])
def test_resume_reproduces_batches_and_masks(tokenizer, train, task):
    kw = dict(seq_len=64, batch_size=32, seed=7, whole_word=task == "mlm")
    src = make_batch_source(task, train, tokenizer, **kw)
    per_epoch = len(src)
    it = iter(src)
    _take(it, per_epoch - 2)
    state = json.loads(json.dumps(src.state_dict()))  # must survive a checkpoint file
    expected = _take(it, 5)  # crosses into the next epoch
    fresh = make_batch_source(task, train, tokenizer, **kw)
    fresh.load_state_dict(state)
    assert _same(_take(iter(fresh), 5), expected)
    with pytest.raises(PlmkitError, match="seed"):
        make_batch_source(task, train, tokenizer, **{**kw, "seed": 8}).load_state_dict(state)


def test_masks_are_drawn_fresh_each_epoch(tokenizer, train):
    src = make_batch_source("mlm", train, tokenizer, seq_len=64, batch_size=8, shuffle=False)
    it = iter(src)
    first = next(it)
    _take(it, len(src) - 1)
    again = next(it)  # the same examples, one epoch later
    assert src.epoch == 1
    def original(b):
        return torch.where(b["labels"] != IGNORE_INDEX, b["labels"], b["input_ids"])
    assert torch.equal(original(first), original(again))
    assert not torch.equal(first["labels"], again["labels"])


def test_two_ranks_see_the_batches_of_one(tokenizer, train):
    kw = dict(seq_len=64, batch_size=16, seed=1, loop=False)
    one = list(make_batch_source("mlm+nsp", train, tokenizer, **kw))
    ranks = [list(make_batch_source("mlm+nsp", train, tokenizer, rank=r, world_size=2, **kw)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(one) // 2
    assert _same([b for pair in zip(*ranks) for b in pair], one[:2 * len(ranks[0])])
    # loop=False rewinds: a second pass is the same fixed evaluation set.
    src = make_batch_source("clm", train, tokenizer, **kw)
    assert _same(list(src), list(src))


def test_tiny_corpus_is_a_clear_error(tmp_path, tokenizer):
    p = tmp_path / "tiny.txt"
    p.write_text("kalo mine su .\n\nta vor pen .\n", encoding="utf-8")
    shards = open_shards(build_shards([p], tokenizer, tmp_path / "cache", val_fraction=0.0))
    with pytest.raises(PlmkitError, match="smaller than one block"):
        make_batch_source("clm", shards, tokenizer, seq_len=128, batch_size=2)
    with pytest.raises(PlmkitError, match="corpus too small"):
        make_batch_source("mlm", shards, tokenizer, seq_len=128, batch_size=2)
    one = tmp_path / "one.txt"
    one.write_text("kalo mine su .\n", encoding="utf-8")
    with pytest.raises(PlmkitError, match=r"too few to hold out .* \(add text, or pass --val-fraction 0\)"):
        build_shards([one], tokenizer, tmp_path / "cache")


def test_real_text_all_tasks(tmp_path):
    src = DATA / "corpus" / "wikitext2-valid.txt"
    if not src.is_file():
        pytest.skip(f"real corpus not found: ../shared/data ({src})")
    with src.open(encoding="utf-8") as f:
        lines = list(itertools.islice(f, 400))
    text = tmp_path / "wiki.txt"
    text.write_text("".join(lines), encoding="utf-8")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([x for x in lines if x.strip()], trainers.WordPieceTrainer(vocab_size=500, special_tokens=SPECIALS))
    train = open_shards(build_shards([text], tok, tmp_path / "cache"))
    for task in ("mlm", "mlm+nsp", "mlm+sop", "clm"):
        batch = next(iter(make_batch_source(task, train, tok, seq_len=128, batch_size=8, whole_word=True)))
        assert batch["input_ids"].shape == (8, 128) and batch["input_ids"].max() < tok.get_vocab_size()
        if task != "clm":
            assert (batch["labels"] != IGNORE_INDEX).any()


def test_one_huge_line_becomes_bounded_segments(tmp_path, tokenizer):
    """A corpus on one line is read in pieces (cut after a space): each its own segment of the same
    document, so tokenising never holds the whole line (50 MB took 5.7 GB before)."""
    from plmkit.data.corpus import iter_lines, iter_segments

    words = [f"word{i % 97}" for i in range(50_000)]                        # 340 KB on line 2
    p = tmp_path / "one.txt"
    p.write_text("first line\n" + " ".join(words) + "\n\nnext doc\n", encoding="utf-8")
    lines = list(iter_lines(p, max_bytes=4096))
    assert {n for n, _ in lines} == {1, 2, 3, 4} and len(lines) > 50        # line 2 came in pieces
    assert all(len(t.encode()) <= 4096 for _, t in lines)
    assert " ".join(t for n, t in lines if n == 2).split() == words
    docs = [d for d, _ in iter_segments([p])]
    assert docs[0] == 0 and docs[-1] == 1 and set(docs) == {0, 1}
    shards = open_shards(build_shards([p], tokenizer, tmp_path / "cache", val_fraction=0.0))
    pieces = sum(1 for n, _ in iter_lines(p) if n == 2)                      # of at most 64 KiB
    assert pieces > 4 and shards.n_docs == 2 and shards.n_segments == 2 + pieces


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.sampled_from(["ab", "c", " ", "  ", "\t", "\r\n", "\n", "\n\n", "é", "€"]), max_size=60),
       limit=st.sampled_from([3, 4, 7, 16]))
def test_reading_in_pieces_keeps_documents_and_text(parts, limit):
    """However lines are cut into pieces, the documents and their text are those of whole lines:
    a blank piece of a long line is no blank line (which would end the document)."""
    import functools
    import tempfile

    import plmkit.data.corpus as corpus

    whole_lines = corpus.iter_lines

    def docs(path: Path, max_bytes: int) -> list[str] | str:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(corpus, "iter_lines", functools.partial(whole_lines, max_bytes=max_bytes))
            try:
                return ["".join("".join(doc).split()) for doc in corpus.iter_documents([path])]
            except InputError as e:
                return str(e).split(": ", 1)[1]

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.txt"
        p.write_bytes("".join(parts).encode("utf-8"))
        assert docs(p, limit) == docs(p, 1 << 20)


# ---------------------------------------------------------------------------- PPMI-SVD word vectors

def test_ppmi_vectors_put_words_of_the_same_contexts_together(tmp_path):
    """Two word groups, each used only with its own context words: vectors of one group point the
    same way, across groups they do not; counts never cross a line; rows the corpus lacks are zero."""
    rng = random.Random(0)
    groups = {"pos": (["good", "great", "fine"], ["fun", "warm", "lovely"]),
              "neg": (["bad", "awful", "poor"], ["dull", "cold", "ugly"])}
    lines = ["start alone"]                  # "end" (last word of every line) is never before "start"
    for _ in range(600):
        words, contexts = groups[rng.choice(["pos", "neg"])]
        lines.append(" ".join([rng.choice(contexts), rng.choice(words), rng.choice(contexts), "end"]))
    path = tmp_path / "c.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + sorted(set(" ".join(lines).split())))},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    shards = open_shards(build_shards([path], tok, tmp_path / "cache", val_fraction=0), "train")
    V = tok.get_vocab_size()
    counts, ctx_ids = _cooccurrence(shards, V, 5, 10 ** 6, V * V)
    i = tok.token_to_id
    counts = counts[:, np.argsort(ctx_ids)]         # columns in token-id order (all tokens are contexts here)
    assert counts[i("end"), i("start")] == 0 and counts[i("start"), i("alone")] == 1.0
    assert counts[i("good"), i("end")] == pytest.approx(counts[i("end"), i("good")])   # symmetric, 1/distance
    assert counts[i("good"), i("end")] == pytest.approx(0.5 * int(sum(" good " in f" {x} " for x in lines)))
    vectors, seen = ppmi_vectors(shards, V, 8)
    assert not seen[i("[MASK]")] and vectors[i("[MASK]")].abs().sum() == 0
    assert vectors[seen].std().item() == pytest.approx(1.0, abs=1e-4)
    cos = torch.nn.functional.cosine_similarity
    same = min(cos(vectors[i(a)], vectors[i(b)], dim=0) for a, b in [("good", "great"), ("bad", "awful")])
    across = max(cos(vectors[i(a)], vectors[i(b)], dim=0) for a, b in [("good", "bad"), ("great", "awful")])
    assert same > 0.8 and across < same - 0.5
