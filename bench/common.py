"""Shared helpers for the benchmarks: import path, BPF_PROG_TEST_RUN timing, test frames, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "daemon") not in sys.path:
    sys.path.insert(0, str(ROOT / "daemon"))

from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Dot1Q, Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402


def _eth():
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

MS_STUN = (struct.pack(">HHI12s", 0x0001, 16, 0x2112A442, b"T" * 12) + struct.pack(">HHI", 0x8055, 4, 0x00010002)
           + struct.pack(">HHI", 0x0024, 4, 0x6E001EFF))


@dataclass(frozen=True)
class Frames:
    """One frame per fast-path case (all 80-byte payloads unless a signature needs its own)."""

    est4: bytes = bytes(_eth() / IP(src="192.0.2.1", dst="198.51.100.1") / UDP(sport=50000, dport=50001)
                        / Raw(b"\x55" * 80))
    est6: bytes = bytes(_eth() / IPv6(src="2001:db8::1", dst="2001:db8:1::1") / UDP(sport=50000, dport=50001)
                        / Raw(b"\x55" * 80))
    vlan: bytes = bytes(_eth() / Dot1Q(vlan=42) / IP(src="192.0.2.1", dst="198.51.100.1")
                        / UDP(sport=50000, dport=50001) / Raw(b"\x55" * 80))
    stun: bytes = bytes(_eth() / IP(src="192.0.2.2", dst="203.0.113.2") / UDP(sport=50010, dport=3478)
                        / Raw(MS_STUN))
    bad: bytes = bytes(_eth() / IP(len=25, proto=17) / Raw(b"\x00\x01\x00\x02\x00"))


def udp4_frame(i: int, size: int = 64) -> bytes:
    """A UDP/IPv4 frame of `size` bytes (with FCS room: 4 bytes less on the wire) for flow number i."""
    src = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    f = _eth() / IP(src=src, dst="198.51.100.1") / UDP(sport=40000 + (i % 20000), dport=443)
    pad = max(0, size - 4 - len(f))
    return bytes(f / Raw(b"\x00" * pad))


def test_run_ns(fd: int, frame: bytes, repeat: int) -> float:
    """Mean ns per run of the program on `frame` as the kernel reports it (one BPF_PROG_TEST_RUN, `repeat` runs).
    The kernel's figure is an integer mean; timing the syscall from here instead would add a fixed ~16 ms per call
    with repeat > 1 (measured on this kernel), so the kernel's own timer is the one used."""
    from skyguard.kernel.bpfsys import prog_test_run

    return float(prog_test_run(fd, frame, repeat=repeat).duration_ns)


def best_of(fd: int, frame: bytes, repeat: int, rounds: int = 3) -> float:
    """The lowest of `rounds` means: other load on the machine only ever adds time."""
    return min(test_run_ns(fd, frame, repeat) for _ in range(rounds))


def paired(runs: dict[str, tuple[int, bytes]], repeat: int, rounds: int) -> tuple[dict[str, float], list[dict]]:
    """Several (program, frame) pairs timed in turn within every round, so that load that comes and goes is shared by
    all of them: the lowest figure of each, and every round's figures for ratios taken within a round (paired_ratio)."""
    rows = [{name: test_run_ns(fd, frame, repeat) for name, (fd, frame) in runs.items()} for _ in range(rounds)]
    return {name: min(r[name] for r in rows) for name in runs}, rows


def paired_ratio(rows: list[dict], a: str, b: str) -> float | None:
    """The median over rounds of a / b, each taken within one round. On a shared VM, bursts of steal time land on
    single rounds: a ratio of two minima can take each from another round, the median of paired ratios passes them
    over."""
    vals = [r[a] / r[b] for r in rows if r.get(b)]
    return round(statistics.median(vals), 3) if vals else None


@dataclass
class Baseline:
    """A baseline XDP program of bench/, compiled and loaded: `bpf` (its maps), `fd`; close() unloads it."""

    bpf: object
    fd: int

    def close(self) -> None:
        self.bpf.cleanup()


def load_baseline(name: str, flows_max: int | None = None) -> Baseline:
    """bench/noop.bpf.c (`noop`) or bench/floor.bpf.c (`floor`: skyguard's parsing and a flow table of `flows_max`)."""
    import bcc

    from skyguard import wire

    cflags = [] if flows_max is None else [f"-I{wire.bpf_dir()}", f"-DSG_FLOWS_MAX={flows_max}"]
    b = bcc.BPF(src_file=str(ROOT / f"bench/{name}.bpf.c").encode(), cflags=cflags)
    try:
        return Baseline(b, b.load_func(f"xdp_{name}".encode(), bcc.BPF.XDP).fd)
    except BaseException:
        b.cleanup()
        raise


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu, "python": platform.python_version()}


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None
