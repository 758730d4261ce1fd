"""The glue between the kernel and the slow path, shared by `skyguard replay` and `skyguardd`.

events (ring buffer) -> classify.SlowPath -> decisions written back into the flow map -> the kernel enforces them from
the next packet. Every classification and enforcement decision is logged (structlog), rate-limited per flow, and
published to socket subscribers.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from skyguard import wire
from skyguard.logs import RateLimiter
from skyguard.policy import Policy
from skyguard.slowpath.classify import Decision, PrefixChange, SlowPath

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

F_DAEMON = wire.C["SG_F_DAEMON"]
F_DONE = wire.C["SG_F_DONE"]
F_BLOCKED = wire.C["SG_F_BLOCKED"]
F_EXEMPT = wire.C["SG_F_EXEMPT"]
R_PSTN_NAME = wire.C["SG_R_PSTN_NAME"]
R_MANUAL = wire.C["SG_R_MANUAL"]
R_SOM_VOICE = wire.C["SG_R_SOM_VOICE"]
S_MS = wire.C["SG_S_MS"]
# kernel decisions on strong evidence, whose proving ends are learned: SoM voice, and the Microsoft-attribute rows that
# settle a flow (a provisional ms-stun-attr alone teaches nothing: one end's attributes may be a relay's answer). The
# replay build reads the same constant: only these `classified` records end its batch.
R_STRONG = wire.C["SG_STRONG_REASONS"]
EXPIRE_BATCH = 20_000
EV_CLASSIFIED = wire.EV_CLASSIFIED
_EVENT_NAMES = wire.EVENT_NAMES  # type -> name, for the per-event counter
_SAMPLE_NAME = _EVENT_NAMES[wire.EV_SAMPLE]
LARGE_TABLE = 50_000  # from this many flows, queries are served from the snapshot: a full read of the map is too slow
_FLOW_SORT: dict[str, Callable[[wire.Flow], int]] = {
    "packets": lambda f: f.packets, "bytes": lambda f: f.nbytes, "last": lambda f: f.last_ns,
    "first": lambda f: f.first_ns,
}


class KernelLike(Protocol):
    """What the engine needs of kernel.Kernel (a fake in unit tests)."""

    def load_policy(self, policy: Policy) -> None: ...
    def poll_events(self, timeout_ms: int = 0) -> list[wire.Event]: ...
    def drain_events(self, sink: Callable[[wire.Event], None], timeout_ms: int = 0,
                     sample_sink: Callable[[bytes], None] | None = None) -> int: ...
    def flows(self) -> Iterator[tuple[wire.FlowKey, wire.Flow]]: ...
    def flow(self, key: wire.FlowKey) -> wire.Flow | None: ...
    def set_class(self, key: wire.FlowKey, cls: int, reason: int) -> bool: ...
    def set_flow_flags(self, key: wire.FlowKey, set_flags: int = 0, clear_flags: int = 0) -> bool: ...
    def delete_flow(self, key: wire.FlowKey) -> None: ...
    def add_prefix(self, kind: str, network: Network, source: int, expires_ns: int = 0) -> None: ...
    def remove_prefix(self, kind: str, network: Network) -> None: ...
    def prefixes(self, kind: str) -> list[tuple[Network, int, int]]: ...
    def stats(self) -> dict[str, int]: ...
    def flow_count(self) -> int: ...


def addr_in(raw: bytes, net: Network) -> bool:
    ip = ipaddress.IPv6Address(raw)
    v4 = ip.ipv4_mapped
    if net.version == 4:
        return v4 is not None and v4 in net
    return v4 is None and ip in net


@dataclass
class EngineCounters:
    events: Counter = field(default_factory=Counter)
    decisions: int = 0
    prefix_changes: int = 0
    endpoints_learned: int = 0
    expired_flows: int = 0
    reapplied: int = 0  # decisions a packet's own class write had undone, applied again by recheck()
    # (new class, reason bits) -> classifications seen (kernel events and the daemon's decisions): for metrics
    classified: Counter = field(default_factory=Counter)


class Engine:
    def __init__(self, kernel: KernelLike, policy: Policy, *, slowpath: SlowPath | None = None,
                 logger: Any = None, log_all: bool = False) -> None:
        self.kernel = kernel
        self.policy = policy
        self.slow = slowpath or SlowPath(policy)
        self.log = logger or structlog.get_logger("skyguard.engine")
        self.log_all = log_all  # log every classification, not only the classes whose policy has log = true
        self.limiter = RateLimiter(limit=5, period=60.0)  # log lines per flow per minute
        self.log_suppressed = 0
        self.counters = EngineCounters()
        self.subscribers: list[Callable[[dict], None]] = []
        self._listening: dict[Callable[[dict], None], Callable[[], bool]] = {}  # subscriber -> "wants events now"
        self.table = None  # flowtable.FlowTable: the daemon sets one (scans at a million flows)
        # key, old class, new class, ts_ns, packets of the flow when decided
        self.on_decision: list[Callable[[wire.FlowKey, int, int, int, int], None]] = []
        # RECHECK_NS after it is applied, a class decision is checked once more (recheck; off until the daemon sets
        # recheck_ns: a replay's program runs only between its decisions)
        self.recheck_ns: int | None = None
        self._recheck: deque[tuple[int, wire.FlowKey]] = deque()
        self._latest: dict[wire.FlowKey, tuple[int, int, int]] = {}  # key -> (class, reason, due) last decided
        # key and flow as last read, just before the daemon deletes it (idle expiry): the IPFIX exporter's flow end
        self.on_flow_end: list[Callable[[wire.FlowKey, wire.Flow], None]] = []
        kernel.load_policy(policy)

    # ---- flow-table scans --------------------------------------------------------------------------------------------

    def _flows_touching(self, nets: list[Network]) -> Iterator[tuple[wire.FlowKey, wire.Flow]]:
        """Flows with an endpoint in any of `nets`: from a snapshot of the table taken now (vectorised, then one fresh
        lookup per candidate), else by decoding the whole table (replay, small tables). Taken now, not the loop's
        last one: the kernel checks a new prefix only at flow creation, so a flow made after the last snapshot and
        before the prefix would be missed (a block would never reach it). One full read: 0.6-0.9 s at 1M flows."""
        if not nets:
            return
        if self.table is None:
            for key, flow in list(self.kernel.flows()):
                if any(addr_in(key.lo_addr, n) or addr_in(key.hi_addr, n) for n in nets):
                    yield key, flow
            return
        from skyguard.kernel.flowtable import addr_mask

        s = self.table.refresh()  # flows created from here on are checked by the kernel against the new prefix
        mask = None
        for n in nets:
            m = addr_mask(s.keys["lo_addr"], n) | addr_mask(s.keys["hi_addr"], n)
            mask = m if mask is None else mask | m
        for i in mask.nonzero()[0]:
            key = s.key(int(i))
            flow = self.kernel.flow(key)
            if flow is not None:
                yield key, flow

    # ---- policy -----------------------------------------------------------------------------------------------------

    def set_policy(self, policy: Policy) -> None:
        """Atomic swap in the kernel (generation flip), then the slow path; flow state is kept."""
        old_exempt = list(self.policy.exempt_prefixes)
        self.kernel.load_policy(policy)
        self.slow.set_policy(policy)
        self.policy = policy
        self._resync_exempt(old_exempt)
        self.log.info("policy loaded", policy=policy.name, path=policy.path, digest=policy.digest[:12])

    def _resync_exempt(self, old: list[Network]) -> None:
        """Flows touching the old or the new exempt prefixes get their flag recomputed."""
        nets = list(self.policy.exempt_prefixes)
        for key, flow in list(self._flows_touching(list({*old, *nets}))):
            exempt = any(addr_in(key.lo_addr, n) or addr_in(key.hi_addr, n) for n in nets)
            if exempt != bool(flow.flags & F_EXEMPT):
                self.kernel.set_flow_flags(key, *_flag(F_EXEMPT, exempt))

    # ---- events -----------------------------------------------------------------------------------------------------

    def pump(self, timeout_ms: int = 0) -> int:
        """Drain the ring buffer and act on every event as it is read; returns how many were handled."""
        return self.kernel.drain_events(self.handle, timeout_ms, sample_sink=self.handle_sample)

    def handle(self, ev: wire.Event) -> None:
        name = _EVENT_NAMES.get(ev.type)  # Event.name without its property call: every event is counted
        self.counters.events[ev.name if name is None else name] += 1
        if ev.type == EV_CLASSIFIED:
            self._log_class(ev.key, ev.old_cls, ev.new_cls, ev.reason, ev.ts_ns, by="kernel")
            for cb in self.on_decision:
                cb(ev.key, ev.old_cls, ev.new_cls, ev.ts_ns, ev.pkts)
            if ev.reason & R_STRONG and ev.key.proto == 17:
                self._learn_endpoints(ev)
        # events carry what the slow path needs: no flow-map read per event
        slow = self.slow
        for d in slow.on_event(ev):
            self.apply(d, ev.ts_ns)
        if slow.dns.pending:  # rarely: most events learn no prefix, and this runs for every one
            for pc in slow.take_prefix_changes():
                self.apply_prefix(pc, ev.ts_ns)

    def handle_sample(self, raw: bytes) -> None:
        """handle() for a `sample` record left undecoded (SlowPath.on_sample_record): samples are most of the records
        (pump, and the replay's compiled loop)."""
        self.counters.events[_SAMPLE_NAME] += 1
        slow = self.slow
        decisions = slow.on_sample_record(raw)
        if decisions or slow.dns.pending:
            ts_ns = wire.sample_record(raw)[1]
            for d in decisions:
                self.apply(d, ts_ns)
            for pc in slow.take_prefix_changes():
                self.apply_prefix(pc, ts_ns)

    def _learn_endpoints(self, ev: wire.Event) -> None:
        """A strong kernel decision teaches the kernel's `endpoints` map the ends that sent the proof: both ends of SoM
        voice, else those that sent Microsoft attributes (docs/signatures.md, "Learned endpoints"). One flow read per
        such decision, which is rare; the kernel reads the map at UDP flow creation."""
        learn = getattr(self.kernel, "learn_endpoint", None)
        flow = self.kernel.flow(ev.key) if learn is not None else None
        if flow is None:
            return
        dirs = [True, True] if ev.reason & R_SOM_VOICE else [bool(s & S_MS) for s in flow.stun]
        ends = ((ev.key.lo_addr, ev.key.lo_port), (ev.key.hi_addr, ev.key.hi_port))
        for (addr, port), sent in zip(ends, dirs, strict=True):
            if sent and port >= 1024 and not 3478 <= port <= 3481:  # servers' ports are never learned
                learn(addr, port, ev.key.vlan, ev.ts_ns, ev.reason, ev.new_cls)
                self.counters.endpoints_learned += 1

    def apply(self, d: Decision, ts_ns: int = 0) -> bool:
        flow = self.kernel.flow(d.key)
        if flow is None:
            return False
        if flow.cls == d.cls and flow.flags & F_DAEMON:
            self._latest.pop(d.key, None)  # the flow already holds this decision: an older one must not come back
            return False
        if not self.kernel.set_class(d.key, d.cls, d.reason):
            return False
        self.counters.decisions += 1
        if self.recheck_ns is not None:
            due = time.monotonic_ns() + self.recheck_ns
            self._recheck.append((due, d.key))
            self._latest[d.key] = (d.cls, d.reason, due)
        self._log_class(d.key, flow.cls, d.cls, d.reason, ts_ns, by="daemon", detail=d.detail)
        for cb in self.on_decision:
            cb(d.key, flow.cls, d.cls, ts_ns, flow.packets)
        return True

    def recheck(self, now_ns: int | None = None, most: int = 4096) -> int:
        """Class decisions applied at least `recheck_ns` ago, read once more. A packet that passed its SG_F_DAEMON
        check just before a decision set the flag may still write its own class after the decision's read-back
        (kernel/loader.py set_class); once that run has ended no packet can, so one more application is final
        (the daemon waits 200 ms, where a run takes well under a microsecond).
        At most `most` are read per call (the rest wait for the next one). Returns how many were applied again."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        again = 0
        while self._recheck and self._recheck[0][0] <= now_ns and most > 0:
            most -= 1
            due, key = self._recheck.popleft()
            latest = self._latest.get(key)
            if latest is None or latest[2] != due:
                continue  # decided again since: that decision's own entry checks it
            cls, reason, _due = self._latest.pop(key)
            flow = self.kernel.flow(key)
            if flow is None or (flow.cls == cls and flow.reason == reason) or not flow.flags & F_DAEMON:
                continue  # gone, as decided, or handed back to the kernel meanwhile
            if self.kernel.set_class(key, cls, reason):
                again += 1
                self.counters.reapplied += 1
                self.log.info("decision applied again", flow=str(key), cls=wire.class_name(cls),
                              overwritten_by=flow.class_name)
        return again

    def apply_prefix(self, pc: PrefixChange, ts_ns: int = 0) -> None:
        self.counters.prefix_changes += 1
        if pc.add:
            self.kernel.add_prefix(pc.kind, pc.network, wire.SRC_LEARNED, pc.expires_ns)
        else:
            self.kernel.remove_prefix(pc.kind, pc.network)
        self.log.info("prefix learned" if pc.add else "prefix expired", kind=pc.kind, prefix=str(pc.network),
                      name=pc.name, expires_ns=pc.expires_ns)
        self.publish({"type": "prefix", "kind": pc.kind, "prefix": str(pc.network), "name": pc.name, "add": pc.add})
        if pc.add and pc.kind == "pstn":
            # flows that started before the DNS answer was seen: the kernel only looks prefixes up at flow creation
            for key, flow in list(self._flows_touching([pc.network])):
                if key.proto != 17 or flow.cls == wire.OUT:
                    continue
                self.apply(Decision(key, wire.OUT, R_PSTN_NAME, f"learned {pc.name}"), ts_ns)

    # ---- logging and publishing -------------------------------------------------------------------------------------

    def subscribe(self, cb: Callable[[dict], None], listening: Callable[[], bool] | None = None) -> Callable[[], None]:
        """`cb` gets every published event; `listening` (optional) says whether it wants them at this moment (the
        control socket: whether a client is subscribed), so events nobody reads are not even built."""
        self.subscribers.append(cb)
        if listening is not None:
            self._listening[cb] = listening
        return lambda: self._unsubscribe(cb)

    def _unsubscribe(self, cb: Callable[[dict], None]) -> None:
        if cb in self.subscribers:
            self.subscribers.remove(cb)
        self._listening.pop(cb, None)

    def listening(self) -> bool:
        return any(cb not in self._listening or self._listening[cb]() for cb in self.subscribers)

    def publish(self, event: dict) -> None:
        for cb in list(self.subscribers):
            try:
                cb(event)
            except Exception:  # a broken subscriber must not stop the engine
                self._unsubscribe(cb)

    def _log_class(self, key: wire.FlowKey, old: int, new: int, reason: int, ts_ns: int, *, by: str,
                   detail: str = "") -> None:
        self.counters.classified[(new, reason)] += 1
        slot = self.policy.slot(new) if new < wire.NCLASSES else wire.PolicySlot()
        logged = bool(slot.log or self.log_all or slot.action != wire.PASS)
        allowed = logged and self.limiter.allow(key)
        if logged and not allowed:
            self.log_suppressed += 1
        if not (allowed or self.listening()):
            return  # nobody reads it: no formatting (the address strings are the costly part of an event)
        a, b = key.endpoints()
        event = {"type": "classified", "by": by, "proto": key.proto_name, "a": a, "b": b, "vlan": key.vlan,
                 "old_class": wire.class_name(old), "class": wire.class_name(new), "reason": wire.reason_name(reason),
                 "reasons": wire.reason_names(reason), "action": wire.ACTION_NAMES[slot.action], "ts_ns": ts_ns}
        if detail:
            event["detail"] = detail
        self.publish(event)
        if allowed:
            fields = {k: v for k, v in event.items() if k not in ("type", "reasons")}
            self.log.info("flow classified", **fields)
            if slot.action != wire.PASS:
                self.log.info("enforcement", flow=str(key), action=event["action"], dscp=slot.dscp,
                              class_=wire.class_name(new))

    # ---- queries ----------------------------------------------------------------------------------------------------

    def action_of(self, flow: wire.Flow) -> str:
        if flow.flags & F_BLOCKED:
            return "drop"
        if flow.flags & F_EXEMPT:
            return "pass"
        cls = flow.cls if flow.cls < wire.NCLASSES else 0
        return wire.ACTION_NAMES[self.policy.slot(cls).action]

    def flow_row(self, key: wire.FlowKey, flow: wire.Flow) -> dict:
        a, b = key.endpoints(flow.init_dir)
        return {"proto": key.proto_name, "a": a, "b": b, "vlan": key.vlan, "class": flow.class_name,
                "reason": wire.reason_name(flow.reason), "action": self.action_of(flow), "packets": flow.packets,
                "bytes": flow.nbytes, "dropped": flow.dropped, "first_ns": flow.first_ns, "last_ns": flow.last_ns}

    def flow_rows(self, flows: Iterable[tuple[wire.FlowKey, wire.Flow]] | None = None) -> list[dict]:
        return [self.flow_row(k, f) for k, f in (self.kernel.flows() if flows is None else flows)]

    def kernel_stats(self) -> dict[str, int]:
        return self.kernel.stats()

    def flow_count(self) -> int:
        """Exact for small tables; for large ones the last snapshot's (counting reads the whole map)."""
        snap = self.table.snapshot if self.table is not None else None
        if snap is not None and len(snap) >= LARGE_TABLE:
            return len(snap)
        return self.kernel.flow_count()

    def query_flows(self, *, cls: int | None = None, net: Network | None = None, sort: str = "packets",
                    limit: int = 100, fresh: bool | None = None) -> tuple[list[dict], int, float]:
        """(rows sorted descending by `sort`, how many flows matched, age of the data in ms) for the operator's
        `flows`. Small tables are read afresh (unless fresh=False); large ones come from the snapshot the daemon's
        loop keeps refreshing, and only the rows returned are read back from the kernel."""
        if self.table is None:  # replay and tests: decode the whole table
            pairs = [(k, f) for k, f in self.kernel.flows() if (cls is None or f.cls == cls)
                     and (net is None or addr_in(k.lo_addr, net) or addr_in(k.hi_addr, net))]
            pairs.sort(key=lambda kf: _FLOW_SORT[sort](kf[1]), reverse=True)
            return self.flow_rows(pairs[:limit] if limit else pairs), len(pairs), 0.0
        snap = self.table.snapshot
        if fresh if fresh is not None else (snap is None or len(snap) < LARGE_TABLE):
            self.table.refresh()
        snap, idx, total = self.table.select(cls=cls, net=net, sort=sort, limit=limit)
        pairs, seen = [], set()
        for i in idx:
            key = snap.key(int(i))
            flow = self.kernel.flow(key) if key not in seen else None  # read afresh; gone or duplicate: skipped
            seen.add(key)
            if flow is not None:
                pairs.append((key, flow))
        return self.flow_rows(pairs), total, round((time.monotonic_ns() - snap.taken_ns) / 1e6, 1)

    def flow_detail(self, key: wire.FlowKey) -> dict | None:
        """One flow's row plus its inspection state, read now; None when the kernel has no such flow."""
        flow = self.kernel.flow(key)
        if flow is None:
            return None
        row = self.flow_row(key, flow)
        row.update({"reasons": wire.reason_names(flow.reason), "evidence": flow.evidence, "inspected": flow.inspected,
                    "stun": list(flow.stun), "sent": list(flow.sent), "rtp_pt": list(flow.rtp_pt),
                    "cid_rep": list(flow.cid_rep),
                    "flags": flow.flags})
        return row

    def blocks(self) -> list[tuple[Network, int]]:
        """The manual blocks: (prefix, expiry in wall-clock ns, 0 = never)."""
        return [(net, exp) for net, _src, exp in self.kernel.prefixes("block")]

    # ---- operator actions and housekeeping --------------------------------------------------------------------------

    def block(self, network: Network, expires_ns: int = 0) -> int:
        """Manual block: LPM entry for new flows, flag on existing ones. Returns how many live flows it caught."""
        self.kernel.add_prefix("block", network, wire.SRC_MANUAL, expires_ns)
        n = self._sync_blocked(network)
        self.log.info("manual block", prefix=str(network), expires_ns=expires_ns, flows=n)
        return n

    def unblock(self, network: Network) -> bool:
        known = any(p == network for p, _s, _e in self.kernel.prefixes("block"))
        if known:
            self.kernel.remove_prefix("block", network)
        self._sync_blocked(network)
        self.log.info("manual unblock", prefix=str(network), existed=known)
        return known

    def _sync_blocked(self, changed: Network) -> int:
        """Recompute the blocked flag of the flows touching `changed`; returns how many of them are blocked now."""
        nets = [p for p, _s, _e in self.kernel.prefixes("block")]
        caught = 0
        for key, flow in list(self._flows_touching([changed])):
            hit = any(addr_in(key.lo_addr, n) or addr_in(key.hi_addr, n) for n in nets)
            caught += hit
            if hit != bool(flow.flags & F_BLOCKED):
                self.kernel.set_flow_flags(key, *_flag(F_BLOCKED, hit))
        return caught

    def expire_blocks(self, now_ns: int) -> None:
        for net, _src, exp in self.kernel.prefixes("block"):
            if exp and exp <= now_ns:
                self.unblock(net)

    def expire_flows(self, now_ns: int, timeouts: dict[str, float]) -> int:
        """Delete flows idle for longer than their timeout (seconds by 'udp', 'tcp', 'other'). With a flow-table
        snapshot the candidates come from it and each is re-read before deletion (it may have woken up since)."""
        gone = 0
        if self.table is not None:
            if self.table.snapshot is None:
                return 0
            # at most EXPIRE_BATCH deletions per snapshot: a mass expiry must not stall the loop
            candidates = ((k, self.kernel.flow(k)) for k in self.table.idle(now_ns, timeouts)[:EXPIRE_BATCH])
        else:
            candidates = iter(list(self.kernel.flows()))
        for key, flow in candidates:
            if flow is None:
                continue
            if flow.cls in (wire.UNKNOWN, wire.OTHER):
                t = timeouts.get("other", 60.0)
            else:
                t = timeouts.get("tcp" if key.proto == 6 else "udp", 120.0)
            if now_ns - flow.last_ns > t * 1e9:
                for cb in self.on_flow_end:
                    cb(key, flow)
                self.kernel.delete_flow(key)
                self.slow.forget(key)
                gone += 1
        self.counters.expired_flows += gone
        return gone


def _flag(bit: int, on: bool) -> tuple[int, int]:
    """(set_flags, clear_flags) that turn `bit` on or off: the kernel changes that bit alone (no read-modify-write of
    the flow here, which would overwrite what the kernel counts meanwhile)."""
    return (bit, 0) if on else (0, bit)

