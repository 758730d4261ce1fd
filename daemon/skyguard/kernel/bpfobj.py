"""BPF objects by id, fd and pin: the syscalls bcc 0.26 does not offer (loading a program with prog_flags, reading a
program's or a map's info, opening pins and ids). Raw bpf(2) calls with the UAPI attr layouts of linux/bpf.h, whose
prefixes are stable: the kernel accepts an attr or info shorter than its own and zero-fills the rest."""

from __future__ import annotations

import ctypes as ct
import os
import struct
from dataclasses import dataclass

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long
_SYS_BPF = 321  # x86_64

BPF_MAP_CREATE = 0
BPF_OBJ_GET = 7
BPF_PROG_LOAD = 5
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_TYPE_XDP = 6
BPF_F_XDP_HAS_FRAGS = 1 << 5  # linux/bpf.h: the program handles multi-buffer XDP (jumbo frames, bpf_xdp_get_buff_len)
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_XDP = 37  # enum bpf_attach_type: what libbpf (xdp-tools, iproute2) loads SEC("xdp") programs with


class BpfError(OSError):
    pass


def _bpf(cmd: int, attr: bytes | ct.Array) -> int:
    buf = attr if isinstance(attr, ct.Array) else ct.create_string_buffer(attr, len(attr))
    rc = _libc.syscall(_SYS_BPF, cmd, buf, len(buf))
    if rc < 0:
        err = ct.get_errno()
        raise BpfError(err, os.strerror(err))
    return rc


def _addr(buf: ct.Array) -> int:
    return ct.addressof(buf)


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    name: str
    tag: str
    map_ids: tuple[int, ...]
    ifindex: int  # non-zero: bound to (offloaded onto) a device


@dataclass(frozen=True)
class MapInfo:
    id: int
    type: int
    name: str
    key_size: int = 0
    value_size: int = 0
    max_entries: int = 0
    flags: int = 0


def load_xdp(insns: bytes, name: str, flags: int = 0, attach_type: int = 0, license: str = "GPL") -> int:
    """BPF_PROG_LOAD of an XDP program from bcc's relocated instructions (dump_func), with prog_flags. On a refusal
    the verifier's log is loaded again to name the cause."""
    ins = ct.create_string_buffer(insns, len(insns))
    lic = ct.create_string_buffer(license.encode())

    def attempt(log: ct.Array | None) -> int:
        attr = struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_XDP, len(insns) // 8, _addr(ins), _addr(lic),
                           1 if log is not None else 0, len(log) if log is not None else 0,
                           _addr(log) if log is not None else 0, 0, flags, name.encode()[:15], 0, attach_type)
        return _bpf(BPF_PROG_LOAD, attr)

    try:
        return attempt(None)
    except BpfError as e:
        log = ct.create_string_buffer(1 << 20)
        try:
            return attempt(log)
        except BpfError:
            tail = log.value.decode(errors="replace").strip().splitlines()[-3:]
            raise BpfError(e.errno, f"{e.strerror}{': ' + ' / '.join(tail) if tail else ''}") from None


def create_map(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0,
               inner_fd: int = 0, name: str = "") -> int:
    """BPF_MAP_CREATE: a new map's fd (`inner_fd`: the template of a map of maps)."""
    attr = struct.pack("<IIIIIII16s", map_type, key_size, value_size, max_entries, flags, inner_fd, 0,
                       name.encode()[:15])
    return _bpf(BPF_MAP_CREATE, attr)


def obj_get(path: str) -> int:
    p = ct.create_string_buffer(path.encode())
    return _bpf(BPF_OBJ_GET, struct.pack("<QII", _addr(p), 0, 0))


def prog_fd_by_id(prog_id: int) -> int:
    return _bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<III", prog_id, 0, 0))


def map_fd_by_id(map_id: int) -> int:
    return _bpf(BPF_MAP_GET_FD_BY_ID, struct.pack("<III", map_id, 0, 0))


_PROG_INFO = struct.Struct("<II8sIIQQQIIQ16sI")


def prog_info(fd: int) -> ProgInfo:
    ids = (ct.c_uint32 * 64)()
    info = ct.create_string_buffer(_PROG_INFO.size)
    _PROG_INFO.pack_into(info, 0, 0, 0, b"", 0, 0, 0, 0, 0, 0, len(ids), ct.addressof(ids), b"", 0)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, len(info), _addr(info)))
    typ, pid, tag, _jl, _xl, _ji, _xi, _lt, _uid, nmaps, _m, name, ifx = _PROG_INFO.unpack(info.raw)
    return ProgInfo(pid, typ, name.rstrip(b"\0").decode(errors="replace"), tag.hex(),
                    tuple(ids[: min(nmaps, len(ids))]), ifx)


_MAP_INFO = struct.Struct("<IIIIII16s")


def map_info(fd: int) -> MapInfo:
    info = ct.create_string_buffer(_MAP_INFO.size)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, len(info), _addr(info)))
    typ, mid, ks, vs, me, fl, name = _MAP_INFO.unpack(info.raw)
    return MapInfo(mid, typ, name.rstrip(b"\0").decode(errors="replace"), ks, vs, me, fl)


def prog_info_by_id(prog_id: int) -> ProgInfo | None:
    """The info of a program by id; None when it is gone."""
    try:
        fd = prog_fd_by_id(prog_id)
    except BpfError:
        return None
    try:
        return prog_info(fd)
    finally:
        os.close(fd)


def pinned_map_id(path: str) -> int | None:
    try:
        fd = obj_get(path)
    except BpfError:
        return None
    try:
        return map_info(fd).id
    finally:
        os.close(fd)
