"""skyguard.export.prometheus: the (class, action) series straight from the kernel's per-(verdict slot, action)
counters, the exposition (names, labels, `promtool check metrics`), that a scrape reads only the tick's sample, and
the HTTP server's life cycle."""

from __future__ import annotations

import shutil
import subprocess
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from skyguard import wire
from skyguard.export.prometheus import (
    CLASS_LABELS,
    IPFIX_METRICS,
    POSSIBLE,
    Metrics,
    MetricsServer,
    outcome_names,
    parse_listen,
    verdict_counts,
)
from tests.conftest import skip_or_fail

DROP_OUT = [wire.PASS] * wire.POL_SLOTS
DROP_OUT[wire.OUT] = wire.DROP
MARK_SIG = [wire.PASS] * wire.POL_SLOTS
MARK_SIG[wire.C["SG_CLASS_SIGNALING"]] = wire.ACTION_IDS["mark"]


@dataclass
class FakePolicy:
    name: str
    actions: list[int]

    def slot(self, i: int) -> wire.PolicySlot:
        return wire.PolicySlot(self.actions[i], 0, 0)


@dataclass
class FakeCols:
    cls: np.ndarray


@dataclass
class FakeSnapshot:
    cols: FakeCols
    n: int
    taken_ns: int


def kernel_stats(pairs: dict[tuple[str, str], tuple[int, int]], **kw: int) -> dict[str, int]:
    """A stats dict shaped like Kernel.stats(): every counter at zero but `kw`, and the (slot, action) pairs' packets
    and bytes from `pairs`, with `packets` and `bytes` their sums as the program keeps them."""
    st = dict.fromkeys(wire.stat_names().values(), 0)
    st.update(kw)
    for (slot, act), (n, b) in pairs.items():
        st[f"packets_{slot}_{act}"], st[f"bytes_{slot}_{act}"] = n, b
    st["packets"] = sum(n for n, _b in pairs.values())
    st["bytes"] = sum(b for _n, b in pairs.values())
    return st


PAIRS = {("skype-out", "drop"): (40, 6400), ("skype-signaling", "mark"): (5, 700), ("other", "pass"): (9, 900),
         ("none", "pass"): (1, 60), ("blocked", "drop"): (2, 120), ("exempt", "pass"): (3, 300),
         ("malformed", "drop"): (4, 240)}


def test_series_are_the_kernels_pairs_and_add_up_to_its_totals():
    st = kernel_stats(PAIRS)
    pk, by = verdict_counts(st, "packets"), verdict_counts(st, "bytes")
    for pair, (n, b) in PAIRS.items():
        assert (pk[pair], by[pair]) == (n, b), pair
    assert sum(pk.values()) == st["packets"] == 64 and sum(by.values()) == st["bytes"] == 8720
    # a pair no policy can produce, but counted: shown, or the series would no longer add up to every packet
    st["packets_exempt_drop"], st["packets"] = 7, st["packets"] + 7
    assert verdict_counts(st, "packets")[("exempt", "drop")] == 7
    assert sum(verdict_counts(st, "packets").values()) == st["packets"]
    # the pairs a policy can produce are there at zero from the start; the impossible ones only once counted
    empty = verdict_counts(kernel_stats({}), "packets")
    assert set(empty) == set(POSSIBLE) and ("exempt", "drop") not in empty and ("blocked", "pass") not in empty
    assert {c for c, _a in POSSIBLE} == set(CLASS_LABELS) == {*wire.CLASS_NAMES, "malformed", "blocked", "exempt",
                                                               "none"}


def test_a_reload_changes_nothing_already_counted():
    """The series are the kernel's counters: what a class's packets got stays theirs whatever the policy is now."""
    m = Metrics(version="1", capacity=1024, xdp_requested="auto")
    st = kernel_stats({("skype-signaling", "pass"): (10, 1000), ("skype-signaling", "mark"): (15, 1500)})
    for pol in (FakePolicy("pass-all", [wire.PASS] * wire.POL_SLOTS), FakePolicy("mark-sig", MARK_SIG)):
        s = m.tick(stats=st, policy=pol, classified={}, snapshot=None, attached={}, policy_loaded=1.0)
        assert s.packets[("skype-signaling", "pass")] == 10 and s.packets[("skype-signaling", "mark")] == 15
        assert s.bytes[("skype-signaling", "mark")] == 1500


