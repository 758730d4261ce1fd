"""foreign_xdp with a real program nobody here wrote: Debian's xdp-filter (xdp-tools) dropping UDP port 7777.

refuse (default) fails naming the program and leaves it; chain runs skyguard first and hands xdp-filter every packet
skyguard passes, so both drop at once (skyguard a phone call's media to a PSTN gateway, xdp-filter port 7777) while
other traffic passes; a detach (on_stop = detach, or `skyguardd --detach` as `make uninstall` runs it) puts xdp-filter
back as it was; replace evicts it and logs what it replaced.
"""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest

from tests.conftest import skip_or_fail
from tests.e2e.pairnet import Pair, filter_hits, filtered_pair, until

POLICY = 'name = "gw-drop"\n[class.skype-out]\naction = "drop"\n[pstn]\nprefixes = ["10.77.0.3/32"]\n'
N = 40


@pytest.fixture
def pair(bpf_ok, request):
    if not shutil.which("xdp-filter") or not shutil.which("nsenter"):
        skip_or_fail("xdp-filter (Debian xdp-tools) and nsenter are needed")
    return filtered_pair(request)


def _traffic(p: Pair) -> dict[str, int]:
    """N datagrams to each of: the PSTN gateway (skyguard drops), port 7777 (xdp-filter drops), port 8888 (passes);
    returns what arrived at each once the passing ones are all in."""
    rx = {k: p.receiver(port) for k, port in (("call", 5004), ("filtered", 7777), ("other", 8888))}
    got = {k: 0 for k in rx}
    p.send(p.addr_gw, 5004, b"\x80\x00" + bytes(158), N, sport=50010)
    p.send(p.addr_b, 7777, b"f" * 100, N, sport=50011)
    p.send(p.addr_b, 8888, b"o" * 100, N, sport=50012)

    def all_other() -> bool:
        for k, s in rx.items():
            got[k] += len(Pair.drain(s))
        return got["other"] >= N

    until(all_other, f"{N} datagrams to port 8888")
    for k, s in rx.items():  # anything dropped late would show up now
        got[k] += len(Pair.drain(s))
        s.close()
    return got


def test_refuse_then_chain_then_put_back(pair: Pair) -> None:
    p = pair
    filt = p.xdp_id()
    assert filt
    cfg = p.config(POLICY, 'on_stop = "detach"\n')
    # refuse (the default): a clear error naming the program, and xdp-filter untouched
    d = p.spawn(cfg)
    assert d.wait(120) == 1
    assert re.search(rf"XDP program id {filt} 'xdpfilt_\w+'.*is already attached and is not skyguard's", p.log())
    assert p.xdp_id() == filt

    d = p.start(cfg, "--foreign-xdp", "chain")
    own = p.xdp_id()
    assert own != filt
    status = p.sh_b("xdp-loader", "status", p.if_b).stdout
    assert "xdp_skyguard" in status  # what libxdp's tools see while chained: skyguard's program on the interface
    before = filter_hits(p)
    got = _traffic(p)
    # both effects at once: skyguard dropped the call, xdp-filter (behind skyguard) dropped port 7777, 8888 passed
    assert got == {"call": 0, "filtered": 0, "other": N}
    assert filter_hits(p) - before == N
    flows = p.cli("flows")["flows"]
    call = [f for f in flows if f["b"].startswith(p.addr_gw) or f["a"].startswith(p.addr_gw)]
    assert call and call[0]["class"] == "skype-out" and call[0]["dropped"] == N

    assert p.stop(d) == 0  # on_stop = detach: xdp-filter's very program back, still filtering
    assert p.xdp_id() == filt
    assert "xdpfilt_" in p.sh_b("xdp-loader", "status", p.if_b).stdout
    before = filter_hits(p)
    got = _traffic(p)
    assert got == {"call": N, "filtered": 0, "other": N}
    assert filter_hits(p) - before == N


def test_detach_command_puts_back_after_keep(pair: Pair) -> None:
    """on_stop = keep leaves the chain enforcing with no daemon; `skyguardd --detach` (make uninstall) undoes it."""
    p = pair
    filt = p.xdp_id()
    cfg = p.config(POLICY, 'on_stop = "keep"\nforeign_xdp = "chain"\n')
    d = p.start(cfg)
    assert p.stop(d) == 0
    assert p.xdp_id() not in (None, filt)
    got = _traffic(p)  # the daemon is gone; the kernel goes on: both drops still happen
    assert got == {"call": 0, "filtered": 0, "other": N}
    out = p.sh_b(sys.executable, "-m", "skyguard.daemon", "--detach", "--pin-path", p.pin_path).stdout
    assert f"{p.if_b}: detached; program {filt} put back in native mode" in out
    assert p.xdp_id() == filt


def test_replace_logs_what_it_replaced(pair: Pair) -> None:
    p = pair
    filt = p.xdp_id()
    d = p.start(p.config(POLICY, 'on_stop = "detach"\n'), "--foreign-xdp", "replace")
    line = next(json.loads(x) for x in p.log().splitlines() if "replaced foreign XDP program" in x)
    assert line["prog_id"] == filt and line["name"].startswith("xdpfilt_") and line["interface"] == p.if_b
    assert p.xdp_id() not in (None, filt)
    got = _traffic(p)
    assert got == {"call": 0, "filtered": N, "other": N}  # xdp-filter is gone: port 7777 passes
    assert p.stop(d) == 0
    assert p.xdp_id() is None  # replaced, not chained: nothing to put back
