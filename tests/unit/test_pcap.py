"""skyguard.pcap: classic pcap and pcapng reading (every byte order, resolution and supported link type), writing,
and corrupt input reported with the byte offset after the good packets."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from skyguard.offline.pcap import CaptureError, Packet, count_packets, read_packets, write_pcap
from tests.conftest import skip_or_fail

MAC_HDR = bytes.fromhex("020000000002" "020000000001")
IP4 = bytes.fromhex("4500001c0001000040110000c0a80001c0a80002") + bytes.fromhex("0035003500080000")
IP6 = bytes.fromhex("60000000000811400000000000000000000000000000000100000000000000000000000000000002") + bytes(8)
ETH4 = bytes.fromhex("00112233445566778899aabb0800") + IP4


def eth(ethertype: int, payload: bytes) -> bytes:
    return MAC_HDR + struct.pack("!H", ethertype) + payload


# ---------------------------------------------------------------------------------------------------------------------
# Builders of small capture files


def classic(records: list[tuple[int, int, bytes]], *, bo: str = "<", nano: bool = False, linktype: int = 1,
            orig: int | None = None) -> bytes:
    """A classic pcap: records are (sec, frac, data)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(bo + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in records:
        out += struct.pack(bo + "IIII", sec, frac, len(data), orig if orig is not None else len(data)) + data
    return out


def block(bo: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)


def shb(bo: str) -> bytes:
    return block(bo, 0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(bo: str, linktype: int, tsresol: int | None = None, snaplen: int = 0) -> bytes:
    opts = b""
    if tsresol is not None:
        opts = struct.pack(bo + "HH", 9, 1) + bytes([tsresol]) + b"\0\0\0" + struct.pack(bo + "HH", 0, 0)
    return block(bo, 1, struct.pack(bo + "HHI", linktype, 0, snaplen) + opts)


def epb(bo: str, ifid: int, ts: int, data: bytes, orig: int | None = None) -> bytes:
    body = struct.pack(bo + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(data), orig or len(data)) + data
    return block(bo, 6, body)


def opb(bo: str, ifid: int, ts: int, data: bytes) -> bytes:
    return block(bo, 2, struct.pack(bo + "HHIIII", ifid, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data)


def spb(bo: str, data: bytes) -> bytes:
    return block(bo, 3, struct.pack(bo + "I", len(data)) + data)


def write(tmp_path: Path, raw: bytes, name: str = "f.pcap") -> Path:
    p = tmp_path / name
    p.write_bytes(raw)
    return p


# ---------------------------------------------------------------------------------------------------------------------
# Classic pcap


@pytest.mark.parametrize("bo", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_classic_byte_orders_and_resolutions(tmp_path: Path, bo: str, nano: bool) -> None:
    frac = 123456789 if nano else 123456
    p = write(tmp_path, classic([(1700000000, frac, ETH4), (1700000001, 5, ETH4[:20])], bo=bo, nano=nano))
    pk = list(read_packets(p))
    assert [x.frame for x in pk] == [ETH4, ETH4[:20]]
    assert pk[0].ts_ns == 1700000000 * 10**9 + (123456789 if nano else 123456000)
    assert pk[1].ts_ns == 1700000001 * 10**9 + (5 if nano else 5000)
    assert [x.offset for x in pk] == [24, 24 + 16 + len(ETH4)]
    assert [x.index for x in pk] == [0, 1]
    assert count_packets(p) == 2


def test_round_trip(tmp_path: Path) -> None:
    frames = [(1_700_000_000_123_456_789 + i * 20_000_001, bytes([i]) * (60 + i)) for i in range(50)]
    p = tmp_path / "rt.pcap"
    assert write_pcap(p, frames) == 50
    back = list(read_packets(p))
    assert [(x.ts_ns, x.frame) for x in back] == frames
    assert all(x.orig_len == len(x.frame) for x in back)
    assert count_packets(p) == 50


def test_round_trip_readable_by_tshark(tmp_path: Path) -> None:
    if not shutil.which("tshark"):
        skip_or_fail("tshark is not installed (apt-get install tshark)")
    p = tmp_path / "rt.pcap"
    write_pcap(p, [(1_700_000_000_000_000_001, ETH4), (1_700_000_000_500_000_000, ETH4)])
    out = subprocess.run(["tshark", "-r", str(p), "-T", "fields", "-e", "frame.time_epoch", "-e", "ip.dst"],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0].split("\t") == ["1700000000.000000001", "192.168.0.2"]
    assert out[1].startswith("1700000000.500000000")


# ---------------------------------------------------------------------------------------------------------------------
# Link types


LINK_CASES = [
    (1, ETH4, ETH4),
    (101, IP4, eth(0x0800, IP4)),
    (101, IP6, eth(0x86DD, IP6)),
    (12, IP4, eth(0x0800, IP4)),
    (14, IP6, eth(0x86DD, IP6)),
    (228, IP4, eth(0x0800, IP4)),
    (229, IP6, eth(0x86DD, IP6)),
    (0, struct.pack("<I", 2) + IP4, eth(0x0800, IP4)),  # BSD null, little-endian capturer
    (0, struct.pack(">I", 2) + IP4, eth(0x0800, IP4)),  # ... big-endian capturer
    (0, struct.pack("<I", 30) + IP6, eth(0x86DD, IP6)),  # Darwin AF_INET6
    (0, struct.pack(">I", 24) + IP6, eth(0x86DD, IP6)),  # NetBSD/OpenBSD AF_INET6
    (108, struct.pack(">I", 2) + IP4, eth(0x0800, IP4)),  # OpenBSD loop: always big-endian
    # SLL: packet type, ARPHRD_ETHER, addr len 6, addr (8), protocol
    (113, struct.pack("!HHH8sH", 4, 1, 6, bytes(8), 0x0800) + IP4, eth(0x0800, IP4)),
    (113, struct.pack("!HHH8sH", 0, 772, 0, bytes(8), 0x86DD) + IP6, eth(0x86DD, IP6)),
    # SLL2: protocol, reserved, ifindex, ARPHRD, packet type, addr len, addr (8)
    (276, struct.pack("!HHIHBB8s", 0x0800, 0, 3, 1, 0, 6, bytes(8)) + IP4, eth(0x0800, IP4)),
    (276, struct.pack("!HHIHBB8s", 0x86DD, 0, 3, 1, 4, 6, bytes(8)) + IP6, eth(0x86DD, IP6)),
]


@pytest.mark.parametrize(("linktype", "data", "frame"), LINK_CASES)
def test_link_types_become_ethernet(tmp_path: Path, linktype: int, data: bytes, frame: bytes) -> None:
    p = write(tmp_path, classic([(1, 0, data)], linktype=linktype, orig=len(data) + 100))
    (pkt,) = list(read_packets(p))
    assert pkt.frame == frame
    assert pkt.orig_len == len(frame) + 100  # the wire length follows the header swap
    # same through pcapng (both byte orders)
    for bo in "<>":
        q = write(tmp_path, shb(bo) + idb(bo, linktype) + epb(bo, 0, 10**6, data), "f.pcapng")
        assert [x.frame for x in read_packets(q)] == [frame]


@pytest.mark.parametrize("linktype", [105, 127, 147])
def test_unsupported_link_type(tmp_path: Path, linktype: int) -> None:
    p = write(tmp_path, classic([(1, 0, IP4)], linktype=linktype))
    with pytest.raises(CaptureError, match=f"unsupported link type {linktype}") as e:
        list(read_packets(p))
    assert e.value.path == str(p)
    q = write(tmp_path, shb("<") + idb("<", linktype) + epb("<", 0, 1, IP4), "f.pcapng")
    with pytest.raises(CaptureError, match=f"link type {linktype}"):
        list(read_packets(q))
    with pytest.raises(CaptureError, match=f"link type {linktype}"):
        count_packets(q)


# ---------------------------------------------------------------------------------------------------------------------
# pcapng


@pytest.mark.parametrize("bo", ["<", ">"])
def test_pcapng_blocks_interfaces_and_resolutions(tmp_path: Path, bo: str) -> None:
    raw = shb(bo) + idb(bo, 1) + idb(bo, 101, tsresol=9) + idb(bo, 1, tsresol=0x80 | 10)
    raw += epb(bo, 0, 1_700_000_000_123_456, ETH4)  # microseconds (default)
    raw += block(bo, 4, bytes(8))  # name resolution block: skipped
    raw += epb(bo, 1, 1_700_000_000_000_000_007, IP4)  # nanoseconds, raw IP
    raw += block(bo, 0x40000BAD, b"custom stuff")  # unknown block: skipped
    raw += epb(bo, 2, 3 * 1024 + 512, ETH4)  # 2^-10 s units: 3.5 s
    raw += opb(bo, 0, 5_000_000, ETH4)  # obsolete packet block
    raw += block(bo, 5, bytes(16))  # interface statistics: skipped
    raw += spb(bo, ETH4)  # simple packet block: interface 0, no timestamp
    p = write(tmp_path, raw, "f.pcapng")
    pk = list(read_packets(p))
    assert [x.frame for x in pk] == [ETH4, eth(0x0800, IP4), ETH4, ETH4, ETH4]
    assert [x.ts_ns for x in pk] == [1_700_000_000_123_456_000, 1_700_000_000_000_000_007, 3_500_000_000,
                                     5_000_000_000, 0]
    assert [x.index for x in pk] == list(range(5))
    assert pk[0].offset == len(shb(bo) + idb(bo, 1) + idb(bo, 101, 9) + idb(bo, 1, 0x80 | 10))
    assert count_packets(p) == 5


def test_pcapng_sections_switch_byte_order(tmp_path: Path) -> None:
    raw = shb("<") + idb("<", 1) + epb("<", 0, 1, ETH4) + shb(">") + idb(">", 228) + epb(">", 0, 2, IP4)
    p = write(tmp_path, raw, "f.pcapng")
    assert [(x.ts_ns, x.frame) for x in read_packets(p)] == [(1000, ETH4), (2000, eth(0x0800, IP4))]


def test_pcapng_new_section_forgets_interfaces(tmp_path: Path) -> None:
    raw = shb("<") + idb("<", 1) + epb("<", 0, 1, ETH4)
    off = len(raw) + len(shb("<"))
    raw += shb("<") + epb("<", 0, 1, ETH4)
    with pytest.raises(CaptureError) as e:
        list(read_packets(write(tmp_path, raw, "f.pcapng")))
    assert e.value.offset == off and "interface 0" in e.value.message


# ---------------------------------------------------------------------------------------------------------------------
# Corrupt and truncated input


def collect(path: Path) -> tuple[list[Packet], CaptureError]:
    got: list[Packet] = []
    with pytest.raises(CaptureError) as e:
        for pkt in read_packets(path):
            got.append(pkt)
    return got, e.value


def test_bad_magic(tmp_path: Path) -> None:
    p = write(tmp_path, b"GIF89a" + bytes(100))
    got, err = collect(p)
    assert got == [] and err.offset == 0 and "bad magic" in err.message
    assert str(err) == f"{p}: at byte 0: {err.message}"
    with pytest.raises(CaptureError):
        count_packets(p)


def test_empty_and_short_files(tmp_path: Path) -> None:
    for raw in (b"", b"\xd4\xc3", b"\xd4\xc3\xb2\xa1" + bytes(10)):
        got, err = collect(write(tmp_path, raw))
        assert got == [] and err.offset == 0


@pytest.mark.parametrize("cut", [1, 8, 15])
def test_truncated_record_header(tmp_path: Path, cut: int) -> None:
    good = classic([(1, 0, ETH4), (2, 0, ETH4)])
    p = write(tmp_path, good + struct.pack("<IIII", 3, 0, 42, 42)[:cut])
    got, err = collect(p)
    assert [x.ts_ns for x in got] == [10**9, 2 * 10**9]
    assert err.offset == len(good) and "truncated record header" in err.message
    assert str(err) == f"{p}: at byte {len(good)}: {err.message}"


def test_truncated_packet_data(tmp_path: Path) -> None:
    good = classic([(1, 0, ETH4)])
    p = write(tmp_path, good + struct.pack("<IIII", 3, 0, 100, 100) + bytes(40))
    got, err = collect(p)
    assert len(got) == 1 and err.offset == len(good) and "truncated packet data" in err.message


def test_absurd_capture_length(tmp_path: Path) -> None:
    good = classic([(1, 0, ETH4)])
    p = write(tmp_path, good + struct.pack("<IIII", 3, 0, 0x7FFFFFFF, 60) + bytes(60))
    got, err = collect(p)
    assert len(got) == 1 and err.offset == len(good) and "capture length" in err.message


def _ng_good() -> bytes:
    return shb("<") + idb("<", 1) + epb("<", 0, 1, ETH4) + epb("<", 0, 2, ETH4)


def test_pcapng_block_length_not_multiple_of_4(tmp_path: Path) -> None:
    good = _ng_good()
    p = write(tmp_path, good + struct.pack("<II", 6, 30) + bytes(30), "f.pcapng")
    got, err = collect(p)
    assert len(got) == 2 and err.offset == len(good) and "bad block length 30" in err.message


def test_pcapng_block_runs_past_file(tmp_path: Path) -> None:
    good = _ng_good()
    bad = epb("<", 0, 3, ETH4)
    p = write(tmp_path, good + bad[:-8], "f.pcapng")
    got, err = collect(p)
    assert len(got) == 2 and err.offset == len(good) and "runs past the end" in err.message


def test_pcapng_capture_length_exceeds_block(tmp_path: Path) -> None:
    good = _ng_good()
    body = struct.pack("<IIIII", 0, 0, 3, 500, 500) + ETH4
    p = write(tmp_path, good + block("<", 6, body) + epb("<", 0, 4, ETH4), "f.pcapng")
    got, err = collect(p)
    assert len(got) == 2 and err.offset == len(good) and "capture length 500 exceeds" in err.message


def test_pcapng_truncated_block_header_and_trailer_mismatch(tmp_path: Path) -> None:
    good = _ng_good()
    got, err = collect(write(tmp_path, good + b"\x06\0\0\0\x20", "f.pcapng"))
    assert len(got) == 2 and err.offset == len(good) and "truncated block header" in err.message
    bad = bytearray(epb("<", 0, 3, ETH4))
    bad[-4:] = struct.pack("<I", 4)
    got, err = collect(write(tmp_path, good + bytes(bad), "f.pcapng"))
    assert len(got) == 2 and err.offset == len(good) and "trailing block length" in err.message


def test_pcapng_must_start_with_shb(tmp_path: Path) -> None:
    got, err = collect(write(tmp_path, idb("<", 1) + epb("<", 0, 1, ETH4), "f.pcapng"))
    assert got == [] and err.offset == 0


def test_pcapng_bad_byte_order_magic(tmp_path: Path) -> None:
    raw = bytearray(_ng_good())
    raw[8:12] = b"\x01\x02\x03\x04"
    got, err = collect(write(tmp_path, bytes(raw), "f.pcapng"))
    assert got == [] and err.offset == 0 and "byte-order magic" in err.message


# ---------------------------------------------------------------------------------------------------------------------
# Real captures against tshark


def _tshark(path: Path, *args: str) -> str:
    return subprocess.run(["tshark", "-r", str(path), *args], capture_output=True, text=True, check=True).stdout


def test_shared_captures_match_tshark(captures: Path) -> None:
    if not shutil.which("tshark"):
        skip_or_fail("tshark is not installed (apt-get install tshark)")
    files = sorted(p for p in captures.iterdir() if p.suffix in (".pcap", ".pcapng"))
    assert len(files) >= 15
    for f in files:
        pk = list(read_packets(f))
        # one line per frame (not the summary lines: a teams.pcap summary has an embedded newline)
        fields = _tshark(f, "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len")
        assert len(pk) == len(fields.splitlines()) == count_packets(f), f.name
        for pkt, line in zip(pk, fields.splitlines(), strict=True):
            te, flen, clen = line.split("\t")
            assert (pkt.orig_len, len(pkt.frame)) == (int(flen), int(clen)), f.name
            sec, _, frac = te.partition(".")
            assert pkt.ts_ns == int(sec) * 10**9 + int(frac.ljust(9, "0")[:9]), f.name
        # the bytes of the first and last few frames
        raw = json.loads(_tshark(f, "-T", "json", "-x", "-c", "3"))
        for pkt, entry in zip(pk, raw):
            assert pkt.frame.hex() == entry["_source"]["layers"]["frame_raw"][0], f.name
