"""Scale: 1M flows in the flow map. Kernel map memory (memlock from /proc/self/fdinfo), the time to read the table in
batches, and the two halves of how the daemon answers `flows --limit 100`: its columnar snapshot of the table
(flowtable.FlowTable, refreshed a batch at a time between events) and the top-N selection on it (uncached: filtered
by class), p50/p99. bench/daemon_scale.py times the same request end to end over the real daemon's socket.

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

from skyguard import wire
from skyguard.kernel import loader as kernel  # noqa: E402
from skyguard.kernel.flowtable import FlowTable  # noqa: E402


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
        mem = memlock(k._flows.fd) + memlock(k._flows4.fd)  # both flow tables (the filled flows are in flows4)
        read, refresh, select = [], [], []
        for _ in range(runs):
            t = time.perf_counter()
            cnt = sum(c for _k, _v, c in k.flows_raw())
            read.append(time.perf_counter() - t)
        ft = FlowTable(k)
        for _ in range(runs):
            t = time.perf_counter()
            ft.refresh()
            refresh.append(time.perf_counter() - t)
        for _ in range(20 * runs):
            t = time.perf_counter()
            _s, idx, total = ft.select(cls=wire.C["SG_CLASS_OTHER"], limit=100)
            select.append(time.perf_counter() - t)
        assert len(idx) == 100 and total == n
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"flows": cnt, "fill_s": fill_s, "flows_map_memlock_bytes": mem, "bytes_per_flow": mem / n,
            "batch_read_ms": {"p50": 1e3 * statistics.median(read), "p99": 1e3 * _pct(read, 0.99)},
            "snapshot_refresh_ms": {"p50": 1e3 * statistics.median(refresh), "p99": 1e3 * _pct(refresh, 0.99)},
            "select_100_ms": {"p50": 1e3 * statistics.median(select), "p99": 1e3 * _pct(select, 0.99)},
            "process_maxrss_growth_kib": rss1 - rss0, "pid": os.getpid()}


def format_table(r: dict) -> str:
    return "\n".join([
        f"{r['flows']} flows: both flow tables' memlock {r['flows_map_memlock_bytes'] / 2**20:.0f} MiB "
        f"({r['bytes_per_flow']:.0f} B/flow), batch fill {r['fill_s']:.2f} s",
        f"batch read of the whole table: p50 {r['batch_read_ms']['p50']:.0f} ms, "
        f"p99 {r['batch_read_ms']['p99']:.0f} ms",
        f"daemon's snapshot of the table (FlowTable.refresh): p50 {r['snapshot_refresh_ms']['p50']:.0f} ms, "
        f"p99 {r['snapshot_refresh_ms']['p99']:.0f} ms (done a batch at a time between events)",
        f"top 100 of a class from the snapshot: p50 {r['select_100_ms']['p50']:.1f} ms, "
        f"p99 {r['select_100_ms']['p99']:.1f} ms (end to end over the socket: daemon_scale)",
        f"process RSS growth (map reads and snapshot): {r['process_maxrss_growth_kib'] / 1024:.0f} MiB"])


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
