"""Main-memory bandwidth of this machine, as torch sees it: the ceiling of batch-1 decoding.

    python benchmarks/membw.py                 # 1 GiB buffers, medians of 7 runs
    python benchmarks/membw.py --quick         # 64 MiB, 3 runs: checks the script

Two loops over buffers far larger than the last-level cache (so every byte comes from DRAM):
  copy: ``dst.copy_(src)``, counting the bytes read and the bytes written (2 x size per pass);
  read: ``src.sum()``, counting the bytes read (what a decoding step does with the weights).
GB/s is 1e9 bytes per second, the median of --runs passes after one warm-up pass (which also
faults the pages in). Uses torch's threads (--threads, default torch's own choice).
"""
from __future__ import annotations

import argparse
import statistics
import time


def bandwidth(size_mib: int = 1024, runs: int = 7, threads: int | None = None) -> dict[str, float]:
    """{'copy_gbs', 'read_gbs'}: medians over ``runs`` passes over a ``size_mib`` MiB fp32 buffer."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    n = size_mib * 2**20 // 4
    src, dst = torch.ones(n), torch.empty(n)
    size = n * 4

    def gbs(step, bytes_moved: int) -> float:
        step()                                            # warm-up: page faults, thread pool start
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        return bytes_moved / statistics.median(times) / 1e9

    return {"copy_gbs": gbs(lambda: dst.copy_(src), 2 * size), "read_gbs": gbs(src.sum, size),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="buffer size (far above the last-level cache)")
    ap.add_argument("--runs", type=int, default=7, help="timed passes per loop (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="64 MiB, 3 runs: a smoke run")
    args = ap.parse_args()
    size, runs = (64, 3) if args.quick else (args.size_mib, args.runs)
    r = bandwidth(size, runs, args.threads)
    print(f"| buffer MiB | threads | copy GB/s (read + write) | read GB/s |\n|---|---|---|---|\n"
          f"| {size} | {r['threads']} | {r['copy_gbs']:.1f} | {r['read_gbs']:.1f} |")


if __name__ == "__main__":
    main()
