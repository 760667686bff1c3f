"""Data-parallel training under ``torchrun``: DDP, or FSDP for models too big for one device.

Launch a stage on N processes with::

    torchrun --standalone --nproc_per_node=N -m plmkit.cli pretrain ...

``torchrun`` sets RANK / LOCAL_RANK / WORLD_SIZE; :func:`init_distributed` then joins the
process group (NCCL on CUDA, Gloo on CPU), each rank reads its own shard of the batches,
gradients are averaged by DDP, and only rank 0 logs and writes checkpoints.

FSDP (``TrainArgs.fsdp``, ``--fsdp``) shards parameters, gradients and optimizer state
over the ranks instead of replicating them, for models whose training state does not fit
one device::

    torchrun --standalone --nproc_per_node=8 -m plmkit.cli pretrain --fsdp --arch bert \\
        --size base --corpus data/*.txt --out runs/bert-base --max-steps 100000 --grad-accum 4

:func:`wrap_fsdp` applies FSDP2 ``fully_shard`` to each transformer block
(``backbone.layers[i]``), then to the root (embeddings, head). Checkpoints stay in the
DDP format for the weights: every rank takes part in gathering the full state dict and
rank 0 writes the usual ``model.safetensors`` (loadable by ``load_model``); the optimizer
is saved unsharded too, so a run resumes on the same number of ranks with ``--resume``.
Under FSDP every rank runs the evaluation (a forward pass needs all shards). The model
object passed to ``train`` stays sharded afterwards; its full weights are in the last
checkpoint (``TrainResult.last_checkpoint``).
"""
from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import sys
from dataclasses import dataclass
from typing import Any, ContextManager, Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun (or reuse an existing one)."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), local, dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(dist.get_rank(), local, dist.get_world_size(), owns_group=True)


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def default_device(info: DistInfo) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def wrap_ddp(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP wrapper; rank 0's parameters are broadcast so every rank starts equal. Every
    trainable parameter must get a gradient each step (a model has no part its objective
    leaves unused: pretrain builds an MLM-only BERT without the pooler NSP would train)."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def fsdp_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks sharded one by one: ``backbone.layers``. None when the model
    has no such list or reuses one block for every layer (ALBERT): then only the root is
    sharded, which is still correct, just one all-gather for the whole model."""
    layers = getattr(getattr(model, "backbone", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or getattr(getattr(model, "config", None),
                                                        "share_layers", False):
        return []
    return list(layers)


def wrap_fsdp(model: nn.Module, info: DistInfo, device: torch.device, bf16: bool) -> nn.Module:
    """FSDP2: shard each block, then the root; parameters become DTensor shards on ``device``.

    The model may still be on the CPU (it need not fit the device whole): ``fully_shard``
    moves only each rank's shard. Rank 0's weights are broadcast first, as DDP does, so
    the ranks need not have initialised identically. With bf16 the gathered weights are
    bf16 and gradients are reduced in fp32; the loop keeps autocast on, so norms, softmax
    and the loss still run in fp32.
    """
    if not info.enabled:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    _broadcast_module(model, device)
    mesh = init_device_mesh(device.type, (info.world_size,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if bf16 else MixedPrecisionPolicy())
    for block in fsdp_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _broadcast_module(model: nn.Module, device: torch.device) -> None:
    """Rank 0's parameters and buffers on every rank, one tensor at a time through ``device``
    (NCCL only moves device tensors)."""
    with torch.no_grad():
        for t in itertools.chain(model.parameters(), model.buffers()):
            buf = t.detach().to(device)
            dist.broadcast(buf, src=0)
            t.copy_(buf)


def _fsdp_module(model: nn.Module) -> Any:
    """The FSDP2-wrapped module, or None. FSDP is imported lazily (it costs ~0.5 s of start-up):
    when no code has imported it, nothing can have been wrapped."""
    if "torch.distributed.fsdp" not in sys.modules:
        return None
    from torch.distributed.fsdp import FSDPModule

    inner = getattr(model, "_orig_mod", model)  # _orig_mod: torch.compile
    return inner if isinstance(inner, FSDPModule) else None


def grad_sync(model: nn.Module, sync: bool) -> ContextManager[None]:
    """Context for one micro-batch's forward/backward. ``sync=False`` (every micro-batch of
    a step but the last) keeps gradients local: DDP's ``no_sync``, FSDP2's
    ``set_requires_gradient_sync(False)`` (which accumulates unsharded gradients)."""
    inner = getattr(model, "_orig_mod", model)
    if _fsdp_module(model) is not None:
        inner.set_requires_gradient_sync(sync)
    elif isinstance(inner, nn.parallel.DistributedDataParallel) and not sync:
        return inner.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm; works on FSDP's DTensor shards (the norm is reduced
    over ranks) and returns it as a plain tensor."""
    norm = torch.nn.utils.clip_grad_norm_(list(params), max_norm, foreach=True)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm   # a DTensor under FSDP


def all_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a small tensor over ranks (identity on one process)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` on one process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
