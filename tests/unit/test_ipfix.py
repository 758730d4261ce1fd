"""The IPFIX encoder and exporter: byte layout, sequence numbers, template refresh, variable-length strings, message
splitting, per-flow deltas; and tshark's and nfacctd's decoders reading every record the encoder wrote."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from skyguard import wire
from skyguard.export import ipfix
from skyguard.export.ipfix import Encoder, Exporter, Record
from tests.conftest import skip_or_fail
from tests.ipfix_tools import Nfacctd, Receiver, count_records, tshark_headers, tshark_records, write_pcap


def v4(s: str) -> bytes:
    return ipaddress.ip_address(s).packed


def rec(i: int = 0, *, v6: bool = False, app: str = "skype-relay", reason: str = "ms-stun-attr") -> Record:
    src, dst = (v4(f"2001:db8::{i + 1:x}"), v4("2001:db8:1::1")) if v6 else (v4(f"10.0.{i // 250}.{i % 250 + 1}"),
                                                                          v4("52.114.1.1"))
    return Record(src, dst, 1000 + i, 3478, 17, 7, 10 + i, 1000 + i, 1140 + i + 14 * (10 + i) - 140, 6, 4 + i, 1,
                  1_700_000_000_000 + i, 1_700_000_001_000 + i, ipfix.END_IDLE, ipfix.FWD_FORWARDED, app, reason)


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ---- byte layout -----------------------------------------------------------------------------------------------------

def test_header_template_and_record_bytes():
    clock = Clock()
    enc = Encoder(domain=42, clock=clock)
    (msg,) = enc.encode([rec(0)])
    version, length, export, seq, domain = struct.unpack_from("!HHIII", msg)
    assert (version, length, export, seq, domain) == (10, len(msg), 1_700_000_000, 0, 42)
    # the template set: id 2, then template 256 with 19 fields, template 257 with 19 fields
    sid, slen = struct.unpack_from("!HH", msg, 16)
    assert sid == 2
    tid, count = struct.unpack_from("!HH", msg, 20)
    assert (tid, count) == (256, 19)
    fields = [struct.unpack_from("!HH", msg, 24 + 4 * i) for i in range(count)]
    assert fields == [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (58, 2), (2, 8), (1, 8), (352, 8), (298, 8),
                      (299, 8), (133, 8), (152, 8), (153, 8), (136, 1), (239, 1), (89, 1), (96, 0xFFFF),
                      (94, 0xFFFF)]
    tid6, count6 = struct.unpack_from("!HH", msg, 24 + 4 * count)
    assert (tid6, count6) == (257, 19)
    assert struct.unpack_from("!HH", msg, 28 + 4 * count) == (27, 16)
    # the data set: id 256, one record laid out field by field in network order
    pos = 16 + slen
    dsid, dlen = struct.unpack_from("!HH", msg, pos)
    assert dsid == 256 and pos + dlen == len(msg)
    body = msg[pos + 4:]
    r = rec(0)
    expect = (v4("10.0.0.1") + v4("52.114.1.1") + struct.pack("!HHBH", 1000, 3478, 17, 7)
              + struct.pack("!8Q", r.packets, r.octets, r.l2_octets, 6, 4, 1, r.start_ms, r.end_ms)
              + bytes([1, 1, 0x40]) + b"\x0bskype-relay" + b"\x0cms-stun-attr")
    assert body == expect


def test_variable_length_strings():
    assert ipfix.varlen("") == b"\x00"
    assert ipfix.varlen("a" * 254) == b"\xfe" + b"a" * 254
    assert ipfix.varlen("a" * 255) == b"\xff\x00\xff" + b"a" * 255  # 255 and over: three-octet length
    assert ipfix.varlen("é") == b"\x02\xc3\xa9"  # length in octets of the UTF-8 form


# ---- sequence numbers, templates, splitting --------------------------------------------------------------------------

def test_sequence_counts_data_records_before_each_message():
    enc = Encoder(max_len=600, clock=Clock())
    msgs = enc.encode([rec(i) for i in range(20)]) + enc.encode([rec(i) for i in range(3)])
    templates: dict = {}
    expect = 0
    for m in msgs:
        assert struct.unpack_from("!I", m, 8)[0] == expect
        expect += count_records(m, templates)
    assert expect == 23 and enc.sequence == 23


def test_sequence_wraps_modulo_2_32():
    enc = Encoder(clock=Clock())
    enc.sequence = 0xFFFFFFFE
    m1, = enc.encode([rec(0), rec(1), rec(2)])
    m2, = enc.encode([rec(3)])
    assert struct.unpack_from("!I", m1, 8)[0] == 0xFFFFFFFE
    assert struct.unpack_from("!I", m2, 8)[0] == 1


def _has_template(msg: bytes) -> bool:
    return struct.unpack_from("!H", msg, 16)[0] == 2


def test_templates_resent_by_time_and_by_message_count():
    clock = Clock()
    enc = Encoder(refresh_s=30.0, refresh_messages=0, clock=clock)
    assert _has_template(enc.encode([rec(0)])[0])
    clock.t += 29
    assert not _has_template(enc.encode([rec(0)])[0])
    clock.t += 1
    assert _has_template(enc.encode([rec(0)])[0])

    enc = Encoder(refresh_s=3600.0, refresh_messages=3, clock=clock)
    seen = [_has_template(enc.encode([rec(0)])[0]) for _ in range(7)]
    assert seen == [True, False, False, True, False, False, True]


def test_split_under_the_mtu_with_both_templates():
    enc = Encoder(max_len=1452, clock=Clock())
    recs = [rec(i, v6=i % 3 == 0, reason="r" * (300 if i == 5 else 8)) for i in range(200)]
    msgs = enc.encode(recs)
    assert len(msgs) > 10
    assert all(len(m) <= 1452 for m in msgs)
    assert all(struct.unpack_from("!H", m, 2)[0] == len(m) for m in msgs)
    templates: dict = {}
    assert sum(count_records(m, templates) for m in msgs) == 200
    with pytest.raises(ValueError):
        Encoder(max_len=200)


# ---- independent decoders --------------------------------------------------------------------------------------------

def test_tshark_decodes_every_record(tmp_path: Path):
    if not shutil.which("tshark"):
        skip_or_fail("tshark is missing (make setup installs it)")
    enc = Encoder(domain=7, max_len=1200, clock=Clock(time.time()))
    recs = [rec(i, v6=i % 4 == 0, reason="x" * 260 if i == 9 else "ms-stun-attr") for i in range(120)]
    msgs = enc.encode(recs)
    write_pcap(tmp_path / "ipfix.pcap", msgs, 4739)
    got = tshark_records(tmp_path / "ipfix.pcap", 4739)
    assert len(got) == 120
    assert sum(int(r["cflow.packets"]) for r in got) == sum(r.packets for r in recs)
    assert sum(int(r["cflow.octets"]) for r in got) == sum(r.octets for r in recs)
    assert sum(int(r["cflow.layer2_octet_delta_count"]) for r in got) == sum(r.l2_octets for r in recs)
    first = got[1]  # rec(1): IPv4
    assert (first["cflow.srcaddr"], first["cflow.dstaddr"], first["cflow.srcport"]) == ("10.0.0.2", "52.114.1.1",
                                                                                       "1001")
    assert first["cflow.appl_name"] == "skype-relay" and first["cflow.appl_desc"] == "ms-stun-attr"
    assert (first["cflow.flow_end_reason"], first["cflow.vlanid"], first["cflow.biflow_direction"]) == ("1", "7", "1")
    assert got[0]["cflow.srcaddrv6"] == "2001:db8::1"
    assert got[9]["cflow.appl_desc"] == "x" * 260
    heads = tshark_headers(tmp_path / "ipfix.pcap", 4739)
    assert [h[1] for h in heads] == [7] * len(msgs)
    assert heads[0][0] == 0 and heads[-1][0] < 120


def test_nfacctd_decodes_every_record(tmp_path: Path):
    if not Nfacctd.available():
        skip_or_fail("nfacctd is missing (Debian package pmacct; make setup installs it)")
    nf = Nfacctd(tmp_path)
    try:
        nf.prime(rec(500))
        enc = Encoder(max_len=1400, clock=Clock(time.time()))
        recs = [rec(i, v6=i % 5 == 0) for i in range(100)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for m in enc.encode(recs):
                s.sendto(m, ("127.0.0.1", nf.port))
        want = sum(r.packets for r in recs)
        deadline = time.monotonic() + 30
        while sum(p for p, _b in nf.totals().values()) < want and time.monotonic() < deadline:
            time.sleep(0.2)  # the print plugin writes once a second: poll its output
    finally:
        nf.stop()
    tot = nf.totals()
    assert len(tot) == 100, nf.log.read_text()[-2000:]
    assert sum(p for p, _b in tot.values()) == sum(r.packets for r in recs)
    assert sum(b for _p, b in tot.values()) == sum(r.octets for r in recs)
    assert tot[("10.0.0.2", "52.114.1.1", 1001, 3478, "udp", 7)] == (11, 1001)


# ---- the exporter ----------------------------------------------------------------------------------------------------

def _flow(p: tuple[int, int], b: tuple[int, int], *, init_dir: int = 0, dropped: int = 0, cls: int = wire.RELAY,
          first: int = 1_000_000_000, last: int = 2_000_000_000) -> wire.Flow:
    return wire.Flow(first_ns=first, last_ns=last, pkts=p, bytes_=b, dropped=dropped, cls=cls, init_dir=init_dir,
                     reason=wire.REASON_BITS["ms-stun-attr"])


KEY = wire.FlowKey.make("192.168.1.6", 50010, "52.114.250.5", 3478, 17, vlan=0)


def test_records_carry_deltas_and_the_initiator_as_source():
    rx = Receiver()
    try:
        ex = Exporter(f"127.0.0.1:{rx.port}", active_timeout_s=60)
        # the lower endpoint (52.114.250.5) is direction 0; the flow was started by the other one (init_dir 1)
        ex.record(KEY, _flow((3, 5), (300, 500), init_dir=1), ipfix.END_ACTIVE, wall_off_ns=0)
        ex.record(KEY, _flow((4, 9), (400, 900), init_dir=1, dropped=2), ipfix.END_IDLE, wall_off_ns=0)
        first, second = ex.pending
        assert (first.src, first.sport, first.dst, first.dport) == (v4("192.168.1.6"), 50010, v4("52.114.250.5"),
                                                                    3478)
        assert (first.packets, first.init_packets, first.resp_packets, first.l2_octets) == (8, 5, 3, 800)
        assert first.octets == 800 - 14 * 8
        assert (second.packets, second.init_packets, second.resp_packets, second.l2_octets) == (5, 4, 1, 500)
        assert (second.dropped, second.end_reason, second.start_ms) == (2, ipfix.END_IDLE, 2000)
        assert (second.app, second.reason) == ("skype-relay", "ms-stun-attr")
        assert KEY not in ex.reported  # ended: nothing kept
        assert ex.flush() == 0
        rx.wait_quiet(0.3, 5)
        assert rx.got.records == 2 and rx.got.gaps == 0
        assert ex.status()["records"] == 2
    finally:
        rx.close()


def test_no_record_without_new_packets_but_an_end_after_reports():
    ex = Exporter("127.0.0.1:9", active_timeout_s=60)
    f = _flow((3, 5), (300, 500))
    assert ex.record(KEY, f, ipfix.END_ACTIVE)
    assert not ex.record(KEY, f, ipfix.END_ACTIVE)  # idle since: nothing to say
    assert ex.record(KEY, f, ipfix.END_FORCED)  # reported before: its end is told, with zero deltas
    assert ex.pending[-1].packets == 0
    ex.close()


def _chunks(flows: list[tuple[wire.FlowKey, wire.Flow]], per: int = 3) -> list[tuple[bytes, bytes, int]]:
    """Raw (keys, values, n) chunks, as Kernel.flows_raw() reads the flow map."""
    out = []
    for i in range(0, len(flows), per):
        part = flows[i:i + per]
        out.append((b"".join(k.pack() for k, _f in part), b"".join(f.pack() for _k, f in part), len(part)))
    return out


def test_a_restart_exports_adopted_flows_from_where_the_previous_daemon_stopped():
    """The previous daemon sent every flow's forced end at its stop; this one adopted the pinned flows: its records
    carry only what came since (before, the first record of an adopted flow repeated everything since its start)."""
    keys = [wire.FlowKey.make("192.168.1.6", 50010 + i, "52.114.250.5", 3478, 17, vlan=i % 3) for i in range(50)]
    at_start = [(k, _flow((3 + i, 5), (300 + i, 500), dropped=i % 2, first=1_000_000_000 + i)) for i, k in
                enumerate(keys)]
    ex = Exporter("127.0.0.1:9", active_timeout_s=60)
    assert ex.adopt(_chunks(at_start)) == 50 and ex.status()["adopted_flows"] == 50
    k0, f0 = at_start[7]
    assert not ex.record(k0, f0, ipfix.END_IDLE)  # nothing since the restart: its end was already sent
    assert not ex.record(k0, f0, ipfix.END_ACTIVE)
    k1, _f1 = at_start[8]
    later = _flow((3 + 8 + 4, 5 + 1), (308 + 400, 600), first=1_000_000_008, last=9_000_000_000)
    assert ex.record(k1, later, ipfix.END_ACTIVE, wall_off_ns=0)
    r = ex.pending[-1]
    assert (r.packets, r.l2_octets, r.start_ms) == (5, 500, 2000)  # the delta since adoption, from its last packet
    more = _flow((3 + 8 + 6, 5 + 1), (308 + 600, 600), first=1_000_000_008, last=9_500_000_000)
    assert ex.record(k1, more, ipfix.END_FORCED, wall_off_ns=0) and ex.pending[-1].packets == 2
    # a new flow of the same 5-tuple (another first_ns) owes nothing to the adopted one
    k2, _f2 = at_start[9]
    fresh = _flow((2, 2), (200, 200), first=5_000_000_000)
    assert ex.record(k2, fresh, ipfix.END_IDLE, wall_off_ns=0) and ex.pending[-1].packets == 4
    # a flow the daemon did not find at its start is exported whole
    other = wire.FlowKey.make("10.0.0.1", 1, "10.0.0.2", 2, 17)
    assert ex.record(other, _flow((1, 1), (100, 100)), ipfix.END_IDLE) and ex.pending[-1].packets == 2
    ex.close()


def test_adopted_keys_that_differ_only_in_high_bits_keep_their_own_counters():
    """Two flows whose keys differ only in high address bits, adopted with the same first_ns (flows begun in the same
    clock tick): each record starts from its own flow's counters, never from the other's."""
    a = wire.FlowKey.make("10.0.0.1", 5000, "10.0.0.2", 6000, 17)
    b = wire.FlowKey.make("10.0.0.129", 5000, "10.0.0.130", 6000, 17)
    ex = Exporter("127.0.0.1:9", active_timeout_s=60)
    ex.adopt(_chunks([(a, _flow((100, 100), (1000, 1000))), (b, _flow((5, 5), (50, 50)))]))
    assert ex.record(b, _flow((6, 5), (60, 50)), ipfix.END_IDLE, wall_off_ns=0)
    assert (ex.pending[-1].packets, ex.pending[-1].init_packets, ex.pending[-1].resp_packets) == (1, 1, 0)
    assert ex.record(a, _flow((101, 102), (1010, 1020)), ipfix.END_IDLE, wall_off_ns=0)
    assert ex.pending[-1].packets == 3
    assert ex.flush() == 0  # and every record encodes (a negative count would not)
    ex.close()


def test_an_adopted_flow_quiet_since_the_restart_never_gets_a_record():
    """Due for an active-timeout record with nothing new, then idle: the stopped daemon already sent its end."""
    ex = Exporter("127.0.0.1:9", active_timeout_s=60)
    f = _flow((7, 7), (700, 700))
    ex.adopt(_chunks([(KEY, f)]))
    assert not ex.record(KEY, f, ipfix.END_ACTIVE)
    assert not ex.record(KEY, f, ipfix.END_IDLE)
    assert not ex.pending and KEY not in ex.reported
    ex.close()


def test_a_later_flow_of_a_reported_5_tuple_is_exported_whole():
    """An active-timeout record, then the flow vanishes without an end (LRU eviction) and the 5-tuple starts again
    with smaller counters: the new flow's record carries its own counts, not a negative difference."""
    ex = Exporter("127.0.0.1:9", active_timeout_s=60)
    assert ex.record(KEY, _flow((50, 50), (5000, 5000)), ipfix.END_ACTIVE, wall_off_ns=0)
    again = _flow((3, 1), (300, 100), first=7_000_000_000, last=8_000_000_000)
    assert ex.record(KEY, again, ipfix.END_IDLE, wall_off_ns=0)
    assert (ex.pending[-1].packets, ex.pending[-1].l2_octets, ex.pending[-1].start_ms) == (4, 400, 7000)
    ex.close()


