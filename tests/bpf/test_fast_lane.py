"""The live build's fast lane (bpf/skyguard.bpf.c, sg_fast4) serves the packets of settled IPv4 flows in flows4
without the full path; the replay build has no fast lane, so its full path is the reference. Both builds run the same
frames under the same policy, packet by packet: the verdict, the frame that leaves, every counter's change and, at the
end, every flow must be the same. The frames are flows that settle and move to flows4, then frames with those flows'
5-tuples that the fast lane must leave to the full path (malformed, fragments, a datagram past the first buffer, more
VLAN tags), mixed with the fuzzer's structured and mutated frames."""

from __future__ import annotations

import dataclasses
import random

import pytest

from skyguard import wire
from skyguard.lab import packet as P

from .refparse import predict
from .test_fuzz import BLOCK, VARIANTS, RngChooser, build_frame, corpus, ip4_fragment, measure_linear, mutate

pytestmark = pytest.mark.bpf

PROBE = wire.C["SG_PROBE"]


@pytest.fixture(scope="module")
def builds(bpf_ok):
    from skyguard.kernel.loader import Kernel

    with Kernel(flows_max=8192, lpm_max=256, ringbuf_bytes=1 << 20) as live, \
            Kernel(flows_max=8192, lpm_max=256, ringbuf_bytes=1 << 20, replay=True) as full:
        yield live, full


def in_flows4(k, frame: bytes) -> bool:
    key = predict(frame).key
    compact = wire.key4_of(key.pack()) if key is not None else None
    return compact is not None and k._flows4.lookup(compact) is not None


PLAIN = b"\x99" * 40  # no signature: a flow is `other` and settled after SG_PROBE packets


def settling_flows(rng: random.Random) -> list[bytes]:
    """IPv4 flows the kernel settles on its own (no signature), each as a frame of each direction: UDP and TCP, no
    VLAN, one tag and two (QinQ), endpoints in the exempt and blocked prefixes, a PSTN and a Microsoft media address."""
    ends = ("10.1.2.3", "192.168.1.7", "10.66.0.9", "10.77.3.4", "195.215.8.140", "52.114.250.5", "8.8.8.8")
    out = []
    for i in range(24):
        a, b = rng.sample(ends, 2)
        sa, sb = rng.randint(1024, 65535), rng.choice((53, 443, 3478, 5060, 12340, 40000 + i))
        vlan = (None, 7, (9, 3))[i % 3]
        if i % 4 == 3:
            out += [P.tcp(a, sa, b, sb, PLAIN, vlan=vlan), P.tcp(b, sb, a, sa, PLAIN[:20], vlan=vlan)]
        else:
            out += [P.udp(a, sa, b, sb, PLAIN, vlan=vlan), P.udp(b, sb, a, sa, PLAIN[:10], vlan=vlan)]
    return out


def stream(rng: random.Random, linear: int) -> list[bytes]:
    """Settled IPv4 flows first, then their packets mixed with frames the fast lane must leave to the full path."""
    c = RngChooser(rng)
    settled = settling_flows(rng)
    out: list[bytes] = []
    for f in settled[::2]:  # settle each (SG_PROBE packets); the next packet moves it to flows4
        out += [f] * (PROBE + 2)
    jumbo = P.udp("10.1.2.3", 1000, "10.1.2.4", 2000, PLAIN)
    out += [jumbo] * (PROBE + 2)
    mixed: list[bytes] = []
    for _ in range(4):
        mixed += settled  # the fast lane's own packets, both directions
    for f in settled:
        mixed.append(mutate(c, f, rng.randint(1, 2)))  # the same flow's frame, broken one way or another
        mixed.append(f[:12] + b"\x81\x00\x00\x05" + f[12:])  # one more VLAN tag: another flow, or too many tags
    for f in settled[::2]:
        if f[12:14] == b"\x08\x00":  # untagged IPv4: cut into fragments of the flow's datagram
            mixed.append(ip4_fragment(f + bytes(64), 0x2000, 20 + 8 + 16))  # first fragment: ports, UDP length past it
            mixed.append(ip4_fragment(f, 0x0010, 20 + 8))  # a later fragment: no ports, no flow
    mixed.append(P.udp("10.1.2.3", 1000, "10.1.2.4", 2000, bytes(linear + 100)))  # past the first buffer
    mixed.append(P.udp("10.1.2.4", 2000, "10.1.2.3", 1000, bytes(linear + 300)))  # and back
    mixed += [build_frame(c) for _ in range(60)]
    mixed += corpus(rng)[-8:]
    rng.shuffle(mixed)
    return out + mixed


