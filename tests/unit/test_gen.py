"""skyguard.gen: determinism, labels that match the pcaps, the docs/signatures.md facts each kind must show, and
tshark's reading of the generated STUN, DNS, SIP and TLS."""

from __future__ import annotations

import csv
import ipaddress
import json
import random
import shutil
import statistics
import struct
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from skyguard.lab import gen, kinds, payloads, traffic
from skyguard.lab import packet as pk
from skyguard.offline.pcap import read_packets
from tests.conftest import skip_or_fail


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gen")
    gen.generate(7, d, calls=2)
    return d


def flows_of(path: Path) -> dict[tuple, list[tuple[int, pk.Parsed]]]:
    """Packets of a capture grouped by bidirectional flow key, (direction, parsed) with direction 0 = first sender."""
    flows: dict[tuple, list[tuple[int, pk.Parsed]]] = defaultdict(list)
    first: dict[tuple, tuple[str, int]] = {}
    for pkt in read_packets(path):
        p = pk.parse(pkt.frame)
        assert p is not None
        a, b = (p.src, p.sport), (p.dst, p.dport)
        key = (*min(a, b), *max(a, b), p.proto, p.vlan)
        first.setdefault(key, a)
        flows[key].append((0 if first[key] == a else 1, p))
    return flows


def one_flow(path: Path, index: int = 0) -> list[tuple[int, pk.Parsed]]:
    return list(flows_of(path).values())[index]


def stun_attrs(payload: bytes) -> list[int]:
    types, off = [], 20
    while off + 4 <= len(payload):
        t, n = struct.unpack_from("!HH", payload, off)
        types.append(t)
        off += 4 + n + (-n % 4)
    return types


def is_stun(payload: bytes) -> bool:
    return len(payload) >= 20 and payload[0] < 2 and payload[4:8] == b"\x21\x12\xa4\x42"


# ---------------------------------------------------------------------------------------------------------------------
# Files, labels, determinism


def test_every_kind_written_and_labels_header(out: Path) -> None:
    for kind in gen.KINDS:
        assert (out / f"{kind}.pcap").stat().st_size > 24
    with open(out / "labels.csv") as fh:
        header = next(csv.reader(fh))
    assert header == list(gen.LABEL_FIELDS)


def test_label_columns_match_the_shared_captures(out: Path, captures: Path) -> None:
    """The same first columns as the shared captures' labels (the `captures` fixture: fails in CI if they are gone)."""
    with open(out / "labels.csv") as fh, open(captures / "labels.csv") as sh:
        assert next(csv.reader(sh))[:4] == next(csv.reader(fh))[:4]


