"""`skyguard` CLI against a fake daemon on a real Unix socket: human and --json output, exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skyguard.cli import fmt
from skyguard.cli import main as cli
from skyguard.daemon.control import ControlError, ControlServer

FLOWS = [
    {"proto": "udp", "a": "192.168.1.6:50010", "b": "52.114.250.5:3478", "vlan": 0, "class": "skype-relay",
     "reason": "ms-stun-attr", "action": "pass", "packets": 120, "bytes": 18000, "dropped": 0,
     "first_ns": 1_000_000_000, "last_ns": 3_500_000_000},
    {"proto": "udp", "a": "[2001:db8::1]:5000", "b": "[2603:1063::9]:3479", "vlan": 12, "class": 4,
     "reason": "pstn-prefix", "action": 1, "packets": 7, "bytes": 700, "dropped": 6, "first_ns": 5, "last_ns": 9},
]


class FakeDaemon:
    def __init__(self, path: Path) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.server = ControlServer(path, self.handle)
        self.path = path
        self._stop = threading.Event()
        self._pending: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def handle(self, cmd: str, args: dict) -> Any:
        self.calls.append((cmd, args))
        if cmd == "status":
            return {"version": "0.1.0", "interfaces": ["eth0", "eth1"], "policy": {"name": "observe-only"}}
        if cmd == "stats":
            return {"packets": 1540, "dropped": 3}
        if cmd == "flows":
            return [f for f in FLOWS if args.get("class") in (None, fmt.class_name(f["class"]))]
        if cmd == "flow":
            if args["a"] == FLOWS[0]["a"]:
                return FLOWS[0]
            raise ControlError("no-such-flow", "no flow with that key")
        if cmd == "policy.show":
            return {"name": "observe-only", "path": "/etc/skyguard/policy.toml"}
        if cmd == "policy.check":
            return {"name": "checked-by-daemon"}
        if cmd == "policy.reload":
            return {"name": "block-pc-to-phone"}
        if cmd == "block":
            return {"prefix": args["prefix"]}
        if cmd == "unblock":
            raise ControlError("not-blocked", f"{args['prefix']} is not blocked")
        raise ControlError("unexpected", cmd)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.server.poll(0.01)
            with self._lock:
                todo, self._pending = self._pending, []
            for fn in todo:
                fn()

    def later(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._pending.append(fn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


@pytest.fixture
def daemon(tmp_path: Path):
    d = FakeDaemon(tmp_path / "sg.sock")
    yield d
    d.close()


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = cli.main(list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_status_human_and_json(daemon: FakeDaemon) -> None:
    rc, out, err = run("--socket", str(daemon.path), "status")
    assert rc == 0 and err == ""
    assert "interfaces" in out and "eth0,eth1" in out and "policy.name" in out and "observe-only" in out
    sock = str(daemon.path)
    for argv in (("--socket", sock, "--json", "status"), ("status", "--json", "--socket", sock)):
        rc, out, _ = run(*argv)
        assert rc == 0 and json.loads(out) == daemon.handle("status", {})


def test_socket_from_environment(daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYGUARD_SOCKET", str(daemon.path))
    rc, out, _ = run("stats", "--json")
    assert rc == 0 and json.loads(out) == {"packets": 1540, "dropped": 3}


def test_flows_table_has_aligned_columns_with_names(daemon: FakeDaemon) -> None:
    rc, out, _ = run("--socket", str(daemon.path), "flows")
    assert rc == 0
    lines = out.splitlines()
    header = lines[0].split()
    assert header == ["PROTO", "A", "B", "VLAN", "CLASS", "REASON", "ACTION", "PACKETS", "BYTES", "DROPPED",
                      "DURATION"]
    assert "skype-relay" in lines[1] and "ms-stun-attr" in lines[1] and "2.5s" in lines[1]
    # numeric class/action ids are shown by name
    assert "skype-out" in lines[2] and " drop " in lines[2]
    col = lines[0].index("CLASS")
    assert lines[1][col:].startswith("skype-relay") and lines[2][col:].startswith("skype-out")
    # numbers right-aligned: the PACKETS column ends at the same offset in every line
    end = lines[0].index("PACKETS") + len("PACKETS")
    assert lines[1][:end].endswith("120") and lines[2][:end].endswith("7")


def test_flows_json_and_filters_reach_the_daemon(daemon: FakeDaemon) -> None:
    rc, out, _ = run("--socket", str(daemon.path), "flows", "--json", "--class", "skype-relay", "--addr",
                     "192.168.1.0/24", "--sort", "bytes", "--limit", "5")
    assert rc == 0
    assert json.loads(out) == {"flows": [FLOWS[0]]}
    assert daemon.calls[-1] == ("flows", {"class": "skype-relay", "addr": "192.168.1.0/24", "sort": "bytes",
                                          "limit": 5})


@pytest.mark.parametrize("bad", [["--class", "skype"], ["--limit", "0"], ["--sort", "name"], ["--addr", "x.y"]])
def test_flows_usage_errors_exit_2(daemon: FakeDaemon, bad: list[str]) -> None:
    rc, out, _ = run("--socket", str(daemon.path), "flows", *bad)
    assert rc == 2 and out == ""
    assert not daemon.calls


def test_flow_keyspec(daemon: FakeDaemon) -> None:
    rc, out, _ = run("--socket", str(daemon.path), "flow", "udp", "192.168.1.6:50010", "<->", "52.114.250.5:3478")
    assert rc == 0 and "skype-relay" in out and "packets" in out
    assert daemon.calls[-1] == ("flow", {"proto": "udp", "a": "192.168.1.6:50010", "b": "52.114.250.5:3478",
                                         "vlan": 0})
    rc, _, err = run("--socket", str(daemon.path), "flow", "udp [2001:db8::1]:5000 [2603:1063::9]:3479 vlan 12")
    assert rc == 1 and "no-such-flow" in err
    assert daemon.calls[-1][1] == {"proto": "udp", "a": "[2001:db8::1]:5000", "b": "[2603:1063::9]:3479", "vlan": 12}


@pytest.mark.parametrize("spec", [["udp", "1.2.3.4:5"], ["icmp", "1.2.3.4:5", "6.7.8.9:1"],
                                  ["udp", "1.2.3.4", "6.7.8.9:1"], ["udp", "2001:db8::1:5", "6.7.8.9:1"],
                                  ["udp", "1.2.3.4:5", "6.7.8.9:1", "vlan", "5000"]])
def test_flow_bad_keyspec_is_usage_error(daemon: FakeDaemon, spec: list[str]) -> None:
    rc, out, err = run("--socket", str(daemon.path), "flow", *spec)
    assert rc == 2 and out == "" and "skyguard:" in err
    assert not daemon.calls


def test_parse_keyspec_normalises() -> None:
    assert cli.parse_keyspec(["TCP", "[2001:0db8::0001]:443", "10.0.0.1:80", "vlan", "3"]) == {
        "proto": "tcp", "a": "[2001:db8::1]:443", "b": "10.0.0.1:80", "vlan": 3}


def _publish_when_subscribed(daemon: FakeDaemon, events: list[dict]) -> threading.Thread:
    def go() -> None:
        end = time.monotonic() + 5
        while daemon.server.subscribers == 0 and time.monotonic() < end:
            time.sleep(0.01)
        for ev in events:
            daemon.later(lambda ev=ev: daemon.server.publish(ev))

    t = threading.Thread(target=go)
    t.start()
    return t


def test_events_human_and_json(daemon: FakeDaemon) -> None:
    evs = [{"type": "classified", "ts_ns": 1_700_000_000_000_000_000,
            "flow": {"proto": "udp", "a": "1.2.3.4:5", "b": "6.7.8.9:10"}, "old": 0, "new": 4, "reason": "e2o-port"},
           {"type": "blocked", "prefix": "10.0.0.0/8"}]
    t = _publish_when_subscribed(daemon, evs)
    rc, out, _ = run("--socket", str(daemon.path), "events", "--count", "2")
    t.join()
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("2023-11-14T22:13:20")
    assert "classified udp 1.2.3.4:5 <-> 6.7.8.9:10 unknown -> skype-out reason=e2o-port" in lines[0]
    assert lines[1] == "blocked prefix=10.0.0.0/8"
    end = time.monotonic() + 5  # the first subscriber must be gone, or the next events would go to it alone
    while daemon.server.subscribers and time.monotonic() < end:
        time.sleep(0.01)
    t = _publish_when_subscribed(daemon, evs)
    rc, out, _ = run("--socket", str(daemon.path), "--json", "events", "--count", "2")
    t.join()
    assert rc == 0 and [json.loads(line) for line in out.splitlines()] == evs


def test_events_no_follow_stops_when_quiet(daemon: FakeDaemon) -> None:
    t0 = time.monotonic()
    rc, out, _ = run("--socket", str(daemon.path), "events", "--no-follow", "--timeout", "0.3")
    assert rc == 0 and out == "" and time.monotonic() - t0 < 3


def test_policy_show_reload_and_daemon_check(daemon: FakeDaemon, tmp_path: Path) -> None:
    rc, out, _ = run("--socket", str(daemon.path), "policy", "show")
    assert rc == 0 and "observe-only" in out
    rc, out, _ = run("--socket", str(daemon.path), "policy", "reload")
    assert rc == 0 and out.strip() == "policy reloaded: block-pc-to-phone"
    rc, out, _ = run("--socket", str(daemon.path), "--json", "policy", "check", "--daemon", "rel.toml")
    assert rc == 0 and json.loads(out) == {"name": "checked-by-daemon"}
    assert daemon.calls[-1] == ("policy.check", {"path": str(Path("rel.toml").absolute())})


def test_policy_check_offline_needs_no_daemon(tmp_path: Path) -> None:
    """The real policy parser, offline: the verdict and the file:line:reason are the checker's own."""
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('name = "fine"\n')
    bad.write_text('name = "x"\n[class.skype-out]\naction = "explode"\n')
    nosock = str(tmp_path / "none.sock")
    rc, out, err = run("--socket", nosock, "policy", "check", str(good))
    assert rc == 0 and "ok" in out and "fine" in out and err == ""
    rc, out, err = run("--socket", nosock, "policy", "check", str(bad))
    reason = f"{bad}:3: class.skype-out.action: unknown action 'explode' (expected pass | drop | mark)"
    assert rc == 1 and out == "" and err.strip() == reason
    rc, out, _ = run("--socket", nosock, "policy", "check", "--json", str(bad))
    assert rc == 1 and json.loads(out) == {"file": str(bad), "ok": False, "error": reason}
    rc, _, err = run("--socket", nosock, "policy", "check", str(tmp_path / "missing.toml"))
    assert rc == 1 and "missing.toml" in err and "Traceback" not in err


