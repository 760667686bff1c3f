"""Token and sentence vectors: the hidden states of any layer, pooled per text.

Shapes: N texts, T_i tokens of text i, H hidden width, L transformer layers. Layer 0 is the
embedding output (word + position (+ segment) embeddings, normalised), layer L the last block;
negative layers count from the end as in Python (-1 = L). For a decoder the last layer is taken
after the final LayerNorm, as Hugging Face's ``hidden_states[-1]`` is.

Pooling is over the whole encoded text, special tokens included: ``mean`` averages all of its
T_i token vectors (what sentence-transformers' mean pooling does with an all-ones attention
mask), ``cls`` takes the first token ([CLS]) of the chosen layer -- not the pooler's tanh
projection. A decoder has no [CLS]; ``cls`` there takes the last token, the only one that has
seen the whole text.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from tokenizers import Tokenizer
from torch import Tensor
from tqdm import tqdm

from ..data.features import collate, configured, length_bucketed_batches
from ..data.readers import read_classification, read_lines
from ..errors import PlmkitError
from ..loading import load
from ..models.config import POOLINGS
from ..models.model import PlmModel
from ..tokenizer import load_tokenizer, pad_id
from ..train.logging import progress_enabled

TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")


@dataclass
class Text:
    text: str
    line: int          # 1-based line in the input file it came from


@dataclass
class Encoded:
    """One tokenised text: model inputs plus what maps tokens back to characters."""
    input_ids: list[int]
    attention_mask: list[int]
    token_type_ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]          # character span of each token in the text
    word_ids: list[int | None]              # pre-tokenizer word of each token (None: special)

    def feature(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "token_type_ids": self.token_type_ids}


def read_texts(path: str | Path, text_column: str | None = None) -> list[Text]:
    """Texts of a file: a TSV/CSV/JSONL table's text column (found as for classification data),
    or any other file one text per line (blank lines skipped, line numbers kept)."""
    path = Path(path)
    if path.suffix.lower() in TABLE_SUFFIXES:
        rows = read_classification(path, text_column=text_column, require_labels=False)
        return [Text(r.text, r.line) for r in rows]
    if text_column is not None:
        raise PlmkitError(f"{path}: --text-column needs a .tsv, .csv or .jsonl file (a plain text file "
                          "has one text per line)")
    texts = [Text(ln, i) for i, ln in enumerate(read_lines(path), 1) if ln.strip()]
    return texts


def load_for_analysis(path: str | Path) -> tuple[PlmModel, Tokenizer]:
    """Model (fp32, eval mode, on the GPU when there is one) and tokenizer of a checkpoint.
    The analysis views read hidden states and move weights: an ONNX export has neither."""
    model = load(path, needs_torch="the analysis views").eval()
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return model, load_tokenizer(path)


def max_tokens(model: PlmModel, requested: int) -> int:
    """The requested length, capped at what the model's position embeddings allow."""
    if requested < 2:
        raise PlmkitError(f"--max-length must be at least 2, got {requested}")
    return min(requested, model.config.max_position)


def encode_texts(tok: Tokenizer, texts: Sequence[str], max_length: int) -> list[Encoded]:
    """Tokenise with the model's special tokens, truncated to ``max_length`` tokens."""
    tok = configured(tok, max_length)
    return [Encoded(e.ids, e.attention_mask, e.type_ids, e.tokens, [tuple(o) for o in e.offsets],
                    e.word_ids) for e in tok.encode_batch(list(texts))]


def resolve_layer(model: PlmModel, layer: int) -> int:
    """A layer index in 0..L (0 = embedding output), from a Python-style index."""
    n = model.config.num_layers
    if not -(n + 1) <= layer <= n:
        raise PlmkitError(f"--layer {layer} is out of range: the model has layers 0..{n} "
                          f"(0 = embedding output; -1 = last)")
    return layer % (n + 1)


def layer_states(model: PlmModel, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
    """L+1 x [B, T, H]: the embedding output then every block's output, from the backbone only
    (a task or MLM head would only cost time here)."""
    out = model.backbone(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                         output_hidden_states=True)
    return out.hidden_states


def forward_layers(model: PlmModel, features: Sequence[dict[str, Any]], pad: int, layers: Sequence[int], *,
                   batch_size: int, progress: str | None = None) -> Iterator[tuple[int, Tensor]]:
    """Yield (feature index, [len(layers), T_i, H] float32 on the CPU), in length order.

    Runs in fp32 (these vectors are compared by cosine, and bf16 would add noise of ~1e-2) and
    puts the model in eval mode: dropout would make the vectors random.
    """
    model.eval()
    lengths = [len(f["input_ids"]) for f in features]
    batches = length_bucketed_batches(lengths, batch_size, seed=0, shuffle=False)
    device = next(model.parameters()).device
    bar = tqdm(total=len(lengths), desc=progress, unit="text", dynamic_ncols=True,
               disable=progress is None or not progress_enabled())
    try:
        with torch.no_grad():
            for idx in batches:
                batch = {k: v.to(device) for k, v in collate([features[i] for i in idx], pad).items()}
                states = layer_states(model, batch)
                picked = torch.stack([states[layer] for layer in layers], 1).float().cpu()  # [B, n, T, H]
                for row, i in enumerate(idx):
                    yield i, picked[row, :, :lengths[i]]
                bar.update(len(idx))
    finally:
        bar.close()


def pool(tokens: Tensor, pooling: str, causal: bool) -> Tensor:
    """[T, H] token vectors of one text -> [H] sentence vector."""
    if pooling == "mean":
        return tokens.mean(0)
    if pooling == "cls":
        return tokens[-1] if causal else tokens[0]      # a decoder's last token has seen the whole text
    raise PlmkitError(f"unknown pooling {pooling!r} (choose {', '.join(POOLINGS)})")


@dataclass
class Embeddings:
    sentences: Tensor               # [N, H] float32
    tokens: list[Tensor]            # N x [T_i, H] float32 (empty when not kept)
    encoded: list[Encoded]
    layer: int                      # resolved, 0..L


def embed_texts(model: PlmModel, tok: Tokenizer, texts: Sequence[str], *, pooling: str = "mean",
                layer: int = -1, normalize: bool = False, keep_tokens: bool = False,
                batch_size: int = 32, max_length: int = 512, progress: str | None = None) -> Embeddings:
    """Sentence vectors (and optionally token vectors) of ``texts`` at one layer of ``model``."""
    if pooling not in POOLINGS:
        raise PlmkitError(f"unknown pooling {pooling!r} (choose {', '.join(POOLINGS)})")
    if batch_size < 1:
        raise PlmkitError(f"--batch-size must be >= 1, got {batch_size}")
    layer = resolve_layer(model, layer)
    encoded = encode_texts(tok, texts, max_tokens(model, max_length))
    H = model.config.hidden_size
    sentences = torch.empty(len(encoded), H)
    tokens: list[Tensor] = [torch.empty(0, H)] * len(encoded)
    for i, states in forward_layers(model, [e.feature() for e in encoded], pad_id(tok), [layer],
                                    batch_size=batch_size, progress=progress):
        sentences[i] = pool(states[0], pooling, model.config.causal)
        if keep_tokens:
            tokens[i] = states[0].clone()     # a view would keep the whole batch tensor alive
    if not keep_tokens:
        tokens = []
    if normalize:
        sentences = torch.nn.functional.normalize(sentences, dim=-1)
        tokens = [torch.nn.functional.normalize(t, dim=-1) for t in tokens]
    return Embeddings(sentences, tokens, encoded, layer)