def test_labels_match_pcaps(out: Path) -> None:
    with open(out / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_capture: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_capture[r["capture"]].append(r)
    assert set(by_capture) == {f"{k}.pcap" for k in gen.KINDS}
    for capture, crow in by_capture.items():
        counted: dict[tuple[str, str, str], list[int]] = {}
        for pkt in read_packets(out / capture):
            p = pk.parse(pkt.frame)
            assert p is not None
            a, b = p.endpoints
            proto = {6: "tcp", 17: "udp"}[p.proto]
            k = (proto, a, b) if (proto, a, b) in counted else (proto, b, a)
            if k not in counted:
                k = (proto, a, b)
                counted[k] = [0, 0]
            counted[k][0] += 1
            counted[k][1] += pkt.orig_len
        labelled = {(r["proto"], r["endpoint_a"], r["endpoint_b"]): [int(r["packets"]), int(r["bytes"])] for r in crow}
        assert labelled == counted, capture
        kind = capture.removesuffix(".pcap")
        assert {r["label"] for r in crow} == {kind}
        assert gen.KIND_CLASS[kind] in {r["class"] for r in crow}
        assert all(r["class"] in ("other", "skype-signaling", "skype-p2p", "skype-out", "skype-relay") for r in crow)


def test_deterministic_per_seed(tmp_path: Path) -> None:
    kinds = ["legacy-e2o", "modern-relay", "tls-skype", "dns-pstn"]
    r1 = gen.generate(3, tmp_path / "a", kinds, calls=2)
    r2 = gen.generate(3, tmp_path / "b", kinds, calls=2)
    r3 = gen.generate(4, tmp_path / "c", kinds, calls=2)
    assert r1 == r2 and r1 != r3
    for k in kinds:
        assert (tmp_path / "a" / f"{k}.pcap").read_bytes() == (tmp_path / "b" / f"{k}.pcap").read_bytes()
        assert (tmp_path / "a" / f"{k}.pcap").read_bytes() != (tmp_path / "c" / f"{k}.pcap").read_bytes()
    assert (tmp_path / "a" / "labels.csv").read_text() == (tmp_path / "b" / "labels.csv").read_text()
    # a kind's traffic does not depend on which other kinds were asked for
    gen.generate(3, tmp_path / "d", ["tls-skype"], calls=2)
    assert (tmp_path / "d" / "tls-skype.pcap").read_bytes() == (tmp_path / "a" / "tls-skype.pcap").read_bytes()


def test_kind_packets_single_call_in_time_order() -> None:
    for kind in gen.KINDS:
        pkts = gen.kind_packets(kind, random.Random(1), start_ns=5 * 10**18)
        assert pkts, kind
        ts = [t for t, _ in pkts]
        assert ts == sorted(ts) and ts[0] >= 5 * 10**18 - 10**9
        assert all(pk.parse(f) is not None for _, f in pkts)
        assert gen.kind_packets(kind, random.Random(1), start_ns=5 * 10**18) == pkts
    with pytest.raises(ValueError, match="unknown kind"):
        gen.kind_packets("nope", random.Random(1))


def test_ipv6_and_vlan_variants(tmp_path: Path) -> None:
    rows = gen.generate(11, tmp_path, ["modern-relay", "dns-pstn", "legacy-e2e", "tls-other"], calls=1, ipv6=True,
                        vlan=42)
    assert all(r.endpoint_a.startswith("[") for r in rows)
    for f in tmp_path.glob("*.pcap"):
        for pkt in read_packets(f):
            p = pk.parse(pkt.frame)
            assert p is not None and p.vlan == 42 and ":" in p.src
            if p.sport == 53 and p.payload:
                qtype_at = 12 + len(p.payload[12:].split(b"\0")[0]) + 1
                assert p.payload[qtype_at : qtype_at + 2] == b"\0\x1c"  # AAAA question
                assert p.payload[-26:-24] == b"\0\x1c" and p.payload[-18:-16] == b"\0\x10"  # AAAA, 16-byte rdata
    relay = [r for r in rows if r.label == "modern-relay"][0]
    addr = relay.endpoint_b.rsplit(":", 1)[0].strip("[]")
    assert ipaddress.ip_address(addr) in ipaddress.ip_network("2603:1063::/38")


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gen.main(["--seed", "5", "--out", str(tmp_path), "--calls", "1", "--kinds", "dns,game", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["label"] for r in doc["labels"]} == {"dns", "game"}
    assert gen.main(["--seed", "5", "--out", str(tmp_path), "--kinds", "bogus"]) == 2


# ---------------------------------------------------------------------------------------------------------------------
# docs/signatures.md facts, per kind


def test_legacy_e2e(out: Path) -> None:
    for flow in flows_of(out / "legacy-e2e.pcap").values():
        funcs = [p.payload[2] & 0x8F for _, p in flow]
        assert set(funcs) <= {0x02, 0x03, 0x0D} and funcs[0] in (0x02, 0x03)
        assert len({p.payload[2] & 0x70 for _, p in flow}) > 1  # the three random bits vary
        voice = [len(p.payload) for _, p in flow if p.payload[2] & 0x8F == 0x0D]
        assert 60 <= statistics.mean(voice) <= 74 and 5.5 <= statistics.pstdev(voice) <= 9.5
        assert {d for d, _ in flow} == {0, 1}
        pkts = read_times(out / "legacy-e2e.pcap", flow[0][1])
        rate = len(pkts) / ((pkts[-1] - pkts[0]) / 1e9)
        assert 100 <= rate <= 180, rate


def read_times(path: Path, p0: pk.Parsed) -> list[int]:
    ends = {(p0.src, p0.sport), (p0.dst, p0.dport)}
    out = []
    for pkt in read_packets(path):
        p = pk.parse(pkt.frame)
        if p and {(p.src, p.sport), (p.dst, p.dport)} == ends:
            out.append(pkt.ts_ns)
    return out


def test_legacy_e2o() -> None:
    ports, gateways = set(), set()
    for seed in range(12):
        flows = gen.kind_flows("legacy-e2o", random.Random(seed))
        (flow,) = flows
        parsed = [pk.parse(f) for _, f in flow.pkts]
        assert len(parsed) >= 300
        ports.add(parsed[0].dport)
        gateways.add(parsed[0].dst)
        for direction in (parsed[0].src, parsed[0].dst):
            pl = [p.payload for p in parsed if p.src == direction]
            body = [x for x in pl if x[:4] == pl[-1][:4]]  # after the SoM messages: one CID per direction
            assert len(body) >= 0.9 * len(pl) and len(body) > 100
            assert all(a[4] != b[4] for a, b in zip(body, body[1:]))
            assert statistics.pstdev(len(x) for x in body) <= 1.2
            # Bonfiglio: (rate x interval + 8) x redundancy + 4 with 8 kbit/s and 10/20/30 ms
            modes = {(i + 8) * r + 4 for i in (10, 20, 30) for r in (1, 2)}
            assert statistics.mode(len(x) for x in body) in modes
    assert traffic.E2O_PORT in ports and len(ports) > 1  # sometimes 12340, sometimes not
    assert len(gateways - set(traffic.E2O_GATEWAYS)) > 1


def test_modern_p2p(out: Path) -> None:
    for flow in flows_of(out / "modern-p2p.pcap").values():
        reqs = [(d, p) for d, p in flow if is_stun(p.payload) and p.payload[:2] == b"\0\x01"]
        assert {d for d, _ in reqs} == {0, 1}  # full ICE: checks from both sides
        for _, p in reqs:
            assert {0x8054, 0x8070, 0x8037, 0x0024, 0x802A, 0x0025} <= set(stun_attrs(p.payload))
            assert 50000 <= p.sport <= 50019
        rtp = [(d, p) for d, p in flow if not is_stun(p.payload)]
        assert {p.payload[1] & 0x7F for _, p in rtp} == {104}
        assert all(66 <= len(p.payload) <= 84 for _, p in rtp)
        assert {d for d, _ in rtp} == {0, 1}


def test_modern_sbc(out: Path) -> None:
    for flow in flows_of(out / "modern-sbc.pcap").values():
        stun_pkts = [(d, p) for d, p in flow if is_stun(p.payload)]
        assert {(d, p.payload[:2]) for d, p in stun_pkts} == {(0, b"\0\x01"), (1, b"\x01\x01")}  # SBC is ICE-lite
        sbc = ipaddress.ip_address(flow[0][1].dst)
        assert sbc.is_global and not any(sbc in n for n in traffic.MS_AVOID if n.version == 4)
        rtp = [p for _, p in flow if not is_stun(p.payload)]
        assert len({p.payload[1] & 0x7F for p in rtp}) == 1 and rtp[0].payload[1] & 0x7F in (0, 8)
        assert {len(p.payload) for p in rtp} == {172}


def test_modern_relay(out: Path) -> None:
    nets = [ipaddress.ip_network(n) for n in ("52.112.0.0/14", "52.122.0.0/15")]
    for flow in flows_of(out / "modern-relay.pcap").values():
        p0 = flow[0][1]
        assert any(ipaddress.ip_address(p0.dst) in n for n in nets) and 3478 <= p0.dport <= 3481
        attrs = set()
        for _, p in flow:
            if p.payload[:1] == b"\0" or p.payload[:1] == b"\x01":
                attrs |= set(stun_attrs(p.payload))
        assert {0x000F, 0x8008, 0x8055, 0x8050, 0x8095} <= attrs
        magic = [p.payload for _, p in flow if p.payload[:2] == b"\0\x03"][0]
        assert b"\x00\x0f\x00\x04\x72\xc6\x4b\xc6" in magic
        ff10 = [p.payload for _, p in flow if p.payload[:2] == b"\xff\x10"]
        assert ff10 and all(is_stun(x[12:]) for x in ff10)
        rtp = [p.payload for _, p in flow if p.payload[0] == 0x80]
        assert len(rtp) > 100 and {x[1] & 0x7F for x in rtp} == {104}


def test_dns_pstn_answer_points_at_the_call(out: Path) -> None:
    flows = flows_of(out / "dns-pstn.pcap")
    answers = set()
    for flow in flows.values():
        for _, p in flow:
            if p.sport == 53:
                answers.add(str(ipaddress.IPv4Address(p.payload[-4:])))
                assert b"\x07pstnhub\x09microsoft\x03com\x00" in p.payload
    calls = [f for f in flows.values() if f[0][1].dport != 53]
    assert calls and {f[0][1].dst for f in calls} == answers


def test_wireguard_and_game_have_constant_headers(out: Path) -> None:
    for flow in flows_of(out / "wireguard.pcap").values():
        for d in (0, 1):
            data = [p.payload for dd, p in flow if dd == d and p.payload[0] == 4]
            assert len(data) > 100 and len({x[:8] for x in data}) == 1
            counters = [struct.unpack_from("<Q", x, 8)[0] for x in data]
            assert counters == sorted(counters) and len(set(counters)) == len(counters)
        assert [p.payload[0] for _, p in flow[:2]] == [1, 2]
    for flow in flows_of(out / "game.pcap").values():
        for d in (0, 1):
            data = [p.payload for dd, p in flow if dd == d]
            assert len({x[:4] for x in data}) == 1 and all(40 <= len(x) <= 300 for x in data)


def test_webrtc_decoy_has_no_microsoft_attributes(out: Path) -> None:
    ms = {0x000F, 0x8008, 0x8037, 0x8050, 0x8054, 0x8055, 0x8070, 0x8095}
    for flow in flows_of(out / "webrtc-stun.pcap").values():
        reqs = [(d, p) for d, p in flow if is_stun(p.payload) and p.payload[:2] == b"\0\x01"]
        assert {d for d, _ in reqs} == {0, 1}
        assert not any(ms & set(stun_attrs(p.payload)) for _, p in flow if is_stun(p.payload))
        assert {p.payload[1] & 0x7F for _, p in flow if not is_stun(p.payload)} == {111}


def test_sip_rtp_has_no_stun(out: Path) -> None:
    for flow in flows_of(out / "sip-rtp.pcap").values():
        assert not any(is_stun(p.payload) for _, p in flow)


# ---------------------------------------------------------------------------------------------------------------------
# tshark decodes what we built


def tshark(path: Path, *args: str) -> str:
    if not shutil.which("tshark"):
        skip_or_fail("tshark is not installed (apt-get install tshark)")
    return subprocess.run(["tshark", "-r", str(path), *args], capture_output=True, text=True, check=True).stdout


def test_tshark_decodes_stun_with_ms_attributes(out: Path) -> None:
    types = tshark(out / "modern-p2p.pcap", "-Y", "stun", "-T", "fields", "-e", "stun.att.type")
    assert {"0x8054", "0x8070", "0x8037", "0x0024", "0x802a"} <= set(types.replace("\n", ",").split(","))
    relay = out / "modern-relay.pcap"
    decode = [a for p in (3478, 3479, 3480, 3481) for a in ("-d", f"udp.port=={p},stun")]
    types = tshark(relay, *decode, "-Y", "stun.type", "-T", "fields", "-e", "stun.att.type")
    assert {"0x000f", "0x8008", "0x8055", "0x8050", "0x8095"} <= set(types.replace("\n", ",").split(","))
    assert tshark(relay, *decode, "-Y", "_ws.malformed") == ""


def test_tshark_decodes_dns_sip_and_tls(out: Path) -> None:
    names = tshark(out / "dns-pstn.pcap", "-Y", "dns.flags.response==1", "-T", "fields", "-e", "dns.qry.name", "-e",
                   "dns.a").split("\n")
    assert names[0].split("\t")[0] in kinds.PSTN_NAMES and names[0].split("\t")[1]
    methods = tshark(out / "sip-rtp.pcap", "-Y", "sip", "-T", "fields", "-e", "sip.Method", "-e", "sip.Status-Code")
    assert {"INVITE", "ACK", "BYE"} <= set(methods.split()) and "200" in methods.split()
    assert "audio" in tshark(out / "sip-rtp.pcap", "-Y", "sdp", "-T", "fields", "-e", "sdp.media")
    sni = tshark(out / "tls-skype.pcap", "-Y", "tls.handshake.type==1", "-T", "fields", "-e",
                 "tls.handshake.extensions_server_name").split()
    assert sni and all(s.endswith(("skype.com", "microsoft.com")) for s in sni)
    other = tshark(out / "tls-other.pcap", "-Y", "tls.handshake.type==1", "-T", "fields", "-e",
                   "tls.handshake.extensions_server_name").split()
    assert other and not any("microsoft" in s or "skype" in s for s in other)
    for kind in ("tls-skype", "tls-other", "dns", "dns-pstn", "sip-rtp"):
        assert tshark(out / f"{kind}.pcap", "-Y", "_ws.malformed || tcp.analysis.flags") == "", kind


def test_dns_response_with_a_cname_chain_resolves_through_the_chain() -> None:
    from skyguard.slowpath.dnslearn import parse_response, resolve_chain

    msg = payloads.dns_response(7, "api.microsoftstream.com", 1, ["104.40.187.151"],
                           cnames=["api.stream.trafficmanager.net", "x-1.cloudapp.net"])
    chain, addrs = resolve_chain(parse_response(msg))
    assert chain == ["api.microsoftstream.com", "api.stream.trafficmanager.net", "x-1.cloudapp.net"]
    assert [str(a) for a, _ in addrs] == ["104.40.187.151"]
