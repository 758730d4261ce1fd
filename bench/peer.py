"""nDPI (ndpiReader) beside skyguard on the same captures: ndpiReader's own packets/s, skyguard's kernel ns/packet
(the mean BPF_PROG_TEST_RUN duration during a replay) and `skyguard replay` end-to-end packets/s.

Usage: bench/peer.py [--captures DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT

from skyguard.kernel.loader import Kernel  # noqa: E402
from skyguard.lab import gen
from skyguard.offline import replay  # noqa: E402

CAPTURES = ROOT.parent / "shared" / "captures"
_PPS = re.compile(r"nDPI throughput:\s+([\d.]+)\s*([KM]?) pps")


def ndpi_pps(path: Path) -> float | None:
    exe = shutil.which("ndpiReader")
    if not exe:
        return None
    out = subprocess.run([exe, "-i", str(path)], capture_output=True, text=True, timeout=120).stdout
    m = _PPS.search(out)
    if not m:
        return None
    return float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6}[m.group(2)]


def skyguard_run(k: Kernel, path: Path) -> dict:
    ns: list[int] = []
    orig = k.test_run

    def timed(frame, ts_ns=None, repeat=1):
        r = orig(frame, ts_ns=ts_ns, repeat=repeat)
        ns.append(r.duration_ns)
        return r

    k.test_run = timed
    try:
        res = replay.replay([path], kernel=k)
    finally:
        del k.test_run
    c = res.captures[0]
    return {"packets": c.packets, "kernel_ns": sum(ns) / len(ns) if ns else None,
            "replay_pps": c.packets / c.seconds if c.seconds else None}


def measure(cdir: Path = CAPTURES) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory(prefix="sg-peer-") as td, Kernel(replay=True) as k:
        gen.generate(11, td, calls=5)
        paths = sorted(p for p in cdir.glob("*.pcap*")) + sorted(Path(td).glob("*.pcap"))
        for p in paths:
            row = skyguard_run(k, p)
            row["ndpi_pps"] = ndpi_pps(p)
            row["kernel_pps"] = 1e9 / row["kernel_ns"] if row["kernel_ns"] else None
            rows[("gen/" if str(p).startswith(td) else "") + p.name] = row
    tot = sum(r["packets"] for r in rows.values())

    def wmean(key):
        vals = [(r[key], r["packets"]) for r in rows.values() if r.get(key)]
        n = sum(w for _v, w in vals)
        return sum(v * w for v, w in vals) / n if n else None

    return {"captures": rows, "packets": tot,
            "mean": {k: wmean(k) for k in ("ndpi_pps", "kernel_ns", "kernel_pps", "replay_pps")}}


def format_table(res: dict) -> str:
    lines = [f"{'capture':40} {'packets':>7} {'nDPI pps':>10} {'sg kernel ns':>12} {'sg kernel pps':>13} "
             f"{'sg replay pps':>13}"]

    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    mean = ("(packet-weighted mean)", {**res["mean"], "packets": res["packets"]})
    for name, r in [*res["captures"].items(), mean]:
        lines.append(f"{name[:40]:40} {r['packets']:7} {f(r['ndpi_pps'], '10.0f')} {f(r['kernel_ns'], '12.0f')} "
                     f"{f(r['kernel_pps'], '13.0f')} {f(r['replay_pps'], '13.0f')}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captures", default=str(CAPTURES))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = measure(Path(args.captures))
    print(json.dumps(res) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
