"""ns/packet against flow-map fill (1k, 100k, 1M flows) and against LPM prefixes (10, 10k, 100k).

Flow fill: the table is filled with batch updates, then an established flow is timed (BPF_PROG_TEST_RUN, repeat).
That flow stays in the caches; so, second, packets of `spread` different filled flows are timed one run each
(median), skyguard and the floor program (its table filled alike) in turn on every frame, with the no-op as the
baseline of a single run: this is where a bigger table costs (cache misses on buckets and entries).
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

from common import Frames, best_of, load_baseline, ratio, test_run_ns, udp4_frame
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from skyguard import wire
from skyguard.kernel import loader as kernel  # noqa: E402
from skyguard.kernel.bpfsys import RawMap  # noqa: E402
from skyguard.policy import parse_policy  # noqa: E402


def _fill_keys(n: int, base: int = 0x0A000000) -> bytes:
    kf = wire.FlowKey.FMT
    hi = b"\0" * 10 + b"\xff\xff" + bytes([198, 18, 0, 1])
    return b"".join(kf.pack(b"\0" * 10 + b"\xff\xff" + struct.pack(">I", base + i), hi, 40000, 443, 0, 17)
                    for i in range(n))


_FILL_VALUE = wire.Flow(pkts=(5, 5), cls=wire.C["SG_CLASS_OTHER"], flags=wire.C["SG_F_DONE"]).pack()


def fill_flows(k: kernel.Kernel, n: int, base: int = 0x0A000000) -> None:
    """n established (decided) UDP flows 10.0.0.0+i:40000 <-> 198.18.0.1:443."""
    k.write_flows_raw(_fill_keys(n, base), _FILL_VALUE * n)


def _fill_frame(i: int, base: int = 0x0A000000) -> bytes:
    src = str(ipaddress.IPv4Address(base + i))
    return bytes(Ether() / IP(src=src, dst="198.18.0.1") / UDP(sport=40000, dport=443) / (b"\x00" * 80))


def flow_fill(sizes: list[int], repeat: int, spread: int = 2000) -> dict:
    fr = Frames()
    rng = random.Random(11)
    out = {}
    noop = load_baseline("noop")
    try:
        noop_fd = noop.fd
        for n in sizes:
            fmax = max(65536, n + n // 4)
            floor = load_baseline("floor", fmax)
            try:
                floor_fd = floor.fd
                fmap = RawMap(floor.bpf[b"flows"].map_fd, wire.FlowKey.FMT.size, wire.Flow.FMT.size)
                with kernel.Kernel(flows_max=fmax) as k:
                    fill_flows(k, n)
                    fmap.update_batch(_fill_keys(n), _FILL_VALUE * n)
                    for _ in range(wire.C["SG_PROBE"] + 1):
                        k.test_run(fr.est4)
                    hot = best_of(k.prog_fd, fr.est4, repeat)
                    frames = [_fill_frame(rng.randrange(n)) for _ in range(spread)]
                    runs: dict[str, list[float]] = {"skyguard": [], "floor": [], "noop": []}
                    for f in frames:
                        for arm, fd in (("skyguard", k.prog_fd), ("floor", floor_fd), ("noop", noop_fd)):
                            runs[arm].append(test_run_ns(fd, f, 1))
            finally:
                floor.close()
            med = {arm: statistics.median(v) for arm, v in runs.items()}
            out[n] = {"ns": hot, "spread_flows": spread, "spread_ns": med["skyguard"], "spread_floor_ns": med["floor"],
                      "spread_noop_ns": med["noop"], "spread_x_floor": ratio(med["skyguard"], med["floor"]),
                      "spread_over_noop_x_floor": ratio(med["skyguard"] - med["noop"], med["floor"] - med["noop"])}
    finally:
        noop.close()
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
    b_ff, b_sp, b_lp = ff[fills[0]]["ns"], ff[fills[0]]["spread_ns"], lp[lpms[0]]
    return {"flow_fill": {str(n): dict(v, x_smallest=ratio(v["ns"], b_ff),
                                       spread_x_smallest=ratio(v["spread_ns"], b_sp)) for n, v in ff.items()},
            "lpm_new_flow": {str(n): {"ns": v, "x_smallest": ratio(v, b_lp)} for n, v in lp.items()}}


def format_table(res: dict) -> str:
    spread = next(iter(res["flow_fill"].values()))["spread_flows"]
    lines = [f"established flow, ns/packet by flow-map fill: one flow repeated (cached) | one run each on {spread} "
             "filled flows, median (skyguard, floor, no-op; x floor above the no-op's single-run cost)"]
    lines += [f"  {n:>9} flows  {c['ns']:6.1f} ns  x{c['x_smallest']:.2f} | {c['spread_ns']:6.0f} "
              f"{c['spread_floor_ns']:6.0f} {c['spread_noop_ns']:5.0f} ns  x{c['spread_x_smallest']:.2f}  "
              f"x floor {c['spread_over_noop_x_floor']:.2f}" for n, c in res["flow_fill"].items()]
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