def test_the_baseline_goes_once_no_adopted_flow_is_left():
    class Snap:
        def __init__(self, first: list[int], taken_ns: int) -> None:
            self.cols = type("Cols", (), {"first_ns": np.array(first, dtype=np.uint64),
                                          "last_ns": np.array(first, dtype=np.uint64)})()
            self.taken_ns = taken_ns

        def __len__(self) -> int:
            return len(self.cols.first_ns)

    ex = Exporter("127.0.0.1:9", active_timeout_s=60)
    ex.adopt(_chunks([(KEY, _flow((1, 1), (100, 100), first=1_000))]))
    later = time.monotonic_ns() + 1
    ex.active_timeouts(Snap([1_000, 5_000], later), lambda _k: None, now_ns=10)
    assert ex.baseline is not None  # the adopted flow is still there
    ex.active_timeouts(Snap([5_000], 0), lambda _k: None, now_ns=20)
    assert ex.baseline is not None  # a round older than the adoption proves nothing
    ex.active_timeouts(Snap([5_000], later), lambda _k: None, now_ns=30)
    assert ex.baseline is None
    ex.close()


def test_adopting_an_empty_table_keeps_no_baseline():
    ex = Exporter("127.0.0.1:9", active_timeout_s=60)
    assert ex.adopt([]) == 0 and ex.baseline is None
    ex.close()


