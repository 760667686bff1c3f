"""Knowledge distillation: losses, student construction, the teacher+student module, a logit cache.

Shapes: B batch, T tokens, C classes, H hidden (H_s student, H_t teacher), h heads, L layers.

The loss (Hinton et al. 2015, as in the seed)::

    alpha * CE(student, labels) + (1 - alpha) * KL(p_t || p_s) * T^2,   p = softmax(logits / T)

computed as ``F.kl_div(log_softmax(s / T), softmax(t / T), reduction="batchmean")``: torch's
``kl_div(input, target)`` is KL(target || input), i.e. the teacher's distribution is the
reference and the student is pulled towards it (the seed's ``KL(softmax(s/T) || softmax(t/T))``
names the two arguments of ``kl_div``, not the direction of the divergence). T^2 keeps the
soft-target gradients on the scale of the hard-label ones when T changes.

Optional intermediate losses (TinyBERT, Jiao et al. 2020), each with its own weight:
hidden states (MSE, through one learned ``nn.Linear(H_s, H_t)`` when the widths differ),
attention distributions (KL per head when the mapped layers have the same number of heads,
else KL of the head-averaged distributions) and the embedding layer output (MSE, with its own
projection). Student layer i is matched to teacher layer ``layer_map[i]``.

Sentence embeddings (head ``embed``) have vectors, not logits: the student's sentence vectors of
every text of a batch (anchors, positives, negatives) are pulled to the teacher's by squared
distance (``vector_loss`` mse: summed over dimensions, averaged over texts; on unit vectors that is
2 - 2 cos) or cosine distance (1 - cos), weighted 1 - alpha; alpha weighs the head's own in-batch
ranking loss. Student and teacher vectors must have the same width (no projection: the student's
vectors are used alone afterwards).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as load_weights
from torch import Tensor, nn

from ..errors import PlmkitError, a_or_an
from ..io import check_input_file, read_json
from ..models.checkpoint import WEIGHTS, write_checkpoint_files
from ..models.config import config_from_dict, config_to_dict, preset, student_arch
from ..models.heads import IGNORE, PAIR_KEYS, ModelOutput
from ..models.model import PlmModel

@dataclass(frozen=True)
class Logits:
    """A head's logits, as the logit loss and the teacher cache read them."""
    # (output attribute, batch label key) pairs the loss covers; QA averages its start and end
    # distributions, as the span head averages its two cross-entropies.
    outputs: tuple[tuple[str, str], ...]
    per_token: bool = False     # one distribution per token [B, T, C] (else one per sequence [B, C])
    # A distribution over the input's positions [B, T] (QA start / end): a label beyond the input
    # clamps, and padded positions are impossible, as the span head masks them.
    positions: bool = False
    # Next-token: position t predicts label t + 1 (as the CLM head shifts its labels); the KL covers
    # the positions whose label is kept (the completion, or the assistant turns of a chat).
    shifted: bool = False
    cacheable: bool = True      # the teacher cache stores it (not a vocabulary-sized distribution per token)


LOGITS: dict[str, Logits] = {       # model head -> its logits
    "classify": Logits((("logits", "labels"),)),
    "token": Logits((("logits", "labels"),), per_token=True),
    "span": Logits((("start_logits", "start_positions"), ("end_logits", "end_positions")), per_token=True,
                   positions=True),
    "clm": Logits((("logits", "labels"),), per_token=True, shifted=True, cacheable=False),
}
# model head -> the output of sentence vectors the student matches (see the module doc).
VECTORS: dict[str, str] = {"embed": "embeddings"}
VECTOR_LOSSES = ("mse", "cosine")
DISTILLABLE_HEADS = (*LOGITS, *VECTORS)
PROJECTIONS = "distill_projections.safetensors"   # beside the student in the loop's checkpoints


# ----------------------------------------------------------------------------- losses

