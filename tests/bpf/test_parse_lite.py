"""The live program's short path (bpf/skyguard.bpf.c: xdp_skyguard) against the whole program (xdp_sg_full).

The entry parses a plain frame with sg_parse_lite and serves a settled flow's packet itself; every other packet is
tail-called into the whole program. The promise is that this changes nothing a packet meets:
- sg_parse_lite accepts a frame only when sg_parse_frame accepts it too, with the same fields: a harness compiled from
  bpf/parsing.h runs both on structured and mutated frames and compares every field;
- a packet that takes the short path gets the verdict, the bytes out, the stats and the flow counters that the whole
  program gives the same packet, under every kind of policy action;
- packets the short path must not take (a DNS flow's, a flow still inspected) and every frame when the whole program
  is missing go where they should, counted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import struct

import pytest

from skyguard import wire
from skyguard.policy import parse_policy
from tests.bpf.packets import IP, TCP, UDP, Dot1AD, Dot1Q, Ether, IPv6, IPv6ExtHdrDestOpt, Raw, tcp4, udp4, udp6

pytestmark = pytest.mark.bpf

# two programs, one per parser, each writing what it made of the frame into `res` (one program holding both parses
# would not verify: every exit of one parse would meet the whole of the other)
HARNESS = r"""
#include "skyguard.h"
#include "parsing.h"

struct out {
	__s32 rc;
	__u32 l3, l4, pl, plen;
	__u16 sport, dport, vlan;
	__u8 proto, v6, frag, _pad;
	__u32 saddr4, daddr4;
	__u32 saddr6[4], daddr6[4];
};

BPF_ARRAY(res, struct out, 1);

static __always_inline __u32 off(void *p, void *data)
{
	return p ? (__u32)(p - data) : 0xffffffff;
}

static __always_inline void put(int rc, struct sg_pkt *pk, void *data)
{
	__u32 zero = 0;
	struct out *o = res.lookup(&zero);

	if (!o)
		return;
	o->rc = rc;
	o->l3 = off(pk->l3, data);
	o->l4 = off(pk->l4, data);
	o->pl = off(pk->pl, data);
	o->plen = pk->plen;
	o->sport = pk->sport;
	o->dport = pk->dport;
	o->vlan = pk->vlan;
	o->proto = pk->proto;
	o->v6 = pk->v6;
	o->frag = pk->frag;
	o->saddr4 = pk->saddr4;
	o->daddr4 = pk->daddr4;
	__builtin_memcpy(o->saddr6, &pk->saddr6, 16);
	__builtin_memcpy(o->daddr6, &pk->daddr6, 16);
}

int xdp_lite(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	struct sg_pkt pk = {};

	put(sg_parse_lite(data, (void *)(long)ctx->data_end, &pk), &pk, data);
	return XDP_PASS;
}