def test_block_and_unblock(daemon: FakeDaemon) -> None:
    rc, out, _ = run("--socket", str(daemon.path), "block", "10.1.2.3/16", "--expire", "30")
    assert rc == 0 and out.strip() == "blocked 10.1.0.0/16 for 30 s"
    assert daemon.calls[-1] == ("block", {"prefix": "10.1.0.0/16", "expire": 30.0})
    rc, out, _ = run("--socket", str(daemon.path), "--json", "block", "2001:db8::1")
    assert rc == 0 and json.loads(out) == {"prefix": "2001:db8::1/128"}
    rc, out, err = run("--socket", str(daemon.path), "unblock", "192.0.2.1")
    assert rc == 1 and out == "" and err.strip() == "skyguard: not-blocked: 192.0.2.1/32 is not blocked"
    rc, _, _ = run("--socket", str(daemon.path), "block", "300.1.1.1")
    assert rc == 2
    rc, _, _ = run("--socket", str(daemon.path), "block", "10.0.0.0/8", "--expire", "-5")
    assert rc == 2


@pytest.mark.parametrize("argv", [["status"], ["stats"], ["flows"], ["events"], ["policy", "show"],
                                  ["policy", "reload"], ["block", "1.2.3.4"], ["unblock", "1.2.3.4"],
                                  ["flow", "udp", "1.1.1.1:1", "2.2.2.2:2"]])
