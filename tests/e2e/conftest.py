"""End-to-end fixtures: a namespace topology (lan | router running the real skyguardd | inet), the daemon as a process
in the router namespace, and frames played through it from AF_PACKET sockets in the peer namespaces (skyguard.lab's
pieces). Every namespace, pin directory and temporary directory has a unique name and is removed even on failure."""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from skyguard.cli.client import Client
from skyguard.lab import demo as lab
from skyguard.lab import packet as pk
from skyguard.lab.topo import LAN_NET, Topology, leftover_namespaces
from tests.conftest import skip_or_fail

_OURS: list[str] = []  # namespaces made by this session


def wait_for(cond, what: str, timeout: float = 30.0, every: float = 0.1, tick=None):
    """Poll `cond()` until it returns something truthy (returned); fail naming `what` was awaited after `timeout` s.
    `tick()` (optional) runs between polls, e.g. to keep traffic flowing or frames received."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}; last value {got!r}")
        if tick is not None:
            tick()
        time.sleep(every)


def settle(w: lab.Wire, keys, what: str = "", timeout: float = 15.0) -> None:
    """Receive until every frame sent on the flows `keys` has reached the far end (flows that must pass); fail after
    `timeout` s naming them. A frame that crosses the router is delivered within microseconds, so once the passing
    flows have settled, frames of a blocked flow sent before them would have arrived too."""
    keys = list(keys)

    def done() -> bool:
        w.receive(0.0)
        return all(w.recv[k] >= w.sent[k] for k in keys)

    try:
        wait_for(done, what or "the passing flows' frames to reach the far end", timeout=timeout, every=0.0,
                 tick=lambda: w.receive(0.05))
    except AssertionError as e:
        lost = {k: (w.sent[k], w.recv[k]) for k in keys if w.recv[k] < w.sent[k]}
        raise AssertionError(f"{e}; (sent, received) short: {lost}") from None


def xdp_state(ns: str, ifname: str) -> tuple[str | None, int | None]:
    """(mode, program id) of the XDP program attached to `ifname` in namespace `ns`: mode "native" | "generic" |
    "hw" | "multi", (None, None) when nothing is attached; read from netlink (IFLA_XDP), not from skyguard."""
    from pyroute2 import IPRoute

    from skyguard.lab.topo import in_netns

    with in_netns(ns), IPRoute() as ip:
        idx = ip.link_lookup(ifname=ifname)
        assert idx, f"{ifname} does not exist in {ns}"
        xdp = ip.get_links(idx[0])[0].get_attr("IFLA_XDP")
    if not xdp:
        return None, None
    att = xdp.get_attr("IFLA_XDP_ATTACHED")  # pyroute2 decodes XDP_ATTACHED_* to names ("xdp", "xdpgeneric", ...)
    mode = {1: "native", 2: "generic", 3: "hw", 4: "multi", "xdp": "native", "xdpgeneric": "generic",
            "xdpoffload": "hw", "xdpmulti": "multi"}.get(att)
    return mode, (xdp.get_attr("IFLA_XDP_PROG_ID") or None) if mode else None


class RawConn:
    """A hand-driven connection to a control socket: bytes out, msgpack maps in, read only when asked (None at end of
    stream). subscribe() makes it an `events` subscriber; drain() then collects the events that have arrived."""

    def __init__(self, path: str, rcvbuf: int | None = None) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(10)
        self.s.connect(path)
        self.u = msgpack.Unpacker(raw=False)
        self.events: list[dict] = []
        self.eof = False
        self.nbytes = 0

    def read(self):
        while True:
            with contextlib.suppress(StopIteration):
                return next(self.u)
            try:
                data = self.s.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.u.feed(data)

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def request(self, cmd: str, rid: int = 1, **args):
        self.send(msgpack.packb({"v": 1, "id": rid, "cmd": cmd, "args": args}))
        return self.read()

    def subscribe(self) -> RawConn:
        """Read the hello, subscribe to events (request id 1) and check the reply; returns self."""
        hello = self.read()
        assert hello is not None, "the daemon closed the connection"
        assert "hello" in hello, hello
        rep = self.request("events")
        assert rep is not None, "the daemon closed the connection"
        assert rep["ok"] is True and rep["result"] == {"subscribed": True}, rep
        return self

    def drain(self) -> None:
        """Read whatever has arrived (non-blocking); sets eof when the daemon closed the connection."""
        self.s.setblocking(False)
        while not self.eof:
            try:
                data = self.s.recv(1 << 16)
            except BlockingIOError:
                break
            except ConnectionResetError:
                self.eof = True
                break
            if not data:
                self.eof = True
                break
            self.nbytes += len(data)
            self.u.feed(data)
        self.s.settimeout(10)
        for msg in self.u:
            if isinstance(msg, dict) and "event" in msg:
                self.events.append(msg["event"])

    def close(self) -> None:
        self.s.close()


def tear_down(procs: list[subprocess.Popen], *steps, dirs=()) -> None:
    """A rig's clean-up, in this order: SIGKILL and reap every process of `procs` still running, call each of `steps`
    (removing the namespaces, and with them the veths), remove the directories `dirs` (pins, temporary files). Every
    part runs even when one before it raised (an ExitStack), and the error is raised after the last."""
    with contextlib.ExitStack() as stack:
        for d in reversed(dirs):
            stack.callback(shutil.rmtree, d, ignore_errors=True)
        for step in reversed(steps):
            stack.callback(step)
        stack.callback(_kill_all, procs)


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)


@pytest.fixture(scope="session", autouse=True)
def no_leftover_namespaces() -> Iterator[None]:
    before = set(leftover_namespaces()) if shutil.which("nsenter") else set()
    yield
    if not _OURS:
        return
    now = set(leftover_namespaces())
    ours_left = sorted(n for n in now if n in _OURS)
    assert not ours_left, f"e2e left namespaces behind: {ours_left}"
    # namespaces someone else made during the session (a concurrent `skyguard lab`) are theirs; ours are checked above
    strays = sorted(now - before - set(_OURS))
    if strays:
        print(f"note: sg-* namespaces not made by this session exist: {strays}")


class Rig:
    """One topology with one skyguardd (restartable) on the router's two interfaces."""

    def __init__(self, policy_text: str = lab.LAB_POLICY) -> None:
        self.topo = Topology()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"sg-e2e-{self.topo.tag}-"))
        self.sock = str(self.tmp / "skyguard.sock")
        self.pin_path = f"/sys/fs/bpf/sg-e2e-{self.topo.tag}"
        self.log_path = self.tmp / "skyguardd.log"
        self.policy = self.tmp / "policy.toml"
        self.policy.write_text(policy_text)
        self.cfg = self.tmp / "skyguard.toml"
        self.proc: subprocess.Popen | None = None
        self.procs: list[subprocess.Popen] = []

    def up(self) -> Rig:
        _OURS.extend([self.topo.lan_ns, self.topo.router_ns, self.topo.inet_ns])
        self.topo.up()
        lab.write_config(self.cfg, self.topo, policy=self.policy, socket=self.sock, pin_path=self.pin_path)
        return self

    def configure(self, *, on_stop: str = "detach", xdp_mode: str = "auto", extra: str = "") -> Path:
        """Rewrite the rig's config (the next start uses it): on_stop, xdp_mode and extra TOML (tables last)."""
        lab.write_config(self.cfg, self.topo, policy=self.policy, socket=self.sock, pin_path=self.pin_path,
                         xdp_mode=xdp_mode, extra=extra)
        text = self.cfg.read_text()
        assert 'on_stop = "detach"' in text
        self.cfg.write_text(text.replace('on_stop = "detach"', f'on_stop = "{on_stop}"'))
        return self.cfg

    # ---- the daemon -------------------------------------------------------------------------------------------------

    def spawn(self, env: dict[str, str] | None = None, cfg: Path | None = None) -> subprocess.Popen:
        self.proc = lab.spawn_daemon(self.topo, cfg or self.cfg, self.log_path, env=env)
        self.procs.append(self.proc)
        return self.proc

    def start(self, env: dict[str, str] | None = None) -> dict:
        """Start skyguardd and wait for its socket; returns its first `status`."""
        self.spawn(env)
        return lab.wait_ready(self.proc, self.sock, self.log_path, timeout=60)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit; returns the exit status."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def xdp(self, ifname: str) -> tuple[str | None, int | None]:
        """(mode, program id) attached to one of the router's interfaces (see xdp_state)."""
        return xdp_state(self.topo.router_ns, ifname)

    def frame(self, src: str, sport: int, dst: str, dport: int, payload: bytes) -> tuple[str, bytes, tuple]:
        """(side, frame, flow tuple) of one UDP frame from the LAN client side (src) or the internet side (dst is a
        LAN address), addressed to the router's MAC on that side; for Wire.send(side, frame, key)."""
        if getattr(self, "_macs", None) is None:
            self._macs = lab.lab_macs(self.topo)  # read once: MACs change only when a link is made again
        macs = self._macs
        from_lan = ipaddress.ip_address(src) in ipaddress.ip_network(LAN_NET)
        smac, dmac = (macs["client"], macs["router_lan"]) if from_lan else (macs["inet"], macs["router_wan"])
        frame = pk.udp(src, sport, dst, dport, payload, src_mac=smac, dst_mac=dmac)
        return ("lan" if from_lan else "inet"), frame, lab._tuple(src, sport, dst, dport, 17)

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(sig)

    def client(self, timeout: float = 5.0) -> Client:
        return Client(self.sock, timeout=timeout)

    def call(self, cmd: str, **args):
        with self.client() as c:
            return c.call(cmd, **args)

    def flows(self) -> dict[tuple, dict]:
        return lab.rows_by_tuple(self.call("flows", sort="first", limit=0)["flows"])

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_log(self, needle: str, timeout: float = 5.0, start: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()[start:]
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the daemon's log:\n{self.log()[-3000:]}")

    # ---- traffic ----------------------------------------------------------------------------------------------------

    def schedule(self, only: list[int] | None = None, seed: int = 7) -> tuple[list, dict[int, tuple]]:
        """The lab demo's frames (lab.SCENARIOS, re-addressed for this topology), optionally only some scenarios (by
        index: the generator's flows depend on the position in the full list, so the list is never shortened)."""
        sched = lab.build_schedule(self.topo, seed, lab.SCENARIOS, lab.lab_macs(self.topo))
        main = lab.main_flows(sched, lab.SCENARIOS)
        if only is not None:
            sched = [x for x in sched if x[3] in only]
            main = {si: k for si, k in main.items() if si in only}
        return sched, main

    def wire(self, sched: list) -> lab.Wire:
        return lab.Wire(self.topo, [k for *_x, k in sched])

    # ---- clean-up ---------------------------------------------------------------------------------------------------

    def down(self) -> None:
        tear_down(self.procs, self.topo.down, dirs=(self.pin_path, self.tmp))


@pytest.fixture
def rig(bpf_ok, request) -> Iterator[Rig]:
    """A topology with the lab policy, the daemon not yet started (call rig.start())."""
    if not shutil.which("nsenter"):
        skip_or_fail("nsenter (util-linux) is missing")
    r = Rig()
    request.addfinalizer(r.down)
    r.up()
    yield r
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(f"--- skyguardd log ---\n{r.log()[-4000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep

