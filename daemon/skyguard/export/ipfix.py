"""IPFIX (RFC 7011) export of classified flows over UDP: the encoder (pure, unit-tested byte by byte) and the exporter
(per-flow delta bookkeeping, a non-blocking socket, an outbox the daemon's loop drains).

One Data Record per bidirectional flow and report, the initiator (the endpoint that sent the flow's first packet) as
source: packetDeltaCount and the octet counts are the sum of both directions, so a collector's per-flow totals equal
`skyguard flows`; initiatorPackets / responderPackets carry the split and biflowDirection = initiator (RFC 5103)
says so in every record, as RFC 5103 asks of UDP exporters. Only IANA-registered elements (enterprise bit clear) are
used; each is named with its element id below.

Records are sent when a flow ends (the daemon's idle expiry: flowEndReason idle timeout), every active timeout for a
long flow (active timeout), and for every flow in the table when the daemon stops (forced end). Each carries the
delta since the flow's previous record: the exporter remembers, per flow it already reported, what it reported.
"""

from __future__ import annotations

import collections
import errno
import re
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from skyguard import wire
from skyguard.endpoints import parse_endpoint
from skyguard.kernel.flowtable import FLOW_DTYPE

VERSION = 10  # IPFIX message header version (RFC 7011 section 3.1)
TEMPLATE_SET_ID = 2  # Set ID of a Template Set (RFC 7011 section 3.3.2)
TEMPLATE_V4, TEMPLATE_V6 = 256, 257  # Data Set IDs are Template IDs, >= 256
VARLEN = 0xFFFF  # field length of a variable-length element in a template (RFC 7011 section 7)
HEADER = struct.Struct("!HHIII")  # version, length, export time, sequence number, observation domain id
SET_HEADER = struct.Struct("!HH")

# flowEndReason (136) values, from the IANA registry
END_IDLE, END_ACTIVE, END_OF_FLOW, END_FORCED, END_LACK_OF_RESOURCES = 1, 2, 3, 4, 5
# forwardingStatus (89) values, IANA "Forwarding Status" sub-registries: status in the top two bits
FWD_FORWARDED = 0x40  # 01b Forwarded, reason Unknown: pass and mark (DSCP rewritten, still forwarded)
FWD_DROPPED_ACL = 0x82  # 10b Dropped, reason "ACL drop": dropped by the configured policy or a manual block
BIFLOW_INITIATOR = 1  # biflowDirection (239) value "initiator"

# Layer-2 header per packet: the kernel counts whole frames; octetDeltaCount is IP octets (header + payload)
ETH_HLEN, VLAN_HLEN = 14, 4


@dataclass(frozen=True, slots=True)
class Element:
    id: int
    name: str
    length: int  # octets on the wire, VARLEN for strings


def _elements(family: int) -> tuple[Element, ...]:
    a = 4 if family == 4 else 16
    addr = (Element(8, "sourceIPv4Address", a), Element(12, "destinationIPv4Address", a)) if family == 4 else \
        (Element(27, "sourceIPv6Address", a), Element(28, "destinationIPv6Address", a))
    return (*addr,
            Element(7, "sourceTransportPort", 2),
            Element(11, "destinationTransportPort", 2),
            Element(4, "protocolIdentifier", 1),
            Element(58, "vlanId", 2),
            Element(2, "packetDeltaCount", 8),
            Element(1, "octetDeltaCount", 8),  # IP octets: frame octets minus the Ethernet/VLAN header
            Element(352, "layer2OctetDeltaCount", 8),  # the frames as XDP saw them: what `skyguard flows` counts
            Element(298, "initiatorPackets", 8),
            Element(299, "responderPackets", 8),
            Element(133, "droppedPacketDeltaCount", 8),
            Element(152, "flowStartMilliseconds", 8),
            Element(153, "flowEndMilliseconds", 8),
            Element(136, "flowEndReason", 1),
            Element(239, "biflowDirection", 1),
            Element(89, "forwardingStatus", 1),  # the action: forwarded (pass, mark) or dropped
            Element(96, "applicationName", VARLEN),  # the class, e.g. "skype-relay"
            Element(94, "applicationDescription", VARLEN))  # the reason that decided it, e.g. "ms-stun-attr"


ELEMENTS = {TEMPLATE_V4: _elements(4), TEMPLATE_V6: _elements(6)}
# the fixed-length part of a record after the addresses, in template order
_FIXED = struct.Struct("!HHBHQQQQQQQQBBB")


