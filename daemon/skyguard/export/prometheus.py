"""Prometheus metrics of skyguardd: computed on the daemon's housekeeping tick, served from a thread.

A scrape never touches the kernel or the flow table: the event loop builds an immutable `Sample` once a tick from
what it already holds (the per-CPU `stats` map, the engine's counters, the flow-table snapshot's class column, the
daemon's state), and the collector, running in prometheus_client's HTTP server thread, only formats the latest
one. Replacing the reference is atomic, so a scrape sees one whole tick, never half of two.

Every series has a bounded label set (classes, actions, outcomes, reasons, interfaces): nothing per flow.

Compatible with prometheus_client 0.16 (Debian 12's python3-prometheus-client) and later: only the public
collector/exposition API is used (the HTTP server is assembled from make_wsgi_app and ThreadingWSGIServer because
0.16's start_http_server returns no handle to stop it).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from skyguard import wire
from skyguard.endpoints import parse_endpoint

# Packets that never reach a class get a pseudo-class naming why, so the series of skyguard_packets_total add up to
# every packet the program saw: malformed packets (the policy's [malformed] action), manual blocks (dropped whatever
# the class), exempt prefixes (passed untouched) and flowless traffic (non-IP, other L4, fragments, flow-insert
# failures: passed). They are the kernel's verdict slots past the classes (wire.VERDICT_SLOTS).
PSEUDO_CLASSES = wire.VERDICT_SLOTS[wire.NCLASSES:]
CLASS_LABELS = wire.VERDICT_SLOTS
XDP_MODES = ("native", "generic")
RELOAD_RESULTS = ("ok", "refused")
# the (class, action) pairs a policy can produce, exported from the start (zero until counted): every action of a
# class, pass or drop of malformed packets, blocks dropped, exempt and flowless packets passed
POSSIBLE = (*((c, a) for c in wire.CLASS_NAMES for a in wire.ACTION_NAMES), ("malformed", "pass"),
            ("malformed", "drop"), ("blocked", "drop"), ("exempt", "pass"), ("none", "pass"))


def outcome_names() -> tuple[str, ...]:
    """The kernel's outcome counters (every packet lands in exactly one), as `outcome` label values: the counter
    names without the `out_` prefix (flow, non_ip, exempt, ...) and the parse errors as they are (err_eth, ...)."""
    names = wire.stat_names()
    first, last = wire.C["SG_ST_OUTCOME_FIRST"], wire.C["SG_ST_OUTCOME_LAST"]
    return tuple(names[i] for i in range(first, last + 1))


def _outcome_label(stat: str) -> str:
    return stat[4:] if stat.startswith("out_") else stat


def verdict_counts(stats: Mapping[str, int], what: str) -> dict[tuple[str, str], int]:
    """(class, action) -> the kernel's `what` ("packets" or "bytes") counter of that (verdict slot, action) pair: the
    POSSIBLE pairs always, any other pair once the kernel has counted it (so the series still add up to every
    packet if a policy slot ever held an action the policy parser refuses)."""
    out = dict.fromkeys(POSSIBLE, 0)
    for slot in wire.VERDICT_SLOTS:
        for act in wire.ACTION_NAMES:
            n = stats.get(f"{what}_{slot}_{act}", 0)
            if n or (slot, act) in out:
                out[(slot, act)] = n
    return out


@dataclass(frozen=True)
class Sample:
    """Everything one scrape reports, as of one housekeeping tick."""

    packets: Mapping[tuple[str, str], int]  # (class or pseudo-class, action) -> packets, from the kernel's pairs
    bytes: Mapping[tuple[str, str], int]  # the same pairs' bytes (frame lengths)
    parse: Mapping[str, int]
    classified: Mapping[tuple[str, str], int]
    flows_active: Mapping[str, int] | None  # None until the first flow-table snapshot
    capacity: int
    events_lost: int
    reloads: Mapping[str, int]
    policy_loaded: float
    xdp: Mapping[str, str | None]  # configured interface -> attached mode (None: not attached)
    xdp_requested: str
    version: str
    policy: str
    updated: float  # wall clock of the tick
    ipfix: Mapping[str, int | str] | None = None  # the IPFIX exporter's status (export/ipfix.py), None: no exporter


@dataclass(eq=False)  # a collector is registered by identity: it must stay hashable
class Metrics:
    """The daemon's metrics state and a prometheus_client collector over it (register it in a registry)."""

    version: str
    capacity: int
    xdp_requested: str
    reloads: Counter[str] = field(default_factory=Counter)
    sample: Sample | None = None
    _flows_key: tuple | None = None
    _flows_active: dict[str, int] | None = None

    def note_reload(self, ok: bool) -> None:
        self.reloads["ok" if ok else "refused"] += 1

    def flows_by_class(self, snapshot) -> dict[str, int] | None:
        """Active flows per class from the flow-table snapshot's class column: counted once per completed snapshot
        (a numpy bincount, ~2 ms at a million flows), not once per tick, never per scrape."""
        if snapshot is None:
            return self._flows_active
        key = (snapshot.taken_ns, snapshot.n)
        if key != self._flows_key:
            import numpy as np

            counts = np.bincount(snapshot.cols.cls[: snapshot.n], minlength=wire.NCLASSES)
            # a class id past the known ones cannot come from the kernel (it clamps); counted as unknown if it did
            counts[0] += int(counts[wire.NCLASSES:].sum())
            self._flows_active = {c: int(counts[i]) for i, c in enumerate(wire.CLASS_NAMES)}
            self._flows_key = key
        return self._flows_active

    def tick(self, *, stats: Mapping[str, int], policy, classified: Mapping[tuple[int, int], int], snapshot,
             attached: Mapping[str, str | None], policy_loaded: float, now: float | None = None,
             ipfix: Mapping[str, int | str] | None = None) -> Sample:
        """Build the sample scrapes will read. `classified`: (class id, reason bits) -> classifications the daemon
        saw (kernel events and its own decisions); `attached`: configured interface -> XDP mode or None; `ipfix`:
        the flow exporter's status when one is configured."""
        by_class: Counter[tuple[str, str]] = Counter()
        for (cid, reason), n in classified.items():
            cname = wire.CLASS_NAMES[cid] if 0 <= cid < wire.NCLASSES else "unknown"
            by_class[(cname, wire.reason_name(reason) or "none")] += n
        self.sample = Sample(
            packets=verdict_counts(stats, "packets"), bytes=verdict_counts(stats, "bytes"),
            parse={_outcome_label(n): stats.get(n, 0) for n in outcome_names()},
            classified=dict(by_class), flows_active=self.flows_by_class(snapshot), capacity=self.capacity,
            events_lost=stats.get("events_lost", 0), reloads=dict(self.reloads), policy_loaded=policy_loaded,
            xdp=dict(attached), xdp_requested=self.xdp_requested, version=self.version, policy=policy.name,
            updated=time.time() if now is None else now, ipfix=dict(ipfix) if ipfix is not None else None)
        return self.sample

    # ---- prometheus_client collector protocol -----------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not call collect() before the first tick

    def collect(self) -> Iterator[Metric]:
        s = self.sample  # one reference read: the whole scrape reports this tick
        if s is None:
            return
        yield from families(s)

    def render(self) -> bytes:
        """The text exposition of the latest sample (what a scrape returns; also the textfile collector's file)."""
        reg = CollectorRegistry(auto_describe=False)
        reg.register(self)
        return generate_latest(reg)


