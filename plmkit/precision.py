"""The one answer to "which autocast dtype does precision X mean on device D?".

Training (the loop), evaluation and prediction (tasks), serving and the benchmark harness all
ask here, so ``auto`` means the same everywhere and ``bf16`` fails the same way where it
cannot run:

* ``fp32``: no autocast.
* ``bf16``: bf16 autocast; an error on a device without it (a CUDA GPU without bf16, a device
  torch cannot autocast), never a silent fallback.
* ``auto`` (the default of every command): bf16 where the hardware runs it natively (a
  bf16-capable CUDA GPU; a CPU with AVX512-BF16 or AMX), fp32 elsewhere, where bf16 would be
  emulated and slower than fp32.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import PlmkitError

PRECISIONS = ["auto", "bf16", "fp32"]
DEFAULT = "auto"
HELP = ("auto: bf16 autocast where the device runs bf16 natively (a bf16-capable GPU, a CPU with "
        "AVX512-BF16 or AMX), else fp32; bf16: bf16 autocast (an error where unsupported); fp32: none")


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def _bf16_possible(device: torch.device) -> bool:
    """Can torch autocast to bf16 on this device at all (natively or emulated)?"""
    if not torch.amp.is_autocast_available(device.type):
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return True


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype ``precision`` means on ``device`` (None: run in fp32)."""
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if _native_bf16(device) else None
    if precision == "bf16":
        if not _bf16_possible(device):
            raise PlmkitError(f"precision bf16 is not supported on this {device.type} device "
                              f"({_describe(device)}); use --precision fp32 or auto")
        return torch.bfloat16
    raise PlmkitError(f"unknown precision '{precision}' (choose {', '.join(PRECISIONS)})")


def resolve(precision: str, device: torch.device | str) -> str:
    """``bf16`` or ``fp32``: what ``precision`` runs as on ``device`` (for logs and reports)."""
    return "fp32" if autocast_dtype(precision, device) is None else "bf16"


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context ``precision`` means on ``device``; fp32 turns autocast off, also an
    enclosing one."""
    device = torch.device(device)
    dtype = autocast_dtype(precision, device)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def _describe(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return "torch cannot autocast bf16 here"
