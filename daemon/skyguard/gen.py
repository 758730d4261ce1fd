"""Synthetic traffic generator: Skype calls of every class and look-alike decoys, following SIGNATURES.md.

`python -m skyguard.gen --seed N --out DIR [--calls K] [--kinds a,b] [--ipv6] [--vlan ID] [--json]` writes one pcap
per kind (DIR/<kind>.pcap) and DIR/labels.csv (capture,proto,endpoint_a,endpoint_b,label,packets,bytes,class), where
`label` is the generator's kind and `class` the skyguard class the flow should get. Everything random comes from the
seed: the same seed gives the same bytes.

Python API: `generate(seed, out_dir, ...)` for files, `kind_flows(kind, rng, ...)` / `kind_packets(kind, rng, ...)`
for one call (the lab plays single calls).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import ipaddress
import json
import random
import struct
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from skyguard import packet as pk
from skyguard.pcap import write_pcap

MS = 1_000_000  # nanoseconds per millisecond
SEC = 1_000_000_000
BASE_NS = 1_700_000_000 * SEC  # 2023-11-14: all generated captures start near here

LABEL_FIELDS = ("capture", "proto", "endpoint_a", "endpoint_b", "label", "packets", "bytes", "class")

# ---------------------------------------------------------------------------------------------------------------------
# Addresses and ports

# Microsoft media prefixes (SIGNATURES.md, "Modern Skype/Teams media": endpoint set 11, incl. the 2022 52.120.0.0/14 and
# the older 13.107.64.0/18), used for the relay kind and kept out of every other kind's peers.
MS_MEDIA_V4 = (ipaddress.ip_network("52.112.0.0/14"), ipaddress.ip_network("52.122.0.0/15"))
MS_MEDIA_V6 = (ipaddress.ip_network("2603:1063::/38"),)
MS_AVOID = (*MS_MEDIA_V4, ipaddress.ip_network("52.120.0.0/14"), ipaddress.ip_network("13.107.64.0/18"), *MS_MEDIA_V6)
# SkypeOut gateways named in the literature (SIGNATURES.md, "Legacy SkypeOut": Ehlert 2006)
E2O_GATEWAYS = ("195.215.8.140", "212.72.49.155")
E2O_PORT = 12340  # the legacy PSTN gateway's UDP port (Bonfiglio 2007)
# ports that mean something to a classifier: random ports avoid them
RESERVED_PORTS = frozenset({53, 443, 3478, 3479, 3480, 3481, 5060, 5061, 8801, E2O_PORT, 51820, *range(50000, 50060)})


@dataclass(slots=True)
class Ctx:
    """One call's randomness and options."""

    rng: random.Random
    ipv6: bool = False
    vlan: int | None = None

    def client(self) -> str:
        r = self.rng
        if self.ipv6:
            return str(ipaddress.IPv6Address((0xFD << 120) | r.getrandbits(56) << 64 | r.randrange(2, 1 << 16)))
        if r.random() < 0.5:
            return f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(2, 255)}"
        return f"192.168.{r.randrange(256)}.{r.randrange(2, 255)}"

    def public(self) -> str:
        """A random globally routable address outside Microsoft's media prefixes and the known PSTN gateways."""
        r = self.rng
        while True:
            if self.ipv6:
                ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(
                    (0x2 << 125) | r.getrandbits(125))
            else:
                ip = ipaddress.IPv4Address(r.randrange(0x01000000, 0xE0000000))
            if ip.is_global and not any(ip in n for n in MS_AVOID if n.version == ip.version) and str(
                    ip) not in E2O_GATEWAYS:
                return str(ip)

    def ms_media(self) -> str:
        nets = MS_MEDIA_V6 if self.ipv6 else MS_MEDIA_V4
        net = self.rng.choice(nets)
        host = self.rng.randrange(1, net.num_addresses - 1)
        return str(net.network_address + host)

    def port(self) -> int:
        while True:
            p = self.rng.randrange(1024, 65536)
            if p not in RESERVED_PORTS:
                return p

    def client_media_port(self) -> int:
        return self.rng.randrange(50000, 50020)  # Microsoft QoS guidance: client audio ports 50000-50019

    def mac(self) -> bytes:
        return bytes([0x02, *self.rng.randbytes(5)])

    def leg(self, a: str, ap: int, b: str, bp: int) -> Leg:
        return Leg(a, ap, b, bp, self.vlan, self.mac(), self.mac(), [self.rng.randrange(65536) for _ in range(2)],
                   self.rng.randrange(40, 60))

    def jitter(self, sigma_ms: float, limit_ms: float) -> int:
        return int(max(-limit_ms, min(limit_ms, self.rng.gauss(0.0, sigma_ms))) * MS)