def template_record(tid: int) -> bytes:
    els = ELEMENTS[tid]
    out = [struct.pack("!HH", tid, len(els))]
    out += [struct.pack("!HH", e.id, e.length) for e in els]
    return b"".join(out)


def template_set() -> bytes:
    body = template_record(TEMPLATE_V4) + template_record(TEMPLATE_V6)
    return SET_HEADER.pack(TEMPLATE_SET_ID, SET_HEADER.size + len(body)) + body


def varlen(s: str) -> bytes:
    """RFC 7011 section 7: one length octet below 255, else 255 and a two-octet length."""
    b = s.encode("utf-8")[:0xFFFF]
    if len(b) < 255:
        return bytes([len(b)]) + b
    return b"\xff" + struct.pack("!H", len(b)) + b


@dataclass(slots=True)
class Record:
    """One Data Record. Addresses are 4 (IPv4) or 16 (IPv6) bytes."""

    src: bytes
    dst: bytes
    sport: int
    dport: int
    proto: int
    vlan: int
    packets: int
    octets: int
    l2_octets: int
    init_packets: int
    resp_packets: int
    dropped: int
    start_ms: int
    end_ms: int
    end_reason: int
    forwarding: int
    app: str
    reason: str

    @property
    def template(self) -> int:
        return TEMPLATE_V4 if len(self.src) == 4 else TEMPLATE_V6

    def encode(self) -> bytes:
        return (self.src + self.dst + _FIXED.pack(
            self.sport, self.dport, self.proto, self.vlan, self.packets, self.octets, self.l2_octets,
            self.init_packets, self.resp_packets, self.dropped, self.start_ms, self.end_ms, self.end_reason,
            BIFLOW_INITIATOR, self.forwarding) + varlen(self.app) + varlen(self.reason))


class Encoder:
    """Records -> IPFIX messages of at most `max_len` octets, per one Observation Domain.

    Sequence numbers: the number of Data Records sent in this domain before the message, modulo 2^32 (RFC 7011
    section 3.1). Templates lead the first message and are sent again (RFC 7011 section 8.4, UDP) once
    `refresh_s` seconds or `refresh_messages` messages (0: no count limit) have passed since they were last sent.
    """

    def __init__(self, domain: int = 1, max_len: int = 1452, refresh_s: float = 60.0, refresh_messages: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        if max_len < 512:  # room for the templates and a record with its strings
            raise ValueError(f"IPFIX message size {max_len} is too small")
        self.domain = domain
        self.max_len = max_len
        self.refresh_s = refresh_s
        self.refresh_messages = refresh_messages
        self.clock = clock
        self.sequence = 0  # data records sent before the next message (mod 2^32)
        self.messages = 0
        self._tpl_at: float | None = None
        self._since_tpl = 0

    def resend_templates(self) -> None:
        self._tpl_at = None

    def _templates_due(self, now: float) -> bool:
        if self._tpl_at is None or now - self._tpl_at >= self.refresh_s:
            return True
        return bool(self.refresh_messages) and self._since_tpl >= self.refresh_messages

    def encode(self, records: Iterable[Record]) -> list[bytes]:
        """The messages carrying `records` (each record whole in one message; records of one template share a Set
        while they follow each other)."""
        return [m for m, _n in self.encode_counted(records)]

    def encode_counted(self, records: Iterable[Record]) -> list[tuple[bytes, int]]:
        """Like encode(), with the number of Data Records in each message."""
        now = self.clock()
        out: list[tuple[bytes, int]] = []
        parts: list[bytes] = []
        size = 0
        count = 0
        set_tid = 0
        set_start = -1  # index in parts of the open set's header placeholder
        set_len = 0

        def close_set() -> None:
            nonlocal set_start
            if set_start >= 0:
                parts[set_start] = SET_HEADER.pack(set_tid, set_len)
                set_start = -1

        def start_message() -> None:
            nonlocal size, count, set_tid
            parts.clear()
            parts.append(b"")  # header placeholder
            size, count, set_tid = HEADER.size, 0, 0
            if self._templates_due(now):
                ts = template_set()
                parts.append(ts)
                size += len(ts)
                self._tpl_at, self._since_tpl = now, 0

        def finish_message() -> None:
            close_set()
            parts[0] = HEADER.pack(VERSION, size, int(now) & 0xFFFFFFFF, self.sequence, self.domain)
            out.append((b"".join(parts), count))
            self.sequence = (self.sequence + count) & 0xFFFFFFFF
            self.messages += 1
            self._since_tpl += 1

        start_message()
        for rec in records:
            body = rec.encode()
            tid = rec.template
            need = len(body) + (0 if tid == set_tid and set_start >= 0 else SET_HEADER.size)
            if size + need > self.max_len and count:
                finish_message()
                start_message()
                need = len(body) + SET_HEADER.size
            if tid != set_tid or set_start < 0:
                close_set()
                set_tid, set_start, set_len = tid, len(parts), SET_HEADER.size
                parts.append(b"")
            parts.append(body)
            set_len += len(body)
            size += need
            count += 1
        if count:
            finish_message()
        return out


# ---------------------------------------------------------------------------------------------------------------------
# The exporter: flows -> records -> messages -> the collector


def collector_address(spec: str) -> tuple[str, int]:
    """"ADDR:PORT", "[V6ADDR]:PORT" or "NAME:PORT" -> (host, port); ValueError when malformed."""
    try:
        return parse_endpoint(spec)
    except ValueError:
        host, sep, port = spec.rpartition(":")
        if not sep or not _HOSTNAME.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not a collector (ADDR:PORT, [V6ADDR]:PORT or NAME:PORT): {spec!r}") from None
        return host, int(port)


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                       r"[A-Za-z0-9])?)*$")


