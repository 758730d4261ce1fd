"""bench/fastpath.py's floors must do the work they are named for, or the ratios it prints compare against something
else: floor16.bpf.c (skyguard's parse, IPv4 flows under a 16-byte key in a table of their own) must find one flow
for both directions of an IPv4 conversation in its IPv4 table, and keep IPv6 flows in the 40-byte table. This checks
what the probes do, never how fast."""

from __future__ import annotations

import sys

import pytest

from skyguard.kernel.bpfsys import prog_test_run
from tests.conftest import ROOT

from .packets import udp4, udp6

FLOWS_MAX = 1024


@pytest.fixture
def bench(bpf_ok, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("common", None)
    import common

    return common


def _entries(table) -> list[tuple[bytes, bytes]]:
    return [(bytes(k), bytes(v)) for k, v in table.items()]


def _pkts(value: bytes) -> tuple[int, int]:
    # struct sg_flow: first_ns, last_ns, then pkts[2] (u64 each)
    return int.from_bytes(value[16:24], "little"), int.from_bytes(value[24:32], "little")


def test_floor16_keeps_ipv4_flows_apart_under_the_compact_key(bench):
    pl = b"\x55" * 40
    there = udp4("198.51.100.7", 50000, "192.0.2.1", 3478, pl)
    back = udp4("192.0.2.1", 3478, "198.51.100.7", 50000, pl)
    other = udp4("192.0.2.1", 3479, "198.51.100.7", 50000, pl)
    v6 = udp6("2001:db8::1", 50000, "2001:db8:1::1", 50001, pl)
    fl = bench.load_baseline("floor16", FLOWS_MAX)
    try:
        for f in (there, back, back, other, v6, v6):
            assert prog_test_run(fl.fd, f).verdict == 2  # XDP_PASS
        flows4, flows6 = _entries(fl.bpf[b"flows4"]), _entries(fl.bpf[b"flows"])
    finally:
        fl.close()
    assert len(flows4) == 2 and len(flows6) == 1
    by_key = dict(flows4)
    # the conversation's key: the lower address first (192.0.2.1 < 198.51.100.7), its port beside it, 16 bytes
    conv = (bytes([192, 0, 2, 1, 198, 51, 100, 7]) + (3478).to_bytes(2, "little") + (50000).to_bytes(2, "little")
            + b"\0\0" + bytes([17, 0]))
    assert len(conv) == 16 and conv in by_key
    # the first packet made the flow; the two packets back (source = lo endpoint: dir 0) were counted on it
    assert _pkts(by_key[conv]) == (2, 0)
    # and IPv6 kept the 40-byte key: one flow, its second packet counted
    assert len(flows6[0][0]) == 40 and sum(_pkts(flows6[0][1])) == 1
