"""The generator's kinds for issue 16's evidence, each with its decoys: learned endpoints (a legacy client's Skype port;
NAT, port reuse after the TTL, busy services), plain-HTTP names, ICE without optional attributes, and Teams Phone at a
company's edge (the Direct Routing trunk and the media between an SBC and Microsoft's media processors; SIP/TLS to a
carrier, HTTPS to Microsoft's ranges, carrier RTP). Wire facts: docs/signatures.md."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

from skyguard.lab.kinds import _ice_side, _ufrag, ice_response, rtp_stream, som, som_signalling
from skyguard.lab.payloads import (
    A_CONTROLLING,
    A_MS_APP_ID,
    A_MS_CAND_ID,
    A_MS_IMPL,
    A_PRIORITY,
    A_USERNAME,
    BINDING_REQ,
    _ext,
    _handshake,
    _tls_record,
    _vec,
    app_data,
    client_hello,
    dns_query,
    dns_response,
    server_hello,
    stun,
    u32,
)
from skyguard.lab.traffic import MS, SEC, Ctx, Flow, Leg, duration, periodic

# The endpoint TTL the kernel keeps a learned endpoint for (SG_EP_TTL_S in bpf/skyguard.h)
EP_TTL_S = 120
# Microsoft's Direct Routing SIP proxies and media processors (docs/signatures.md, "Teams Phone at a company's edge")
DR_PROXIES = ("sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com")
DR_MEDIA_V4 = (ipaddress.ip_network("52.112.0.0/14"), ipaddress.ip_network("52.120.0.0/14"))
DR_PORTS = (49152, 53247)
CARRIER_NAMES = ("sip.telco-one.example.net", "trunk.carrier2.example.com", "sbc.voip-provider.example.org")
HTTP_SKYPE = ("ui.skype.com", "download.skype.com", "apps.skype.com", "c.skype.com", "get.skype.com")
HTTP_OTHER = ("www.example.org", "archive.ubuntu.com", "deb.debian.org", "detectportal.firefox.com", "neverssl.com")


def _v4(c: Ctx) -> Ctx:
    """The same randomness, IPv4 addresses: Direct Routing's documented media ranges are IPv4."""
    return Ctx(c.rng, False, c.vlan)