int xdp_full(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	struct sg_pkt pk = {};

	put(sg_parse(data, (void *)(long)ctx->data_end, &pk), &pk, data);
	return XDP_PASS;
}
"""
OUT = struct.Struct("<iIIIIHHHBBBx2xII16s16s")  # with the 2 bytes that align saddr4


@pytest.fixture(scope="module")
def harness(bpf_ok):
    import bcc

    b = bcc.BPF(text=HARNESS.encode(), cflags=[f"-I{wire.bpf_dir()}", "-Wno-unused-function"])
    try:
        yield b.load_func(b"xdp_lite", bcc.BPF.XDP).fd, b.load_func(b"xdp_full", bcc.BPF.XDP).fd, b[b"res"]
    finally:
        b.cleanup()


def _parse(harness, fd: int, frame: bytes) -> tuple:
    from skyguard.kernel.bpfsys import prog_test_run

    res = harness[2]
    prog_test_run(fd, frame)
    return OUT.unpack(bytes(res[res.Key(0)]))


DECLINED, AGREED, DIFFERED = "declined", "agreed", "differed"


def _check(harness, frame: bytes) -> tuple[str, str]:
    """What the short path's parse made of `frame` beside the full parse: declined (left to it), agreed (the same
    fields), or differed (and how)."""
    lite = _parse(harness, harness[0], frame)
    if lite[0] == 0:
        return DECLINED, ""
    full = _parse(harness, harness[1], frame)
    names = ("rc", "l3", "l4", "pl", "plen", "sport", "dport", "vlan", "proto", "v6", "frag", "saddr4", "daddr4",
             "saddr6", "daddr6")
    want = (6 if full[9] else 4, *full[1:]) if full[0] == 0 else ("the full parse's error", full[0])
    diff = [f"{n} {a!r} != {b!r}" for n, a, b in zip(names, lite, want, strict=False) if a != b]
    return (DIFFERED, "; ".join(diff)) if diff else (AGREED, "")


PAY = b"\x55" * 40
# frames the short path is for: it must accept every one
PLAIN = {
    "udp4": udp4("192.0.2.1", 50000, "198.51.100.1", 50001, PAY),
    "tcp4": tcp4("192.0.2.1", 50000, "198.51.100.1", 443, PAY),
    "tcp4_options": bytes(Ether() / IP(src="192.0.2.1", dst="198.51.100.1")
                          / TCP(sport=1, dport=2, options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]) / Raw(PAY)),
    "udp4_vlan": bytes(Ether() / Dot1Q(vlan=42) / IP(src="192.0.2.1", dst="198.51.100.1")
                       / UDP(sport=1, dport=2) / Raw(PAY)),
    "udp4_padded": udp4("192.0.2.1", 5, "198.51.100.1", 6, b"x") + b"\0" * 30,  # Ethernet padding after tot_len
    "udp6": udp6("2001:db8::1", 50000, "2001:db8:1::1", 50001, PAY),
    "tcp6_vlan": bytes(Ether() / Dot1Q(vlan=7) / IPv6(src="2001:db8::1", dst="2001:db8:1::1")
                       / TCP(sport=1, dport=2) / Raw(PAY)),
    "udp4_empty": udp4("192.0.2.1", 5, "198.51.100.1", 6, b"") + b"\0" * 20,
}
# frames the full parse takes and the short path leaves to it
DECLINE = {
    "qinq": bytes(Ether() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / IP(src="192.0.2.1", dst="198.51.100.1")
                  / UDP(sport=1, dport=2) / Raw(PAY)),
    "ip_options": bytes(Ether() / IP(src="192.0.2.1", dst="198.51.100.1", options=b"\x01\x01\x01\x00")
                        / UDP(sport=1, dport=2) / Raw(PAY)),
    "first_fragment": bytes(Ether() / IP(src="192.0.2.1", dst="198.51.100.1", flags="MF")
                            / UDP(sport=1, dport=2, len=400) / Raw(PAY)),
    "ip6_ext": bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8:1::1") / IPv6ExtHdrDestOpt()
                     / UDP(sport=1, dport=2) / Raw(PAY)),
    "icmp": bytes(Ether() / IP(src="192.0.2.1", dst="198.51.100.1", proto=1) / Raw(PAY)),
    "short_udp4": udp4("192.0.2.1", 5, "198.51.100.1", 6, b""),  # 42 bytes: left to the full parse
}


def test_lite_parse_accepts_plain_frames_as_the_full_parse_does(harness) -> None:
    for name, frame in PLAIN.items():
        code, diff = _check(harness, frame)
        assert code == AGREED, f"{name}: {code} {diff}"
    for name, frame in DECLINE.items():
        assert _check(harness, frame)[0] == DECLINED, name


def _mutants(rng: random.Random, base: bytes, n: int):
    """Frames near `base`: bytes of its headers changed (lengths and version/IHL bytes most), cut, or grown."""
    hot = [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24, 25, 38, 39, 42, 43, 46, 47, 50, 51, 58, 59]
    for _ in range(n):
        f = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            i = rng.choice(hot) if rng.random() < 0.7 else rng.randrange(min(len(f), 80))
            if i < len(f):
                flip = f[i] ^ (1 << rng.randrange(8))
                f[i] = rng.choice((0, 1, 0x45, 0x46, 0x60, 0x81, 0xFF, rng.randrange(256), flip))
        r = rng.random()
        if r < 0.2:
            f = f[: rng.randrange(14, len(f) + 1)]
        elif r < 0.3:
            f += bytes(rng.randrange(1, 64))
        yield bytes(f)


def test_lite_parse_never_disagrees_on_mutated_frames(harness) -> None:
    rng = random.Random(17)
    seen = {DECLINED: 0, AGREED: 0}
    for base in [*PLAIN.values(), *DECLINE.values()]:
        for frame in _mutants(rng, base, 400):
            code, diff = _check(harness, frame)
            assert code != DIFFERED, f"the short path's parse differs from the full parse ({diff}) on {frame.hex()}"
            seen[code] += 1
    print(f"mutated frames: {seen[AGREED]} accepted by both parsers, {seen[DECLINED]} left to the full parse")
    assert seen[AGREED] > 500 and seen[DECLINED] > 500, seen  # both sides of the choice were exercised


# ---- the short path against the whole program ---------------------------------------------------------------------

EXEMPT_NET, BLOCK_NET = "10.66.0.0/16", "10.77.0.0/16"
POLICIES = {
    "pass": 'name = "pass"\n',
    "drop": 'name = "drop"\n[class.other]\naction = "drop"\n',
    "mark": 'name = "mark"\n[class.other]\naction = "mark"\ndscp = 46\n',
    "fwmark": 'name = "fwmark"\n[class.other]\nfwmark = 42\n',
    "qos": 'name = "qos"\n[qos]\nmedia = true\n',  # the flows are made skype-relay: media, marked by their ports
}
FLOWS = {
    "udp4": udp4("192.0.2.1", 50000, "198.51.100.1", 50001, PAY),
    "udp4_reply": udp4("198.51.100.1", 50001, "192.0.2.1", 50000, PAY, tos=0x03),  # ECN bits kept by a mark
    "tcp4": tcp4("192.0.2.2", 40000, "198.51.100.2", 443, PAY),
    "vlan4": bytes(Ether() / Dot1Q(vlan=42) / IP(src="192.0.2.3", dst="198.51.100.3")
                   / UDP(sport=50002, dport=50003) / Raw(PAY)),
    "udp6": udp6("2001:db8::1", 50004, "2001:db8:1::1", 50005, PAY),
    "exempt": udp4("10.66.0.1", 50006, "198.51.100.4", 50007, PAY),
    "blocked": udp4("10.77.0.1", 50008, "198.51.100.5", 50009, PAY),
}


@pytest.fixture
def live(bpf_ok):
    from skyguard.kernel.loader import Kernel

    with Kernel(flows_max=1024, lpm_max=256, ringbuf_bytes=1 << 16) as k:
        yield k


def _load(k, text: str) -> None:
    pol = parse_policy(text)
    k.load_policy(dataclasses.replace(pol, exempt_prefixes=(ipaddress.ip_network(EXEMPT_NET),)))
    k.add_prefix("block", BLOCK_NET, wire.C["SG_SRC_MANUAL"])  # an operator's block (skyguard block)


def _settle(k, frame: bytes, cls: int | None = None) -> None:
    for _ in range(wire.C["SG_PROBE"] + 1):  # no evidence: the flow ends `other` and is done
        k.test_run(frame)
    if cls is not None:
        k.set_class(_key(frame), cls, wire.C["SG_R_E2O_STATS"])  # the daemon's decision


def _state(k, frame: bytes) -> tuple:
    key = _key(frame)
    f = k.flow(key)
    return k.stats(), (f.pkts, f.bytes_, f.dropped, f.cls, f.flags) if f else None


def _key(frame: bytes) -> wire.FlowKey:
    p = Ether(frame)
    ip = p[IP] if IP in p else p[IPv6]
    l4 = p[UDP] if UDP in p else p[TCP]
    vlan = p[Dot1Q].vlan if Dot1Q in p else 0
    return wire.FlowKey.make(ip.src, l4.sport, ip.dst, l4.dport, 17 if UDP in p else 6, vlan=vlan)


def _delta(a: tuple, b: tuple) -> tuple:
    sa, fa = a
    sb, fb = b
    stats = {n: sb[n] - sa[n] for n in sb if sb[n] != sa[n]}
    flow = None if fa is None else (tuple(y - x for x, y in zip(fa[0], fb[0], strict=True)),
                                    tuple(y - x for x, y in zip(fa[1], fb[1], strict=True)),
                                    fb[2] - fa[2], fb[3], fb[4])
    return stats, flow


@pytest.mark.parametrize("policy", POLICIES)
def test_short_path_gives_what_the_whole_program_gives(live, policy) -> None:
    from skyguard.kernel.bpfsys import prog_test_run

    k = live
    _load(k, POLICIES[policy])
    slot = k._raw("full_prog", 4, 4)
    for name, frame in FLOWS.items():
        _settle(k, frame, wire.RELAY if policy == "qos" else None)
        # the whole program, run directly
        before = _state(k, frame)
        whole = prog_test_run(k.full_fd, frame)
        by_whole = _delta(before, _state(k, frame))
        # the entry with the whole program out of reach: only the short path can count the packet right
        assert slot.delete(b"\0\0\0\0")
        try:
            before = _state(k, frame)
            short = k.test_run(frame)
            by_short = _delta(before, _state(k, frame))
        finally:
            assert slot.update(b"\0\0\0\0", k.full_fd.to_bytes(4, "little"))
        assert "out_no_flow" not in by_short[0], f"{policy}/{name}: the short path did not take the packet"
        assert (short.verdict, short.data) == (whole.verdict, whole.data), f"{policy}/{name}: verdict or bytes out"
        assert by_short == by_whole, f"{policy}/{name}: counts differ\nshort {by_short}\nwhole {by_whole}"
        assert by_short[0]["packets"] == 1 and by_short[1][0] in ((1, 0), (0, 1)), by_short


def test_packets_the_short_path_leaves_reach_the_whole_program(live) -> None:
    k = live
    slot = k._raw("full_prog", 4, 4)
    dns = udp4("192.0.2.9", 40000, "198.51.100.9", 53, b"\x12\x34" + b"\0" * 30)  # its answers go to the daemon
    new = udp4("192.0.2.10", 40001, "198.51.100.10", 40002, PAY)  # a new flow, inspected
    qinq = DECLINE["qinq"]
    _settle(k, dns)
    _settle(k, qinq)
    assert slot.delete(b"\0\0\0\0")
    try:
        for frame in (dns, new, qinq):
            before = k.stats()
            run = k.test_run(frame)
            after = k.stats()
            # the entry alone: the packet is passed, counted as one no flow could hold, every invariant kept
            assert run.verdict == 2
            moved = {n: after[n] - before[n] for n in after if after[n] != before[n]}
            assert moved == {"packets": 1, "bytes": len(frame), "out_no_flow": 1, "act_pass": 1,
                             "packets_none_pass": 1, "bytes_none_pass": len(frame)}, moved
    finally:
        assert slot.update(b"\0\0\0\0", k.full_fd.to_bytes(4, "little"))
    # with the whole program back, the new flow is made and inspected there
    before = k.stats()
    k.test_run(new)
    after = k.stats()
    assert after["inspected"] - before["inspected"] == 1 and after["out_no_flow"] == before["out_no_flow"] + 0
