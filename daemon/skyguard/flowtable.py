"""A snapshot of the kernel's flow table for the daemon: queries and expiry at a million flows.

Reading 1M flows costs the kernel ~350 ms of copying and decoding them in Python seconds, so the daemon never scans
per request: it refreshes this snapshot a chunk (8192 flows, one bpf_map_lookup_batch) per loop iteration, and
answers `flows` from the last complete snapshot with vectorised selection (numpy structured arrays mirroring
struct sg_flow_key / struct sg_flow). Only the rows returned are decoded.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from . import wire

KEY_DTYPE = np.dtype([("lo_addr", "S16"), ("hi_addr", "S16"), ("lo_port", "<u2"), ("hi_port", "<u2"),
                      ("vlan", "<u2"), ("proto", "u1"), ("_pad", "u1")])
FLOW_DTYPE = np.dtype([("first_ns", "<u8"), ("last_ns", "<u8"), ("pkts", "<u8", (2,)), ("bytes", "<u8", (2,)),
                       ("dropped", "<u8"), ("reason", "<u4"), ("prev_cid", "<u4", (2,)), ("cid_rep", "<u2", (2,)),
                       ("evidence", "<u2"), ("inspected", "<u2"), ("cls", "u1"), ("init_dir", "u1"),
                       ("rest", "V18")])
assert KEY_DTYPE.itemsize == wire.FlowKey.FMT.size and FLOW_DTYPE.itemsize == wire.Flow.FMT.size

SORTS = ("packets", "bytes", "last", "first")
TOP_N = 1000  # unfiltered requests up to this limit are served from a per-snapshot top list


@dataclass
class Snapshot:
    keys: np.ndarray  # KEY_DTYPE
    vals: np.ndarray  # FLOW_DTYPE
    raw_keys: memoryview
    raw_vals: memoryview
    taken_ns: int  # time.monotonic_ns() when complete
    seconds: float  # how long the refresh took, wall clock, summed over its chunks
    top: dict[str, np.ndarray] = field(default_factory=dict)  # sort key -> best TOP_N rows, computed on first use

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, i: int) -> wire.FlowKey:
        n = wire.FlowKey.FMT.size
        return wire.FlowKey.unpack(bytes(self.raw_keys[i * n:(i + 1) * n]))

    def flow(self, i: int) -> wire.Flow:
        n = wire.Flow.FMT.size
        return wire.Flow.unpack(bytes(self.raw_vals[i * n:(i + 1) * n]))


def _mapped(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[bytes, int]:
    """(network address as 16 bytes, prefix length in the 128-bit space): IPv4 mapped like flow keys."""
    if net.version == 4:
        return b"\0" * 10 + b"\xff\xff" + net.network_address.packed, 96 + net.prefixlen
    return net.network_address.packed, net.prefixlen


def addr_mask(addrs: np.ndarray, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> np.ndarray:
    """Boolean mask: which 16-byte addresses (S16 array) are inside `net`."""
    base, plen = _mapped(net)
    a = np.frombuffer(addrs.tobytes(), dtype=np.uint8).reshape(-1, 16)
    full, rem = divmod(plen, 8)
    m = np.all(a[:, :full] == np.frombuffer(base[:full], dtype=np.uint8), axis=1) if full else np.ones(len(a), bool)
    if rem:
        bits = (0xFF << (8 - rem)) & 0xFF
        m &= (a[:, full] & bits) == (base[full] & bits)
    return m


class FlowTable:
    """Incrementally refreshed snapshot of the kernel flow map."""

    def __init__(self, kernel, *, min_interval_s: float = 1.0) -> None:
        self.kernel = kernel
        self.min_interval_s = min_interval_s
        self.snapshot: Snapshot | None = None
        self._it: Iterator[tuple[bytes, bytes, int]] | None = None
        self._kbuf = bytearray()
        self._vbuf = bytearray()
        self._n = 0
        self._spent = 0.0
        self._next_start = 0.0

    @property
    def refreshing(self) -> bool:
        return self._it is not None

    def step(self, now: float | None = None) -> bool:
        """Do one chunk of refresh work if one is due; True when a new snapshot was completed."""
        now = time.monotonic() if now is None else now
        if self._it is None:
            if now < self._next_start:
                return False
            self._start()
        t0 = time.perf_counter()
        try:
            k, v, n = next(self._it)
            self._append(k, v, n)
            self._spent += time.perf_counter() - t0
            return False
        except StopIteration:
            self._spent += time.perf_counter() - t0
            self._finish(now)
            return True

    def refresh(self) -> Snapshot:
        """A complete refresh now (blocking): for replay, tests and the first query."""
        self._start()
        while not self.step(now=0.0):
            pass
        assert self.snapshot is not None
        return self.snapshot

    def _start(self) -> None:
        """Buffers sized for the last snapshot plus room: chunks are copied in as they arrive, so completing a
        snapshot costs no big copy (at 1M flows a join of the chunks stalled the loop for ~100 ms)."""
        self._it = self.kernel.flows_raw()
        cap = (len(self.snapshot) if self.snapshot is not None else 0) + 2 * 8192
        self._kbuf = bytearray(cap * KEY_DTYPE.itemsize)
        self._vbuf = bytearray(cap * FLOW_DTYPE.itemsize)
        self._n, self._spent = 0, 0.0

    def _append(self, k: bytes, v: bytes, n: int) -> None:
        ks, vs = KEY_DTYPE.itemsize, FLOW_DTYPE.itemsize
        end = self._n + n
        if end * ks > len(self._kbuf):  # the table grew during the refresh
            self._kbuf.extend(bytes(max(end * ks - len(self._kbuf), len(self._kbuf) // 2)))
            self._vbuf.extend(bytes(len(self._kbuf) // ks * vs - len(self._vbuf)))
        self._kbuf[self._n * ks:end * ks] = k
        self._vbuf[self._n * vs:end * vs] = v
        self._n = end

    def _finish(self, now: float) -> None:
        rk = memoryview(self._kbuf)[: self._n * KEY_DTYPE.itemsize]
        rv = memoryview(self._vbuf)[: self._n * FLOW_DTYPE.itemsize]
        self.snapshot = Snapshot(np.frombuffer(rk, dtype=KEY_DTYPE), np.frombuffer(rv, dtype=FLOW_DTYPE), rk, rv,
                                 time.monotonic_ns(), self._spent)
        self._it = None
        self._kbuf = self._vbuf = bytearray()
        # at most ~10% of the loop's time goes to refreshing, and never more often than min_interval_s
        self._next_start = now + max(self.min_interval_s, 10 * self._spent)

    def current(self) -> Snapshot:
        return self.snapshot if self.snapshot is not None else self.refresh()

    # ---- queries ----------------------------------------------------------------------------------------------------

    def select(self, *, cls: int | None = None, net=None, sort: str = "packets",
               limit: int = 100) -> tuple[Snapshot, np.ndarray, int]:
        """(snapshot, row indices in order, total matching) for a `flows` request."""
        s = self.current()
        if cls is None and net is None and 0 < limit <= TOP_N:
            top = s.top.get(sort)
            if top is None:  # once per snapshot and sort key; later requests slice it
                _s, top, _t = self._select(s, None, None, sort, TOP_N)
                s.top[sort] = top
            return s, top[:limit], len(s)
        return self._select(s, cls, net, sort, limit)

    @staticmethod
    def _select(s: Snapshot, cls: int | None, net, sort: str, limit: int) -> tuple[Snapshot, np.ndarray, int]:
        v = s.vals
        mask = np.ones(len(s), dtype=bool)
        if cls is not None:
            mask &= v["cls"] == cls
        if net is not None:
            mask &= addr_mask(s.keys["lo_addr"], net) | addr_mask(s.keys["hi_addr"], net)
        idx = np.nonzero(mask)[0]
        total = len(idx)
        if sort == "packets":
            score = v["pkts"][idx].sum(axis=1)
        elif sort == "bytes":
            score = v["bytes"][idx].sum(axis=1)
        elif sort == "last":
            score = v["last_ns"][idx]
        else:
            score = v["first_ns"][idx]
        if limit and total > limit:
            part = np.argpartition(-score.astype(np.float64), limit - 1)[:limit]
            idx, score = idx[part], score[part]
        order = np.argsort(-score.astype(np.float64), kind="stable")
        return s, idx[order], total

    def idle(self, now_ns: int, timeouts: dict[str, float]) -> list[wire.FlowKey]:
        """Keys of flows idle past their timeout in the last snapshot (seconds by 'udp', 'tcp', 'other')."""
        s = self.current()
        v, k = s.vals, s.keys
        undecided = (v["cls"] == wire.UNKNOWN) | (v["cls"] == wire.OTHER)
        limit = np.where(undecided, timeouts.get("other", 60.0),
                         np.where(k["proto"] == 6, timeouts.get("tcp", 3600.0), timeouts.get("udp", 120.0)))
        age = (now_ns - v["last_ns"].astype(np.int64)) / 1e9
        return [s.key(int(i)) for i in np.nonzero(age > limit)[0]]
