"""The sentence-transformers layout: write one (``plmkit export --format sentence-transformers``)
and read the settings of one (fine-tuning all-MiniLM-L6-v2 keeps its mean pooling).

    modules.json                 [Transformer (the directory itself), Pooling, Normalize (optional)]
    sentence_bert_config.json    {"max_seq_length", "do_lower_case"}
    1_Pooling/config.json        {"word_embedding_dimension", "pooling_mode_mean_tokens", ...}
    2_Normalize/                 (empty: the module has no settings)
    config_sentence_transformers.json   {"similarity_fn_name": "cosine", ...}
    config.json, model.safetensors, tokenizer files: the Hugging Face layout of the backbone

This is the layout sentence-transformers 2.x wrote and every later version reads, so
``SentenceTransformer(dir)`` gives the vectors the embed head gives: mean (or [CLS]) pooling of
the last hidden states over the real tokens, then unit length when the model normalises.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from .. import __version__
from ..errors import PlmkitError
from ..io import atomic_dir, read_json, write_json
from .checkpoint import write_hf_files
from .model import PlmModel

TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"
MODES = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}
OTHER_MODES = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")


def export_sentence_transformers(model: PlmModel, out_dir: str | Path, tokenizer: Tokenizer | None,
                                 max_seq_length: int, overwrite: bool = False) -> Path:
    """An embed model (or a bare encoder: mean pooling, not normalised) in the layout above."""
    if model.config.causal:
        raise PlmkitError("the sentence-transformers export is for encoders (a decoder has no sentence pooling "
                          "here)")
    if model.task not in ("embed", "base"):
        raise PlmkitError(f"a '{model.task}' model is not a sentence encoder: fine-tune it with --task embed "
                          "first (or export a bare encoder)")
    if tokenizer is None:
        raise PlmkitError("the sentence-transformers export needs the model's tokenizer beside it")
    pooling = model.head_config.get("pooling", "mean") if model.task == "embed" else "mean"
    normalize = bool(model.head_config.get("normalize", True)) if model.task == "embed" else False
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_hf_files(model, tmp, tokenizer)
        modules = [{"idx": 0, "name": "0", "path": "", "type": TRANSFORMER},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": POOLING}]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": NORMALIZE})
            (tmp / "2_Normalize").mkdir()
        write_json(tmp / "modules.json", modules)
        write_json(tmp / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
        (tmp / "1_Pooling").mkdir()
        write_json(tmp / "1_Pooling" / "config.json", {
            "word_embedding_dimension": model.config.hidden_size,
            **{flag: mode == pooling for mode, flag in MODES.items()}, **dict.fromkeys(OTHER_MODES, False)})
        write_json(tmp / "config_sentence_transformers.json", {
            "__version__": {"plmkit": __version__}, "prompts": {}, "default_prompt_name": None,
            "similarity_fn_name": "cosine"})
    return Path(out_dir)


def st_settings(path: str | Path) -> dict[str, Any] | None:
    """{"pooling": "mean" | "cls", "normalize": bool, "max_seq_length": int | None} of a
    sentence-transformers directory, None when ``path`` is not one; a pooling plmkit cannot compute
    (max, weighted) is a clear error."""
    path = Path(path)
    if not (path / "modules.json").is_file():
        return None
    modules = read_json(path / "modules.json", object_only=False)
    if not isinstance(modules, list):
        raise PlmkitError(f"{path / 'modules.json'}: expected a list of modules")
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    if "Pooling" not in kinds:
        return None
    config = path / str(kinds["Pooling"].get("path", "")) / "config.json"
    settings = read_json(config) if config.is_file() else {}
    given = settings.get("pooling_mode")             # sentence-transformers >= 6: "mean" or a list of modes
    if given is not None:
        modes = [given] if isinstance(given, str) else list(given)
    else:
        modes = [mode for mode, flag in MODES.items() if settings.get(flag)]
        modes += [flag for flag in OTHER_MODES if settings.get(flag)]
    if len(modes) != 1 or modes[0] not in MODES:
        raise PlmkitError(f"{config}: plmkit reads mean or [CLS] pooling, one of them; this model pools "
                          f"otherwise ({', '.join(map(str, modes)) or 'no mode set'})")
    bert = path / "sentence_bert_config.json"
    length = read_json(bert).get("max_seq_length") if bert.is_file() else None
    return {"pooling": modes[0], "normalize": "Normalize" in kinds,
            "max_seq_length": int(length) if isinstance(length, int) and length > 0 else None}
