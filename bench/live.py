"""Live packets/s through a veth pair: skyguard's XDP program on the receiving side against nothing attached, against
a no-op XDP program in the same mode (which separates the cost of XDP on veth from skyguard's own cost) and against
the floor program (bench/floor.bpf.c: parsing plus one LRU lookup in a table of skyguard's default size, what any flow
classifier pays).

A sender namespace runs trafgen (netsniff-ng) on its end of the pair; the receiver namespace holds the other end.
Cases: 64- and 1400-byte UDP/IPv4 frames (sizes with FCS, as on a wire: trafgen writes 4 bytes less), one flow or
10k flows (trafgen's dinc on the source port). Arms alternate within every round, rotated each round. The rate is
the slope of the receiver's rx_packets (IFLA_STATS64, read inside its namespace) between the first and the last sample
of a fixed sending window, so trafgen's start-up and tear-down stay out of it. Flows are established (a warm-up run per
case lets skyguard finish inspecting them): this is the steady-state forwarding cost.

Two feeds of the receiver:
- `direct`: trafgen's AF_PACKET frames reach the receiving veth as skbs. With any XDP program attached (the no-op too),
  veth first copies each of them into a page-pool page with XDP headroom (drivers/net/veth.c,
  veth_convert_skb_to_xdp_buff: frags or headroom < XDP_PACKET_HEADROOM) and moves reception from netif_rx to NAPI,
  which a NIC does not: this feed prices veth's XDP emulation as much as the program.
- `redirect`: a middle namespace forwards trafgen's frames with an XDP redirect (bench/redirect.bpf.c) into a second
  pair, so the receiving veth gets xdp_frames with headroom, as a NIC driver hands them to XDP. GRO is on at the
  receiver in every arm (veth needs NAPI to accept redirected frames), so the arms differ only by the program run.

Usage: bench/live.py [--quick] [--seconds S] [--rounds N] [--feed direct|redirect|both] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import bcc  # noqa: E402
import common
from common import ROOT, load_baseline, ratio
from pyroute2 import netns

from skyguard.kernel import ifaces  # noqa: E402
from skyguard.kernel.bpfobj import prog_info  # noqa: E402
from skyguard.kernel.loader import Kernel  # noqa: E402
from skyguard.lab.topo import in_netns, make_veth, ns_iproute, ns_run, remove_namespaces  # noqa: E402

SIZES = (64, 1400)
FLOWS = (1, 10_000)
ARMS = ("nothing", "noop", "floor", "skyguard")
FLOOR_FLOWS_MAX = 262144  # the floor's flow table has the size of skyguard's default one
# skyguard / nothing wanted with one flow and with many (the floor / nothing column is what parsing plus one lookup
# in a table of skyguard's default size leaves, on the same feed: no flow classifier can be above it)
TARGET_X_NOTHING = {False: 0.95, True: 0.93}
TX_MAC, RX_MAC = "02:00:00:00:0b:01", "02:00:00:00:0b:02"


@dataclass
class VethPair:
    """Two namespaces joined by one veth pair (feed `direct`), or by two pairs through a middle namespace that
    forwards with an XDP redirect (feed `redirect`); removed on close, also after errors."""

    feed: str = "direct"
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    created: list[str] = field(default_factory=list)
    fwd: bcc.BPF | None = None

    @property
    def tx_ns(self) -> str:
        return f"sg-btx-{self.tag}"

    @property
    def rx_ns(self) -> str:
        return f"sg-brx-{self.tag}"

    @property
    def tx_if(self) -> str:
        return f"sgbt{self.tag}"

    @property
    def rx_if(self) -> str:
        return f"sgbr{self.tag}"

    @property
    def mid_ns(self) -> str:
        return f"sg-bmd-{self.tag}"

    def __enter__(self) -> VethPair:
        try:
            spaces = (self.tx_ns, self.rx_ns) + ((self.mid_ns,) if self.feed == "redirect" else ())
            for ns in spaces:
                netns.create(ns)
                self.created.append(ns)
            links = [(self.tx_ns, self.tx_if, TX_MAC), (self.rx_ns, self.rx_if, RX_MAC)]
            if self.feed == "direct":
                make_veth(self.tx_if, self.tx_ns, self.rx_if, self.rx_ns)
            else:
                mid_in, mid_out = f"sgbi{self.tag}", f"sgbo{self.tag}"
                make_veth(self.tx_if, self.tx_ns, mid_in, self.mid_ns)
                make_veth(mid_out, self.mid_ns, self.rx_if, self.rx_ns)
                links += [(self.mid_ns, mid_in, None), (self.mid_ns, mid_out, None)]
            for ns, ifname, mac in links:
                with ns_iproute(ns) as ip:
                    idx = ip.link_lookup(ifname=ifname)[0]
                    if mac:
                        ip.link("set", index=idx, address=mac)
                    ip.link("set", index=idx, state="up")
            if self.feed == "redirect":
                self._forward(mid_in, mid_out)
        except BaseException:
            self.close()
            raise
        return self

    def _forward(self, mid_in: str, mid_out: str) -> None:
        """XDP redirect mid_in -> mid_out (native), and NAPI (through GRO) on the receiver for every arm."""
        ns_run(self.rx_ns, "ethtool", "-K", self.rx_if, "gro", "on")
        with ns_iproute(self.mid_ns) as ip:
            out_idx = ip.link_lookup(ifname=mid_out)[0]
        self.fwd = bcc.BPF(src_file=str(ROOT / "bench/redirect.bpf.c").encode(),
                           cflags=[f"-DOUT_IFINDEX={out_idx}"])
        fd = self.fwd.load_func(b"xdp_fwd", bcc.BPF.XDP).fd
        with in_netns(self.mid_ns):
            ifaces.attach(fd, mid_in, "native")

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        remove_namespaces(self.created)
        if self.fwd is not None:
            self.fwd.cleanup()
            self.fwd = None


def trafgen_conf(size: int, flows: int) -> str:
    """One UDP/IPv4 frame of `size` bytes with FCS; with flows > 1 the source port cycles over `flows` values."""
    payload = size - 4 - 14 - 20 - 8
    sport = "40000" if flows == 1 else f"dinc(20000, {20000 + flows - 1})"
    return (f"{{ eth(da={RX_MAC}, sa={TX_MAC}), ipv4(saddr=198.18.0.2, daddr=198.19.0.2, ttl=64), "
            f"udp(sport={sport}, dport=5001), fill(0x55, {payload}) }}\n")


class RxCounter:
    """rx_packets / rx_dropped of the receiving interface, read over netlink inside its namespace."""

    def __init__(self, ns: str, ifname: str) -> None:
        self._cm = ns_iproute(ns)
        self.ip = self._cm.__enter__()
        self.idx = self.ip.link_lookup(ifname=ifname)[0]

    def read(self) -> tuple[int, int]:
        s = self.ip.get_links(self.idx)[0].get_attr("IFLA_STATS64")
        return s["rx_packets"], s["rx_dropped"]

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


class TrafgenFailed(RuntimeError):
    pass


def send_window(pair: VethPair, rx: RxCounter, conf: Path, seconds: float, attempts: int = 3) -> dict:
    """send_once, again when trafgen gives up on a full TX ring (EAGAIN from its flush when the receiver's queue is
    momentarily full: a property of the sender, not of the arm being measured)."""
    for attempt in range(attempts):
        try:
            return send_once(pair, rx, conf, seconds)
        except TrafgenFailed as e:
            if "temporarily unavailable" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def send_once(pair: VethPair, rx: RxCounter, conf: Path, seconds: float, sample_s: float = 0.02) -> dict:
    """Run trafgen for `seconds`; the receive rate from rx_packets samples taken while it sends."""
    proc = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{pair.tx_ns}", "trafgen", "--dev", pair.tx_if,
                             "--conf", str(conf), "--cpp", "-n", "0", "-P", "1", "-C"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: trafgen forks a sender per CPU
    samples: list[tuple[float, int]] = []
    try:
        r0, d0 = rx.read()
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            if proc.poll() is not None:
                raise TrafgenFailed(f"trafgen exited early ({proc.returncode}): {proc.stderr.read()[-500:]}")
            samples.append((time.perf_counter(), rx.read()[0]))
            time.sleep(sample_s)
    finally:
        stop_group(proc)
    time.sleep(0.05)
    r1, d1 = rx.read()
    live = [(t, n) for t, n in samples if n > r0]  # from the first sample that saw packets
    if len(live) < 3:
        raise RuntimeError(f"the receiver saw {r1 - r0} packets: nothing arrived")
    (t_a, n_a), (t_b, n_b) = live[0], live[-1]
    return {"pps": (n_b - n_a) / (t_b - t_a), "received": r1 - r0, "rx_dropped": d1 - d0}


def stop_group(proc: subprocess.Popen) -> None:
    """SIGINT to the process group this module started for trafgen (its forked senders too), SIGKILL if stuck."""
    for sig, wait in ((signal.SIGINT, 3.0), (signal.SIGKILL, 3.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Arms:
    """Attach / detach the programs of the three arms on the receiver's interface."""

    def __init__(self, pair: VethPair, mode: str) -> None:
        self.pair = pair
        self.kernel = Kernel()
        self.noop = load_baseline("noop")
        self.floor = load_baseline("floor", FLOOR_FLOWS_MAX)
        self.fds = {"noop": self.noop.fd, "floor": self.floor.fd, "skyguard": self.kernel.prog_fd}
        self.attached: int | None = None  # id of the program on the interface
        self.mode = self._pick_mode(mode)

    def _pick_mode(self, mode: str) -> str:
        """native where the veth takes it, else generic (reported)."""
        try:
            return self.attach("skyguard", mode)
        finally:
            self.detach()

    def attach(self, arm: str, mode: str | None = None) -> str:
        if arm == "nothing":
            return "none"
        with in_netns(self.pair.rx_ns):
            got = ifaces.attach(self.fds[arm], self.pair.rx_if, mode or self.mode).mode
        self.attached = prog_info(self.fds[arm]).id
        return got

    def detach(self) -> None:
        """The arm's program off the interface (ifaces.detach removes only the program it is told of)."""
        if self.attached is None:
            return
        with in_netns(self.pair.rx_ns):
            if not ifaces.detach(self.pair.rx_if, self.attached):
                raise RuntimeError(f"program {self.attached} could not be detached from {self.pair.rx_if}")
        self.attached = None

    def xdp_packets(self) -> int:
        return self.kernel.stats().get("packets", 0)

    def close(self) -> None:
        self.noop.close()
        self.floor.close()
        self.kernel.close()


