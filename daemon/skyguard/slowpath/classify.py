"""The slow path: decisions the kernel cannot make per packet, from its ring-buffer events. Pure Python, no bcc.

Dispatch by event type:
- `classified`: the kernel's own class is noted, so that flows it already settled (skype-out by PSTN prefix or port
  12340, relay, ...) are not second-guessed.
- `sample`: fed to a bounded per-flow E2OTracker (e2o.py) -> skype-out (SG_R_E2O_STATS) or skype-p2p (SG_R_SOM_VOICE).
- `dns`: DnsLearner (dnslearn.py) -> learned `pstn` / `msmedia` prefixes, handed out by take_prefix_changes().
- `tls`: ClientHello SNI (tls.py) matching the Skype/Teams names -> skype-signaling (SG_R_SNI, detail = the name).
  A non-matching SNI gives no decision: a name outside our list is no proof that a flow is not Skype (CDN and front-end
  names, ECH outer names), and the kernel already calls flows without any evidence `other` after its probe window.
  Host correlation (`host-corr`) covers what the names miss: a TLS flow whose name is not on the list (or that names
  none) is skype-signaling when its client opened a Skype/Teams flow proved by SNI within the policy's
  `[skype] host_correlation_s` (default 60 s, 0 = off) and its server address came from a DNS answer through an Azure
  hosting zone (dnslearn.CLOUD_ZONES). The Teams client talks
  to Azure-hosted services of its own under other names (meeting recordings at api.microsoftstream.com, crash and
  telemetry gates); nDPI does the same with its per-client "msteams" LRU cache (ndpi_main.c, make_msteams_key; 60 s
  default TTL), which labels exactly these flows of teams.pcap TLS.Skype_Teams with confidence "DPI (partial)". Only
  SNI-proved flows refresh a client, so correlated flows cannot keep each other alive.
  A name of Microsoft's Direct Routing SIP proxies (names.DIRECT_ROUTING_NAMES), by SNI or certificate, is an SBC's
  trunk: skype-out (SG_R_DR_TRUNK), the signalling of phone calls.
- `http`: the Host header of a plain-HTTP request (http.py) matching the Skype/Teams names -> skype-signaling
  (SG_R_HTTP_HOST), as SNI does for TLS.

Each flow is decided at most once here. All per-flow state is one small record per flow in one LRU capped at
`flow_state_max` (client sessions in a second one); the clock is the events' ts_ns (capture time in replay), so replay
and the daemon behave the same.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from skyguard import names, wire
from skyguard.policy import Policy
from skyguard.slowpath.dnslearn import MEDIA_NAMES, DnsLearner, PrefixChange
from skyguard.slowpath.e2o import E2OTracker
from skyguard.slowpath.http import request_host
from skyguard.slowpath.tls import certificate_common_names, client_hello_sni

__all__ = ["Decision", "PrefixChange", "SlowPath"]

R_SNI = wire.C["SG_R_SNI"]
R_HTTP_HOST = wire.C["SG_R_HTTP_HOST"]
R_DR_TRUNK = wire.C["SG_R_DR_TRUNK"]
R_HOST_CORR = wire.C["SG_R_HOST_CORR"]
R_PSTN_PREFIX = wire.C["SG_R_PSTN_PREFIX"]
R_E2O_PORT = wire.C["SG_R_E2O_PORT"]
R_MANUAL = wire.C["SG_R_MANUAL"]
F_DAEMON = wire.C["SG_F_DAEMON"]
# "other" for want of evidence (or because later packets broke the SoM header, as an E2O flow's CID packets do after
# its SoM signalling): the E2O statistics may still overrule it
R_WEAK_OTHER = wire.C["SG_R_CONTRADICT"] | wire.C["SG_R_NO_EVIDENCE"] | wire.C["SG_R_WINDOW_END"]

# reasons of a kernel class the E2O statistics never overrule
_KERNEL_SETTLED = R_PSTN_PREFIX | R_E2O_PORT | R_MANUAL
EV_SAMPLE, EV_CLASSIFIED = wire.EV_SAMPLE, wire.EV_CLASSIFIED
_pack_key = wire.FlowKey.FMT.pack  # the flow state's key: a flow key's 40 packed bytes, as records hold it

# the kernel classes the slow path may still change, per decision
_E2O_OVER = frozenset({wire.UNKNOWN, wire.SIGNALING, wire.P2P})
_E2E_OVER = frozenset({wire.UNKNOWN, wire.SIGNALING})
_SNI_OVER = frozenset({wire.UNKNOWN, wire.OTHER, wire.RELAY})


@dataclass(frozen=True)
class Decision:
    key: wire.FlowKey
    cls: int
    reason: int
    detail: str = ""


class _Lru(OrderedDict):
    """OrderedDict with a size cap: the least recently used entry goes first."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = max(1, cap)
        self.evicted = 0

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.cap:
            self.popitem(last=False)
            self.evicted += 1

    def touch(self, key: Any) -> Any:
        v = self.get(key)
        if v is not None:
            self.move_to_end(key)
        return v


