"""The compiled replay loop (offline/walk.c) against the per-packet Python loop it replaced: on the shared captures,
generated ones (IPv4, IPv6, VLAN), other link types, pcapng variants and broken files, both give the same flows,
classes, reasons, counters, verdicts, decisions with their packet positions (time to verdict) and errors. The compiled
loop runs packets in batches (struct sg_batch); the Python loop runs one per test run, so every comparison here is also
one of batches against single runs."""

from __future__ import annotations

import glob
import os
import struct
from pathlib import Path

import pytest

from skyguard import wire
from skyguard.lab import gen
from skyguard.offline import fastwalk, replay
from skyguard.offline.pcap import read_packets, write_pcap
from skyguard.policy import load_policy, parse_policy
from tests.conftest import ROOT, skip_or_fail


@pytest.fixture(scope="module")
def kern(bpf_ok):
    from skyguard.kernel.loader import Kernel

    try:
        fastwalk.lib()
    except fastwalk.BuildError as e:
        skip_or_fail(f"the replay helper does not build here: {e}")
    with Kernel(replay=True) as k:
        yield k


@pytest.fixture
def two_cpus(monkeypatch):
    """--jobs is capped at the CPUs: two of them, so that jobs=2 runs the pool even on a one-CPU machine."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})


def outcome(res: replay.ReplayResult) -> dict:
    """Everything a replay reports, verdicts and the decisions' packet positions included."""
    return {"json": res.to_json(), "stats": res.stats, "decisions": res.decisions,
            "captures": [(c.path, c.packets, dict(c.verdicts), c.error) for c in res.captures]}


def both(kern, paths, policy=None) -> tuple[dict, dict]:
    slow = outcome(replay.replay(paths, policy, kernel=kern, engine="python"))
    fast = outcome(replay.replay(paths, policy, kernel=kern, engine="c"))
    return slow, fast


def assert_same(kern, paths, policy=None) -> dict:
    slow, fast = both(kern, paths, policy)
    assert fast == slow
    return fast


def test_shared_captures_identical(kern, captures):
    paths = sorted(str(p) for p in captures.glob("*.pcap*"))
    out = assert_same(kern, paths, load_policy(ROOT / "policies" / "block-pc-to-phone.toml"))
    assert out["json"]["summary"]["packets"] > 5000 and out["decisions"]  # the comparison covered real work
    assert any(p.endswith(".pcapng") for p in paths)


@pytest.mark.parametrize("variant", [{}, {"ipv6": True}, {"vlan": 42}])
def test_generated_captures_identical(kern, tmp_path, variant):
    gen.generate(4242, tmp_path, calls=4, **variant)
    paths = sorted(glob.glob(str(tmp_path / "*.pcap")))
    out = assert_same(kern, paths, load_policy(ROOT / "policies" / "block-pc-to-phone.toml"))
    classes = {f["class"] for f in out["json"]["flows"]}
    assert {"skype-out", "skype-p2p", "skype-relay", "skype-signaling"} <= classes
    assert any(d["new"] == "skype-out" and d["flow_packets"] > 1 for d in out["decisions"])  # slow-path verdicts


def test_parallel_merge_equals_sequential(bpf_ok, kern, tmp_path, two_cpus):
    gen.generate(77, tmp_path, kinds=["dns-pstn", "modern-sbc", "legacy-e2o"], calls=3)
    paths = sorted(glob.glob(str(tmp_path / "*.pcap")))
    seq = outcome(replay.replay(paths, kernel=kern, engine="python"))
    par = outcome(replay.replay(paths, engine="c", jobs=2))
    assert par == seq


def test_learned_prefix_does_not_leak_into_the_next_capture(kern, tmp_path):
    """dns-pstn teaches PSTN addresses; a capture replayed after it decides as it would alone (and in parallel)."""
    gen.generate(31, tmp_path, kinds=["dns-pstn", "modern-sbc"], calls=2)
    a, b = str(tmp_path / "dns-pstn.pcap"), str(tmp_path / "modern-sbc.pcap")
    together = replay.replay([a, b], kernel=kern, engine="c")
    assert together.stats and any(d["new"] == "skype-out" for d in together.decisions)
    alone = replay.replay([b], kernel=kern, engine="c")
    assert [f for f in together.flows if f["capture"] == "modern-sbc.pcap"] == alone.flows


