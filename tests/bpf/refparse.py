"""An independent reference parser: what skyguard's XDP program should make of any frame.

Written from the documented rules (bpf/skyguard.h counter comments, docs/architecture.md's data flow, RFC
791/8200/768/793), not from the program's code and without skyguard.packet: the differential fuzz tests compare the
kernel's outcome counter and flow key with this model on every packet.

Rules:
- Ethernet header (14 bytes), then at most two 802.1Q/802.1ad tags; the flow key carries the OUTER tag's id.
  A third tag is `err_vlan_depth`; a cut tag `err_vlan`. Other ethertypes are `out_non_ip`.
- IPv4: 20 bytes present, version 4, IHL >= 5 with the options present, total length >= header and present
  (Ethernet padding after it is fine). A non-first fragment (offset != 0) is `out_fragment`; a first fragment (MF)
  goes on, and its UDP length may cover more than the fragment holds.
- IPv6: 40 bytes present, version 6, payload length present; then up to SG_IP6_EXT_MAX extension headers among
  hop-by-hop, routing, destination options, fragment and AH, each inside the datagram. One more is `err_ip6_depth`.
  A fragment header with a non-zero offset is `out_fragment`.
- UDP: 8 bytes inside the datagram, length >= 8 and inside the datagram (unless first fragment). TCP: 20 bytes, data
  offset >= 5, header inside the datagram. Any other L4 protocol is `out_other_l4`.
- Flow key: addresses as 16 bytes (IPv4 mapped to ::ffff:a.b.c.d), the lower (address, port) endpoint first, ties
  going to the source (direction 0).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from skyguard import wire

ETH_IP, ETH_IP6, VLAN_TPIDS = 0x0800, 0x86DD, (0x8100, 0x88A8)
UDP, TCP = 17, 6
HOPOPTS, ROUTING, FRAGMENT, AH, DSTOPTS = 0, 43, 44, 51, 60
IP6_EXT = (HOPOPTS, ROUTING, FRAGMENT, AH, DSTOPTS)
VLAN_MAX = 2
IP6_EXT_MAX = wire.C["SG_IP6_EXT_MAX"]
V4_MAPPED = b"\x00" * 10 + b"\xff\xff"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the program should do with a frame: the outcome counter, and for UDP/TCP the flow key and direction."""

    outcome: str  # a stats counter name: out_flow, out_non_ip, ..., err_udp
    key: wire.FlowKey | None = None
    dir: int = 0
    l3_off: int = 0  # offset of the IP header (for DSCP checks)
    v6: bool = False
    payload_len: int = 0  # L4 payload length the program should see
    frame_bytes: int = 0  # bytes the program counts: the whole frame when its IP datagram spans buffers
    spans: bool = False  # the IP datagram runs past the first buffer (counted in `multibuf`)

    @property
    def parse_error(self) -> bool:
        return self.outcome.startswith("err_")


class _Bad(Exception):
    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def _u16(b: bytes, off: int) -> int:
    return struct.unpack_from("!H", b, off)[0]


def _ethernet(b: bytes, lim: int) -> tuple[int, int, int]:
    """(ethertype, offset of the L3 header, outer VLAN id). `lim`: the end of the first buffer, where headers must
    be; lengths (IP, UDP) are checked against the whole frame, len(b)."""
    if lim < 14:
        raise _Bad("err_eth")
    et, off, vlan = _u16(b, 12), 14, 0
    for depth in range(VLAN_MAX + 1):
        if et not in VLAN_TPIDS:
            return et, off, vlan
        if depth == VLAN_MAX:
            raise _Bad("err_vlan_depth")
        if off + 4 > lim:
            raise _Bad("err_vlan")
        if depth == 0:
            vlan = _u16(b, off) & 0x0FFF
        et = _u16(b, off + 2)
        off += 4
    raise AssertionError("unreachable")


@dataclass
class _L3:
    proto: int
    l4: int  # offset of the L4 header
    end: int  # end of the datagram
    src: bytes  # 16-byte key form
    dst: bytes
    first_frag: bool


def _ipv4(b: bytes, off: int, lim: int) -> _L3 | str:
    if off + 20 > lim:
        raise _Bad("err_ip4")
    if b[off] >> 4 != 4:
        raise _Bad("err_version")
    hlen = (b[off] & 0x0F) * 4
    if hlen < 20 or off + hlen > lim:
        raise _Bad("err_ip4_ihl")
    tot = _u16(b, off + 2)
    if tot < hlen or off + tot > len(b):
        raise _Bad("err_ip4_len")
    frag = _u16(b, off + 6)
    if frag & 0x1FFF:
        return "out_fragment"
    src, dst = V4_MAPPED + b[off + 12 : off + 16], V4_MAPPED + b[off + 16 : off + 20]
    return _L3(b[off + 9], off + hlen, off + tot, src, dst, bool(frag & 0x2000))