_OPEN = -1  # _Flow.decided: nothing decided here yet

# _Flow.e2o: what the kernel's class leaves to the E2O statistics
E2O_NO, E2O_ANY, E2O_NO_P2P = 0, 1, 2  # not watched; watched, any verdict; watched, a skype-p2p verdict dropped


def kernel_class(kernel: int) -> tuple[int, int]:
    """(class, reason bits) of a kernel word (_Flow.kernel); unknown with no reason when the kernel has not spoken."""
    return (wire.UNKNOWN, 0) if kernel < 0 else (kernel & 0xFF, kernel >> 8)


def e2o_gate(kernel: int) -> int:
    """E2O_NO, E2O_ANY or E2O_NO_P2P for a flow whose kernel word (_Flow.kernel) is `kernel`. A pure function of it:
    _note_kernel computes it once per kernel word, where every sample used to work it out again."""
    kcls, kreason = kernel_class(kernel)
    weak_other = kcls == wire.OTHER and (kreason == 0 or kreason & R_WEAK_OTHER)
    if (kcls not in _E2O_OVER and not weak_other) or kreason & _KERNEL_SETTLED:
        return E2O_NO
    return E2O_NO_P2P if kcls not in _E2E_OVER or weak_other else E2O_ANY


_E2O_UNHEARD = e2o_gate(-1)  # a flow the kernel has not spoken of yet


class _Flow:
    """What the slow path remembers of one flow: one LRU entry per flow, so that a flow costs one dict entry and one
    small object (at 10k new candidate flows/s the slow path's memory is this times flow_state_max)."""

    __slots__ = ("kernel", "e2o", "tracker", "decided", "sni")

    def __init__(self) -> None:
        self.kernel = -1  # class | reason << 8 from the kernel's last word (event or flow read); -1: not heard
        self.e2o = _E2O_UNHEARD  # e2o_gate(self.kernel), set with it
        self.tracker: E2OTracker | None = None  # while its samples are being watched
        self.decided: int | None = _OPEN  # class decided here; None: gave up (or settled elsewhere)
        self.sni: str | None = None  # server name of its ClientHello ("" none captured); None: no ClientHello