@dataclass(slots=True)
class Reported:
    """What the flow's previous records carried, summed: the base of the next delta."""

    pkts: tuple[int, int]
    nbytes: tuple[int, int]
    dropped: int
    last_ns: int
    first_ns: int  # of the flow those records were about (a later flow of the same 5-tuple owes them nothing)


_KEY_WORDS = wire.FlowKey.FMT.size // 8
assert wire.FlowKey.FMT.size % 8 == 0 and FLOW_DTYPE.itemsize == wire.Flow.FMT.size


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, over a numpy array (uint64 arithmetic wraps modulo 2^64)."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _key_hash(words: np.ndarray) -> np.ndarray:
    """64-bit hashes of flow keys given as rows of little-endian u64 words: each word mixed into the running hash
    (a collision only costs a comparison of the whole key)."""
    h = np.zeros(len(words), dtype=np.uint64)
    for i in range(words.shape[1]):
        h = _fmix64(h ^ words[:, i])
    return h


class Baseline:
    """The counters of the flows a restarted daemon adopted (pinned maps), as it found them at its start.

    The previous daemon exported those flows up to its stop (every flow's forced end), so a record of this daemon
    starts from here: without it, the first record of an adopted flow carried everything since the flow began, and a
    restart counted every long flow twice at the collector. The packets of the restart window itself (counted by the
    program while no daemon ran) are in nobody's record. Columnar and sorted by a hash of the key (104 bytes a flow);
    an entry holds only for the flow it was taken from (the same whole key and first_ns), never for a later flow of the
    same 5-tuple. Flows that began after the newest adopted one are not looked up."""

    COLUMNS = ("first_ns", "last_ns", "pkts", "bytes", "dropped")

    def __init__(self, chunks: Iterable[tuple[bytes, bytes, int]]) -> None:
        words_parts = [np.zeros((0, _KEY_WORDS), dtype=np.uint64)]
        cols: dict[str, list[np.ndarray]] = {n: [np.zeros(0, dtype=FLOW_DTYPE)[n]] for n in self.COLUMNS}
        for k, v, n in chunks:  # copies of the columns kept, chunk by chunk: the raw chunks go as they are read
            if not n:
                continue
            f = np.frombuffer(v, dtype=FLOW_DTYPE, count=n)
            words_parts.append(np.frombuffer(k, dtype="<u8", count=n * _KEY_WORDS).reshape(n, _KEY_WORDS).copy())
            for name in self.COLUMNS:
                cols[name].append(f[name].copy())
        words = np.concatenate(words_parts)
        h = _key_hash(words)
        order = np.argsort(h, kind="stable")
        self.hash, self.words = h[order], words[order]
        for name, parts in cols.items():
            setattr(self, name, np.concatenate(parts)[order])
        self.max_first_ns = int(self.first_ns.max()) if len(h) else -1

    def __len__(self) -> int:
        return len(self.hash)

    def get(self, key: wire.FlowKey, first_ns: int) -> Reported | None:
        if first_ns > self.max_first_ns:
            return None  # began after every adopted flow
        w = np.frombuffer(key.pack(), dtype="<u8").reshape(1, _KEY_WORDS)
        h = _key_hash(w)[0]
        i = int(np.searchsorted(self.hash, h))
        while i < len(self.hash) and self.hash[i] == h:
            if int(self.first_ns[i]) == first_ns and np.array_equal(self.words[i], w[0]):
                return Reported((int(self.pkts[i][0]), int(self.pkts[i][1])),
                                (int(self.bytes[i][0]), int(self.bytes[i][1])), int(self.dropped[i]),
                                int(self.last_ns[i]), first_ns)
            i += 1
        return None