def _metrics(snapshot=None, ipfix=None) -> tuple[Metrics, str]:
    m = Metrics(version="9.9.9", capacity=262144, xdp_requested="auto")
    m.note_reload(True)
    m.note_reload(False)
    st = kernel_stats({("skype-out", "drop"): (40, 6400), ("none", "pass"): (1, 64)}, out_flow=40, out_no_flow=1,
                      events_lost=3)
    m.tick(stats=st, policy=FakePolicy("block-pc-to-phone", DROP_OUT),
           classified={(wire.OUT, wire.C["SG_R_PSTN_PREFIX"]): 2, (wire.OTHER, 0): 1}, snapshot=snapshot,
           attached={"eth0": "native", "eth1": "generic", "eth2": None}, policy_loaded=1700000000.5, now=1700000100.0,
           ipfix=ipfix)
    return m, m.render().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_has_the_contract_series_with_low_cardinality_labels():
    snap = FakeSnapshot(FakeCols(np.array([wire.OUT, wire.OUT, wire.OTHER, 0], dtype=np.uint8)), 4, 1)
    _m, text = _metrics(snap)
    s = _samples(text)
    assert s[("skyguard_packets_total", (("action", "drop"), ("class", "skype-out")))] == 40
    assert s[("skyguard_packets_total", (("action", "pass"), ("class", "none")))] == 1
    assert s[("skyguard_packets_total", (("action", "mark"), ("class", "skype-relay")))] == 0  # present at zero
    assert s[("skyguard_bytes_total", (("action", "drop"), ("class", "skype-out")))] == 6400
    assert s[("skyguard_bytes_total", (("action", "pass"), ("class", "none")))] == 64
    assert s[("skyguard_bytes_total", (("action", "pass"), ("class", "exempt")))] == 0  # present at zero
    for name in ("skyguard_packets_total", "skyguard_bytes_total"):
        assert {dict(lb)["class"] for (n, lb) in s if n == name} == set(CLASS_LABELS), name
    assert s[("skyguard_parse_total", (("outcome", "no_flow"),))] == 1
    assert s[("skyguard_parse_total", (("outcome", "err_eth"),))] == 0
    assert s[("skyguard_flows_classified_total", (("class", "skype-out"), ("reason", "pstn-prefix")))] == 2
    assert s[("skyguard_flows_classified_total", (("class", "other"), ("reason", "none")))] == 1
    assert s[("skyguard_flows_active", (("class", "skype-out"),))] == 2
    assert s[("skyguard_flows_active", (("class", "unknown"),))] == 1
    assert s[("skyguard_flow_table_capacity", ())] == 262144
    assert s[("skyguard_events_lost_total", ())] == 3
    assert s[("skyguard_policy_reloads_total", (("result", "refused"),))] == 1
    assert s[("skyguard_policy_loaded_timestamp_seconds", ())] == 1700000000.5
    assert s[("skyguard_xdp_attached", (("interface", "eth1"), ("mode", "generic")))] == 1
    assert s[("skyguard_xdp_attached", (("interface", "eth1"), ("mode", "native")))] == 0
    assert {v for (n, lb), v in s.items() if n == "skyguard_xdp_attached" and ("interface", "eth2") in lb} == {0}
    assert s[("skyguard_build_info", (("policy", "block-pc-to-phone"), ("version", "9.9.9")))] == 1
    assert s[("skyguard_last_update_timestamp_seconds", ())] == 1700000100.0
    # no label value comes from a flow: every one is from a fixed vocabulary or the configuration
    vocab = {*CLASS_LABELS, *wire.ACTION_NAMES, *wire.REASONS.values(), "none", "ok", "refused", "native",
             "generic", "auto", "eth0", "eth1", "eth2", "9.9.9", "block-pc-to-phone",
             *(o[4:] if o.startswith("out_") else o for o in outcome_names())}
    for (_n, labels), _v in s.items():
        for _k, v in labels:
            assert v in vocab, (_n, labels)


def test_flows_active_is_counted_once_per_snapshot_not_per_tick():
    cls = np.array([wire.OUT] * 3, dtype=np.uint8)
    snap = FakeSnapshot(FakeCols(cls), 3, taken_ns=5)
    m, _ = _metrics(snap)
    cls[:] = wire.OTHER  # the same snapshot (same taken_ns and n): the cached count stands
    assert m.flows_by_class(snap)["skype-out"] == 3
    snap.taken_ns = 6
    assert m.flows_by_class(snap) == {**dict.fromkeys(wire.CLASS_NAMES, 0), "other": 3}
    assert m.flows_by_class(None)["other"] == 3  # no snapshot this tick: the last count


def test_no_sample_no_series_and_scrape_reads_only_the_sample():
    m = Metrics(version="1", capacity=1024, xdp_requested="native")
    assert m.render() == b""
    _m, text = _metrics()
    assert "skyguard_flows_active" not in text  # no snapshot yet: absent rather than a made-up zero


def _exporter_status() -> dict:
    """A real exporter's status after two records, one of them lost to a full outbox."""
    from skyguard.export.ipfix import Exporter

    ex = Exporter("127.0.0.1:9")
    try:
        key = wire.FlowKey.make("192.168.1.6", 50010, "52.114.250.5", 3478, 17)
        flow = wire.Flow(first_ns=1, last_ns=2, pkts=(3, 4), bytes_=(300, 400), dropped=0, cls=wire.OUT, init_dir=0,
                         reason=0)
        ex.record(key, flow, 1, wall_off_ns=0)
        ex.record(key._replace(lo_port=50012), flow, 1, wall_off_ns=0)
        ex.counters.records_lost, ex.counters.gone_unended = 1, 2
        return ex.status()
    finally:
        ex.close()