def _in(c: Ctx, nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    net = c.rng.choice(nets)
    return str(net.network_address + c.rng.randrange(1, net.num_addresses - 1))


# ---------------------------------------------------------------------------------------------------------------------
# Legacy Skype: a client's Skype port, learned from a call, then new peers (docs/signatures.md, "Learned endpoints")


def _e2e(c: Ctx, t0: int, client: str, port: int, cls: str = "skype-p2p") -> Flow:
    """A legacy PC-to-PC call from client:port (as kinds.legacy_e2e): SoM signalling, then data frames both ways."""
    leg = c.leg(client, port, c.public(), c.port())
    flow = Flow(cls)
    t = som_signalling(c, leg, flow, t0, c.rng.randrange(3, 9))
    dur = duration(c, 3, 5)
    for d in (0, 1):
        interval = c.rng.choice((20, 30, 60))
        for ft in periodic(c, t + d * c.rng.randrange(1, 15) * MS, interval, dur, 2.0):
            flow.add(ft, leg.udp(d, som(c, 0x0D, max(5, min(160, round(c.rng.gauss(67, 7.5)))))))
    return flow


def _short_probe(c: Ctx, leg: Leg, flow: Flow, t: int) -> None:
    """1-3 packets that no per-flow signature decides: a message ID the probe rule refuses (0x00, 0x80, ...) or a
    short data frame, answered or not."""
    r = c.rng
    for i in range(r.randrange(1, 4)):
        body = bytearray(som(c, r.choice((0x02, 0x03, 0x0D, 0x07)), r.randrange(11, 40)))
        if i == 0 and r.random() < 0.7:
            body[0] = r.choice((0x00, 0x80, 0xC0, 0x30))
        flow.add(t, leg.udp(i % 2 if r.random() < 0.5 else 0, bytes(body)))
        t += r.randrange(20, 300) * MS


def legacy_endpoint(c: Ctx, t0: int) -> list[Flow]:
    """A legacy client calls from its Skype port, then (within the endpoint TTL) reaches peers it had not spoken to,
    and peers reach it, with flows of 1-3 packets: skype-signaling by the learned endpoint (known-endpoint)."""
    client, port = c.client(), c.port()
    call = _e2e(c, t0, client, port)
    t = call.pkts[-1][0] + c.rng.randrange(1, 30) * SEC
    out = [call]
    for _ in range(c.rng.randrange(3, 7)):
        peer, pport = c.public(), c.port()
        leg = c.leg(client, port, peer, pport) if c.rng.random() < 0.7 else c.leg(peer, pport, client, port)
        flow = Flow("skype-signaling")
        _short_probe(c, leg, flow, t)
        out.append(flow)
        t += c.rng.randrange(100, 8000) * MS
    return out


def nat_users(c: Ctx, t0: int) -> list[Flow]:
    """Decoy: many users behind one NAT address. One calls (its endpoint is learned); the others' UDP from other ports
    of the same address (a game, random UDP, a WebRTC-like STUN exchange without Microsoft attributes) is not Skype."""
    r = c.rng
    nat, port = c.public(), c.port()
    out = [_e2e(c, t0, nat, port)]
    t = t0 + r.randrange(1, 10) * SEC
    for _ in range(r.randrange(3, 7)):
        other = c.port()
        if other == port:
            continue
        leg = c.leg(nat, other, c.public(), c.port())
        flow = Flow("other")
        hdr = [r.randbytes(4), r.randbytes(4)] if r.random() < 0.5 else [b"", b""]  # a game's constant header, or none
        for i in range(r.randrange(10, 60)):
            d = r.getrandbits(1)
            flow.add(t + i * r.randrange(5, 80) * MS, leg.udp(d, hdr[d] + r.randbytes(r.randrange(20, 900))))
        out.append(flow)
        t += r.randrange(100, 3000) * MS
    return out


def port_reuse(c: Ctx, t0: int) -> list[Flow]:
    """Decoy: after a legacy call from client:port, the endpoint TTL passes and another application reuses the port
    (random UDP, a constant-header game protocol) towards new peers: not Skype."""
    r = c.rng
    client, port = c.client(), c.port()
    call = _e2e(c, t0, client, port)
    t = call.pkts[-1][0] + (EP_TTL_S + r.randrange(10, 120)) * SEC
    out = [call]
    for _ in range(r.randrange(1, 4)):
        leg = c.leg(client, port, c.public(), c.port())
        flow = Flow("other")
        hdr = r.randbytes(4)
        for i in range(r.randrange(3, 40)):
            body = hdr + r.randbytes(r.randrange(20, 200)) if r.random() < 0.5 else r.randbytes(r.randrange(8, 600))
            flow.add(t + i * r.randrange(5, 60) * MS, leg.udp(r.getrandbits(1), body))
        out.append(flow)
        t += r.randrange(100, 2000) * MS
    return out


def busy_service(c: Ctx, t0: int) -> list[Flow]:
    """Decoy: a Skype client (its port learned from a call) talks to a DNS resolver and an NTP server, from its Skype
    port and from others, and other clients use the same resolver: none of it is Skype."""
    r = c.rng
    client, port = c.client(), c.port()
    resolver, ntp = c.public(), c.public()
    out = [_e2e(c, t0, client, port)]
    t = t0 + r.randrange(2, 20) * SEC
    qtype = 28 if c.ipv6 else 1
    for src, sport in [(client, port), (client, c.port()), (c.client(), c.port()), (c.client(), c.port())]:
        leg = c.leg(src, sport, resolver, 53)
        flow = Flow("other")
        name = r.choice(HTTP_OTHER)
        txid = r.getrandbits(16)
        flow.add(t, leg.udp(0, dns_query(txid, name, qtype)))
        flow.add(t + r.randrange(2, 40) * MS, leg.udp(1, dns_response(txid, name, qtype, [c.public()])))
        out.append(flow)
        t += r.randrange(50, 2000) * MS
    leg = c.leg(client, port, ntp, 123)
    flow = Flow("other")
    for i in range(r.randrange(1, 5)):
        flow.add(t + i * SEC, leg.udp(0, b"\x23" + r.randbytes(47)))
        flow.add(t + i * SEC + 20 * MS, leg.udp(1, b"\x24" + r.randbytes(47)))
    out.append(flow)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Plain HTTP (docs/signatures.md, "TLS names and host correlation": the Host header)


def tcp_session(c: Ctx, t0: int, leg: Leg, cls: str, exchanges: Sequence[tuple[bytes, bytes]]) -> Flow:
    """TCP handshake, then request/response pairs, FIN both ways."""
    r = c.rng
    flow = Flow(cls)
    rtt = r.randrange(5, 80) * MS
    seq = [r.getrandbits(32), r.getrandbits(32)]
    flow.add(t0, leg.tcp(0, b"", "S", seq[0], 0))
    flow.add(t0 + rtt, leg.tcp(1, b"", "SA", seq[1], seq[0] + 1))
    seq = [seq[0] + 1, seq[1] + 1]
    t = t0 + rtt + MS
    flow.add(t, leg.tcp(0, b"", "A", seq[0], seq[1]))
    for req, resp in exchanges:
        for d, data in ((0, req), (1, resp)):
            t += MS if d == 0 else rtt
            if data:
                flow.add(t, leg.tcp(d, data, "PA", seq[d], seq[1 - d]))
                seq[d] += len(data)
        t += r.randrange(1, 500) * MS
    flow.add(t, leg.tcp(0, b"", "FA", seq[0], seq[1]))
    flow.add(t + rtt, leg.tcp(1, b"", "FA", seq[1], seq[0] + 1))
    flow.add(t + rtt + MS, leg.tcp(0, b"", "A", seq[0] + 1, seq[1] + 1))
    return flow


def _http(c: Ctx, t0: int, host: str, cls: str) -> Flow:
    r = c.rng
    leg = c.leg(c.client(), r.randrange(32768, 61000), c.public(), 80)
    path = r.choice(("/", "/ui/0/8.0.0.1/en/getlatestversion", "/favicon.ico", "/download", "/index.html"))
    req = (f"{r.choice(('GET', 'GET', 'HEAD', 'POST'))} {path} HTTP/1.1\r\nHost: {host}\r\n"
           f"User-Agent: {r.choice(('Skype/8.0', 'Mozilla/5.0', 'curl/8.0'))}\r\nAccept: */*\r\n\r\n").encode()
    body = r.randbytes(r.randrange(0, 1000))
    resp = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    return tcp_session(c, t0, leg, cls, [(req, resp)])


def http_skype(c: Ctx, t0: int) -> list[Flow]:
    """A plain-HTTP request to a Skype name on TCP 80 (legacy clients fetched updates and UI files so)."""
    return [_http(c, t0, c.rng.choice(HTTP_SKYPE), "skype-signaling")]


def http_other(c: Ctx, t0: int) -> list[Flow]:
    """Decoy: plain HTTP to other names, one of them under skype.com's look-alike (skype.com.example.org)."""
    host = c.rng.choice((*HTTP_OTHER, "skype.com.example.org", "notskype.com"))
    return [_http(c, t0, host, "other")]


# ---------------------------------------------------------------------------------------------------------------------
# ICE without optional attributes (docs/signatures.md, "ICE behaviour")


def p2p_bare(c: Ctx, t0: int) -> list[Flow]:
    """Two Teams/Skype clients' connectivity checks with USERNAME and Microsoft attributes but no PRIORITY or
    ICE-CONTROLLING (some of them with, some without), from both sides, then SILK: a PC-to-PC call."""
    r = c.rng
    leg = c.leg(c.client(), c.client_media_port(), c.public(), c.port())
    flow = Flow("skype-p2p")
    sides = (_ice_side(r), _ice_side(r))
    rtt = r.randrange(10, 120) * MS
    t = t0
    for _ in range(r.randrange(2, 4)):
        for d in (0, 1):
            me, peer = sides[d], sides[1 - d]
            attrs = [(A_USERNAME, f"{peer.ufrag}:{me.ufrag}".encode()),
                     (A_MS_CAND_ID, f"{r.getrandbits(32):08x}".encode()), (A_MS_IMPL, u32(2)), (A_MS_APP_ID, u32(2))]
            if r.random() < 0.2:  # now and then one check with the optional attributes
                attrs += [(A_PRIORITY, u32((110 << 24) | r.getrandbits(24))), (A_CONTROLLING, me.tiebreak)]
            req = stun(BINDING_REQ, r.randbytes(12), attrs, key=peer.pwd)
            td = t + d * r.randrange(5, 60) * MS
            flow.add(td, leg.udp(d, req))
            src, sport = (leg.a, leg.ap) if d == 0 else (leg.b, leg.bp)
            flow.add(td + rtt, leg.udp(1 - d, ice_response(req, src, sport, peer)))
        t += r.randrange(20, 200) * MS
    rtp_stream(c, leg, flow, t + rtt + 50 * MS, duration(c, 3, 6), 104, lambda: r.randrange(66, 85), 16000)
    return [flow]


# ---------------------------------------------------------------------------------------------------------------------
# Teams Phone at a company's edge: Direct Routing (docs/signatures.md, "Teams Phone at a company's edge")


def _client_hello_no_sni(c: Ctx) -> bytes:
    """A TLS 1.2 ClientHello without server_name (some SBCs send none; the certificate then names the server)."""
    r = c.rng
    suites = b"".join(struct.pack("!H", s) for s in (0xC02F, 0xC030, 0xC02B, 0xC02C, 0x009C, 0x002F))
    exts = _ext(0x000A, _vec(2, struct.pack("!2H", 0x0017, 0x0018))) + _ext(0x000B, _vec(1, b"\x00"))
    body = (struct.pack("!H", 0x0303) + r.randbytes(32) + _vec(1, b"") + _vec(2, suites) + _vec(1, b"\x00")
            + _vec(2, exts))
    return _tls_record(0x16, _handshake(0x01, body), 0x0301)


def _certificate(c: Ctx, cn: str) -> bytes:
    """A Certificate handshake record whose certificate carries subject CN `cn` (DER: SET { SEQ { OID 2.5.4.3,
    PrintableString } }) and a CA's issuer CN; the rest is filler, as the classifier reads only the CNs."""
    def name(value: bytes) -> bytes:
        atv = b"\x06\x03\x55\x04\x03" + b"\x13" + bytes([len(value)]) + value
        return b"\x31" + bytes([len(atv) + 2]) + b"\x30" + bytes([len(atv)]) + atv

    tbs = c.rng.randbytes(40) + name(b"Example Issuing CA 07") + c.rng.randbytes(30) + name(cn.encode())
    cert = b"\x30\x81" + bytes([len(tbs)]) + tbs
    lst = len(cert).to_bytes(3, "big") + cert
    return _tls_record(0x16, _handshake(0x0B, len(lst).to_bytes(3, "big") + lst))


def _trunk(c: Ctx, t0: int, server: str, name: str, cls: str) -> Flow:
    """An SBC's SIP/TLS trunk on TCP 5061: TLS (SNI, or no SNI and the server's certificate), then SIP OPTIONS pings
    and calls as application data."""
    r = c.rng
    leg = c.leg(c.client() if r.random() < 0.5 else c.public(), r.randrange(1024, 65000), server, 5061)
    sni = r.random() < 0.6
    tls13 = sni and r.random() < 0.5
    hello = client_hello(r, name, tls13) if sni else _client_hello_no_sni(c)
    flight = server_hello(r, tls13) + (b"" if tls13 else _certificate(c, name)) + app_data(r, r.randrange(20, 80))
    ex = [(hello, flight), (app_data(r, r.randrange(40, 80)), b"")]
    ex += [(app_data(r, r.randrange(300, 1200)), app_data(r, r.randrange(300, 900))) for _ in range(r.randrange(3, 12))]
    return tcp_session(c, t0, leg, cls, ex)


def dr_trunk(c: Ctx, t0: int) -> list[Flow]:
    """The Direct Routing trunk: an SBC's TLS to sip/sip2/sip3.pstnhub.microsoft.com (52.112.0.0/14): skype-out."""
    c4 = _v4(c)
    return [_trunk(c4, t0, _in(c4, DR_MEDIA_V4[:1]), c.rng.choice(DR_PROXIES), "skype-out")]


def carrier_trunk(c: Ctx, t0: int) -> list[Flow]:
    """Decoy: an SBC's SIP/TLS to a carrier that is not Microsoft (its own name, by SNI or certificate)."""
    return [_trunk(c, t0, c.public(), c.rng.choice(CARRIER_NAMES), "other")]


def _srtp_call(c: Ctx, leg: Leg, flow: Flow, t: int, pt: int) -> None:
    """SRTP both ways (clear 12-byte header), SRTCP every ~5 s both ways."""
    size = {0: 172, 8: 172, 9: 172, 18: 32, 104: 80}[pt]
    dur = duration(c, 3, 6)
    rtp_stream(c, leg, flow, t, dur, pt, lambda: size + c.rng.randrange(0, 10) * (pt == 104), 8000)
    for d in (0, 1):
        for k in range(int(dur // (5 * SEC)) + 1):  # SRTCP sender report: 0x80 0xc8 (PT 200), then encrypted
            flow.add(t + k * 5 * SEC + d * 7 * MS, leg.udp(d, b"\x80\xc8\x00\x06" + c.rng.randbytes(40)))


def dr_media(c: Ctx, t0: int) -> list[Flow]:
    """Media between an SBC and a Direct Routing media processor (52.112.0.0/14, 52.120.0.0/14; port 49152-53247),
    sometimes after the processor's ICE checks with Microsoft attributes (the ICE-lite SBC only answers): skype-out."""
    c4 = _v4(c)
    r = c.rng
    mp, mport = _in(c4, DR_MEDIA_V4), r.randrange(DR_PORTS[0], DR_PORTS[1] + 1)
    sbc = c4.client() if r.random() < 0.5 else c4.public()
    leg = c4.leg(sbc, r.randrange(10000, 30000, 2), mp, mport) if r.random() < 0.5 else \
        c4.leg(mp, mport, sbc, r.randrange(10000, 30000, 2))
    flow = Flow("skype-out")
    t = t0
    if r.random() < 0.5:
        mp_dir = 0 if leg.a == mp else 1
        sides = (_ice_side(r), _ice_side(r))
        for _ in range(r.randrange(2, 5)):
            attrs = [(A_USERNAME, f"{_ufrag(r)}:{_ufrag(r)}".encode()), (A_MS_IMPL, u32(2)),
                     (A_PRIORITY, u32((126 << 24) | r.getrandbits(24))), (A_CONTROLLING, sides[mp_dir].tiebreak)]
            req = stun(BINDING_REQ, r.randbytes(12), attrs, key=sides[1 - mp_dir].pwd)
            flow.add(t, leg.udp(mp_dir, req))
            src, sport = (leg.a, leg.ap) if mp_dir == 0 else (leg.b, leg.bp)
            flow.add(t + 20 * MS, leg.udp(1 - mp_dir, ice_response(req, src, sport, sides[1 - mp_dir])))
            t += r.randrange(20, 100) * MS
    _srtp_call(c4, leg, flow, t, r.choice((0, 8, 9, 104, 18)))
    return [flow]


def carrier_rtp(c: Ctx, t0: int) -> list[Flow]:
    """Decoys: an SBC's G.711 RTP with its carrier (not Microsoft, on the carrier's port in 49152-53247), and RTP to a
    Microsoft address on a port outside the processors' range."""
    c4 = _v4(c)
    r = c.rng
    sbc = c4.client()
    carrier = c4.leg(sbc, r.randrange(10000, 30000, 2), c4.public(), r.randrange(DR_PORTS[0], DR_PORTS[1] + 1))
    f1 = Flow("other")
    _srtp_call(c4, carrier, f1, t0, r.choice((0, 8)))
    off = c4.leg(sbc, r.randrange(10000, 30000, 2), _in(c4, DR_MEDIA_V4), r.randrange(20000, 49152))
    f2 = Flow("other")
    _srtp_call(c4, off, f2, t0 + r.randrange(1, 5) * SEC, r.choice((0, 8)))
    return [f1, f2]


def ms_https(c: Ctx, t0: int) -> list[Flow]:
    """Decoy: HTTPS (TLS over TCP 443, and QUIC on UDP 443) from a client's ephemeral port to Microsoft's media and
    Direct Routing ranges, for a name that is not Skype/Teams."""
    c4 = _v4(c)
    r = c.rng
    server = _in(c4, DR_MEDIA_V4)
    name = r.choice(("www.office.com", "outlook.office.com", "www.bing.com", "login.microsoftonline.com"))
    leg = c4.leg(c4.client(), r.randrange(50060, 61000), server, 443)  # not a Teams client media port
    hello = client_hello(r, name, True)
    tls = tcp_session(c4, t0, leg, "other", [(hello, server_hello(r, True) + app_data(r, 900))] +
                      [(app_data(r, r.randrange(50, 600)), app_data(r, r.randrange(100, 1300))) for _ in range(4)])
    quic = Flow("other")
    qleg = c4.leg(c4.client(), r.randrange(50060, 61000), _in(c4, DR_MEDIA_V4), 443)
    for i in range(r.randrange(10, 40)):
        first = bytes([0xC0 | r.randrange(16)]) if i < 2 else bytes([0x40 | r.randrange(64)])
        quic.add(t0 + i * r.randrange(2, 40) * MS, qleg.udp(i % 2, first + r.randbytes(r.randrange(40, 1200))))
    return [tls, quic]
