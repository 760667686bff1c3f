"""How one word's vector changes with its sentence: cosine similarity across sentences, per layer.

For each sentence the word's vector at layer l is the mean of its sub-word token vectors there
([n_pieces, H] -> [H]); the N sentences give an [N, N] cosine matrix per layer. Layer 0 is the
embedding output -- the "static" view: a word's vector there depends only on its own pieces and
their positions, so two sentences with the word at the same position get similarity 1 exactly
(with different positions it is a little lower). Later layers mix in the context: "apple" the
fruit and "Apple" the company drift apart.

Finding the word: the sentence is tokenised with offsets; each pre-tokenizer word (the tokens
sharing a word id) is cut out of the sentence by its character span, passed through the
tokenizer's normaliser, case-folded and compared with the query treated the same way. So the
match is whole-word and case-insensitive ("Apple" matches "apple"; "apples" and "pineapple" do
not), and accents follow the tokenizer (an accent-stripping BERT matches "cafe" to "café"). The
first occurrence in a sentence is used.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor

from ..data.readers import read_lines
from ..errors import InputError, PlmkitError
from ..models.model import PlmModel
from ..tokenizer import pad_id
from .embed import Encoded, encode_texts, forward_layers, max_tokens, resolve_layer

DEFAULT_SENTENCES = Path(__file__).resolve().parents[1] / "assets" / "apple_sentences.txt"


@dataclass
class Sentence:
    text: str
    line: int


def read_sentences(path: str | Path) -> list[Sentence]:
    """One sentence per line; blank lines and lines starting with '#' are skipped."""
    rows = [Sentence(ln.strip(), i) for i, ln in enumerate(read_lines(path), 1)
            if ln.strip() and not ln.lstrip().startswith("#")]
    if len(rows) < 2:
        raise PlmkitError(f"{path}: needs at least 2 sentences to compare, found {len(rows)}")
    return rows


def first_without(sentences: Sequence[Sentence], word: str) -> Sentence | None:
    """The first sentence that lacks ``word`` as a whole word, compared without case and accents,
    or None. No tokenizer needed (a recipe checks this before the model exists); as loose as the
    loosest tokenizer's match, so a sentence it flags has no match for any model."""
    key = _plain(word.strip())
    pattern = re.compile(rf"(?<!\w){re.escape(key)}(?!\w)")
    return next((s for s in sentences if not pattern.search(_plain(s.text))), None)


