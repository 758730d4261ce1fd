"""Prometheus scrapes of the real daemon at a million flows, beside the same daemon's scrapes with an empty table.

skyguardd runs on a namespace's interface with metrics_listen set; scrapes (GET /metrics from inside the router
namespace, one connection each, as Prometheus does) are timed first with the table empty (the baseline), then after
1M flows are written into the pinned flow map (as bench/daemon_scale.py fills it) and the daemon's snapshot has
counted them. A scrape formats the last tick's sample and never reads the table, so the ratio should stay near 1.
Also timed: the control socket's `status` round trip with and without a scraper hammering the endpoint, the
event loop's view of whether scrapes stall it.

Usage: bench/metrics_scrape.py [--flows N] [--scrapes N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import common  # noqa: F401 - puts daemon/ on sys.path
from common import ratio
from daemon_scale import _pct, bpf_obj_get, packed_flows

from skyguard import wire  # noqa: E402
from skyguard.cli.client import Client  # noqa: E402
from skyguard.kernel.bpfsys import RawMap  # noqa: E402
from skyguard.lab.demo import spawn_daemon, stop_daemon, wait_ready  # noqa: E402
from skyguard.lab.topo import Topology, in_netns  # noqa: E402

LISTEN = "127.0.0.1:9377"


def _scrape(ns: str) -> tuple[float, bytes]:
    with in_netns(ns):
        t = time.perf_counter()
        body = urllib.request.urlopen(f"http://{LISTEN}/metrics", timeout=30).read()
        return time.perf_counter() - t, body


def _ms(xs: list[float]) -> dict:
    return {"n": len(xs), "p50": 1e3 * statistics.median(xs), "p99": 1e3 * _pct(xs, 0.99), "max": 1e3 * max(xs)}


def _scrapes(ns: str, n: int) -> dict:
    return _ms([_scrape(ns)[0] for _ in range(n)])


def _status_rtt(sock: str, n: int, scraper_ns: str | None = None) -> dict:
    """`status` round trips; with scraper_ns, while another thread scrapes back to back."""
    stop = threading.Event()
    scraped = [0]

    def hammer() -> None:
        while not stop.is_set():
            _scrape(scraper_ns)
            scraped[0] += 1

    th = threading.Thread(target=hammer, daemon=True) if scraper_ns else None
    if th:
        th.start()
    lat = []
    try:
        with Client(sock, timeout=30) as c:
            for _ in range(n):
                t = time.perf_counter()
                c.call("status")
                lat.append(time.perf_counter() - t)
                time.sleep(0.01)
    finally:
        stop.set()
        if th:
            th.join(30)
    return dict(_ms(lat), concurrent_scrapes=scraped[0])


def _active(body: bytes) -> int:
    return sum(int(float(ln.rsplit(b" ", 1)[1])) for ln in body.splitlines()
               if ln.startswith(b"skyguard_flows_active{"))


def measure(n: int = 1_000_000, scrapes: int = 200) -> dict:
    topo = Topology()
    tmp = Path(tempfile.mkdtemp(prefix="sg-mscrape-"))
    pin = f"/sys/fs/bpf/sg-bench-{topo.tag}"
    proc = None
    res: dict = {"flows_target": n, "scrapes": scrapes}
    try:
        topo.up()
        ns = topo.router_ns
        pol = tmp / "policy.toml"
        pol.write_text('name = "bench-metrics"\n')
        cfg = tmp / "skyguard.toml"
        sock = str(tmp / "skyguard.sock")
        cfg.write_text(f'interfaces = ["{topo.router_lan_if}"]\npolicy = "{pol}"\nsocket = "{sock}"\n'
                       f'pin_path = "{pin}"\nlog_format = "json"\non_stop = "detach"\n'
                       f'flows_max = {max(1 << 20, n + n // 8)}\nmetrics_listen = "{LISTEN}"\n'
                       "[idle_timeout]\nudp = 3600\ntcp = 3600\nother = 3600\n")
        proc = spawn_daemon(topo, cfg, tmp / "skyguardd.log")
        wait_ready(proc, sock, tmp / "skyguardd.log", timeout=90)
        deadline = time.monotonic() + 30
        while True:  # the endpoint is up once the first scrape answers
            try:
                _scrape(ns)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        res["empty"] = {"scrape_ms": _scrapes(ns, scrapes), "status_ms": _status_rtt(sock, scrapes),
                        "status_while_scraping_ms": _status_rtt(sock, scrapes, ns),
                        "bytes": len(_scrape(ns)[1])}
        fd = bpf_obj_get(f"{pin}/flows")
        try:
            keys, vals = packed_flows(n, time.monotonic_ns())
            res["written"] = RawMap(fd, wire.FlowKey.FMT.size, wire.Flow.FMT.size).update_batch(keys, vals)
            del keys, vals
        finally:
            os.close(fd)
        t = time.monotonic()
        while _active(_scrape(ns)[1]) < res["written"]:  # the daemon's snapshot has counted them all
            if time.monotonic() - t > 120:
                raise RuntimeError("the daemon's snapshot did not reach the filled table in 120 s")
            time.sleep(0.2)
        res["seen_after_s"] = time.monotonic() - t
        res["full"] = {"scrape_ms": _scrapes(ns, scrapes), "status_ms": _status_rtt(sock, scrapes),
                       "status_while_scraping_ms": _status_rtt(sock, scrapes, ns),
                       "bytes": len(_scrape(ns)[1]), "flows_active": _active(_scrape(ns)[1])}
        e, f = res["empty"], res["full"]
        res["ratio_scrape_p50"] = ratio(f["scrape_ms"]["p50"], e["scrape_ms"]["p50"])
        res["ratio_scrape_p99"] = ratio(f["scrape_ms"]["p99"], e["scrape_ms"]["p99"])
        res["ratio_status_p99_scraping"] = ratio(f["status_while_scraping_ms"]["p99"], f["status_ms"]["p99"])
    finally:
        if proc is not None:
            res["exit_code"] = stop_daemon(proc)
        topo.down()
        shutil.rmtree(pin, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def format_table(r: dict) -> str:
    e, f = r["empty"], r["full"]
    row = "{:<34} {:>10} {:>10}"
    lines = [f"Prometheus scrape of skyguardd: {f['flows_active']} flows vs an empty table ({r['scrapes']} scrapes "
             f"each; the snapshot saw the fill after {r['seen_after_s']:.1f} s)",
             row.format("", "p50 ms", "p99 ms")]
    for name, key in (("scrape, empty table (baseline)", "empty"), (f"scrape, {f['flows_active']} flows", "full")):
        s = r[key]["scrape_ms"]
        lines.append(row.format(name, f"{s['p50']:.2f}", f"{s['p99']:.2f}"))
    lines.append(row.format("ratio (1M / empty)", f"{r['ratio_scrape_p50']}", f"{r['ratio_scrape_p99']}"))
    for name, key in (("status RTT at 1M, idle endpoint", "status_ms"),
                      ("status RTT at 1M, scraped nonstop", "status_while_scraping_ms")):
        s = f[key]
        lines.append(row.format(name, f"{s['p50']:.2f}", f"{s['p99']:.2f}"))
    lines.append(f"exposition {e['bytes']} bytes empty, {f['bytes']} bytes full; "
                 f"{f['status_while_scraping_ms']['concurrent_scrapes']} scrapes ran during the status run")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = measure(a.flows, a.scrapes)
    print(json.dumps(r, indent=1) if a.json else format_table(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