@dataclass(slots=True)
class Leg:
    """Two endpoints and the frames between them; direction 0 is a -> b (a = client side)."""

    a: str
    ap: int
    b: str
    bp: int
    vlan: int | None
    a_mac: bytes
    b_mac: bytes
    ip_id: list[int]
    b_ttl: int

    def _ends(self, d: int) -> tuple[str, int, str, int, bytes, bytes, int]:
        if d == 0:
            return self.a, self.ap, self.b, self.bp, self.a_mac, self.b_mac, 64
        return self.b, self.bp, self.a, self.ap, self.b_mac, self.a_mac, self.b_ttl

    def _next_id(self, d: int) -> int:
        self.ip_id[d] = (self.ip_id[d] + 1) & 0xFFFF
        return self.ip_id[d]

    def udp(self, d: int, payload: bytes) -> bytes:
        s, sp, t, tp, smac, dmac, ttl = self._ends(d)
        return pk.udp(s, sp, t, tp, payload, vlan=self.vlan, ttl=ttl, ip_id=self._next_id(d), src_mac=smac,
                      dst_mac=dmac)

    def tcp(self, d: int, payload: bytes, flags: str, seq: int, ack: int, options: bytes = b"") -> bytes:
        s, sp, t, tp, smac, dmac, ttl = self._ends(d)
        return pk.tcp(s, sp, t, tp, payload, flags=flags, seq=seq, ack=ack, window=64240, options=options,
                      vlan=self.vlan, ttl=ttl, ip_id=self._next_id(d), src_mac=smac, dst_mac=dmac)


@dataclass(slots=True)
class Flow:
    """One generated flow (one 5-tuple) and the class skyguard should give it."""

    cls: str
    pkts: list[tuple[int, bytes]] = field(default_factory=list)

    def add(self, ts: int, frame: bytes) -> None:
        self.pkts.append((ts, frame))


@dataclass(frozen=True, slots=True)
class LabelRow:
    capture: str
    proto: str
    endpoint_a: str
    endpoint_b: str
    label: str
    packets: int
    bytes: int
    cls: str

    def as_csv(self) -> dict[str, str | int]:
        d: dict[str, str | int] = asdict(self)
        d["class"] = d.pop("cls")
        return d


# ---------------------------------------------------------------------------------------------------------------------
# Payload builders: STUN, RTP, DNS, TLS, SIP

STUN_COOKIE = 0x2112A442
BINDING_REQ, BINDING_OK, ALLOCATE_REQ, ALLOCATE_OK, ALLOCATE_ERR = 0x0001, 0x0101, 0x0003, 0x0103, 0x0113
A_MAPPED, A_USERNAME, A_INTEGRITY, A_ERROR, A_LIFETIME, A_BANDWIDTH = 0x0001, 0x0006, 0x0008, 0x0009, 0x000D, 0x0010
A_REALM, A_NONCE, A_XOR_MAPPED, A_PRIORITY, A_USE_CAND = 0x0014, 0x0015, 0x0020, 0x0024, 0x0025
A_SOFTWARE, A_FINGERPRINT, A_CONTROLLING = 0x8022, 0x8028, 0x802A
# Microsoft attributes (SIGNATURES.md, "Modern Skype/Teams media"; MS-TURN / MS-ICE2)
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


# ---------------------------------------------------------------------------------------------------------------------
# Timing helpers


