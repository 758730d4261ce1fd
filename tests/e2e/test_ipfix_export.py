"""IPFIX export from the live router: calls are played through the real daemon, which exports to nfacctd (pmacct) in
the router namespace while dumpcap records the export datagrams for tshark. Flows end both ways (the daemon's idle
expiry, then its stop), long ones are reported every active timeout meanwhile, and a restarted daemon adopts the
stopped one's flows without exporting them again; both decoders must read every record and their per-flow totals must
equal what `skyguard flows` reported."""

from __future__ import annotations

import contextlib
import json
import random
import select
import signal
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from skyguard.endpoints import parse_endpoint
from tests.conftest import skip_or_fail
from tests.ipfix_tools import Nfacctd, tshark_headers, tshark_records

from .conftest import wait_for

pytestmark = pytest.mark.e2e

PHASE_A = [7, 8, 9, 2]  # short scenarios (<= 6.4 s): they end by idle expiry
PHASE_B = [0, 1, 3, 4, 5, 6]  # the long calls: active-timeout records, then forced ends at the stop
IDLE_S = 18  # longer than phase B lasts (10.8 s) with room: none of its flows expires before it is listed
ACTIVE_S = 3


def _metric(rig, name: str) -> float:
    """One unlabelled series of the daemon's exposition (the `metrics` command: what a scrape returns)."""
    for line in rig.call("metrics")["text"].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in the daemon's metrics")


def _key(row: dict) -> tuple:
    (ha, pa), (hb, pb) = parse_endpoint(row["a"]), parse_endpoint(row["b"])
    return ha, hb, pa, pb, row["proto"], row["vlan"]