def test_due_rows_cross_a_multiple_of_the_active_timeout():
    T = 60_000_000_000
    first = np.array([0, 0, 0, 50 * 10**9, 0], dtype=np.uint64)
    last = np.array([61 * 10**9, 10 * 10**9, 121 * 10**9, 100 * 10**9, 119 * 10**9], dtype=np.uint64)
    # scan at 59 s then at 62 s: every flow 60 s old with packets not yet reported is due; row 3 is 12 s old
    assert list(ipfix.due_rows(first, last, 59 * 10**9, 62 * 10**9, T)) == [0, 1, 2, 4]
    # the next scan in the same period: nobody again
    assert list(ipfix.due_rows(first, last, 62 * 10**9, 65 * 10**9, T)) == []
    # crossing 120 s: the rows with packets after their 60 s report (row 1 went idle at 10 s)
    assert list(ipfix.due_rows(first, last, 119 * 10**9, 121 * 10**9, T)) == [0, 2, 4]


def test_send_errors_are_counted_and_the_loop_goes_on():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ex = Exporter(f"127.0.0.1:{port}")  # nobody listens: ICMP port unreachable -> ECONNREFUSED on a later send
    for _ in range(3):
        ex.record(KEY, _flow((1, 1), (100, 100)), ipfix.END_IDLE)
        ex.flush()
        time.sleep(0.05)
    assert ex.counters.send_errors >= 1 and ex.counters.last_error == "ECONNREFUSED"
    ex.close()


