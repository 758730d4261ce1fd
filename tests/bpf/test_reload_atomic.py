"""A policy reload never leaves half-written maps: while one thread reloads two policies back and forth and packets
flow, every consistent read of the active generation equals one of the two policies exactly, and every packet of a
new flow to a PSTN gateway gets a verdict that one of the two policies explains."""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time

import pytest

from skyguard import wire
from skyguard.lab import packet as pk
from skyguard.policy import parse_policy

POL_A = """
name = "a"
[class.skype-out]
action = "drop"
[class.skype-p2p]
action = "mark"
dscp = 46
[pstn]
prefixes = ["192.0.2.0/28", "192.0.2.64/28", "2001:db8:a::/48"]
[microsoft_media]
prefixes = ["198.51.100.0/24"]
"""
POL_B = """
name = "b"
[class.skype-out]
action = "pass"
[class.skype-relay]
action = "drop"
[pstn]
prefixes = ["203.0.113.0/28"]
[microsoft_media]
prefixes = ["198.51.100.128/25", "2001:db8:b::/48"]
"""


def _view(k, gen: int) -> tuple:
    slots = tuple(k._policy.lookup((gen * wire.POL_SLOTS + i).to_bytes(4, "little"))[:4] for i in range(8))
    # a set: walking an LPM trie with get_next_key while another thread writes it may return a key twice
    pfx = tuple(sorted({(kind, str(n)) for kind in ("pstn", "msmedia") for _r, n, _s, _e, _f in k._entries(kind, gen)}))
    return slots, pfx


def _expected(pol) -> tuple:
    slots = tuple(s.pack() for s in pol.slots)
    pfx = tuple(sorted([("pstn", str(n)) for n in pol.pstn_prefixes] + [("msmedia", str(n)) for n in
                                                                          pol.msmedia_prefixes]))
    return slots, pfx


@pytest.fixture
def kern(bpf_ok):
    from skyguard.kernel.loader import Kernel

    k = Kernel(flows_max=65536)
    yield k
    k.close()


def test_reload_under_traffic_is_atomic(kern):
    a, b = parse_policy(POL_A, "a.toml"), parse_policy(POL_B, "b.toml")
    want = {_expected(a): "a", _expected(b): "b"}
    kern.load_policy(a)
    stop = threading.Event()
    reloads = [0]

    def reloader():
        while not stop.is_set():
            kern.load_policy(b if reloads[0] % 2 == 0 else a)
            reloads[0] += 1

    t = threading.Thread(target=reloader)
    t.start()
    seen: dict[str, int] = {"a": 0, "b": 0}
    bad = []
    verdicts: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 6.0
        port = 1024
        while time.monotonic() < deadline and (reloads[0] < 40 or min(seen.values()) < 5):
            g = kern.gen
            v = _view(kern, g)
            if kern.gen != g:
                continue  # flipped while reading: not a consistent read
            name = want.get(v)
            if name is None:
                bad.append(v)
            else:
                seen[name] += 1
            # a new flow's first packet towards A's gateway: dropped under A, passed under B, never anything else
            port += 1
            r = kern.test_run(pk.udp("10.0.0.9", port, "192.0.2.5", 5004, b"\x80\x00" + bytes(30)))
            verdicts[r.verdict] = verdicts.get(r.verdict, 0) + 1
    finally:
        stop.set()
        t.join()
    assert not bad, f"{len(bad)} half-written views, e.g. {bad[0]}"
    assert reloads[0] >= 20 and seen["a"] >= 3 and seen["b"] >= 3, (reloads, seen)
    assert set(verdicts) <= {1, 2} and verdicts.get(1) and verdicts.get(2), verdicts  # XDP_DROP / XDP_PASS only
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
