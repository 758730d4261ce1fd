"""skyguardd: attach the classifier to the router's interfaces and run one event loop over the ring buffer, the control
socket, link events, timers and signals.

The kernel enforces; the daemon decides what the kernel cannot and serves the operator. Maps are pinned under the pin
path, so a restarted daemon adopts the flows and the attached program keeps enforcing while no daemon runs.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sys
import time
from typing import Any

from skyguard import __version__, wire
from skyguard.daemon.commands import Commands
from skyguard.daemon.config import Config, ConfigError, parse_daemon_args
from skyguard.daemon.control import ControlServer
from skyguard.daemon.metrics import DaemonMetrics
from skyguard.daemon.sdnotify import Notifier
from skyguard.export.ipfix import Exporter
from skyguard.kernel import foreign, pins
from skyguard.kernel.flowtable import FlowTable
from skyguard.kernel.ifaces import (
    Attached,
    InterfaceError,
    LinkWatcher,
    attach,
    ensure_bpffs,
    ifindex,
    xdp_prog_id,
)
from skyguard.logs import configure, get_logger
from skyguard.policy import Policy, PolicyError, load_policy
from skyguard.slowpath.engine import Engine

TICK_S = 1.0  # housekeeping period (expiry, watchdog, status)
# a class decision is read again this long after it is applied (Engine.recheck): far longer than any program run
RECHECK_NS = 200_000_000


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
        self.commands = Commands(self)
        self.pins_before: bool | None = None  # whether the pin path held pins when start() looked (None: not yet)
        self.ipfix: Exporter | None = None
        self.metrics: DaemonMetrics | None = None
        self.found: dict[str, list[foreign.Found]] = {}  # what start() found attached, by interface
        self.own_id: int | None = None  # the id of this daemon's XDP program
        self.tc = None  # kernel.tcmark.TcMark once a policy has a firewall mark

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
        # the socket before the kernel: a second skyguardd started by mistake finds the first one's socket live and
        # stops here, before it compiles, pins or attaches anything
        self.control = ControlServer(cfg.socket, self.commands, mode=cfg.socket_mode, group=cfg.socket_group)
        if ensure_bpffs():
            self.log.info("mounted bpffs", path="/sys/fs/bpf")
        self.pins_before = _has_pins(cfg.pin_path)
        os.makedirs(cfg.pin_path, exist_ok=True)
        # what is attached already, judged before anything is compiled: a refusal touches nothing
        self.found = {i: foreign.survey(i, cfg.pin_path) for i in cfg.interfaces}
        foreign.check(self.found, cfg.foreign_xdp)
        to_chain = self.found if cfg.foreign_xdp == "chain" else {}
        # chaining is compiled in when asked for, and while a chain made by an earlier run is in place
        chain = cfg.foreign_xdp == "chain" or bool(foreign.pinned_chain(cfg.pin_path))
        self.kernel = Kernel(flows_max=cfg.flows_max, window=cfg.window, pin_path=cfg.pin_path, chain=chain,
                             before_load=lambda k: foreign.fill_chain(k, to_chain))
        from skyguard.kernel.bpfobj import prog_info

        self.own_id = prog_info(self.kernel.prog_fd).id
        for m in self.kernel.recreated:  # a pin of another layout that holds nothing but counters
            self.log.warning(f"pinned map recreated: {pins.RECREATE[m.name]}", map=m.name, pin=m.path,
                             pinned=str(m.pinned), build=str(m.build))
        if chain and not self.kernel.frags:
            self.log.warning("xdp program loaded without multi-buffer support: a chained program is not frags-aware",
                             note="native XDP then attaches only where frames fit one buffer")
        self.adopted_flows = self.kernel.flow_count()
        if self.adopted_flows:
            self.log.info("adopted pinned maps", pin_path=cfg.pin_path, flows=self.adopted_flows)
        self.engine = Engine(self.kernel, policy, logger=self.log)
        self.engine.recheck_ns = RECHECK_NS
        self.table = FlowTable(self.kernel, cap=cfg.flows_max)
        self.engine.table = self.table
        self.policy_loaded_at = time.time()
        if cfg.ipfix_collector:
            self._start_ipfix()
        for ifname in cfg.interfaces:
            self._attach(ifname)
        self._fwmarks(policy)
        self.metrics = DaemonMetrics(self)
        self.metrics.start()
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

    def _start_ipfix(self) -> None:
        cfg, eng = self.cfg, self.engine
        self.ipfix = Exporter(cfg.ipfix_collector, domain=cfg.ipfix_domain, active_timeout_s=cfg.ipfix_active_timeout,
                              mtu=cfg.ipfix_mtu, template_refresh_s=cfg.ipfix_template_refresh,
                              template_refresh_messages=cfg.ipfix_template_refresh_packets,
                              describe=lambda k, f: (f.class_name, wire.reason_name(f.reason), eng.action_of(f)))
        eng.on_flow_end.append(self.ipfix.flow_ended)
        adopted = self.ipfix.adopt(self.kernel.flows_raw())  # exported by the daemon before this one, up to its stop
        self.log.info("ipfix export", collector=cfg.ipfix_collector, domain=cfg.ipfix_domain,
                      active_timeout_s=cfg.ipfix_active_timeout, adopted_flows=adopted)

    def _attach(self, ifname: str) -> None:
        """Attach with the kernel's expected-program replace: only what survey() found there, and foreign_xdp allowed
        to replace, can be replaced; anything attached meanwhile makes the kernel refuse."""
        progs = self.found.pop(ifname, None)
        if progs is None:  # a re-attach (link back, or program removed from outside): look again
            progs = foreign.survey(ifname, self.cfg.pin_path)
            foreign.check({ifname: progs}, self.cfg.foreign_xdp)
            if self.cfg.foreign_xdp == "chain" and foreign.in_the_way(progs) and self.kernel.chain_map is not None:
                foreign.fill_chain(self.kernel, {ifname: progs})
        way = foreign.in_the_way(progs)
        expect = foreign.expect_fds([f for f in progs if f.own or f in way])
        try:
            a = attach(self.kernel.prog_fd, ifname, self.cfg.xdp_mode, expect=expect, frags=self.kernel.frags)
        finally:
            for fd in expect.values():
                os.close(fd)
        for f in way:
            if self.cfg.foreign_xdp == "replace":
                self.log.warning("replaced foreign XDP program", interface=ifname, prog_id=f.prog_id, name=f.name,
                                 tag=f.tag, mode=f.mode)
            else:
                self.log.info("chained foreign XDP program: skyguard runs first and hands it every packet it passes",
                              interface=ifname, prog_id=f.prog_id, name=f.name, tag=f.tag, mode=f.mode)
        self.attached[ifname] = a
        self.log.info("xdp attached", interface=ifname, mode=a.mode, requested=self.cfg.xdp_mode,
                      frags=self.kernel.frags, prog_id=self.own_id)
        if self.tc is not None:
            self.tc.attach(ifname)

    def _fwmarks(self, policy: Policy) -> None:
        """The TC ingress program that sets skb->mark, once a policy gives a class a firewall mark."""
        if not policy.fwmarks or self.tc is not None:
            return
        from skyguard.kernel.tcmark import TcMark

        self.tc = TcMark()
        for ifname in self.attached:
            self.tc.attach(ifname)
        self.log.info("fwmark tc program attached", interfaces=list(self.attached),
                      marks={wire.CLASS_NAMES[c]: f"{m:#x}/{k:#x}" for c, (m, k) in policy.fwmarks.items()})

    def interfaces(self) -> list[dict[str, Any]]:
        return [{"name": a.ifname, "ifindex": a.ifindex, "mode": a.mode} for a in self.attached.values()]

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
        stats_every = self.cfg.stats_interval
        next_stats = time.monotonic() + stats_every if stats_every else float("inf")
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
                if self.ipfix is not None:
                    self.ipfix.active_timeouts(self.table.snapshot, self.kernel.flow)
            if self.ipfix is not None and (self.ipfix.pending or self.ipfix.outbox):
                self.ipfix.flush()  # non-blocking: what the socket does not take now waits for the next turn
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
            if now >= next_stats:
                next_stats = now + stats_every
                self._log_stats()
        return 0

    def _log_stats(self) -> None:
        """`stats_interval`: the counters an operator reads in the journal without asking the socket."""
        st = self.engine.kernel_stats()
        self.log.info("stats", flows=self.engine.flow_count(), policy=self.engine.policy.name,
                      **{k: st.get(k, 0) for k in ("packets", "bytes", "act_pass", "act_drop", "act_mark",
                                                   "classified", "events_lost", "out_no_flow")})

    def _housekeeping(self) -> None:
        self.engine.recheck()
        self.engine.slow.expire(time.time_ns())
        for pc in self.engine.slow.take_prefix_changes():
            self.engine.apply_prefix(pc)
        self.engine.expire_blocks(time.time_ns())
        if self.metrics is not None:
            self.metrics.tick()

    def _expire_idle(self) -> None:
        t = self.cfg.idle_timeout
        timeouts = {"udp": t.udp, "tcp": t.tcp, "other": t.other}
        gone = self.engine.expire_flows(time.monotonic_ns(), timeouts)
        if gone:
            self.log.debug("flows expired", count=gone)

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
        st = self.engine.kernel_stats()
        return (f"{self.engine.flow_count()} flows, {st.get('packets', 0)} packets, {st.get('act_drop', 0)} dropped, "
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
            if self.metrics is not None:
                self.metrics.note_reload(False)
            raise
        self.engine.set_policy(policy)
        self._fwmarks(policy)
        self.policy_loaded_at = time.time()
        self.log.info("policy reloaded", policy=policy.name, source=source)
        if self.metrics is not None:
            self.metrics.note_reload(True)
        self.notify.ready(f"enforcing {policy.name}")
        return policy

    # ---- stop -------------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        self.notify.stopping()
        if self.cfg.on_stop == "detach":
            self._detach(list(self.attached))
        else:
            self.log.info("stopping: program stays attached, maps stay pinned", pin_path=self.cfg.pin_path,
                          interfaces=list(self.attached))
        if self.ipfix is not None and self.kernel is not None:
            sent = self.ipfix.stop(self.kernel.flows())  # a forced-end record for every flow still in the table
            self.log.info("ipfix export stopped", all_sent=sent, **self.ipfix.status())
            self.ipfix = None
        self._close()

    def abort(self, error: Exception) -> None:
        """After a failed start: log what the attempt left behind (it may have got nowhere, or halfway), then close.
        What this start attached is handled as a normal stop would (on_stop); pins stay, as on every stop."""
        self.notify.stopping()
        attached = list(self.attached)
        if attached and self.cfg.on_stop == "detach":
            self._detach(attached)
            attached = []
        if self.pins_before is None:
            kept = "pin path not touched"
        elif self.pins_before:
            kept = f"pins under {self.cfg.pin_path} existed before this start and stay"
        elif _has_pins(self.cfg.pin_path):
            kept = f"pins under {self.cfg.pin_path} were made by this start and stay"
        else:
            kept = f"no pins under {self.cfg.pin_path}"
        left = f"program stays attached to {', '.join(attached)}" if attached else "nothing attached"
        self.log.error(f"start failed: {left}; {kept}", error=str(error), attached=attached,
                       pins_existed_before=self.pins_before, pin_path=self.cfg.pin_path)
        self._close()

    def _detach(self, ifnames: list[str]) -> None:
        """Detach this daemon's program (expecting it) and put back what it chained, as it was attached."""
        from skyguard.kernel import tcmark

        for ifname in ifnames:
            done = foreign.restore(ifname, self.own_id, self.cfg.pin_path)
            if self.tc is not None:
                tcmark.detach(ifname)
            self.attached.pop(ifname, None)
            self.log.info("xdp detached", interface=ifname, result=done)

    def _close(self) -> None:
        if self.tc is not None:
            self.tc.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.ipfix is not None:
            self.ipfix.close()
        if self.control:
            self.control.close()
        if self.links:
            self.links.close()
        if self.kernel:
            self.kernel.close()


