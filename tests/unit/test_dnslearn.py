"""DNS learning: real response bytes (scapy-built and from teams.pcap), CNAME chains, compression loops, truncation,
TTL expiry, memory bound."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import UDP
from scapy.utils import rdpcap

from skyguard import wire
from skyguard.slowpath.dnslearn import (
    TTL_MAX_S,
    TTL_MIN_S,
    DnsError,
    DnsLearner,
    parse_response,
    read_name,
    resolve_chain,
)
from tests.scapy_compat import dns_answers

S = 1_000_000_000
PSTN = ("sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com")


def response(qname: str, *rrs: tuple[str, str, object, int], qtype: str = "A") -> bytes:
    """A compressed DNS response (scapy compresses names) with answers (name, type, value, ttl)."""
    an = [DNSRR(rrname=n, type=t, rdata=v, ttl=ttl) for n, t, v, ttl in rrs]
    pkt = DNS(id=7, qr=1, aa=0, rd=1, ra=1, qd=DNSQR(qname=qname, qtype=qtype), an=dns_answers(an))
    return bytes(pkt.compress())


def sip_chain(ttl_a: int = 300, addr: str = "52.114.14.70") -> bytes:
    return response(
        "sip.pstnhub.microsoft.com",
        ("sip.pstnhub.microsoft.com", "CNAME", "sip-du-a-eu.pstnhub.trafficmanager.net", 3600),
        ("sip-du-a-eu.pstnhub.trafficmanager.net", "CNAME", "sip-du-a-eu-3.cloudapp.net", 600),
        ("sip-du-a-eu-3.cloudapp.net", "A", addr, ttl_a),
        ("unrelated.example.net", "A", "198.51.100.9", 300),
    )


def test_cname_chain_to_pstn_prefix() -> None:
    dl = DnsLearner(PSTN)
    assert dl.on_response(sip_chain(), 10 * S) == 1
    (pc,) = dl.take()
    assert pc.kind == "pstn" and pc.add
    assert pc.network == ipaddress.ip_network("52.114.14.70/32")
    assert pc.reason == wire.C["SG_R_PSTN_NAME"] and pc.name == "sip.pstnhub.microsoft.com"
    assert pc.expires_ns == 10 * S + 300 * S  # smallest TTL on the chain
    # the A record for a name off the chain is ignored
    assert dl.status()["entries"] == 1


def test_chain_ttl_is_the_smallest_and_clamped() -> None:
    msg = response(
        "sip2.pstnhub.microsoft.com",
        ("sip2.pstnhub.microsoft.com", "CNAME", "x.trafficmanager.net", 5),
        ("x.trafficmanager.net", "AAAA", "2603:1027::12", 3600),
    )
    dl = DnsLearner(PSTN)
    dl.on_response(msg, 0)
    (pc,) = dl.take()
    assert pc.network == ipaddress.ip_network("2603:1027::12/128")
    assert pc.expires_ns == TTL_MIN_S * S
    dl2 = DnsLearner(PSTN)
    dl2.on_response(sip_chain(ttl_a=10 * 86400), 0)
    assert dl2.take()[0].expires_ns <= TTL_MAX_S * S


def test_alias_pointing_at_a_pstn_name_matches() -> None:
    msg = response(
        "sbc.operator.example",
        ("sbc.operator.example", "CNAME", "sip3.pstnhub.microsoft.com", 60),
        ("sip3.pstnhub.microsoft.com", "A", "52.114.7.24", 60),
    )
    dl = DnsLearner(("sip3.pstnhub.microsoft.com",))
    assert dl.on_response(msg, 0) == 1
    assert dl.take()[0].name == "sip3.pstnhub.microsoft.com"


def test_unmatched_and_private_answers_are_not_learned() -> None:
    dl = DnsLearner(PSTN)
    assert dl.on_response(response("www.example.com", ("www.example.com", "A", "93.184.216.34", 60)), 0) == 0
    spoof = response("sip.pstnhub.microsoft.com", ("sip.pstnhub.microsoft.com", "A", "10.1.2.3", 60),
                     ("sip.pstnhub.microsoft.com", "A", "127.0.0.1", 60))
    assert dl.on_response(spoof, 0) == 0
    assert dl.take() == [] and dl.errors["not-global"] == 2


def test_media_relay_names_learned_as_msmedia_but_not_trouter() -> None:
    dl = DnsLearner(PSTN)
    relay = response("worldaa.relay.teams.microsoft.com",
                     ("worldaa.relay.teams.microsoft.com", "A", "52.115.62.1", 120))
    assert dl.on_response(relay, 0) == 1
    (pc,) = dl.take()
    assert pc.kind == "msmedia" and pc.reason == wire.C["SG_R_DNS_NAME"]
    trouter = response("trouter2-asse-a.trouter.teams.microsoft.com",
                       ("trouter2-asse-a.trouter.teams.microsoft.com", "CNAME", "trouter2-asse-a.cloudapp.net", 60),
                       ("trouter2-asse-a.cloudapp.net", "A", "40.90.1.1", 60))
    assert dl.on_response(trouter, 0) == 0


def test_ttl_expiry_queues_removal_and_refresh_extends() -> None:
    dl = DnsLearner(PSTN)
    dl.on_response(sip_chain(ttl_a=60), 0)
    assert len(dl.take()) == 1
    dl.on_response(sip_chain(ttl_a=60), 30 * S)  # refresh: later expiry -> re-announced
    (pc,) = dl.take()
    assert pc.add and pc.expires_ns == 90 * S
    dl.on_response(sip_chain(ttl_a=60), 20 * S)  # older answer: nothing new
    assert dl.take() == []
    assert dl.expire(89 * S) == 0 and dl.take() == []
    assert dl.expire(90 * S) == 1
    (rm,) = dl.take()
    assert not rm.add and rm.network == ipaddress.ip_network("52.114.14.70/32")
    assert dl.status()["entries"] == 0


def test_memory_bound_evicts_oldest_with_removal() -> None:
    dl = DnsLearner(PSTN, max_entries=16)
    for i in range(100):
        dl.on_response(sip_chain(addr=f"52.114.{i}.1"), i * S)
    assert dl.status()["entries"] == 16
    changes = dl.take()
    adds = [c for c in changes if c.add]
    removes = [c for c in changes if not c.add]
    assert len(adds) == 100 and len(removes) == 84
    assert removes[0].network == ipaddress.ip_network("52.114.0.1/32")
    live = {c.network for c in adds} - {c.network for c in removes}
    assert live == {ipaddress.ip_network(f"52.114.{i}.1/32") for i in range(84, 100)}


def test_policy_change_removes_names_no_longer_listed() -> None:
    dl = DnsLearner(PSTN)
    dl.on_response(sip_chain(), 0)
    dl.take()
    dl.set_names(("sip2.pstnhub.microsoft.com",))
    (rm,) = dl.take()
    assert not rm.add and dl.status()["entries"] == 0


def _header(qd: int = 1, an: int = 1, flags: int = 0x8180) -> bytes:
    return struct.pack("!HHHHHH", 1, flags, qd, an, 0, 0)


def test_compression_loops_and_forward_pointers_are_refused() -> None:
    # question name is a pointer to itself
    msg = _header() + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    with pytest.raises(DnsError, match="name-loop"):
        parse_response(msg)
    # two pointers pointing at each other (one forward)
    msg2 = _header(an=0) + b"\x01a\xc0\x10" + b"\x01b\xc0\x0c" + b"\x00\x01\x00\x01"
    with pytest.raises(DnsError):
        parse_response(msg2)
    dl = DnsLearner(PSTN)
    assert dl.on_response(msg, 0) == 0 and dl.on_response(msg2, 0) == 0
    assert dl.errors["name-loop"] >= 1


def test_cname_loop_in_answers_terminates() -> None:
    msg = response("sip.pstnhub.microsoft.com",
                   ("sip.pstnhub.microsoft.com", "CNAME", "a.example.net", 60),
                   ("a.example.net", "CNAME", "sip.pstnhub.microsoft.com", 60))
    chain, addrs = resolve_chain(parse_response(msg))
    assert chain == ["sip.pstnhub.microsoft.com", "a.example.net"] and addrs == []


def test_read_name_limits() -> None:
    long = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00"
    with pytest.raises(DnsError, match="too-long"):
        read_name(long, 0)
    with pytest.raises(DnsError, match="label-type"):
        read_name(b"\x41abc", 0)
    assert read_name(b"\x03FoO\x03com\x00", 0) == ("foo.com", 9)


def test_truncation_at_every_byte_never_raises() -> None:
    msg = sip_chain()
    full = parse_response(msg)
    assert len(full.answers) == 4
    dl = DnsLearner(PSTN)
    for n in range(len(msg) + 1):
        cut = msg[:n]
        learned = dl.on_response(cut, 0)
        try:
            resp = parse_response(cut)
        except DnsError:
            assert learned == 0
            continue
        assert resp.answers == full.answers[: len(resp.answers)]
        if len(resp.answers) < len(full.answers):
            assert resp.truncated
    assert sum(dl.errors.values()) > 0
    assert dl.status()["entries"] == 1  # learned once the A record was complete


def test_random_garbage_never_raises() -> None:
    rng = random.Random(0)
    dl = DnsLearner(PSTN)
    base = sip_chain()
    for _ in range(3000):
        if rng.random() < 0.5:
            buf = bytearray(base)
            for _ in range(rng.randint(1, 6)):
                buf[rng.randrange(len(buf))] = rng.getrandbits(8)
            msg = bytes(buf)
        else:
            msg = b"\x00\x01\x81\x80" + rng.randbytes(rng.randint(0, 200))
        dl.on_response(msg, 0)
    assert dl.responses == 3000


def test_non_responses_and_errors_learn_nothing() -> None:
    q = bytes(DNS(id=1, qr=0, qd=DNSQR(qname="sip.pstnhub.microsoft.com")))
    nx = bytearray(sip_chain())
    nx[3] = (nx[3] & 0xF0) | 3  # NXDOMAIN
    dl = DnsLearner(PSTN)
    assert dl.on_response(q, 0) == 0 and dl.on_response(bytes(nx), 0) == 0
    assert dl.errors["not-response"] == 1


def test_teams_capture_responses(captures) -> None:
    """Every DNS response in teams.pcap parses like scapy reads it; the Teams names are recognised."""
    pkts = rdpcap(str(captures / "teams.pcap"))
    responses = [bytes(p[UDP].payload) for p in pkts if p.haslayer(UDP) and p[UDP].sport == 53]
    assert len(responses) >= 10
    names_seen: set[str] = set()
    cnames = 0
    for raw in responses:
        resp = parse_response(raw)
        ref = DNS(raw)
        assert len(resp.answers) == ref.ancount  # all A/AAAA/CNAME here
        chain, addrs = resolve_chain(resp)
        names_seen.update(chain)
        cnames += len(chain) - 1
        for a, _ttl in addrs:
            assert isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address)
    assert "trouter2-asse-a.trouter.teams.microsoft.com" in names_seen
    assert cnames >= 10
    # with the Teams names as "pstn" names (a test stand-in), the learner turns the capture into prefixes
    dl = DnsLearner(("teams.microsoft.com",))
    for raw in responses:
        dl.on_response(raw, 0)
    learned = dl.take()
    assert learned and all(c.kind == "pstn" and c.network.prefixlen in (32, 128) for c in learned)
    assert not dl.errors.get("internal")
