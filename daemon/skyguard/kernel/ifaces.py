"""Interfaces: XDP attach/detach (native, generic, auto) with the kernel's expected-program replace, and link events
over netlink (pyroute2).

Every attach names what it expects to find: nothing (XDP_FLAGS_UPDATE_IF_NOEXIST) or one program
(XDP_FLAGS_REPLACE + the old program's fd, IFLA_XDP_EXPECTED_FD), so a program that another tool attached meanwhile
is never clobbered: the kernel refuses with EEXIST instead. What to do with a program that is not skyguard's own is
foreign.py's decision; this module carries it out.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4
MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
MODE_OF_FLAGS = {XDP_FLAGS_DRV_MODE: "native", XDP_FLAGS_SKB_MODE: "generic", XDP_FLAGS_HW_MODE: "offload"}
_ENOTSUPP = 524


class InterfaceError(Exception):
    pass


@dataclass
class Attached:
    ifname: str
    ifindex: int
    mode: str  # "native" | "generic"


class _AttachOpts(ct.Structure):
    """struct bpf_xdp_attach_opts (libbpf 1.x)."""

    _fields_ = [("sz", ct.c_size_t), ("old_prog_fd", ct.c_int)]


class _QueryOpts(ct.Structure):
    """struct bpf_xdp_query_opts (libbpf 1.1: up to attach_mode)."""

    _fields_ = [("sz", ct.c_size_t), ("prog_id", ct.c_uint32), ("drv_prog_id", ct.c_uint32),
                ("hw_prog_id", ct.c_uint32), ("skb_prog_id", ct.c_uint32), ("attach_mode", ct.c_uint8)]


_libbpf = ct.CDLL("libbpf.so.1", use_errno=True)
_xdp_attach = _libbpf.bpf_xdp_attach
_xdp_attach.restype = ct.c_int
_xdp_attach.argtypes = [ct.c_int, ct.c_int, ct.c_uint32, ct.POINTER(_AttachOpts)]
_xdp_query = _libbpf.bpf_xdp_query
_xdp_query.restype = ct.c_int
_xdp_query.argtypes = [ct.c_int, ct.c_int, ct.POINTER(_QueryOpts)]

# libbpf hands the kernel's netlink extack ("Kernel error message: ...") to its print callback only: catch it there,
# formatting its va_list with libc's vsnprintf, so that an attach error can quote the kernel's own reason
_PRINT_FN = ct.CFUNCTYPE(ct.c_int, ct.c_int, ct.c_char_p, ct.c_void_p)
_libc = ct.CDLL(None)
_libc.vsnprintf.argtypes = [ct.c_char_p, ct.c_size_t, ct.c_char_p, ct.c_void_p]
_kernel_says: list[str] = []


def _on_libbpf_print(_level: int, fmt: bytes, args: int) -> int:
    buf = ct.create_string_buffer(512)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    msg = buf.value.decode(errors="replace").strip()
    if "Kernel error message:" in msg:
        _kernel_says.append(msg.split("Kernel error message:", 1)[1].strip())
    return 0


_print_cb = _PRINT_FN(_on_libbpf_print)  # kept referenced for as long as libbpf may call it
_libbpf.libbpf_set_print.restype = ct.c_void_p
_libbpf.libbpf_set_print.argtypes = [_PRINT_FN]
_libbpf.libbpf_set_print(_print_cb)


def ifindex(ifname: str) -> int | None:
    with IPRoute() as ip:
        idx = ip.link_lookup(ifname=ifname)
    return idx[0] if idx else None


def programs(idx: int) -> dict[int, int]:
    """The XDP programs attached to an interface: {mode flag: program id} (XDP_FLAGS_DRV/SKB/HW_MODE)."""
    q = _QueryOpts(sz=ct.sizeof(_QueryOpts))
    rc = _xdp_query(idx, 0, ct.byref(q))
    if rc < 0:
        raise InterfaceError(f"cannot query XDP on ifindex {idx}: {os.strerror(-rc)}")
    found = {XDP_FLAGS_DRV_MODE: q.drv_prog_id, XDP_FLAGS_SKB_MODE: q.skb_prog_id, XDP_FLAGS_HW_MODE: q.hw_prog_id}
    return {m: pid for m, pid in found.items() if pid}


def xdp_prog_id(ifname: str) -> int | None:
    """The id of the XDP program attached to an interface (native or generic), None when nothing is attached."""
    idx = ifindex(ifname)
    if idx is None:
        return None
    progs = programs(idx)
    return progs.get(XDP_FLAGS_DRV_MODE) or progs.get(XDP_FLAGS_SKB_MODE)


def xdp_set(idx: int, prog_fd: int, flags: int, expect_fd: int | None) -> int:
    """One netlink XDP attach (prog_fd -1: detach). expect_fd None: only if that mode is empty; else only if the
    program there is expect_fd's. Returns 0 or a negative errno."""
    _kernel_says.clear()
    opts = _AttachOpts(sz=ct.sizeof(_AttachOpts), old_prog_fd=0)
    if expect_fd is None:
        flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
    else:
        flags |= XDP_FLAGS_REPLACE
        opts.old_prog_fd = expect_fd
    return _xdp_attach(idx, prog_fd, flags, ct.byref(opts))


