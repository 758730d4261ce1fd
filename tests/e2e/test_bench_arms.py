"""bench/live.py's arms: each attaches its own program to the receiving veth and detaches it again, so the next arm
finds the interface free. A benchmark that cannot switch arms measures nothing (it once stopped at its second arm,
when ifaces.detach began to remove only the program it is told of); this checks the switching, never a rate."""

from __future__ import annotations

import sys

import pytest

from skyguard.kernel import ifaces
from skyguard.kernel.bpfobj import prog_info
from skyguard.lab.topo import in_netns
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def test_every_arm_attaches_alone_and_leaves_the_interface_free(bpf_ok, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("live", None)
    import live

    with live.VethPair("direct") as pair:
        arms = live.Arms(pair, "auto")
        try:
            assert arms.mode in ("native", "generic")
            for arm in ("skyguard", "floor", "noop", "nothing", "skyguard"):
                arms.attach(arm)
                with in_netns(pair.rx_ns):
                    on = set(ifaces.programs(ifaces.ifindex(pair.rx_if)).values())
                assert on == (set() if arm == "nothing" else {prog_info(arms.fds[arm]).id}), arm
                arms.detach()
                with in_netns(pair.rx_ns):
                    assert not ifaces.programs(ifaces.ifindex(pair.rx_if)), f"{arm} stayed attached"
        finally:
            arms.close()