def flow_state(k) -> dict:
    """Every flow without its two clocks (each build reads its own), and where it lives."""
    return {key: dataclasses.replace(f, first_ns=0, last_ns=0) for key, f in k.flows()} | {"tables": k.table_counts()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_fast_lane_agrees_with_the_full_path_on_every_packet(builds, variant):
    live, full = builds
    v = VARIANTS[variant]
    for k in builds:
        k.load_policy(v.policy())
        for net in BLOCK:
            k.add_prefix("block", net, wire.SRC_MANUAL)
        k.delete_flows([key for key, _ in k.flows()])
        k.poll_events()
    linear = measure_linear(live)
    assert linear == measure_linear(full) and 1500 <= linear < 16000
    frames = stream(random.Random(list(VARIANTS).index(variant)), linear)
    served = 0  # packets whose flow was in live's flows4 when they came: the fast lane's, or the ones it left
    for i, frame in enumerate(frames):
        served += in_flows4(live, frame)
        b_live, b_full = live.stats(), full.stats()
        r_live, r_full = live.test_run(frame), full.test_run(frame)
        a_live, a_full = live.stats(), full.stats()
        ctx = f"#{i} {frame[:80].hex()}"
        assert (r_live.verdict, r_live.data) == (r_full.verdict, r_full.data), ctx
        d_live = {n: a_live[n] - b_live[n] for n in a_live if a_live[n] != b_live[n]}
        d_full = {n: a_full[n] - b_full[n] for n in a_full if a_full[n] != b_full[n]}
        assert d_live == d_full, ctx
        assert d_live["packets"] == 1, ctx
        if i % 200 == 199:
            live.poll_events(), full.poll_events()
    assert flow_state(live) == flow_state(full)
    # the flows settled and moved (those of blocked endpoints too: a block is a verdict, not a class)
    assert live.table_counts()["flows4"] >= 20
    assert served >= 4 * 40, served  # the fast lane's share of the stream


def test_the_kernel_leaves_the_derived_counters_to_userspace(builds):
    """The totals, action, class and out_flow counters are sums of pairs (wire.derive_stats): both builds leave them
    at 0 in the map, on the fast lane, the full path and the no-flow path alike, and the loader's sums still count."""
    derived = [wire.C[n] for n in ("SG_ST_PACKETS", "SG_ST_BYTES", "SG_ST_OUT_FLOW", "SG_ST_ACT_PASS", "SG_ST_ACT_DROP",
                                   "SG_ST_ACT_MARK")]
    derived += [wire.C["SG_ST_CLASS_BASE"] + c for c in range(wire.C["SG_NCLASSES"])]
    frame = P.udp("192.0.2.1", 4000, "198.51.100.2", 5000, PLAIN)
    for k in builds:
        k.load_policy(VARIANTS["all-pass"].policy())
        raw = k._stats.lookup(b"\0\0\0\0")
        k._stats.update(b"\0\0\0\0", bytes(len(raw)))  # a clean slate (a pinned older map may hold these)
        for _ in range(PROBE + 5):  # inspected, settled, moved, then the fast lane's (live)
            k.test_run(frame)
        k.test_run(b"\xff" * 12 + b"\x08\x06" + bytes(28))  # ARP: no flow
        assert all(cpu[i] == 0 for cpu in k.stats_per_cpu() for i in derived)
        st = k.stats()
        assert (st["packets"], st["out_flow"], st["out_non_ip"], st["act_pass"]) == (PROBE + 6, PROBE + 5, 1, PROBE + 6)
        assert st["class_other"] + st["class_unknown"] == PROBE + 5 and st["bytes"] == (PROBE + 5) * len(frame) + 42
