"""A snapshot of the kernel's flow table for the daemon: queries and expiry at a million flows.

Reading a million flows and decoding them in Python takes seconds, so the daemon never scans per request. It keeps
one compact, columnar copy of the table (key, first/last seen, packets, bytes, class: 73 bytes a flow instead of the
kernel's 136) and refreshes it in place, one 8192-flow batch (one bpf_map_lookup_batch) per loop iteration:
a rolling snapshot, never two copies at once. Queries select with numpy over the columns and read only the rows they
return afresh from the kernel. During a refresh the rows are a mix of this round's and the last round's, like any
view of a table that changes while it is read; a row that vanished meanwhile is skipped when it is read back.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from skyguard import wire

# the kernel's struct sg_flow_key and struct sg_flow, laid out as skyguard.h declares them
KEY_DTYPE = np.dtype(wire.STRUCTS["sg_flow_key"].numpy_spec())
FLOW_DTYPE = np.dtype(wire.STRUCTS["sg_flow"].numpy_spec())

SORTS = ("packets", "bytes", "last", "first")
TOP_N = 1000  # unfiltered requests up to this limit are served from a per-snapshot top list


class Columns:
    """Column arrays with room for `cap` flows (np.zeros: pages are only touched as rows are written)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.keys = np.zeros(cap, dtype=KEY_DTYPE)
        self.first_ns = np.zeros(cap, dtype=np.uint64)
        self.last_ns = np.zeros(cap, dtype=np.uint64)
        self.pkts = np.zeros(cap, dtype=np.uint64)
        self.bytes = np.zeros(cap, dtype=np.uint64)
        self.cls = np.zeros(cap, dtype=np.uint8)

    def grow(self, cap: int) -> None:
        for name in ("keys", "first_ns", "last_ns", "pkts", "bytes", "cls"):
            old = getattr(self, name)
            new = np.zeros(cap, dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
        self.cap = cap

    def put(self, at: int, k: bytes, v: bytes, n: int) -> None:
        vals = np.frombuffer(v, dtype=FLOW_DTYPE, count=n)
        self.keys[at:at + n] = np.frombuffer(k, dtype=KEY_DTYPE, count=n)
        self.first_ns[at:at + n] = vals["first_ns"]
        self.last_ns[at:at + n] = vals["last_ns"]
        self.pkts[at:at + n] = vals["pkts"].sum(axis=1)
        self.bytes[at:at + n] = vals["bytes"].sum(axis=1)
        self.cls[at:at + n] = vals["cls"]


@dataclass
class Snapshot:
    """A view of the first `n` rows of the columns."""

    cols: Columns
    n: int
    taken_ns: int  # time.monotonic_ns() when the last complete round ended
    seconds: float  # how long that round took, wall clock, summed over its chunks
    kernel: object = None
    top: dict[str, np.ndarray] = field(default_factory=dict)  # sort key -> best TOP_N rows, computed on first use

    def __len__(self) -> int:
        return self.n

    @property
    def keys(self) -> np.ndarray:
        return self.cols.keys[: self.n]

    def key(self, i: int) -> wire.FlowKey:
        return wire.FlowKey.unpack(self.cols.keys[i].tobytes())

    def flow(self, i: int) -> wire.Flow | None:
        """The flow as it is now in the kernel (None if it went away since the row was copied)."""
        return self.kernel.flow(self.key(i))


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
    """Incrementally refreshed, rolling snapshot of the kernel flow map."""

    def __init__(self, kernel, *, min_interval_s: float = 1.0, cap: int = 65536) -> None:
        self.kernel = kernel
        self.min_interval_s = min_interval_s
        self.cols = Columns(cap)
        self.snapshot: Snapshot | None = None
        self._it: Iterator[tuple[bytes, bytes, int]] | None = None
        self._n = 0
        self._spent = 0.0
        self._next_start = 0.0

    @property
    def refreshing(self) -> bool:
        return self._it is not None

    def step(self, now: float | None = None) -> bool:
        """Do one chunk of refresh work if one is due; True when a refresh round was completed."""
        now = time.monotonic() if now is None else now
        if self._it is None:
            if now < self._next_start:
                return False
            self._it = self.kernel.flows_raw()
            self._n, self._spent = 0, 0.0
        t0 = time.perf_counter()
        try:
            k, v, n = next(self._it)
        except StopIteration:
            self._spent += time.perf_counter() - t0
            self._finish(now)
            return True
        if self._n + n > self.cols.cap:
            self.cols.grow(max(self._n + n, self.cols.cap * 2))
        self.cols.put(self._n, k, v, n)
        self._n += n
        if self.snapshot is not None:  # the rolling view covers this round's rows and the rest of the last round's
            self.snapshot.cols = self.cols
            self.snapshot.n = max(self._n, self.snapshot.n)
        self._spent += time.perf_counter() - t0
        return False

    def refresh(self) -> Snapshot:
        """A complete round now (blocking): for tests, small tables and the first query."""
        self._it = None
        self._next_start = 0.0
        while not self.step(now=0.0):
            pass
        assert self.snapshot is not None
        return self.snapshot

    def _finish(self, now: float) -> None:
        self.snapshot = Snapshot(self.cols, self._n, time.monotonic_ns(), self._spent, self.kernel)
        self._it = None
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
        c, n = s.cols, s.n
        mask = np.ones(n, dtype=bool)
        if cls is not None:
            mask &= c.cls[:n] == cls
        if net is not None:
            mask &= addr_mask(c.keys["lo_addr"][:n], net) | addr_mask(c.keys["hi_addr"][:n], net)
        idx = np.nonzero(mask)[0]
        total = len(idx)
        column = {"packets": c.pkts, "bytes": c.bytes, "last": c.last_ns, "first": c.first_ns}[sort]
        score = column[idx]
        if limit and total > limit:
            part = np.argpartition(-score.astype(np.float64), limit - 1)[:limit]
            idx, score = idx[part], score[part]
        order = np.argsort(-score.astype(np.float64), kind="stable")
        return s, idx[order], total

    def idle(self, now_ns: int, timeouts: dict[str, float]) -> list[wire.FlowKey]:
        """Keys of flows idle past their timeout in the last snapshot (seconds by 'udp', 'tcp', 'other')."""
        s = self.current()
        c, n = s.cols, s.n
        cls = c.cls[:n]
        undecided = (cls == wire.UNKNOWN) | (cls == wire.OTHER)
        limit = np.where(undecided, timeouts.get("other", 60.0),
                         np.where(c.keys["proto"][:n] == 6, timeouts.get("tcp", 3600.0), timeouts.get("udp", 120.0)))
        age = (now_ns - c.last_ns[:n].astype(np.int64)) / 1e9
        return [s.key(int(i)) for i in np.nonzero(age > limit)[0]]
