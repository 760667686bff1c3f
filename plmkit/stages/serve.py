"""Serve a model over HTTP: classify / ner / qa / embed / generate, micro-batched.

Reads top to bottom: check the settings -> load the model (a bad checkpoint fails here, before
the port is bound) -> build the FastAPI app -> run uvicorn until SIGINT/SIGTERM, which stops
accepting, lets in-flight requests finish, then drains the batcher.

With --workers N > 1, uvicorn starts N processes that each load the model (memory x N) and
build the app from ``PLMKIT_SERVE_CONFIG``; /metrics then reports the process that answers.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from ..config import option
from ..errors import PlmkitError
from ..models.weight_int8 import DEFAULT as WEIGHTS_DEFAULT
from ..models.weight_int8 import HELP as WEIGHTS_HELP
from ..models.weight_int8 import WEIGHTS
from ..precision import DEFAULT as PRECISION_DEFAULT
from ..precision import HELP as PRECISION_HELP
from ..precision import PRECISIONS


@dataclass
class Config:
    model: str = option(help="model directory: plmkit or local Hugging Face checkpoint, adapter, or ONNX / "
                        "INT8 export (plmkit export --format onnx, plmkit quantize [--engine openvino])")
    backend: str | None = option(None, help="inference backend (default: from --model: onnxruntime for an "
                                 "ONNX export, openvino for an OpenVINO export, torch otherwise)",
                                 choices=["torch", "onnxruntime", "openvino"])
    precision: str = option(PRECISION_DEFAULT, help="torch backend (as predict): " + PRECISION_HELP,
                            choices=PRECISIONS)
    weights: str = option(WEIGHTS_DEFAULT, help="a decoder on the torch backend (as generate): " + WEIGHTS_HELP,
                          choices=list(WEIGHTS))
    host: str = option("127.0.0.1", help="address to bind (0.0.0.0 exposes the server to the network)")
    port: int = option(8080, help="TCP port", ge=1, le=65535)
    max_batch: int = option(32, help="most texts per model call", ge=1)
    max_wait_ms: float = option(5.0, help="how long a batch waits for more requests, in milliseconds",
                               ge=0)
    workers: int = option(1, help="server processes, each with its own copy of the model", ge=1)
    threads: int | None = option(None, help="torch threads per worker (default: CPU cores / workers - 1, "
                                            "at least 1: the event loop needs a core)", ge=1)
    max_body_bytes: int = option(1 << 20, help="largest request body; larger is refused with 413", ge=1)
    max_texts: int = option(64, help="most texts in one request", ge=1)
    max_chars: int = option(10_000, help="most characters per text (QA: per question and per context)",
                           ge=1)
    timeout_s: float = option(30.0, help="per-request time limit, queueing included; then 503", gt=0)
    log_level: str = option("info", help="uvicorn log level", choices=["critical", "error", "warning", "info", "debug"])


def check_port(host: str, port: int) -> None:
    """Fail with one line (not uvicorn's log and exit code 3) when the address is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise PlmkitError(f"--host {host}: cannot resolve ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as uvicorn binds
        try:
            s.bind(addr)
        except OSError as e:
            raise PlmkitError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def run(cfg: Config) -> int:
    try:
        import uvicorn

        from ..serve.app import ENV_CONFIG, Limits, create_app
        from ..serve.backend import ServedModel
    except ImportError as e:
        raise PlmkitError(f"plmkit serve needs the 'serve' extra ({e.name} is missing): "
                          "pip install 'plmkit[serve]'") from None
    import torch

    # One core per process stays free for the event loop (HTTP, JSON, tokenising): torch's
    # threads spin-wait, and one of them losing its core stalls every matmul (measured on 2
    # shared cores: 2 threads ran single texts 3-10x slower than 1).
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // cfg.workers - 1)
    torch.set_num_threads(threads)
    limits = Limits(cfg.max_batch, cfg.max_wait_ms, cfg.max_body_bytes, cfg.max_texts, cfg.max_chars, cfg.timeout_s)
    # fails here on a bad checkpoint, before binding
    served = ServedModel(cfg.model, cfg.backend, cfg.precision, cfg.weights)
    check_port(cfg.host, cfg.port)
    print(f"serving {cfg.model} ({served.task}, {served.family}, {served.backend.name}, {threads} threads) on "
          f"http://{cfg.host}:{cfg.port}  endpoints: {', '.join(served.endpoints()) or 'none'}", flush=True)
    common = dict(host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                  timeout_graceful_shutdown=int(cfg.timeout_s) + 5)
    with _sigterm_is_a_clean_stop():
        if cfg.workers == 1:
            uvicorn.run(create_app(served, limits), **common)
        else:
            del served                                   # each worker process loads its own copy
            os.environ[ENV_CONFIG] = json.dumps({"model": cfg.model, "backend": cfg.backend,
                                                 "precision": cfg.precision, "weights": cfg.weights,
                                                 "threads": threads,
                                                 "limits": asdict(limits)})
            uvicorn.run("plmkit.serve.app:app_from_env", factory=True, workers=cfg.workers, **common)
    return 0


class _Terminated(Exception):
    """SIGTERM arrived outside uvicorn's own handler."""


@contextlib.contextmanager
def _sigterm_is_a_clean_stop() -> Iterator[None]:
    """Exit 0 after SIGTERM. uvicorn catches SIGTERM, drains, then raises the signal again
    with the previous handler in place; with Python's default that kills the process (exit
    143). Our handler turns it (and one arriving before uvicorn listens) into a normal return."""
    if threading.current_thread() is not threading.main_thread():
        yield                                            # signals belong to the main thread
        return

    def stop(signum: int, frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except _Terminated:
        print("stopped (SIGTERM)", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
