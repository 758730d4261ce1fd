"""Jumbo frames under native XDP, and firewall marks that nftables sees (issue 14, items 2 and 3)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

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


def _in_router(rig: Rig, *argv: str, **kw) -> str:
    return subprocess.run(["nsenter", f"--net=/var/run/netns/{rig.topo.router_ns}", *argv], capture_output=True,
                          text=True, check=True, **kw).stdout


# Another user of skb->mark: sets 0x1000 under 0xf000 and returns TC_ACT_UNSPEC, so that tc goes on to the next filter
# (this kernel has no cls_matchall / act_skbedit, so the other user is a cls_bpf direct-action filter like skyguard's)
OTHER_USER = """
int other_user(struct __sk_buff *skb)
{
	skb->mark = (skb->mark & ~0xf000u) | 0x1000u;
	return -1; /* TC_ACT_UNSPEC: continue with the next filter */
}
"""


def test_fwmark_mask_keeps_the_bits_another_tc_filter_set_first(bpf_ok, request) -> None:
    """Another user of skb->mark (a tc filter on the same clsact ingress, lower priority number so it runs first, that
    lets classification go on to skyguard's filter) sets 0x1000/0xf000; skyguard's mark 0x2a under mask 0xff must only
    change the low byte, so nftables sees 0x102a on the classified packets and never 0x2a alone."""
    import bcc

    from skyguard.kernel.tcmark import NAME, PRIO

    if not shutil.which("nft") or not shutil.which("nsenter") or not shutil.which("tc"):
        skip_or_fail("nft (Debian nftables), tc (iproute2) and nsenter are needed")
    pol = lab.LAB_POLICY.replace('[class.skype-p2p]\naction = "pass"\n',
                                 '[class.skype-p2p]\naction = "pass"\nfwmark = 0x2a\nfwmark_mask = 0xff\n')
    assert "fwmark" in pol
    rig = Rig(pol)
    request.addfinalizer(rig.down)  # the namespaces, and with them the qdiscs, filters and nft table, go
    rig.up()
    t = rig.topo
    other = bcc.BPF(text=OTHER_USER.encode())
    request.addfinalizer(other.cleanup)
    pin = f"/sys/fs/bpf/sg-e2e-other-{t.tag}"
    assert bcc.libbcc.lib.bpf_obj_pin(other.load_func(b"other_user", bcc.BPF.SCHED_CLS).fd, pin.encode()) == 0
    request.addfinalizer(lambda: Path(pin).unlink(missing_ok=True))
    ifaces = (t.router_lan_if, t.router_wan_if)
    for dev in ifaces:
        _in_router(rig, "tc", "qdisc", "add", "dev", dev, "clsact")
        _in_router(rig, "tc", "filter", "add", "dev", dev, "ingress", "pref", "1", "protocol", "all",
                   "bpf", "object-pinned", pin, "direct-action")
    rules = ("table inet sgtest {\n chain sgforward {\n  type filter hook forward priority 0;\n"
             "  meta mark 0x102a counter\n  meta mark 0x2a counter\n  meta mark 0x1000 counter\n"
             "  meta mark != { 0x102a, 0x2a, 0x1000 } counter\n }\n}\n")
    _in_router(rig, "nft", "-f", "-", input=rules)
    rig.configure()
    rig.start()
    for dev in ifaces:  # both filters on each interface's clsact ingress, the other user's first
        shown = _in_router(rig, "tc", "-j", "filter", "show", "dev", dev, "ingress")
        prefs = [(f["pref"], f["kind"]) for f in json.loads(shown) if "options" in f]
        assert prefs == [(1, "bpf"), (PRIO, "bpf")], (dev, shown)
        assert NAME in _in_router(rig, "tc", "filter", "show", "dev", dev, "ingress", "pref", str(PRIO))
    sched, main = rig.schedule([PC_TO_PC])
    with rig.wire(sched) as w:
        w.play(sched, 1.0, 0.0, 3.0, tail_s=0.3)
    key = main[PC_TO_PC]
    assert rig.flows()[key]["class"] == "skype-p2p"
    out = _in_router(rig, "nft", "-j", "list", "table", "inet", "sgtest")
    counters = [e["rule"]["expr"][-1]["counter"]["packets"] for e in json.loads(out)["nftables"] if "rule" in e]
    both, ours_alone, theirs_alone, neither = counters
    kst = rig.call("stats")["kernel"]
    assert kst["fwmark"] > 10 and kst["fwmark_skipped"] == 0
    assert both == kst["fwmark"], (counters, kst["fwmark"])  # every marked packet kept the other user's 0x1000
    assert ours_alone == 0, counters  # skyguard never wiped the bits outside its mask
    assert both < w.sent[key]  # the packets before the classification carry only the other user's bits
    assert theirs_alone >= w.sent[key] - both, counters
    assert neither == 0, counters  # the other user's filter ran on every forwarded packet
