"""`skyguard lab`: the demo. A client LAN, a router running skyguardd, and an "internet" with a Skype peer, a PSTN
gateway, an operator SBC and a Microsoft relay, all in network namespaces this command makes and removes.

It plays PC-to-PC calls, PC-to-phone calls and background traffic (from the project's own generator) through the
router as real frames on veth, shows the operator's view while they run (flows with classes and verdicts, the daemon's
log lines), and ends with a summary: which calls passed, which were blocked, after how many packets.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from skyguard.cli.client import Client, ClientError
from skyguard.endpoints import parse_endpoint
from skyguard.lab import gen
from skyguard.lab import packet as pk
from skyguard.lab.topo import CLIENT, CLIENT2, PEER, PSTN_GW, RELAY, SBC, Topology

PACKET_OUTGOING = 4
DNS_SERVER = "192.0.2.11"
LEGACY_PEER = "192.0.2.10"
UNKNOWN_GW = "192.0.2.20"  # a SkypeOut gateway the policy does not know: caught by behaviour alone

LAB_POLICY = f"""# the lab's policy: block PC-to-phone calls, let PC-to-PC calls pass, mark signalling
name = "lab-block-pc-to-phone"

[class.skype-out]
action = "drop"
log = true

[class.skype-p2p]
action = "pass"
log = true

[class.skype-relay]
action = "pass"
log = true

[class.skype-signaling]
action = "mark"
dscp = 8

[pstn]
prefixes = ["{PSTN_GW}/32"]
names = ["sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com"]