def _ipv6(b: bytes, off: int, lim: int) -> _L3 | str:
    if off + 40 > lim:
        raise _Bad("err_ip6")
    if b[off] >> 4 != 6:
        raise _Bad("err_version")
    end = off + 40 + _u16(b, off + 4)
    if end > len(b):
        raise _Bad("err_ip6")
    nh, pos, first_frag = b[off + 6], off + 40, False
    for _ in range(IP6_EXT_MAX):
        if nh not in IP6_EXT:
            break
        if pos + 8 > min(end, lim):
            raise _Bad("err_ip6_ext")
        if nh == FRAGMENT:
            fo = _u16(b, pos + 2)
            if fo & 0xFFF8:
                return "out_fragment"
            first_frag = first_frag or bool(fo & 1)
            hl = 8
        elif nh == AH:
            hl = (b[pos + 1] + 2) * 4
        else:
            hl = (b[pos + 1] + 1) * 8
        if pos + hl > min(end, lim):
            raise _Bad("err_ip6_ext")
        nh, pos = b[pos], pos + hl
    else:
        if nh in IP6_EXT:
            raise _Bad("err_ip6_depth")
    return _L3(nh, pos, end, b[off + 8 : off + 24], b[off + 24 : off + 40], first_frag)


def _l4(b: bytes, l3: _L3, lim: int) -> tuple[int, int, int]:
    """(sport, dport, payload length) or raises."""
    pos = l3.l4
    if l3.proto == UDP:
        if pos + 8 > min(l3.end, lim):
            raise _Bad("err_udp")
        ulen = _u16(b, pos + 4)
        if ulen < 8:
            raise _Bad("err_udp")
        if pos + ulen > l3.end:
            if not l3.first_frag:
                raise _Bad("err_udp")
            ulen = l3.end - pos
        return _u16(b, pos), _u16(b, pos + 2), ulen - 8
    if pos + 20 > lim:
        raise _Bad("err_tcp")
    hlen = (b[pos + 12] >> 4) * 4
    if hlen < 20 or pos + hlen > min(l3.end, lim):
        raise _Bad("err_tcp")
    return _u16(b, pos), _u16(b, pos + 2), l3.end - pos - hlen


def predict(frame: bytes, linear: int | None = None) -> Prediction:
    """The outcome for `frame`, whose first `linear` bytes are in the program's first buffer (BPF_PROG_TEST_RUN puts
    one page's worth there, the rest in frags). Headers are read from that buffer; IP and UDP lengths are checked
    against the whole frame (the program is frags-aware), and a datagram that spans buffers counts the whole frame."""
    b = bytes(frame)
    lim = min(len(b), linear if linear is not None else len(b))
    spans = _spans(b, lim)
    size = len(b) if spans else lim
    return dataclasses.replace(_predict(b, lim), frame_bytes=size, spans=spans)


def _spans(b: bytes, lim: int) -> bool:
    """Whether the program asks for the whole frame's length: its IP header is in the first buffer and the
    datagram's length runs past that buffer but not past the frame."""
    try:
        et, off, _vlan = _ethernet(b, lim)
    except _Bad:
        return False
    if et == ETH_IP and off + 20 <= lim and b[off] >> 4 == 4:
        hlen = (b[off] & 0x0F) * 4
        end = off + _u16(b, off + 2)
        return hlen >= 20 and off + hlen <= lim and _u16(b, off + 2) >= hlen and lim < end <= len(b)
    if et == ETH_IP6 and off + 40 <= lim and b[off] >> 4 == 6:
        return lim < off + 40 + _u16(b, off + 4) <= len(b)
    return False


def _predict(b: bytes, lim: int) -> Prediction:
    try:
        et, off, vlan = _ethernet(b, lim)
        if et == ETH_IP:
            l3 = _ipv4(b, off, lim)
        elif et == ETH_IP6:
            l3 = _ipv6(b, off, lim)
        else:
            return Prediction("out_non_ip")
        if isinstance(l3, str):
            return Prediction(l3, l3_off=off, v6=et == ETH_IP6)
        if l3.proto not in (UDP, TCP):
            return Prediction("out_other_l4", l3_off=off, v6=et == ETH_IP6)
        sport, dport, plen = _l4(b, l3, lim)
    except _Bad as e:
        return Prediction(e.outcome)
    a, z = (l3.src, sport), (l3.dst, dport)
    lo, hi, d = (a, z, 0) if a <= z else (z, a, 1)
    key = wire.FlowKey(lo[0], hi[0], lo[1], hi[1], vlan, l3.proto)
    return Prediction("out_flow", key, d, off, et == ETH_IP6, plen)


def _in(raw: bytes, nets: Iterable[Network]) -> bool:
    ip = ipaddress.IPv6Address(raw)
    addr = ip.ipv4_mapped or ip
    return any(addr.version == n.version and addr in n for n in nets)


def flow_outcome(key: wire.FlowKey, exempt: Iterable[Network] = (), block: Iterable[Network] = ()) -> str:
    """out_flow, or out_exempt / out_blocked when an endpoint of a NEW flow is in those prefixes (exempt first)."""
    exempt, block = list(exempt), list(block)
    if _in(key.lo_addr, exempt) or _in(key.hi_addr, exempt):
        return "out_exempt"
    if _in(key.lo_addr, block) or _in(key.hi_addr, block):
        return "out_blocked"
    return "out_flow"
