"""The benchmark harness: measure model variants on the same data: size, latency, throughput, peak memory, task metric.

The parent process checks every input (model directories, one task for all, the data file in
that task's format), then runs each variant in a subprocess of its own
(``python -m plmkit.bench --worker SPEC OUT``), so a variant's peak RSS is its own and
one variant's allocator state or thread pools cannot slow the next.

What a worker does, identically for every row:
  * reads FILE and encodes it with the tokenizer and preprocessing settings stored in the
    checkpoint (the transformers baseline uses those of the checkpoint it was exported from,
    so every row sees the same token ids);
  * forms batches of B consecutive examples **in file order** (not sorted by length), each
    padded to its longest member, all collated before timing: the clock covers the model
    call only, not tokenising or padding;
  * per batch size: ``warmup`` untimed batches, then ``repeats`` timed passes; latency
    percentiles are over every timed batch, throughput is examples / median pass time.
    Batch size 1 runs on the first ``latency_examples`` examples; larger batch sizes run on
    all of them;
  * scores the task metric with the task's own ``evaluate`` (batches of 64, as
    ``plmkit evaluate``), so the metric equals what ``plmkit evaluate`` reports.

Peer rows (``--baselines optimum-ort,openvino``) run in the peers' own virtual environment on
the same padded token ids, and plmkit scores their logits the same way (``peers.py``).
"""
from __future__ import annotations

from .harness import (add_speedups, baseline_source, check_data, cpu_sample, format_table, machine_info, measure,
                      metric_name, other_cores, trust_warnings, unique_names)
from .peers import PEERS, find_peer_python, peer_versions
from .rows import Settings, Variant
from .runners import BASELINES, RUNNERS, Runner, make_variant, task_of_dir

PEER_KINDS = tuple(p.kind for p in PEERS)

__all__ = ["BASELINES", "PEER_KINDS", "RUNNERS", "Runner", "Settings", "Variant", "add_speedups", "baseline_source",
           "check_data", "cpu_sample", "find_peer_python", "format_table", "machine_info", "make_variant", "measure",
           "metric_name", "other_cores", "peer_versions", "task_of_dir", "trust_warnings", "unique_names"]