class FullSocket:
    def send(self, _msg: bytes) -> int:
        raise BlockingIOError


def test_a_full_outbox_drops_messages_as_a_sequence_gap():
    rx = Receiver()
    try:
        ex = Exporter(f"127.0.0.1:{rx.port}")
        ex.OUTBOX_MAX = 2
        real = ex.sock
        ex.sock = FullSocket()  # the socket buffer is full
        for i in range(300):
            ex.record(wire.FlowKey.make("10.0.0.1", i, "10.0.0.2", 53, 17), _flow((1, 1), (90, 90)), ipfix.END_IDLE)
        assert ex.flush() == 2
        assert ex.counters.records_lost > 0
        ex.sock = real
        assert ex.drain(2.0)
        ex.record(KEY, _flow((1, 1), (90, 90)), ipfix.END_IDLE)  # the next message shows the gap
        assert ex.drain(2.0)
        rx.wait_quiet(0.3, 5)
        assert rx.got.gaps == ex.counters.records_lost  # the collector sees exactly what was lost
        assert rx.got.records == 300 + 1 - ex.counters.records_lost
    finally:
        rx.close()


def test_collector_address_forms():
    assert ipfix.collector_address("127.0.0.1:4739") == ("127.0.0.1", 4739)
    assert ipfix.collector_address("[2001:db8::1]:4739") == ("2001:db8::1", 4739)
    assert ipfix.collector_address("collector.example.net:2055") == ("collector.example.net", 2055)
    for bad in ("127.0.0.1", "2001:db8::1:4739", "host:99999", "a b:1"):
        with pytest.raises(ValueError):
            ipfix.collector_address(bad)