def _wide(x: Tensor) -> Tensor:
    """bf16/fp16 (autocast) -> fp32 for the softmax and the reductions; fp32/fp64 as given."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def distill_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
               keep: Tensor | None = None) -> Tensor:
    """KL(p_t || p_s) at ``temperature``, averaged over the rows kept (``batchmean``).

    logits [..., C]; ``keep`` [...] bool selects rows (e.g. tokens with a label). No T^2 here.
    """
    s, t = _wide(student_logits).flatten(0, -2), _wide(teacher_logits).flatten(0, -2)   # [N, C]
    if keep is not None:
        s, t = s[keep.flatten()], t[keep.flatten()]
    if s.size(0) == 0:
        return student_logits.sum() * 0.0
    return F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")


def kd_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
             temperature: float, norm: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
    """(hard-label CE, soft KL at T) over the positions whose label is not -100.

    Sequence classification: logits [B, C], labels [B]. Tokens (NER): [B, T, C], [B, T].
    Spans (QA): [B, T] logits over positions, labels [B] positions.
    Both are means over the kept positions, or, given ``norm`` (the batch's ``label_norm``: the
    dataset's mean count of labelled tokens per batch), their sums over ``norm``, so a token
    weighs the same in a batch of short sentences as in one of long sentences (as the task heads).
    """
    keep = labels != IGNORE                                                # [B] or [B, T]
    kl = distill_kl(student_logits, teacher_logits, temperature, keep)
    if not bool(keep.any()):
        return student_logits.sum() * 0.0, kl
    ce = F.cross_entropy(_wide(student_logits).flatten(0, -2), labels.flatten(), ignore_index=IGNORE)
    if norm is not None:                                                   # mean * count / norm = sum / norm
        scale = keep.sum() / norm
        ce, kl = ce * scale, kl * scale
    return ce, kl


def kd_combine(ce: Tensor, kl: Tensor, temperature: float, alpha: float) -> Tensor:
    """``alpha * CE(student, labels) + (1 - alpha) * KL(p_t || p_s) * T^2`` (see the module doc),
    from the two terms of ``kd_terms``."""
    return alpha * ce + (1.0 - alpha) * kl * temperature ** 2


def hidden_mse(student_h: Tensor, teacher_h: Tensor, proj: nn.Module | None = None,
               mask: Tensor | None = None) -> Tensor:
    """MSE between [B, T, H_s] (projected to H_t) and [B, T, H_t], over the real tokens of ``mask`` [B, T]."""
    s = proj(student_h) if proj is not None else student_h
    err = (_wide(s) - _wide(teacher_h)).pow(2).mean(-1)                  # [B, T]
    if mask is None:
        return err.mean()
    keep = mask.bool()
    return err[keep].mean() if bool(keep.any()) else err.sum() * 0.0


def attention_kl(student_attn: Tensor, teacher_attn: Tensor, mask: Tensor | None = None) -> Tensor:
    """KL(teacher || student) of attention distributions [B, h, T, T], per query row.

    Same head count: per head, averaged over heads. Different head counts: the heads' mean
    distributions are compared instead (both sides averaged over heads; still a distribution).
    Rows of padded queries are left out; padded keys have probability 0 on both sides.
    """
    if student_attn.size(1) != teacher_attn.size(1):
        student_attn, teacher_attn = student_attn.mean(1, keepdim=True), teacher_attn.mean(1, keepdim=True)
    p_t = _wide(teacher_attn)
    log_p_s = _wide(student_attn).clamp_min(1e-12).log()                 # 0 * log 0 must stay 0
    kl = (torch.xlogy(p_t, p_t) - p_t * log_p_s).sum(-1)                  # [B, h, T]
    if mask is None:
        return kl.mean()
    keep = mask.bool()[:, None, :].expand_as(kl)
    return kl[keep].mean() if bool(keep.any()) else kl.sum() * 0.0


# ----------------------------------------------------------------------------- layer maps

def uniform_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student layer i <- teacher layer round((i + 1) * L_t / L_s) - 1: the last maps to the last."""
    return {i: max(0, math.floor((i + 1) * teacher_layers / student_layers + 0.5) - 1)
            for i in range(student_layers)}


def parse_layer_map(text: str, student_layers: int, teacher_layers: int) -> dict[int, int]:
    """'0:1,1:3,2:5' (student:teacher, 0-based) -> {0: 1, 1: 3, 2: 5}, checked against both models."""
    out: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        s, sep, t = part.partition(":")
        if not sep or not s.strip().isdigit() or not t.strip().isdigit():
            raise PlmkitError(f"--layer-map: '{part}' is not STUDENT:TEACHER (e.g. 0:1,1:3)")
        i, j = int(s), int(t)
        if i >= student_layers:
            raise PlmkitError(f"--layer-map: student layer {i} does not exist (the student has "
                              f"{student_layers} layers, 0..{student_layers - 1})")
        if j >= teacher_layers:
            raise PlmkitError(f"--layer-map: teacher layer {j} does not exist (the teacher has "
                              f"{teacher_layers} layers, 0..{teacher_layers - 1})")
        if i in out:
            raise PlmkitError(f"--layer-map: student layer {i} is mapped twice")
        out[i] = j
    if not out:
        raise PlmkitError("--layer-map is empty")
    return out


def parse_layers(text: str) -> list[int]:
    """'0,2,4' -> [0, 2, 4]."""
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise PlmkitError(f"--student-layers: expected teacher layer indices like 0,2,4, got {text!r}")
    return [int(p) for p in parts]


# ----------------------------------------------------------------------------- students

def student_from_layers(teacher: PlmModel, layers: list[int]) -> PlmModel:
    """DistilBERT-style student: the teacher's embeddings, the chosen layers (in order), pooler and head."""
    n = teacher.config.num_layers
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise PlmkitError(f"--student-layers: layer {bad[0]} is beyond the teacher, which has {n} layers "
                          f"(0..{n - 1})")
    if not layers or any(b <= a for a, b in zip(layers, layers[1:])):
        raise PlmkitError(f"--student-layers must be increasing teacher layer indices, got {layers}")
    if getattr(teacher, "plmkit_strategy", None) is not None:
        raise PlmkitError("the teacher is an adapter checkpoint: merge it first (plmkit merge) to copy its layers")
    c = teacher.config
    cfg = dataclasses.replace(c, num_layers=len(layers), heads=[c.heads[i] for i in layers],
                              ffn=[c.ffn[i] for i in layers])
    # Local/global follows the layer index (ModernBERT): a copied layer must keep its attention pattern.
    moved = [(new, old) for new, old in enumerate(layers) if cfg.window(new) != c.window(old)]
    if moved:
        new, old = moved[0]
        kind = lambda w: "global" if w is None else f"local (window {2 * w})"   # noqa: E731
        raise PlmkitError(f"--student-layers: teacher layer {old} is {kind(c.window(old))} but would be student "
                          f"layer {new}, which is {kind(cfg.window(new))} (layer i is global when i % "
                          f"{c.global_every} == 0); choose layers that keep their pattern")
    student = PlmModel(cfg, teacher.task, teacher.head_config)
    shared = getattr(c, "share_layers", False)      # ALBERT: one set of layer weights, kept as is
    new_index = {str(old): str(new) for new, old in enumerate(layers)}
    state = {}
    for key, value in teacher.state_dict().items():
        parts = key.split(".")
        if parts[:2] == ["backbone", "layers"] and not shared:
            if parts[2] not in new_index:
                continue
            key = ".".join(parts[:2] + [new_index[parts[2]]] + parts[3:])
        state[key] = value.clone()
    student.load_state_dict(state, strict=True)
    return student


def _teacher_defaults(teacher: PlmModel) -> dict[str, Any]:
    """Settings a fresh student must share with the teacher: the vocabulary, positions, special ids."""
    c = teacher.config
    keys = ("vocab_size", "max_position", "type_vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")
    return {k: getattr(c, k) for k in keys if hasattr(c, k)}


def student_from_preset(teacher: PlmModel, size: str) -> PlmModel:
    """A fresh student of a size preset: BERT-shaped for an encoder teacher (whatever its family: a
    ModernBERT teacher gets a BERT-style student), GPT-2-shaped for a decoder (``student_arch``)."""
    return PlmModel(preset(student_arch(teacher.config), size, **_teacher_defaults(teacher)),
                    teacher.task, teacher.head_config)


def student_from_model(teacher: PlmModel, path: str) -> PlmModel:
    """A pre-trained student (plmkit or HF directory), e.g. Qwen2.5-0.5B for a Qwen2.5-1.5B teacher: it
    must share the teacher's tokenizer (it reads the teacher's token ids)."""
    from ..models.checkpoint import load_model

    student = load_model(path, task=teacher.task, head_config=teacher.head_config)
    if getattr(student, "plmkit_strategy", None) is not None:
        raise PlmkitError(f"{path}: the student is an adapter checkpoint: merge it first (plmkit merge)")
    if student.family != teacher.family or student.config.vocab_size != teacher.config.vocab_size:
        raise PlmkitError(f"{path}: a {student.family} with a vocabulary of {student.config.vocab_size} cannot "
                          f"learn from a {teacher.family} with {teacher.config.vocab_size}: student and teacher "
                          "must share the tokenizer")
    return student


def student_from_config(teacher: PlmModel, path: str) -> PlmModel:
    """A fresh student from a JSON file of EncoderConfig (DecoderConfig) fields; the vocabulary
    and positions default to the teacher's (the student uses the teacher's tokenizer)."""
    file = Path(path)
    given = read_json(check_input_file(file, "student config"))     # a JSON object, or one line why
    if given.get("family", teacher.family) != teacher.family:
        raise PlmkitError(f"{file}: {a_or_an(given['family'])} student cannot learn from "
                          f"{a_or_an(teacher.family)} teacher")
    vocab = teacher.config.vocab_size
    if given.get("vocab_size", vocab) != vocab:
        raise PlmkitError(f"{file}: vocab_size {given['vocab_size']} differs from the teacher's tokenizer ({vocab})")
    values = {**_teacher_defaults(teacher), **given, "family": teacher.family}
    try:
        cfg = config_from_dict(values, source=str(file))
    except (TypeError, ValueError) as e:
        raise PlmkitError(f"{file}: bad model config ({e})") from None
    return PlmModel(cfg, teacher.task, teacher.head_config)


# ----------------------------------------------------------------------------- the module

@dataclass
class DistillSpec:
    temperature: float = 2.0
    alpha: float = 0.5                   # weight of the hard-label CE; 1 - alpha on the soft KL
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    embedding_weight: float = 0.0
    layer_map: dict[int, int] | None = None   # student layer -> teacher layer; None: uniform
    vector_loss: str = "mse"             # embed: mse | cosine between student and teacher vectors

    def check(self) -> None:
        if self.vector_loss not in VECTOR_LOSSES:
            raise PlmkitError(f"unknown vector loss {self.vector_loss!r} (choose {', '.join(VECTOR_LOSSES)})")
        if not self.temperature > 0:
            raise PlmkitError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise PlmkitError(f"--alpha must be in [0, 1], got {self.alpha}")
        if min(self.hidden_weight, self.attention_weight, self.embedding_weight) < 0:
            raise PlmkitError("--hidden-weight, --attention-weight and --embedding-weight must be >= 0")

    @property
    def intermediate(self) -> bool:
        return bool(self.hidden_weight or self.attention_weight or self.embedding_weight)


class DistillModule(nn.Module):
    """A student (+ projections) learning from a frozen teacher, or from its cached logits.

    ``forward(**batch)`` returns a ``ModelOutput`` with the total ``loss``, the student's
    logits and ``aux`` (ce, kd_kl, hidden_mse, attention_kl, embedding_mse), so the shared
    training loop trains it as any model. Only the student and the projections train.
    """

    def __init__(self, student: PlmModel, teacher: PlmModel | None, spec: DistillSpec,
                 cache: TeacherCache | None = None):
        super().__init__()
        spec.check()
        if teacher is None and (cache is None or spec.intermediate):
            raise PlmkitError("distillation needs the teacher (the logit cache serves only the logit loss)")
        if student.task not in DISTILLABLE_HEADS:
            raise PlmkitError(f"cannot distil a '{student.task}' model (supported heads: {', '.join(DISTILLABLE_HEADS)})")
        if student.task in VECTORS and teacher is not None and student.config.hidden_size != teacher.config.hidden_size:
            raise PlmkitError(f"an embedding student must have the teacher's width ({teacher.config.hidden_size}), "
                              f"not {student.config.hidden_size}: its vectors replace the teacher's (choose "
                              "--student-layers, or a student config of that hidden_size)")
        self.student, self.spec, self.cache = student, spec, cache
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        if spec.layer_map is None and teacher is not None:
            spec.layer_map = uniform_layer_map(student.config.num_layers, teacher.config.num_layers)
        if spec.attention_weight and teacher is not None:
            _check_heads(student, teacher, spec.layer_map)
        H_s = student.config.hidden_size
        H_t = teacher.config.hidden_size if teacher is not None else H_s
        # One shared projection for all mapped layers (TinyBERT's W_h), another for the embeddings.
        self.hidden_proj = nn.Linear(H_s, H_t) if spec.hidden_weight and H_s != H_t else None
        self.embedding_proj = nn.Linear(H_s, H_t) if spec.embedding_weight and H_s != H_t else None

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()              # the teacher never drops out
        return self

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, feature_index: Tensor | None = None,
                **labels: Tensor) -> ModelOutput:
        spec = self.spec
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                  **{k: v for k, v in labels.items() if k in PAIR_KEYS}}     # embed: the other texts too
        want_h, want_a = bool(spec.hidden_weight or spec.embedding_weight), bool(spec.attention_weight)
        vectors = self.student.task in VECTORS        # the head computes its own loss from the labels
        own = {k: v for k, v in labels.items() if k not in PAIR_KEYS} if vectors else {}
        s = self.student(**inputs, **own, output_hidden_states=want_h, output_attentions=want_a)
        t = self._teacher_out(inputs, feature_index, want_h, want_a)
        loss, aux = self.vector_loss(s, t) if vectors else self.logit_loss(s, t, labels)
        if spec.hidden_weight:
            aux["hidden_mse"] = torch.stack([
                hidden_mse(s.hidden_states[i + 1], t.hidden_states[j + 1], self.hidden_proj, attention_mask)
                for i, j in spec.layer_map.items()]).mean()
            loss = loss + spec.hidden_weight * aux["hidden_mse"]
        if spec.attention_weight:
            aux["attention_kl"] = torch.stack([attention_kl(s.attentions[i], t.attentions[j], attention_mask)
                                               for i, j in spec.layer_map.items()]).mean()
            loss = loss + spec.attention_weight * aux["attention_kl"]
        if spec.embedding_weight:
            aux["embedding_mse"] = hidden_mse(s.hidden_states[0], t.hidden_states[0], self.embedding_proj,
                                              attention_mask)
            loss = loss + spec.embedding_weight * aux["embedding_mse"]
        return ModelOutput(loss=loss, logits=s.logits, start_logits=s.start_logits, end_logits=s.end_logits,
                           embeddings=s.embeddings, aux={k: v.detach() for k, v in aux.items()})

    def _teacher_out(self, inputs: dict[str, Tensor | None], feature_index: Tensor | None,
                     want_h: bool, want_a: bool) -> ModelOutput:
        if self.cache is not None and not (want_h or want_a):
            if feature_index is None:
                raise ValueError("a cached teacher needs 'feature_index' in every batch")
            return self.cache.lookup(feature_index, inputs["input_ids"].size(1), inputs["input_ids"].device)
        with torch.no_grad():
            return self.teacher(**inputs, output_hidden_states=want_h, output_attentions=want_a)

    def vector_loss(self, s: ModelOutput, t: ModelOutput) -> tuple[Tensor, dict]:
        """alpha * the head's own loss + (1 - alpha) * the distance of the student's sentence vectors
        to the teacher's (module doc): (loss, {"ranking", "vector_mse" | "vector_cosine"})."""
        attr = VECTORS[self.student.task]
        sv, tv = _wide(getattr(s, attr)), _wide(getattr(t, attr))
        if self.spec.vector_loss == "cosine":
            dist = (1.0 - F.cosine_similarity(sv, tv, dim=-1)).mean()
        else:
            dist = (sv - tv).pow(2).sum(-1).mean()
        own = s.loss if s.loss is not None else dist * 0.0
        alpha = self.spec.alpha
        return alpha * own + (1.0 - alpha) * dist, {"ranking": own, f"vector_{self.spec.vector_loss}": dist}

    def logit_loss(self, s: ModelOutput, t: ModelOutput, labels: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """The seed's loss on each logit tensor of the task (QA: start and end terms averaged, then
        combined): (loss, {"ce", "kd_kl"})."""
        T, alpha = self.spec.temperature, self.spec.alpha
        ces, kls = [], []
        logits = LOGITS[self.student.task]
        for attr, key in logits.outputs:
            target = labels[key]
            s_logits, t_logits = getattr(s, attr), getattr(t, attr)
            if logits.positions:        # as the span head: positions beyond the input clamp
                target = target.clamp(0, s_logits.size(1) - 1)
            if logits.shifted:
                s_logits, t_logits, target = s_logits[:, :-1], t_logits[:, :-1], target[:, 1:]
            ce, kl = kd_terms(s_logits, t_logits, target, T, labels.get("label_norm"))
            ces.append(ce)
            kls.append(kl)
        ce, kl = torch.stack(ces).mean(), torch.stack(kls).mean()
        return kd_combine(ce, kl, T, alpha), {"ce": ce, "kd_kl": kl}


def _check_heads(student: PlmModel, teacher: PlmModel, layer_map: dict[int, int]) -> None:
    for i, j in layer_map.items():
        if student.config.heads[i] == 0 or teacher.config.heads[j] == 0:
            raise PlmkitError(f"--attention-weight: layer map {i}:{j} pairs a layer without attention heads "
                              "(pruned to 0); leave it out of --layer-map")


def save_student(module: DistillModule, directory: Path) -> None:
    """``save_fn`` of the loop: the student as a normal (tokenizer-less) checkpoint, plus projections."""
    write_checkpoint_files(module.student, directory)
    proj = {f"{name}.{k}": v.detach().contiguous() for name in ("hidden_proj", "embedding_proj")
            if getattr(module, name) is not None for k, v in getattr(module, name).state_dict().items()}
    if proj:
        save_file(proj, str(directory / PROJECTIONS))


def load_student(module: DistillModule, directory: Path) -> None:
    """``load_fn`` of the loop: the inverse of ``save_student``."""
    device = next(module.student.parameters()).device
    dev = device.index if device.type == "cuda" else "cpu"
    load_weights(module.student, str(directory / WEIGHTS), strict=True, device=dev)
    if (directory / PROJECTIONS).is_file():
        module.load_state_dict(load_file(str(directory / PROJECTIONS), device=str(device)), strict=False)


# ----------------------------------------------------------------------------- teacher cache

class TeacherCache:
    """The teacher's logits for every training feature, float16, so epochs skip the teacher.

    One memmap of rows x W: a feature owns rows ``offsets[i] : offsets[i] + counts[i]``
    (1 row for sequence classification, one per token for NER and QA: ``Logits.per_token``). W
    concatenates the head's logit tensors (classify/NER: C; QA: start and end, one column each).
    Only valid without hidden/attention/embedding losses (they need the teacher's states).
    """

    def __init__(self, path: Path, task: str, counts: list[int], widths: list[int]):
        self.path, self.task, self.widths = Path(path), task, widths
        self.logits = LOGITS[task]
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.rows = np.memmap(self.path, dtype=np.float16, mode="r", shape=(int(self.counts.sum()), sum(widths)))

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: PlmModel, features: list[dict[str, Any]], tok: Any, path: Path,
              batch_size: int, precision: str) -> TeacherCache:
        """Run the teacher once over ``features`` (all of them, any order) and store its logits."""
        from ..tasks.common import Infer, TaskData, forward_batches

        task = teacher.task
        logits = LOGITS.get(task)
        if logits is None or not logits.cacheable:
            raise PlmkitError(f"--cache-teacher stores logits; {a_or_an(repr(task)[1:-1])} teacher runs live "
                              "(drop --cache-teacher)")
        per_token = logits.per_token
        counts = [len(f["input_ids"]) if per_token else 1 for f in features]
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        widths = None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        rows: np.memmap | None = None
        data = TaskData([], features, tok, teacher.head_config, Infer(batch_size, precision))
        for idx, out in forward_batches(teacher.eval(), data):
            parts = [getattr(out, attr).float() for attr, _ in logits.outputs]
            parts = [p.unsqueeze(-1) if logits.positions else p for p in parts]     # [B, (T,) C_k]
            if rows is None:
                widths = [p.size(-1) for p in parts]
                rows = np.memmap(tmp, dtype=np.float16, mode="w+", shape=(sum(counts), sum(widths)))
            block = torch.cat(parts, -1).clamp(-65000, 65000).cpu().numpy()      # fp16's range
            for b, i in enumerate(idx):
                rows[offsets[i]:offsets[i] + counts[i]] = block[b, :counts[i]] if per_token else block[b]
        if rows is None:
            raise PlmkitError("the teacher cache needs at least one training feature")
        rows.flush()
        del rows
        tmp.replace(path)
        return cls(path, task, counts, widths)

    def lookup(self, index: Tensor, T: int, device: torch.device) -> ModelOutput:
        """Teacher outputs for the features ``index`` [B] padded to T tokens, as a live teacher gives."""
        idx = index.tolist()
        logits = self.logits
        if logits.per_token:
            # Padded positions: ignored tokens (NER), or impossible positions (QA), as the span head masks them.
            fill = torch.finfo(torch.float32).min if logits.positions else 0.0
            block = torch.full((len(idx), T, sum(self.widths)), fill, dtype=torch.float32)
            for b, i in enumerate(idx):
                n = int(self.counts[i])
                block[b, :n] = torch.from_numpy(np.array(self.rows[self.offsets[i]:self.offsets[i] + n])).float()
        else:
            block = torch.from_numpy(np.stack([self.rows[self.offsets[i]] for i in idx])).float()   # [B, C]
        parts = block.to(device).split(self.widths, -1)
        return ModelOutput(**{attr: part.squeeze(-1) if logits.positions else part
                              for (attr, _), part in zip(logits.outputs, parts)})


def describe_student(student: PlmModel, init: str) -> dict[str, Any]:
    """What plmkit.json records about the student's origin and size."""
    return {"init": init, "parameters": student.num_parameters(), "config": config_to_dict(student.config)}
