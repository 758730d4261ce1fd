"""Golden-packet builder for the BPF tests (scapy), plus a minimal pcap reader for replaying captures."""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

__all__ = [
    "ARP", "ICMP", "IP", "IPv6", "IPv6ExtHdrDestOpt", "IPv6ExtHdrFragment", "IPv6ExtHdrHopByHop", "IPv6ExtHdrRouting",
    "TCP", "UDP", "Dot1AD", "Dot1Q", "Ether", "Raw",
]

STUN_COOKIE = 0x2112A442


def udp4(src: str, sport: int, dst: str, dport: int, payload: bytes = b"", tos: int = 0) -> bytes:
    return bytes(Ether() / IP(src=src, dst=dst, tos=tos) / UDP(sport=sport, dport=dport) / Raw(payload))


def udp6(src: str, sport: int, dst: str, dport: int, payload: bytes = b"", tc: int = 0) -> bytes:
    return bytes(Ether() / IPv6(src=src, dst=dst, tc=tc) / UDP(sport=sport, dport=dport) / Raw(payload))


def tcp4(src: str, sport: int, dst: str, dport: int, payload: bytes = b"", flags: str = "PA") -> bytes:
    return bytes(Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / Raw(payload))


def stun(msg_type: int, attrs: list[tuple[int, bytes]] = (), cookie: bool = True, txid: bytes = b"T" * 12) -> bytes:
    body = b""
    for at, val in attrs:
        body += struct.pack(">HH", at, len(val)) + val + b"\0" * (-len(val) % 4)
    magic = struct.pack(">I", STUN_COOKIE) if cookie else b"\x01\x02\x03\x04"
    return struct.pack(">HH", msg_type, len(body)) + magic + txid + body


def rtp(pt: int, seq: int, size: int = 60) -> bytes:
    hdr = struct.pack(">BBHII", 0x80, pt & 0x7F, seq & 0xFFFF, seq * 160, 0x11223344)
    return hdr + bytes((seq * 7 + i) & 0xFF for i in range(size - 12))


def ipv4_checksum(header: bytes) -> int:
    """Internet checksum of an IPv4 header whose checksum field is zeroed."""
    s = 0
    for i in range(0, len(header), 2):
        s += (header[i] << 8) | header[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def read_pcap(path: Path) -> list[tuple[int, bytes]]:
    """(timestamp ns, Ethernet frame) of every packet of a classic pcap with LINKTYPE_ETHERNET."""
    raw = path.read_bytes()
    magic = raw[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        end = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        end = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(end + "I", raw[20:24])[0]
    if linktype != 1:
        raise ValueError(f"{path}: linktype {linktype} is not Ethernet")
    out, off = [], 24
    while off + 16 <= len(raw):
        sec, frac, incl, _orig = struct.unpack(end + "IIII", raw[off : off + 16])
        off += 16
        out.append((sec * 1_000_000_000 + (frac if nano else frac * 1000), raw[off : off + incl]))
        off += incl
    return out