[microsoft_media]
prefixes = ["203.0.113.64/27"]
"""


@dataclass
class Scenario:
    name: str  # what the operator reads
    kind: str  # generator kind
    far: str  # the far end's lab address
    expect: str  # "pass" | "block"
    client: str = CLIENT
    start_s: float = 0.0
    extra_far: dict[int, str] = field(default_factory=dict)  # flow index -> far address (dns-pstn: DNS server)
    far_port: int | None = None  # force the far end's port (an E2O gateway off the well-known 12340)


SCENARIOS = [
    Scenario("PC-to-PC call (Teams/Skype, full ICE)", "modern-p2p", PEER, "pass", start_s=0.0),
    Scenario("PC-to-PC call (legacy Skype E2E)", "legacy-e2e", LEGACY_PEER, "pass", start_s=0.3),
    Scenario("PC-to-phone call to the policy's PSTN gateway", "legacy-e2o", PSTN_GW, "block", start_s=0.6),
    Scenario("PC-to-phone call to an unknown gateway (SkypeOut)", "legacy-e2o", UNKNOWN_GW, "block", start_s=0.9,
             far_port=40400),
    Scenario("PC-to-phone call via Direct Routing SBC (media bypass)", "dns-pstn", SBC, "block", start_s=1.2,
             extra_far={0: DNS_SERVER}),
    Scenario("Call through a Microsoft relay", "modern-relay", RELAY, "pass", start_s=1.5),
    Scenario("background: SIP + RTP (G.711)", "sip-rtp", "192.0.2.30", "pass", client=CLIENT2, start_s=0.1),
    Scenario("background: WireGuard tunnel", "wireguard", "192.0.2.31", "pass", client=CLIENT2, start_s=0.4),
    Scenario("background: HTTPS", "tls-other", "192.0.2.32", "pass", client=CLIENT2, start_s=0.7),
    Scenario("background: Skype sign-in (TLS)", "tls-skype", "192.0.2.33", "pass", client=CLIENT2, start_s=1.0),
]


@dataclass
class CallResult:
    name: str
    kind: str
    expect: str
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    cls: str = "unknown"
    reason: str = ""
    action: str = ""
    delivered_before_block: int | None = None  # packets that crossed the router before the first dropped one
    verdict: str = ""  # "passed" | "blocked"

    @property
    def ok(self) -> bool:
        return (self.verdict == "blocked") == (self.expect == "block")


def _is_client(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return ip.is_private and not ip.is_global and (ip.version == 4 and (ip in ipaddress.ip_network("10.0.0.0/8")
                                                                        or ip in ipaddress.ip_network("192.168.0.0/16")
                                                                        or ip in ipaddress.ip_network("172.16.0.0/12")))


def _rewrite(frame: bytes, src: str, dst: str, smac: bytes, dmac: bytes, replace: tuple[bytes, bytes] | None,
             sport: int | None = None, dport: int | None = None) -> bytes:
    """Re-address an untagged IPv4 UDP/TCP frame for the lab (addresses, optionally ports) and fix every checksum."""
    eth = dmac + smac + frame[12:14]
    ip = bytearray(frame[14:])
    ihl = (ip[0] & 0x0F) * 4
    ip[12:16] = ipaddress.IPv4Address(src).packed
    ip[16:20] = ipaddress.IPv4Address(dst).packed
    proto = ip[9]
    l4 = bytearray(ip[ihl:])
    if replace:
        l4 = bytearray(bytes(l4).replace(*replace))
    if sport is not None:
        l4[0:2] = struct.pack("!H", sport)
    if dport is not None:
        l4[2:4] = struct.pack("!H", dport)
    ip[10:12] = b"\0\0"
    ip[10:12] = struct.pack("!H", pk.checksum(bytes(ip[:ihl])))
    pseudo = ip[12:20] + struct.pack("!BBH", 0, proto, len(l4))
    off = 6 if proto == 17 else 16
    l4[off:off + 2] = b"\0\0"
    c = pk.checksum(bytes(pseudo) + bytes(l4))
    if proto == 17 and c == 0:
        c = 0xFFFF
    l4[off:off + 2] = struct.pack("!H", c)
    return eth + bytes(ip[:ihl]) + bytes(l4)


def build_schedule(topo: Topology, seed: int, scenarios: list[Scenario], macs: dict[str, bytes]):
    """[(t_offset_s, side, frame, scenario index, flow tuple)] for every frame of every scenario."""
    sched = []
    rng = random.Random(seed)
    for si, sc in enumerate(scenarios):
        flows = gen.kind_flows(sc.kind, random.Random(rng.getrandbits(64)))
        t0 = min(ts for f in flows for ts, _ in f.pkts)
        replace = None
        if sc.kind == "dns-pstn":  # the DNS answer must teach the lab SBC's address
            call = pk.parse(flows[1].pkts[0][1])
            orig = call.dst if not _is_client(call.dst) else call.src
            replace = (ipaddress.IPv4Address(orig).packed, ipaddress.IPv4Address(SBC).packed)
        for fi, f in enumerate(flows):
            far = sc.extra_far.get(fi, sc.far)
            for ts, frame in f.pkts:
                p = pk.parse(frame)
                if p is None or p.vlan or ":" in p.src:
                    continue
                from_client = _is_client(p.src)
                src, dst = (sc.client, far) if from_client else (far, sc.client)
                side = "lan" if from_client else "inet"
                smac, dmac = (macs["client"], macs["router_lan"]) if from_client else (macs["inet"],
                                                                                        macs["router_wan"])
                sport, dport = p.sport, p.dport
                if sc.far_port is not None:
                    sport, dport = (sport, sc.far_port) if from_client else (sc.far_port, dport)
                out = _rewrite(frame, src, dst, smac, dmac, replace if fi == 0 else None, sport, dport)
                key = _tuple(src, sport, dst, dport, p.proto)
                sched.append(((ts - t0) / 1e9 + sc.start_s, side, out, si, key))
    sched.sort(key=lambda x: x[0])
    return sched


def _l4(frame: bytes) -> bytes:
    """The transport segment of an untagged IPv4 frame: what the router forwards unchanged."""
    return frame[14 + (frame[14] & 0x0F) * 4 :]


def _tuple(a: str, ap: int, b: str, bp: int, proto: int) -> tuple:
    return (proto, *sorted([(a, ap), (b, bp)]))


class Lab:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.topo = Topology()
        self.tmp = Path(tempfile.mkdtemp(prefix="skyguard-lab-"))
        self.daemon: subprocess.Popen | None = None
        self.sock_path = str(self.tmp / "skyguard.sock")
        self.pin_path = f"/sys/fs/bpf/skyguard-lab-{self.topo.tag}"
        self.log_path = self.tmp / "skyguardd.log"
        self.out = sys.stdout
        self.interactive = sys.stdout.isatty() and not args.json
        self._log_pos = 0

    def say(self, msg: str) -> None:
        if not self.args.json:
            print(msg, file=self.out, flush=True)

    # ---- set-up -----------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.topo.up()
        self.say(f"lab: namespaces {self.topo.lan_ns} (client LAN), {self.topo.router_ns} (router: skyguardd), "
                 f"{self.topo.inet_ns} (internet)")
        policy = self.tmp / "lab-policy.toml"
        policy.write_text(LAB_POLICY)
        cfg = write_config(self.tmp / "skyguard.toml", self.topo, policy=policy, socket=self.sock_path,
                           pin_path=self.pin_path, xdp_mode=self.args.xdp_mode)
        self.daemon = spawn_daemon(self.topo, cfg, self.log_path)
        st = wait_ready(self.daemon, self.sock_path, self.log_path)
        ifs = ", ".join(f"{i['name']} ({i['mode']})" for i in st["interfaces"])
        self.say(f"lab: skyguardd ready: XDP program {st['prog_id']} on {ifs}, policy {st['policy']['name']}")

    def stop(self) -> None:
        if self.daemon:
            stop_daemon(self.daemon)
        self.topo.down()
        shutil.rmtree(self.pin_path, ignore_errors=True)
        if not self.args.keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- traffic ----------------------------------------------------------------------------------------------------

    def play(self, scenarios: list[Scenario]) -> list[CallResult]:
        sched = build_schedule(self.topo, self.args.seed, scenarios, lab_macs(self.topo))
        results = [CallResult(sc.name, sc.kind, sc.expect) for sc in scenarios]
        main_flow = main_flows(sched, scenarios)
        next_view = [time.monotonic() + 1.0]
        t0 = time.monotonic()

        def tick() -> None:
            if time.monotonic() >= next_view[0]:
                next_view[0] = time.monotonic() + 1.5
                self.view(time.monotonic() - t0)

        with Wire(self.topo, [k for *_x, k in sched]) as w:
            w.play(sched, self.args.speed, tick=tick)
        time.sleep(0.3)
        by_key = rows_by_tuple(self.flows())
        for si, res in enumerate(results):
            key = main_flow.get(si)
            res.sent = w.sent[key]
            res.delivered = w.recv[key]
            row = by_key.get(key, {})
            res.cls, res.reason, res.action = row.get("class", "?"), row.get("reason", ""), row.get("action", "?")
            res.dropped = row.get("dropped", 0)
            blocked = res.dropped > 0 and res.delivered < res.sent
            res.verdict = "blocked" if blocked else "passed"
            if blocked:
                res.delivered_before_block = w.first_drop_recv.get(key, res.delivered)
        return results

    def flows(self) -> list[dict]:
        with Client(self.sock_path, timeout=5) as c:
            return c.call("flows", sort="first", limit=0)["flows"]

    def view(self, elapsed: float) -> None:
        if self.args.json:
            return
        from skyguard.cli.fmt import table

        rows = sorted(self.flows(), key=lambda r: r["first_ns"])
        cols = ["proto", "a", "b", "class", "reason", "action", "packets", "dropped"]
        lines = [f"--- operator view at t={elapsed:4.1f}s: skyguard flows ---",
                 table([r for r in rows if r["class"] != "unknown"], [(c, c) for c in cols])]
        logs = self._new_log_lines()
        if logs:
            lines.append("--- skyguardd log (classifications and enforcement) ---")
            lines += logs[-8:]
        if self.interactive:
            self.out.write("\x1b[2J\x1b[H")
        print("\n".join(lines), file=self.out, flush=True)

    def _new_log_lines(self) -> list[str]:
        try:
            with open(self.log_path) as f:
                f.seek(self._log_pos)
                data = f.read()
                self._log_pos = f.tell()
        except OSError:
            return []
        out = []
        for line in data.splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "flow classified":
                detail = " ".join(f"{k}={ev[k]}" for k in ("class", "reason", "a", "b", "action", "detail") if k in ev)
                out.append(f"{ev.get('timestamp', '')[11:23]} {ev['event']}: {detail or ev.get('flow', '')}")
        return out


# ---- reusable pieces (the lab and tests/e2e drive the real daemon with them) ---------------------------------------


def lab_macs(topo: Topology) -> dict[str, bytes]:
    """The MAC addresses build_schedule() writes into frames."""
    t = topo
    return {"client": t.mac(t.lan_ns, t.client_if), "router_lan": t.mac(t.router_ns, t.router_lan_if),
            "router_wan": t.mac(t.router_ns, t.router_wan_if), "inet": t.mac(t.inet_ns, t.inet_if)}


def main_flows(sched: list, scenarios: list[Scenario]) -> dict[int, tuple]:
    """Scenario index -> the flow tuple that counts (its first flow; for dns-pstn the call, not the DNS lookup)."""
    main_flow: dict[int, tuple] = {}
    for *_x, si, key in sched:
        main_flow.setdefault(si, key)
    for si, sc in enumerate(scenarios):
        if sc.kind == "dns-pstn":
            main_flow[si] = next(k for *_x, s2, k in sched if s2 == si and SBC in (k[1][0], k[2][0]))
    return main_flow


def rows_by_tuple(rows: list[dict]) -> dict[tuple, dict]:
    """The daemon's `flows` rows keyed like build_schedule()'s flow tuples."""
    out = {}
    for row in rows:
        a, b = parse_endpoint(row["a"]), parse_endpoint(row["b"])
        out[_tuple(a[0], a[1], b[0], b[1], 17 if row["proto"] == "udp" else 6)] = row
    return out


def write_config(path: Path, topo: Topology, *, policy: Path | str, socket: str, pin_path: str,
                 xdp_mode: str = "auto", interfaces: list[str] | None = None, extra: str = "") -> Path:
    """A skyguardd config for the router namespace of `topo`."""
    ifs = interfaces if interfaces is not None else [topo.router_lan_if, topo.router_wan_if]
    path.write_text(
        f"interfaces = {json.dumps(ifs)}\n"
        f'xdp_mode = "{xdp_mode}"\npolicy = "{policy}"\nsocket = "{socket}"\n'
        f'pin_path = "{pin_path}"\nlog_format = "json"\non_stop = "detach"\nflows_max = 65536\n{extra}')
    return path


def spawn_daemon(topo: Topology, cfg: Path | str, log_path: Path | str, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> subprocess.Popen:
    """skyguardd in the router namespace (nsenter --net keeps /sys and so bpffs visible; `ip netns exec` would not).
    nsenter execs the daemon, so the Popen's pid is the daemon's."""
    e = dict(os.environ, PYTHONUNBUFFERED="1")
    e.pop("NOTIFY_SOCKET", None)
    e.pop("WATCHDOG_USEC", None)
    e.update(env or {})
    with open(log_path, "a") as log:
        return subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{topo.router_ns}", sys.executable, "-m", "skyguard.daemon",
             "--config", str(cfg), *(extra_args or [])],
            stdout=log, stderr=subprocess.STDOUT, env=e)


def wait_ready(proc: subprocess.Popen, sock_path: str, log_path: Path | str, timeout: float = 60.0) -> dict:
    """Wait until the daemon answers `status` on its socket; returns that status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("skyguardd exited during start-up:\n" + Path(log_path).read_text()[-3000:])
        with contextlib.suppress(ClientError, OSError), Client(sock_path, timeout=2) as c:
            return c.call("status")
        time.sleep(0.2)
    raise RuntimeError(f"skyguardd did not come up within {timeout:g} s:\n" + Path(log_path).read_text()[-3000:])


