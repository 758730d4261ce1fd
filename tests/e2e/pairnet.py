"""Two namespaces joined by one veth pair, with skyguardd on the `b` side: the rig of the coexistence tests (foreign
XDP programs, jumbo frames, fwmark). Names are unique per test; everything goes in down(), even after a failure."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from tests.e2e.conftest import tear_down, wait_for

PY = sys.executable


def env() -> dict[str, str]:
    """The environment with PYTHONPATH made absolute: the tree under test, whatever the child's working directory."""
    e = dict(os.environ)
    if e.get("PYTHONPATH"):
        e["PYTHONPATH"] = os.pathsep.join(os.path.abspath(x) for x in e["PYTHONPATH"].split(os.pathsep))
    return e


class Pair:
    def __init__(self, mtu: int = 1500) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.ns_a, self.ns_b = f"sg-pa-{self.tag}", f"sg-pb-{self.tag}"
        self.if_a, self.if_b = f"sga{self.tag}", f"sgb{self.tag}"
        self.addr_a, self.addr_b, self.addr_gw = "10.77.0.1", "10.77.0.2", "10.77.0.3"
        self.mtu = mtu
        self.tmp = Path(tempfile.mkdtemp(prefix=f"sg-pair-{self.tag}-"))
        self.pin_path = f"/sys/fs/bpf/sg-pair-{self.tag}"
        self.sock = str(self.tmp / "skyguard.sock")
        self.procs: list[subprocess.Popen] = []
        self.cleanups: list = []

    # ---- set-up -----------------------------------------------------------------------------------------------------
    def up(self) -> Pair:
        for ns in (self.ns_a, self.ns_b):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "link", "add", self.if_a, "netns", self.ns_a, "mtu", str(self.mtu), "type", "veth",
                        "peer", "name", self.if_b, "netns", self.ns_b, "mtu", str(self.mtu)], check=True)
        self.sh_a("ip", "addr", "add", f"{self.addr_a}/24", "dev", self.if_a)
        self.sh_b("ip", "addr", "add", f"{self.addr_b}/24", "dev", self.if_b)
        self.sh_b("ip", "addr", "add", f"{self.addr_gw}/24", "dev", self.if_b)
        for ns, ifn in ((self.ns_a, self.if_a), (self.ns_b, self.if_b)):
            self.sh(ns, "ip", "link", "set", ifn, "up")
            self.sh(ns, "ip", "link", "set", "lo", "up")
        return self

    def sh(self, ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        # nsenter --net keeps the host's mounts (bpffs pins of libxdp and skyguard stay visible), unlike ip netns exec
        return subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", *cmd], check=check, capture_output=True,
                              text=True, env=env())

    def sh_a(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.sh(self.ns_a, *cmd, check=check)

    def sh_b(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.sh(self.ns_b, *cmd, check=check)

    # ---- skyguardd on b ---------------------------------------------------------------------------------------------
    def config(self, policy: str, extra: str = "") -> Path:
        pol = self.tmp / "policy.toml"
        pol.write_text(policy)
        cfg = self.tmp / "skyguard.toml"
        cfg.write_text(f'interfaces = ["{self.if_b}"]\npolicy = "{pol}"\nsocket = "{self.sock}"\n'
                       f'pin_path = "{self.pin_path}"\nlog_format = "json"\n{extra}')
        return cfg

    def spawn(self, cfg: Path, *flags: str) -> subprocess.Popen:
        log = open(self.tmp / "skyguardd.log", "a")  # noqa: SIM115 - the process owns it until it exits
        p = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{self.ns_b}", PY, "-m", "skyguard.daemon",
                              "--config", str(cfg), *flags], stdout=log, stderr=subprocess.STDOUT, env=env())
        self.procs.append(p)
        return p

    def start(self, cfg: Path, *flags: str) -> subprocess.Popen:
        p = self.spawn(cfg, *flags)
        wait_for(lambda: p.poll() is not None or "skyguardd ready" in self.log(), "skyguardd ready", 120)
        assert p.poll() is None, f"skyguardd exited {p.returncode}:\n{self.log()[-3000:]}"
        return p

    def stop(self, p: subprocess.Popen) -> int:
        p.send_signal(signal.SIGTERM)
        return p.wait(60)

    def log(self) -> str:
        f = self.tmp / "skyguardd.log"
        return f.read_text() if f.exists() else ""

    def cli(self, *args: str) -> dict:
        out = subprocess.run([PY, "-m", "skyguard.cli", *args, "--socket", self.sock, "--json"], check=True,
                             capture_output=True, text=True, env=env())
        return json.loads(out.stdout)

    def xdp_id(self) -> int | None:
        out = self.sh_b("ip", "-j", "link", "show", self.if_b).stdout
        xdp = json.loads(out)[0].get("xdp") or {}
        return (xdp.get("prog") or {}).get("id") or next((p["prog"]["id"] for p in xdp.get("attached", [])), None)

    # ---- traffic: UDP from a to b's addresses -----------------------------------------------------------------------
    def receiver(self, port: int) -> socket.socket:
        from skyguard.lab.topo import in_netns

        with in_netns(self.ns_b):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
        self.cleanups.append(s.close)
        return s

    def send(self, dst: str, dport: int, payload: bytes, n: int, sport: int = 40000) -> None:
        from skyguard.lab.topo import in_netns

        with in_netns(self.ns_a):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.closing(s):
            s.bind((self.addr_a, sport))
            for _ in range(n):
                s.sendto(payload, (dst, dport))

    @staticmethod
    def drain(s: socket.socket) -> list[bytes]:
        got = []
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(s.recv(65536))
        return got

    # ---- clean-up ---------------------------------------------------------------------------------------------------
    def down(self) -> None:
        tear_down(self.procs, self._close_sockets, self._del_namespaces,
                  dirs=(self.pin_path, f"/sys/fs/bpf/xdp-filter/programs/{self.if_b}", self.tmp))

    def _close_sockets(self) -> None:
        for fn in self.cleanups:
            with contextlib.suppress(Exception):
                fn()

    def _del_namespaces(self) -> None:
        for ns in (self.ns_a, self.ns_b):  # the veth pair goes with them
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def until(cond, what: str, timeout: float = 20.0, tick=None):
    return wait_for(cond, what, timeout, 0.05, tick)