def measure(seconds: float = 1.5, rounds: int = 3, mode: str = "auto", feed: str = "direct") -> dict:
    if not shutil.which("trafgen"):
        raise RuntimeError("trafgen (netsniff-ng) is missing")
    res: dict = {"seconds_per_run": seconds, "rounds": rounds, "feed": feed, "cases": {}}
    with VethPair(feed) as pair, tempfile.TemporaryDirectory(prefix="sg-live-") as td:
        arms = Arms(pair, mode)
        rx = RxCounter(pair.rx_ns, pair.rx_if)
        res["xdp_mode"] = arms.mode
        try:
            for size in SIZES:
                for flows in FLOWS:
                    conf = Path(td) / f"udp-{size}-{flows}.cfg"
                    conf.write_text(trafgen_conf(size, flows))
                    for arm in ("skyguard", "floor"):  # warm-up: the flows are created (and inspected) once
                        arms.attach(arm)
                        send_window(pair, rx, conf, min(seconds, 0.5))
                        arms.detach()
                    runs: dict[str, list[dict]] = {a: [] for a in ARMS}
                    xdp_seen = 0
                    for r in range(rounds):
                        for arm in ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]:
                            arms.attach(arm)
                            before = arms.xdp_packets()
                            try:
                                out = send_window(pair, rx, conf, seconds)
                            finally:
                                arms.detach()
                            if arm == "skyguard":
                                xdp_seen += arms.xdp_packets() - before
                                out["xdp_counted"] = arms.xdp_packets() - before
                            runs[arm].append(out)
                    med = {a: statistics.median(o["pps"] for o in runs[a]) for a in ARMS}
                    res["cases"][f"{size}B x {flows} flow{'s' if flows > 1 else ''}"] = {
                        "size": size, "flows": flows, "pps": med,
                        "pps_runs": {a: [round(o["pps"]) for o in runs[a]] for a in ARMS},
                        "rx_dropped": {a: sum(o["rx_dropped"] for o in runs[a]) for a in ARMS},
                        "skyguard_xdp_counted_vs_rx": ratio(xdp_seen, sum(o["received"] for o in runs["skyguard"])),
                        "x_nothing": ratio(med["skyguard"], med["nothing"]),
                        "x_noop": ratio(med["skyguard"], med["noop"]),
                        "x_floor": ratio(med["skyguard"], med["floor"]),
                        "floor_x_nothing": ratio(med["floor"], med["nothing"]),
                        "noop_x_nothing": ratio(med["noop"], med["nothing"]),
                        "target_x_nothing": TARGET_X_NOTHING[flows > 1]}
        finally:
            rx.close()
            with contextlib.suppress(Exception):
                arms.detach()
            arms.close()
    return res


