"""`make bench`: every benchmark in one run, one printed table, bench/results.json (with the machine's facts).

Usage: bench/run.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import accuracy
import common
import daemon_scale
import fastpath
import growth
import ipfix_export
import live
import metrics_scrape
import peer
import scale


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs and smaller sizes (about a minute)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results.json"))
    args = ap.parse_args()
    q = args.quick
    res: dict = {"machine": common.machine(), "quick": q, "started": time.time()}
    steps = [
        ("fastpath", lambda: fastpath.measure(100_000, 8 if q else 40), fastpath.format_table),
        ("growth", lambda: growth.measure(q), growth.format_table),
        ("scale", lambda: scale.measure(100_000 if q else 1_000_000, 3 if q else 4), scale.format_table),
        ("peer", peer.measure, peer.format_table),
        ("accuracy", lambda: accuracy.measure([1] if q else [1, 2, 3]), accuracy.format_table),
        ("live", lambda: live.measure(0.6 if q else 1.5, 1 if q else 5, feed="direct"), live.format_table),
        ("live_redirect", lambda: live.measure(0.6 if q else 1.5, 1 if q else 5, feed="redirect"), live.format_table),
        ("daemon_scale", lambda: daemon_scale.measure(100_000 if q else 1_000_000, 50 if q else 200, 5.0 if q else 20.0,
                                                      None, 3.0 if q else 10.0), daemon_scale.format_table),
        ("ipfix_export", lambda: ipfix_export.measure(10_000, 4.0 if q else 10.0), ipfix_export.format_table),
        ("metrics_scrape", lambda: metrics_scrape.measure(100_000 if q else 1_000_000, 50 if q else 200),
         metrics_scrape.format_table),
    ]
    out = []
    for name, fn, fmt in steps:
        t = time.perf_counter()
        try:
            r = fn()
            res[name] = r
            out.append(f"== {name} ({time.perf_counter() - t:.0f} s)\n{fmt(r)}")
        except Exception as e:  # one failing benchmark must not hide the others
            res[name] = {"error": f"{type(e).__name__}: {e}"}
            out.append(f"== {name}: FAILED {type(e).__name__}: {e}")
        print(out[-1], flush=True)
    res.get("accuracy", {}).get("generated", {}).pop("table", None)
    res["seconds"] = time.time() - res["started"]
    Path(args.out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    m = res["machine"]
    print(f"\n{m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}; {res['seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
