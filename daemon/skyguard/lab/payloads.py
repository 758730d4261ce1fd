"""Payload builders for the generator: STUN (with Microsoft's attributes), RTP, DNS, TLS and SIP, byte-exact to the
RFCs named in docs/signatures.md."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import struct
import zlib
from collections.abc import Sequence

# ---------------------------------------------------------------------------------------------------------------------
# Payload builders: STUN, RTP, DNS, TLS, SIP

STUN_COOKIE = 0x2112A442
BINDING_REQ, BINDING_OK, ALLOCATE_REQ, ALLOCATE_OK, ALLOCATE_ERR = 0x0001, 0x0101, 0x0003, 0x0103, 0x0113
A_MAPPED, A_USERNAME, A_INTEGRITY, A_ERROR, A_LIFETIME, A_BANDWIDTH = 0x0001, 0x0006, 0x0008, 0x0009, 0x000D, 0x0010
A_REALM, A_NONCE, A_XOR_MAPPED, A_PRIORITY, A_USE_CAND = 0x0014, 0x0015, 0x0020, 0x0024, 0x0025
A_SOFTWARE, A_FINGERPRINT, A_CONTROLLING = 0x8022, 0x8028, 0x802A
# Microsoft attributes (docs/signatures.md, "STUN and TURN with Microsoft attributes"; MS-TURN / MS-ICE2)
A_MS_MAGIC, A_MS_VERSION, A_MS_APP_ID, A_MS_SEQ = 0x000F, 0x8008, 0x8037, 0x8050
A_MS_CAND_ID, A_MS_QUALITY, A_MS_IMPL, A_MS_MUX_ID = 0x8054, 0x8055, 0x8070, 0x8095
A_MS_XOR_MAPPED, A_MS_8006 = 0x8020, 0x8006
MS_MAGIC_VALUE = 0x72C64BC6
GOOG_NETWORK_INFO = 0xC057


def stun(mtype: int, txid: bytes, attrs: Sequence[tuple[int, bytes]], *, key: bytes | None = None,
         fingerprint: bool = True) -> bytes:
    """A STUN message (RFC 5389) with optional MESSAGE-INTEGRITY (HMAC-SHA1 with `key`) and FINGERPRINT."""
    body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4) for t, v in attrs)

    def hdr(extra: int) -> bytes:
        return struct.pack("!HHI", mtype, len(body) + extra, STUN_COOKIE) + txid

    if key is not None:  # the length field covers MESSAGE-INTEGRITY while it is computed (RFC 5389 15.4)
        mac = hmac.new(key, hdr(24) + body, hashlib.sha1).digest()
        body += struct.pack("!HH", A_INTEGRITY, 20) + mac
    if fingerprint:  # CRC-32 XOR 0x5354554e with the length covering FINGERPRINT (15.5)
        crc = (zlib.crc32(hdr(8) + body) ^ 0x5354554E) & 0xFFFFFFFF
        body += struct.pack("!HHI", A_FINGERPRINT, 4, crc)
    return hdr(0) + body


def xor_address(addr: str, port: int, txid: bytes) -> bytes:
    ip = ipaddress.ip_address(addr)
    xport = port ^ (STUN_COOKIE >> 16)
    if ip.version == 4:
        return struct.pack("!BBHI", 0, 1, xport, int(ip) ^ STUN_COOKIE)
    mask = int.from_bytes(struct.pack("!I", STUN_COOKIE) + txid, "big")
    return struct.pack("!BBH", 0, 2, xport) + (int(ip) ^ mask).to_bytes(16, "big")


def plain_address(addr: str, port: int) -> bytes:
    ip = ipaddress.ip_address(addr)
    return struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, port) + ip.packed


def u32(v: int) -> bytes:
    return struct.pack("!I", v)


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def dns_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"


def dns_query(txid: int, name: str, qtype: int) -> bytes:
    return struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + dns_name(name) + struct.pack("!HH", qtype, 1)


def dns_response(txid: int, name: str, qtype: int, answers: Sequence[str], ttl: int = 300,
                 cnames: Sequence[str] = ()) -> bytes:
    """A standard response (RD, RA) echoing the question. With `cnames` the question is an alias: a CNAME chain
    name -> cnames[0] -> ... and the addresses owned by the last name; else the addresses point at the question with a
    compression pointer."""
    n = len(cnames) + len(answers)
    out = struct.pack("!HHHHHH", txid, 0x8180, 1, n, 0, 0) + dns_name(name) + struct.pack("!HH", qtype, 1)
    owner = b"\xc0\x0c"
    for target in cnames:
        rdata = dns_name(target)
        out += owner + struct.pack("!HHIH", 5, 1, ttl, len(rdata)) + rdata
        owner = dns_name(target)
    for a in answers:
        rdata = ipaddress.ip_address(a).packed
        out += owner + struct.pack("!HHIH", qtype, 1, ttl, len(rdata)) + rdata
    return out


def _ext(t: int, body: bytes) -> bytes:
    return struct.pack("!HH", t, len(body)) + body


def _vec(n: int, body: bytes) -> bytes:
    return len(body).to_bytes(n, "big") + body


def _tls_record(ctype: int, body: bytes, version: int = 0x0303) -> bytes:
    return struct.pack("!BHH", ctype, version, len(body)) + body


def _handshake(htype: int, body: bytes) -> bytes:
    return bytes([htype]) + len(body).to_bytes(3, "big") + body


def client_hello(rng: random.Random, sni: str, tls13: bool) -> bytes:
    """A TLS ClientHello record with server_name (RFC 6066), groups, signature algorithms and ALPN; for TLS 1.3 also
    supported_versions, key_share (x25519) and psk_key_exchange_modes (RFC 8446)."""
    suites = [0x1301, 0x1302, 0x1303] if tls13 else []
    suites += [0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
    host = sni.encode()
    exts = [
        _ext(0x0000, _vec(2, b"\x00" + _vec(2, host))),
        _ext(0x0017, b""),  # extended_master_secret
        _ext(0xFF01, b"\x00"),  # renegotiation_info
        _ext(0x000A, _vec(2, struct.pack("!4H", 0x001D, 0x0017, 0x0018, 0x0019))),
        _ext(0x000B, _vec(1, b"\x00")),
        _ext(0x0010, _vec(2, _vec(1, b"h2") + _vec(1, b"http/1.1"))),
        _ext(0x000D, _vec(2, struct.pack("!8H", 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601))),
    ]
    if tls13:
        exts += [
            _ext(0x002B, _vec(1, struct.pack("!HH", 0x0304, 0x0303))),
            _ext(0x0033, _vec(2, struct.pack("!HH", 0x001D, 32) + rng.randbytes(32))),
            _ext(0x002D, _vec(1, b"\x01")),
        ]
    body = (struct.pack("!H", 0x0303) + rng.randbytes(32) + _vec(1, rng.randbytes(32))
            + _vec(2, b"".join(struct.pack("!H", s) for s in suites)) + _vec(1, b"\x00") + _vec(2, b"".join(exts)))
    return _tls_record(0x16, _handshake(0x01, body), 0x0301)


def server_hello(rng: random.Random, tls13: bool) -> bytes:
    if tls13:
        key_share = struct.pack("!HH", 0x001D, 32) + rng.randbytes(32)
        exts = _ext(0x002B, struct.pack("!H", 0x0304)) + _ext(0x0033, key_share)
        suite = 0x1301
    else:
        exts = _ext(0x0017, b"") + _ext(0xFF01, b"\x00")
        suite = 0xC02F
    body = struct.pack("!H", 0x0303) + rng.randbytes(32) + _vec(1, rng.randbytes(32)) + struct.pack("!HB", suite, 0)
    rec = _tls_record(0x16, _handshake(0x02, body + _vec(2, exts)))
    if tls13:
        rec += _tls_record(0x14, b"\x01")  # middlebox-compatibility change_cipher_spec
    return rec


def app_data(rng: random.Random, n: int) -> bytes:
    return _tls_record(0x17, rng.randbytes(n))


def sip_message(first: str, headers: Sequence[tuple[str, str]], body: str = "") -> bytes:
    lines = [first, *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body.encode())}", "", ""]
    return "\r\n".join(lines).encode() + body.encode()


def sdp(addr: str, port: int, sess: int, pts: Sequence[int]) -> str:
    fam = "IP6" if ":" in addr else "IP4"
    names = {0: "PCMU/8000", 8: "PCMA/8000", 101: "telephone-event/8000"}
    return "".join(f"{line}\r\n" for line in [
        "v=0", f"o=- {sess} {sess} IN {fam} {addr}", "s=call", f"c=IN {fam} {addr}", "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(map(str, pts))}", *(f"a=rtpmap:{p} {names[p]}" for p in pts),
        "a=sendrecv"])
