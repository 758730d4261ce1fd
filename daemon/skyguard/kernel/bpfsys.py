"""The BPF syscalls skyguard needs beyond bcc: raw map access by fd (lookup, update, delete, batched iteration) and
BPF_PROG_TEST_RUN, through libbcc's and libbpf's C functions."""

from __future__ import annotations

import ctypes as ct
import errno
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import bcc
from bcc import libbcc

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
_BPF_NOEXIST = 1
_XDP_MD_FMT = "<6I"  # struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex

class _TestRunOpts(ct.Structure):
    """struct bpf_test_run_opts (libbpf)."""

    _fields_ = [
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p),
        ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p),
        ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("repeat", ct.c_int),
        ("duration", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    ]


_test_run = libbcc.lib.bpf_prog_test_run_opts
_test_run.restype = ct.c_int
_test_run.argtypes = [ct.c_int, ct.POINTER(_TestRunOpts)]

_ENOTSUPP = 524  # the kernel-internal "not supported" that BPF syscalls leak to userspace
BATCH = 8192  # entries per bpf_map_{lookup,update}_batch call


class _BatchOpts(ct.Structure):
    """struct bpf_map_batch_opts (libbpf)."""

    _fields_ = [("sz", ct.c_size_t), ("elem_flags", ct.c_uint64), ("flags", ct.c_uint64)]


def _batch_fns() -> tuple[Callable | None, Callable | None, Callable | None]:
    """libbpf's bpf_map_lookup_batch / bpf_map_update_batch / bpf_map_delete_batch (one syscall per BATCH entries),
    None when missing."""
    try:
        lib = ct.CDLL("libbpf.so.1", use_errno=True)
        look, upd, dele = lib.bpf_map_lookup_batch, lib.bpf_map_update_batch, lib.bpf_map_delete_batch
    except (OSError, AttributeError):
        return None, None, None
    look.restype = ct.c_int
    look.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_void_p, ct.c_void_p, ct.POINTER(ct.c_uint32),
                     ct.POINTER(_BatchOpts)]
    upd.restype = dele.restype = ct.c_int
    upd.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.POINTER(ct.c_uint32), ct.POINTER(_BatchOpts)]
    dele.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32), ct.POINTER(_BatchOpts)]
    return look, upd, dele


_lookup_batch, _update_batch, _delete_batch = _batch_fns()


@dataclass(frozen=True, slots=True)
class RunResult:
    verdict: int  # XDP_ABORTED=0, DROP=1, PASS=2, TX=3, REDIRECT=4
    data: bytes
    duration_ns: int