def test_config_keys_and_flags(tmp_path: Path):
    from skyguard.daemon.config import ConfigError, load_config, parse_daemon_args

    cfg, _a = parse_daemon_args(["-i", "eth0", "--policy", "p.toml", "--ipfix-collector", "127.0.0.1:4739",
                                 "--ipfix-active-timeout", "30", "--ipfix-domain", "9"], default_config="/nonexistent")
    assert (cfg.ipfix_collector, cfg.ipfix_active_timeout, cfg.ipfix_domain) == ("127.0.0.1:4739", 30.0, 9)
    assert (cfg.ipfix_template_refresh, cfg.ipfix_template_refresh_packets, cfg.ipfix_mtu) == (60.0, 0, 1500)
    with pytest.raises(ConfigError, match="--ipfix-collector"):
        parse_daemon_args(["-i", "eth0", "--policy", "p.toml", "--ipfix-collector", "nope"],
                          default_config="/nonexistent")
    f = tmp_path / "skyguard.toml"
    f.write_text('interfaces = ["eth0"]\npolicy = "p.toml"\nipfix_collector = "[2001:db8::9]:4739"\n'
                 "ipfix_mtu = 100\n")
    with pytest.raises(ConfigError, match=r"skyguard.toml:4: ipfix_mtu"):
        load_config(f)