def _capture(ns: str, port: int, pcap: Path) -> subprocess.Popen:
    """dumpcap on the router's loopback, returned once it says it is capturing (its stderr's first line)."""
    p = subprocess.Popen(["ip", "netns", "exec", ns, "dumpcap", "-q", "-i", "lo", "-f", f"udp port {port}",
                          "-w", str(pcap)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([p.stderr], [], [], 15)
    line = p.stderr.readline() if ready else ""
    if not line.startswith("Capturing on"):
        p.kill()
        raise AssertionError(f"dumpcap did not start capturing within 15 s: {line!r}")
    return p


def test_every_record_decoded_by_tshark_and_nfacctd_equals_flows(rig, tmp_path: Path):
    for tool in ("tshark", "dumpcap", "nfacctd"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            skip_or_fail(f"{tool} is missing (make setup installs tshark and pmacct)")
    port = random.randint(20000, 60000)
    ns = rig.topo.router_ns
    nf = Nfacctd(tmp_path, port=port, netns=ns)
    pcap = tmp_path / "export.pcap"
    cap = _capture(ns, port, pcap)
    try:
        rig.cfg.write_text(rig.cfg.read_text() + (
            f'ipfix_collector = "127.0.0.1:{port}"\nipfix_active_timeout = {ACTIVE_S}\nipfix_domain = 4242\n'
            f"ipfix_template_refresh_packets = 5\n[idle_timeout]\nudp = {IDLE_S}\ntcp = {IDLE_S}\nother = {IDLE_S}\n"))
        rig.start()
        # phase A: played, listed, then left to expire
        sched, _main = rig.schedule(PHASE_A)
        with rig.wire(sched) as w:
            w.play(sched, speed=1.0, tail_s=0.3)
        rows_a = {_key(r): r for r in rig.call("flows", sort="first", limit=0, fresh=True)["flows"]}
        wait_for(lambda: not rig.call("flows", limit=0, fresh=True)["flows"], "phase A's flows to expire",
                 timeout=IDLE_S + 15, every=0.5)
        # the exporter's counters in the daemon's Prometheus metrics: a record for each ended flow, none lost
        wait_for(lambda: _metric(rig, "skyguard_ipfix_records_total") >= len(rows_a),
                 "the metrics to count phase A's records", timeout=10, every=0.5)
        assert _metric(rig, "skyguard_ipfix_records_lost_total") == 0
        assert _metric(rig, "skyguard_ipfix_send_errors_total") == 0
        # phase B: played, listed, then the daemon stops
        sched, _main = rig.schedule(PHASE_B)
        with rig.wire(sched) as w:
            w.play(sched, speed=1.0, tail_s=0.3)
        rows_b = {_key(r): r for r in rig.call("flows", sort="first", limit=0, fresh=True)["flows"]}
        rig.signal(signal.SIGTERM)
        assert rig.proc.wait(30) == 0
        # a restart adopts phase B's pinned flows, whose forced ends were just sent: they saw nothing since, so the
        # next daemon exports nothing more of them, at its stop either (the totals below would double otherwise)
        mark = len(rig.log())
        rig.start()
        line = rig.wait_log("ipfix export", timeout=10, start=mark)
        assert f"adopted_flows={len(rows_b)}" in line or f'"adopted_flows": {len(rows_b)}' in line, line[-500:]
        assert rig.stop() == 0
        want = sum(r["packets"] for r in (rows_a | rows_b).values())
        wait_for(lambda: sum(pk for pk, _b in nf.totals().values()) >= want,
                 f"nfacctd's print plugin to write all {want} exported packets", timeout=30, every=0.5)
    finally:
        cap.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            cap.wait(10)
        nf.stop()
    assert not set(rows_a) & set(rows_b)
    rows = rows_a | rows_b
    assert len(rows_a) >= 4 and len(rows_b) >= 6, (len(rows_a), len(rows_b))
    print(f"flows listed: {len(rows_a)} (ended by idle expiry) + {len(rows_b)} (ended by the stop); packets "
          f"{sum(r['packets'] for r in rows.values())}, bytes {sum(r['bytes'] for r in rows.values())}")

    # tshark: every record, the sequence numbers, the totals
    recs = tshark_records(pcap, port)
    heads = tshark_headers(pcap, port)
    per_msg = _records_per_message(pcap, port)
    assert len(heads) == len(per_msg) > 0
    assert {h[1] for h in heads} == {4242}
    for (seq, _od, _ln), (nseq, _od2, _ln2), n in zip(heads, heads[1:], per_msg, strict=False):
        assert nseq == seq + n, "sequence numbers must count the data records sent before each message"
    assert heads[-1][0] + per_msg[-1] == len(recs), "tshark decoded fewer records than the exporter numbered"
    got_p, got_l2, got_ip = Counter(), Counter(), Counter()
    last: dict[tuple, dict] = {}
    reasons = Counter()
    for r in recs:
        k = (r.get("cflow.srcaddr") or r["cflow.srcaddrv6"], r.get("cflow.dstaddr") or r["cflow.dstaddrv6"],
             int(r["cflow.srcport"]), int(r["cflow.dstport"]), {"17": "udp", "6": "tcp"}[r["cflow.protocol"]],
             int(r["cflow.vlanid"]))
        got_p[k] += int(r["cflow.packets"])
        got_l2[k] += int(r["cflow.layer2_octet_delta_count"])
        got_ip[k] += int(r["cflow.octets"])
        last[k] = r
        reasons[r["cflow.flow_end_reason"]] += 1
    print(f"tshark: {len(recs)} records in {len(heads)} messages, end reasons {dict(reasons)}")
    assert set(got_p) == set(rows)
    for k, row in rows.items():
        assert (got_p[k], got_l2[k]) == (row["packets"], row["bytes"]), (k, row)
        assert got_ip[k] == row["bytes"] - (14 + (4 if row["vlan"] else 0)) * row["packets"]
        end = last[k]
        assert end["cflow.flow_end_reason"] == ("1" if k in rows_a else "4"), (k, end)
        assert end["cflow.appl_name"] == row["class"] and end.get("cflow.appl_desc", "") == row["reason"], (k, end)
    assert reasons["2"] > 0, "no active-timeout record for the long calls"

    # nfacctd: the totals it aggregated per 5-tuple and VLAN
    tot = nf.totals()
    print(f"nfacctd: {len(tot)} flows, packets {sum(p for p, _b in tot.values())}, "
          f"bytes {sum(b for _p, b in tot.values())}")
    assert set(tot) == set(rows), nf.log.read_text()[-2000:]
    for k, row in rows.items():
        assert tot[k] == (row["packets"], got_ip[k]), (k, row, tot[k])


def _records_per_message(pcap: Path, port: int) -> list[int]:
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-d", f"udp.port=={port},cflow", "-T", "json"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    counts = []
    for pkt in json.loads(out or "[]"):
        cflow = pkt["_source"]["layers"].get("cflow")
        if cflow is None:
            continue
        n = defaultdict(int)
        for k, v in cflow.items():
            if k.startswith("Set ") and isinstance(v, dict):
                n[0] += sum(1 for sk in v if sk.startswith("Flow "))
        counts.append(n[0])
    return counts