def stop_daemon(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Wire:
    """Raw frames into the router from both ends (AF_PACKET sockets in the lan and inet namespaces), and a count per
    flow of the frames that came out at the far end. Only frames whose transport segment was sent count (not the
    stack's own RSTs or ICMP)."""

    def __init__(self, topo: Topology, keys: list[tuple] | set[tuple]) -> None:
        self.keys = set(keys)
        self.lan = topo.packet_socket(topo.lan_ns, topo.client_if)
        try:
            self.inet = topo.packet_socket(topo.inet_ns, topo.inet_if)
        except BaseException:
            self.lan.close()
            raise
        self.socks = {"lan": self.lan, "inet": self.inet}
        self.sent: Counter = Counter()
        self.recv: Counter = Counter()
        self.sent_l4: set[int] = set()
        self.first_drop_recv: dict[tuple, int] = {}  # recv count when a flow first lagged by more than 2 frames

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.lan.close()
        self.inet.close()

    def send(self, side: str, frame: bytes, key: tuple) -> None:
        self.keys.add(key)
        self.socks[side].send(frame)
        self.sent[key] += 1
        self.sent_l4.add(hash(_l4(frame)))

    def receive(self, wait: float) -> None:
        r, _, _ = select.select([self.lan, self.inet], [], [], wait)
        for s in r:
            while True:
                try:
                    data, addr = s.recvfrom(65535, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                p = pk.parse(data)
                if p is None:
                    continue
                key = _tuple(p.src, p.sport, p.dst, p.dport, p.proto)
                if key in self.keys and hash(_l4(data)) in self.sent_l4:
                    self.recv[key] += 1
                    if self.sent[key] - self.recv[key] > 2 and key not in self.first_drop_recv:
                        self.first_drop_recv[key] = self.recv[key]

    def play(self, sched: list, speed: float = 1.0, start_s: float = 0.0, stop_s: float = float("inf"),
             tail_s: float = 0.5, tick: Callable[[], None] | None = None) -> None:
        """Send the schedule's frames with start_s <= t < stop_s at `speed` times real time, receiving meanwhile;
        then keep receiving for tail_s seconds."""
        part = [x for x in sched if start_s <= x[0] < stop_s]
        t0 = time.monotonic()
        end = (part[-1][0] - start_s) / speed + tail_s if part else tail_s
        i = 0
        while i < len(part) or time.monotonic() - t0 < end:
            now = time.monotonic() - t0
            while i < len(part) and (part[i][0] - start_s) / speed <= now:
                _ts, side, frame, _si, key = part[i]
                self.send(side, frame, key)
                i += 1
            nxt = (part[i][0] - start_s) / speed - now if i < len(part) else 0.05
            self.receive(max(0.0, min(nxt, 0.05)))
            if tick:
                tick()


def format_summary(results: list[CallResult]) -> str:
    lines = ["", "=== summary ==="]
    w = max(len(r.name) for r in results)
    for r in results:
        extra = ""
        if r.verdict == "blocked":
            extra = f"after {r.delivered_before_block} packets crossed ({r.dropped} dropped)"
        else:
            extra = f"{r.delivered}/{r.sent} packets delivered"
        mark = "ok " if r.ok else "!! "
        lines.append(f"{mark}{r.name:{w}}  {r.verdict.upper():7}  class {r.cls:15} reason {r.reason:14} {extra}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from skyguard.cli.args import lab_parser  # the arguments are defined once, with `skyguard lab`'s

    return lab_parser().parse_args(argv)


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    if os.geteuid() != 0:
        print("skyguard lab: must run as root (it creates network namespaces and attaches XDP programs); "
              "try: sudo make demo", file=sys.stderr)
        return 1
    for tool in ("nsenter",):
        if not shutil.which(tool):
            print(f"skyguard lab: {tool} is missing (util-linux)", file=sys.stderr)
            return 1
    lab = Lab(args)

    me = os.getpid()

    def _term(_s, _f):
        if os.getpid() == me:  # never in a forked helper process
            raise KeyboardInterrupt
        os._exit(1)

    old = signal.signal(signal.SIGTERM, _term)
    try:
        lab.start()
        lab.say("lab: playing calls and background traffic through the router ...")
        results = lab.play(SCENARIOS)
    except KeyboardInterrupt:
        print("\nskyguard lab: interrupted; cleaning up", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"skyguard lab: {e}", file=sys.stderr)
        return 1
    finally:
        lab.stop()
        signal.signal(signal.SIGTERM, old)
    ok = all(r.ok for r in results)
    if args.json:
        t = lab.topo
        print(json.dumps({"ok": ok, "calls": [dict(asdict(r), ok=r.ok) for r in results],
                          "namespaces": [t.lan_ns, t.router_ns, t.inet_ns], "pin_path": lab.pin_path}))
    else:
        print(format_summary(results))
        print("\nlab: everything it made is removed." + ("" if ok else " Some calls did not get the expected verdict."))
    return 0 if ok else 1