@dataclass
class ExportCounters:
    records: int = 0
    messages: int = 0
    send_errors: int = 0  # sendto failures other than a full socket buffer (e.g. ICMP port unreachable)
    records_lost: int = 0  # records whose message was dropped because the outbox was full (a sequence gap)
    active_reads: int = 0  # flows read from the kernel for an active-timeout record
    gone_unended: int = 0  # reported flows that left the table without an end the daemon saw (LRU eviction)
    last_error: str = ""
    by_reason: dict[int, int] = field(default_factory=dict)


Describe = Callable[[wire.FlowKey, wire.Flow], tuple[str, str, str]]  # -> (class, reason, action)


def _default_describe(key: wire.FlowKey, flow: wire.Flow) -> tuple[str, str, str]:
    return flow.class_name, wire.reason_name(flow.reason), "pass"


class Exporter:
    """Flow ends, active timeouts and the stop -> IPFIX over UDP. Never blocks the loop: records are encoded into an
    outbox that `flush()` drains with non-blocking sends; a full socket buffer leaves the rest for the next flush."""

    OUTBOX_MAX = 4096  # messages (~6 MB); past that the newest are dropped and counted as lost records

    def __init__(self, collector: str, *, domain: int = 1, active_timeout_s: float = 60.0, mtu: int = 1500,
                 template_refresh_s: float = 60.0, template_refresh_messages: int = 0,
                 describe: Describe | None = None, sndbuf: int = 4 << 20) -> None:
        host, port = collector_address(collector)
        family, _t, _p, _c, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.collector = addr
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.setblocking(False)
        self.sock.connect(addr)  # connected: ICMP errors surface as send errors and are counted
        ip_udp = (40 if family == socket.AF_INET6 else 20) + 8
        self.encoder = Encoder(domain, mtu - ip_udp, template_refresh_s, template_refresh_messages)
        self.active_ns = int(active_timeout_s * 1e9)
        self.describe = describe or _default_describe
        self.counters = ExportCounters()
        self.reported: dict[wire.FlowKey, Reported] = {}
        self.baseline: Baseline | None = None  # adopted flows' counters at this daemon's start (adopt)
        self._adopted_ns = 0
        self.pending: list[Record] = []
        self.outbox: collections.deque[tuple[bytes, int]] = collections.deque()  # (message, its record count)
        self._last_scan_ns: int | None = None
        self._absent: set[wire.FlowKey] = set()  # reported flows missing from the last round _forget_gone checked
        self._gone_checked_ns: int | None = None

    # ---- flows -> records -----------------------------------------------------------------------------------------

    def adopt(self, chunks: Iterable[tuple[bytes, bytes, int]]) -> int:
        """Take the flows already in the kernel's table (raw chunks, Kernel.flows_raw) as exported up to now; returns
        how many there were. A daemon that starts exporting after one that did not treats them alike: their earlier
        packets are in no collector's records."""
        base = Baseline(chunks)
        self.baseline = base if len(base) else None
        self._adopted_ns = time.monotonic_ns()
        return len(base)

    def _release_baseline(self, snapshot) -> None:
        """Forget the baseline once a whole snapshot round, taken after the adoption, holds no adopted flow."""
        base = self.baseline
        if base is None or snapshot.taken_ns <= self._adopted_ns:
            return
        n = len(snapshot)
        if n == 0 or int(snapshot.cols.first_ns[:n].min()) > base.max_first_ns:
            self.baseline = None

    def record(self, key: wire.FlowKey, flow: wire.Flow, end_reason: int, wall_off_ns: int | None = None) -> bool:
        """Queue the record of `flow`'s delta since its previous record; False when there is nothing new."""
        prev = self.reported.get(key)
        if prev is not None and prev.first_ns != flow.first_ns:
            prev = None  # an earlier flow of this 5-tuple, gone without an end the daemon saw (LRU eviction)
        adopted = False
        if prev is None and self.baseline is not None:
            prev = self.baseline.get(key, flow.first_ns)
            adopted = prev is not None
        p0, p1 = flow.pkts
        b0, b1 = flow.bytes_
        if prev is None:
            d_pkts, d_b, d_drop, start_ns = (p0, p1), (b0, b1), flow.dropped, flow.first_ns
        else:  # the kernel's counters only grow for one flow; max() keeps a record's counts unsigned whatever comes
            d_pkts = (max(p0 - prev.pkts[0], 0), max(p1 - prev.pkts[1], 0))
            d_b = (max(b0 - prev.nbytes[0], 0), max(b1 - prev.nbytes[1], 0))
            d_drop, start_ns = max(flow.dropped - prev.dropped, 0), max(prev.last_ns, flow.first_ns)
        packets = d_pkts[0] + d_pkts[1]
        if adopted and packets <= 0:
            return False  # its end was sent by the daemon before this one, and it saw nothing since
        if end_reason == END_ACTIVE:
            self.reported[key] = Reported((p0, p1), (b0, b1), flow.dropped, flow.last_ns, flow.first_ns)
        else:
            self.reported.pop(key, None)
        if packets <= 0 and (prev is None or end_reason == END_ACTIVE):
            return False  # nothing new; a flow already reported still gets its end record, with zero deltas
        if wall_off_ns is None:
            wall_off_ns = time.time_ns() - time.monotonic_ns()  # the flow clock is CLOCK_MONOTONIC
        init = flow.init_dir & 1
        lo = (key.lo_addr, key.lo_port)
        hi = (key.hi_addr, key.hi_port)
        (sa, sp), (da, dp) = (lo, hi) if init == 0 else (hi, lo)
        if sa[:12] == b"\0" * 10 + b"\xff\xff":
            sa, da = sa[12:], da[12:]
        # the kernel's direction 0 is the lower endpoint: the initiator's counters are the ones of its direction
        ip, rp = (d_pkts[0], d_pkts[1]) if init == 0 else (d_pkts[1], d_pkts[0])
        l2 = d_b[0] + d_b[1]
        hdr = ETH_HLEN + (VLAN_HLEN if key.vlan else 0)
        cls, reason, action = self.describe(key, flow)
        self.pending.append(Record(
            sa, da, sp, dp, key.proto, key.vlan, packets, max(l2 - hdr * packets, 0), l2, ip, rp, max(d_drop, 0),
            (start_ns + wall_off_ns) // 1_000_000, (flow.last_ns + wall_off_ns) // 1_000_000, end_reason,
            FWD_DROPPED_ACL if action == "drop" else FWD_FORWARDED, cls, reason))
        self.counters.by_reason[end_reason] = self.counters.by_reason.get(end_reason, 0) + 1
        return True

    def flow_ended(self, key: wire.FlowKey, flow: wire.Flow, end_reason: int = END_IDLE) -> None:
        self.record(key, flow, end_reason)

    def active_timeouts(self, snapshot, flow_of: Callable[[wire.FlowKey], wire.Flow | None],
                        now_ns: int | None = None) -> int:
        """Records for the flows of a fresh flow-table snapshot whose age crossed a multiple of the active timeout
        since the previous scan and that saw packets since then (numpy over the columns: only those flows are read
        from the kernel). Returns how many records were queued."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        self._release_baseline(snapshot)
        self._forget_gone(snapshot)
        prev_ns = self._last_scan_ns if self._last_scan_ns is not None else now_ns
        self._last_scan_ns = now_ns
        n = len(snapshot)
        if not n or not self.active_ns:
            return 0
        rows = due_rows(snapshot.cols.first_ns[:n], snapshot.cols.last_ns[:n], prev_ns, now_ns, self.active_ns)
        off = time.time_ns() - time.monotonic_ns()
        queued = 0
        for i in rows:
            key = snapshot.key(int(i))
            flow = flow_of(key)
            self.counters.active_reads += 1
            if flow is not None and self.record(key, flow, END_ACTIVE, off):
                queued += 1
        return queued

    def forget(self, key: wire.FlowKey) -> None:
        self.reported.pop(key, None)

    def _forget_gone(self, snapshot) -> None:
        """Drop what was reported of flows that left the table without an end the daemon saw (the LRU table evicted
        them): a reported flow that goes on gets a record, and a new entry, every active timeout, and an idle one is
        ended by the daemon's expiry, so an entry older than two active timeouts whose key two checked snapshot
        rounds in a row did not hold is of a flow that is gone. Without this the entries of evicted flows stayed for
        the daemon's life. Their packets since their last record are in no record (counted in `gone_unended`).
        Checked at most every half active timeout: idle flows that are still in the table stay old until their
        expiry (an hour for TCP), and each check hashes every old entry."""
        last = self._gone_checked_ns
        if last is not None and snapshot.taken_ns - last < self.active_ns // 2:
            return
        self._gone_checked_ns = snapshot.taken_ns
        cutoff = snapshot.taken_ns - 2 * self.active_ns
        old = [k for k, r in self.reported.items() if r.last_ns < cutoff]
        if not old:
            self._absent = set()
            return
        n = len(snapshot)
        words = np.ascontiguousarray(snapshot.keys[:n]).view("<u8").reshape(n, _KEY_WORDS)
        held = _key_hash(words)
        mine = np.frombuffer(b"".join(k.pack() for k in old), dtype="<u8").reshape(len(old), _KEY_WORDS)
        missing = ~np.isin(_key_hash(mine), held)  # a hash collision only keeps an entry one round longer
        absent = {k for k, m in zip(old, missing, strict=True) if m}
        for k in absent & self._absent:
            del self.reported[k]
            self.counters.gone_unended += 1
        self._absent = absent - self._absent

    # ---- records -> the collector ----------------------------------------------------------------------------------

    def flush(self) -> int:
        """Encode what is pending and send what the socket takes now; returns the messages still waiting."""
        if self.pending:
            recs, self.pending = self.pending, []
            for msg, k in self.encoder.encode_counted(recs):
                self.outbox.append((msg, k))
                self.counters.messages += 1
            self.counters.records += len(recs)
            while len(self.outbox) > self.OUTBOX_MAX:  # drop the newest: the head may carry the templates
                m, k = self.outbox.pop()
                self.counters.records_lost += k
                if m[16:18] == b"\x00\x02":  # it carried the templates: the next message carries them again
                    self.encoder.resend_templates()
        while self.outbox:
            msg, k = self.outbox[0]
            try:
                self.sock.send(msg)
            except BlockingIOError:
                break
            except OSError as e:  # refused (nobody listening), unreachable...: that message is gone, go on
                self.counters.send_errors += 1
                self.counters.last_error = errno.errorcode.get(e.errno or 0, str(e))
            self.outbox.popleft()
        return len(self.outbox)

    def drain(self, timeout_s: float = 5.0) -> bool:
        """Flush, waiting for the socket between sends (the stop path); True when everything was sent."""
        deadline = time.monotonic() + timeout_s
        while self.flush():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([], [self.sock], [], min(left, 0.1))
        return True

    def stop(self, flows: Iterable[tuple[wire.FlowKey, wire.Flow]], timeout_s: float = 5.0) -> bool:
        """The daemon stops: a forced-end record for every flow still in the table, then everything is sent."""
        off = time.time_ns() - time.monotonic_ns()
        for key, flow in flows:
            self.record(key, flow, END_FORCED, off)
            if len(self.pending) >= 4096:
                self.flush()
        done = self.drain(timeout_s)
        self.close()
        return done

    def close(self) -> None:
        self.sock.close()

    def status(self) -> dict:
        c = self.counters
        return {"collector": f"{self.collector[0]}:{self.collector[1]}", "records": c.records,
                "messages": c.messages, "sequence": self.encoder.sequence, "send_errors": c.send_errors,
                "records_lost": c.records_lost, "outbox": len(self.outbox), "tracked_flows": len(self.reported),
                "gone_unended": c.gone_unended,
                "adopted_flows": len(self.baseline) if self.baseline is not None else 0, "last_error": c.last_error}


def due_rows(first_ns: np.ndarray, last_ns: np.ndarray, prev_ns: int, now_ns: int, active_ns: int) -> np.ndarray:
    """Rows whose age crossed a multiple of `active_ns` in (prev_ns, now_ns] and that had packets after the previous
    multiple (their previous report, or their start)."""
    first = first_ns.astype(np.int64)
    k_now = (now_ns - first) // active_ns
    k_prev = (prev_ns - first) // active_ns
    active = last_ns.astype(np.int64) > first + (k_now - 1) * active_ns
    return np.nonzero((k_now > k_prev) & (k_now >= 1) & active)[0]

