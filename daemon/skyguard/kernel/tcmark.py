"""The TC ingress program that turns the XDP metadata of a marked class into skb->mark (bpf/fwmark.bpf.c), attached
to a clsact qdisc with pyroute2 as a direct-action bpf filter of its own priority, so other filters stay."""

from __future__ import annotations

import contextlib

import bcc
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from skyguard import wire
from skyguard.kernel.memory import release_compiler_memory

PRIO = 0x5347  # "SG": skyguard's filter among the interface's ingress filters
NAME = "skyguard_mark"
_INGRESS = "ffff:fff2"  # clsact's ingress hook


class TcMark:
    def __init__(self) -> None:
        bpf_dir = wire.bpf_dir()
        self.bpf = bcc.BPF(src_file=str(bpf_dir / "fwmark.bpf.c").encode(), cflags=[f"-I{bpf_dir}"])
        self.fd: int = self.bpf.load_func(b"tc_skyguard_mark", bcc.BPF.SCHED_CLS).fd
        release_compiler_memory()
        self.attached: set[str] = set()

    def attach(self, ifname: str) -> None:
        """clsact (added if missing, kept if there) and skyguard's filter, replacing an earlier skyguard filter."""
        with IPRoute() as ip:
            idx = ip.link_lookup(ifname=ifname)
            if not idx:
                raise OSError(f"interface {ifname} does not exist")
            try:
                ip.tc("add", "clsact", idx[0])
            except NetlinkError as e:
                if e.code != 17:  # EEXIST: an existing clsact (ours from before, or another tool's) is fine
                    raise
            with contextlib.suppress(NetlinkError):
                ip.tc("del-filter", "bpf", idx[0], parent=_INGRESS, prio=PRIO, protocol=0x0003)
            ip.tc("add-filter", "bpf", idx[0], ":1", fd=self.fd, name=NAME, parent=_INGRESS, classid=1,
                  direct_action=True, prio=PRIO, protocol=0x0003)  # ETH_P_ALL
        self.attached.add(ifname)

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None


def detach(ifname: str) -> None:
    """Remove skyguard's filter; the clsact qdisc stays (other filters may hang on it)."""
    with IPRoute() as ip, contextlib.suppress(NetlinkError):
        idx = ip.link_lookup(ifname=ifname)
        if idx:
            ip.tc("del-filter", "bpf", idx[0], parent=_INGRESS, prio=PRIO, protocol=0x0003)