class SlowPath:
    def __init__(self, policy: Policy, *, dns_max_entries: int = 65536, flow_state_max: int = 65536) -> None:
        self.policy = policy
        self.flow_state_max = flow_state_max
        self.flows: _Lru = _Lru(flow_state_max)  # packed flow key -> _Flow
        self.sessions: _Lru = _Lru(flow_state_max)  # client address (16 bytes) -> ts_ns of its last SNI-proved flow
        self.dns = DnsLearner(policy.pstn_names, MEDIA_NAMES, max_entries=dns_max_entries)
        self.counters: dict[str, int] = {"decisions": 0, "tls_no_sni": 0, "tls_other": 0, "samples": 0,
                                         "host_corr": 0}

    # ---- policy -----------------------------------------------------------------------------------------------------

    def skype_names(self) -> tuple[str, ...]:
        return tuple(self.policy.skype_names) or names.BUILTIN_SKYPE_NAMES

    def set_policy(self, policy: Policy) -> None:
        """Swap the policy; learned names still named by it are kept, the others are queued for removal."""
        self.policy = policy
        self.dns.set_names(policy.pstn_names)

    # ---- per-flow state ---------------------------------------------------------------------------------------------

    def _state(self, key: wire.FlowKey) -> _Flow:
        return self._state_k(_pack_key(*key))

    def _state_k(self, k: bytes) -> _Flow:
        # once per event: flows.touch() written out
        flows = self.flows
        st = flows.get(k)
        if st is None:
            st = _Flow()
            flows.put(k, st)
        else:
            flows.move_to_end(k)
        return st

    def note_sni(self, key: wire.FlowKey, name: str) -> None:
        """Remember the server name a flow's client asked for (as its ClientHello would)."""
        self._state(key).sni = name

    # ---- events -----------------------------------------------------------------------------------------------------

    def on_event(self, ev: wire.Event, flow: wire.Flow | None = None) -> list[Decision]:
        if flow is not None:
            self._note_kernel(ev.key, flow.cls, flow.reason, flow.flags)
        typ = ev.type
        if typ == EV_SAMPLE:  # most events are samples
            return self._on_sample(ev)
        if typ == EV_CLASSIFIED:
            self._note_kernel(ev.key, ev.new_cls, ev.reason, 0)
            return []
        if ev.type == wire.EV_DNS:
            self.dns.on_response(ev.data, ev.ts_ns)
            return []
        if ev.type == wire.EV_TLS:
            return self._on_tls(ev)
        if ev.type == wire.EV_HTTP:
            return self._on_http(ev)
        return []

    def _on_http(self, ev: wire.Event) -> list[Decision]:
        st = self._state(ev.key)
        host = request_host(ev.data)
        if host is None or st.decided != _OPEN:
            return []
        name = names.match_suffix(host, self.skype_names())
        kcls, _ = kernel_class(st.kernel)
        if name is None or kcls not in _SNI_OVER:
            return []
        self.counters["http_host"] = self.counters.get("http_host", 0) + 1
        return self._decide(ev.key, st, wire.SIGNALING, R_HTTP_HOST, f"Host {host}")

    def _note_kernel(self, key: wire.FlowKey, cls: int, reason: int, flags: int) -> None:
        st = self._state(key)
        st.kernel = cls | reason << 8
        st.e2o = e2o_gate(st.kernel)
        if flags & F_DAEMON and st.decided == _OPEN:
            st.decided = cls  # someone (a previous daemon, the operator) already decided it
        if cls == wire.OUT or reason & _KERNEL_SETTLED:
            st.tracker = None  # settled by the kernel: stop watching its samples

    def _decide(self, key: wire.FlowKey, st: _Flow, cls: int, reason: int, detail: str) -> list[Decision]:
        st.decided = cls
        st.tracker = None
        self.counters["decisions"] += 1
        return [Decision(key, cls, reason, detail)]

    def on_sample_record(self, raw: bytes) -> list[Decision]:
        """on_event for a `sample` record as the ring buffer holds it (wire.sample_record): the daemon's pump and the
        replay's compiled loop hand samples over undecoded, since building the Event and its FlowKey was a third of a
        sample's cost."""
        d, ts, k, plen, inspected, data = wire.sample_record(raw)
        return self._sample(k, d, ts, plen, inspected, data)

    def _on_sample(self, ev: wire.Event) -> list[Decision]:
        return self._sample(_pack_key(*ev.key), ev.dir, ev.ts_ns, ev.payload_len, ev.inspected, ev.data, ev.key)

    def _sample(self, k: bytes, direction: int, ts_ns: int, payload_len: int, inspected: int, data: bytes,
                key: wire.FlowKey | None = None) -> list[Decision]:
        """A sample of the flow whose packed key is `k` (`key`, when the caller has it built)."""
        st = self._state_k(k)
        gate = st.e2o
        if st.decided != _OPEN or gate == E2O_NO:
            return []
        self.counters["samples"] += 1
        tr = st.tracker
        if tr is None or tr.n >= inspected > 0:
            # more samples than the kernel's flow has inspected packets: they came from an earlier flow of this key
            # (evicted from the kernel's table), so its statistics start again. This also keeps the promise replay's
            # batches rely on: no decision from a sample of a flow's first SG_SAMPLES_MIN - 1 inspected packets.
            tr = st.tracker = E2OTracker()
        v = tr.add(ts_ns, direction, payload_len, data)
        if v is None:
            if tr.done:  # sample budget spent without a verdict: leave the kernel's class, stop watching
                st.tracker, st.decided = None, None
            return []
        if v.cls == wire.P2P and gate == E2O_NO_P2P:
            st.tracker, st.decided = None, None
            return []
        if key is None:
            key = wire.FlowKey.unpack(k)
        return self._decide(key, st, v.cls, v.reason, v.detail)

    def _on_tls(self, ev: wire.Event) -> list[Decision]:
        key = ev.key
        st = self._state(key)
        sni = client_hello_sni(ev.data)
        server_flight = False
        if sni is None:
            if ev.data[5:6] != b"\x02":  # not a server's first flight: a ClientHello without (captured) server_name
                self.counters["tls_no_sni"] += 1
                st.sni = ""
                return self._correlate(ev, st, "")
            if st.sni:
                return []  # the client named its server: the certificate adds nothing
            cns = certificate_common_names(ev.data)
            sni = next((cn for cn in cns if names.match_suffix(cn.removeprefix("*."), self.skype_names())), None)
            if sni is None:
                return []
            self.counters["tls_cert_name"] = self.counters.get("tls_cert_name", 0) + 1
            sni = "cert " + sni
            server_flight = True
        else:
            st.sni = sni
        if st.decided != _OPEN:
            return []
        if not server_flight and not names.match_suffix(sni, self.skype_names()):
            self.counters["tls_other"] += 1
            return self._correlate(ev, st, sni)
        # the client of a flow proved by name is in a Skype/Teams session (sender of the ClientHello, receiver of the
        # server's flight)
        client, _ = _sides(key, ev.dir ^ server_flight)
        self.sessions.put(client, ev.ts_ns)
        kcls, _ = kernel_class(st.kernel)
        if kcls not in _SNI_OVER:
            return []
        if kcls == wire.RELAY and names.match_suffix(sni.removeprefix("cert "), MEDIA_NAMES):
            return []  # TURN over TLS to a media relay: relay is the better answer
        if names.match_suffix(sni.removeprefix("cert "), names.DIRECT_ROUTING_NAMES):
            return self._decide(key, st, wire.OUT, R_DR_TRUNK, sni)  # an SBC's SIP/TLS trunk to Microsoft
        return self._decide(key, st, wire.SIGNALING, R_SNI, sni)

    def _correlate(self, ev: wire.Event, st: _Flow, sni: str) -> list[Decision]:
        """Host correlation (module docstring): skype-signaling for a ClientHello whose name proves nothing, when its
        client is in a recent Skype/Teams session and its server answered DNS through an Azure hosting zone."""
        if st.decided != _OPEN:
            return []
        key = ev.key
        client, server = _sides(key, ev.dir)
        seen = self.sessions.get(client)
        window_ns = self.policy.host_corr_s * 1_000_000_000
        if seen is None or not window_ns or not 0 <= ev.ts_ns - seen <= window_ns:
            return []
        hosted = self.dns.cloud_name(_ip(server), ev.ts_ns)
        if hosted is None:
            return []
        kcls, _ = kernel_class(st.kernel)
        if kcls not in _SNI_OVER:
            return []
        self.counters["host_corr"] += 1
        age = (ev.ts_ns - seen) / 1e9
        detail = f"{sni or 'no SNI'} at {hosted} (Azure), client in a Skype/Teams session {age:.0f} s before"
        return self._decide(key, st, wire.SIGNALING, R_HOST_CORR, detail)

    # ---- learned prefixes, housekeeping -----------------------------------------------------------------------------

    def take_prefix_changes(self) -> list[PrefixChange]:
        return self.dns.take()

    def expire(self, now_ns: int) -> None:
        self.dns.expire(now_ns)

    def forget(self, key: wire.FlowKey) -> None:
        self.flows.pop(key.pack(), None)

    def _census(self) -> dict[str, int]:
        """How many remembered flows are watched, decided, heard from the kernel, named (one pass: status only)."""
        c = {"states": len(self.flows), "tracked": 0, "decided": 0, "kernel_noted": 0, "sni": 0}
        for st in self.flows.values():
            c["tracked"] += st.tracker is not None
            c["decided"] += st.decided != _OPEN
            c["kernel_noted"] += st.kernel >= 0
            c["sni"] += st.sni is not None
        return c

    def status(self) -> dict:
        dns = self.dns.status()
        return {
            "learned": {"names": dns["names"], "addresses": dns["entries"], "pstn": dns["pstn"],
                        "msmedia": dns["msmedia"], "cloud": dns["cloud"], "max": dns["max_entries"]},
            "dns": {"responses": dns["responses"], "errors": dns["errors"]},
            "flows": {**self._census(), "sessions": len(self.sessions), "max": self.flow_state_max,
                      "evicted": self.flows.evicted},
            "counters": dict(self.counters),
        }


def _sides(key: wire.FlowKey, sender_dir: int) -> tuple[bytes, bytes]:
    """(address of the packet's sender, address of its receiver): dir 0 is a packet from the key's lower endpoint."""
    return (key.lo_addr, key.hi_addr) if sender_dir == 0 else (key.hi_addr, key.lo_addr)


def _ip(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.IPv6Address(raw)
    return ip.ipv4_mapped or ip
