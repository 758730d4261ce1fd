"""XDP programs that are not skyguard's: what is attached where, and foreign_xdp's decision (refuse, chain, replace).

skyguard's own program is recognised by two facts together: its name (xdp_skyguard) and its use of the `flows` map
pinned under this daemon's pin path (the map ids of the attached program include that pin's id). A restart or an
upgrade finds exactly that and replaces it without asking; a skyguard of another pin path, or one whose pins were
removed, is somebody else's program.

Chaining (foreign_xdp = chain): the foreign program goes into the `chain` program array at its interface's ifindex
and skyguard takes its place, so every packet skyguard passes is tail-called into it (bpf/skyguard.bpf.c). `chained`
(ifindex -> program id, attach flags) records how it was attached, so that a detach puts it back as it was. Both
maps are pinned: a program array whose last user reference goes away is emptied by the kernel, and the record must
outlive the daemon for `skyguardd --detach` (make uninstall).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from skyguard import wire
from skyguard.kernel import ifaces
from skyguard.kernel.bpfobj import BpfError, obj_get, pinned_map_id, prog_fd_by_id, prog_info_by_id
from skyguard.kernel.bpfsys import RawMap
from skyguard.kernel.ifaces import XDP_FLAGS_HW_MODE, InterfaceError

OWN_NAME = "xdp_skyguard"
POLICIES = ("refuse", "chain", "replace")
CHAIN_MAX = wire.C["SG_CHAIN_MAX"]


@dataclass(frozen=True)
class Found:
    """One XDP program attached to an interface."""

    ifname: str
    ifindex: int
    flag: int  # ifaces.XDP_FLAGS_DRV_MODE / SKB_MODE / HW_MODE
    prog_id: int
    name: str
    tag: str
    own: bool
    dev_bound: bool  # offloaded or bound to the device (XDP hints): no program array takes it

    @property
    def mode(self) -> str:
        return ifaces.MODE_OF_FLAGS.get(self.flag, "?")

    def describe(self) -> str:
        what = " (libxdp's multi-program dispatcher)" if self.name == "xdp_dispatcher" else ""
        return f"XDP program id {self.prog_id} {self.name!r}{what}, tag {self.tag}, {self.mode} mode on {self.ifname}"


def survey(ifname: str, pin_path: str) -> list[Found]:
    idx = ifaces.ifindex(ifname)
    if idx is None:
        return []
    flows_id = pinned_map_id(os.path.join(pin_path, "flows"))
    out = []
    for flag, pid in ifaces.programs(idx).items():
        info = prog_info_by_id(pid)
        name, tag = (info.name, info.tag) if info else ("?", "?")
        own = bool(info and info.name == OWN_NAME and flows_id is not None and flows_id in info.map_ids)
        out.append(Found(ifname, idx, flag, pid, name, tag, own, bool(info and info.ifindex)))
    return out


def in_the_way(found: list[Found]) -> list[Found]:
    """Foreign programs skyguard would displace: an offloaded one (hardware mode) runs on the NIC before any driver
    or generic program and stays as it is, beside skyguard."""
    return [f for f in found if not f.own and f.flag != XDP_FLAGS_HW_MODE]


def refusal(f: Found, policy: str) -> str:
    return (f"{f.describe()} is already attached and is not skyguard's; foreign_xdp = {policy} leaves it in place. "
            "Set foreign_xdp = \"chain\" (--foreign-xdp chain) to run skyguard first and hand it every packet "
            "skyguard passes, or \"replace\" to detach it")


def check(found: dict[str, list[Found]], policy: str) -> None:
    """foreign_xdp = refuse: fail before anything is compiled or touched. chain: refuse the shapes a program array
    cannot take, each with its reason."""
    for progs in found.values():
        for f in in_the_way(progs):
            if policy == "refuse":
                raise InterfaceError(refusal(f, policy))
            if policy == "chain" and f.dev_bound:
                raise InterfaceError(f"cannot chain {f.describe()}: it is bound to its device (offloaded, or using "
                                     "XDP metadata kfuncs), and no program array takes such a program")
            if policy == "chain" and f.ifindex >= CHAIN_MAX:
                raise InterfaceError(f"cannot chain {f.describe()}: ifindex {f.ifindex} is past the chain's "
                                     f"{CHAIN_MAX} slots")


def pinned_chain(pin_path: str) -> dict[int, tuple[int, int]]:
    """The chain record pinned by an earlier run: {ifindex: (program id, attach flags)}."""
    m = _pinned(pin_path, "chained", wire.CHAIN_FMT.size)
    if m is None:
        return {}
    try:
        return {int.from_bytes(k, "little"): wire.CHAIN_FMT.unpack(m.lookup(k) or bytes(8)) for k in m.iter_keys()}
    finally:
        os.close(m.fd)


def fill_chain(kernel: object, found: dict[str, list[Found]]) -> list[Found]:
    """Put each foreign program into the kernel's `chain` array and its record into `chained` (called before the
    program loads: see Kernel's before_load). Returns the programs chained."""
    done = []
    for progs in found.values():
        for f in in_the_way(progs):
            key = f.ifindex.to_bytes(4, "little")
            fd = prog_fd_by_id(f.prog_id)
            try:
                if not kernel.chain_map.update(key, fd.to_bytes(4, "little")):
                    raise InterfaceError(f"cannot chain {f.describe()}: the kernel refused it in the program array "
                                         "(a tail call needs the same program type, JIT and multi-buffer support)")
            finally:
                os.close(fd)
            kernel.chained.update(key, wire.CHAIN_FMT.pack(f.prog_id, f.flag))
            done.append(f)
    return done


