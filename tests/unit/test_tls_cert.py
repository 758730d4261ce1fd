"""Server certificate names decide TLS flows whose ClientHello carries no SNI (skype.pcap's 2015 client)."""

from __future__ import annotations

from skyguard import wire
from skyguard.lab import packet as pk
from skyguard.offline.pcap import read_packets
from skyguard.policy import default_policy
from skyguard.slowpath.classify import SlowPath
from skyguard.slowpath.tls import certificate_common_names


def _first_payloads(path, port):
    """(client first payload, server first payload) of the TCP flow on client port `port`."""
    client = server = None
    for p in read_packets(path):
        x = pk.parse(p.frame)
        if x is None or x.proto != 6 or not x.payload:
            continue
        if x.sport == port and client is None:
            client = (x, x.payload)
        elif x.dport == port and server is None:
            server = (x, x.payload)
    return client, server


def test_certificate_common_names_from_real_server_flight(captures):
    (_cx, chello), (_sx, shello) = _first_payloads(captures / "skype.pcap", 50028)
    assert chello[:2] == b"\x16\x03" and chello[5] == 0x01  # a ClientHello ...
    names = certificate_common_names(shello[:512])
    assert "*.gateway.messenger.live.com" in names
    assert certificate_common_names(chello) == []  # ... is not a server flight
    assert certificate_common_names(shello[:40]) == []  # cut before any certificate


def test_no_sni_hello_then_skype_certificate_decides_signaling(captures):
    (cx, chello), (sx, shello) = _first_payloads(captures / "skype.pcap", 50028)
    sp = SlowPath(default_policy())
    key = wire.FlowKey.make(cx.src, cx.sport, cx.dst, cx.dport, 6)
    ev_c = wire.Event(wire.EV_TLS, 0, 1, key, payload_len=len(chello), data=chello[:512])
    ev_s = wire.Event(wire.EV_TLS, 1, 2, key, payload_len=len(shello), data=shello[:512])
    assert sp.on_event(ev_c) == []
    out = sp.on_event(ev_s)
    assert len(out) == 1 and out[0].cls == wire.SIGNALING and "gateway.messenger.live.com" in out[0].detail


def test_certificate_ignored_when_client_named_another_server(captures):
    """A shared certificate must not override the name the client asked for."""
    (cx, _chello), (sx, shello) = _first_payloads(captures / "skype.pcap", 50028)
    sp = SlowPath(default_policy())
    key = wire.FlowKey.make(cx.src, cx.sport, cx.dst, cx.dport, 6)
    sp.note_sni(key, "www.example.org")
    assert sp.on_event(wire.Event(wire.EV_TLS, 1, 2, key, payload_len=len(shello), data=shello[:512])) == []