def families(s: Sample) -> Iterator[Metric]:
    """The metric families of one sample; every label combination that can occur is present from the start (zero
    when nothing happened), so rate() and alerts see a series before its first increment."""
    pk = CounterMetricFamily("skyguard_packets_total", "Packets the XDP program saw, by flow class and the action "
                             "it took (pseudo-classes malformed, blocked, exempt, none for packets without a class).",
                             labels=["class", "action"])
    for (c, a), v in sorted(s.packets.items()):
        pk.add_metric([c, a], v)
    yield pk
    by = CounterMetricFamily("skyguard_bytes_total", "Bytes (frame length) the XDP program saw, by flow class and the "
                             "action it took (the same classes and pseudo-classes as skyguard_packets_total).",
                             labels=["class", "action"])
    for (c, a), v in sorted(s.bytes.items()):
        by.add_metric([c, a], v)
    yield by
    po = CounterMetricFamily("skyguard_parse_total", "Packets by parse outcome (exactly one per packet): flow, "
                             "non_ip, other_l4, fragment, exempt, blocked, no_flow, err_*.", labels=["outcome"])
    for o, v in s.parse.items():
        po.add_metric([o], v)
    yield po
    fc = CounterMetricFamily("skyguard_flows_classified_total", "Flow classifications the daemon saw (kernel events "
                             "and its own decisions), by new class and deciding reason.", labels=["class", "reason"])
    for (c, r), v in sorted(s.classified.items()):
        fc.add_metric([c, r], v)
    yield fc
    if s.flows_active is not None:
        fa = GaugeMetricFamily("skyguard_flows_active", "Flows in the kernel's flow table by class, as of the "
                               "daemon's last flow-table snapshot.", labels=["class"])
        for c, v in s.flows_active.items():
            fa.add_metric([c], v)
        yield fa
    yield GaugeMetricFamily("skyguard_flow_table_capacity", "Flows the kernel's two flow tables hold (flows_max "
                            "each); each is an LRU: when full, its least recently seen flow is evicted.",
                            value=s.capacity)
    yield CounterMetricFamily("skyguard_events_lost_total", "Ring-buffer events the kernel dropped because the "
                              "buffer was full (the slow path missed them).", value=s.events_lost)
    rl = CounterMetricFamily("skyguard_policy_reloads_total", "Policy reloads (SIGHUP, socket) by result; a refused "
                             "reload keeps the running policy.", labels=["result"])
    for r in RELOAD_RESULTS:
        rl.add_metric([r], s.reloads.get(r, 0))
    yield rl
    yield GaugeMetricFamily("skyguard_policy_loaded_timestamp_seconds", "When the running policy was loaded "
                            "(Unix time).", value=s.policy_loaded)
    xa = GaugeMetricFamily("skyguard_xdp_attached", "1 if the program is attached to the interface in this XDP "
                           "mode; every mode 0 when it is not attached.", labels=["interface", "mode"])
    for ifname, mode in sorted(s.xdp.items()):
        for m in XDP_MODES:
            xa.add_metric([ifname, m], 1 if mode == m else 0)
    yield xa
    xr = GaugeMetricFamily("skyguard_xdp_requested_mode", "The configured XDP mode (auto: native, then generic).",
                           labels=["mode"])
    xr.add_metric([s.xdp_requested], 1)
    yield xr
    bi = GaugeMetricFamily("skyguard_build_info", "Always 1: the daemon's version and running policy's name.",
                           labels=["version", "policy"])
    bi.add_metric([s.version, s.policy], 1)
    yield bi
    yield GaugeMetricFamily("skyguard_last_update_timestamp_seconds", "When the daemon's event loop last computed "
                            "these values (Unix time); scrapes are served from a thread, so a stalled loop shows "
                            "here.", value=s.updated)
    if s.ipfix is not None:
        yield from ipfix_families(s.ipfix)