def _plain(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def _normalizer(tok: Tokenizer):
    """str -> str: the tokenizer's normaliser (lower-casing, accent stripping, ...) then casefold."""
    norm = tok.normalizer
    if norm is None:
        return lambda s: s.strip().casefold()
    return lambda s: norm.normalize_str(s).strip().casefold()


def word_key(tok: Tokenizer, word: str) -> str:
    """The normalised form sentences are searched for; one pre-tokenizer word, or an error."""
    key = _normalizer(tok)(word)
    if not key:
        raise PlmkitError("--word is empty")
    pieces = tok.pre_tokenizer.pre_tokenize_str(key) if tok.pre_tokenizer is not None else [(key, None)]
    if len(pieces) != 1 or re.search(r"\s", key):
        raise PlmkitError(f"--word {word!r} is more than one word for this tokenizer "
                          f"(it splits into {[p for p, _ in pieces]}); give a single word")
    return key


def find_word(enc: Encoded, text: str, key: str, normalize) -> list[int] | None:
    """Token positions of the first whole-word occurrence of ``key`` in ``text``, or None."""
    spans: dict[int, list[int]] = {}
    for pos, w in enumerate(enc.word_ids):
        if w is not None:
            spans.setdefault(w, []).append(pos)
    for positions in spans.values():      # dicts keep insertion order: words left to right
        start, end = enc.offsets[positions[0]][0], enc.offsets[positions[-1]][1]
        if normalize(text[start:end]) == key:
            return positions
    return None


@dataclass
class WordVectors:
    vectors: Tensor                  # [L+1, N, H]: the word's mean sub-word vector per layer, sentence
    positions: list[list[int]]       # token positions of the word in each sentence


def word_vectors(model: PlmModel, tok: Tokenizer, sentences: Sequence[Sentence], word: str, *,
                 source: str | Path, batch_size: int = 32, max_length: int = 512) -> WordVectors:
    """The word's vector at every layer of every sentence; a sentence without it -> file:line error."""
    key = word_key(tok, word)
    normalize = _normalizer(tok)
    limit = max_tokens(model, max_length)
    encoded = encode_texts(tok, [s.text for s in sentences], limit)
    positions = []
    for s, enc in zip(sentences, encoded):
        found = find_word(enc, s.text, key, normalize)
        if found is None:
            cut = f" (within its first {limit} tokens)" if len(enc.input_ids) >= limit else ""
            raise InputError(source, f"the word {word!r} is not in this sentence as a whole word{cut}: "
                             f"{s.text[:80]!r}", s.line)
        positions.append(found)
    n_states = model.config.num_layers + 1
    vectors = torch.empty(n_states, len(sentences), model.config.hidden_size)
    for i, states in forward_layers(model, [e.feature() for e in encoded], pad_id(tok), range(n_states),
                                    batch_size=batch_size):
        vectors[:, i] = states[:, positions[i]].mean(1)          # [L+1, n_pieces, H] -> [L+1, H]
    return WordVectors(vectors, positions)


def cosine_matrices(vectors: Tensor) -> Tensor:
    """[L+1, N, H] -> [L+1, N, N] cosine similarities (diagonal exactly 1)."""
    unit = F.normalize(vectors.double(), dim=-1)
    sims = unit @ unit.transpose(-1, -2)
    sims = (sims + sims.transpose(-1, -2)) / 2                # exactly symmetric despite rounding
    sims.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return sims


def similarity_result(model: PlmModel, tok: Tokenizer, sentences: Sequence[Sentence], word: str, *,
                      source: str | Path, layer: int = -1, batch_size: int = 32,
                      max_length: int = 512) -> dict[str, Any]:
    """The similarity.json object: every layer's matrix, the static (0) and chosen contextual layer."""
    contextual = resolve_layer(model, layer)
    wv = word_vectors(model, tok, sentences, word, source=source, batch_size=batch_size, max_length=max_length)
    sims = cosine_matrices(wv.vectors)
    return {
        "word": word,
        "sentences": [s.text for s in sentences],
        "layers": {str(i): [[round(float(v), 6) for v in row] for row in m.tolist()] for i, m in enumerate(sims)},
        "static_layer": 0,
        "contextual_layer": contextual,
    }


def format_table(result: dict[str, Any], width: int = 48) -> str:
    """The sentences, then the static and contextual matrices side by side, as plain text."""
    sentences = result["sentences"]
    static = result["layers"][str(result["static_layer"])]
    ctx_layer = result["contextual_layer"]
    ctx = result["layers"][str(ctx_layer)]
    n = len(sentences)
    lines = [f"cosine similarity of {result['word']!r}: static = layer 0 (embeddings), "
             f"contextual = layer {ctx_layer}", ""]
    lines += [f"  s{i + 1:<3} {s if len(s) <= width else s[:width - 3] + '...'}" for i, s in enumerate(sentences)]
    head = " ".join(f"{'s' + str(j + 1):>5}" for j in range(n))
    lines += ["", f"{'':5} {'static (layer 0)':<{6 * n - 1}}   contextual (layer {ctx_layer})",
              f"{'':5} {head}   {head}"]
    for i in range(n):
        left = " ".join(f"{v:5.2f}" for v in static[i])
        right = " ".join(f"{v:5.2f}" for v in ctx[i])
        lines.append(f"{'s' + str(i + 1):<5} {left}   {right}")
    return "\n".join(lines)


def side_by_side(svgs: Sequence[str], gap: int = 8) -> str:
    """One SVG holding the given SVG charts left to right (each nested at its own size)."""
    sizes = []
    for s in svgs:
        m = re.search(r'<svg\b[^>]*\bwidth="([\d.]+)"[^>]*\bheight="([\d.]+)"', s)
        if m is None:
            raise ValueError("chart SVG without width/height on its root element")
        sizes.append((float(m.group(1)), float(m.group(2))))
    width = sum(w for w, _ in sizes) + gap * (len(svgs) - 1)
    height = max(h for _, h in sizes)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:g} {height:g}" '
             f'width="{width:g}" height="{height:g}">']
    x = 0.0
    for s, (w, _) in zip(svgs, sizes):
        parts.append(f'<g transform="translate({x:g} 0)">')
        parts.append(s)
        parts.append("</g>")
        x += w + gap
    return "\n".join(parts + ["</svg>"])


def similarity_svg(result: dict[str, Any], label_width: int = 26) -> str:
    """Static and contextual heatmaps side by side, on one colour scale."""
    from ..report.svg import heatmap

    sentences = result["sentences"]
    rows = [f"s{i + 1} " + (s if len(s) <= label_width else s[:label_width - 1] + "…")
            for i, s in enumerate(sentences)]
    cols = [f"s{i + 1}" for i in range(len(sentences))]
    static = result["layers"][str(result["static_layer"])]
    ctx_layer = result["contextual_layer"]
    ctx = result["layers"][str(ctx_layer)]
    lo = min(min(min(r) for r in static), min(min(r) for r in ctx))
    word = result["word"]
    charts = [heatmap(static, row_labels=rows, col_labels=cols, vmin=lo, vmax=1.0,
                      title=f"'{word}', static (layer 0)"),
              heatmap(ctx, row_labels=rows, col_labels=cols, vmin=lo, vmax=1.0,
                      title=f"'{word}', contextual (layer {ctx_layer})")]
    return side_by_side(charts)
