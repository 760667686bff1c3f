"""The stages: one module per command, each a ``Config`` dataclass and a top-to-bottom ``run(cfg)``.

``COMMANDS`` names them; the CLI (``plmkit.cli``) and the recipe runner (``recipe.py``) read it.
Nothing else is imported here, so ``plmkit --help`` loads no stage.
"""
from __future__ import annotations

# command -> (stage module, one-line help). Two-word commands are "group sub".
COMMANDS: dict[str, tuple[str, str]] = {
    "tokenizer train": ("plmkit.stages.tokenizer", "train a WordPiece or byte-level BPE tokenizer"),
    "pretrain": ("plmkit.stages.pretrain", "pre-train BERT (MLM, NSP/SOP), ALBERT or GPT (causal LM) on raw text, "
                 "or continue a checkpoint (--init)"),
    "generate": ("plmkit.stages.generate", "generate text from a decoder model"),
    "eval-lm": ("plmkit.stages.eval_lm", "perplexity (GPT) or MLM loss/accuracy (BERT) on a text file"),
    "finetune": ("plmkit.stages.finetune", "fine-tune a model on a task"),
    "evaluate": ("plmkit.stages.evaluate", "evaluate a fine-tuned model, metrics as JSON"),
    "predict": ("plmkit.stages.predict", "predict labels for a file, JSONL out"),
    "merge": ("plmkit.stages.merge", "fold LoRA/adapter weights into the parent model"),
    "distill": ("plmkit.stages.distill", "distil a teacher into a smaller student"),
    "prune": ("plmkit.stages.prune", "prune heads/FFN neurons (structured) or weights (unstructured)"),
    "quantize": ("plmkit.stages.quantize", "INT8-quantize a model through ONNX Runtime or OpenVINO"),
    "compress": ("plmkit.stages.compress", "distil, prune and quantize a fine-tuned model: the smallest (or fastest) "
                 "candidate within an accuracy budget, chosen on a dev slice (the recommended path)"),
    "bench": ("plmkit.stages.bench", "benchmark model variants: size, latency, throughput, metric"),
    "info": ("plmkit.stages.info", "show a checkpoint's architecture, size and lineage"),
    "export": ("plmkit.stages.export", "export a checkpoint (hf layout or onnx)"),
    "run": ("plmkit.stages.recipe", "run a recipe: stages from corpus to compressed model, skipping unchanged ones"),
    "report": ("plmkit.stages.report", "write a self-contained HTML report of a run"),
    "embed": ("plmkit.stages.embed", "token and sentence vectors to .npy + JSONL"),
    "similarity": ("plmkit.stages.similarity", "contextual cosine similarity of one word across sentences"),
    "landscape": ("plmkit.stages.landscape", "loss surface around a model along random directions"),
    "demo": ("plmkit.stages.demo", "run the built-in end-to-end demo"),
    "serve": ("plmkit.stages.serve", "serve a model over HTTP"),
}