def _has_pins(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return any(True for _ in it)
    except OSError:
        return False


def check(cfg: Config) -> int:
    """`skyguardd --check`: the config parsed (or main() would not get here); now the policy it names."""
    try:
        pol = load_policy(cfg.policy)
    except PolicyError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(f"{cfg.path or 'command line'}: ok (interfaces {', '.join(cfg.interfaces)}; policy {pol.name!r} "
          f"from {cfg.policy})")
    return 0


def detach_all(cfg: Config) -> int:
    """`skyguardd --detach` (make uninstall): skyguard's program off every interface of this network namespace, each
    chained program back in its place, skyguard's TC filters removed. Pins stay."""
    from skyguard.kernel import tcmark

    try:
        done = foreign.detach_all(cfg.pin_path)
    except (InterfaceError, OSError) as e:
        print(f"skyguardd: {e}", file=sys.stderr)
        return 1
    for ifname, what in done:
        tcmark.detach(ifname)
        print(f"{ifname}: {what}")
    if not done:
        print(f"no interface runs the skyguard program of {cfg.pin_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, args = parse_daemon_args(argv)
    except ConfigError as e:
        print(f"skyguardd: {e}", file=sys.stderr)
        return 1
    if args.check:
        return check(cfg)
    if args.detach:
        return detach_all(cfg)
    configure(cfg.log_format, cfg.log_level)
    log = get_logger("skyguardd")
    if os.geteuid() != 0:
        print("skyguardd: must run as root or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON", file=sys.stderr)
    d = Daemon(cfg, log)
    try:
        d.start()
    except (InterfaceError, PolicyError, pins.PinError, OSError) as e:
        print(f"skyguardd: {e}", file=sys.stderr)
        with contextlib.suppress(Exception):
            d.abort(e)
        return 1
    try:
        return d.run()
    finally:
        d.stop()
        log.info("skyguardd stopped")

