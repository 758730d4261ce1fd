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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import gen
from . import packet as pk
from .client import Client, ClientError
from .topo import CLIENT, CLIENT2, PEER, PSTN_GW, RELAY, SBC, Topology

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


SCENARIOS = [
    Scenario("PC-to-PC call (Teams/Skype, full ICE)", "modern-p2p", PEER, "pass", start_s=0.0),
    Scenario("PC-to-PC call (legacy Skype E2E)", "legacy-e2e", LEGACY_PEER, "pass", start_s=0.3),
    Scenario("PC-to-phone call to the policy's PSTN gateway", "legacy-e2o", PSTN_GW, "block", start_s=0.6),
    Scenario("PC-to-phone call to an unknown gateway (SkypeOut)", "legacy-e2o", UNKNOWN_GW, "block", start_s=0.9),
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


def _rewrite(frame: bytes, src: str, dst: str, smac: bytes, dmac: bytes, replace: tuple[bytes, bytes] | None) -> bytes:
    """Re-address an untagged IPv4 UDP/TCP frame for the lab and fix every checksum."""
    eth = dmac + smac + frame[12:14]
    ip = bytearray(frame[14:])
    ihl = (ip[0] & 0x0F) * 4
    ip[12:16] = ipaddress.IPv4Address(src).packed
    ip[16:20] = ipaddress.IPv4Address(dst).packed
    proto = ip[9]
    l4 = bytearray(ip[ihl:])
    if replace:
        l4 = bytearray(bytes(l4).replace(*replace))
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
                out = _rewrite(frame, src, dst, smac, dmac, replace if fi == 0 else None)
                key = _tuple(src, p.sport, dst, p.dport, p.proto)
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
        cfg = self.tmp / "skyguard.toml"
        cfg.write_text(
            f'interfaces = ["{self.topo.router_lan_if}", "{self.topo.router_wan_if}"]\n'
            f'xdp_mode = "{self.args.xdp_mode}"\npolicy = "{policy}"\nsocket = "{self.sock_path}"\n'
            f'pin_path = "{self.pin_path}"\nlog_format = "json"\non_stop = "detach"\nflows_max = 65536\n')
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        self.daemon = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{self.topo.router_ns}", sys.executable, "-m", "skyguard.daemon",
             "--config", str(cfg)],
            stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError("skyguardd exited during start-up:\n" + self.log_path.read_text()[-3000:])
            with contextlib.suppress(ClientError, OSError), Client(self.sock_path, timeout=2) as c:
                st = c.call("status")
                ifs = ", ".join(f"{i['name']} ({i['mode']})" for i in st["interfaces"])
                self.say(f"lab: skyguardd ready: XDP program {st['prog_id']} on {ifs}, policy {st['policy']['name']}")
                return
            time.sleep(0.2)
        raise RuntimeError("skyguardd did not come up within 60 s:\n" + self.log_path.read_text()[-3000:])

    def stop(self) -> None:
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.topo.down()
        shutil.rmtree(self.pin_path, ignore_errors=True)
        if not self.args.keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- traffic ----------------------------------------------------------------------------------------------------

    def play(self, scenarios: list[Scenario]) -> list[CallResult]:
        t = self.topo
        macs = {"client": t.mac(t.lan_ns, t.client_if), "router_lan": t.mac(t.router_ns, t.router_lan_if),
                "router_wan": t.mac(t.router_ns, t.router_wan_if), "inet": t.mac(t.inet_ns, t.inet_if)}
        sched = build_schedule(t, self.args.seed, scenarios, macs)
        lan = t.packet_socket(t.lan_ns, t.client_if)
        inet = t.packet_socket(t.inet_ns, t.inet_if)
        socks = {"lan": lan, "inet": inet}
        results = [CallResult(sc.name, sc.kind, sc.expect) for sc in scenarios]
        main_flow: dict[int, tuple] = {}
        flows_of: dict[tuple, int] = {}
        for _t, _side, _f, si, key in sched:
            flows_of.setdefault(key, si)
            main_flow.setdefault(si, key)
        if any(sc.kind == "dns-pstn" for sc in scenarios):  # the call, not the DNS lookup, is what counts
            for si, sc in enumerate(scenarios):
                if sc.kind == "dns-pstn":
                    main_flow[si] = next(k for *_x, s2, k in sched if s2 == si and SBC in (k[1][0], k[2][0]))
        sent: Counter = Counter()
        recv: Counter = Counter()
        sent_l4: set[int] = set()
        first_drop_recv: dict[tuple, int] = {}
        speed = self.args.speed
        t0 = time.monotonic()
        next_view = t0 + 1.0
        i = 0
        while i < len(sched) or time.monotonic() - t0 < sched[-1][0] / speed + 0.5:
            now = time.monotonic() - t0
            while i < len(sched) and sched[i][0] / speed <= now:
                _ts, side, frame, si, key = sched[i]
                socks[side].send(frame)
                sent[key] += 1
                sent_l4.add(hash(_l4(frame)))
                i += 1
            wait = max(0.0, min((sched[i][0] / speed - now) if i < len(sched) else 0.05, 0.05))
            r, _, _ = select.select([lan, inet], [], [], wait)
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
                    if key in flows_of and hash(_l4(data)) in sent_l4:  # not the stack's own RSTs or ICMP
                        recv[key] += 1
                        if sent[key] - recv[key] > 2 and key not in first_drop_recv:
                            first_drop_recv[key] = recv[key]
            if time.monotonic() >= next_view:
                next_view = time.monotonic() + 1.5
                self.view(time.monotonic() - t0)
        lan.close()
        inet.close()
        time.sleep(0.3)
        rows = self.flows()
        by_key = {}
        for row in rows:
            a, b = _ep(row["a"]), _ep(row["b"])
            by_key[_tuple(a[0], a[1], b[0], b[1], 17 if row["proto"] == "udp" else 6)] = row
        for si, res in enumerate(results):
            key = main_flow.get(si)
            res.sent = sent[key]
            res.delivered = recv[key]
            row = by_key.get(key, {})
            res.cls, res.reason, res.action = row.get("class", "?"), row.get("reason", ""), row.get("action", "?")
            res.dropped = row.get("dropped", 0)
            blocked = res.dropped > 0 and res.delivered < res.sent
            res.verdict = "blocked" if blocked else "passed"
            if blocked:
                res.delivered_before_block = first_drop_recv.get(key, res.delivered)
        return results

    def flows(self) -> list[dict]:
        with Client(self.sock_path, timeout=5) as c:
            return c.call("flows", sort="first", limit=0)["flows"]

    def view(self, elapsed: float) -> None:
        if self.args.json:
            return
        from .fmt import table

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
            if ev.get("event") in ("flow classified", "enforcement"):
                detail = " ".join(f"{k}={ev[k]}" for k in ("class", "reason", "a", "b", "action", "detail") if k in ev)
                out.append(f"{ev.get('timestamp', '')[11:23]} {ev['event']}: {detail or ev.get('flow', '')}")
        return out


def _ep(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    p.add_argument("--speed", type=float, default=1.0, help="playback speed factor (default 1: real time)")
    p.add_argument("--xdp-mode", default="auto", choices=["auto", "native", "generic"])
    p.add_argument("--keep-logs", action="store_true", help="keep the daemon's log and config in /tmp")
    p.add_argument("--json", action="store_true", help="print the summary as JSON only")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="skyguard lab", description=__doc__.strip().splitlines()[0])
    add_arguments(p)
    return p.parse_args(argv)


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
        print(json.dumps({"ok": ok, "calls": [dict(asdict(r), ok=r.ok) for r in results]}))
    else:
        print(format_summary(results))
        print("\nlab: everything it made is removed." + ("" if ok else " Some calls did not get the expected verdict."))
    return 0 if ok else 1
