"""Hostile input through the XDP program (BPF_PROG_TEST_RUN): structured and mutated frames, checked against the
independent reference parser (refparse.py) packet by packet.

Per packet: a verdict the policy allows (never ABORTED), `packets` +1, `bytes` + what the program sees, exactly one
outcome counter (the one refparse predicts), exactly one action counter, exactly one (verdict slot, action) pair (+1
packet, + the same bytes: the flow's class after the packet, or the pseudo-class of its outcome), and for UDP/TCP the
predicted flow key updated in the predicted direction. Per batch: the flow map holds exactly the predicted flows,
each decodes with consistent counters (packets, bytes, drops, timestamps per direction; class < 6; known
flag/reason/evidence bits). Per run: packets = outcomes = actions = pairs, and the pairs' bytes = `bytes`.
"""

from __future__ import annotations

import ipaddress
import os
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skyguard import wire
from skyguard.lab import gen
from skyguard.lab import packet as P
from skyguard.policy import Policy

from .refparse import Prediction, flow_outcome, predict

pytestmark = pytest.mark.bpf

PASS, DROP, ABORTED = 2, 1, 0
ETH_HLEN = 14  # BPF_PROG_TEST_RUN refuses shorter frames, so err_eth is only reachable on a real interface
OUTCOMES = [n for i, n in wire.stat_names().items()
            if wire.C["SG_ST_OUTCOME_FIRST"] <= i <= wire.C["SG_ST_OUTCOME_LAST"]]
ACTIONS = ["act_pass", "act_drop", "act_mark"]
PAIRS = [(s, a) for s in wire.VERDICT_SLOTS for a in wire.ACTION_NAMES]
EXEMPT = (ipaddress.ip_network("10.66.0.0/16"), ipaddress.ip_network("2001:db8:66::/48"))
BLOCK = (ipaddress.ip_network("10.77.0.0/16"), ipaddress.ip_network("2001:db8:77::/48"))
PSTN = (ipaddress.ip_network("195.215.8.140/32"),)
MSMEDIA = (ipaddress.ip_network("52.112.0.0/14"), ipaddress.ip_network("2603:1063::/38"))
ADDRS4 = ("10.1.2.3", "192.168.1.7", "10.66.0.9", "10.77.3.4", "195.215.8.140", "52.114.250.5", "8.8.8.8", "1.2.3.4")
ADDRS6 = ("fd00::1", "2001:db8::2", "2001:db8:66::5", "2001:db8:77::9", "2603:1063::7", "2a00:1450::1")
PORTS = (53, 443, 3478, 5060, 12340, 50010, 40000, 1, 65535)
KNOWN_FLAGS = sum(v for k, v in wire.C.items() if k.startswith("SG_F_"))
KNOWN_REASONS = sum(wire.REASONS)
KNOWN_EVIDENCE = sum(v for k, v in wire.C.items() if k.startswith("SG_E_") and k != "SG_E_DECISIVE")
FUZZ_CASES = int(os.environ.get("SKYGUARD_FUZZ_CASES", "1500"))
SLOW_CASES = int(os.environ.get("SKYGUARD_FUZZ_SLOW_CASES", "100000"))


# ---- policies under test -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str
    cls_action: int  # action of every class
    malformed: int  # action of the SG_POL_MALFORMED slot

    def policy(self) -> Policy:
        slot = wire.PolicySlot(action=self.cls_action, dscp=46 if self.cls_action == wire.MARK else 0)
        s = [slot] * wire.NCLASSES + [wire.PolicySlot(action=self.malformed, dscp=10), wire.PolicySlot(wire.DROP)]
        return Policy(name=self.name, path=None, slots=tuple(s), pstn_prefixes=PSTN, msmedia_prefixes=MSMEDIA,
                      exempt_prefixes=EXEMPT)

    def expect(self, outcome: str) -> tuple[int, str]:
        """(verdict, action counter) the policy allows for an outcome."""
        if outcome == "out_blocked":
            return DROP, "act_drop"
        if outcome == "out_flow":
            return (DROP if self.cls_action == wire.DROP else PASS), f"act_{wire.ACTION_NAMES[self.cls_action]}"
        if outcome.startswith("err_"):
            return (DROP if self.malformed == wire.DROP else PASS), f"act_{wire.ACTION_NAMES[self.malformed]}"
        return PASS, "act_pass"  # non-IP, other L4, fragments, exempt


