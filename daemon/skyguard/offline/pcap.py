"""Reading and writing packet captures (classic pcap and pcapng), pure Python.

Every packet comes out as an Ethernet frame: other link types (Linux cooked SLL/SLL2, raw IP, BSD loopback) get a
synthesised Ethernet header, so the rest of skyguard (and the XDP program under BPF_PROG_TEST_RUN) sees one format.

Corrupt input raises CaptureError naming the file and the byte offset of the bad header, record or block, but only
after every good packet before it has been yielded, so a caller can still report what it saw.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------------------------------------------------
# Public types


@dataclass(slots=True)
class Packet:
    ts_ns: int  # capture timestamp, nanoseconds since the epoch
    frame: bytes  # Ethernet frame (captured bytes, possibly shorter than orig_len)
    orig_len: int  # length on the wire, adjusted for a synthesised Ethernet header
    offset: int  # byte offset of the packet's record or block in the file
    index: int  # 0-based position among the packets of the file


class CaptureError(Exception):
    """A capture that cannot be read (further): `path: at byte offset: message`."""

    def __init__(self, path: str | os.PathLike[str], offset: int, message: str) -> None:
        self.path = str(path)
        self.offset = offset
        self.message = message
        super().__init__(f"{self.path}: at byte {offset}: {message}")

    def __reduce__(self):  # keep pickling (multiprocessing) working with the 3-argument constructor
        return (CaptureError, (self.path, self.offset, self.message))


# ---------------------------------------------------------------------------------------------------------------------
# Link types -> Ethernet

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
ETH_P_UNKNOWN = 0x88B5  # IEEE 802 local experimental: used when a non-IP payload's protocol cannot be told
SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2 = 113, 228, 229, 276
LINKTYPE_RAW_ALIASES = (12, 14)  # DLT_RAW as written by some BSDs/OpenBSD before LINKTYPE_RAW existed

# BSD AF_INET / AF_INET6 values (AF_INET6: 24 NetBSD/OpenBSD, 28 FreeBSD, 30 Darwin, 10 Linux)
_AF_INET = 2
_AF_INET6 = (10, 24, 28, 30)


def _eth(ethertype: int, payload: bytes) -> bytes:
    return DST_MAC + SRC_MAC + ethertype.to_bytes(2, "big") + payload


def _ip_ethertype(payload: bytes) -> int:
    if payload:
        v = payload[0] >> 4
        if v == 4:
            return ETH_P_IP
        if v == 6:
            return ETH_P_IPV6
    return ETH_P_UNKNOWN


def _conv_raw(data: bytes) -> tuple[bytes, int]:
    return _eth(_ip_ethertype(data), data), 14


def _conv_ipv4(data: bytes) -> tuple[bytes, int]:
    return _eth(ETH_P_IP, data), 14


def _conv_ipv6(data: bytes) -> tuple[bytes, int]:
    return _eth(ETH_P_IPV6, data), 14


def _null_ethertype(family: int, payload: bytes) -> int:
    if family == _AF_INET:
        return ETH_P_IP
    if family in _AF_INET6:
        return ETH_P_IPV6
    return _ip_ethertype(payload)


def _conv_null(data: bytes) -> tuple[bytes, int]:
    # 4-byte address family in the byte order of the machine that captured: a value with upper bits set is swapped
    if len(data) < 4:
        return _eth(ETH_P_UNKNOWN, b""), 14 - len(data)
    fam = int.from_bytes(data[:4], "little")
    if fam & 0xFFFF0000:
        fam = int.from_bytes(data[:4], "big")
    return _eth(_null_ethertype(fam, data[4:]), data[4:]), 10


def _conv_loop(data: bytes) -> tuple[bytes, int]:
    # LINKTYPE_LOOP (OpenBSD): like NULL but the family is always big-endian
    if len(data) < 4:
        return _eth(ETH_P_UNKNOWN, b""), 14 - len(data)
    return _eth(_null_ethertype(int.from_bytes(data[:4], "big"), data[4:]), data[4:]), 10


def _sll_ethertype(proto: int, payload: bytes) -> int:
    return proto if proto >= 0x0600 else _ip_ethertype(payload)


def _conv_sll(data: bytes) -> tuple[bytes, int]:
    # packet type(2) ARPHRD(2) addr len(2) addr(8) protocol(2)
    if len(data) < 16:
        return _eth(ETH_P_UNKNOWN, b""), 14 - len(data)
    proto = int.from_bytes(data[14:16], "big")
    return _eth(_sll_ethertype(proto, data[16:]), data[16:]), -2


def _conv_sll2(data: bytes) -> tuple[bytes, int]:
    # protocol(2) reserved(2) ifindex(4) ARPHRD(2) packet type(1) addr len(1) addr(8)
    if len(data) < 20:
        return _eth(ETH_P_UNKNOWN, b""), 14 - len(data)
    proto = int.from_bytes(data[0:2], "big")
    return _eth(_sll_ethertype(proto, data[20:]), data[20:]), -6


def _conv_ether(data: bytes) -> tuple[bytes, int]:
    return data, 0


# converter: captured bytes -> (Ethernet frame, change in length to apply to orig_len)
Converter = Callable[[bytes], tuple[bytes, int]]
CONVERTERS: dict[int, Converter] = {
    LINKTYPE_ETHERNET: _conv_ether,
    LINKTYPE_NULL: _conv_null,
    LINKTYPE_LOOP: _conv_loop,
    LINKTYPE_RAW: _conv_raw,
    LINKTYPE_RAW_ALIASES[0]: _conv_raw,
    LINKTYPE_RAW_ALIASES[1]: _conv_raw,
    LINKTYPE_IPV4: _conv_ipv4,
    LINKTYPE_IPV6: _conv_ipv6,
    LINKTYPE_LINUX_SLL: _conv_sll,
    LINKTYPE_LINUX_SLL2: _conv_sll2,
}


def _converter(path: Path, offset: int, linktype: int) -> Converter:
    conv = CONVERTERS.get(linktype)
    if conv is None:
        raise CaptureError(path, offset, f"unsupported link type {linktype}")
    return conv


# ---------------------------------------------------------------------------------------------------------------------
# Raw records: (ts_ns, captured bytes, orig_len, offset, linktype), before link-type conversion

_Raw = tuple[int, bytes, int, int, int]

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
PCAPNG_IDB, PCAPNG_OPB, PCAPNG_SPB, PCAPNG_EPB = 1, 2, 3, 6
MAX_SNAP = 262144  # libpcap/Wireshark's largest snapshot length for ordinary link types


def _open(path: Path) -> tuple[bytes | mmap.mmap, object]:
    """The whole file as a buffer (memory-mapped when possible) and the handle to close."""
    f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    try:
        if os.fstat(f.fileno()).st_size > 0:
            try:
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), f
            except (OSError, ValueError):
                pass
        return f.read(), f
    except BaseException:
        f.close()
        raise


def _raw_records(path: str | os.PathLike[str]) -> Iterator[_Raw]:
    p = Path(path)
    buf, handle = _open(p)
    try:
        if len(buf) < 4:
            raise CaptureError(p, 0, f"file too short for a capture ({len(buf)} bytes)")
        magic_le = struct.unpack_from("<I", buf, 0)[0]
        if magic_le == PCAPNG_SHB:
            yield from _pcapng(p, buf)
        elif magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            yield from _pcap(p, buf, "<", magic_le == PCAP_MAGIC_NS)
        elif struct.unpack_from(">I", buf, 0)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            yield from _pcap(p, buf, ">", struct.unpack_from(">I", buf, 0)[0] == PCAP_MAGIC_NS)
        else:
            raise CaptureError(p, 0, f"bad magic 0x{bytes(buf[:4]).hex()}: neither pcap nor pcapng")
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()
        handle.close()  # type: ignore[attr-defined]


def _pcap(path: Path, buf: bytes | mmap.mmap, bo: str, nano: bool) -> Iterator[_Raw]:
    size = len(buf)
    if size < 24:
        raise CaptureError(path, 0, f"truncated pcap file header ({size} of 24 bytes)")
    _magic, _vmaj, _vmin, _zone, _sig, snaplen, network = struct.unpack_from(bo + "IHHiIII", buf, 0)
    linktype = network & 0xFFFF  # upper bits: FCS length flags
    _converter(path, 20, linktype)
    limit = max(snaplen, MAX_SNAP)
    rec = struct.Struct(bo + "IIII")
    mult = 1 if nano else 1000
    off = 24
    while off < size:
        if off + 16 > size:
            raise CaptureError(path, off, f"truncated record header ({size - off} of 16 bytes)")
        sec, frac, incl, orig = rec.unpack_from(buf, off)
        if incl > limit:
            raise CaptureError(path, off, f"capture length {incl} exceeds the largest snapshot length {limit}")
        start = off + 16
        if start + incl > size:
            raise CaptureError(path, off, f"truncated packet data ({size - start} of {incl} bytes)")
        yield sec * 1_000_000_000 + frac * mult, bytes(buf[start : start + incl]), orig, off, linktype
        off = start + incl


@dataclass(slots=True)
class _Iface:
    linktype: int
    snaplen: int
    units_per_s: int = 1_000_000  # if_tsresol default: microseconds
    offset_ns: int = 0  # if_tsoffset

    def ts_ns(self, units: int) -> int:
        if self.units_per_s == 1_000_000_000:
            return units + self.offset_ns
        return units * 1_000_000_000 // self.units_per_s + self.offset_ns


def _options(buf: bytes | mmap.mmap, off: int, end: int, bo: str) -> Iterator[tuple[int, bytes]]:
    """pcapng options (code, value) in [off, end); stops quietly at opt_endofopt or at a malformed option."""
    while off + 4 <= end:
        code, length = struct.unpack_from(bo + "HH", buf, off)
        if code == 0 or off + 4 + length > end:
            return
        yield code, bytes(buf[off + 4 : off + 4 + length])
        off += 4 + ((length + 3) & ~3)


def _idb(buf: bytes | mmap.mmap, off: int, body_end: int, bo: str) -> _Iface:
    linktype, _res, snaplen = struct.unpack_from(bo + "HHI", buf, off + 8)
    iface = _Iface(linktype, snaplen)
    for code, val in _options(buf, off + 16, body_end, bo):
        if code == 9 and len(val) >= 1:  # if_tsresol: 10^-n, or 2^-n when the top bit is set
            n = val[0] & 0x7F
            iface.units_per_s = (1 << n) if val[0] & 0x80 else 10**n
        elif code == 14 and len(val) >= 8:  # if_tsoffset: seconds to add
            iface.offset_ns = struct.unpack(bo + "q", val[:8])[0] * 1_000_000_000
    return iface


def _pcapng(path: Path, buf: bytes | mmap.mmap) -> Iterator[_Raw]:
    size = len(buf)
    off = 0
    bo = "<"
    ifaces: list[_Iface] = []
    while off < size:
        if off + 12 > size:
            raise CaptureError(path, off, f"truncated block header ({size - off} bytes left)")
        btype = struct.unpack_from("<I", buf, off)[0]
        if btype == PCAPNG_SHB:
            bom = struct.unpack_from("<I", buf, off + 8)[0]
            if bom == PCAPNG_BOM:
                bo = "<"
            elif bom == 0x4D3C2B1A:
                bo = ">"
            else:
                raise CaptureError(path, off, f"bad pcapng byte-order magic 0x{bom:08x}")
            ifaces = []
        elif off == 0:
            raise CaptureError(path, 0, "pcapng file does not start with a section header block")
        else:
            btype = struct.unpack_from(bo + "I", buf, off)[0]
        blen = struct.unpack_from(bo + "I", buf, off + 4)[0]
        if blen < 12 or blen % 4:
            raise CaptureError(path, off, f"bad block length {blen} (block type 0x{btype:08x})")
        if off + blen > size:
            raise CaptureError(path, off, f"block length {blen} runs past the end of the file ({size - off} left)")
        if struct.unpack_from(bo + "I", buf, off + blen - 4)[0] != blen:
            raise CaptureError(path, off, f"trailing block length does not match {blen}")
        body_end = off + blen - 4
        if btype == PCAPNG_IDB:
            if blen < 20:
                raise CaptureError(path, off, f"interface description block too short ({blen} bytes)")
            ifaces.append(_idb(buf, off, body_end, bo))
        elif btype in (PCAPNG_EPB, PCAPNG_OPB):
            hdr = 28
            if blen < hdr + 4:
                raise CaptureError(path, off, f"packet block too short ({blen} bytes)")
            if btype == PCAPNG_EPB:
                ifid, ts_hi, ts_lo, caplen, orig = struct.unpack_from(bo + "IIIII", buf, off + 8)
            else:
                ifid, _drops, ts_hi, ts_lo, caplen, orig = struct.unpack_from(bo + "HHIIII", buf, off + 8)
            if ifid >= len(ifaces):
                raise CaptureError(path, off, f"packet on interface {ifid}, but only {len(ifaces)} described")
            if off + hdr + caplen > body_end:
                raise CaptureError(path, off, f"capture length {caplen} exceeds the block ({blen} bytes)")
            iface = ifaces[ifid]
            data = bytes(buf[off + hdr : off + hdr + caplen])
            yield iface.ts_ns((ts_hi << 32) | ts_lo), data, orig, off, iface.linktype
        elif btype == PCAPNG_SPB:
            if not ifaces:
                raise CaptureError(path, off, "simple packet block before any interface description")
            if blen < 16:
                raise CaptureError(path, off, f"simple packet block too short ({blen} bytes)")
            orig = struct.unpack_from(bo + "I", buf, off + 8)[0]
            caplen = min(orig, body_end - (off + 12))
            if ifaces[0].snaplen:
                caplen = min(caplen, ifaces[0].snaplen)
            yield 0, bytes(buf[off + 12 : off + 12 + caplen]), orig, off, ifaces[0].linktype
        # any other block (NRB, ISB, DSB, custom, unknown) is skipped
        off += blen


# ---------------------------------------------------------------------------------------------------------------------
# Public functions


def read_packets(path: str | os.PathLike[str]) -> Iterator[Packet]:
    """Every packet of a pcap or pcapng file as an Ethernet frame, in file order."""
    convs: dict[int, Converter] = {}
    for index, (ts, data, orig, off, linktype) in enumerate(_raw_records(path)):
        conv = convs.get(linktype)
        if conv is None:
            conv = convs[linktype] = _converter(Path(path), off, linktype)
        frame, delta = conv(data)
        yield Packet(ts, frame, max(orig + delta, len(frame)) if delta else orig, off, index)


def count_packets(path: str | os.PathLike[str]) -> int:
    """The number of packets in a capture (no link-type conversion); raises CaptureError like read_packets."""
    n = 0
    seen: set[int] = set()
    for _ts, _data, _orig, off, linktype in _raw_records(path):
        if linktype not in seen:
            _converter(Path(path), off, linktype)
            seen.add(linktype)
        n += 1
    return n


def write_pcap(path: str | os.PathLike[str], packets: Iterable[tuple[int, bytes]], linktype: int = 1) -> int:
    """Write (ts_ns, frame) pairs as a little-endian nanosecond pcap; returns the number of packets written."""
    rec = struct.Struct("<IIII")
    n = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, MAX_SNAP, linktype))
        for ts_ns, frame in packets:
            sec, nsec = divmod(int(ts_ns), 1_000_000_000)
            f.write(rec.pack(sec, nsec, len(frame), len(frame)))
            f.write(frame)
            n += 1
    return n
