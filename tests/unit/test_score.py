"""skyguard.lab.score, the scorer behind the README's accuracy figures (tests/bpf/test_accuracy.py, bench/accuracy.py):
small hand-made label and flow sets whose right answer is known, so a scorer that counts wrongly cannot make the
accuracy test pass."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from skyguard.lab.score import LabelledFlow, family, read_gen_labels, read_labels, score_generated, score_ndpi

HEADER = "capture,proto,endpoint_a,endpoint_b,ndpi_label,packets,bytes,skype\n"


def lab(capture: str, proto: str, a: str, b: str, label: str, skype: bool) -> LabelledFlow:
    return LabelledFlow(capture, proto, a, b, label, skype, 10)


def row(capture: str, proto: str, a: str, b: str, cls: str) -> dict:
    return {"capture": capture, "proto": proto, "a": a, "b": b, "class": cls, "reason": "", "vlan": 0}


# --- families (captures/README.md: what is scored, and where) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("capture", "proto", "label", "skype", "want"),
    [
        ("skype.pcap", "udp", "Skype_Teams.Skype_TeamsCall", True, "legacy-udp"),
        ("skype_udp.pcap", "udp", "Skype_Teams.Skype_TeamsCall", True, "legacy-udp"),
        ("teams.pcap", "udp", "Skype_Teams.Skype_TeamsCall", True, "stun"),  # Teams media: STUN/TURN family
        ("stun_msteams_unidir.pcapng", "udp", "Skype_Teams", True, "stun"),
        ("sites.pcapng", "udp", "STUN.Skype_Teams", True, "stun"),
        ("skype.pcap", "tcp", "TLS.Skype_Teams", True, "tls"),
        ("teams.pcap", "tcp", "TLS.Teams", True, "tls"),
        ("skype.pcap", "udp", "DNS.Skype_Teams", True, None),  # DNS: never scored, even when nDPI says Skype
        ("skype.pcap", "udp", "Unknown", False, None),
        ("skype.pcap", "icmp", "ICMP", False, None),  # neither UDP nor TCP
        ("teams.pcap", "tcp", "TLS.Microsoft", False, None),  # generic label inside a Skype/Teams capture
        ("skype.pcap", "tcp", "TLS", False, None),
        ("sites.pcapng", "tcp", "TLS.Microsoft", False, "negative"),  # the same label elsewhere is a negative
        ("skype.pcap", "udp", "Dropbox", False, "negative"),  # a named non-Skype label in a Skype capture
        ("zoom_p2p.pcapng", "udp", "Zoom", False, "negative"),
    ],
)
def test_family(capture: str, proto: str, label: str, skype: bool, want: str | None) -> None:
    assert family(lab(capture, proto, "10.0.0.1:1", "10.0.0.2:2", label, skype)) == want


# --- score_ndpi -------------------------------------------------------------------------------------------------------

LEGACY = "Skype_Teams.Skype_TeamsCall"


def test_hit_miss_false_positive_and_correct_negative() -> None:
    labels = [
        lab("skype.pcap", "udp", "10.0.0.1:100", "1.2.3.4:200", LEGACY, True),  # hit
        lab("skype.pcap", "udp", "10.0.0.1:101", "1.2.3.4:201", LEGACY, True),  # miss: other
        lab("skype.pcap", "udp", "10.0.0.1:102", "1.2.3.4:202", LEGACY, True),  # miss: still unknown
        lab("teams.pcap", "udp", "10.0.0.1:103", "52.114.0.1:3478", "STUN.Skype_Teams", True),  # hit: relay
        lab("zoom_p2p.pcapng", "udp", "10.0.0.2:104", "5.6.7.8:8801", "Zoom", False),  # false positive
        lab("sip.pcap", "udp", "10.0.0.2:5060", "5.6.7.9:5060", "SIP", False),  # correct negative
        lab("skype.pcap", "udp", "10.0.0.1:53", "8.8.8.8:53", "DNS.Skype_Teams", True),  # not scored
    ]
    flows = [
        row("skype.pcap", "udp", "10.0.0.1:100", "1.2.3.4:200", "skype-signaling"),
        row("skype.pcap", "udp", "10.0.0.1:101", "1.2.3.4:201", "other"),
        row("skype.pcap", "udp", "10.0.0.1:102", "1.2.3.4:202", "unknown"),
        row("teams.pcap", "udp", "10.0.0.1:103", "52.114.0.1:3478", "skype-relay"),
        row("zoom_p2p.pcapng", "udp", "10.0.0.2:104", "5.6.7.8:8801", "skype-p2p"),
        row("sip.pcap", "udp", "10.0.0.2:5060", "5.6.7.9:5060", "other"),
        row("skype.pcap", "udp", "10.0.0.1:53", "8.8.8.8:53", "skype-signaling"),  # would be a hit if scored
    ]
    s = score_ndpi(flows, labels)
    assert {f: (c["total"], c["hit"]) for f, c in s.per_family.items()} == {
        "legacy-udp": (3, 1), "stun": (1, 1), "negative": (2, 0)}
    assert s.recall("legacy-udp") == pytest.approx(1 / 3) and s.recall("stun") == 1.0
    assert [(lf.a, cls) for lf, cls in s.misses] == [("10.0.0.1:101", "other"), ("10.0.0.1:102", "unknown")]
    assert [(lf.a, cls) for lf, cls in s.false_positives] == [("10.0.0.2:104", "skype-p2p")]
    assert s.negatives == 2 and s.fp_rate == 0.5 and s.unmatched == []
    d = s.as_dict()
    assert d["false_positives"] == 1 and d["unmatched"] == 0
    assert d["families"]["legacy-udp"] == {"total": 3, "hit": 1, "recall": 0.3333}
    assert d["misses"][0] == f"skype.pcap udp 10.0.0.1:101 1.2.3.4:201 {LEGACY} -> other"
    assert d["false_positive_flows"] == ["zoom_p2p.pcapng udp 10.0.0.2:104 5.6.7.8:8801 Zoom -> skype-p2p"]


def test_flow_reported_in_the_other_direction_matches() -> None:
    """nDPI and the replay may name the endpoints in either order: one bidirectional flow either way."""
    labels = [lab("skype.pcap", "udp", "10.0.0.1:100", "1.2.3.4:200", LEGACY, True),
              lab("viber.pcap", "udp", "10.0.0.3:5242", "9.9.9.9:7985", "Viber", False)]
    flows = [row("skype.pcap", "udp", "1.2.3.4:200", "10.0.0.1:100", "skype-signaling"),
             row("viber.pcap", "udp", "9.9.9.9:7985", "10.0.0.3:5242", "skype-relay")]
    s = score_ndpi(flows, labels)
    assert s.unmatched == [] and s.recall("legacy-udp") == 1.0
    assert [lf.label for lf, _ in s.false_positives] == ["Viber"]


def test_unmatched_flows_are_reported_not_silently_scored() -> None:
    """A labelled flow with no replay flow is listed in `unmatched`: a Skype one is also a miss ("missing"); a
    non-Skype one counts among the negatives without being a false positive, so only `unmatched` shows it."""
    labels = [
        lab("skype.pcap", "udp", "10.0.0.1:100", "1.2.3.4:200", LEGACY, True),
        lab("wa_video.pcap", "udp", "10.0.0.4:1000", "31.13.0.1:3478", "WhatsAppCall", False),
        lab("skype.pcap", "tcp", "10.0.0.1:100", "1.2.3.4:200", "TLS.Skype_Teams", True),  # same ports, other proto
        lab("teams.pcap", "udp", "10.0.0.1:7", "52.114.0.1:3478", "STUN.Skype_Teams", True),  # other capture
    ]
    flows = [row("skype.pcap", "tcp", "10.0.0.1:100", "1.2.3.4:200", "skype-signaling"),
             row("skype.pcap", "udp", "10.0.0.1:7", "52.114.0.1:3478", "skype-relay")]
    s = score_ndpi(flows, labels)
    assert [(lf.capture, lf.proto) for lf in s.unmatched] == [
        ("skype.pcap", "udp"), ("wa_video.pcap", "udp"), ("teams.pcap", "udp")]
    assert [cls for _, cls in s.misses] == ["missing", "missing"]
    assert s.negatives == 1 and s.false_positives == [] and s.as_dict()["unmatched"] == 3
    assert s.recall("tls") == 1.0 and s.recall("legacy-udp") == 0.0 and s.recall("stun") == 0.0


def test_ipv6_endpoints_match_whatever_their_spelling() -> None:
    """nDPI writes 2a03:2880:f208:c4:face:b00c::43fe (one zero group as ::), Python's ipaddress (the replay)
    2a03:2880:f208:c4:face:b00c:0:43fe (RFC 5952): the same flow (sites.pcapng has one)."""
    labels = [lab("sites.pcapng", "udp", "[2001:db8::ba5]:41590", "[2a03:2880:f208:c4:face:b00c::43fe]:443",
                  "QUIC.Threads", False),
              lab("teams.pcap", "udp", "[2001:DB8:0:0:0:0:0:6]:50000", "[2603:1063::1]:3478", "STUN.Teams", True)]
    flows = [row("sites.pcapng", "udp", "[2001:db8::ba5]:41590", "[2a03:2880:f208:c4:face:b00c:0:43fe]:443",
                 "skype-relay"),
             row("teams.pcap", "udp", "[2001:db8::6]:50000", "[2603:1063::1]:3478", "skype-relay")]
    s = score_ndpi(flows, labels)
    assert s.unmatched == []
    assert [lf.label for lf, _ in s.false_positives] == ["QUIC.Threads"]
    assert s.recall("stun") == 1.0


def test_capture_filter_and_empty_family() -> None:
    labels = [lab("skype.pcap", "udp", "10.0.0.1:100", "1.2.3.4:200", LEGACY, True),
              lab("teams.pcap", "udp", "10.0.0.1:7", "52.114.0.1:3478", "STUN.Skype_Teams", True)]
    s = score_ndpi([], labels, captures={"teams.pcap"})
    assert [lf.capture for lf in s.unmatched] == ["teams.pcap"]
    assert s.fp_rate == 0.0 and s.as_dict()["families"] == {"stun": {"total": 1, "hit": 0, "recall": 0.0}}
    assert math.isnan(s.recall("legacy-udp"))  # no flow of the family: no figure, not 0% or 100%
    assert "legacy-udp" not in s.as_dict()["families"]  # and asking did not add an empty family to the report


def test_read_labels(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text(HEADER + "skype.pcap,udp,10.0.0.1:1,1.2.3.4:2,Skype_Teams.Skype_TeamsCall,3,300,1\n"
                 "sip.pcap,udp,10.0.0.2:5060,5.6.7.9:5060,SIP,46,26472,0\n"
                 "rtp.pcapng,udp,10.0.0.2:1,5.6.7.9:2,RTP,5,500, 1 \n")
    got = read_labels(p)
    assert got == [
        LabelledFlow("skype.pcap", "udp", "10.0.0.1:1", "1.2.3.4:2", "Skype_Teams.Skype_TeamsCall", True, 3),
        LabelledFlow("sip.pcap", "udp", "10.0.0.2:5060", "5.6.7.9:5060", "SIP", False, 46),
        LabelledFlow("rtp.pcapng", "udp", "10.0.0.2:1", "5.6.7.9:2", "RTP", True, 5),
    ]


# --- score_generated --------------------------------------------------------------------------------------------------


def test_generated_confusion(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("capture,proto,endpoint_a,endpoint_b,class\n"
                 "a.pcap,udp,10.0.0.1:1,10.0.0.2:2,skype-out\n"
                 "a.pcap,udp,10.0.0.1:3,10.0.0.2:4,skype-out\n"
                 "b.pcap,udp,10.0.0.1:5,10.0.0.2:6,other\n"
                 "b.pcap,udp,10.0.0.1:7,10.0.0.2:8,skype-p2p\n"
                 "b.pcap,tcp,10.0.0.1:9,10.0.0.2:443,skype-signaling\n")
    flows = [row("a.pcap", "udp", "10.0.0.2:2", "10.0.0.1:1", "skype-out"),  # other direction
             row("a.pcap", "udp", "10.0.0.1:3", "10.0.0.2:4", "skype-relay"),
             row("b.pcap", "udp", "10.0.0.1:5", "10.0.0.2:6", "skype-out"),
             row("b.pcap", "udp", "10.0.0.1:7", "10.0.0.2:8", "skype-out"),
             row("a.pcap", "tcp", "10.0.0.1:9", "10.0.0.2:443", "skype-signaling")]  # wrong capture: missing
    c = score_generated(flows, read_gen_labels(p))
    assert {exp: dict(r) for exp, r in c.matrix.items()} == {
        "skype-out": {"skype-out": 1, "skype-relay": 1}, "other": {"skype-out": 1},
        "skype-p2p": {"skype-out": 1}, "skype-signaling": {"missing": 1}}
    table = c.table().splitlines()
    assert table[0].split()[3:] == ["missing", "other", "skype-out", "skype-p2p", "skype-relay", "skype-signaling",
                                    "recall"]
    assert [ln.split() for ln in table[1:]] == [
        ["other", "0", "0", "1", "0", "0", "0", "0.0%"],
        ["skype-out", "0", "0", "1", "0", "1", "0", "50.0%"],
        ["skype-p2p", "0", "0", "1", "0", "0", "0", "0.0%"],
        ["skype-signaling", "1", "0", "0", "0", "0", "0", "0.0%"]]
    assert c.recall("skype-out") == 0.5 and c.recall("skype-signaling") == 0.0 and math.isnan(c.recall("unknown"))
    assert c.false_out() == 2  # the "other" and the skype-p2p flow called skype-out
    assert "unknown" not in c.matrix and c.table() == "\n".join(table)  # asking for a recall added no row