def test_reported_flows_the_table_lost_are_forgotten_after_two_rounds():
    """A reported flow the LRU table evicted never gets an end the daemon sees: its entry goes once two snapshot rounds
    in a row, both more than two active timeouts after its last record, did not hold its key. Flows still in the
    table, recent records and a key missing from one round only are kept."""
    from skyguard.kernel.flowtable import KEY_DTYPE

    T = 60 * 10**9
    gone, kept, young, blip = (wire.FlowKey.make("10.0.0.1", 40000 + i, "192.0.2.9", 3478, 17) for i in range(4))

    class Snap:
        def __init__(self, keys: list[wire.FlowKey], taken_ns: int) -> None:
            raw = b"".join(k.pack() for k in keys)
            self.keys = np.frombuffer(raw, dtype=KEY_DTYPE) if raw else np.zeros(0, dtype=KEY_DTYPE)
            self.cols = type("Cols", (), {"first_ns": np.zeros(len(keys), dtype=np.uint64),
                                          "last_ns": np.zeros(len(keys), dtype=np.uint64)})()
            self.taken_ns = taken_ns

        def __len__(self) -> int:
            return len(self.keys)

    ex = Exporter("127.0.0.1:9", active_timeout_s=60)
    for k, last in ((gone, 1), (kept, 1), (blip, 1), (young, 9 * T)):
        assert ex.record(k, _flow((5, 5), (500, 500), first=0, last=last), ipfix.END_ACTIVE, wall_off_ns=0)
    now, half = 10 * T, T // 2  # checks come at most every half active timeout
    ex.active_timeouts(Snap([kept, young], now), lambda _k: None, now_ns=now)  # gone and blip missing once
    assert set(ex.reported) == {gone, kept, young, blip} and ex.counters.gone_unended == 0
    ex.active_timeouts(Snap([kept], now + half - 1), lambda _k: None, now_ns=now + half - 1)  # too soon: no check
    assert set(ex.reported) == {gone, kept, young, blip}
    ex.active_timeouts(Snap([kept, blip], now + half), lambda _k: None, now_ns=now + half)  # young is too recent
    assert set(ex.reported) == {kept, young, blip}
    assert ex.counters.gone_unended == 1 and ex.status()["gone_unended"] == 1
    for i in (2, 3):  # an empty table: blip missing once more, kept twice; young is old only from 9.5 T on
        ex.active_timeouts(Snap([], now + i * half), lambda _k: None, now_ns=now + i * half)
    assert set(ex.reported) == {young} and ex.counters.gone_unended == 3
    ex.close()
