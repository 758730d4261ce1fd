"""Issue 16 through the whole classifier (XDP program + slow path, via `replay`): learned endpoints, plain-HTTP names,
ICE without optional attributes, Teams Phone at a company's edge (Direct Routing trunk and media), DSCP by media kind.

Generated traffic with seeds the classifier was not tuned on; every new kind comes with its decoys (gen.DECOY_KINDS).
"""

from __future__ import annotations

import glob
import ipaddress
import struct

import pytest

from skyguard import wire
from skyguard.lab import gen
from skyguard.lab.score import flow_id, read_gen_labels, score_generated
from skyguard.offline.replay import replay
from skyguard.policy import parse_policy

from .packets import udp4

pytestmark = pytest.mark.bpf

NEW_KINDS = ["legacy-endpoint", "http-skype", "p2p-bare", "dr-trunk", "dr-media", "nat-users", "port-reuse",
             "busy-service", "http-other", "carrier-trunk", "carrier-rtp", "ms-https"]
# the kinds whose meaning the new rows must not change: relay legs, ICE-lite SBCs, WebRTC, SIP
KEPT_KINDS = ["modern-relay", "modern-sbc", "modern-p2p", "webrtc-stun", "sip-rtp"]
PHONE_KINDS = ("dr-trunk", "dr-media", "modern-sbc")


@pytest.mark.parametrize("seed", [6061, 80861])
def test_new_kinds_and_decoys_on_untuned_seeds(bpf_ok, tmp_path, seed):
    gen.generate(seed, tmp_path, kinds=NEW_KINDS + KEPT_KINDS, calls=8)
    r = replay(sorted(glob.glob(str(tmp_path / "*.pcap"))))
    labels = read_gen_labels(tmp_path / "labels.csv")
    c = score_generated(r.flows, labels)
    print(c.table())
    assert c.false_out() == 0, c.table()
    for cls in ("skype-out", "skype-p2p", "skype-relay", "skype-signaling"):
        assert c.recall(cls) >= 0.99, (cls, c.table())
    rows = {flow_id(f["capture"], f["proto"], f["a"], f["b"]): f for f in r.flows}
    by_kind: dict[str, list[dict]] = {}
    for lab in labels:
        by_kind.setdefault(lab["label"], []).append(
            {**rows[flow_id(lab["capture"], lab["proto"], lab["endpoint_a"], lab["endpoint_b"])], "want": lab["class"]})
    for kind in gen.DECOY_KINDS:  # every decoy flow of every decoy kind is non-Skype
        for f in by_kind.get(kind, []):
            if f["want"] == "other":
                assert not f["class"].startswith("skype-"), (kind, f)
    # each new kind decided by its own evidence; the kinds kept keep theirs
    reasons = {"legacy-endpoint": ("skype-signaling", {"known-endpoint"}),
               "http-skype": ("skype-signaling", {"http-host"}), "p2p-bare": ("skype-p2p", {"ice-both"}),
               "dr-trunk": ("skype-out", {"dr-trunk"}), "dr-media": ("skype-out", {"dr-media"}),
               "modern-relay": ("skype-relay", {"ms-prefix"}),
               "modern-sbc": ("skype-out", {"ice-lite", "rtp-static-pt"}), "modern-p2p": ("skype-p2p", {"ice-both"})}
    for kind, (cls, allowed) in reasons.items():
        got = {f["reason"] for f in by_kind[kind] if f["want"] == cls and f["class"] == cls}
        assert got and got <= allowed, (kind, got)
    # time to verdict of each phone kind: packets of the flow when it became skype-out
    first: dict[str, dict] = {}
    for d in r.decisions:
        if d["new"] == "skype-out":
            first.setdefault(d["flow"], d)
    assert len(first) == sum(1 for lab in labels if lab["class"] == "skype-out")
    assert max(d["flow_packets"] for d in first.values()) <= 150


def _kernel():
    from skyguard.kernel.loader import Kernel

    return Kernel(flows_max=4096, lpm_max=1024, ringbuf_bytes=1 << 20, replay=True)


def _flow(k, frame: bytes):
    p = udp_ends(frame)
    return k.flow(wire.FlowKey.make(*p, 17))


