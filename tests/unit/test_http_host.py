"""Plain-HTTP Host (slowpath/http.py) and the decisions built on it and on Direct Routing names (classify.py)."""

from __future__ import annotations

import pytest

from skyguard import wire
from skyguard.policy import PolicyError, default_policy, parse_policy
from skyguard.slowpath.classify import SlowPath
from skyguard.slowpath.http import request_host


@pytest.mark.parametrize(("data", "host"), [
    (b"GET / HTTP/1.1\r\nHost: ui.skype.com\r\n\r\n", "ui.skype.com"),
    (b"HEAD /x HTTP/1.0\r\nUser-Agent: a\r\nhOsT:  Download.Skype.com:80 \r\n\r\n", "download.skype.com"),
    (b"GET http://apps.skype.com:8080/a HTTP/1.1\r\nHost: other.example\r\n\r\n", "apps.skype.com"),
    (b"GET / HTTP/1.1\r\nHost: ui.sky", None),  # cut inside the field
    (b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n", None),  # an address names no service
    (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n", None),
    (b"GET / HTTP/2.0\r\nHost: ui.skype.com\r\n\r\n", None),
    (b"\x16\x03\x01\x00\x10", None),
    (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\nHost: ui.skype.com\r\n", None),  # after the header section: body
    (b"GET / HTTP/1.1\r\nbroken line\r\nHost: ui.skype.com\r\n\r\n", None),
])
def test_request_host(data, host):
    assert request_host(data) == host


def _key(port: int = 80) -> wire.FlowKey:
    return wire.FlowKey.make("10.0.0.5", 40000, "198.51.100.1", port, 6)


def test_http_host_of_a_skype_name_is_signaling_and_others_decide_nothing():
    sp = SlowPath(default_policy())
    ev = wire.Event(wire.EV_HTTP, 0, 1, _key(), data=b"GET / HTTP/1.1\r\nHost: ui.skype.com\r\n\r\n")
    [d] = sp.on_event(wire.Event.unpack(ev.pack()))
    assert (d.cls, d.reason, d.detail) == (wire.SIGNALING, wire.C["SG_R_HTTP_HOST"], "Host ui.skype.com")
    other = wire.Event(wire.EV_HTTP, 0, 1, wire.FlowKey.make("10.0.0.5", 40001, "198.51.100.1", 80, 6),
                       data=b"GET / HTTP/1.1\r\nHost: skype.com.example.org\r\n\r\n")
    assert sp.on_event(other) == []


def _hello(name: str) -> bytes:
    from tests.unit.test_classify import _hello as hello

    return hello(name)


def test_direct_routing_proxy_name_is_the_trunk_skype_out():
    sp = SlowPath(default_policy())
    [d] = sp.on_event(wire.Event(wire.EV_TLS, 0, 1, _key(5061), data=_hello("sip2.pstnhub.microsoft.com")))
    assert (d.cls, d.reason) == (wire.OUT, wire.C["SG_R_DR_TRUNK"])
    [d] = sp.on_event(wire.Event(wire.EV_TLS, 0, 1, _key(443), data=_hello("teams.microsoft.com")))
    assert (d.cls, d.reason) == (wire.SIGNALING, wire.C["SG_R_SNI"])


def test_qos_policy_defaults_overrides_and_refusals():
    p = parse_policy('name = "q"\n[class.skype-p2p]\naction = "drop"\n[qos]\nmedia = true\nvideo = [51000, 51009]\n'
                     'audio_dscp = 40\n')
    assert [(k.name, k.lo, k.hi, k.dscp) for k in p.qos_kinds] == [
        ("audio", 50000, 50019, 40), ("video", 51000, 51009, 34), ("sharing", 50040, 50059, 18)]
    assert [p.slot(c).qos for c in (wire.P2P, wire.OUT, wire.RELAY, wire.SIGNALING)] == [False, True, True, False]
    off = parse_policy('name = "q"\n[qos]\nmedia = false\n')
    assert off.qos_kinds == (None, None, None) and not any(s.qos for s in off.slots)
    assert [str(n) for n in off.drmedia_prefixes] == ["52.112.0.0/14", "52.120.0.0/14", "52.127.88.0/21",
                                                      "52.127.64.0/21"]
    dr = parse_policy('name = "q"\n[direct_routing]\nmedia_prefixes = ["203.0.113.0/24"]\n')
    assert [str(n) for n in dr.drmedia_prefixes] == ["203.0.113.0/24"]
    with pytest.raises(PolicyError) as e:
        parse_policy('name = "q"\n[qos]\nmedia = true\naudio = [50019, 50000]\nvideo_dscp = 64\n', "p.toml")
    assert e.value.lines() == ["p.toml:4: qos.audio must be [first, last] ports, 1 <= first <= last <= 65535",
                               "p.toml:5: qos.video_dscp must be an integer 0..63 (DSCP)"]
