"""Pre-train BERT (MLM, MLM+NSP), ALBERT (MLM+SOP) or GPT (causal LM) on raw text, from scratch or
continuing a checkpoint (``--init DIR``, see ``tasks/pretrain.py``).

Reads top to bottom: check inputs (the --init checkpoint loaded and checked here) -> tokenizer
(the checkpoint's, given, or trained and stored in the run) -> token shards (cached; the share
of unknown tokens reported) -> model (a size preset, its token embeddings from the corpus's
PPMI-SVD vectors with --embedding-init ppmi; or the checkpoint's) -> batch sources ->
the shared training loop -> final checkpoint in --out. The run directory also holds resumable
checkpoints (``checkpoints/step-N``), ``metrics.jsonl`` and the resolved ``pretrain.yaml``.

``--recipe budget`` is a named set of defaults for pre-training from scratch in little time
(Cramming, Geiping & Goldstein 2022); flags and --config override each of its settings.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tokenizers import Tokenizer

from ..config import compose, dump_yaml, from_recipe, load_yaml, option, pick, to_dict
from ..data.corpus import check_text_files
from ..data.pretrain import make_batch_source
from ..data.shards import build_shards, open_shards
from ..errors import PlmkitError
from ..eval.lm import evaluate_lm, flops_per_token
from ..io import atomic_dir, atomic_write_text
from ..models.checkpoint import write_checkpoint_files
from ..models.config import ARCHS, BERT_PRESETS, Arch, config_to_dict, preset
from ..models.model import PlmModel
from ..models.rtd import RTDPretrainer, discriminator_config
from ..tokenizer import load_tokenizer, report_unknown, save_tokenizer, special_ids, train_tokenizer
from ..precision import autocast_dtype
from ..train import RESUME_FREE, Hooks, TrainArgs, check_args, dropped_unless_resumable, measure_peak_flops, train
from ..train import dist as D
from ..train.state import load_safetensors
from ..tasks import pretrain as I

# what the options left unset (None, so that "given" shows) mean for a new model
NEW_MODEL = {"arch": "bert", "size": "mini", "vocab_size": 16000, "embedding_init": "random", "split_cjk": True}
RUN_FILE = "pretrain.yaml"


@dataclass
class _Options:
    corpus: list[str] = option(help="raw UTF-8 text files; documents are blank-line separated")
    out: str = option(help="run / output directory")
    init: str | None = option(None, help="continue pre-training this checkpoint (plmkit or HF directory): its "
                              "architecture and tokenizer are kept, and its MLM / LM head when it has one")
    add_tokens: str | None = option(None, help="with --init: a file of new words (one per line) to add to the "
                                    "vocabulary; each new row starts as the mean of its old sub-word pieces")
    # the choices are ARCHS' live keys: a record registered later is an --arch too
    arch: str | None = option(None, help="model family of a new model (default bert); albert = factorised "
                              "embeddings + one shared layer, exports to HF's ALBERT", choices=ARCHS.keys())
    size: str | None = option(None, help="size preset of a new model (default mini)", choices=list(BERT_PRESETS))
    objective: str | None = option(None, help="mlm, mlm+nsp, mlm+sop (encoders), rtd (bert: ELECTRA's replaced-token "
                                   "detection; the discriminator is saved, in ELECTRA's layout, its generator in "
                                   "OUT/generator) or clm (gpt); default: mlm+nsp (bert), mlm+sop (albert), clm "
                                   "(gpt), or the --init checkpoint's own; an mlm-only new BERT has no pooler "
                                   "(nothing would train it)", choices=["mlm", "mlm+nsp", "mlm+sop", "rtd", "clm"])
    pre_ln: bool | None = option(None, help="encoders: LayerNorm before each sub-layer (GPT-2's layout, the usual "
                                 "choice for high learning rates); the model cannot be exported to the HF "
                                 "BERT / ALBERT layout")
    embedding_size: int | None = option(None, help="encoders: token embeddings of this width, projected to the "
                                        "hidden size (ALBERT's factorised embeddings; --arch albert: 128, 64 "
                                        "for tiny)", ge=1)
    share_layers: bool | None = option(None, help="encoders: one layer's weights reused by every layer "
                                       "(ALBERT; on for --arch albert)")
    dropout: float | None = option(None, help="hidden and attention dropout (default: the preset's, or the "
                                   "--init checkpoint's); fine-tuning inherits it", ge=0, lt=1)
    embedding_init: str | None = option(None, help="a new model's token embeddings: random (the default) or ppmi: "
                                        "word vectors from the corpus's co-occurrence counts (PPMI + SVD, "
                                        "seconds; --recipe budget's choice, measured)",
                                        choices=["random", "ppmi"])
    tokenizer: str | None = option(None, help="tokenizer or checkpoint dir; default: train one on the corpus "
                                   "(with --init: the checkpoint's)")
    vocab_size: int | None = option(None, help="vocabulary size when training the tokenizer (default 16000)", ge=1)
    split_cjk: bool | None = option(None, help="when training a WordPiece tokenizer: each Chinese/Japanese "
                                    "character a word of its own (BERT's rule, the default); --recipe budget: "
                                    "off, multi-character pieces (words), measured")
    seq_len: int = option(128, help="tokens per sequence", ge=8)
    batch_size: int = option(32, help="sequences per micro-batch (per rank)", ge=1)
    mlm_prob: float = option(0.15, help="fraction of tokens selected for MLM", gt=0, lt=1)
    whole_word_mask: bool = option(False, help="mask whole words (WordPiece)")
    short_seq_prob: float = option(0.1, help="NSP/SOP: probability of a shorter target length", ge=0, le=1)
    doc_per_file: bool = option(False, help="each file is one document")
    val_fraction: float = option(0.01, help="documents held out for validation", ge=0, lt=1)
    eval_batches: int = option(20, help="validation batches per evaluation (0: no validation)", ge=0)
    cache_dir: str = option(".plmkit_cache", help="token shard cache directory")
    overwrite: bool = option(False, help="delete an existing --out and start over")


# Training options (plmkit/train/args.py) with another default for pre-training.
TRAIN_DEFAULTS = {"warmup_ratio": 0.06, "eval_every": 200, "save_every": 200}
# Named sets of defaults (--recipe NAME; flags and --config override each). "budget": pre-training
# from scratch in little time, after Cramming (Geiping & Goldstein 2022): no dropout, pre-LN (stable
# at a higher lr), MLM without NSP (its sentence pairs cost time and help little), 128-token
# sequences, a large effective batch through accumulation (32 x 4 = 128 sequences: against 32 x 1,
# it learns MLM more slowly in 30 CPU minutes but fine-tuned better, benchmarks/RESULTS.md), lr 1e-3,
# and, given only --budget, the schedule in wall-clock time (warmup, then linear decay to 0 when the
# budget ends). Sparse prediction (the vocabulary projection only on masked tokens) is always on.
# Token embeddings start at the corpus's PPMI-SVD word vectors (seconds; alone, +4.0 and +5.1 points
# in two draws at 1,000 SST-2 labels over random weights, +2.2 on ChnSentiCorp, benchmarks/RESULTS.md),
# which are better the more pieces are whole words: a tokenizer of 16,000 pieces (8,000: 0.725 on
# SST-2, 16,000: 0.732, 32,000: 0.729) whose pieces may span Chinese characters (ChnSentiCorp 0.747
# with one piece per character, 0.798 with words; benchmarks/RESULTS.md, 2026-12-07).
RECIPES = {"budget": {"dropout": 0.0, "pre_ln": True, "objective": "mlm", "embedding_init": "ppmi",
                      "vocab_size": 16000, "split_cjk": False, "mlm_prob": 0.15, "seq_len": 128, "batch_size": 32,
                      "grad_accum": 4,
                      "lr": 1e-3, "schedule": "linear", "warmup_ratio": 0.06, "betas": [0.9, 0.98]}}
Config = compose("Config", __name__, _Options, TrainArgs, defaults=TRAIN_DEFAULTS, omit=("layerwise_lr_decay",),
                 recipes=RECIPES)


def check_inputs(cfg: Config, pending: Callable[[str], bool]) -> None:
    """``plmkit run`` calls this before any stage: the corpus files are UTF-8 text."""
    ready = [p for p in cfg.corpus if not pending(p)]
    if ready:
        check_text_files(ready)


def run(cfg: Config) -> int:
    info = D.init_distributed()
    try:
        return _run(cfg, info)
    finally:
        D.cleanup(info)


def _run(cfg: Config, info: D.DistInfo) -> int:
    # Everything that can fail on bad input happens before --out is touched.
    recipe_keys = from_recipe(cfg)
    cfg = _settle_recipe(cfg, info, recipe_keys)
    parent = I.load_parent(cfg) if cfg.init else None
    if parent:
        cfg = _settle_recipe(cfg, info, recipe_keys, parent)
    task, args = _check_request(cfg, info, parent)
    cfg = _settled(cfg, task)
    out = Path(cfg.out)
    check_text_files(cfg.corpus)
    _check_out_dir(out, cfg)
    tok = parent.tokenizer if parent else _tokenizer(cfg, out, info)
    shard_dir = _shards(cfg, tok, task, info)
    if info.is_main:
        report_unknown(tok, open_shards(shard_dir, "train"), cfg.corpus,
                       "; --add-tokens can add words" if cfg.init else "")
    model, said = _model(cfg, task, tok, parent, shard_dir)
    n_params = model.num_parameters()
    if info.is_main:
        mb = sum(Path(p).stat().st_size for p in cfg.corpus) / 1e6
        if parent:
            added = f"; {len(parent.added)} tokens added" if parent.added else ""
            print(f"continuing {cfg.init} ({model.config.layout}, {n_params / 1e6:.1f}M parameters) with {task} "
                  f"on {mb:.1f} MB of text: {said}{added}")
        else:
            print(f"pre-training {_arch(cfg)}-{cfg.size or NEW_MODEL['size']} ({n_params / 1e6:.1f}M parameters) "
                  f"with {task} on {mb:.1f} MB of text{': ' + said if said else ''}")

    common = dict(seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed,
                  short_seq_prob=cfg.short_seq_prob, mlm_prob=cfg.mlm_prob, whole_word=cfg.whole_word_mask,
                  eos=special_ids(tok).get("eos"))
    source = make_batch_source(task, open_shards(shard_dir, "train"), tok, rank=info.rank,
                               world_size=info.world_size, **common)
    eval_fn = _eval_fn(task, shard_dir, tok, cfg, common)
    if info.is_main:
        _start_run_dir(out, cfg, tok)
    D.barrier(info)
    fingerprint = {"model": config_to_dict(model.config), "task": task, "shards": shard_dir.name,
                   "seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "mlm_prob": cfg.mlm_prob,
                   "whole_word_mask": cfg.whole_word_mask}
    if parent:
        fingerprint["init"] = str(parent.path.resolve())
    frozen = "backbone.pooler." if parent and I.frozen_pooler(model, task) else None
    with dropped_unless_resumable(out, enabled=not cfg.resume):
        # --patience watches the validation loss (the best weights also go to out/best)
        result = train(model, source, args, out, Hooks(
            eval_fn=eval_fn, fingerprint=fingerprint,
            metric="loss" if args.patience and eval_fn else None, greater_is_better=False,
            trainable=(lambda name: not name.startswith(frozen)) if frozen else None,
            flops_per_token=flops_per_token(model, cfg.seq_len, cfg.mlm_prob),
            peak_flops=measure_peak_flops() if info.is_main else None))
    if info.is_main:
        if result.sharded:  # FSDP left `model` sharded; its full weights are in the last checkpoint
            model = PlmModel(model.config, task)
            load_safetensors(model, result.last_checkpoint)
        metrics = {"steps": result.steps, "stopped": result.stopped_reason, **result.last_metrics}
        if result.resumes:
            metrics["resumes"] = result.resumes
        _write_final(model, tok, out, cfg, metrics, parent)
        shown = "".join(f", {k} {v:.4g}" for k, v in result.last_metrics.items())
        print(f"done: {result.steps} steps ({result.stopped_reason}){shown}; model in {out}")
    return 0


def _arch(cfg: Config) -> str:
    return cfg.arch or NEW_MODEL["arch"]


def _record(cfg: Config) -> Arch:
    """The architecture record of a new model (models/config.py ``ARCHS``)."""
    return ARCHS[_arch(cfg)]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _settle_recipe(cfg: Config, info: D.DistInfo, recipe_keys: frozenset[str],
                   parent: I.Parent | None = None) -> Config:
    """A recipe's settings that do not apply to this run are dropped, saying so: architecture
    settings with --init (the checkpoint's architecture is kept), and an objective or a setting the
    architecture lacks or fixes (a GPT is always pre-LN and trains with clm), and the vocabulary size
    when --tokenizer is given. Called before the --init checkpoint is read, and again with it (its
    kind decides the objective)."""
    family = (parent.objectives if parent else None) if cfg.init else _record(cfg).objectives
    fixed = () if cfg.init else (*_record(cfg).fixed, *_record(cfg).forbidden)
    decided = f"--init {cfg.init} decides" if cfg.init else f"not for --arch {_arch(cfg)}"
    dropped: dict[str, tuple[Any, str]] = {}       # name -> (the recipe's value, why it is not applied)
    for name in sorted(recipe_keys):
        value = getattr(cfg, name)
        if value is None:
            continue
        if (cfg.init and name in I.ARCH_OPTIONS) or name in fixed or \
                (name == "objective" and family is not None and value not in family):
            dropped[name] = (value, decided)
        elif name in ("vocab_size", "split_cjk") and cfg.tokenizer:
            dropped[name] = (value, f"--tokenizer {cfg.tokenizer} is given")
    if not dropped:
        return cfg
    if info.is_main:
        for why in dict.fromkeys(w for _, w in dropped.values()):
            shown = ", ".join(f"{k} {v}" for k, (v, w) in dropped.items() if w == why)
            print(f"note: --recipe {cfg.recipe}: {shown} not applied ({why})")
    return dataclasses.replace(cfg, **{k: None for k in dropped})


def _check_request(cfg: Config, info: D.DistInfo, parent: I.Parent | None) -> tuple[str, TrainArgs]:
    """Settings that are wrong whatever the data: fail before reading or writing anything."""
    if parent:
        task = cfg.objective or parent.default_objective()
        I.check_objective(task, parent)
    else:
        arch, record = _arch(cfg), _record(cfg)
        task = cfg.objective or record.objectives[0]
        if cfg.add_tokens:
            raise PlmkitError("--add-tokens grows the vocabulary of an --init checkpoint; a new model's "
                              "tokenizer is trained on the corpus (or given with --tokenizer)")
        if task not in record.objectives:
            raise PlmkitError(f"objective '{task}' does not fit arch '{arch}' (choose {', '.join(record.objectives)})")
        _check_arch_options(cfg, arch, record)
    args = pick(TrainArgs, cfg)
    check_args(args)
    if task == "rtd" and args.fsdp:
        raise PlmkitError("--objective rtd trains two models with shared embeddings: --fsdp does not shard it; "
                          "use DDP (torchrun without --fsdp)")
    autocast_dtype(args.precision, D.default_device(info))      # bf16 where unsupported: refused now
    return task, args


def _check_arch_options(cfg: Config, arch: str, record: Arch) -> None:
    """Options the architecture fixes (a GPT is always pre-LN) or has no use for (a GPT has no
    factorised embeddings nor shared layers) are refused when given."""
    fixed = [name for name in record.fixed if getattr(cfg, name) is not None]
    if fixed:
        shown = ", ".join(f"{_flag(n)} ({n} = {record.fixed[n]})" for n in fixed)
        raise PlmkitError(f"--arch {arch} fixes {shown}; leave {'it' if len(fixed) == 1 else 'them'} out")
    given = [_flag(name) for name in record.forbidden if getattr(cfg, name) is not None]
    if given:
        others = [a for a, r in ARCHS.items() if not set(record.forbidden) & set(r.forbidden)]
        raise PlmkitError(f"{' and '.join(given)} {'is not an option' if len(given) == 1 else 'are not options'} "
                          f"of --arch {arch} (only of --arch {' or '.join(others)})")


def _settled(cfg: Config, task: str) -> Config:
    """``cfg`` with the defaults it leaves open filled in, as pretrain.yaml records the run: the
    objective, and for a new model its arch, size, pre-LN and tokenizer vocabulary size (with
    --init the checkpoint decides those, and they stay unset)."""
    if cfg.init:
        return dataclasses.replace(cfg, objective=task)
    arch, record = _arch(cfg), _record(cfg)
    # an option the architecture fixes stays unset (null in pretrain.yaml); pre-LN is the preset's otherwise
    pre_ln = cfg.pre_ln if cfg.pre_ln is not None or "pre_ln" in record.fixed else record.defaults.pre_ln
    split_cjk = cfg.split_cjk      # only a WordPiece trained here has the choice
    if split_cjk is None and not cfg.tokenizer and "split_cjk" not in record.forbidden:
        split_cjk = NEW_MODEL["split_cjk"]
    return dataclasses.replace(cfg, objective=task, arch=arch, size=cfg.size or NEW_MODEL["size"], pre_ln=pre_ln,
                               embedding_init=cfg.embedding_init or NEW_MODEL["embedding_init"],
                               vocab_size=cfg.vocab_size or (NEW_MODEL["vocab_size"] if not cfg.tokenizer else None),
                               split_cjk=split_cjk)


def _model(cfg: Config, task: str, tok: Tokenizer, parent: I.Parent | None,
           shard_dir: Path) -> tuple[PlmModel | RTDPretrainer, str]:
    """The model training starts from: the --init checkpoint's, or a new one from a size preset."""
    if parent:
        return I.build_model(parent, task, cfg.dropout, cfg.seed, open_shards(shard_dir, "train"))
    arch, record = _arch(cfg), _record(cfg)
    overrides: dict[str, Any] = {}
    for name in ("pre_ln", "embedding_size", "share_layers"):
        if getattr(cfg, name) is not None:
            overrides[name] = getattr(cfg, name)
    if task in ("mlm", "rtd"):   # no NSP/SOP: the pooler would get no gradient (and DDP would fail on it)
        overrides["use_pooler"] = False
    if cfg.dropout is not None:
        overrides.update(hidden_dropout=cfg.dropout, attention_dropout=cfg.dropout)
    model_cfg = preset(arch, cfg.size or NEW_MODEL["size"], vocab_size=tok.get_vocab_size(with_added_tokens=True),
                       max_position=max(cfg.seq_len, record.positions), **overrides)
    if not model_cfg.causal and tok.token_to_id("[PAD]") is not None:
        model_cfg.pad_token_id = tok.token_to_id("[PAD]")
    torch.manual_seed(cfg.seed)
    model = RTDPretrainer.new(discriminator_config(model_cfg)) if task == "rtd" else PlmModel(model_cfg, task)
    if cfg.embedding_init != "ppmi":
        return model, ""
    t0 = time.time()
    rows = I.ppmi_embeddings(model, open_shards(shard_dir, "train"))
    return model, (f"its token embeddings start at the corpus's PPMI-SVD word vectors ({rows:,} of "
                   f"{model_cfg.vocab_size:,} rows, {time.time() - t0:.0f} s)")


def _check_out_dir(out: Path, cfg: Config) -> None:
    """A new run needs an empty --out (or --overwrite); --resume needs the same run."""
    run_file = out / RUN_FILE
    busy = out.exists() and any(out.iterdir())
    if cfg.resume and run_file.is_file():
        _check_same_run(run_file, cfg)
    elif cfg.resume and busy:
        raise PlmkitError(f"{out}: not a pre-training run directory (no {RUN_FILE}); cannot --resume")
    elif busy and not cfg.overwrite:
        raise PlmkitError(f"{out}: output directory exists (pass --resume to continue that run or "
                          "--overwrite to start over)")


def _start_run_dir(out: Path, cfg: Config, tok) -> None:
    """Create (or keep, when resuming) the run directory with its config and tokenizer."""
    if not cfg.resume and out.exists():
        shutil.rmtree(out)                          # --overwrite, checked above
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "tokenizer" / "tokenizer.json").is_file():
        with atomic_dir(out / "tokenizer", overwrite=True) as tmp:
            save_tokenizer(tok, tmp)
    if not (out / RUN_FILE).is_file():
        atomic_write_text(out / RUN_FILE, dump_yaml(cfg))