def format_table(r: dict) -> str:
    lines = [f"veth, feed {r.get('feed', 'direct')}, receiver XDP mode {r['xdp_mode']}; median of {r['rounds']} "
             f"alternating runs of {r['seconds_per_run']:g} s; pps = received frames/s",
             f"{'case':20} {'nothing':>9} {'noop':>9} {'floor':>9} {'skyguard':>9} {'sg/nothing':>10} {'sg/noop':>7} "
             f"{'sg/floor':>8} {'noop/nothing':>12} {'floor/nothing':>13}  target sg/nothing"]
    for name, c in r["cases"].items():
        p = c["pps"]
        lines.append(f"{name:20} {p['nothing']:9.0f} {p['noop']:9.0f} {p['floor']:9.0f} {p['skyguard']:9.0f} "
                     f"{c['x_nothing']:10.3f} {c['x_noop']:7.3f} {c['x_floor']:8.3f} {c['noop_x_nothing']:12.3f} "
                     f"{c['floor_x_nothing']:13.3f}  >= {c['target_x_nothing']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one round of short runs")
    ap.add_argument("--seconds", type=float, default=None, help="sending window per run (default 1.5, quick 0.6)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5, quick 1)")
    ap.add_argument("--xdp-mode", default="auto", choices=["auto", "native", "generic"])
    ap.add_argument("--feed", default="both", choices=["direct", "redirect", "both"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sec = args.seconds or (0.6 if args.quick else 1.5)
    rounds = args.rounds or (1 if args.quick else 5)
    feeds = ("direct", "redirect") if args.feed == "both" else (args.feed,)
    res = {f: measure(sec, rounds, args.xdp_mode, f) for f in feeds}
    machine = common.machine()
    if args.json:
        print(json.dumps({"feeds": res, "machine": machine}))
    else:
        print("\n\n".join(format_table(r) for r in res.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
