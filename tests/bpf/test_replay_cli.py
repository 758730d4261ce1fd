"""`skyguard replay` as an operator runs it: table and JSON output, a broken capture reported with file and offset
(and the flows read before it), exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skyguard.cli", "replay", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_replay_json_matches_design(bpf_ok, captures):
    r = run(str(captures / "teams.pcap"), "--policy", str(ROOT / "policies" / "block-pc-to-phone.toml"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["captures"] == ["teams.pcap"] and out["policy"] == "block-pc-to-phone"
    for f in out["flows"]:
        assert {"capture", "proto", "a", "b", "vlan", "class", "reason", "action", "packets", "bytes",
                "dropped"} <= set(f)
    s = out["summary"]
    assert s["packets"] == 1540 and s["flows"] == len(out["flows"]) and s["parse_errors"] == 0
    assert sum(s["by_class"].values()) == s["flows"]
    relay = [f for f in out["flows"] if f["b"] == "52.114.250.141:3478"]
    assert relay and relay[0]["class"] == "skype-relay" and relay[0]["a"].startswith("192.168.1.6:")


def test_replay_table(bpf_ok, captures):
    r = run(str(captures / "skype_udp.pcap"))
    assert r.returncode == 0, r.stderr
    assert "skype-signaling" in r.stdout and "som-header" in r.stdout
    assert "5 packets, 1 flows" in r.stdout


@pytest.mark.parametrize("cut", [24 + 16 + 100, 2000, 50_001])
def test_truncated_capture_names_file_and_offset_and_keeps_flows(bpf_ok, captures, tmp_path, cut):
    src = (captures / "teams.pcap").read_bytes()
    bad = tmp_path / "cut.pcap"
    bad.write_bytes(src[:cut])
    r = run(str(bad), "--json")
    assert r.returncode == 1
    assert "cut.pcap" in r.stderr and "at byte" in r.stderr
    out = json.loads(r.stdout)
    assert out["errors"] and "cut.pcap" in out["errors"][0]
    if cut > 1000:
        assert out["summary"]["packets"] > 0 and out["flows"]  # what was read before the break is reported


def test_missing_and_garbage_capture(bpf_ok, tmp_path):
    r = run(str(tmp_path / "nope.pcap"))
    assert r.returncode == 1 and "no such file" in r.stderr
    g = tmp_path / "garbage.pcap"
    g.write_bytes(b"this is not a capture at all" * 10)
    r = run(str(g))
    assert r.returncode == 1 and "garbage.pcap" in r.stderr and "Traceback" not in r.stderr


def test_replay_twice_identical_cli(bpf_ok, captures, tmp_path):
    shutil.copy(captures / "skype.pcap", tmp_path / "a.pcap")
    a = run(str(tmp_path / "a.pcap"), "--json")
    b = run(str(tmp_path / "a.pcap"), "--json")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout
