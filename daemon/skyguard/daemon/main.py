"""skyguardd: attach the classifier to the router's interfaces and run one event loop over the ring buffer, the control
socket, link events, timers and signals.

The kernel enforces; the daemon decides what the kernel cannot and serves the operator. Maps are pinned under the pin
path, so a restarted daemon adopts the flows and the attached program keeps enforcing while no daemon runs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import selectors
import signal
import sys
import time
from typing import Any

from skyguard import __version__, wire
from skyguard.daemon.config import Config, ConfigError, parse_daemon_args
from skyguard.daemon.control import ControlError, ControlServer
from skyguard.daemon.sdnotify import Notifier
from skyguard.kernel.flowtable import SORTS, FlowTable
from skyguard.kernel.ifaces import (
    Attached,
    InterfaceError,
    LinkWatcher,
    attach,
    detach,
    ensure_bpffs,
    ifindex,
    xdp_prog_id,
)
from skyguard.logs import configure, get_logger
from skyguard.policy import Policy, PolicyError, load_policy
from skyguard.slowpath.engine import Engine

TICK_S = 1.0  # housekeeping period (expiry, watchdog, status)


class Daemon:
    def __init__(self, cfg: Config, log: Any) -> None:
        self.cfg = cfg
        self.log = log
        self.notify = Notifier()
        self.started = time.time()
        self.attached: dict[str, Attached] = {}
        self.kernel = None
        self.engine: Engine | None = None
        self.control: ControlServer | None = None
        self.links: LinkWatcher | None = None
        self.sel = selectors.DefaultSelector()
        self._stop = False
        self._reload = False
        self._sigr, self._sigw = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.policy_loaded_at = 0.0
        self.adopted_flows = 0

    # ---- start ------------------------------------------------------------------------------------------------------

    def start(self) -> None:
        from skyguard.kernel.loader import Kernel

        cfg = self.cfg
        missing = [i for i in cfg.interfaces if ifindex(i) is None]
        if missing:
            raise InterfaceError(f"interface {', '.join(missing)} does not exist")
        if not cfg.interfaces:
            raise InterfaceError("no interfaces configured (config `interfaces` or --interface)")
        policy = load_policy(cfg.policy)
        if ensure_bpffs():
            self.log.info("mounted bpffs", path="/sys/fs/bpf")
        os.makedirs(cfg.pin_path, exist_ok=True)
        self.kernel = Kernel(flows_max=cfg.flows_max, window=cfg.window, pin_path=cfg.pin_path)
        self.adopted_flows = self.kernel.flow_count()
        if self.adopted_flows:
            self.log.info("adopted pinned maps", pin_path=cfg.pin_path, flows=self.adopted_flows)
        self.engine = Engine(self.kernel, policy, logger=self.log)
        self.table = FlowTable(self.kernel, cap=cfg.flows_max)
        self.engine.table = self.table
        self.policy_loaded_at = time.time()
        for ifname in cfg.interfaces:
            self._attach(ifname)
        self.control = ControlServer(cfg.socket, self.handle, mode=cfg.socket_mode, group=cfg.socket_group)
        self.engine.subscribe(self.control.publish, lambda: self.control.subscribers > 0)
        self.links = LinkWatcher()
        self.sel.register(self.control, selectors.EVENT_READ, "control")
        self.sel.register(self.links, selectors.EVENT_READ, "links")
        self.sel.register(self._sigr, selectors.EVENT_READ, "signal")
        rb_fd = self.kernel.events_fd()
        if rb_fd is not None:
            self.sel.register(rb_fd, selectors.EVENT_READ, "events")
        signal.set_wakeup_fd(self._sigw)
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        modes = ", ".join(f"{a.ifname} {a.mode}" for a in self.attached.values())
        self.log.info("skyguardd ready", version=__version__, interfaces=modes, policy=policy.name,
                      flow_clock=self.kernel.clock_note,
                      prog_id=self.prog_id(), socket=str(cfg.socket))
        self.notify.ready(f"enforcing {policy.name} on {modes}")

    def _attach(self, ifname: str) -> None:
        a = attach(self.kernel.prog_fd, ifname, self.cfg.xdp_mode)
        self.attached[ifname] = a
        self.log.info("xdp attached", interface=ifname, mode=a.mode, requested=self.cfg.xdp_mode)

    def prog_id(self) -> int | None:
        for ifname in self.attached:
            pid = xdp_prog_id(ifname)
            if pid:
                return pid
        return None

    # ---- loop -------------------------------------------------------------------------------------------------------

    def run(self) -> int:
        next_tick = time.monotonic()
        wd = self.notify.watchdog_interval()
        next_wd = time.monotonic()
        status_every, next_status = 10.0, time.monotonic() + 10.0
        while not self._stop:
            now = time.monotonic()
            wait = max(0.0, min(next_tick, next_wd if wd else next_tick) - now)
            ct = self.control.timeout()
            if ct is not None:
                wait = min(wait, ct)
            if self.kernel.events_fd() is None:
                wait = min(wait, 0.05)
            if self.table.refreshing:
                wait = 0.0  # a snapshot refresh is under way: one chunk per iteration, between other work
            for key, _mask in self.sel.select(wait):
                what = key.data
                if what == "events":
                    self.engine.pump(0)
                elif what == "control":
                    self.control.poll(0)
                elif what == "links":
                    self._on_links()
                elif what == "signal":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._sigr, 512)
            if self.kernel.events_fd() is None:
                self.engine.pump(0)
            self.control.poll(0) if ct is not None and ct <= 0 else None
            if self._reload:
                self._reload = False
                with contextlib.suppress(PolicyError):  # reload() logged it; the running policy stays
                    self.reload(source="SIGHUP")
            if self.table.step():
                self._expire_idle()  # a fresh snapshot: its idle flows are the expiry candidates
            now = time.monotonic()
            if wd and now >= next_wd:
                self.notify.watchdog()
                next_wd = now + wd
            if now >= next_tick:
                next_tick = now + TICK_S
                self._housekeeping()
            if now >= next_status:
                next_status = now + status_every
                self.notify.status(self._status_line())
        return 0

    def _housekeeping(self) -> None:
        self.engine.slow.expire(time.time_ns())
        for pc in self.engine.slow.take_prefix_changes():
            self.engine.apply_prefix(pc)
        self.engine.expire_blocks(time.time_ns())

    def _expire_idle(self) -> None:
        t = self.cfg.idle_timeout
        timeouts = {"udp": t.udp, "tcp": t.tcp, "other": t.other}
        gone = self.engine.expire_flows(time.monotonic_ns(), timeouts)
        if gone:
            self.log.debug("flows expired", count=gone)

    def _flow_count(self) -> int:
        """The flow count: exact for small tables, the last snapshot's for large ones (a count reads the map)."""
        snap = self.table.snapshot
        if snap is not None and len(snap) >= 50_000:
            return len(snap)
        return self.kernel.flow_count()

    def _on_links(self) -> None:
        for ev, name, _idx in self.links.drain():
            if name not in self.cfg.interfaces:
                continue
            if ev == "gone":
                if name in self.attached:
                    self.log.warning("interface gone", interface=name)
                    self.attached.pop(name, None)
            elif ev == "up" and name not in self.attached:
                try:
                    self._attach(name)
                    self.log.info("interface back: program re-attached", interface=name)
                except InterfaceError as e:
                    self.log.error("re-attach failed", interface=name, error=str(e))
            elif ev == "up" and name in self.attached and not xdp_prog_id(name):
                with contextlib.suppress(InterfaceError):
                    self._attach(name)
                    self.log.info("program was detached from outside: re-attached", interface=name)

    def _on_stop(self, signum, _frame) -> None:
        self._stop = True

    def _on_hup(self, _signum, _frame) -> None:
        self._reload = True

    def _status_line(self) -> str:
        st = self.kernel.stats()
        return (f"{self._flow_count()} flows, {st.get('packets', 0)} packets, {st.get('act_drop', 0)} dropped, "
                f"policy {self.engine.policy.name}")

    # ---- reload -----------------------------------------------------------------------------------------------------

    def reload(self, source: str = "socket", path: str | None = None) -> Policy:
        """Swap the policy atomically. A bad file leaves the running policy in place and raises PolicyError."""
        self.notify.reloading()
        try:
            policy = load_policy(path or self.cfg.policy)
        except PolicyError as e:
            self.log.error("policy reload refused: running policy kept", error=str(e), source=source,
                           running=self.engine.policy.name)
            self.notify.ready(f"reload refused: {e}")
            raise
        self.engine.set_policy(policy)
        self.policy_loaded_at = time.time()
        self.log.info("policy reloaded", policy=policy.name, source=source)
        self.notify.ready(f"enforcing {policy.name}")
        return policy

    # ---- stop -------------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        self.notify.stopping()
        if self.cfg.on_stop == "detach":
            for ifname in list(self.attached):
                detach(ifname)
                self.log.info("xdp detached", interface=ifname)
        else:
            self.log.info("stopping: program stays attached, maps stay pinned", pin_path=self.cfg.pin_path)
        if self.control:
            self.control.close()
        if self.links:
            self.links.close()
        if self.kernel:
            self.kernel.close()

    # ---- control socket ---------------------------------------------------------------------------------------------

    def handle(self, cmd: str, args: dict) -> Any:
        fn = getattr(self, "cmd_" + cmd.replace(".", "_"), None)
        if fn is None:
            raise ControlError("unknown-command", f"unknown command {cmd!r}")
        return fn(args)

    def cmd_status(self, args: dict) -> dict:
        pol = self.engine.policy
        st = self.kernel.stats()
        n = self._flow_count()
        return {
            "version": __version__, "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 3),
            "interfaces": [{"name": a.ifname, "ifindex": a.ifindex, "mode": a.mode} for a in self.attached.values()],
            "xdp_mode": self.cfg.xdp_mode, "prog_id": self.prog_id(),
            "policy": {"name": pol.name, "path": pol.path, "loaded_at": self.policy_loaded_at,
                       "digest": pol.digest},
            "flows": {"count": n, "max": self.cfg.flows_max, "fill": round(n / max(self.cfg.flows_max, 1), 6),
                      "adopted": self.adopted_flows},
            "counters": {k: st.get(k, 0) for k in ("packets", "bytes", "act_pass", "act_drop", "act_mark",
                                                    "classified", "events_lost", "out_no_flow")},
            "slowpath": self.engine.slow.status(),
            "pin_path": self.cfg.pin_path, "socket": str(self.cfg.socket),
        }

    def cmd_stats(self, args: dict) -> dict:
        c = self.engine.counters
        return {"kernel": self.kernel.stats(), "daemon": {"events": dict(c.events), "decisions": c.decisions,
                                                           "prefix_changes": c.prefix_changes,
                                                           "expired_flows": c.expired_flows,
                                                           "log_suppressed": self.engine.log_suppressed}}

    def cmd_flows(self, args: dict) -> dict:
        cls = args.get("class")
        if cls is not None and cls not in wire.CLASS_IDS:
            raise ControlError("bad-argument", f"unknown class {cls!r} (one of {', '.join(wire.CLASS_NAMES)})")
        addr = args.get("addr")
        net = None
        if addr is not None:
            try:
                net = ipaddress.ip_network(str(addr), strict=False)
            except ValueError:
                raise ControlError("bad-argument", f"bad address {addr!r}") from None
        sort = args.get("sort", "packets")
        if sort not in SORTS:
            raise ControlError("bad-argument", f"bad sort {sort!r} ({', '.join(SORTS)})")
        limit = args.get("limit", 100)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ControlError("bad-argument", "limit must be a non-negative integer")
        if args.get("fresh", self.kernel_small()):
            self.table.refresh()
        snap, idx, total = self.table.select(cls=None if cls is None else wire.CLASS_IDS[cls], net=net, sort=sort,
                                             limit=limit)
        pairs, seen = [], set()
        for i in idx:
            key = snap.key(int(i))
            flow = self.kernel.flow(key) if key not in seen else None  # read afresh; gone or duplicate: skipped
            seen.add(key)
            if flow is not None:
                pairs.append((key, flow))
        rows = self.engine.flow_rows(pairs)
        age_ms = round((time.monotonic_ns() - snap.taken_ns) / 1e6, 1)
        return {"flows": rows, "total": total, "snapshot_age_ms": age_ms}

    def kernel_small(self) -> bool:
        """Small tables are read afresh for every `flows` request; large ones are served from the snapshot the
        loop keeps refreshing (at 1M flows a full read costs ~0.5 s)."""
        snap = self.table.snapshot
        return snap is None or len(snap) < 50_000

    def cmd_flow(self, args: dict) -> dict:
        a, b = str(args.get("a", "")), str(args.get("b", ""))
        proto = args.get("proto", "udp")
        try:
            (ha, pa), (hb, pb) = _split_ep(a), _split_ep(b)
        except ValueError as e:
            raise ControlError("bad-argument", str(e)) from None
        key = wire.FlowKey.make(ha, pa, hb, pb, {"udp": 17, "tcp": 6}.get(proto, 17), int(args.get("vlan", 0)))
        flow = self.kernel.flow(key)
        if flow is None:
            raise ControlError("not-found", f"no flow {proto} {a} <-> {b}")
        row = self.engine.flow_row(key, flow)
        row.update({"reasons": wire.reason_names(flow.reason), "evidence": flow.evidence, "inspected": flow.inspected,
                    "stun": list(flow.stun), "rtp_pt": list(flow.rtp_pt), "cid_rep": list(flow.cid_rep),
                    "flags": flow.flags})
        return row

    def cmd_policy_show(self, args: dict) -> dict:
        return _policy_dict(self.engine.policy, self.policy_loaded_at)

    def cmd_policy_check(self, args: dict) -> dict:
        path = args.get("path") or self.cfg.policy
        try:
            p = load_policy(path)
        except PolicyError as e:
            raise ControlError("bad-policy", str(e)) from None
        return {"ok": True, "name": p.name, "path": str(path)}

    def cmd_policy_reload(self, args: dict) -> dict:
        if args.get("path") not in (None, "", self.cfg.policy):
            raise ControlError("forbidden", "policy.reload loads only the configured policy path")
        try:
            p = self.reload(source="socket")
        except PolicyError as e:
            raise ControlError("bad-policy", str(e)) from None
        return {"ok": True, "name": p.name, "loaded_at": self.policy_loaded_at}

    def cmd_block(self, args: dict) -> dict:
        net = _net_arg(args)
        exp = args.get("expire")
        if exp is not None and (not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= 0):
            raise ControlError("bad-argument", "expire must be a positive number of seconds")
        expires_ns = time.time_ns() + int(exp * 1e9) if exp else 0
        n = self.engine.block(net, expires_ns)
        return {"blocked": str(net), "flows": n, "expires_ns": expires_ns}

    def cmd_unblock(self, args: dict) -> dict:
        net = _net_arg(args)
        existed = self.engine.unblock(net)
        if not existed:
            raise ControlError("not-found", f"{net} is not blocked")
        return {"unblocked": str(net)}


