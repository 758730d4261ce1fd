"""TLS ClientHello -> server name (SNI, RFC 6066 extension 0). Pure Python, bounded, never raises on bad input.

The kernel hands over the first TCP payload that starts 0x16 0x03, cut to 512 bytes. The hello may be cut (long cipher
lists, post-quantum key shares, extension order randomised by the client): the SNI is returned when it lies entirely
inside the captured bytes, else None. A hello split over several records is reassembled from the captured records.
"""

from __future__ import annotations

import re

CONTENT_HANDSHAKE = 0x16
HS_CLIENT_HELLO = 0x01
HS_SERVER_HELLO = 0x02
EXT_SERVER_NAME = 0x0000
NAME_TYPE_HOST = 0
MAX_RECORDS = 8
_HOST = re.compile(r"^[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?$")


class _Cut(Exception):
    """The captured bytes end before the field we need (or the field is malformed)."""


class _Reader:
    """Bounded reader: `declared_end` is where the enclosing length field says the data ends, `end` where the
    captured bytes end (the smaller of the two). Reading past `end` raises _Cut."""

    def __init__(self, buf: bytes, start: int, declared_end: int) -> None:
        self.buf = buf
        self.pos = start
        self.declared_end = declared_end
        self.end = min(declared_end, len(buf))

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise _Cut
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")

    def skip(self, n: int) -> None:
        self.take(n)

    def sub(self, n: int) -> _Reader:
        """A reader over the next n bytes (which may run past the capture, not past this reader's data)."""
        if self.pos + n > self.declared_end:
            raise ValueError("length field past its container")
        r = _Reader(self.buf, self.pos, self.pos + n)
        self.pos += n
        return r

    def at_end(self) -> bool:
        return self.pos >= self.declared_end


def handshake_bytes(data: bytes) -> bytes:
    """The handshake-layer bytes of the captured TLS records (record headers removed; the last record may be cut)."""
    out = bytearray()
    pos = 0
    for _ in range(MAX_RECORDS):
        if pos + 5 > len(data) or data[pos] != CONTENT_HANDSHAKE or data[pos + 1] != 0x03:
            break
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if length == 0 or length > 16384 + 2048:
            break
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(out)


def client_hello_sni(data: bytes) -> str | None:
    """The host name in a ClientHello's server_name extension; None if absent, cut off or malformed."""
    try:
        return _sni(handshake_bytes(bytes(data)))
    except (_Cut, ValueError, IndexError):
        return None


def _sni(hs: bytes) -> str | None:
    r = _Reader(hs, 0, 1 << 30)  # the handshake's own length field bounds it, not the capture
    if r.u8() != HS_CLIENT_HELLO:
        return None
    body = r.sub(r.u24())
    body.skip(2 + 32)  # client_version, random
    sid_len = body.u8()
    if sid_len > 32:
        return None
    body.skip(sid_len)
    cs_len = body.u16()
    if cs_len % 2:
        return None
    body.skip(cs_len)
    body.skip(body.u8())  # compression methods
    exts = body.sub(body.u16())
    while not exts.at_end():
        etype = exts.u16()  # raises _Cut where the capture ends
        ext = exts.sub(exts.u16())
        if etype == EXT_SERVER_NAME:
            return _server_name(ext)
    return None


def _server_name(ext: _Reader) -> str | None:
    names = ext.sub(ext.u16())
    while not names.at_end():
        ntype = names.u8()
        name = names.take(names.u16())
        if ntype == NAME_TYPE_HOST:
            try:
                host = name.decode("ascii").lower().rstrip(".")
            except UnicodeDecodeError:
                return None
            return host if _HOST.match(host) else None
    return None


# ---- server certificate names (for ClientHellos without SNI) --------------------------------------------------------

_CN_OID = b"\x06\x03\x55\x04\x03"  # id-at-commonName (2.5.4.3)
_STRING_TAGS = (0x0C, 0x13, 0x16)  # UTF8String, PrintableString, IA5String
_HOSTLIKE = re.compile(rb"(\*\.)?([a-z0-9-]{1,63}\.)+[a-z]{2,63}", re.I)


def certificate_common_names(data: bytes) -> list[str]:
    """Host-name-looking commonName values of the certificates in a server's first flight (ServerHello + Certificate,
    as captured: possibly cut). Only the subject/issuer CN attributes, never the SAN list: shared front-end
    certificates list many unrelated services there."""
    hs = handshake_bytes(bytes(data))
    if not hs or hs[0] != HS_SERVER_HELLO:
        return []
    out: list[str] = []
    pos = hs.find(_CN_OID)
    while pos >= 0 and len(out) < 8:
        i = pos + len(_CN_OID)
        if i + 2 <= len(hs) and hs[i] in _STRING_TAGS:
            n = hs[i + 1]
            value = hs[i + 2 : i + 2 + n]
            if len(value) == n and n < 128 and _HOSTLIKE.fullmatch(value):
                out.append(value.decode("ascii").lower())
        pos = hs.find(_CN_OID, i)
    return out