# Settings that may change when resuming: the training options the loop allows to change
# (lr, precision, length, how often to evaluate/save/log), and how to evaluate and cache.
RESUMABLE = RESUME_FREE | {"eval_batches", "overwrite", "cache_dir"}
PATHS = ("corpus", "out", "tokenizer", "init", "add_tokens")     # compared as resolved paths: ./run is run


def _check_same_run(run_file: Path, cfg: Config) -> None:
    saved, now = _resolved(load_yaml(run_file)), _resolved(to_dict(cfg))
    diff = {k: (saved.get(k), now[k]) for k in now if k not in RESUMABLE and saved.get(k) != now[k]}
    if diff:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise PlmkitError(f"{run_file}: --resume with a changed configuration ({shown})")


def _resolved(values: dict[str, Any]) -> dict[str, Any]:
    def norm(p: Any) -> Any:
        return str(Path(p).resolve()) if isinstance(p, str) else p
    return {k: ([norm(p) for p in v] if isinstance(v, list) else norm(v)) if k in PATHS else v
            for k, v in values.items()}


def _tokenizer(cfg: Config, out: Path, info: D.DistInfo) -> Tokenizer:
    """The run's tokenizer: given, stored by the run being resumed, or trained on the corpus."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    stored = out / "tokenizer"
    if cfg.resume and (stored / "tokenizer.json").is_file():
        return load_tokenizer(stored)
    text = None
    if info.is_main:
        # cfg is settled (``_settled``): the vocabulary size is set, and split_cjk is None only where the
        # architecture has no such choice (byte-level BPE)
        choice = {} if cfg.split_cjk is None else {"split_cjk": cfg.split_cjk}
        text = train_tokenizer(cfg.corpus, kind=_record(cfg).tokenizer, vocab_size=cfg.vocab_size, **choice).to_str()
    return Tokenizer.from_str(D.broadcast_object(text, info))   # every rank gets rank 0's


def _shards(cfg: Config, tok, task: str, info: D.DistInfo) -> Path:
    kw = dict(doc_per_file=cfg.doc_per_file, val_fraction=cfg.val_fraction, newlines=task == "clm")
    if info.is_main:
        build_shards(cfg.corpus, tok, cfg.cache_dir, **kw)
    D.barrier(info)
    return build_shards(cfg.corpus, tok, cfg.cache_dir, **kw)    # a cache hit on every rank


def _eval_fn(task: str, shard_dir: Path, tok, cfg: Config, common: dict[str, Any]):
    """Mean validation loss (and MLM/NSP accuracy, perplexity) over fixed batches."""
    val = open_shards(shard_dir, "val")
    if val.n_docs == 0 or cfg.eval_batches == 0:
        return None
    batch_size = min(cfg.batch_size, 16)
    while True:  # a small validation split gets smaller batches rather than no evaluation
        try:
            source = make_batch_source(task, val, tok, shuffle=False, loop=False,
                                       **{**common, "batch_size": batch_size})
            return lambda model: evaluate_lm(model, source, cfg.eval_batches)
        except PlmkitError as e:
            if batch_size == 1:
                print(f"note: no validation ({e})")
                return None
            batch_size //= 2


def _write_final(model: PlmModel, tok, out: Path, cfg: Config, metrics: dict[str, Any],
                 parent: I.Parent | None) -> None:
    """Put the final model files into ``out`` (config.json moved last: loadable only when whole).
    The lineage names the --init checkpoint as the parent."""
    meta = {"stage": "pretrain", "parent": str(parent.path.resolve()) if parent else None, "config": to_dict(cfg),
            "metrics": metrics}
    if parent:
        meta["init"] = {"parent_task": parent.model.task, "added_tokens": parent.added,
                        "already_in_vocabulary": parent.known}
    staging = out / ".final"
    shutil.rmtree(staging, ignore_errors=True)
    with atomic_dir(staging, overwrite=True) as tmp:
        if isinstance(model, RTDPretrainer):     # the discriminator is the model; the generator is kept beside
            (tmp / "generator").mkdir()
            write_checkpoint_files(model.generator, tmp / "generator", tok, {**meta, "role": "rtd generator"})
            model = model.discriminator
        write_checkpoint_files(model, tmp, tok, meta)
    names = sorted(p.name for p in staging.iterdir())
    for name in [n for n in names if n != "config.json"] + ["config.json"]:
        (staging / name).replace(out / name)
    staging.rmdir()