def _net_arg(args: dict):
    addr = args.get("addr", args.get("prefix"))  # the CLI sends `prefix`; `addr` is accepted too
    try:
        return ipaddress.ip_network(str(addr), strict=False)
    except ValueError:
        raise ControlError("bad-argument", f"bad address {addr!r}") from None


def _split_ep(s: str) -> tuple[str, int]:
    if s.startswith("["):
        host, _, port = s[1:].partition("]:")
    else:
        host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bad endpoint {s!r} (want ADDR:PORT or [ADDR]:PORT)")
    ipaddress.ip_address(host)
    return host, int(port)


def _policy_dict(p: Policy, loaded_at: float) -> dict:
    classes = {}
    for i, name in enumerate(wire.CLASS_NAMES):
        s = p.slot(i)
        classes[name] = {"action": wire.ACTION_NAMES[s.action], "dscp": s.dscp, "log": s.log}
    mal = p.slot(wire.POL_MALFORMED)
    return {"name": p.name, "path": p.path, "digest": p.digest, "loaded_at": loaded_at, "classes": classes,
            "malformed": {"action": wire.ACTION_NAMES[mal.action], "dscp": mal.dscp},
            "pstn": {"prefixes": [str(n) for n in p.pstn_prefixes], "names": list(p.pstn_names)},
            "microsoft_media": {"prefixes": [str(n) for n in p.msmedia_prefixes]},
            "exempt": {"prefixes": [str(n) for n in p.exempt_prefixes]}, "skype_names": list(p.skype_names),
            "host_correlation_s": p.host_corr_s}


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, _args = parse_daemon_args(argv)
    except ConfigError as e:
        print(f"skyguardd: {e}", file=sys.stderr)
        return 1
    configure(cfg.log_format, cfg.log_level)
    log = get_logger("skyguardd")
    if os.geteuid() != 0:
        print("skyguardd: must run as root or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON", file=sys.stderr)
    d = Daemon(cfg, log)
    try:
        d.start()
    except (InterfaceError, PolicyError, OSError) as e:
        log.error("start failed", error=str(e))
        print(f"skyguardd: {e}", file=sys.stderr)
        with contextlib.suppress(Exception):
            d.stop()
        return 1
    try:
        return d.run()
    finally:
        d.stop()
        log.info("skyguardd stopped")