VARIANTS = {
    "all-pass": Variant("all-pass", wire.PASS, wire.PASS),
    "malformed-drop": Variant("malformed-drop", wire.PASS, wire.DROP),
    "drop-flows": Variant("drop-flows", wire.DROP, wire.PASS),
    "mark": Variant("mark", wire.MARK, wire.MARK),
}


# ---- the harness -------------------------------------------------------------------------------------------------
@dataclass
class _Model:
    pkts: list[int] = field(default_factory=lambda: [0, 0])
    nbytes: list[int] = field(default_factory=lambda: [0, 0])
    dropped: int = 0
    first_ts: int = 0
    last_ts: int = 0
    init_dir: int = 0
    outcome: str = "out_flow"


@dataclass
class Report:
    cases: int = 0
    crashes: int = 0  # ABORTED verdicts or test_run errors
    outcomes: dict[str, int] = field(default_factory=dict)
    verdicts: dict[int, int] = field(default_factory=dict)
    flows_checked: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def balance(self) -> tuple[int, int, int, int]:
        """(packets, sum of outcome counters, sum of action counters, sum of the (slot, action) pairs' packets) over
        the run."""
        return (self.counters.get("packets", 0), sum(self.counters.get(n, 0) for n in OUTCOMES),
                sum(self.counters.get(n, 0) for n in ACTIONS),
                sum(self.counters.get(f"packets_{s}_{a}", 0) for s, a in PAIRS))

    def pair_bytes(self) -> int:
        return sum(self.counters.get(f"bytes_{s}_{a}", 0) for s, a in PAIRS)


