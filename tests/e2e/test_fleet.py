"""Fleet interfaces on the live router: a real Prometheus server (Debian's) scrapes skyguardd in the router namespace
while a phone call is blocked, and a PromQL query through its HTTP API shows the dropped packets and bytes; the
exposition is clean for `promtool check metrics`; `skyguard stats --format prometheus` prints the same series; the
unit's ExecReload command line fails on a refused policy and succeeds on a good one."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from skyguard.lab.topo import in_netns
from tests.conftest import ROOT, skip_or_fail
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

PHONE_PREFIX = 2  # lab.SCENARIOS: a phone call to the policy's PSTN gateway, dropped from its first packet
METRICS = "127.0.0.1:9377"  # inside the router namespace: its own loopback, no clash with the host
PROM = "127.0.0.1:9390"
CLI = [sys.executable, "-m", "skyguard.cli"]


def _get(ns: str, url: str, timeout: float = 5.0) -> bytes:
    with in_netns(ns):  # the socket is made inside the namespace and stays there
        return urllib.request.urlopen(url, timeout=timeout).read()


def _query(ns: str, promql: str) -> list[dict]:
    body = _get(ns, f"http://{PROM}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    doc = json.loads(body)
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def _series(text: str) -> set[str]:
    """name{labels} of every sample line (values and timestamps left out)."""
    return {ln.rsplit(" ", 1)[0] for ln in text.splitlines() if ln and not ln.startswith("#")}


@pytest.fixture
def prometheus(rig, tmp_path):
    """Debian's Prometheus in the router namespace, scraping the daemon every second; killed even on failure."""
    exe = shutil.which("prometheus")
    if not exe:
        skip_or_fail("prometheus is missing (Debian package prometheus; `make setup`)")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                   f"  - job_name: skyguard\n    static_configs:\n      - targets: ['{METRICS}']\n")
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 - closed by the finaliser below
    proc = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{rig.topo.router_ns}", exe,
                             f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address={PROM}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    rig.procs.append(proc)  # rig.down() kills it too, whatever happens here
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        log.close()
        if proc.returncode not in (0, -15, None):
            print((tmp_path / "prometheus.log").read_text()[-3000:])


def test_prometheus_scrapes_the_daemon_and_sees_the_blocked_call(rig, prometheus):
    rig.configure(on_stop="detach", extra=f'metrics_listen = "{METRICS}"\n')
    rig.start()
    ns = rig.topo.router_ns
    rig.wait_log('"metrics endpoint"', timeout=10)
    sched, main = rig.schedule([PHONE_PREFIX])
    with rig.wire(sched) as w:
        w.play(sched, speed=1.0)
    phone = main[PHONE_PREFIX]
    row = rig.flows()[phone]
    assert row["class"] == "skype-out" and row["action"] == "drop", row
    assert w.recv[phone] == 0 and row["dropped"] == w.sent[phone] > 0, (w.sent[phone], w.recv[phone], row)
    st = rig.call("status")

    # Prometheus's view, through its HTTP API: the scrape works and the dropped packets are there
    up = wait_for(lambda: _query(ns, 'up{job="skyguard"}'), "Prometheus to scrape skyguardd", timeout=60)
    assert up[0]["value"][1] == "1", up
    q = 'sum(skyguard_packets_total{job="skyguard",class="skype-out",action="drop"})'
    got = wait_for(lambda: [r for r in _query(ns, q) if float(r["value"][1]) == row["dropped"]],
                   f"{q} to reach the {row['dropped']} packets the flow dropped", timeout=60)
    print(f"PromQL {q} = {got[0]['value'][1]} (the call's flow dropped {row['dropped']} of {w.sent[phone]})")
    # the drops are the kernel's drop counter: nothing else was dropped in this run
    q_all = 'sum(skyguard_packets_total{job="skyguard",action="drop"})'
    assert float(_query(ns, q_all)[0]["value"][1]) == st["counters"]["act_drop"] == row["dropped"]
    # the kernel counts the bytes of each (class, action) too: every byte of the call's flow was dropped
    qb = 'sum(skyguard_bytes_total{job="skyguard",class="skype-out",action="drop"})'
    assert float(_query(ns, qb)[0]["value"][1]) == row["bytes"] > 0, row
    assert float(_query(ns, 'sum(skyguard_bytes_total{job="skyguard",action="drop"})')[0]["value"][1]) == row["bytes"]
    active = _query(ns, 'skyguard_flows_active{job="skyguard",class="skype-out"}')
    assert active and float(active[0]["value"][1]) >= 1, active
    classified = _query(ns, 'sum by (reason) (skyguard_flows_classified_total{class="skype-out"})')
    assert {r["metric"]["reason"] for r in classified} >= {"pstn-prefix"}, classified
    modes = {(r["metric"]["interface"], r["metric"]["mode"]) for r in _query(ns, "skyguard_xdp_attached == 1")}
    assert {i for i, _m in modes} == {rig.topo.router_lan_if, rig.topo.router_wan_if}, modes

    # the exposition itself: promtool-clean, and the CLI's textfile output has the same series
    text = _get(ns, f"http://{METRICS}/metrics").decode()
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    else:
        skip_or_fail("promtool is missing (Debian package prometheus)")
    cli = subprocess.run([*CLI, "--socket", rig.sock, "stats", "--format", "prometheus"], capture_output=True,
                         text=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    assert _series(cli.stdout) == _series(text)
    assert re.search(r'^skyguard_packets_total\{action="drop",class="skype-out"\} (\S+)$', cli.stdout, re.M)


def _exec_reload_argv(sock: str) -> list[str]:
    """The unit's ExecReload= command line, run against the test daemon: its CLI path swapped for this checkout's
    entry point and its socket for the rig's (every other word as the unit has it)."""
    unit = (ROOT / "systemd" / "skyguard.service").read_text()
    line = re.search(r"^ExecReload=(.+)$", unit, re.M)
    assert line, "the unit has no ExecReload="
    argv = shlex.split(line.group(1))
    assert argv[0].endswith("/bin/skyguard"), argv
    cli = Path(sys.executable).with_name("skyguard")
    return [str(cli), *(sock if a == "/run/skyguard/skyguard.sock" else a for a in argv[1:])]


def test_exec_reload_fails_on_a_refused_policy_and_succeeds_on_a_good_one(rig):
    rig.start()
    argv = _exec_reload_argv(rig.sock)
    assert rig.sock in argv
    good = rig.policy.read_text()
    rig.policy.write_text(good + "\n[class.skype-out]\naction = \"explode\"\n")  # a duplicate table, a bad action
    bad = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0, (bad.stdout, bad.stderr)
    assert f"{rig.policy.name}:" in bad.stdout + bad.stderr, (bad.stdout, bad.stderr)
    assert rig.call("status")["policy"]["name"] == "lab-block-pc-to-phone"  # the running policy stayed
    text = rig.call("metrics")["text"]
    assert 'skyguard_policy_reloads_total{result="refused"} 1.0' in text
    rig.policy.write_text(good.replace('name = "lab-block-pc-to-phone"', 'name = "reloaded"'))
    ok = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    assert rig.call("status")["policy"]["name"] == "reloaded"
    text = rig.call("metrics")["text"]
    assert 'skyguard_policy_reloads_total{result="ok"} 1.0' in text
    assert re.search(r'skyguard_build_info\{policy="reloaded",version="[^"]+"\} 1\.0', text)
