"""A tiny builder (and parser) of Ethernet / 802.1Q / IPv4 / IPv6 / UDP / TCP frames with correct checksums.

Used at run time by the traffic generator and the lab, so it has no dependency beyond the standard library. The IP
version of a frame follows the address family of `src`/`dst`.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
IPPROTO_TCP, IPPROTO_UDP = 6, 17
DEFAULT_SRC_MAC = bytes.fromhex("020000000001")
DEFAULT_DST_MAC = bytes.fromhex("020000000002")

TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}

Vlan = int | Sequence[int] | None
Addr = str | ipaddress.IPv4Address | ipaddress.IPv6Address


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _mac(m: bytes | str) -> bytes:
    return bytes.fromhex(m.replace(":", "")) if isinstance(m, str) else m


def ether(payload: bytes, ethertype: int, *, vlan: Vlan = None, src_mac: bytes | str = DEFAULT_SRC_MAC,
          dst_mac: bytes | str = DEFAULT_DST_MAC) -> bytes:
    """An Ethernet frame; `vlan` is one 802.1Q id, or (outer, inner) for 802.1ad QinQ (outer TPID 0x88a8)."""
    tags = b""
    if vlan is not None:
        ids = [vlan] if isinstance(vlan, int) else list(vlan)
        for i, vid in enumerate(ids):
            tpid = ETH_P_8021AD if len(ids) > 1 and i == 0 else ETH_P_8021Q
            tags += struct.pack("!HH", tpid, vid & 0x0FFF)
    return _mac(dst_mac) + _mac(src_mac) + tags + struct.pack("!H", ethertype) + payload


def ipv4(src: Addr, dst: Addr, proto: int, payload: bytes, *, tos: int = 0, ttl: int = 64, ip_id: int = 0,
         df: bool = False) -> bytes:
    """An IPv4 packet (20-byte header, checksum filled in)."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), ip_id, 0x4000 if df else 0, ttl, proto, 0, s, d)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def ipv6(src: Addr, dst: Addr, nh: int, payload: bytes, *, tclass: int = 0, hlim: int = 64, flow: int = 0) -> bytes:
    """An IPv6 packet (fixed 40-byte header, no extension headers)."""
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    first = (6 << 28) | ((tclass & 0xFF) << 20) | (flow & 0xFFFFF)
    return struct.pack("!IHBB16s16s", first, len(payload), nh, hlim, s, d) + payload


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def _packed(a: Addr) -> bytes:
    return ipaddress.ip_address(a).packed if isinstance(a, str) else a.packed


def udp_segment(src: Addr, sport: int, dst: Addr, dport: int, payload: bytes) -> bytes:
    """A UDP header + payload with the checksum over the pseudo-header of src/dst."""
    length = 8 + len(payload)
    hdr = struct.pack("!HHHH", sport, dport, length, 0)
    c = checksum(_pseudo(_packed(src), _packed(dst), IPPROTO_UDP, length) + hdr + payload) or 0xFFFF
    return hdr[:6] + struct.pack("!H", c) + payload


def tcp_flags(flags: int | str) -> int:
    if isinstance(flags, int):
        return flags
    return sum(TCP_FLAGS[c] for c in flags)


def tcp_segment(src: Addr, sport: int, dst: Addr, dport: int, payload: bytes = b"", *, flags: int | str = "PA",
                seq: int = 0, ack: int = 0, window: int = 65535, options: bytes = b"") -> bytes:
    """A TCP header (+ options padded to 4 bytes) + payload with its checksum."""
    options = options + b"\0" * (-len(options) % 4)
    off = (20 + len(options)) // 4
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off << 4, tcp_flags(flags),
                      window, 0, 0) + options
    c = checksum(_pseudo(_packed(src), _packed(dst), IPPROTO_TCP, len(hdr) + len(payload)) + hdr + payload)
    return hdr[:16] + struct.pack("!H", c) + hdr[18:] + payload


def ip_frame(src: Addr, dst: Addr, proto: int, segment: bytes, *, vlan: Vlan = None, tos: int = 0, ttl: int = 64,
             ip_id: int = 0, src_mac: bytes | str = DEFAULT_SRC_MAC, dst_mac: bytes | str = DEFAULT_DST_MAC) -> bytes:
    """Ethernet + IPv4 or IPv6 (by address family; tos -> traffic class, ttl -> hop limit) around a segment."""
    if ipaddress.ip_address(src).version == 4:
        return ether(ipv4(src, dst, proto, segment, tos=tos, ttl=ttl, ip_id=ip_id), ETH_P_IP, vlan=vlan,
                     src_mac=src_mac, dst_mac=dst_mac)
    return ether(ipv6(src, dst, proto, segment, tclass=tos, hlim=ttl), ETH_P_IPV6, vlan=vlan, src_mac=src_mac,
                 dst_mac=dst_mac)


