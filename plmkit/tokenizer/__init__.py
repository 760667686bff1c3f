"""Tokenizers: train (WordPiece for BERT, byte-level BPE for GPT), save, load."""
from __future__ import annotations

from ..data.corpus import check_text_files
from .load import (INPUT_KEYS, has_tokenizer, load_tokenizer, pad_id, report_unknown, save_tokenizer, special_ids,
                   tokenizer_kind, unk_id)
from .train import KINDS, iter_line_batches, train_tokenizer

__all__ = ["INPUT_KEYS", "KINDS", "check_text_files", "has_tokenizer", "iter_line_batches", "load_tokenizer", "pad_id",
           "save_tokenizer", "report_unknown", "special_ids", "tokenizer_kind", "train_tokenizer", "unk_id"]