# the IPFIX exporter's counters (Exporter.status()) -> (metric, type, help); present only with a collector configured
IPFIX_METRICS = (
    ("records", "skyguard_ipfix_records_total", "counter", "IPFIX flow records encoded for the collector."),
    ("messages", "skyguard_ipfix_messages_total", "counter", "IPFIX messages sent to the collector."),
    ("send_errors", "skyguard_ipfix_send_errors_total", "counter", "Sends to the collector that failed (other than "
     "a full socket buffer, which waits), e.g. ICMP port unreachable while nobody listens."),
    ("records_lost", "skyguard_ipfix_records_lost_total", "counter", "Flow records dropped because the outbox was "
     "full: the collector sees them as a sequence gap."),
    ("gone_unended", "skyguard_ipfix_flows_gone_unended_total", "counter", "Reported flows that left the flow table "
     "without an end the daemon saw (LRU eviction): their packets since their last record are in no record."),
    ("outbox", "skyguard_ipfix_outbox_messages", "gauge", "IPFIX messages waiting to be sent."),
    ("tracked_flows", "skyguard_ipfix_tracked_flows", "gauge", "Flows the exporter remembers what it reported of "
     "(the base of their next record)."),
)


def ipfix_families(status: Mapping[str, int | str]) -> Iterator[Metric]:
    for key, name, kind, text in IPFIX_METRICS:
        fam = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        yield fam(name, text, value=int(status.get(key, 0)))


# ---- listening ------------------------------------------------------------------------------------------------------


def parse_listen(value: str) -> tuple[str, int]:
    """`ADDR:PORT` -> (address, port), the same endpoint syntax as everywhere else (`[::1]:9377` for IPv6); port 0
    picks a free one (tests). Raises ValueError(reason)."""
    return parse_endpoint(value)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # one line per scrape on stderr would flood the journal


class MetricsServer:
    """prometheus_client's WSGI app on a threading HTTP server in a daemon thread; `close()` stops it."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(metrics)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingWSGIServer):
            address_family = family

        self._httpd = make_server(host, port, make_wsgi_app(self.registry), Server, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return host, port

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
