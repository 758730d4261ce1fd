"""IPFIX export under load: the real daemon on a namespace's interface while trafgen pushes 10k new UDP flows/s, with a
2 s idle timeout so flows also end at ~10k/s and each ending flow is one IPFIX record. Two daemons in the same run,
export off and export on (to a UDP receiver in the router namespace that checks the sequence numbers): the daemon's
CPU (utime + stime) over the same steady-state window, and the records lost (sequence gaps seen by the receiver).

Usage: bench/ipfix_export.py [--rate N] [--seconds S] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401 - puts daemon/ on the path
from daemon_scale import OTHERHOST_MAC, cpu_s, trafgen_new_flows_conf

from skyguard.lab.demo import spawn_daemon, stop_daemon, wait_ready  # noqa: E402
from skyguard.lab.topo import Topology, in_netns  # noqa: E402

if str(common.ROOT) not in sys.path:
    sys.path.insert(0, str(common.ROOT))
from tests.ipfix_tools import Receiver  # noqa: E402

IDLE_S = 2
WARMUP_S = IDLE_S + 3  # until flows end as fast as they start


def run_arm(export: bool, rate: int, seconds: float) -> dict:
    topo = Topology()
    tmp = Path(tempfile.mkdtemp(prefix="sg-ipfix-bench-"))
    pin = f"/sys/fs/bpf/sg-bench-{topo.tag}"
    proc = rx = None
    try:
        topo.up()
        pol = tmp / "policy.toml"
        pol.write_text('name = "bench-ipfix"\n')
        extra = ""
        if export:
            with in_netns(topo.router_ns):
                rx = Receiver("127.0.0.1", keep=False)
            extra = f'ipfix_collector = "127.0.0.1:{rx.port}"\n'
        cfg = tmp / "skyguard.toml"
        cfg.write_text(f'interfaces = ["{topo.router_lan_if}"]\npolicy = "{pol}"\nsocket = "{tmp}/s.sock"\n'
                       f'pin_path = "{pin}"\nlog_format = "json"\non_stop = "detach"\nflows_max = 262144\n{extra}'
                       f"[idle_timeout]\nudp = {IDLE_S}\ntcp = {IDLE_S}\nother = {IDLE_S}\n")
        proc = spawn_daemon(topo, cfg, tmp / "skyguardd.log")
        wait_ready(proc, f"{tmp}/s.sock", tmp / "skyguardd.log", timeout=90)
        conf = tmp / "new-flows.cfg"
        conf.write_text(trafgen_new_flows_conf(OTHERHOST_MAC))
        total = WARMUP_S + seconds + 1
        tg = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{topo.lan_ns}", "trafgen", "--dev", topo.client_if,
                               "--conf", str(conf), "-n", str(int(rate * total)), "-P", "1", "-b", f"{rate}pps", "-C"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(WARMUP_S)
            c0, w0, r0 = cpu_s(proc.pid), time.perf_counter(), rx.got.records if rx else 0
            time.sleep(seconds)
            c1, w1, r1 = cpu_s(proc.pid), time.perf_counter(), rx.got.records if rx else 0
            tg.wait(total * 3 + 10)
        finally:
            if tg.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(tg.pid, signal.SIGKILL)
                tg.wait()
        time.sleep(IDLE_S + 3)  # the rest ends by idle expiry
        out = {"export": export, "rate": rate, "seconds": w1 - w0, "cpu_pct": 100 * (c1 - c0) / (w1 - w0)}
        stop_daemon(proc, 60)
        proc = None
        if rx is not None:
            rx.wait_quiet(0.5, 20)
            got = rx.close()
            rx = None
            out.update(records=got.records, records_per_s=(r1 - r0) / (w1 - w0), sequence_gaps=got.gaps)
        return out
    finally:
        if proc is not None:
            stop_daemon(proc)
        if rx is not None:
            rx.close()
        topo.down()
        shutil.rmtree(pin, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def measure(rate: int = 10_000, seconds: float = 10.0) -> dict:
    if not shutil.which("trafgen"):
        raise RuntimeError("trafgen (netsniff-ng) is missing")
    off = run_arm(False, rate, seconds)
    on = run_arm(True, rate, seconds)
    return {"off": off, "on": on, "cpu_ratio_on_off": common.ratio(on["cpu_pct"], off["cpu_pct"])}


def format_table(r: dict) -> str:
    off, on = r["off"], r["on"]
    return "\n".join([
        f"IPFIX export at {on['rate']} new flows/s (idle timeout {IDLE_S} s: flows end as fast as they start)",
        f"  daemon CPU, export off: {off['cpu_pct']:6.1f} %",
        f"  daemon CPU, export on : {on['cpu_pct']:6.1f} %   (x{r['cpu_ratio_on_off']:.2f}; "
        f"{on['records_per_s']:.0f} records/s in the window)",
        f"  records received: {on['records']}, sequence gaps (records lost): {on['sequence_gaps']}",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = measure(args.rate, args.seconds)
    print(json.dumps(r, indent=2) if args.json else format_table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
