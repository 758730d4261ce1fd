"""The generator's kinds of traffic: legacy Skype, modern Skype/Teams, DNS and TLS names, and the decoys that share one
trait with Skype but lack the rest. Each kind builds the flows of one call from a Ctx."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from skyguard.lab import packet as pk
from skyguard.lab.payloads import (
    A_BANDWIDTH,
    A_CONTROLLING,
    A_ERROR,
    A_LIFETIME,
    A_MAPPED,
    A_MS_8006,
    A_MS_APP_ID,
    A_MS_CAND_ID,
    A_MS_IMPL,
    A_MS_MAGIC,
    A_MS_MUX_ID,
    A_MS_QUALITY,
    A_MS_SEQ,
    A_MS_VERSION,
    A_MS_XOR_MAPPED,
    A_NONCE,
    A_PRIORITY,
    A_REALM,
    A_SOFTWARE,
    A_USE_CAND,
    A_USERNAME,
    A_XOR_MAPPED,
    ALLOCATE_ERR,
    ALLOCATE_OK,
    ALLOCATE_REQ,
    BINDING_OK,
    BINDING_REQ,
    GOOG_NETWORK_INFO,
    MS_MAGIC_VALUE,
    _tls_record,
    app_data,
    client_hello,
    dns_query,
    dns_response,
    plain_address,
    rtp,
    sdp,
    server_hello,
    sip_message,
    stun,
    u32,
    xor_address,
)
from skyguard.lab.traffic import E2O_GATEWAYS, E2O_PORT, MS, Ctx, Flow, Leg, duration, periodic

# ---------------------------------------------------------------------------------------------------------------------
# Legacy Skype (docs/signatures.md, "Legacy Skype over UDP" and "Legacy SkypeOut")


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
# Modern Skype / Teams (docs/signatures.md, "STUN and TURN with Microsoft attributes", "ICE behaviour", "PC-to-phone
# today")


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
    """A DNS answer for a Direct Routing name (docs/signatures.md, "PC-to-phone today": sip*.pstnhub.microsoft.com)
    teaches an address; a modern-sbc-like call to that address follows. The DNS flow itself is plain DNS (class
    other)."""
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