def test_daemon_not_running_is_one_line_exit_1(tmp_path: Path, argv: list[str]) -> None:
    path = tmp_path / "run" / "skyguard.sock"
    rc, out, err = run("--socket", str(path), *argv)
    assert rc == 1 and out == ""
    assert err == f"skyguard: cannot connect to {path}: is skyguardd running?\n"


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["policy"]) == 2
    assert cli.main(["--help"]) == 0
    assert "status" in capsys.readouterr().out


def test_replay_and_lab_dispatch_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[str]] = {}
    replay = types.ModuleType("skyguard.offline.replay")
    replay.main = lambda argv: seen.setdefault("replay", argv) and 0  # type: ignore[attr-defined]
    lab = types.ModuleType("skyguard.lab.demo")
    lab.main = lambda argv: (seen.setdefault("lab", argv), 3)[1]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "skyguard.offline.replay", replay)
    monkeypatch.setitem(sys.modules, "skyguard.lab.demo", lab)
    rc, _, _ = run("--json", "replay", "a.pcap", "b.pcapng", "--policy", "p.toml")
    assert rc == 0 and seen["replay"] == ["a.pcap", "b.pcapng", "--policy", "p.toml", "--json"]
    rc, _, _ = run("lab", "--calls", "3", "--keep")
    assert rc == 3 and seen["lab"] == ["--calls", "3", "--keep"]


def test_status_does_not_import_bcc_or_the_lab() -> None:
    """The operator's commands stay light: bcc (and its compiler) load only for replay and the lab."""
    code = ("import sys; from skyguard.cli import main; "
            "bad = [m for m in sys.modules if m == 'bcc' or m.startswith(('skyguard.lab', 'skyguard.kernel'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fmt_kv_renders_nested_values() -> None:
    text = fmt.kv({"interfaces": [{"name": "eth0", "mode": "native"}, {"name": "eth1", "mode": "generic"}],
                   "flows": {"count": 3, "max": 10}, "tags": [], "ok": True})
    assert text.splitlines() == ["interfaces   name=eth0 mode=native; name=eth1 mode=generic",
                                 "flows.count  3", "flows.max    10", "tags         -", "ok           yes"]


def test_fmt_table_alignment() -> None:
    text = fmt.table([{"n": "a", "v": 5}, {"n": "long-name", "v": 12345}], [("n", "NAME"), ("v", "VALUE")])
    assert text.splitlines() == ["NAME       VALUE", "a              5", "long-name  12345"]