def _mtu_driver(ifname: str) -> tuple[int | None, str]:
    with IPRoute() as ip:
        idx = ip.link_lookup(ifname=ifname)
        link = ip.get_links(idx[0])[0] if idx else None
    mtu = link.get_attr("IFLA_MTU") if link is not None else None
    drv = Path(f"/sys/class/net/{ifname}/device/driver")
    if drv.exists():
        return mtu, drv.resolve().name
    info = link.get_attr("IFLA_LINKINFO") if link is not None else None
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return mtu, kind or "unknown"


def explain(ifname: str, mode: str, err: int, frags: bool) -> str:
    """The kernel's errno of a failed attach, in terms of its usual cause on this interface."""
    mtu, drv = _mtu_driver(ifname)
    if _kernel_says:
        return f"{mode}: {_kernel_says[-1]} ({os.strerror(err)}; driver {drv}, MTU {mtu})"
    if err == errno.ERANGE:
        return (f"{mode}: MTU {mtu} is too large for {mode} XDP on driver {drv} "
                f"({'even for a frags-aware program' if frags else 'the program was loaded without frags support'})")
    if err in (errno.EOPNOTSUPP, _ENOTSUPP) or (err == errno.EINVAL and mode == "native"):
        return f"{mode}: driver {drv} has no {mode} XDP ({os.strerror(err)})"
    if err in (errno.EEXIST, errno.EBUSY):
        return f"{mode}: another XDP program was attached meanwhile ({os.strerror(err)}); it was left in place"
    return f"{mode}: {os.strerror(err)} (driver {drv}, MTU {mtu})"


def attach(prog_fd: int, ifname: str, mode: str, *, expect: dict[int, int] | None = None,
           frags: bool = True) -> Attached:
    """Attach prog_fd to ifname in `mode` (auto = native, then generic). `expect` is what the caller found there and
    agreed to replace ({mode flag: fd of that program}; foreign.py decides): a program in the other mode is detached
    first, expecting that same program; in the mode used, the new program replaces the expected one in one step.
    Anything else found there makes the kernel refuse, and nothing is changed."""
    idx = ifindex(ifname)
    if idx is None:
        raise InterfaceError(f"interface {ifname} does not exist")
    expect = dict(expect or {})
    order = ["native", "generic"] if mode == "auto" else [mode]
    errors = []
    for m in order:
        if m not in MODES:
            raise InterfaceError(f"unknown XDP mode {m!r} (native, generic, auto)")
        flag = MODES[m]
        other = XDP_FLAGS_SKB_MODE if m == "native" else XDP_FLAGS_DRV_MODE
        rc = xdp_set(idx, prog_fd, flag, expect.get(flag))
        # native and generic XDP cannot both be active: the program of the other mode goes first (the expected one
        # only), and comes back if this mode fails too
        if rc == -errno.EEXIST and other in expect and xdp_set(idx, -1, other, expect[other]) == 0:
            rc = xdp_set(idx, prog_fd, flag, expect.get(flag))
            if rc != 0:
                xdp_set(idx, expect[other], other, None)
            else:
                expect.pop(other)
        if rc == 0:
            return Attached(ifname, idx, m)
        errors.append(explain(ifname, m, -rc, frags))
    raise InterfaceError(f"cannot attach XDP to {ifname}: " + "; ".join(errors))


def detach(ifname: str, prog_id: int | None = None) -> bool:
    """Detach skyguard's program (prog_id, or whatever skyguard program the caller found) from ifname, expecting it:
    a program another tool attached meanwhile stays. Returns whether something was detached."""
    from skyguard.kernel.bpfobj import BpfError, prog_fd_by_id

    idx = ifindex(ifname)
    if idx is None or prog_id is None:
        return False
    for flag, pid in programs(idx).items():
        if pid != prog_id or flag == XDP_FLAGS_HW_MODE:
            continue
        try:
            fd = prog_fd_by_id(pid)
        except BpfError:
            return False
        try:
            return xdp_set(idx, -1, flag, fd) == 0
        finally:
            os.close(fd)
    return False


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
