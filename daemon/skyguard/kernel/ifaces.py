"""Interfaces: XDP attach/detach (native, generic, auto) and link events over netlink (pyroute2)."""

from __future__ import annotations

import ctypes
import os
import subprocess
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}


class InterfaceError(Exception):
    pass


@dataclass
class Attached:
    ifname: str
    ifindex: int
    mode: str  # "native" | "generic"


def ifindex(ifname: str) -> int | None:
    with IPRoute() as ip:
        idx = ip.link_lookup(ifname=ifname)
    return idx[0] if idx else None


def xdp_prog_id(ifname: str) -> int | None:
    """The id of the XDP program attached to an interface (any mode), None when nothing is attached."""
    with IPRoute() as ip:
        idx = ip.link_lookup(ifname=ifname)
        if not idx:
            return None
        link = ip.get_links(idx[0])[0]
    xdp = link.get_attr("IFLA_XDP")
    if not xdp:
        return None
    pid = xdp.get_attr("IFLA_XDP_PROG_ID")
    return pid or None


def attach(prog_fd: int, ifname: str, mode: str) -> Attached:
    """Attach (atomically replacing whatever skyguard program is there). mode auto = native, then generic."""
    from bcc import lib  # libbcc's attach helper (bcc stays inside kernel/)

    idx = ifindex(ifname)
    if idx is None:
        raise InterfaceError(f"interface {ifname} does not exist")
    order = ["native", "generic"] if mode == "auto" else [mode]
    errors = []
    for m in order:
        if m not in MODES:
            raise InterfaceError(f"unknown XDP mode {m!r} (native, generic, auto)")
        # an attached program in the *other* mode blocks this one: clear it first
        other = XDP_FLAGS_SKB_MODE if m == "native" else XDP_FLAGS_DRV_MODE
        _current = xdp_prog_id(ifname)
        if _current:
            lib.bpf_attach_xdp(ifname.encode(), -1, other)
        rc = lib.bpf_attach_xdp(ifname.encode(), prog_fd, MODES[m])
        if rc == 0:
            return Attached(ifname, idx, m)
        errors.append(f"{m}: {os.strerror(ctypes.get_errno() or -rc if rc < 0 else rc) or rc}")
    raise InterfaceError(f"cannot attach XDP to {ifname}: " + "; ".join(errors))


def detach(ifname: str) -> None:
    from bcc import lib

    if ifindex(ifname) is None:
        return
    for flags in (XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE):
        lib.bpf_attach_xdp(ifname.encode(), -1, flags)


class LinkWatcher:
    """Netlink link events: new/changed and deleted interfaces, read without blocking from the daemon's loop."""

    def __init__(self) -> None:
        self.ipr = IPRoute()
        self.ipr.bind(groups=RTMGRP_LINK)

    def fileno(self) -> int:
        return self.ipr.fileno()

    def drain(self) -> list[tuple[str, str, int]]:
        """[(event, ifname, ifindex)] with event 'up' (RTM_NEWLINK) or 'gone' (RTM_DELLINK)."""
        out = []
        for msg in self.ipr.get():
            name = msg.get_attr("IFLA_IFNAME")
            ev = msg.get("event")
            if ev == "RTM_NEWLINK":
                out.append(("up", name, msg["index"]))
            elif ev == "RTM_DELLINK":
                out.append(("gone", name, msg["index"]))
        return out

    def close(self) -> None:
        self.ipr.close()


def ensure_bpffs(path: str = "/sys/fs/bpf") -> bool:
    """Mount bpffs where it is missing (e.g. inside a fresh mount namespace). Returns True when it mounted it."""
    if _is_bpffs(path):
        return False
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True, capture_output=True)
    return True


def _is_bpffs(path: str) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == path and line.split()[2] == "bpf" for line in f)
    except OSError:
        return False
