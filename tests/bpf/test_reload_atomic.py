"""A policy reload is atomic as the XDP program sees it: while another thread reloads two policies back and forth, every
packet's verdict and DSCP come from exactly one of the two policies, never from A's prefixes with B's actions.

The two policies are built so that both mixtures show: a new flow towards 192.0.2.5 (or 2001:db8:a::5)

| prefixes | actions | class      | result                     |
|----------|---------|------------|----------------------------|
| A        | A       | skype-out  | pass, DSCP 10              |
| B        | B       | unknown    | pass, DSCP 20              |
| A        | B       | skype-out  | drop                       |
| B        | A       | unknown    | pass, DSCP untouched (0)   |

Only a packet that creates its flow looks prefixes up, so every packet opens a new flow.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import signal
import time

import pytest

from skyguard import wire
from skyguard.kernel.bpfsys import XDP_DROP, XDP_PASS
from skyguard.lab import packet as pk
from skyguard.policy import parse_policy

POL_A = """
name = "a"
[class.skype-out]
action = "mark"
dscp = 10
[pstn]
prefixes = ["192.0.2.0/24", "2001:db8:a::/48"]
"""
POL_B = """
name = "b"
[class.unknown]
action = "mark"
dscp = 20
[class.skype-out]
action = "drop"
[pstn]
prefixes = ["203.0.113.0/24"]
"""
RELOADS = 300  # flips of the generation the packets race against
DEADLINE_S = 300.0  # only against a hang: the loop ends when the reloader has done its reloads
PAYLOAD = bytes(32)  # no signature matches it: the class comes from the prefixes alone
DSCP_A, DSCP_B = 10, 20
# where the frames of lab.packet.udp hold the source address, the source port and the DSCP (untagged Ethernet)
V4 = {"src": slice(26, 30), "sport": slice(34, 36), "dscp": 15}
V6 = {"src": slice(22, 38), "sport": slice(54, 56), "dscp": 14}


@pytest.fixture
def kern(bpf_ok):
    from skyguard.kernel.loader import Kernel

    k = Kernel(flows_max=65536, ringbuf_bytes=1 << 16)
    yield k
    k.close()


class Frames:
    """Packet i opens a flow of its own (source address and port from i) towards A's PSTN prefixes; IPv4 and IPv6
    alternate. Frames are patched templates: building each from scratch would space the packets further apart than
    the generation flips they race against."""

    def __init__(self) -> None:
        self.v4 = bytearray(pk.udp("10.0.0.0", 20000, "192.0.2.5", 5004, PAYLOAD))
        self.v6 = bytearray(pk.udp("2001:db8:c::", 20000, "2001:db8:a::5", 5004, PAYLOAD))
        assert self.v4[V4["sport"]] == self.v6[V6["sport"]] == (20000).to_bytes(2, "big")

    def frame(self, i: int) -> tuple[bytes, dict]:
        t, lay = (self.v6, V6) if i % 2 else (self.v4, V4)
        n = i // 2
        src = lay["src"]
        t[src.stop - 4:src.stop] = (n // 40000).to_bytes(4, "big")
        t[lay["sport"]] = (20000 + n % 40000).to_bytes(2, "big")  # above the service ports that decide `other`
        return bytes(t), lay


def _dscp(out: bytes, lay: dict) -> int:
    at = lay["dscp"]
    if lay is V6:  # version(4) | traffic class(8) | flow label(20)
        return (((out[at] & 0x0F) << 4) | (out[at + 1] >> 4)) >> 2
    return out[at] >> 2


def _outcome(verdict: int, out: bytes, lay: dict) -> str:
    if verdict == XDP_DROP:
        return "mixed: A's prefixes with B's actions (drop)"
    dscp = _dscp(out, lay)
    if verdict == XDP_PASS and dscp == DSCP_A:
        return "a"
    if verdict == XDP_PASS and dscp == DSCP_B:
        return "b"
    if verdict == XDP_PASS and dscp == 0:
        return "mixed: B's prefixes with A's actions (DSCP untouched)"
    return f"unexplained: verdict {verdict}, DSCP {dscp}"


def _reload_in_child(kern, a, b) -> int:
    """Fork a process that reloads B, A, B, ... RELOADS times through the same maps, then exits 0 (1 on an error).
    A process rather than a thread: the packets then race the reloads on another CPU, not for the GIL."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for n in range(RELOADS):
                kern.load_policy(b if n % 2 == 0 else a)
            code = 0
        finally:
            os._exit(code)
    return pid


def test_reload_under_traffic_is_atomic(kern):
    a, b = parse_policy(POL_A, "a.toml"), parse_policy(POL_B, "b.toml")
    kern.load_policy(a)
    frames = Frames()
    seen: dict[str, int] = {}
    first: dict[str, int] = {}
    deadline = time.monotonic() + DEADLINE_S
    pid = _reload_in_child(kern, a, b)
    status = None
    i = 0
    try:
        while status is None and time.monotonic() < deadline:
            for _ in range(256):
                frame, lay = frames.frame(i)
                r = kern.test_run(frame)
                name = _outcome(r.verdict, r.data, lay)
                seen[name] = seen.get(name, 0) + 1
                first.setdefault(name, i)
                i += 1
            done, st = os.waitpid(pid, os.WNOHANG)
            status = st if done else None
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert status is not None, f"the reloader did not finish within {DEADLINE_S} s"
    assert os.waitstatus_to_exitcode(status) == 0, "the reloader failed"
    bad = {n: c for n, c in seen.items() if n not in ("a", "b")}
    assert not bad, (f"{sum(bad.values())} of {i} packets mixed the two policies: {bad} (first at packet "
                     f"{min(first[n] for n in bad)})")
    assert seen.get("a") and seen.get("b"), f"the packets did not see both policies: {seen}"
    st = kern.stats()
    assert st["act_pass"] + st["act_drop"] + st["act_mark"] == st["packets"]


def test_learned_and_manual_prefixes_survive_reloads(kern):
    a, b = parse_policy(POL_A, "a.toml"), parse_policy(POL_B, "b.toml")
    kern.load_policy(a)
    kern.add_prefix("pstn", ipaddress.ip_network("192.0.2.200/32"), wire.SRC_LEARNED, 123)
    kern.add_prefix("block", ipaddress.ip_network("203.0.113.99/32"), wire.SRC_MANUAL, 0)
    for pol in (b, a, dataclasses.replace(b, name="b2")):
        kern.load_policy(pol)
        assert (ipaddress.ip_network("192.0.2.200/32"), wire.SRC_LEARNED, 123) in kern.prefixes("pstn")
        assert [n for n, _s, _e in kern.prefixes("block")] == [ipaddress.ip_network("203.0.113.99/32")]
    # nothing of the inactive generation is left behind
    for kind in ("pstn", "msmedia", "exempt", "block"):
        assert kern._entries(kind, kern.gen ^ 1) == []
