"""Scale: 1M flows in the flow map. Kernel map memory (memlock from /proc/self/fdinfo), the time to read the table in
batches, to decode every flow, and `flows --limit 100` as the daemon computes it today (read + decode + sort), p50/p99.

Usage: bench/scale.py [--flows N] [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

from growth import fill_flows

from skyguard import kernel  # noqa: E402


def memlock(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as fh:
        for line in fh:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    return 0


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def measure(n: int = 1_000_000, runs: int = 5) -> dict:
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with kernel.Kernel(flows_max=n + n // 4) as k:
        t = time.perf_counter()
        fill_flows(k, n)
        fill_s = time.perf_counter() - t
        mem = memlock(k._flows.fd)
        read, top = [], []
        for _ in range(runs):
            t = time.perf_counter()
            cnt = sum(c for _k, _v, c in k.flows_raw())
            read.append(time.perf_counter() - t)
        for _ in range(max(2, runs // 2)):
            t = time.perf_counter()
            sel = sorted(k.flows(), key=lambda kf: kf[1].packets, reverse=True)[:100]
            top.append(time.perf_counter() - t)
        assert len(sel) == 100
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"flows": cnt, "fill_s": fill_s, "flows_map_memlock_bytes": mem, "bytes_per_flow": mem / n,
            "batch_read_ms": {"p50": 1e3 * statistics.median(read), "p99": 1e3 * _pct(read, 0.99)},
            "flows_limit_100_ms": {"p50": 1e3 * statistics.median(top), "p99": 1e3 * _pct(top, 0.99),
                                   "target_p99": 50},
            "process_maxrss_growth_kib": rss1 - rss0, "pid": os.getpid()}


def format_table(r: dict) -> str:
    return "\n".join([
        f"{r['flows']} flows: map memlock {r['flows_map_memlock_bytes'] / 2**20:.0f} MiB "
        f"({r['bytes_per_flow']:.0f} B/flow), batch fill {r['fill_s']:.2f} s",
        f"batch read of the whole table: p50 {r['batch_read_ms']['p50']:.0f} ms, "
        f"p99 {r['batch_read_ms']['p99']:.0f} ms",
        f"flows --limit 100 (read + decode + sort): p50 {r['flows_limit_100_ms']['p50']:.0f} ms, "
        f"p99 {r['flows_limit_100_ms']['p99']:.0f} ms (target p99 <= 50 ms)",
        f"python RSS growth while decoding: {r['process_maxrss_growth_kib'] / 1024:.0f} MiB"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = measure(args.flows, args.runs)
    print(json.dumps(res) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