def test_a_learned_pstn_address_is_forgotten_before_the_next_capture(kern, tmp_path):
    """dns-pstn split in two captures: its DNS answer, which teaches the SBC's address, and its call to that address.
    The call replayed after the answer (and after a capture that learns nothing) decides as it does alone, not by the
    learned prefix; replayed in one capture with the answer, it is decided by that prefix."""
    gen.generate(43, tmp_path, kinds=["dns-pstn", "random-udp"], calls=1)
    pkts = [(p.ts_ns, p.frame) for p in read_packets(tmp_path / "dns-pstn.pcap")]
    dns = [(ts, f) for ts, f in pkts if struct.unpack_from("!H", f, 34)[0] == 53]  # untagged IPv4 UDP: sport
    call = [x for x in pkts if x not in dns]
    assert dns and call
    write_pcap(tmp_path / "answer.pcap", dns)
    write_pcap(tmp_path / "call.pcap", call)
    answer, quiet, alone_path = (str(tmp_path / n) for n in ("answer.pcap", "random-udp.pcap", "call.pcap"))
    pol = load_policy(ROOT / "policies" / "block-pc-to-phone.toml")
    whole = replay.replay([str(tmp_path / "dns-pstn.pcap")], pol, kernel=kern, engine="c")
    assert any(f["reason"] == "pstn-prefix" for f in whole.flows)  # the answer does teach the address
    together = replay.replay([answer, quiet, alone_path], pol, kernel=kern, engine="c")
    alone = replay.replay([alone_path], pol, kernel=kern, engine="c")
    assert [f for f in together.flows if f["capture"] == "call.pcap"] == alone.flows
    assert not any(f["reason"] == "pstn-prefix" for f in alone.flows)


def _frames(captures: Path, n: int = 400) -> list[tuple[int, bytes]]:
    return [(p.ts_ns, p.frame) for p in read_packets(captures / "teams.pcap")][:n]


@pytest.mark.parametrize("linktype", [101, 228, 113, 276, 0, 108])
def test_other_link_types_identical(kern, captures, tmp_path, linktype):
    pkts = _frames(captures)
    def body(frame: bytes) -> bytes:
        ip = frame[14:]
        if linktype in (101, 228):
            return ip
        if linktype == 113:
            return b"\0\0\0\1\0\6" + b"\2" * 8 + frame[12:14] + ip
        if linktype == 276:
            return frame[12:14] + b"\0\0" + b"\0\0\0\2" + b"\0\1" + b"\0\6" + b"\2" * 8 + ip
        return (struct.pack("<I", 2) if linktype == 0 else struct.pack(">I", 2)) + ip
    path = tmp_path / f"lt{linktype}.pcap"
    write_pcap(path, [(ts, body(f)) for ts, f in pkts], linktype=linktype)
    out = assert_same(kern, [str(path)])
    assert out["captures"][0][1] == len(pkts) and out["json"]["flows"]


