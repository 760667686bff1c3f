"""Prometheus text exposition for the server, without a client library.

Three families: requests by endpoint and status (counter), request latency per endpoint
(histogram, seconds) and micro-batch size per endpoint (histogram, items per model call).
Updates come from the event loop and the model thread, so they take a lock.
"""
from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)        # per bucket, not cumulative; cumulated on output
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            out.append(f'{name}_bucket{{{labels},le="{_num(bound)}"}} {running}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.total}')
        out.append(f"{name}_sum{{{labels}}} {self.sum:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.total}")
        return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch_size: dict[str, Histogram] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            self.latency.setdefault(endpoint, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, endpoint: str, size: int) -> None:
        with self._lock:
            self.batch_size.setdefault(endpoint, Histogram(BATCH_BUCKETS)).observe(size)

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP plmkit_requests_total HTTP requests by endpoint and status code.",
                     "# TYPE plmkit_requests_total counter"]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'plmkit_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            lines += ["# HELP plmkit_request_duration_seconds Request latency, from first byte in to response.",
                      "# TYPE plmkit_request_duration_seconds histogram"]
            for endpoint, h in sorted(self.latency.items()):
                lines += h.lines("plmkit_request_duration_seconds", f'endpoint="{endpoint}"')
            lines += ["# HELP plmkit_batch_size Items (texts, questions, prompts) per model call.",
                      "# TYPE plmkit_batch_size histogram"]
            for endpoint, h in sorted(self.batch_size.items()):
                lines += h.lines("plmkit_batch_size", f'endpoint="{endpoint}"')
        return "\n".join(lines) + "\n"