def udp(src: Addr, sport: int, dst: Addr, dport: int, payload: bytes = b"", *, vlan: Vlan = None, tos: int = 0,
        ttl: int = 64, ip_id: int = 0, src_mac: bytes | str = DEFAULT_SRC_MAC,
        dst_mac: bytes | str = DEFAULT_DST_MAC) -> bytes:
    """A complete Ethernet/[802.1Q]/IP/UDP frame."""
    seg = udp_segment(src, sport, dst, dport, payload)
    return ip_frame(src, dst, IPPROTO_UDP, seg, vlan=vlan, tos=tos, ttl=ttl, ip_id=ip_id, src_mac=src_mac,
                    dst_mac=dst_mac)


def tcp(src: Addr, sport: int, dst: Addr, dport: int, payload: bytes = b"", *, flags: int | str = "PA",
        seq: int = 0, ack: int = 0, window: int = 65535, options: bytes = b"", vlan: Vlan = None, tos: int = 0,
        ttl: int = 64, ip_id: int = 0, src_mac: bytes | str = DEFAULT_SRC_MAC,
        dst_mac: bytes | str = DEFAULT_DST_MAC) -> bytes:
    """A complete Ethernet/[802.1Q]/IP/TCP frame."""
    seg = tcp_segment(src, sport, dst, dport, payload, flags=flags, seq=seq, ack=ack, window=window, options=options)
    return ip_frame(src, dst, IPPROTO_TCP, seg, vlan=vlan, tos=tos, ttl=ttl, ip_id=ip_id, src_mac=src_mac,
                    dst_mac=dst_mac)


# ---------------------------------------------------------------------------------------------------------------------
# Parsing (enough to find a frame's flow again: tests, labels, the lab)


@dataclass(frozen=True, slots=True)
class Parsed:
    src: str
    sport: int
    dst: str
    dport: int
    proto: int
    vlan: int  # innermost VLAN id, 0 for none
    payload: bytes

    @property
    def endpoints(self) -> tuple[str, str]:
        def ep(a: str, p: int) -> str:
            return f"[{a}]:{p}" if ":" in a else f"{a}:{p}"

        return ep(self.src, self.sport), ep(self.dst, self.dport)


def parse(frame: bytes) -> Parsed | None:
    """The 5-tuple, VLAN and L4 payload of an Ethernet frame carrying UDP or TCP (no IPv6 extension headers,
    no fragments); None for anything else."""
    off, vlan = 12, 0
    et = struct.unpack_from("!H", frame, off)[0] if len(frame) >= 14 else 0
    while et in (ETH_P_8021Q, ETH_P_8021AD) and len(frame) >= off + 8:
        vlan = struct.unpack_from("!H", frame, off + 2)[0] & 0x0FFF
        off += 4
        et = struct.unpack_from("!H", frame, off)[0]
    off += 2
    if et == ETH_P_IP and len(frame) >= off + 20:
        ihl = (frame[off] & 0x0F) * 4
        total = struct.unpack_from("!H", frame, off + 2)[0]
        if struct.unpack_from("!H", frame, off + 6)[0] & 0x3FFF:
            return None  # fragment
        proto = frame[off + 9]
        src, dst = str(ipaddress.IPv4Address(frame[off + 12 : off + 16])), str(
            ipaddress.IPv4Address(frame[off + 16 : off + 20]))
        l4, end = off + ihl, off + total
    elif et == ETH_P_IPV6 and len(frame) >= off + 40:
        proto = frame[off + 6]
        src = str(ipaddress.IPv6Address(frame[off + 8 : off + 24]))
        dst = str(ipaddress.IPv6Address(frame[off + 24 : off + 40]))
        l4 = off + 40
        end = l4 + struct.unpack_from("!H", frame, off + 4)[0]
    else:
        return None
    if proto == IPPROTO_UDP and len(frame) >= l4 + 8:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        return Parsed(src, sport, dst, dport, proto, vlan, bytes(frame[l4 + 8 : end]))
    if proto == IPPROTO_TCP and len(frame) >= l4 + 20:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        doff = (frame[l4 + 12] >> 4) * 4
        return Parsed(src, sport, dst, dport, proto, vlan, bytes(frame[l4 + doff : end]))
    return None