class RawMap:
    """A BPF map accessed by fd with raw key/value bytes."""

    def __init__(self, fd: int, key_size: int, value_size: int, percpu: bool = False):
        self.fd, self.key_size, self.value_size = fd, key_size, value_size
        self.ncpus = len(bcc.utils.get_possible_cpus()) if percpu else 1
        self.slot = (value_size + 7) & ~7 if percpu else value_size

    def lookup(self, key: bytes) -> bytes | None:
        kb = ct.create_string_buffer(key, self.key_size)
        vb = ct.create_string_buffer(self.slot * self.ncpus)
        if libbcc.lib.bpf_lookup_elem(self.fd, kb, vb) != 0:
            return None
        return vb.raw

    def update(self, key: bytes, value: bytes, flags: int = 0) -> bool:
        kb = ct.create_string_buffer(key, self.key_size)
        vb = ct.create_string_buffer(value, len(value))
        return libbcc.lib.bpf_update_elem(self.fd, kb, vb, flags) == 0

    def delete(self, key: bytes) -> bool:
        kb = ct.create_string_buffer(key, self.key_size)
        return libbcc.lib.bpf_delete_elem(self.fd, kb) == 0

    def iter_batches(self, batch: int = BATCH) -> Iterator[tuple[bytes, bytes, int]]:
        """(keys, values, n): the map in chunks of up to `batch` entries, keys and values packed back to back.
        Falls back to one lookup per key where the map type or libbpf has no batch operations."""
        if _lookup_batch is None or self.ncpus != 1:
            yield from self._iter_batches_slow(batch)
            return
        tok_in = ct.create_string_buffer(max(self.key_size, 8))
        tok_out = ct.create_string_buffer(max(self.key_size, 8))
        keys = ct.create_string_buffer(self.key_size * batch)
        vals = ct.create_string_buffer(self.value_size * batch)
        opts = _BatchOpts(sz=ct.sizeof(_BatchOpts))
        first = True
        while True:
            count = ct.c_uint32(batch)
            rc = _lookup_batch(self.fd, None if first else tok_in, tok_out, keys, vals, ct.byref(count),
                               ct.byref(opts))
            err = ct.get_errno() if rc != 0 else 0
            if rc != 0 and err != errno.ENOENT:
                if first and err in (errno.EINVAL, _ENOTSUPP, errno.EOPNOTSUPP):
                    yield from self._iter_batches_slow(batch)
                    return
                raise OSError(err, f"bpf_map_lookup_batch: {os.strerror(err)}")
            n = count.value
            if n:
                yield keys.raw[: n * self.key_size], vals.raw[: n * self.value_size], n
            if rc != 0:  # ENOENT: that was the last chunk
                return
            ct.memmove(tok_in, tok_out, len(tok_in))
            first = False

    def _iter_batches_slow(self, batch: int) -> Iterator[tuple[bytes, bytes, int]]:
        ks, vs = bytearray(), bytearray()
        n = 0
        for k in list(self.iter_keys()):
            v = self.lookup(k)
            if v is None:
                continue
            ks += k
            vs += v[: self.value_size]
            n += 1
            if n == batch:
                yield bytes(ks), bytes(vs), n
                ks, vs, n = bytearray(), bytearray(), 0
        if n:
            yield bytes(ks), bytes(vs), n

    def update_batch(self, keys: bytes, values: bytes, flags: int = 0) -> int:
        """Write len(keys) / key_size entries in chunks of BATCH; returns how many were written."""
        total = len(keys) // self.key_size
        if _update_batch is None:
            return sum(self.update(keys[i * self.key_size:(i + 1) * self.key_size],
                                   values[i * self.value_size:(i + 1) * self.value_size], flags)
                       for i in range(total))
        opts = _BatchOpts(sz=ct.sizeof(_BatchOpts), elem_flags=flags)
        done = 0
        while done < total:
            n = min(BATCH, total - done)
            kb = ct.create_string_buffer(keys[done * self.key_size:(done + n) * self.key_size], n * self.key_size)
            vb = ct.create_string_buffer(values[done * self.value_size:(done + n) * self.value_size],
                                         n * self.value_size)
            count = ct.c_uint32(n)
            rc = _update_batch(self.fd, kb, vb, ct.byref(count), ct.byref(opts))
            done += count.value
            if rc != 0:
                err = ct.get_errno()
                raise OSError(err, f"bpf_map_update_batch: {os.strerror(err)} after {done} entries")
        return done

    def delete_batch(self, keys: bytes) -> int:
        """Delete len(keys) / key_size entries, BATCH to a syscall; a key the map does not hold is passed over (the
        kernel stops a batch at it: the rest go on in the next call). Returns how many were deleted."""
        ks = self.key_size
        total = len(keys) // ks

        def one_by_one(start: int) -> int:
            return sum(self.delete(keys[i * ks:(i + 1) * ks]) for i in range(start, total))

        if _delete_batch is None:
            return one_by_one(0)
        opts = _BatchOpts(sz=ct.sizeof(_BatchOpts))
        done = deleted = 0
        while done < total:
            n = min(BATCH, total - done)
            kb = ct.create_string_buffer(keys[done * ks:(done + n) * ks], n * ks)
            count = ct.c_uint32(n)
            rc = _delete_batch(self.fd, kb, ct.byref(count), ct.byref(opts))
            err = ct.get_errno() if rc != 0 else 0
            if rc != 0 and err != errno.ENOENT:
                # the kernel refused the call before deleting anything, and `count` is what was passed in: the map
                # type has no batch delete (or this kernel no such command), so these go one by one
                if err in (errno.EINVAL, _ENOTSUPP, errno.EOPNOTSUPP):
                    return deleted + one_by_one(done)
                raise OSError(err, f"bpf_map_delete_batch: {os.strerror(err)} after {deleted} entries")
            if rc == 0 and count.value == 0:
                raise OSError(errno.EIO, "bpf_map_delete_batch deleted nothing and reported no error")
            # `count` keys were deleted; on ENOENT the next one is not in the map: passed over
            done += count.value + (rc != 0)
            deleted += count.value
        return deleted

    def iter_keys(self) -> Iterator[bytes]:
        cur = None
        nxt = ct.create_string_buffer(self.key_size)
        while True:
            kb = ct.create_string_buffer(cur, self.key_size) if cur is not None else None
            if libbcc.lib.bpf_get_next_key(self.fd, kb, nxt) != 0:
                return
            cur = nxt.raw
            yield cur


def prog_test_run(fd: int, data: bytes, meta_len: int = 0, repeat: int = 1) -> RunResult:
    """One BPF_PROG_TEST_RUN of program `fd` on `data`, whose first `meta_len` bytes are XDP metadata."""
    din = ct.create_string_buffer(data, len(data))
    dout = ct.create_string_buffer(len(data) + 256)
    opts = _TestRunOpts(sz=ct.sizeof(_TestRunOpts), repeat=max(1, repeat))
    opts.data_in = ct.cast(din, ct.c_void_p)
    opts.data_size_in = len(data)
    opts.data_out = ct.cast(dout, ct.c_void_p)
    opts.data_size_out = len(dout)
    ctx = None
    if meta_len:
        ctx = ct.create_string_buffer(struct.pack(_XDP_MD_FMT, meta_len, len(data), 0, 0, 0, 0), 24)
        opts.ctx_in = ct.cast(ctx, ct.c_void_p)
        opts.ctx_size_in = 24
    rc = _test_run(fd, ct.byref(opts))
    if rc != 0:
        err = ct.get_errno() or -rc
        raise OSError(err, f"bpf_prog_test_run_opts failed: {os.strerror(abs(err))}")
    out = dout.raw[: opts.data_size_out]
    return RunResult(verdict=opts.retval, data=out[meta_len:], duration_ns=opts.duration)