def test_ipfix_series_only_with_an_exporter_and_from_its_counters():
    _m, text = _metrics()
    assert "skyguard_ipfix" not in text  # no collector configured: no series that would always read zero
    status = _exporter_status()
    _m, text = _metrics(ipfix=status)
    s = _samples(text)
    assert s[("skyguard_ipfix_records_total", ())] == status["records"]
    assert s[("skyguard_ipfix_records_lost_total", ())] == 1
    assert s[("skyguard_ipfix_flows_gone_unended_total", ())] == 2
    assert s[("skyguard_ipfix_tracked_flows", ())] == status["tracked_flows"]
    assert s[("skyguard_ipfix_outbox_messages", ())] == status["outbox"]
    assert s[("skyguard_ipfix_send_errors_total", ())] == 0 and ("skyguard_ipfix_messages_total", ()) in s
    for _key, name, _kind, _help in IPFIX_METRICS:
        assert any(n == name for n, _lb in s), name


def test_promtool_check_metrics_is_clean():
    if not shutil.which("promtool"):
        skip_or_fail("promtool is missing (Debian package prometheus; `make setup`)")
    _m, text = _metrics(FakeSnapshot(FakeCols(np.zeros(2, np.uint8)), 2, 1), ipfix=_exporter_status())
    assert "skyguard_ipfix_records_total" in text
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (r.stdout, r.stderr)


@pytest.mark.parametrize(("value", "want"), [("127.0.0.1:9377", ("127.0.0.1", 9377)), ("[::1]:9377", ("::1", 9377)),
                                             ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::]:80", ("::", 80))])
def test_parse_listen_accepts(value, want):
    assert parse_listen(value) == want


@pytest.mark.parametrize("value", ["9377", "localhost:9377", "::1:9377", "[10.0.0.1]:80", "1.2.3.4:65536",
                                   "1.2.3.4:", "1.2.3.4:x"])
def test_parse_listen_refuses(value):
    with pytest.raises(ValueError):
        parse_listen(value)


def test_http_server_serves_the_sample_from_its_thread_and_stops():
    m, text = _metrics()
    srv = MetricsServer(m, "127.0.0.1", 0).start()
    try:
        host, port = srv.address
        body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
        assert body == text
        # a scrape runs in the server's thread: it must not need the caller's (the event loop's) thread
        got = []
        t = threading.Thread(target=lambda: got.append(urllib.request.urlopen(f"http://{host}:{port}/", timeout=10)
                                                       .status))
        t.start()
        t.join(10)
        assert got == [200]
    finally:
        srv.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)


def test_http_server_binds_ipv6():
    m, _ = _metrics()
    try:
        srv = MetricsServer(m, "::1", 0).start()
    except OSError as e:
        skip_or_fail(f"no IPv6 loopback here ({e})")
    try:
        body = urllib.request.urlopen(f"http://[::1]:{srv.address[1]}/metrics", timeout=10).read()
        assert b"skyguard_build_info" in body
    finally:
        srv.close()


DEBIAN_CHECK = """
import importlib.metadata, sys, urllib.request
sys.path.insert(0, sys.argv[1])
from skyguard.export.prometheus import Metrics, MetricsServer

class Policy:
    name = "p"
    def slot(self, i):
        from skyguard import wire
        return wire.PolicySlot(0, 0, 0)

m = Metrics(version="1", capacity=1024, xdp_requested="auto")
m.tick(stats={"packets": 5, "out_flow": 5, "class_other": 5, "packets_other_pass": 5}, policy=Policy(),
       classified={(1, 0): 1}, snapshot=None,
       attached={"eth0": "native"}, policy_loaded=1.0)
text = m.render().decode()
srv = MetricsServer(m, "127.0.0.1", 0).start()
body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % srv.address[1], timeout=10).read().decode()
srv.close()
assert body == text, (body, text)
assert 'skyguard_packets_total{action="pass",class="other"} 5.0' in text, text
print(importlib.metadata.version("prometheus_client"))
"""


def test_works_with_debian_12s_prometheus_client():
    """The lower bound in pyproject.toml (0.16) is Debian 12's python3-prometheus-client: run the exporter under
    Debian's own python3 and that package (outside the venv, which has a newer one)."""
    py = "/usr/bin/python3"
    probe = subprocess.run([py, "-I", "-c", "import prometheus_client"], capture_output=True)
    if probe.returncode != 0:
        skip_or_fail("Debian's python3-prometheus-client is missing (`make setup`)")
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([py, "-I", "-c", DEBIAN_CHECK, str(root / "daemon")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0.16.0"
