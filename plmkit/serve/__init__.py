"""HTTP inference: ``plmkit serve`` (FastAPI on uvicorn, micro-batched, with limits and metrics)."""
from __future__ import annotations

from .backend import ENDPOINTS, ServedModel
from .batcher import MicroBatcher

__all__ = ["ENDPOINTS", "MicroBatcher", "ServedModel"]
