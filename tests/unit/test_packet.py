"""skyguard.packet against scapy, byte for byte (scapy is a test dependency only)."""

from __future__ import annotations

import pytest
import scapy.all as scapy_all  # a test dependency: where it is missing this module fails, never skips
from hypothesis import given, settings
from hypothesis import strategies as st

from skyguard.lab import packet as pk

Ether, Dot1Q, Dot1AD = scapy_all.Ether, scapy_all.Dot1Q, scapy_all.Dot1AD
IP, IPv6, UDP, TCP, Raw = scapy_all.IP, scapy_all.IPv6, scapy_all.UDP, scapy_all.TCP, scapy_all.Raw

SMAC, DMAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def l2(vlan=None):
    e = Ether(src=SMAC, dst=DMAC)
    if vlan is None:
        return e
    if isinstance(vlan, int):
        return e / Dot1Q(vlan=vlan)
    return e / Dot1AD(vlan=vlan[0]) / Dot1Q(vlan=vlan[1])


def l3(src, dst, tos=0, ttl=64, ip_id=0):
    if ":" in src:
        return IPv6(src=src, dst=dst, tc=tos, hlim=ttl)
    return IP(src=src, dst=dst, tos=tos, ttl=ttl, id=ip_id, flags=0)


CASES = [
    ("192.168.1.6", "52.114.250.5", None),
    ("10.0.0.1", "8.8.8.8", 100),
    ("10.0.0.1", "8.8.8.8", (200, 300)),
    ("fd00::1", "2603:1063::5", None),
    ("2001:db8::1", "2a00:1450::200e", 7),
]


@pytest.mark.parametrize(("src", "dst", "vlan"), CASES)
def test_udp_matches_scapy(src: str, dst: str, vlan) -> None:
    payload = bytes(range(77))
    ours = pk.udp(src, 50010, dst, 3478, payload, vlan=vlan, tos=0xB8, ttl=57, ip_id=4242)
    theirs = bytes(l2(vlan) / l3(src, dst, 0xB8, 57, 4242) / UDP(sport=50010, dport=3478) / Raw(payload))
    assert ours == theirs


@pytest.mark.parametrize(("src", "dst", "vlan"), CASES)
def test_tcp_matches_scapy(src: str, dst: str, vlan) -> None:
    payload = b"\x16\x03\x01" + bytes(200)
    opts = bytes.fromhex("020405b4010303070402")
    ours = pk.tcp(src, 41000, dst, 443, payload, flags="PA", seq=0xFFFFFFF0, ack=12345, window=502, options=opts,
                  vlan=vlan, ttl=64, ip_id=7)
    theirs = bytes(l2(vlan) / l3(src, dst, 0, 64, 7) / TCP(sport=41000, dport=443, flags="PA", seq=0xFFFFFFF0,
                                                          ack=12345, window=502, options=[("MSS", 1460), ("NOP", None),
                                                                                        ("WScale", 7),
                                                                                        ("SAckOK", b"")])
                   / Raw(payload))
    assert ours == theirs


def test_tcp_syn_without_payload_matches_scapy() -> None:
    ours = pk.tcp("10.1.2.3", 1234, "1.2.3.4", 80, flags="S", seq=1)
    theirs = bytes(l2() / IP(src="10.1.2.3", dst="1.2.3.4", id=0, flags=0) / TCP(sport=1234, dport=80, flags="S",
                                                                                   seq=1, window=65535))
    assert ours == theirs
    assert pk.tcp_flags("FSRPAUEC") == 0xFF


def test_udp_zero_checksum_becomes_ffff() -> None:
    # find a payload whose checksum would be 0 and check it is sent as 0xffff (RFC 768)
    for i in range(70000):
        seg = pk.udp_segment("10.0.0.1", 1, "10.0.0.2", 2, i.to_bytes(4, "big"))
        if seg[6:8] == b"\xff\xff":
            break
    else:
        pytest.fail("no payload with a zero checksum found")
    assert bytes(UDP(seg))[6:8] == b"\xff\xff"


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=300), sport=st.integers(0, 65535), dport=st.integers(0, 65535),
       v6=st.booleans(), tos=st.integers(0, 255), ip_id=st.integers(0, 65535))
def test_udp_property(payload: bytes, sport: int, dport: int, v6: bool, tos: int, ip_id: int) -> None:
    src, dst = ("fd00::7", "2001:4860::8888") if v6 else ("192.168.0.9", "93.184.216.34")
    ours = pk.udp(src, sport, dst, dport, payload, tos=tos, ip_id=ip_id)
    assert ours == bytes(l2() / l3(src, dst, tos, 64, ip_id) / UDP(sport=sport, dport=dport) / Raw(payload))
    p = pk.parse(ours)
    assert p is not None
    assert (p.src, p.sport, p.dst, p.dport, p.proto, p.payload) == (src, sport, dst, dport, 17, payload)


def test_parse() -> None:
    f = pk.tcp("fd00::1", 5, "2001:db8::2", 6, b"hello", vlan=(10, 20))
    p = pk.parse(f)
    assert p is not None
    assert (p.proto, p.vlan, p.payload) == (6, 20, b"hello")
    assert p.endpoints == ("[fd00::1]:5", "[2001:db8::2]:6")
    # Ethernet padding after a short IPv4 packet is not payload
    p = pk.parse(pk.udp("10.0.0.1", 1, "10.0.0.2", 2, b"ab") + bytes(10))
    assert p is not None and p.payload == b"ab"
    assert pk.parse(bytes(60)) is None  # ethertype 0: not IP
    arp = bytes(scapy_all.Ether() / scapy_all.ARP())
    assert pk.parse(arp) is None


def test_checksum_known_value() -> None:
    # RFC 1071 example words 0001 f203 f4f5 f6f7 sum to 0xddf2 -> checksum 0x220d
    assert pk.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert pk.checksum(b"\x01") == (~0x0100) & 0xFFFF