def ones_fold(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data[: len(data) // 2 * 2]))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return 0 if s == 0xFFFF else s


class Harness:
    """Runs frames through a Kernel and checks every packet and the flow map against refparse."""

    def __init__(self, kernel, variant: Variant, linear: int, batch: int = 1000) -> None:
        self.k, self.v, self.linear, self.batch = kernel, variant, linear, batch
        self.model: dict[wire.FlowKey, _Model] = {}
        self.ts = 1_000_000
        self.report = Report()
        kernel.load_policy(variant.policy())
        for net in BLOCK:
            kernel.add_prefix("block", net, wire.SRC_MANUAL)
        self._clear()
        self.start = kernel.stats()

    def _clear(self) -> None:
        for key, _ in list(self.k.flows()):
            self.k.delete_flow(key)
        self.k.poll_events()
        self.model.clear()

    def run(self, frame: bytes) -> Prediction:
        k, rep = self.k, self.report
        pred = predict(frame, self.linear)
        outcome = pred.outcome
        if pred.key is not None:
            m = self.model.get(pred.key)
            outcome = m.outcome if m else flow_outcome(pred.key, EXEMPT, BLOCK)
        self.ts += 1000
        before = k.stats()
        try:
            res = k.test_run(frame, ts_ns=self.ts)
        except OSError:
            rep.crashes += 1
            raise
        after = k.stats()
        rep.cases += 1
        rep.verdicts[res.verdict] = rep.verdicts.get(res.verdict, 0) + 1
        rep.outcomes[outcome] = rep.outcomes.get(outcome, 0) + 1
        if res.verdict == ABORTED:
            rep.crashes += 1
        delta = {n: after[n] - before[n] for n in after if after[n] != before[n]}
        ctx = f"{self.v.name} frame={frame.hex()} pred={pred} delta={delta}"
        verdict, action = self.v.expect(outcome)
        assert res.verdict == verdict, ctx
        assert delta.get("packets") == 1 and delta.get("bytes") == pred.frame_bytes, ctx
        assert delta.get("multibuf", 0) == pred.spans, ctx
        got = [n for n in OUTCOMES if delta.get(n)]
        assert got == [outcome] and delta[outcome] == 1, ctx
        assert [n for n in ACTIONS if delta.get(n)] == [action] and delta[action] == 1, ctx
        if action == "act_mark" and outcome.startswith("err_"):
            assert delta.get("mark_skipped") == 1, ctx
        slot = self._verdict_slot(pred, outcome)
        moved = [(s, a) for s, a in PAIRS if delta.get(f"packets_{s}_{a}")]
        assert moved == [(slot, action[4:])] and delta[f"packets_{slot}_{action[4:]}"] == 1, ctx
        assert delta.get(f"bytes_{slot}_{action[4:]}") == pred.frame_bytes, ctx
        assert [n for n in delta if n.startswith("bytes_")] == [f"bytes_{slot}_{action[4:]}"], ctx
        self._check_output(frame, res.data, pred, outcome, action, ctx)
        if pred.key is not None:
            self._note_flow(pred, outcome, pred.frame_bytes, res.verdict == DROP, ctx)
        if len(self.model) >= self.batch:
            self.check_flows()
        return pred

    def _verdict_slot(self, pred: Prediction, outcome: str) -> str:
        """The verdict slot the packet's pair should be in: its flow's class as enforced (the class after this
        packet's inspection), or the pseudo-class of a packet no class decided."""
        if outcome == "out_flow":
            f = self.k.flow(pred.key)
            assert f is not None
            return wire.CLASS_NAMES[f.cls]
        if outcome.startswith("err_"):
            return "malformed"
        return {"out_exempt": "exempt", "out_blocked": "blocked"}.get(outcome, "none")

    def _check_output(self, frame: bytes, out: bytes, pred: Prediction, outcome: str, action: str, ctx: str) -> None:
        assert len(out) == len(frame), ctx
        if not (action == "act_mark" and outcome == "out_flow"):
            assert out == frame, ctx  # nothing but the mark action may touch a frame
            return
        o = pred.l3_off
        exp = bytearray(frame)
        if pred.v6:
            tc = (46 << 2) | (((frame[o] & 0x0F) << 4 | frame[o + 1] >> 4) & 0x03)
            exp[o] = (frame[o] & 0xF0) | (tc >> 4)
            exp[o + 1] = (frame[o + 1] & 0x0F) | ((tc & 0x0F) << 4)
            assert out == bytes(exp), ctx
            return
        exp[o + 1] = (46 << 2) | (frame[o + 1] & 0x03)
        assert out[: o + 10] == bytes(exp[: o + 10]) and out[o + 12 :] == bytes(exp[o + 12 :]), ctx
        hl = (frame[o] & 0x0F) * 4  # the checksum still verifies exactly as well as before (RFC 1624)
        assert ones_fold(out[o : o + hl]) == ones_fold(frame[o : o + hl]), ctx

    def _note_flow(self, pred: Prediction, outcome: str, size: int, dropped: bool, ctx: str) -> None:
        m = self.model.get(pred.key)
        if m is None:
            m = self.model[pred.key] = _Model(first_ts=self.ts, init_dir=pred.dir, outcome=outcome)
        m.pkts[pred.dir] += 1
        m.nbytes[pred.dir] += size
        m.dropped += dropped
        m.last_ts = self.ts
        f = self.k.flow(pred.key)
        assert f is not None, ctx
        assert list(f.pkts) == m.pkts, ctx

    def check_flows(self) -> None:
        """The flow map holds exactly the predicted flows, each consistent; then start a fresh batch."""
        flows = dict(self.k.flows())
        assert set(flows) == set(self.model), (set(flows) ^ set(self.model))
        window = wire.C["SG_WINDOW"]
        for key, f in flows.items():
            m = self.model[key]
            ctx = f"{key} {f} {m}"
            assert f.cls < wire.NCLASSES and f.init_dir == m.init_dir, ctx
            assert list(f.pkts) == m.pkts and list(f.bytes_) == m.nbytes and f.dropped == m.dropped, ctx
            assert f.first_ns == m.first_ts and f.last_ns == m.last_ts, ctx
            assert f.inspected <= min(f.packets, window), ctx
            assert f.som_ok <= f.packets and f.som_data <= f.som_ok, ctx
            assert f.som_func == 0xFF or f.som_func & 0x70 == 0, ctx
            assert not f.flags & ~KNOWN_FLAGS and not f.reason & ~KNOWN_REASONS, ctx
            assert not f.evidence & ~KNOWN_EVIDENCE, ctx
            assert bool(f.flags & wire.C["SG_F_EXEMPT"]) == (m.outcome == "out_exempt"), ctx
            assert bool(f.flags & wire.C["SG_F_BLOCKED"]) == (m.outcome == "out_blocked"), ctx
            dns = key.proto == 17 and 53 in (key.lo_port, key.hi_port) and m.outcome != "out_exempt"
            assert bool(f.flags & wire.C["SG_F_DNS"]) == dns, ctx  # DNS flows never take the fast path
            if m.outcome != "out_flow":
                assert f.inspected == 0, ctx  # exempt and blocked flows never run the signatures
            if m.outcome == "out_exempt":
                assert f.cls == wire.UNKNOWN, ctx
        self.report.flows_checked += len(flows)
        self._clear()

    def finish(self) -> Report:
        self.check_flows()
        end = self.k.stats()
        self.report.counters = {n: end[n] - self.start[n] for n in end}
        pk, out, act, pairs = self.report.balance()
        assert pk == self.report.cases == out == act == pairs, self.report.counters
        assert self.report.pair_bytes() == self.report.counters["bytes"], self.report.counters
        assert self.report.counters["out_no_flow"] == 0
        return self.report


# ---- frame construction: one builder driven by a chooser (random.Random or hypothesis' draw) ---------------------
class Chooser:
    def int(self, lo: int, hi: int) -> int: ...
    def pick(self, seq): ...
    def raw(self, n: int) -> bytes: ...


class RngChooser(Chooser):
    def __init__(self, rng: random.Random) -> None:
        self.r = rng

    def int(self, lo: int, hi: int) -> int:
        return self.r.randint(lo, hi)

    def pick(self, seq):
        return self.r.choice(seq)

    def raw(self, n: int) -> bytes:
        return self.r.randbytes(n)


class DrawChooser(Chooser):
    def __init__(self, draw: Callable) -> None:
        self.d = draw

    def int(self, lo: int, hi: int) -> int:
        return self.d(st.integers(lo, hi))

    def pick(self, seq):
        return self.d(st.sampled_from(seq))

    def raw(self, n: int) -> bytes:
        return self.d(st.binary(min_size=n, max_size=n))


def _vlan_tags(c: Chooser) -> bytes:
    n = c.pick((0, 0, 0, 1, 2, 3, 4))
    tags = b""
    for _ in range(n):
        tags += struct.pack("!HH", c.pick((0x8100, 0x88A8)), c.int(0, 0xFFFF))
    return tags


def _l4(c: Chooser, proto: int, payload: bytes) -> bytes:
    sport, dport = c.pick(PORTS) if c.int(0, 1) else c.int(0, 65535), c.pick(PORTS) if c.int(0, 1) else c.int(0, 65535)
    if proto == 17:
        ulen = 8 + len(payload)
        ulen = c.pick((ulen, ulen, ulen, 0, 7, 8, ulen + c.int(1, 64), max(0, ulen - c.int(1, 8))))
        return struct.pack("!HHHH", sport, dport, ulen & 0xFFFF, 0) + payload
    if proto == 6:
        doff = c.pick((5, 5, 5, 6, 8, 15, 0, 4))
        opts = b"\x01" * (max(doff, 5) * 4 - 20) if c.int(0, 3) else b""
        return struct.pack("!HHIIBBHHH", sport, dport, 0, 0, doff << 4, 0x18, 65535, 0, 0) + opts + payload
    return payload


def _payload(c: Chooser) -> bytes:
    kind = c.int(0, 9)
    if kind == 0:
        return b""
    if kind == 1:  # jumbo: past test_run's linear area
        return bytes(c.int(1500, 9000))
    if kind == 2:  # STUN with Microsoft attributes, sometimes lying about its length
        body = struct.pack("!HH", 0x8055, 4) + b"\0\1\0\1" + struct.pack("!HH", 0x8008, 4) + b"\0\0\0\6"
        mlen = c.pick((len(body), 0, 2, 0xFFFC, len(body) + 4))
        return struct.pack("!HHI", c.pick((1, 0x101, 3, 0x16)), mlen, 0x2112A442) + c.raw(12) + body
    if kind == 3:  # SoM-looking
        return c.raw(2) + bytes([c.pick((0x02, 0x0D, 0x8F, 0x03))]) + c.raw(c.int(0, 60))
    if kind == 4:  # FF10 framing
        return b"\xff\x10" + struct.pack("!H", c.int(0, 0xFFFF)) + c.raw(8 + c.int(0, 40))
    return c.raw(c.int(0, 200))


def _ip6_ext_chain(c: Chooser, final: int) -> tuple[int, bytes]:
    n = c.pick((0, 1, 2, 3, 5, 6, 7, 8))
    types = [c.pick((0, 43, 44, 51, 60)) for _ in range(n)]
    out = b""
    for i, t in enumerate(types):
        nxt = types[i + 1] if i + 1 < n else final
        if t == 44:
            fo = c.pick((0, 0, 1, 8, 0xFFF9))
            out += struct.pack("!BBHI", nxt, 0, fo, c.int(0, 0xFFFFFFFF))
        elif t == 51:
            hl = c.pick((1, 2, 4))
            out += bytes([nxt, hl]) + bytes((hl + 2) * 4 - 2)
        else:
            hl = c.pick((0, 0, 1, 3))
            out += bytes([nxt, hl]) + bytes((hl + 1) * 8 - 2)
    return (types[0] if n else final), out


def build_frame(c: Chooser) -> bytes:
    """A frame from structured random choices: VLAN tags, IPv4 (any IHL, lengths, fragments) or IPv6 (extension
    chains), UDP/TCP/other with bogus lengths, then maybe truncated, padded or with random bytes overwritten."""
    eth = bytes.fromhex("020000000002020000000001")
    tags = _vlan_tags(c)
    l3kind = c.pick(("v4", "v4", "v6", "v6", "arp", "raw"))
    proto = c.pick((17, 17, 6, 1, 58, 132))
    pl = _payload(c)
    if l3kind == "arp":
        frame = eth + tags + b"\x08\x06" + c.raw(28)
    elif l3kind == "raw":
        frame = c.raw(c.int(ETH_HLEN, 80))
    elif l3kind == "v4":
        seg = _l4(c, proto, pl)
        ihl = c.pick((5, 5, 5, 6, 15, 0, 4, 1))
        opts = b"\x01" * (max(ihl - 5, 0) * 4)
        tot = 4 * max(ihl, 5) + len(seg)
        tot = c.pick((tot, tot, tot, 0, 19, tot + c.int(1, 100), max(0, tot - c.int(1, 30)), 0xFFFF))
        frag = c.pick((0, 0, 0, 0x4000, 0x2000, 0x2001, 0x0001, 0x1FFF))
        src, dst = c.pick(ADDRS4), c.pick(ADDRS4)
        version = c.pick((4, 4, 4, 4, 6))
        hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, c.int(0, 255), tot & 0xFFFF, 0, frag, 64, proto, 0,
                          ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
        hdr = hdr[:10] + struct.pack("!H", P.checksum(hdr + opts)) + hdr[12:]
        frame = eth + tags + b"\x08\x00" + hdr + opts + seg
    else:
        seg = _l4(c, proto, pl)
        first, ext = _ip6_ext_chain(c, proto)
        plen = len(ext) + len(seg)
        plen = c.pick((plen, plen, plen, 0, plen + c.int(1, 64), max(0, plen - c.int(1, 16))))
        version = c.pick((6, 6, 6, 6, 4))
        src, dst = c.pick(ADDRS6), c.pick(ADDRS6)
        hdr = struct.pack("!IHBB16s16s", (version << 28) | (c.int(0, 255) << 20), plen & 0xFFFF, first, 64,
                          ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
        frame = eth + tags + b"\x86\xdd" + hdr + ext + seg
    return mutate(c, frame, c.int(0, 2))


def mutate(c: Chooser, frame: bytes, rounds: int) -> bytes:
    b = bytearray(frame)
    for _ in range(rounds):
        op = c.int(0, 6)
        if op == 0 and len(b) > ETH_HLEN:  # truncate (BPF_PROG_TEST_RUN refuses frames under ETH_HLEN)
            del b[c.int(ETH_HLEN, len(b)):]
        elif op == 1 and b:  # flip a byte, mostly in the headers
            i = c.int(0, min(len(b), 120) - 1)
            b[i] ^= c.int(1, 255)
        elif op == 2 and len(b) >= 2:  # overwrite a 16-bit field with an edge value
            i = c.int(0, min(len(b), 100) - 2)
            b[i : i + 2] = struct.pack("!H", c.pick((0, 1, 7, 8, 19, 20, 0x8100, 0x88A8, 0xFFFF)))
        elif op == 3:  # Ethernet padding / trailer
            b += bytes(c.int(1, 40))
        elif op == 4 and len(b) >= 12:  # one more VLAN tag after the MACs
            b[12:12] = struct.pack("!HH", c.pick((0x8100, 0x88A8)), c.int(0, 4095))
        elif op == 5 and b:  # random bytes from somewhere on
            i = c.int(0, len(b) - 1)
            b[i:] = c.raw(len(b) - i)
        elif op == 6:  # grow towards jumbo with the lengths left as they are
            b += bytes(c.int(1, 4000))
    return bytes(b) + bytes(max(0, ETH_HLEN - len(b)))


def ip4_fragment(frame: bytes, frag_field: int, size: int, eth: int = 14) -> bytes:
    """Cut an Ethernet/IPv4 frame to an IPv4 datagram of `size` bytes with the given flags/offset field."""
    ip = bytearray(frame[eth : eth + size])
    ip[2:4] = struct.pack("!H", size)
    ip[6:8] = struct.pack("!H", frag_field)
    ip[10:12] = b"\0\0"
    hl = (ip[0] & 0x0F) * 4
    ip[10:12] = struct.pack("!H", P.checksum(bytes(ip[:hl])))
    return frame[:eth] + bytes(ip)


EDGE_SEEDS = 8  # the hand-built seeds at the end of the corpus


def corpus(rng: random.Random) -> list[bytes]:
    """Well-formed seeds: generated calls of every kind (IPv4, IPv6, VLAN, QinQ) and hand-built edge cases."""
    out: list[bytes] = []
    for kind in gen.KINDS:
        for ipv6, vlan in ((False, None), (True, None), (False, 5), (False, (7, 5)), (True, (9, 3))):
            for f in gen.kind_flows(kind, rng, ipv6=ipv6, vlan=vlan):
                out += [fr for _, fr in f.pkts[:6]]
    big = P.udp("10.1.2.3", 50010, "195.215.8.140", 12340, bytes(3000))
    out.append(ip4_fragment(big, 0x2000, 1200))  # first fragment (MF), UDP length past it
    out.append(ip4_fragment(big, 0x0010, 1200))  # non-first fragment
    out.append(P.tcp("10.1.2.3", 443, "52.114.250.5", 50011, b"\x16\x03\x01" + bytes(60), options=b"\x02\x04\x05\xb4"))
    out.append(P.udp("fd00::1", 53, "2001:db8::2", 40000, bytes(600)))
    for a, b in (("10.66.1.2", "8.8.8.8"), ("2001:db8:66::7", "2a00:1450::1"), ("1.2.3.4", "10.77.0.5"),
                 ("2001:db8:77::1", "fd00::9")):  # exempt and blocked endpoints
        out.append(P.udp(a, 40000, b, 3478, bytes(30)))
    return out


def measure_linear(k) -> int:
    """How many bytes of a frame BPF_PROG_TEST_RUN puts in the program's linear area (the rest goes to frags)."""
    before = k.stats()["bytes"]
    k.test_run(b"\xff" * 12 + b"\x88\xb5" + bytes(16000), ts_ns=1 if k.replay else None)
    return k.stats()["bytes"] - before


# ---- fixtures and tests ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kern(bpf_ok):
    from skyguard.kernel.loader import Kernel

    with Kernel(flows_max=65536, lpm_max=1024, ringbuf_bytes=1 << 20, replay=True) as k:
        yield k


@pytest.fixture(scope="module")
def linear(kern) -> int:
    n = measure_linear(kern)
    assert 1500 <= n < 16000, n
    return n


@pytest.fixture(scope="module")
def seeds() -> list[bytes]:
    return corpus(random.Random(7))


def fuzz(kern, linear: int, seeds: list[bytes], variant: Variant, cases: int, seed: int) -> Report:
    rng = random.Random(seed)
    c = RngChooser(rng)
    h = Harness(kern, variant, linear)
    t0 = time.perf_counter()
    for i in range(cases):
        if i % 3 == 0:
            frame = build_frame(c)
        elif i % 3 == 1:
            frame = mutate(c, rng.choice(seeds), rng.randint(1, 3))
        else:
            frame = rng.choice(seeds if rng.random() < 0.7 else seeds[-EDGE_SEEDS:])  # unmodified: flows that live on
        h.run(frame)
        if i % 500 == 499:
            h.k.poll_events()
    rep = h.finish()
    rep.seconds = time.perf_counter() - t0
    return rep


def test_reference_parser_agrees_on_well_formed_seeds(seeds):
    preds = [predict(f) for f in seeds]
    assert all(p.outcome == "out_flow" for p in preds[:-8]), [p.outcome for p in preds if p.outcome != "out_flow"]
    assert [p.outcome for p in preds[-8:]] == ["out_flow", "out_fragment"] + ["out_flow"] * 6
    first_frag = preds[-8]
    assert first_frag.payload_len == 1200 - 20 - 8  # what the fragment holds, not the UDP length


def test_frames_past_the_linear_area_parse_whole(kern, linear):
    # a jumbo frame bigger than the linear area: the headers are in the first buffer, the IP length is checked
    # against the whole frame (bpf_xdp_get_buff_len), so it is a flow like any other and its bytes count in full
    frame = P.udp("10.1.2.3", 1000, "10.1.2.4", 2000, bytes(linear + 100))
    pred = predict(frame, linear)
    assert pred.outcome == "out_flow" and pred.spans and pred.frame_bytes == len(frame)
    h = Harness(kern, VARIANTS["all-pass"], linear)
    h.run(frame)
    h.run(P.udp("10.1.2.3", 1000, "10.1.2.4", 2000, bytes(linear - 42 - 1)))  # the biggest in one buffer
    bad = bytearray(frame)
    bad[16:18] = (len(frame) - 14 + 1).to_bytes(2, "big")  # an IP length past the whole frame is still an error
    h.run(bytes(bad))
    assert h.finish().outcomes == {"err_ip4_len": 1, "out_flow": 2}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fuzz(kern, linear, seeds, variant):
    cases = max(1, FUZZ_CASES // len(VARIANTS))
    rep = fuzz(kern, linear, seeds, VARIANTS[variant], cases, seed=list(VARIANTS).index(variant))
    assert rep.cases == cases and rep.crashes == 0
    assert ABORTED not in rep.verdicts
    # the mix reaches every parse path
    for name in ("out_flow", "out_non_ip", "out_other_l4", "out_fragment", "out_exempt", "out_blocked", "err_udp",
                 "err_ip4_ihl", "err_ip4_len", "err_ip6", "err_vlan_depth"):
        assert rep.outcomes.get(name, 0) > 0, (name, rep.outcomes)


@st.composite
def frames(draw) -> bytes:
    return build_frame(DrawChooser(draw))


@pytest.fixture(scope="module")
def hyp_harness(kern, linear):
    h = Harness(kern, VARIANTS["malformed-drop"], linear, batch=200)
    yield h
    h.finish()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frame=frames())
def test_hypothesis_frames(hyp_harness, frame):
    hyp_harness.run(frame)


@pytest.mark.slow
def test_fuzz_slow(kern, linear, seeds):
    """>= 100k cases across the policy variants; prints the figures for the report."""
    per = SLOW_CASES // len(VARIANTS)
    total = Report()
    for i, name in enumerate(VARIANTS):
        rep = fuzz(kern, linear, seeds, VARIANTS[name], per, seed=1000 + i)
        total.cases += rep.cases
        total.crashes += rep.crashes
        total.flows_checked += rep.flows_checked
        total.seconds += rep.seconds
        for k, v in rep.outcomes.items():
            total.outcomes[k] = total.outcomes.get(k, 0) + v
        for k, v in rep.verdicts.items():
            total.verdicts[k] = total.verdicts.get(k, 0) + v
        for k, v in rep.counters.items():
            total.counters[k] = total.counters.get(k, 0) + v
    pk, out, act, pairs = total.balance()
    print(f"\nfuzz: {total.cases} cases in {total.seconds:.1f} s, crashes {total.crashes}, verdicts {total.verdicts}, "
          f"balance packets={pk} outcomes={out} actions={act} pairs={pairs}, flows checked {total.flows_checked}, "
          f"events_lost {total.counters.get('events_lost')}\noutcomes {dict(sorted(total.outcomes.items()))}")
    assert total.cases >= SLOW_CASES - len(VARIANTS) and total.crashes == 0
    assert pk == out == act == pairs == total.cases and total.pair_bytes() == total.counters["bytes"]