def periodic(c: Ctx, t0: int, interval_ms: float, duration_ns: int, jitter_ms: float) -> list[int]:
    """Send times every interval_ms for duration_ns with Gaussian jitter (kept under a third of the interval)."""
    n = max(1, int(duration_ns // int(interval_ms * MS)))
    return [max(t0, t0 + int(i * interval_ms * MS) + c.jitter(jitter_ms, interval_ms / 3)) for i in range(n)]


def duration(c: Ctx, lo_s: float, hi_s: float) -> int:
    return int(c.rng.uniform(lo_s, hi_s) * SEC)


# ---------------------------------------------------------------------------------------------------------------------
# Legacy Skype (SIGNATURES.md, "Legacy Skype over UDP" and "Legacy SkypeOut")


def som(c: Ctx, func: int, length: int) -> bytes:
    """A Start-of-Message header: random 16-bit message ID, then func with random bits 4-6 (func = byte2 & 0x8f)."""
    b2 = (func & 0x8F) | (c.rng.getrandbits(3) << 4)
    return c.rng.randbytes(2) + bytes([b2]) + c.rng.randbytes(max(0, length - 3))


def som_signalling(c: Ctx, leg: Leg, flow: Flow, t: int, n: int) -> int:
    """n signalling messages (func 0x02/0x03, 18-37 bytes like the 2015 probes), alternating direction."""
    for i in range(n):
        flow.add(t, leg.udp(i % 2, som(c, c.rng.choice((0x02, 0x03)), c.rng.randrange(18, 38))))
        t += c.rng.randrange(5, 80) * MS
    return t


def legacy_e2e(c: Ctx, t0: int) -> list[Flow]:
    """PC-to-PC voice: SoM signalling, then func 0x0d data both ways; iSAC-like sizes (67 B, std-dev ~7.5 B), frames
    every 20/30/60 ms with extra (redundant) packets so that both directions together carry ~140 pkt/s (Baset &
    Schulzrinne 2006)."""
    leg = c.leg(c.client(), c.port(), c.public(), c.port())
    flow = Flow("skype-p2p")
    t = som_signalling(c, leg, flow, t0, c.rng.randrange(3, 9))
    dur = duration(c, 5, 9)
    for d in (0, 1):
        interval = c.rng.choice((20, 30, 60))
        per_frame = 70 * interval / 1000  # ~70 pkt/s per direction
        for ft in periodic(c, t + d * c.rng.randrange(1, 15) * MS, interval, dur, 2.0):
            k = int(per_frame) + (c.rng.random() < per_frame - int(per_frame))
            for j in range(k):
                size = max(5, min(160, round(c.rng.gauss(67, 7.5))))  # Tstat: data needs payload > 4
                flow.add(ft + j * int(interval * MS / k), leg.udp(d, som(c, 0x0D, size)))
    return [flow]


def legacy_e2o(c: Ctx, t0: int) -> list[Flow]:
    """PC-to-phone through a PSTN gateway: a few SoM messages, then per direction a constant 4-byte connection ID and
    random bytes from offset 4 (Tstat's rule: first 4 bytes equal the previous packet's, byte 4 differs); G.729 CBR,
    size = (rate x interval + 8) x redundancy + 4 (Bonfiglio's model) with std-dev ~1 B; >= 300 packets."""
    r = c.rng
    gw = r.choice(E2O_GATEWAYS) if (not c.ipv6 and r.random() < 0.3) else c.public()
    gw_port = E2O_PORT if r.random() < 0.5 else c.port()  # the classifier must not rely on the port
    leg = c.leg(c.client(), c.port(), gw, gw_port)
    flow = Flow("skype-out")
    t = som_signalling(c, leg, flow, t0, r.randrange(2, 6))
    interval = r.choice((10, 20, 30))
    n = max(160, int(duration(c, 4, 8) // (interval * MS)))
    for d in (0, 1):
        cid = r.randbytes(4)
        redundancy = r.choice((1, 2))
        base = (1 * interval + 8) * redundancy + 4  # rate 8 kbit/s = 1 byte/ms
        prev4 = -1
        for i in range(n):
            size = base + r.choices((-2, -1, 0, 1, 2), (0.05, 0.2, 0.5, 0.2, 0.05))[0]  # std-dev ~0.9 B
            body = bytearray(r.randbytes(size - 4))
            if body[0] == prev4:
                body[0] ^= 0xFF
            prev4 = body[0]
            ts = t + d * r.randrange(1, 9) * MS + i * interval * MS + c.jitter(1.0, interval / 3)
            flow.add(ts, leg.udp(d, cid + bytes(body)))
    return [flow]


# ---------------------------------------------------------------------------------------------------------------------
# Modern Skype / Teams (SIGNATURES.md, "Modern Skype/Teams media" and "Telling PC-to-phone from PC-to-PC today")


def _ufrag(r: random.Random, n: int = 4) -> str:
    return "".join(r.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/") for _ in range(n))


@dataclass(slots=True)
class IceSide:
    ufrag: str
    pwd: bytes
    tiebreak: bytes


def _ice_side(r: random.Random) -> IceSide:
    return IceSide(_ufrag(r), _ufrag(r, 22).encode(), r.randbytes(8))


def ice_request(c: Ctx, me: IceSide, peer: IceSide, *, ms: bool, goog: bool = False) -> bytes:
    """A binding request (connectivity check): USERNAME, PRIORITY, ICE-CONTROLLING, USE-CANDIDATE (RFC 5245), with the
    Microsoft attributes seen on teams.pcap's non-Microsoft leg (0x8054, 0x8070, 0x8037) when `ms`."""
    attrs = [(A_USERNAME, f"{peer.ufrag}:{me.ufrag}".encode())]
    if ms:
        attrs += [(A_MS_CAND_ID, f"{c.rng.getrandbits(32):08x}".encode()), (A_MS_IMPL, u32(2)), (A_MS_APP_ID, u32(2))]
    if goog:
        attrs.append((GOOG_NETWORK_INFO, struct.pack("!HH", 1, c.rng.randrange(1, 20))))
    attrs += [(A_PRIORITY, u32((110 << 24) | c.rng.getrandbits(24))), (A_CONTROLLING, me.tiebreak),
              (A_USE_CAND, b"")]
    return stun(BINDING_REQ, c.rng.randbytes(12), attrs, key=peer.pwd)


def ice_response(req: bytes, src: str, sport: int, me: IceSide) -> bytes:
    txid = req[8:20]
    return stun(BINDING_OK, txid, [(A_XOR_MAPPED, xor_address(src, sport, txid))], key=me.pwd)


def ice_checks(c: Ctx, leg: Leg, flow: Flow, t: int, sides: Sequence[IceSide], who: Sequence[int], *, ms: bool,
               goog: bool = False) -> int:
    """Connectivity checks sent by the directions in `who`, each answered by the other side; returns the end time."""
    rtt = c.rng.randrange(10, 120) * MS
    end = t
    for d in who:
        td = t + (d * c.rng.randrange(5, 60) * MS)
        for _ in range(c.rng.randrange(2, 5)):
            req = ice_request(c, sides[d], sides[1 - d], ms=ms, goog=goog)
            flow.add(td, leg.udp(d, req))
            src, sport = (leg.a, leg.ap) if d == 0 else (leg.b, leg.bp)
            flow.add(td + rtt, leg.udp(1 - d, ice_response(req, src, sport, sides[1 - d])))
            end = max(end, td + rtt)
            td += c.rng.randrange(20, 200) * MS
    return end + c.rng.randrange(5, 50) * MS


def rtp_stream(c: Ctx, leg: Leg, flow: Flow, t: int, dur: int, pt: int, sizes: Callable[[], int], clock: int,
               interval_ms: int = 20, wrap: Callable[[bytes], bytes] | None = None) -> None:
    """RTP both ways; under SRTP the 12-byte header is clear and the rest looks random. sizes() = UDP payload size."""
    for d in (0, 1):
        seq, ts, ssrc = c.rng.getrandbits(16), c.rng.getrandbits(32), c.rng.getrandbits(32)
        for i, when in enumerate(periodic(c, t + d * c.rng.randrange(1, 19) * MS, interval_ms, dur, 1.5)):
            msg = rtp(pt, seq + i, ts + i * clock * interval_ms // 1000, ssrc, c.rng.randbytes(sizes() - 12), i == 0)
            flow.add(when, leg.udp(d, wrap(msg) if wrap else msg))


def modern_p2p(c: Ctx, t0: int) -> list[Flow]:
    """Two full ICE endpoints: checks with MS attributes from BOTH sides, then SILK-WB (PT 104) 66-84 B at 50 pkt/s."""
    leg = c.leg(c.client(), c.client_media_port(), c.public(), c.client_media_port())
    flow = Flow("skype-p2p")
    sides = (_ice_side(c.rng), _ice_side(c.rng))
    t = ice_checks(c, leg, flow, t0, sides, (0, 1), ms=True)
    rtp_stream(c, leg, flow, t, duration(c, 4, 8), 104, lambda: c.rng.randrange(66, 85), 16000)
    return [flow]


def _sbc_call(c: Ctx, t0: int, sbc: str) -> Flow:
    """Media bypass to an SBC: the client checks with MS attributes, the ICE-lite SBC only answers; then G.711."""
    leg = c.leg(c.client(), c.client_media_port(), sbc, c.port())
    flow = Flow("skype-out")
    sides = (_ice_side(c.rng), _ice_side(c.rng))
    t = ice_checks(c, leg, flow, t0, sides, (0,), ms=True)
    rtp_stream(c, leg, flow, t, duration(c, 4, 8), c.rng.choice((0, 8)), lambda: 12 + 160, 8000)
    return flow


def modern_sbc(c: Ctx, t0: int) -> list[Flow]:
    return [_sbc_call(c, t0, c.public())]


def modern_relay(c: Ctx, t0: int) -> list[Flow]:
    """Client <-> Microsoft relay (52.112.0.0/14, 52.122.0.0/15, UDP 3478-3481): MS-TURN allocate with 0x000F, 0x8008,
    0x8055, 0x8050, 0x8095 (as on teams.pcap's relay legs), ICE checks in FF10 multiplexed framing, then RTP PT 104."""
    r = c.rng
    relay, rport = c.ms_media(), r.randrange(3478, 3482)
    leg = c.leg(c.client(), c.client_media_port(), relay, rport)
    flow = Flow("skype-relay")
    mux_id = r.randbytes(8)
    base = [(A_MS_MAGIC, u32(MS_MAGIC_VALUE)), (A_MS_APP_ID, u32(2)), (A_MS_VERSION, u32(6)), (A_MS_8006, u32(1)),
            (A_BANDWIDTH, u32(12000)), (A_MS_QUALITY, struct.pack("!HH", 1, 1))]  # stream type 1 = audio
    rtt = r.randrange(10, 80) * MS
    t = t0
    tx1 = r.randbytes(12)
    flow.add(t, leg.udp(0, stun(ALLOCATE_REQ, tx1, base, fingerprint=False)))
    nonce = r.randbytes(20)
    err = [(A_MS_MAGIC, u32(MS_MAGIC_VALUE)), (A_MS_VERSION, u32(6)), (A_ERROR, struct.pack("!HBB", 0, 4, 1) +
           b"Unauthorized"), (A_REALM, b'"rtcmedia"'), (A_NONCE, nonce)]
    flow.add(t + rtt, leg.udp(1, stun(ALLOCATE_ERR, tx1, err, fingerprint=False)))
    t += rtt + r.randrange(1, 10) * MS
    tx2 = r.randbytes(12)
    user = _ufrag(r, 32).encode()
    auth = [*base, (A_MS_MUX_ID, mux_id), (A_REALM, b'"rtcmedia"'), (A_NONCE, nonce), (A_USERNAME, user)]
    key = r.randbytes(16)
    flow.add(t, leg.udp(0, stun(ALLOCATE_REQ, tx2, auth, key=key, fingerprint=False)))
    ok = [(A_MS_MAGIC, u32(MS_MAGIC_VALUE)), (A_LIFETIME, u32(60)), (A_MAPPED, plain_address(relay, r.randrange(
        49152, 53248))), (A_MS_VERSION, u32(6)), (A_MS_XOR_MAPPED, xor_address(leg.a, leg.ap, tx2)),
        (A_MS_SEQ, r.randbytes(20) + u32(0)), (A_SOFTWARE, b"2.0.1.211")]
    flow.add(t + rtt, leg.udp(1, stun(ALLOCATE_OK, tx2, ok, key=key, fingerprint=False)))
    t += rtt + r.randrange(5, 40) * MS

    def ff10(inner: bytes) -> bytes:  # FF 10, length, 8-byte session ID, inner packet
        return b"\xff\x10" + struct.pack("!H", len(inner) + 8) + mux_id + inner

    sides = (_ice_side(r), _ice_side(r))
    checks = Flow("skype-relay")
    t = ice_checks(c, leg, checks, t, sides, (0, 1), ms=True)
    for ts, frame in checks.pkts:  # re-wrap the relayed checks in FF10 framing
        p = pk.parse(frame)
        assert p is not None
        d = 0 if p.src == leg.a else 1
        flow.add(ts, leg.udp(d, ff10(p.payload)))
    rtp_stream(c, leg, flow, t, duration(c, 4, 8), 104, lambda: r.randrange(66, 85), 16000)
    return [flow]


PSTN_NAMES = ("sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com")


def _dns_flow(c: Ctx, t0: int, name: str, answers: Sequence[str], cls: str, cnames: Sequence[str] = (),
              client: str | None = None) -> Flow:
    qtype = 28 if c.ipv6 else 1
    leg = c.leg(client or c.client(), c.port(), c.public(), 53)
    txid = c.rng.getrandbits(16)
    flow = Flow(cls)
    flow.add(t0, leg.udp(0, dns_query(txid, name, qtype)))
    flow.add(t0 + c.rng.randrange(2, 60) * MS, leg.udp(1, dns_response(txid, name, qtype, answers, cnames=cnames)))
    return flow


def dns_pstn(c: Ctx, t0: int) -> list[Flow]:
    """A DNS answer for a Direct Routing name (SIGNATURES.md: sip*.pstnhub.microsoft.com) teaches an address; a
    modern-sbc-like call to that address follows. The DNS flow itself is plain DNS (class other)."""
    sbc = c.public()
    dns = _dns_flow(c, t0, c.rng.choice(PSTN_NAMES), [sbc], "other")
    call = _sbc_call(c, dns.pkts[-1][0] + c.rng.randrange(50, 500) * MS, sbc)
    return [dns, call]


SKYPE_SNI = ("api.skype.com", "teams.microsoft.com", "login.skype.com", "edge.skype.com", "config.teams.microsoft.com",
             "presence.teams.microsoft.com")
OTHER_SNI = ("www.wikipedia.org", "github.com", "www.debian.org", "duckduckgo.com", "www.python.org",
             "www.openstreetmap.org", "www.bbc.co.uk", "stackoverflow.com", "www.mozilla.org", "news.ycombinator.com")


def tls_session(c: Ctx, t0: int, sni: str, cls: str, client: str | None = None,
                server: str | None = None) -> list[Flow]:
    """TCP handshake, ClientHello with SNI (TLS 1.2 or 1.3), ServerHello, a few records, FIN both ways.
    The server address is random (not Microsoft's) unless given, so only the SNI can tell."""
    r = c.rng
    leg = c.leg(client or c.client(), r.randrange(32768, 61000), server or c.public(), 443)
    flow = Flow(cls)
    tls13 = r.random() < 0.6
    rtt = r.randrange(5, 80) * MS
    cs, ss = r.getrandbits(32), r.getrandbits(32)
    mss = bytes.fromhex("020405b4") + b"\x01\x03\x03\x07" + b"\x04\x02\x00\x00"  # MSS 1460, NOP, WS 7, SACK-perm
    t = t0
    flow.add(t, leg.tcp(0, b"", "S", cs, 0, mss))
    flow.add(t + rtt, leg.tcp(1, b"", "SA", ss, cs + 1, mss))
    t += rtt + MS
    cs += 1
    ss += 1
    flow.add(t, leg.tcp(0, b"", "A", cs, ss))
    seq = [cs, ss]

    def send(d: int, data: bytes, when: int) -> None:
        flow.add(when, leg.tcp(d, data, "PA", seq[d], seq[1 - d]))
        seq[d] += len(data)

    send(0, client_hello(r, sni, tls13), t + 100_000)
    t += rtt
    send(1, server_hello(r, tls13) + app_data(r, r.randrange(1000, 1300)), t)
    t += MS
    send(0, (_tls_record(0x14, b"\x01") if tls13 else b"") + app_data(r, r.randrange(40, 80)), t)
    for _ in range(r.randrange(2, 6)):
        t += r.randrange(1, 300) * MS
        send(0, app_data(r, r.randrange(50, 900)), t)
        t += rtt
        send(1, app_data(r, r.randrange(50, 1300)), t)
    t += r.randrange(100, 2000) * MS
    flow.add(t, leg.tcp(0, b"", "FA", seq[0], seq[1]))
    flow.add(t + rtt, leg.tcp(1, b"", "FA", seq[1], seq[0] + 1))
    flow.add(t + rtt + MS, leg.tcp(0, b"", "A", seq[0] + 1, seq[1] + 1))
    return [flow]


def tls_skype(c: Ctx, t0: int) -> list[Flow]:
    names = (*SKYPE_SNI, f"pub-ent-{c.rng.choice(('euno', 'usea', 'apse'))}-{c.rng.randrange(1, 20):02d}-t"
             ".trouter.teams.microsoft.com")
    return tls_session(c, t0, c.rng.choice(names), "skype-signaling")


def tls_other(c: Ctx, t0: int) -> list[Flow]:
    return tls_session(c, t0, c.rng.choice(OTHER_SNI), "other")


# Names the Teams client opens that are on no Skype/Teams list (teams.pcap: meeting recordings, crash reports), and
# the Azure hosting zones their answers run through there (api.stream.trafficmanager.net, *-apigateway-*.cloudapp.net)
TEAMS_SIDE_NAMES = ("api.microsoftstream.com", "euno-1.api.microsoftstream.com", "gate.hockeyapp.net")


def _azure_chain(c: Ctx, name: str) -> list[str]:
    r = c.rng
    label = name.split(".")[0]
    return [f"{label}-{r.randrange(1, 9)}.trafficmanager.net",
            f"{r.choice(('ams', 'dub', 'sin'))}-{label}-{r.randrange(1, 99)}.cloudapp.net"]


def teams_azure(c: Ctx, t0: int) -> list[Flow]:
    """A Teams client's signalling (SNI of a Teams name), then a DNS answer through Azure's hosting zones for a side
    service of the client (Stream, HockeyApp) and TLS to it: skyguard's host correlation (`host-corr`)."""
    r = c.rng
    client, server = c.client(), c.public()
    teams = tls_session(c, t0, r.choice(SKYPE_SNI), "skype-signaling", client=client)
    name = r.choice(TEAMS_SIDE_NAMES)
    t = teams[0].pkts[-1][0] + r.randrange(100, 20_000) * MS
    dns = _dns_flow(c, t, name, [server], "other", cnames=_azure_chain(c, name), client=client)
    side = tls_session(c, dns.pkts[-1][0] + r.randrange(1, 50) * MS, name, "skype-signaling", client=client,
                       server=server)
    return [*teams, dns, *side]


def azure_web(c: Ctx, t0: int) -> list[Flow]:
    """Decoy for host correlation, each half missing one condition: a Teams client's HTTPS to a server that is not
    Azure-hosted, and another client (no Teams session) to an Azure-hosted server."""
    r = c.rng
    client = c.client()
    teams = tls_session(c, t0, r.choice(SKYPE_SNI), "skype-signaling", client=client)
    t = teams[0].pkts[-1][0] + r.randrange(100, 5_000) * MS
    plain = tls_session(c, t, r.choice(OTHER_SNI), "other", client=client)
    other_client, server = c.client(), c.public()
    name = f"api.{r.choice(('contoso', 'fabrikam', 'northwind'))}-{r.randrange(100)}.example.com"
    dns = _dns_flow(c, t, name, [server], "other", cnames=_azure_chain(c, name), client=other_client)
    hosted = tls_session(c, dns.pkts[-1][0] + r.randrange(1, 50) * MS, name, "other", client=other_client,
                         server=server)
    return [*teams, *plain, dns, *hosted]


# ---------------------------------------------------------------------------------------------------------------------
# Decoys (class other): each shares one trait with Skype but lacks the rest


def sip_rtp(c: Ctx, t0: int) -> list[Flow]:
    """SIP INVITE / 100 / 180 / 200 / ACK on UDP 5060 and G.711 RTP (PT 0/8) between the SDP addresses; BYE at the end.
    No STUN at all."""
    r = c.rng
    client, proxy, media = c.client(), c.public(), c.public()
    cport, mport = r.randrange(10000, 20000, 2), r.randrange(20000, 30000, 2)
    sig = c.leg(client, 5060, proxy, 5060)
    flow = Flow("other")
    pt = r.choice((0, 8))
    call_id, tag, branch = f"{r.getrandbits(64):016x}@{client}", f"{r.getrandbits(32):08x}", r.getrandbits(40)
    user = f"+{r.randrange(10**10, 10**11)}"
    uri = f"sip:{user}@{proxy}"
    host = f"[{client}]" if ":" in client else client

    def hdrs(method: str, cseq: int, to_tag: str = "") -> list[tuple[str, str]]:
        return [("Via", f"SIP/2.0/UDP {host}:5060;branch=z9hG4bK{branch:x}{cseq}"), ("Max-Forwards", "70"),
                ("From", f"<sip:alice@{host}>;tag={tag}"), ("To", f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")),
                ("Call-ID", call_id), ("CSeq", f"{cseq} {method}"), ("Contact", f"<sip:alice@{host}:5060>"),
                ("User-Agent", "decoy-softphone/1.0")]

    rtt = r.randrange(10, 80) * MS
    t = t0
    offer = sdp(client, cport, r.getrandbits(32), [pt, 101])
    flow.add(t, sig.udp(0, sip_message(f"INVITE {uri} SIP/2.0", [*hdrs("INVITE", 1), ("Content-Type",
                                                                                           "application/sdp")], offer)))
    flow.add(t + rtt, sig.udp(1, sip_message("SIP/2.0 100 Trying", hdrs("INVITE", 1))))
    to_tag = f"{r.getrandbits(32):08x}"
    t += rtt + r.randrange(200, 2000) * MS
    flow.add(t, sig.udp(1, sip_message("SIP/2.0 180 Ringing", hdrs("INVITE", 1, to_tag))))
    t += r.randrange(500, 3000) * MS
    answer = sdp(media, mport, r.getrandbits(32), [pt, 101])
    flow.add(t, sig.udp(1, sip_message("SIP/2.0 200 OK", [*hdrs("INVITE", 1, to_tag),
                                                          ("Content-Type", "application/sdp")], answer)))
    t += rtt
    flow.add(t, sig.udp(0, sip_message(f"ACK {uri} SIP/2.0", hdrs("ACK", 1, to_tag))))
    media_flow = Flow("other")
    dur = duration(c, 4, 8)
    rtp_stream(c, c.leg(client, cport, media, mport), media_flow, t + MS, dur, pt, lambda: 172, 8000)
    t += dur + 50 * MS
    flow.add(t, sig.udp(0, sip_message(f"BYE {uri} SIP/2.0", hdrs("BYE", 2, to_tag))))
    flow.add(t + rtt, sig.udp(1, sip_message("SIP/2.0 200 OK", hdrs("BYE", 2, to_tag))))
    return [flow, media_flow]


def webrtc_stun(c: Ctx, t0: int) -> list[Flow]:
    """WebRTC: STUN with the RFC 5389 cookie, PRIORITY / ICE-CONTROLLING both ways (GOOG-NETWORK-INFO, no Microsoft
    attribute), then Opus (PT 111) with variable sizes."""
    leg = c.leg(c.client(), c.port(), c.public(), c.port())
    flow = Flow("other")
    sides = (_ice_side(c.rng), _ice_side(c.rng))
    t = ice_checks(c, leg, flow, t0, sides, (0, 1), ms=False, goog=True)
    rtp_stream(c, leg, flow, t, duration(c, 4, 8), 111, lambda: max(20, min(200, round(c.rng.gauss(90, 25)))),
               48000)
    return [flow]


def random_udp(c: Ctx, t0: int) -> list[Flow]:
    leg = c.leg(c.client(), c.port(), c.public(), c.port())
    flow = Flow("other")
    t = t0
    for _ in range(c.rng.randrange(50, 400)):
        flow.add(t, leg.udp(c.rng.getrandbits(1), c.rng.randbytes(c.rng.randrange(8, 1400))))
        t += int(c.rng.expovariate(1 / 30) * MS) + 1
    return [flow]


def wireguard(c: Ctx, t0: int) -> list[Flow]:
    """WireGuard: handshake initiation (type 1, 148 B) / response (type 2, 92 B), then transport data (type 4):
    type+reserved, the peer's receiver index (constant per direction), 64-bit counter, ciphertext. With VoIP inside:
    8 constant bytes per direction, constant-ish sizes every 20 ms -- the E2O CID statistics must not fire on it."""
    r = c.rng
    leg = c.leg(c.client(), c.port(), c.public(), 51820 if r.random() < 0.5 else c.port())
    flow = Flow("other")
    idx = [r.randbytes(4), r.randbytes(4)]  # sender index of the client, of the server
    flow.add(t0, leg.udp(0, b"\x01\0\0\0" + idx[0] + r.randbytes(140)))
    rtt = r.randrange(10, 100) * MS
    flow.add(t0 + rtt, leg.udp(1, b"\x02\0\0\0" + idx[1] + idx[0] + r.randbytes(80)))
    t = t0 + rtt + 5 * MS
    dur = duration(c, 4, 8)
    inner = r.choice((200, 232, 120))  # IP/UDP/RTP packet inside the tunnel
    for d in (0, 1):
        receiver = idx[1 - d]
        for i, when in enumerate(periodic(c, t + d * r.randrange(1, 19) * MS, 20, dur, 2.0)):
            n = inner + (r.choice((0, 0, 0, 16)))
            size = -(-n // 16) * 16 + 16  # padded to 16, + Poly1305 tag
            flow.add(when, leg.udp(d, b"\x04\0\0\0" + receiver + struct.pack("<Q", i + (d == 0)) + r.randbytes(size)))
    return [flow]


def game(c: Ctx, t0: int) -> list[Flow]:
    """A game protocol: a constant 4-byte header per direction, random rest, 40-300 B, bursts and pauses."""
    r = c.rng
    leg = c.leg(c.client(), c.port(), c.public(), c.port())
    flow = Flow("other")
    hdr = [r.randbytes(4), r.randbytes(4)]
    t = t0
    end = t0 + duration(c, 4, 8)
    while t < end:
        for _ in range(r.randrange(2, 10)):
            d = r.getrandbits(1)
            flow.add(t, leg.udp(d, hdr[d] + r.randbytes(r.randrange(36, 297))))
            t += r.randrange(200, 5000) * 1000
        t += r.randrange(30, 250) * MS
    return [flow]


def dns_kind(c: Ctx, t0: int) -> list[Flow]:
    name = c.rng.choice(OTHER_SNI)
    return [_dns_flow(c, t0, name, [c.public() for _ in range(c.rng.randrange(1, 4))], "other")]


# ---------------------------------------------------------------------------------------------------------------------
# Registry and drivers

Builder = Callable[[Ctx, int], list[Flow]]
KINDS: dict[str, Builder] = {
    "legacy-e2e": legacy_e2e,
    "legacy-e2o": legacy_e2o,
    "modern-p2p": modern_p2p,
    "modern-sbc": modern_sbc,
    "modern-relay": modern_relay,
    "dns-pstn": dns_pstn,
    "tls-skype": tls_skype,
    "tls-other": tls_other,
    "teams-azure": teams_azure,
    "azure-web": azure_web,
    "sip-rtp": sip_rtp,
    "webrtc-stun": webrtc_stun,
    "random-udp": random_udp,
    "wireguard": wireguard,
    "game": game,
    "dns": dns_kind,
}
# the class of each kind's main flow (dns-pstn's DNS lookup and sip-rtp's signalling flow are `other`)
KIND_CLASS = {
    "legacy-e2e": "skype-p2p", "legacy-e2o": "skype-out", "modern-p2p": "skype-p2p", "modern-sbc": "skype-out",
    "modern-relay": "skype-relay", "dns-pstn": "skype-out", "tls-skype": "skype-signaling", "tls-other": "other",
    "teams-azure": "skype-signaling", "azure-web": "other",
    "sip-rtp": "other", "webrtc-stun": "other", "random-udp": "other", "wireguard": "other", "game": "other",
    "dns": "other",
}


def kind_flows(kind: str, rng: random.Random, *, start_ns: int = BASE_NS, ipv6: bool = False,
               vlan: int | None = None) -> list[Flow]:
    """One call (or exchange) of `kind`: its flows, each with its expected class, packets in time order."""
    try:
        builder = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}") from None
    flows = builder(Ctx(rng, ipv6, vlan), start_ns)
    for f in flows:
        f.pkts.sort(key=lambda p: p[0])
    return flows


def kind_packets(kind: str, rng: random.Random, *, start_ns: int = BASE_NS, ipv6: bool = False,
                 vlan: int | None = None) -> list[tuple[int, bytes]]:
    """All packets of one call of `kind`, merged in time order: (ts_ns, Ethernet frame)."""
    flows = kind_flows(kind, rng, start_ns=start_ns, ipv6=ipv6, vlan=vlan)
    return sorted((p for f in flows for p in f.pkts), key=lambda p: p[0])


def _flow_key(frame: bytes) -> tuple[str, int, str, int, int, int]:
    p = pk.parse(frame)
    assert p is not None, "generated a frame that is not UDP/TCP"
    a, b = (p.src, p.sport), (p.dst, p.dport)
    lo, hi = (a, b) if a <= b else (b, a)
    return (*lo, *hi, p.proto, p.vlan)


def label_row(capture: str, kind: str, flow: Flow) -> LabelRow:
    p = pk.parse(flow.pkts[0][1])
    assert p is not None
    a, b = p.endpoints
    return LabelRow(capture, pk_proto(p.proto), a, b, kind, len(flow.pkts), sum(len(f) for _, f in flow.pkts),
                    flow.cls)


def pk_proto(proto: int) -> str:
    return {6: "tcp", 17: "udp"}.get(proto, str(proto))


def generate(seed: int, out_dir: str | Path, kinds: Sequence[str] | None = None, calls: int = 3, *,
             ipv6: bool = False, vlan: int | None = None) -> list[LabelRow]:
    """Write DIR/<kind>.pcap for each kind (`calls` calls each, overlapping in time) and DIR/labels.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[LabelRow] = []
    for kind in kinds or list(KINDS):
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        rng = random.Random(f"skyguard-gen:{seed}:{kind}:{int(ipv6)}:{vlan}")  # str seeds hash with SHA-512: stable
        capture = f"{kind}.pcap"
        start = BASE_NS + rng.randrange(0, 10 * SEC)
        used: set[tuple[str, int, str, int, int, int]] = set()
        flows: list[Flow] = []
        for _ in range(calls):
            while True:  # a (very unlikely) repeated 5-tuple would merge two flows: draw that call again
                call = kind_flows(kind, rng, start_ns=start, ipv6=ipv6, vlan=vlan)
                keys = [_flow_key(f.pkts[0][1]) for f in call]
                if not used.intersection(keys) and len(set(keys)) == len(keys):
                    break
            used.update(keys)
            flows += call
            start += rng.randrange(SEC // 2, 3 * SEC)
        write_pcap(out / capture, sorted((p for f in flows for p in f.pkts), key=lambda p: p[0]))
        rows += [label_row(capture, kind, f) for f in sorted(flows, key=lambda f: f.pkts[0][0])]
    with open(out / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LABEL_FIELDS)
        w.writeheader()
        for row in rows:
            w.writerow(row.as_csv())
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m skyguard.gen", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--calls", type=int, default=3, help="calls per kind (default 3)")
    ap.add_argument("--kinds", default="", help=f"comma-separated subset of: {', '.join(KINDS)}")
    ap.add_argument("--ipv6", action="store_true", help="IPv6 addresses instead of IPv4")
    ap.add_argument("--vlan", type=int, default=None, help="802.1Q VLAN id on every frame")
    ap.add_argument("--json", action="store_true", help="print the label rows as JSON")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k] or None
    try:
        rows = generate(args.seed, args.out, kinds, args.calls, ipv6=args.ipv6, vlan=args.vlan)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"out": str(args.out), "labels": [r.as_csv() for r in rows]}, indent=1))
    else:
        for r in rows:
            print(f"{r.capture:18} {r.proto} {r.endpoint_a:>42} -> {r.endpoint_b:<42} {r.cls:16} {r.packets:6}")
        print(f"{len(rows)} flows written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