def expect_fds(found: list[Found]) -> dict[int, int]:
    """{mode flag: fd} of the programs an attach may replace on one interface (the caller closes the fds)."""
    out = {}
    for f in found:
        if f.flag == XDP_FLAGS_HW_MODE:
            continue
        with contextlib.suppress(BpfError):
            out[f.flag] = prog_fd_by_id(f.prog_id)
    return out


def restore(ifname: str, own_id: int | None, pin_path: str) -> str:
    """Detach skyguard's program from ifname (expecting it) and put back the program it chained there, in the mode
    that program had. Returns what was done, for the log."""
    idx = ifaces.ifindex(ifname)
    if idx is None or own_id is None:
        return "nothing attached"
    rec = pinned_chain(pin_path).get(idx)
    if rec is None:
        return "detached" if ifaces.detach(ifname, own_id) else "not attached"
    prev_id, prev_flag = rec
    mine = {f: p for f, p in ifaces.programs(idx).items() if p == own_id}
    try:
        prev_fd = prog_fd_by_id(prev_id)
    except BpfError:
        _forget(pin_path, idx)
        return "detached (the chained program no longer exists)" if ifaces.detach(ifname, own_id) else "not attached"
    try:
        own_flag = next(iter(mine), None)
        if own_flag == prev_flag:
            own_fd = prog_fd_by_id(own_id)
            try:
                rc = ifaces.xdp_set(idx, prev_fd, prev_flag, own_fd)  # one step: skyguard out, previous in
            finally:
                os.close(own_fd)
        else:
            if own_flag is not None:
                ifaces.detach(ifname, own_id)
            rc = ifaces.xdp_set(idx, prev_fd, prev_flag, None)
    finally:
        os.close(prev_fd)
    if rc != 0:
        return f"detached; putting back program {prev_id} failed: {os.strerror(-rc)}"
    _forget(pin_path, idx)
    return f"detached; program {prev_id} put back in {ifaces.MODE_OF_FLAGS.get(prev_flag, '?')} mode"


def _forget(pin_path: str, idx: int) -> None:
    key = idx.to_bytes(4, "little")
    for name, vs in (("chained", wire.CHAIN_FMT.size), ("chain", 4)):
        m = _pinned(pin_path, name, vs)
        if m is not None:
            m.delete(key)
            os.close(m.fd)


def _pinned(pin_path: str, name: str, value_size: int) -> RawMap | None:
    try:
        return RawMap(obj_get(os.path.join(pin_path, name)), 4, value_size)
    except BpfError:
        return None


def detach_all(pin_path: str) -> list[tuple[str, str]]:
    """`skyguardd --detach` (make uninstall): every interface of this network namespace that runs this pin path's
    skyguard program gets it detached and its chained program back. Returns [(ifname, what was done)]."""
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        names = [link.get_attr("IFLA_IFNAME") for link in ip.get_links()]
    out = []
    for name in names:
        for f in survey(name, pin_path):
            if f.own:
                out.append((name, restore(name, f.prog_id, pin_path)))
    return out
