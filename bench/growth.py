"""ns/packet against flow-map fill (1k, 100k, 1M flows) and against LPM prefixes (10, 10k, 100k).

Flow fill: the table is filled with batch updates, then an established flow is timed (BPF_PROG_TEST_RUN, repeat).
LPM: prefixes are looked up only when a flow is created, so the new-flow path is timed: the median of single runs,
each on a frame of a flow not seen before. Ratios are to the smallest size of the same run.

Usage: bench/growth.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import struct
import sys

from common import Frames, best_of, ratio, udp4_frame

from skyguard import kernel, wire  # noqa: E402
from skyguard.policy import parse_policy  # noqa: E402


def fill_flows(k: kernel.Kernel, n: int, base: int = 0x0A000000) -> None:
    kf = wire.FlowKey.FMT
    hi = b"\0" * 10 + b"\xff\xff" + bytes([198, 18, 0, 1])
    keys = b"".join(kf.pack(b"\0" * 10 + b"\xff\xff" + struct.pack(">I", base + i), hi, 40000, 443, 0, 17)
                    for i in range(n))
    val = wire.Flow(pkts=(5, 5), cls=wire.C["SG_CLASS_OTHER"], flags=wire.C["SG_F_DONE"]).pack()
    k.write_flows_raw(keys, val * n)


def flow_fill(sizes: list[int], repeat: int) -> dict:
    fr = Frames()
    out = {}
    for n in sizes:
        with kernel.Kernel(flows_max=max(65536, n + n // 4)) as k:
            fill_flows(k, n)
            for _ in range(wire.C["SG_PROBE"] + 1):
                k.test_run(fr.est4)
            out[n] = best_of(k.prog_fd, fr.est4, repeat)
    return out


def lpm_growth(sizes: list[int], new_flows: int) -> dict:
    rng = random.Random(7)
    out = {}
    for n in sizes:
        nets = set()
        while len(nets) < n:
            plen = rng.choice((16, 20, 24, 24, 28, 32))
            nets.add(ipaddress.ip_network((rng.randrange(1 << 32) >> (32 - plen) << (32 - plen), plen)))
        toml = 'name = "bench-lpm"\n[microsoft_media]\nprefixes = [' + ",".join(f'"{x}"' for x in nets) + "]\n"
        with kernel.Kernel(flows_max=65536, lpm_max=max(n + 16, 1024)) as k:
            k.load_policy(parse_policy(toml))
            frames = [udp4_frame(i, 128) for i in range(new_flows)]
            out[n] = statistics.median(k.test_run(f).duration_ns for f in frames)
    return out


def measure(quick: bool = False) -> dict:
    fills = [1000, 100_000] if quick else [1000, 100_000, 1_000_000]
    lpms = [10, 10_000] if quick else [10, 10_000, 100_000]
    ff = flow_fill(fills, 200_000 if quick else 1_000_000)
    lp = lpm_growth(lpms, 2000 if quick else 5000)
    b_ff, b_lp = ff[fills[0]], lp[lpms[0]]
    return {"flow_fill": {str(n): {"ns": v, "x_smallest": ratio(v, b_ff)} for n, v in ff.items()},
            "lpm_new_flow": {str(n): {"ns": v, "x_smallest": ratio(v, b_lp)} for n, v in lp.items()}}


def format_table(res: dict) -> str:
    lines = ["established flow, ns/packet by flow-map fill:"]
    lines += [f"  {n:>9} flows  {c['ns']:6.1f} ns  x{c['x_smallest']:.2f}" for n, c in res["flow_fill"].items()]
    lines.append("new flow (LPM lookups), median ns of single runs by msmedia prefixes:")
    lines += [f"  {n:>9} prefixes {c['ns']:6.1f} ns  x{c['x_smallest']:.2f}" for n, c in res["lpm_new_flow"].items()]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = measure(args.quick)
    print(json.dumps(res) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
