"""Jumbo frames under native XDP, and firewall marks that nftables sees (issue 14, items 2 and 3)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from skyguard.lab import demo as lab
from tests.conftest import skip_or_fail
from tests.e2e.conftest import Rig
from tests.e2e.pairnet import Pair, until

PC_TO_PC = 0  # lab.SCENARIOS index
N = 30
BIG = 8000


@pytest.fixture
def pair(bpf_ok, request):
    if not shutil.which("nsenter"):
        skip_or_fail("nsenter is needed")
    p = Pair(mtu=9000)
    request.addfinalizer(p.down)
    return p.up()


def test_mtu_9000_native_drops_a_phone_call_of_8000_byte_frames(pair: Pair) -> None:
    p = pair
    pol = 'name = "gw-drop"\n[class.skype-out]\naction = "drop"\n[pstn]\nprefixes = ["10.77.0.3/32"]\n'
    p.start(p.config(pol, 'xdp_mode = "native"\non_stop = "detach"\n'))
    att = next(json.loads(x) for x in p.log().splitlines() if '"xdp attached"' in x)
    assert att["mode"] == "native" and att["frags"] is True
    call, other = p.receiver(5004), p.receiver(8888)
    p.send(p.addr_gw, 5004, b"\x80\x00" + bytes(BIG - 2), N, sport=50020)  # the call's media, to the PSTN gateway
    p.send(p.addr_b, 8888, b"o" * BIG, N, sport=50021)
    got: list[bytes] = []
    until(lambda: got.extend(Pair.drain(other)) or len(got) >= N, f"{N} jumbo datagrams to port 8888")
    assert [len(x) for x in got] == [BIG] * N
    assert Pair.drain(call) == []
    stats = p.cli("stats")["kernel"]
    assert stats["multibuf"] >= 2 * N, stats  # the frames really were in several buffers: headers from the first
    flows = {f["b"].split(":")[0]: f for f in p.cli("flows")["flows"]}
    ph = flows[p.addr_gw]
    assert ph["class"] == "skype-out" and ph["dropped"] == N
    assert ph["bytes"] == N * (BIG + 42)  # every buffer counted: Ethernet 14 + IPv4 20 + UDP 8
    assert flows[p.addr_b]["dropped"] == 0 and flows[p.addr_b]["bytes"] == N * (BIG + 42)


def test_fwmark_seen_by_nftables_on_a_pc_to_pc_call(bpf_ok, request) -> None:
    if not shutil.which("nft") or not shutil.which("nsenter"):
        skip_or_fail("nft (Debian nftables) and nsenter are needed")
    pol = lab.LAB_POLICY.replace('[class.skype-p2p]\naction = "pass"\n',
                                 '[class.skype-p2p]\naction = "pass"\nfwmark = 0x2a00\nfwmark_mask = 0xff00\n')
    assert "fwmark" in pol
    rig = Rig(pol)
    request.addfinalizer(rig.down)
    rig.up()
    t = rig.topo
    rules = ("table inet sgtest {\n chain sgforward {\n  type filter hook forward priority 0;\n"
             "  meta mark & 0xff00 == 0x2a00 counter\n  meta mark & 0xff00 != 0x2a00 counter\n }\n}\n")
    subprocess.run(["nsenter", f"--net=/var/run/netns/{t.router_ns}", "nft", "-f", "-"], input=rules, text=True,
                   check=True)
    request.addfinalizer(lambda: subprocess.run(["nsenter", f"--net=/var/run/netns/{t.router_ns}", "nft", "delete",
                                                 "table", "inet", "sgtest"], capture_output=True))
    rig.configure()
    rig.start()
    sched, main = rig.schedule([PC_TO_PC])
    with rig.wire(sched) as w:
        w.play(sched, 1.0, 0.0, 3.0, tail_s=0.3)
    key = main[PC_TO_PC]
    row = rig.flows()[key]
    assert row["class"] == "skype-p2p"
    out = subprocess.run(["nsenter", f"--net=/var/run/netns/{t.router_ns}", "nft", "-j", "list", "table", "inet",
                          "sgtest"], capture_output=True, text=True, check=True).stdout
    counters = [e["rule"]["expr"][-1]["counter"]["packets"] for e in json.loads(out)["nftables"] if "rule" in e]
    marked, unmarked = counters
    kst = rig.call("stats")["kernel"]
    assert kst["fwmark"] > 10 and kst["fwmark_skipped"] == 0
    # every packet the XDP program marked reached nftables with the mark, and only those
    assert marked == kst["fwmark"], (marked, kst["fwmark"])
    assert marked < w.sent[key]  # the packets before the classification carry no mark
    assert unmarked >= w.sent[key] - marked
