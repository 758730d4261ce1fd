"""ns/packet of skyguard's XDP program against a no-op and a parse+LRU floor, measured with BPF_PROG_TEST_RUN.

Usage: bench/fastpath.py [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

import bcc  # noqa: E402
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from skyguard import kernel, wire  # noqa: E402

ESTABLISHED = bytes(
    Ether() / IP(src="192.0.2.1", dst="198.51.100.1") / UDP(sport=50000, dport=50001) / Raw(b"\x55" * 80)
)
MS_STUN = struct.pack(">HHI12s", 0x0001, 16, 0x2112A442, b"T" * 12) + struct.pack(">HHI", 0x8055, 4, 0x00010002) + \
    struct.pack(">HHI", 0x0024, 4, 0x6E001EFF)
STUN_FRAME = bytes(Ether() / IP(src="192.0.2.2", dst="203.0.113.2") / UDP(sport=50010, dport=3478) / Raw(MS_STUN))
BAD_FRAME = bytes(Ether() / IP(len=25, proto=17) / Raw(b"\x00\x01\x00\x02\x00"))


def ns_per_packet(fd: int, frame: bytes, repeat: int) -> float:
    k = kernel.Kernel.__new__(kernel.Kernel)
    k.prog_fd = fd
    return kernel.Kernel.test_run(k, frame, repeat=repeat).duration_ns  # the kernel reports the mean per run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    bpf_dir = wire.bpf_dir()
    noop = bcc.BPF(src_file=str(ROOT / "bench/noop.bpf.c").encode())
    noop_fd = noop.load_func(b"xdp_noop", bcc.BPF.XDP).fd
    floor = bcc.BPF(src_file=str(ROOT / "bench/floor.bpf.c").encode(), cflags=[f"-I{bpf_dir}", "-DSG_FLOWS_MAX=65536"])
    floor_fd = floor.load_func(b"xdp_floor", bcc.BPF.XDP).fd
    r = args.repeat
    noop_ns = ns_per_packet(noop_fd, ESTABLISHED, r)
    floor_ns = ns_per_packet(floor_fd, ESTABLISHED, r)
    cases = {}
    with kernel.Kernel(flows_max=65536) as k:
        fd = k.prog_fd
        for _ in range(wire.C["SG_PROBE"] + 1):  # the flow ends `other` (no evidence): fast path from then on
            k.test_run(ESTABLISHED)
        cases["established"] = ns_per_packet(fd, ESTABLISHED, r)
        cases["parse_error"] = ns_per_packet(fd, BAD_FRAME, r)
    # a window larger than the repeat count keeps the same STUN flow inspecting on every run
    with kernel.Kernel(flows_max=65536, window=60000, ringbuf_bytes=65536) as k:
        cases["stun_window"] = ns_per_packet(k.prog_fd, STUN_FRAME, min(r, 50000))
    if args.json:
        print(json.dumps({"noop_ns": noop_ns, "floor_ns": floor_ns, "cases": cases}))
        return 0
    print(f"noop   {noop_ns:7.1f} ns/packet")
    print(f"floor  {floor_ns:7.1f} ns/packet (parse + one LRU lookup)")
    for name, ns in cases.items():
        print(f"{name:12s} {ns:7.1f} ns/packet  x{ns / floor_ns:4.2f} floor  x{ns / max(noop_ns, 1):5.1f} no-op")
    return 0


if __name__ == "__main__":
    sys.exit(main())