FILTERED_PORT = 7777  # the UDP port xdp-filter drops in filtered_pair()


# xdp-filter keeps one state for the whole machine, whatever the namespace: a lock file that makes a second command
# fail at once rather than wait (/run/xdp-filter.lck), and one pinned port map whose hit counters the tests read
_XDP_FILTER_TURN = Path(tempfile.gettempdir()) / "skyguard-tests-xdp-filter.lock"


def _take_xdp_filter(request) -> None:
    """Wait for this test's turn with xdp-filter, held until every later finalizer (the pair's removal) has run:
    pytest's workers run test files side by side, and two files use xdp-filter."""
    fd = os.open(_XDP_FILTER_TURN, os.O_RDWR | os.O_CREAT, 0o600)
    request.addfinalizer(lambda: os.close(fd))  # closing the file gives the turn back
    fcntl.flock(fd, fcntl.LOCK_EX)


def filtered_pair(request) -> Pair:
    """A Pair up, with Debian's xdp-filter loaded natively on b's end dropping UDP port FILTERED_PORT; taken down when
    the test ends (a finalizer of `request`, so finalizers the caller added before run after it)."""
    _take_xdp_filter(request)
    p = Pair()
    request.addfinalizer(p.down)
    p.up()
    p.sh_b("xdp-filter", "load", p.if_b, "-m", "native")
    p.sh_b("xdp-filter", "port", str(FILTERED_PORT))
    return p


def filter_hits(p: Pair, port: int = FILTERED_PORT) -> int:
    """Packets xdp-filter (on b's end) has counted for its dropped `port`, from `xdp-filter status`."""
    out = p.sh_b("xdp-filter", "status").stdout
    m = re.search(rf"^\s*{port}\s+\S+\s+(\d+)", out, re.M)
    assert m, out
    return int(m.group(1))
