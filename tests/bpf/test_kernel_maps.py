"""kernel.Kernel map API: policy generations, prefixes in both LPM families, set_class, flow key decoding."""

from __future__ import annotations

import ipaddress

import pytest

from skyguard import wire
from skyguard.policy import Policy

from .packets import udp4, udp6

pytestmark = pytest.mark.bpf


@pytest.fixture(scope="module")
def k(bpf_ok):
    from skyguard.kernel.loader import Kernel

    with Kernel(flows_max=1024, lpm_max=256, ringbuf_bytes=1 << 16) as kern:
        yield kern


def pol(action_out: int = wire.PASS, pstn: tuple[str, ...] = ()) -> Policy:
    slots = [wire.PolicySlot()] * wire.POL_SLOTS
    slots[wire.OUT] = wire.PolicySlot(action=action_out)
    return Policy(name="p", path=None, slots=tuple(slots),
                  pstn_prefixes=tuple(ipaddress.ip_network(p) for p in pstn),
                  msmedia_prefixes=(ipaddress.ip_network("52.112.0.0/14"), ipaddress.ip_network("2603:1063::/38")),
                  exempt_prefixes=(ipaddress.ip_network("10.0.0.0/8"),))


def test_reload_swaps_generation_and_keeps_learned_and_block(k):
    k.load_policy(pol(pstn=("195.215.8.140/32",)))
    g = k.gen
    k.add_prefix("pstn", "198.51.100.7/32", wire.SRC_LEARNED, expires_ns=99)
    k.add_prefix("block", "2001:db8::/32", wire.SRC_MANUAL)
    k.load_policy(pol(pstn=("212.72.49.155/32",)))
    assert k.gen == g ^ 1
    pstn = {str(n): (s, e) for n, s, e in k.prefixes("pstn")}
    assert pstn == {"212.72.49.155/32": (wire.SRC_POLICY, 0), "198.51.100.7/32": (wire.SRC_LEARNED, 99)}
    assert [str(n) for n, _, _ in k.prefixes("block")] == ["2001:db8::/32"]
    # the old generation's keys are gone from the maps
    for kind in ("pstn", "block", "msmedia", "exempt"):
        assert not k._entries(kind, g)


def test_prefixes_land_in_both_families(k):
    k.load_policy(pol())
    ms = {str(n) for n, _, _ in k.prefixes("msmedia")}
    assert ms == {"52.112.0.0/14", "2603:1063::/38"}
    k.remove_prefix("msmedia", "2603:1063::/38")
    assert {str(n) for n, _, _ in k.prefixes("msmedia")} == {"52.112.0.0/14"}
    with pytest.raises(ValueError):
        k.prefixes("nope")


def test_policy_generation_drives_actions(k):
    k.load_policy(pol(action_out=wire.DROP, pstn=("203.0.113.0/24",)))
    assert k.test_run(udp4("192.0.2.1", 5000, "203.0.113.5", 6000, b"x" * 20)).verdict == 1
    k.load_policy(pol(action_out=wire.PASS, pstn=("203.0.113.0/24",)))
    assert k.test_run(udp4("192.0.2.1", 5000, "203.0.113.5", 6000, b"x" * 20)).verdict == 2


def test_set_class_sticks(k):
    k.load_policy(pol())
    key = wire.FlowKey.make("192.0.2.50", 7000, "198.51.100.50", 8000, 17)
    k.test_run(udp4("192.0.2.50", 7000, "198.51.100.50", 8000, b"\x45\x00\x44" + b"q" * 30))
    assert k.set_class(key, wire.SIGNALING, wire.C["SG_R_SNI"])
    for i in range(wire.C["SG_PROBE"] + 2):  # would otherwise end `other` (no evidence)
        k.test_run(udp4("198.51.100.50", 8000, "192.0.2.50", 7000, bytes([i]) * 30))
    f = k.flow(key)
    assert f.cls == wire.SIGNALING and f.reason == wire.C["SG_R_SNI"]
    assert f.flags & wire.C["SG_F_DAEMON"] and f.packets == wire.C["SG_PROBE"] + 3
    assert not k.set_class(wire.FlowKey.make("1.1.1.1", 1, "2.2.2.2", 2, 17), wire.OTHER, 0)


def test_flow_iteration_decodes_keys(k):
    k.load_policy(pol())
    frames = [
        (udp4("198.51.100.9", 443, "192.0.2.9", 51000, b"a" * 20), ("198.51.100.9", 443, "192.0.2.9", 51000)),
        (udp6("2001:db8::99", 9, "2001:db8::1", 10, b"b" * 20), ("2001:db8::99", 9, "2001:db8::1", 10)),
    ]
    for frame, _ in frames:
        k.test_run(frame)
    keys = {key for key, _ in k.flows()}
    for _, (src, sport, dst, dport) in frames:
        key = wire.FlowKey.make(src, sport, dst, dport, 17)
        assert key in keys
        f = k.flow(key)
        a, _b = key.endpoints(f.init_dir)
        assert a.endswith(f":{sport}") and src in a
    assert k.flow_count() == len(list(k.flows()))
    k.delete_flow(wire.FlowKey.make("2001:db8::99", 9, "2001:db8::1", 10, 17))
    assert k.flow(wire.FlowKey.make("2001:db8::99", 9, "2001:db8::1", 10, 17)) is None


def test_pinned_maps_are_adopted(pin_path):
    from skyguard.kernel.loader import Kernel

    with Kernel(flows_max=256, lpm_max=64, ringbuf_bytes=1 << 16, pin_path=pin_path) as k1:
        k1.test_run(udp4("192.0.2.70", 1, "192.0.2.71", 2, b"p" * 20))
        assert k1.flow_count() == 1
    with Kernel(flows_max=256, lpm_max=64, ringbuf_bytes=1 << 16, pin_path=pin_path) as k2:
        assert k2.flow_count() == 1
