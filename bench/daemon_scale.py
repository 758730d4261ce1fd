"""The real daemon at scale: skyguardd on a namespace's interface with a 1M-flow table and with 10k / 100k new
flows/s of events.

(a) 1M flows written into the daemon's pinned flow map (bpf_obj_get + bpf_map_update_batch from this process): the
    daemon's RSS (VmRSS) and its maps' memory (memlock in /proc/PID/fdinfo), then `flows --limit 100` over the real
    socket: the first request after the fill, then requests spread over time (p50 / p99 / max), `flows` with
    fresh=true (a blocking full refresh inside the daemon), and the snapshot refresh itself timed with the daemon's
    FlowTable code on the same pinned map in this process.
(b) The daemon's CPU time (/proc/PID/stat utime + stime) while trafgen pushes UDP frames of new flows with a legacy
    Skype Start-of-Message first payload (each new flow: a `classified` and a `sample` event) at 10k and 100k
    flows/s through the attached program, against the same daemon idle at 1M flows. Events handled come from the
    daemon's `stats` (daemon.events), losses from the kernel's events_lost.

Usage: bench/daemon_scale.py [--quick] [--flows N] [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes as ct
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import common
import numpy as np
from common import ratio

from skyguard import wire  # noqa: E402
from skyguard.cli.client import Client  # noqa: E402
from skyguard.kernel.bpfsys import RawMap  # noqa: E402
from skyguard.kernel.flowtable import FLOW_DTYPE, KEY_DTYPE, FlowTable  # noqa: E402
from skyguard.lab.demo import spawn_daemon, stop_daemon, wait_ready  # noqa: E402
from skyguard.lab.topo import Topology  # noqa: E402

_CLK_TCK = os.sysconf("SC_CLK_TCK")
BPF_MAP_TYPE_LRU_HASH = 9
SOM_PAYLOAD = bytes([0x4A, 0x7C, 0x02]) + bytes(range(0x21, 0x21 + 29))  # SoM func 0x02, 32 bytes: a candidate flow
OTHERHOST_MAC = "02:00:00:00:0c:99"  # frames are seen by XDP, then dropped by the stack cheaply (not for this host)


# ---- process and map facts -------------------------------------------------------------------------------------------

def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14 and 15 of stat(5))


def map_memlock(pid: int) -> dict:
    """memlock of every BPF map the process holds, and of the flow map (the LRU hash) alone."""
    total, flows, seen = 0, 0, set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        with contextlib.suppress(OSError):
            info = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                        if ":" in line)
            if "map_id" not in info or info["map_id"].strip() in seen:
                continue
            seen.add(info["map_id"].strip())
            mem = int(info.get("memlock", "0").split()[0])
            total += mem
            if int(info.get("map_type", "0")) == BPF_MAP_TYPE_LRU_HASH:
                flows = max(flows, mem)
    return {"all_maps": total, "flows": flows}


def bpf_obj_get(path: str) -> int:
    lib = ct.CDLL("libbpf.so.1", use_errno=True)
    lib.bpf_obj_get.restype, lib.bpf_obj_get.argtypes = ct.c_int, [ct.c_char_p]
    fd = lib.bpf_obj_get(path.encode())
    if fd < 0:
        err = ct.get_errno()
        raise OSError(err, f"bpf_obj_get({path}): {os.strerror(err)}")
    return fd


def packed_flows(n: int, now_ns: int) -> tuple[bytes, bytes]:
    """n established UDP flows 10.x.y.z:40000 <-> 198.51.100.1:443, class other, seen just now, 1..1000 packets."""
    keys = np.zeros(n, dtype=KEY_DTYPE)
    lo = np.zeros((n, 16), dtype=np.uint8)
    lo[:, 10:12] = 0xFF
    lo[:, 12:16] = (0x0A000000 + np.arange(n, dtype=np.uint32)).astype(">u4").view(np.uint8).reshape(n, 4)
    keys["lo_addr"] = lo.view("S16").ravel()
    keys["hi_addr"] = b"\0" * 10 + b"\xff\xff" + bytes([198, 51, 100, 1])
    keys["lo_port"], keys["hi_port"], keys["proto"] = 40000, 443, 17
    base = wire.Flow(cls=wire.C["SG_CLASS_OTHER"], flags=wire.C["SG_F_DONE"]).pack()
    vals = np.frombuffer(base * n, dtype=FLOW_DTYPE).copy()
    pk = 1 + np.arange(n, dtype=np.uint64) % 1000
    vals["pkts"][:, 0], vals["pkts"][:, 1] = pk, pk
    vals["bytes"][:, 0], vals["bytes"][:, 1] = pk * 100, pk * 100
    vals["first_ns"], vals["last_ns"] = now_ns - 10**9, now_ns
    return keys.tobytes(), vals.tobytes()


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def _summary_ms(xs: list[float]) -> dict:
    return {"n": len(xs), "p50": 1e3 * statistics.median(xs), "p99": 1e3 * _pct(xs, 0.99), "max": 1e3 * max(xs)}


# ---- the daemon under test -------------------------------------------------------------------------------------------

@dataclass
class DaemonUnderTest:
    flows_max: int
    topo: Topology = field(default_factory=Topology)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sg-dscale-")))
    proc: subprocess.Popen | None = None

    @property
    def pin_path(self) -> str:
        return f"/sys/fs/bpf/sg-bench-{self.topo.tag}"

    @property
    def sock(self) -> str:
        return str(self.tmp / "skyguard.sock")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> DaemonUnderTest:
        try:
            self.topo.up()
            pol = self.tmp / "policy.toml"
            pol.write_text('name = "bench-daemon-scale"\n')
            cfg = self.tmp / "skyguard.toml"
            # idle timeouts longer than the run: expiry of the filled flows is not what (a) and (b) measure
            cfg.write_text(f'interfaces = ["{self.topo.router_lan_if}"]\nxdp_mode = "auto"\npolicy = "{pol}"\n'
                           f'socket = "{self.sock}"\npin_path = "{self.pin_path}"\nlog_format = "json"\n'
                           f'on_stop = "detach"\nflows_max = {self.flows_max}\n'
                           "[idle_timeout]\nudp = 3600\ntcp = 3600\nother = 3600\n")
            self.proc = spawn_daemon(self.topo, cfg, self.tmp / "skyguardd.log")
            self.status = wait_ready(self.proc, self.sock, self.tmp / "skyguardd.log", timeout=90)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.exit_code = stop_daemon(self.proc)
        self.topo.down()
        shutil.rmtree(self.pin_path, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return (self.tmp / "skyguardd.log").read_text()[-n:]
        return ""


def _call(sock: str, cmd: str, timeout: float = 60.0, **args):
    with Client(sock, timeout=timeout) as c:
        return c.call(cmd, **args)


# ---- (a) 1M flows ----------------------------------------------------------------------------------------------------

class _PinnedFlows:
    """Just enough of Kernel for FlowTable: the pinned flow map read in batches."""

    def __init__(self, fd: int) -> None:
        self.map = RawMap(fd, wire.FlowKey.FMT.size, wire.Flow.FMT.size)

    def flows_raw(self):
        return self.map.iter_batches()


def measure_table(d: DaemonUnderTest, n: int, requests: int, spread_s: float) -> dict:
    pid = d.pid
    out: dict = {"flows_target": n, "rss_kib_empty": rss_kib(pid), "memlock_bytes": map_memlock(pid)}
    fd = bpf_obj_get(f"{d.pin_path}/flows")
    try:
        t = time.perf_counter()
        keys, vals = packed_flows(n, time.monotonic_ns())
        out["pack_s"] = time.perf_counter() - t
        m = RawMap(fd, wire.FlowKey.FMT.size, wire.Flow.FMT.size)
        t = time.perf_counter()
        out["written"] = m.update_batch(keys, vals)
        out["fill_s"] = time.perf_counter() - t
        del keys, vals
        # the snapshot refresh, timed with the daemon's own FlowTable code on the same map, in this process
        ft = FlowTable(_PinnedFlows(fd))
        refresh = []
        for _ in range(3):
            t = time.perf_counter()
            snap = ft.refresh()
            refresh.append(time.perf_counter() - t)
        out["snapshot_refresh_s"] = {"min": min(refresh), "median": statistics.median(refresh),
                                     "flows": len(snap), "chunks_of_8192": -(-len(snap) // 8192)}
        del ft, snap
    finally:
        os.close(fd)
    with Client(d.sock, timeout=60) as c:
        t = time.perf_counter()
        first = c.call("flows", limit=100)
        out["first_request_ms"] = 1e3 * (time.perf_counter() - t)
        out["first_request_total"] = first["total"]
        assert len(first["flows"]) == 100, "flows --limit 100 returned fewer rows"
        lat, ages, slow = [], [], []
        gap = spread_s / max(1, requests)
        t_start = time.perf_counter()
        for _ in range(requests):
            t = time.perf_counter()
            r = c.call("flows", limit=100)
            lat.append(time.perf_counter() - t)
            if lat[-1] > 0.05:  # when the slow ones happen: periodic stalls show up as a regular spacing
                slow.append((round(t - t_start, 2), round(1e3 * lat[-1])))
            ages.append(r["snapshot_age_ms"])
            time.sleep(max(0.0, gap - lat[-1]))
        out["flows_limit_100_ms"] = dict(_summary_ms(lat), target_p99=50)
        out["slow_requests_s_ms"] = slow
        out["snapshot_age_ms"] = {"median": statistics.median(ages), "max": max(ages)}
        fresh = []
        for _ in range(3):
            t = time.perf_counter()
            c.call("flows", limit=100, fresh=True)
            fresh.append(time.perf_counter() - t)
        out["flows_fresh_ms"] = _summary_ms(fresh)
        st = c.call("status")
    out["flow_count"] = st["flows"]["count"]
    out["rss_kib_full"] = rss_kib(pid)
    out["rss_target_kib"] = 300 * 1024
    out["memlock_bytes_full"] = map_memlock(pid)
    return out


# ---- (b) events ------------------------------------------------------------------------------------------------------

def trafgen_new_flows_conf(dst_mac: str) -> str:
    """A UDP frame with a SoM first payload and a random source address and ports: a new flow every frame."""
    payload = ", ".join(f"0x{b:02x}" for b in SOM_PAYLOAD)
    return (f"{{ eth(da={dst_mac}, sa=02:00:00:00:0c:01), ipv4(saddr=drnd(), daddr=203.0.113.20, ttl=64), "
            f"udp(sport=drnd(), dport=drnd()), {payload} }}\n")


def _events(st: dict) -> tuple[int, int, int]:
    ev = st["daemon"]["events"]
    return sum(ev.values()), st["kernel"].get("events_lost", 0), st["kernel"].get("packets", 0)


def measure_rate(d: DaemonUnderTest, conf: Path, rate: int, seconds: float) -> dict:
    """Push `rate` new flows/s for `seconds`; the daemon's CPU and events over that window, then how long it takes
    to drain what is left in the ring buffer."""
    pid = d.pid
    st0 = _call(d.sock, "stats")
    c0, w0 = cpu_s(pid), time.perf_counter()
    proc = None
    if rate:
        proc = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{d.topo.lan_ns}", "trafgen", "--dev",
                                 d.topo.client_if, "--conf", str(conf), "-n", str(int(rate * seconds)), "-P", "1",
                                 "-b", f"{rate}pps", "-C"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        if proc:
            try:
                proc.wait(seconds * 3 + 10)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(seconds)
    finally:
        if proc and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    w1, c1 = time.perf_counter(), cpu_s(pid)
    st1 = _call(d.sock, "stats")
    rss1 = rss_kib(pid)
    # drain: until the handled-events counter stops moving (or 60 s)
    t_drain, last = time.perf_counter(), _events(st1)[0]
    while time.perf_counter() - t_drain < 60:
        time.sleep(0.5)
        now = _events(_call(d.sock, "stats"))[0]
        if now == last:
            break
        last = now
    drain_s = time.perf_counter() - t_drain
    st2 = _call(d.sock, "stats")
    c2 = cpu_s(pid)
    (h0, l0, p0), (h1, l1, p1), (h2, l2, _p2) = _events(st0), _events(st1), _events(st2)
    wall = w1 - w0
    return {"rate_target": rate, "seconds": wall, "packets_seen_by_xdp": p1 - p0, "pps_seen": (p1 - p0) / wall,
            "events_handled": h1 - h0, "events_handled_per_s": (h1 - h0) / wall,
            "events_lost": l1 - l0, "events_lost_after": l2 - l1, "events_handled_in_drain": h2 - h1,
            "drain_s": drain_s, "cpu_s": c1 - c0, "cpu_pct": 100 * (c1 - c0) / wall, "cpu_s_drain": c2 - c1,
            "rss_kib_after": rss1, "by_type": {k: v - st0["daemon"]["events"].get(k, 0)
                                                for k, v in st1["daemon"]["events"].items()},
            "trafgen_rc": proc.returncode if proc else None}


def measure_events(d: DaemonUnderTest, rates: list[int], seconds: float) -> dict:
    if not shutil.which("trafgen"):
        raise RuntimeError("trafgen (netsniff-ng) is missing")
    conf = d.tmp / "new-flows.cfg"
    conf.write_text(trafgen_new_flows_conf(OTHERHOST_MAC))
    out = {"idle": measure_rate(d, conf, 0, seconds)}
    for r in rates:
        out[str(r)] = measure_rate(d, conf, r, seconds)
        if not d.alive():
            out["daemon_died"] = d.log_tail()
            break
    return out


# ---- all -------------------------------------------------------------------------------------------------------------

def measure(n: int = 1_000_000, requests: int = 200, spread_s: float = 20.0, rates: list[int] | None = None,
            seconds: float = 10.0) -> dict:
    rates = rates or [10_000, 100_000]
    flows_max = max(1 << 20, n + n // 8)
    with DaemonUnderTest(flows_max) as d:
        res: dict = {"flows_max": flows_max, "xdp_mode": d.status["interfaces"][0]["mode"], "pid": d.pid}
        t = time.perf_counter()
        try:
            res["table"] = measure_table(d, n, requests, spread_s)
        except Exception as e:  # report how the daemon was doing, then go on with (b)
            res["table"] = {"error": f"{type(e).__name__}: {e}", "alive": d.alive(), "log": d.log_tail()}
        res["table_s"] = time.perf_counter() - t
        if d.alive():
            res["events"] = measure_events(d, rates, seconds)
            res["rss_kib_end"] = rss_kib(d.pid)
            st = _call(d.sock, "status")
            res["flow_count_end"], res["slowpath_end"] = st["flows"]["count"], st["slowpath"]
        res["alive_at_end"] = d.alive()
    res["exit_code"] = getattr(d, "exit_code", None)
    return res


def format_table(r: dict) -> str:
    lines = [f"skyguardd, flows_max {r['flows_max']}, XDP {r['xdp_mode']}"]
    t = r.get("table", {})
    if "error" in t:
        lines.append(f"(a) FAILED: {t['error']} (daemon alive: {t['alive']})")
    elif t:
        fl = t["flows_limit_100_ms"]
        lines += [
            f"(a) {t['flow_count']} flows in the map (wrote {t['written']} in {t['fill_s']:.2f} s)",
            f"    daemon RSS {t['rss_kib_empty'] / 1024:.0f} MiB empty -> {t['rss_kib_full'] / 1024:.0f} MiB "
            f"at {t['flow_count']} flows "
            f"(target <= 300 MiB, x{ratio(t['rss_kib_full'], t['rss_target_kib']):.2f} of target)",
            f"    map memlock: flows {t['memlock_bytes_full']['flows'] / 2**20:.0f} MiB, all maps "
            f"{t['memlock_bytes_full']['all_maps'] / 2**20:.0f} MiB",
            f"    first flows --limit 100 after the fill: {t['first_request_ms']:.0f} ms",
            f"    flows --limit 100 x{fl['n']}: p50 {fl['p50']:.1f} ms, p99 {fl['p99']:.1f} ms, max {fl['max']:.1f} ms "
            f"(target p99 <= 50 ms, x{ratio(fl['p99'], 50):.2f} of target); snapshot age median "
            f"{t['snapshot_age_ms']['median']:.0f} ms, max {t['snapshot_age_ms']['max']:.0f} ms",
            f"    flows fresh=true (blocking refresh in the daemon): p50 {t['flows_fresh_ms']['p50']:.0f} ms",
            f"    snapshot refresh (FlowTable, same map, bench process): {t['snapshot_refresh_s']['median']:.2f} s "
            f"for {t['snapshot_refresh_s']['flows']} flows in {t['snapshot_refresh_s']['chunks_of_8192']} chunks"]
    ev = r.get("events", {})
    if ev:
        lines.append(f"(b) {'new flows/s':>12} {'pkts/s seen':>11} {'events/s':>9} {'lost':>8} {'cpu %':>6} "
                     f"{'x idle':>7} {'drain s':>7} {'RSS MiB':>7}")
        idle = ev["idle"]["cpu_pct"]
        for k, e in ev.items():
            if not isinstance(e, dict):
                continue
            lines.append(f"    {k:>12} {e['pps_seen']:11.0f} {e['events_handled_per_s']:9.0f} "
                         f"{e['events_lost'] + e['events_lost_after']:8d} {e['cpu_pct']:6.1f} "
                         f"{(e['cpu_pct'] / idle) if idle else float('nan'):7.1f} {e['drain_s']:7.1f} "
                         f"{e['rss_kib_after'] / 1024:7.0f}")
        if "daemon_died" in ev:
            lines.append("    DAEMON DIED: " + ev["daemon_died"][-500:])
    lines.append(f"daemon alive at the end: {r.get('alive_at_end')}, exit code {r.get('exit_code')}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k flows, 50 requests, 3 s per rate")
    ap.add_argument("--flows", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="sending window per rate")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    q = args.quick
    n = args.flows or (100_000 if q else 1_000_000)
    reqs = args.requests or (50 if q else 200)
    res = measure(n, reqs, 5.0 if q else 20.0, None, args.seconds or (3.0 if q else 10.0))
    res["machine"] = common.machine()
    print(json.dumps(res, default=str) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