def udp_ends(frame: bytes) -> tuple[str, int, str, int]:
    src, dst = ipaddress.IPv4Address(frame[26:30]), ipaddress.IPv4Address(frame[30:34])
    sport, dport = struct.unpack("!HH", frame[34:38])
    return str(src), sport, str(dst), dport


def test_learned_endpoint_lives_for_its_ttl_and_keeps_services_out(bpf_ok, tmp_path):
    """A legacy call teaches its client's Skype port; a new flow from it is skype-signaling (known-endpoint) within
    the TTL and undecided after it; a DNS query from the same port and a flow from another port of the same address
    (another user behind a NAT) are not Skype."""
    gen.generate(4242, tmp_path, kinds=["legacy-endpoint"], calls=1)
    labels = read_gen_labels(tmp_path / "labels.csv")
    call = next(lab for lab in labels if lab["class"] == "skype-p2p")
    client, cport = call["endpoint_a"].rsplit(":", 1)
    with _kernel() as k:
        res = replay([tmp_path / "legacy-endpoint.pcap"], kernel=k)
        learned = {(a, p) for a, p, _vlan, _ns, _r in k.endpoints()}
        assert (client, int(cport)) in learned
        proved = max(ns for a, p, _v, ns, _r in k.endpoints() if (a, p) == (client, int(cport)))
        reason = next(r for a, p, _v, _ns, r in k.endpoints() if (a, p) == (client, int(cport)))
        assert wire.reason_name(reason) == "som-voice"
        end = max(f["last_ns"] for f in res.flows)
        probe = b"\x00\x11\x02" + b"\x5a" * 20  # refused by the SoM probe rule: only the endpoint can tell
        cases = [  # (frame, ts, expected class)
            (udp4(client, int(cport), "198.51.100.7", 40001, probe), end + 1, "skype-signaling"),
            (udp4("198.51.100.8", 40002, client, int(cport), probe), end + 2, "skype-signaling"),
            (udp4(client, int(cport), "198.51.100.9", 53, b"\x12\x34\x01\x00" + b"\0" * 20), end + 3, "other"),
            (udp4(client, int(cport) ^ 1, "198.51.100.10", 40003, probe), end + 4, "unknown"),
            (udp4(client, int(cport), "198.51.100.11", 40004, probe), proved + wire.C["SG_EP_TTL_S"] * 10**9 + 1,
             "unknown"),
        ]
        for frame, ts, want in cases:
            k.test_run(frame, ts_ns=ts)
            f = _flow(k, frame)
            assert f is not None and f.class_name == want, (udp_ends(frame), f)
            if want == "skype-signaling":
                assert wire.reason_name(f.reason) == "known-endpoint"


QOS_POLICY = """name = "qos"
[class.skype-out]
action = "drop"
[class.skype-signaling]
action = "mark"
dscp = 24
[qos]
media = true
video = [51000, 51019]
sharing_dscp = 20
"""


def test_dscp_by_media_kind_keeps_ecn(bpf_ok):
    """[qos]: Skype/Teams media is marked by the client port's media kind (configurable ranges and DSCPs), ECN kept;
    drop stays drop, other classes keep their own action."""
    pol = parse_policy(QOS_POLICY)
    assert [s.qos for s in pol.slots[: wire.NCLASSES]] == [False, False, False, True, False, True]
    with _kernel() as k:
        k.load_policy(pol)
        relay = "52.114.7.9"
        ts = 10**18
        for cport, want in ((50005, 46), (51003, 34), (50021, None), (50045, 20), (40000, None)):
            # a Teams client's relay leg: skype-relay (ms-prefix) from its first packet
            frame = udp4("10.1.2.3", cport, relay, 3478, b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"x" * 12,
                         tos=0x02)
            res = k.test_run(frame, ts_ns=ts)
            ts += 1000
            assert _flow(k, frame).class_name == "skype-relay"
            assert res.verdict == 2
            assert res.data[15] == ((want << 2) | 0x02 if want is not None else 0x02), (cport, res.data[15])
        # the same client port on a flow of a class without qos: its own action (here none: pass, untouched)
        frame = udp4("10.1.2.3", 50005, "198.51.100.20", 40000, b"\x55" * 30, tos=0x01)
        assert k.test_run(frame, ts_ns=ts).data[15] == 0x01