def _pcapng(pkts: list[tuple[int, bytes]], *, big: bool = False, tsresol: int | None = None,
            simple: bool = False, linktype: int = 1) -> bytes:
    bo = ">" if big else "<"

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)

    out = block(0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = b""
    if tsresol is not None:
        opts = struct.pack(bo + "HH", 9, 1) + bytes([tsresol]) + b"\0\0\0" + struct.pack(bo + "HH", 0, 0)
    out += block(1, struct.pack(bo + "HHI", linktype, 0, 65535) + opts)
    for ts, frame in pkts:
        if simple:
            out += block(3, struct.pack(bo + "I", len(frame)) + frame)
            continue
        units = ts // 1000 if tsresol is None else (ts * 1024 // 10**9 if tsresol == 0x8A else ts)
        out += block(6, struct.pack(bo + "IIIII", 0, units >> 32, units & 0xFFFFFFFF, len(frame), len(frame)) + frame)
    return out


@pytest.mark.parametrize("kw", [{}, {"big": True}, {"tsresol": 9}, {"tsresol": 0x8A}, {"simple": True},
                                {"linktype": 147}])
def test_pcapng_variants_identical(kern, captures, tmp_path, kw):
    path = tmp_path / "v.pcapng"
    path.write_bytes(_pcapng(_frames(captures), **kw))
    out = assert_same(kern, [str(path)])
    if kw.get("linktype") == 147:
        assert "unsupported link type 147" in out["json"]["errors"][0]


@pytest.mark.parametrize("cut", [3, 20, 24 + 8, 24 + 16 + 100, 2000, 50_001])
def test_truncated_pcap_identical(kern, captures, tmp_path, cut):
    bad = tmp_path / "cut.pcap"
    bad.write_bytes((captures / "teams.pcap").read_bytes()[:cut])
    out = assert_same(kern, [str(bad)])
    assert out["json"]["errors"][0].startswith(f"{bad}: at byte ")


@pytest.mark.parametrize("damage", ["blen", "trailer", "ifid", "bom", "cut"])
def test_broken_pcapng_identical(kern, captures, tmp_path, damage):
    raw = bytearray(_pcapng(_frames(captures, 50)))
    third = 28 + 20  # SHB (28 bytes) and IDB (20): the first packet block starts here
    if damage == "blen":
        struct.pack_into("<I", raw, third + 4, 13)
    elif damage == "trailer":
        blen = struct.unpack_from("<I", raw, third + 4)[0]
        struct.pack_into("<I", raw, third + blen - 4, blen + 4)
    elif damage == "ifid":
        struct.pack_into("<I", raw, third + 8, 3)
    elif damage == "bom":
        struct.pack_into("<I", raw, 8, 0x12345678)
    else:
        raw = raw[: len(raw) - 37]
    path = tmp_path / "bad.pcapng"
    path.write_bytes(bytes(raw))
    out = assert_same(kern, [str(path)])
    assert " at byte " in out["json"]["errors"][0]


def test_runt_frame_stops_both_loops_alike(kern, captures, tmp_path):
    """A frame the kernel refuses (shorter than an Ethernet header) ends the capture with the same error."""
    pkts = _frames(captures, 30)
    pkts.insert(20, (pkts[19][0], b"\1\2\3"))
    path = tmp_path / "runt.pcap"
    write_pcap(path, pkts)
    out = assert_same(kern, [str(path)])
    assert out["captures"][0][1] == 20 and "bpf_prog_test_run_opts failed" in out["json"]["errors"][0]


def test_garbage_and_empty_identical(kern, tmp_path):
    g = tmp_path / "garbage.pcap"
    g.write_bytes(b"this is not a capture at all" * 10)
    e = tmp_path / "empty.pcap"
    e.write_bytes(b"")
    out = assert_same(kern, [str(g), str(e)])
    assert "bad magic" in out["json"]["errors"][0] and "too short" in out["json"]["errors"][1]


def test_without_a_compiler_auto_falls_back_and_c_refuses(monkeypatch, tmp_path):
    monkeypatch.setattr(fastwalk, "_lib", None)
    monkeypatch.setenv("SKYGUARD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "no-such-compiler-skyguard")
    with pytest.raises(fastwalk.BuildError, match="no C compiler"):
        fastwalk.lib()
    assert replay._walker_factory("auto") is None
    with pytest.raises(fastwalk.BuildError):
        replay._walker_factory("c")


def _runs(kern, paths, policy=None) -> tuple[int, int]:
    res = replay.replay(paths, policy, kernel=kern, engine="c")
    return sum(c.packets for c in res.captures), sum(c.runs for c in res.captures)


def _dns_answer(i: int) -> bytes:
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    name = f"h{i}.example.com"
    return bytes(Ether() / IP(src="192.0.2.53", dst="198.51.100.7") / UDP(sport=53, dport=40000 + i)
                 / DNS(id=i, qr=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, rdata="203.0.113.9")))


def test_packets_run_in_batches_cut_at_events(kern, tmp_path):
    """Batches are used (far fewer test runs than packets), yet every packet that left events ends its batch: a
    capture of flows that each emit on their first packet needs a run per packet."""
    gen.generate(4242, tmp_path, calls=4)
    packets, runs = _runs(kern, sorted(glob.glob(str(tmp_path / "*.pcap"))))
    assert packets > 10_000 and runs * 3 < packets
    # DNS responses all leave a `dns` event: one run each, whatever their number
    frames = [(1_000_000_000 + i * 1_000_000, _dns_answer(i)) for i in range(40)]
    path = tmp_path / "dns.pcap"
    write_pcap(path, frames)
    assert _runs(kern, [str(path)]) == (40, 40)
    assert_same(kern, [str(path)])


def _cid_flow(seed: int, n: int, port: int = 33000, sizes: tuple[int, int] = (20, 400)) -> list[tuple[int, bytes]]:
    """A candidate flow (a constant 4-byte CID each way) whose sizes vary too much for a verdict: every packet is
    inspected and sampled, and none is decided."""
    import random

    from skyguard.lab import packet as P

    rng = random.Random(seed)
    a, b = ("192.168.7.9", port), ("198.51.100.20", 40000)
    pkts = []
    for i in range(n):
        src, dst, cid = (a, b, b"\xaa\xbb\xcc\xdd") if i % 2 == 0 else (b, a, b"\x11\x22\x33\x44")
        payload = cid + rng.randbytes(rng.randrange(*sizes))
        pkts.append((1_000_000_000 + i * 10_000_000 + rng.randrange(9_000_000), P.udp(*src, *dst, payload)))
    return pkts


def test_samples_end_a_batch_only_once_they_may_decide(kern, tmp_path):
    """A sample of a flow's first SG_SAMPLES_MIN - 1 inspected packets cannot lead to a decision (the slow path's E2O
    needs that many), so its batch goes on; each later one may, so it ends its batch. One candidate flow of 150
    packets, all inspected and all sampled."""
    path = tmp_path / "cid.pcap"
    write_pcap(path, _cid_flow(5, 150))
    out = assert_same(kern, [str(path)])
    [flow] = out["json"]["flows"]
    assert flow["class"] == "unknown" and not out["decisions"]
    packets, runs = _runs(kern, [str(path)])
    late = packets - (wire.C["SG_SAMPLES_MIN"] - 1)  # samples from the SG_SAMPLES_MIN-th packet on: a run each
    # the earlier 99 share batches (at most 6 of these frames fit one), where one run per sample would make 150
    assert late <= runs <= late + 20
    # and their records wait in the ring buffer across those batches: the walker comes back to Python for the runs
    # that may decide (and the new flow's `classified`), not once per batch
    returns = len(_returns(kern, path))
    assert late <= returns <= late + 2


def _returns(kern, path) -> list[int]:
    """The packets run at each of the walker's returns to Python with records, over a fresh flow table."""
    replay._fresh_state(kern)
    at = []
    with fastwalk.Ring(kern.ring_map_fd) as ring, fastwalk.Walker(path, kern.prog_fd, ring, kern.batch_map_fd) as w:
        while (step := w.run()).status != fastwalk.END:
            if step.status == fastwalk.EVENTS:
                at.append(step.packets)
            for _rec in w.records():
                pass
    return at


def _ntp(n: int) -> list[bytes]:
    """n NTP flows of one packet each: the kernel classifies each `other` (service port) at its first packet."""
    from tests.bpf.packets import udp4

    return [udp4("192.168.6.1", 40000 + i, "192.0.2.123", 123, b"\x23" + b"\0" * 47) for i in range(n)]


def _write(path: Path, frames: list[bytes]) -> str:
    write_pcap(path, [(1_000_000_000 + i * 1_000_000, f) for i, f in enumerate(frames)])
    return str(path)


def test_only_classified_records_the_daemon_acts_on_end_a_batch(kern, tmp_path):
    """A `classified` record leads the daemon to write into the kernel only for a strong decision on UDP (its proving
    ends go into `endpoints`, which the very next new flow may need); any other's batch goes on. 30 NTP flows, each
    classified `other` (service port) by its first packet, share batches; then an ICE exchange decided p2p
    (ice-both) ends its batch, so that the next packet, a new flow from one of its ends, is known-endpoint."""
    from tests.bpf.packets import stun, udp4

    ms = [(0x8055, b"\x00\x01\x00\x02"), (0x8008, b"\x00\x00\x00\x06"), (0x0024, b"\x6e\x00\x1e\xff"),
          (0x802A, b"\x01" * 8), (0x8037, b"\x00\x00\x00\x02")]  # a Teams client's Binding request attributes
    a, b = ("192.168.5.5", 50012), ("203.0.113.9", 50020)
    frames = [*_ntp(30), udp4(*a, *b, stun(0x0001, ms)), udp4(*b, *a, stun(0x0001, ms)),
              udp4(*a, "198.51.100.77", 40001, b"\x00\x11\x02" + b"\x5a" * 20)]  # no SoM probe: only `a` tells
    path = _write(tmp_path / "ice.pcap", frames)
    out = assert_same(kern, [path])
    rows = {(r["a"], r["b"]): r for r in out["json"]["flows"]}
    assert rows[("192.168.5.5:50012", "203.0.113.9:50020")]["reason"] == "ice-both"
    probe = rows[("192.168.5.5:50012", "198.51.100.77:40001")]
    assert (probe["class"], probe["reason"]) == ("skype-signaling", "known-endpoint"), probe
    assert sum(r["reason"] == "service-port" for r in rows.values()) == 30
    packets, runs = _runs(kern, [path])
    # the NTP packets' `classified` records wait: a handful of batches (a run each, before this, made 30)
    assert packets == 33 and runs <= 10, runs
    # and the walker comes back to Python right after packet 32, the ICE decision's, whatever the batches' sizes
    stops = _returns(kern, path)
    assert 32 in stops, stops


def test_waiting_records_before_a_failed_run_are_noted_at_their_packets(kern, tmp_path):
    """A test run that fails (here a runt frame, which BPF_PROG_TEST_RUN refuses) ends the replay with its error, but
    the records still waiting from the packets before it are handed over first, each noted at its own packet."""
    out = assert_same(kern, [_write(tmp_path / "runt.pcap", [*_ntp(20), b"\1\2\3"])])
    assert [d["packet"] for d in out["decisions"]] == list(range(1, 21))
    assert out["captures"][0][3]  # the error is reported


def test_a_record_place_past_32_bits_is_rebuilt():
    assert replay._place(5, 5) == 5 and replay._place(3, 40) == 3 and replay._place(0, 40) == 40
    big = (1 << 32) + 7  # the packet 2^32 + 7 carries 7
    assert replay._place(big & 0xFFFFFFFF, big + 12) == big


def test_walker_hands_over_every_record_in_order(kern, tmp_path):
    """The helper takes the ring buffer's records itself (no libbpf callback): more than one return's worth waiting
    before the walk (here 200 `dns` records, about 120 KB, and 200 `classified`) comes out over several EVENTS
    returns, in the ring's order, none lost, and the capture's own records after them."""
    for i in range(200):
        kern.test_run(_dns_answer(i), ts_ns=1_000_000_000 + i)
    path = tmp_path / "dns.pcap"
    write_pcap(path, [(2_000_000_000 + i, _dns_answer(1000 + i)) for i in range(3)])
    ids, returns = [], 0
    with fastwalk.Ring(kern.ring_map_fd) as ring, fastwalk.Walker(path, kern.prog_fd, ring, kern.batch_map_fd) as w:
        while (step := w.run()).status != fastwalk.END:
            assert step.status == fastwalk.EVENTS
            returns += 1
            for rec in w.records():
                ev = wire.Event.unpack(rec)
                if ev.type == wire.EV_DNS:  # each new flow also leaves a `classified` record
                    ids.append(struct.unpack_from("!H", ev.data)[0])
    assert ids == [*range(200), 1000, 1001, 1002]
    assert returns >= 2 + 3  # the waiting records took more than one return; then one per packet (each ends its run)
    assert kern.poll_events() == []  # all consumed: libbpf's view of the ring agrees


def test_a_failing_handler_leaves_no_record_of_its_return_unhandled(kern, tmp_path, monkeypatch):
    """The helper hands a return's records over already taken from the ring buffer: when the slow path raises on one,
    the others of that return are still handled (the final pump cannot see them), and the error is raised after."""
    from skyguard.slowpath.engine import Engine

    path = tmp_path / "cid.pcap"
    write_pcap(path, _cid_flow(5, 150))
    calls = []
    real = Engine.handle_sample

    def flaky(self, raw):
        calls.append(raw)
        if len(calls) == 3:
            raise RuntimeError("slow path bug")
        real(self, raw)

    monkeypatch.setattr(Engine, "handle_sample", flaky)
    with pytest.raises(RuntimeError, match="slow path bug"):
        replay.replay([str(path)], kernel=kern, engine="c")
    assert len(calls) > 50  # the early samples came in one return: all of them were handed over


def test_small_ring_buffer_loses_no_early_sample(bpf_ok, tmp_path):
    """Early samples' records wait in the ring buffer across batches only up to a quarter of it (sg_batch.waiting):
    with a 4 KiB ring, which 30 sample records fill, four interleaved candidate flows of small packets lose no
    record, as in the per-packet loop."""
    from skyguard.kernel.loader import Kernel

    pkts = sorted((p for i in range(4) for p in _cid_flow(i, 120, port=33000 + i, sizes=(20, 40))), key=lambda p: p[0])
    path = tmp_path / "four.pcap"
    write_pcap(path, pkts)
    with Kernel(replay=True, ringbuf_bytes=4096) as k:
        out = assert_same(k, [str(path)])
        assert out["stats"]["events_lost"] == 0 and out["captures"][0][1] == 480
        packets, runs = _runs(k, [str(path)])
        assert runs * 2 < packets  # still in batches


def test_firewall_mark_metadata_between_batched_packets(kern, captures):
    """A class with a firewall mark grows each of its packets' metadata (bpf_xdp_adjust_meta): the next packet of the
    batch must still get the replay's metadata alone, with its own capture time."""
    pol = parse_policy('name = "fw"\n[class.other]\nfwmark = 0x2a\n[class.unknown]\nfwmark = 0x2b\n'
                       '[class.skype-signaling]\naction = "mark"\ndscp = 24\nfwmark = 0x2c\n', "fw.toml")
    paths = sorted(str(p) for p in captures.glob("*.pcap*"))
    out = assert_same(kern, paths, pol)
    packets, runs = _runs(kern, paths, pol)
    assert out["stats"]["fwmark"] > packets // 4 and runs * 2 < packets
    assert out["stats"]["meta_ts"] == packets  # every packet's clock was its capture time


def test_frames_too_long_or_short_for_a_batch_run_alone(kern, captures, tmp_path):
    """Frames longer than a batch holds (SG_BATCH_BYTES) run alone, between batches, in capture order."""
    pkts = _frames(captures, 200)
    big = pkts[10][1][:14] + bytes(wire.C["SG_BATCH_BYTES"] + 100)
    for at in (0, 5, 50, 51, 120):
        pkts.insert(at, (pkts[at][0], big))
    pkts.append((pkts[-1][0], big))
    path = tmp_path / "long.pcap"
    write_pcap(path, pkts)
    out = assert_same(kern, [str(path)])
    assert out["captures"][0][1] == len(pkts)
