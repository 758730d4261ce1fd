"""`skyguard` CLI against a fake daemon on a real Unix socket: human and --json output, exit codes."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skyguard import __version__, proto
from skyguard.cli import fmt
from skyguard.cli import main as cli
from skyguard.daemon.control import ControlServer
from skyguard.proto import ControlError

FLOWS = [
    proto.example_row(),
    proto.example_row(a="[2001:db8::1]:5000", b="[2603:1063::9]:3479", vlan=12, reason="pstn-prefix", packets=7,
                      bytes=700, dropped=6, first_ns=5, last_ns=9, **{"class": "skype-out", "action": "drop"}),
]


class FakeDaemon:
    """The real socket server with replies in the daemon's shapes (proto's examples) and its error codes; the
    daemon's own handlers are checked against the same shapes in test_commands.py."""

    def __init__(self, path: Path) -> None:
        self.calls: list[tuple[str, dict]] = []
        # its own quiet logger: the server thread can log a client's drop after pytest closed the stream that the
        # root logger's handler writes to ("--- Logging error ---" in the output, nothing failing)
        log = logging.getLogger("tests.fake-daemon")
        log.propagate = False
        log.addHandler(logging.NullHandler())
        self.server = ControlServer(path, self.handle, logger=log)
        self.path = path
        self._stop = threading.Event()
        self._pending: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def handle(self, cmd: str, args: dict) -> Any:
        self.calls.append((cmd, args))
        args = proto.validate(cmd, args)  # the daemon's argument checks, so a request it would refuse fails here
        if cmd in ("status", "stats", "policy.show"):
            return proto.example(cmd)
        if cmd == "flows":
            rows = [f for f in FLOWS if args.get("class") in (None, f["class"])]
            return proto.example("flows", flows=rows[: args.get("limit") or None], total=len(rows))
        if cmd == "flow":
            if args["a"] == FLOWS[0]["a"]:
                return proto.example("flow")
            raise ControlError(proto.NOT_FOUND, f"no flow {args.get('proto', 'udp')} {args['a']} <-> {args['b']}")
        if cmd == "policy.check":
            return proto.example("policy.check", name="checked-by-daemon", path=args["path"])
        if cmd == "policy.reload":
            return proto.example("policy.reload", name="block-pc-to-phone")
        if cmd == "block":
            return proto.example("block", blocked=args["prefix"], flows=2,
                                 expires_ns=int(args["expire"] * 1e9) if "expire" in args else 0)
        if cmd == "unblock":
            raise ControlError(proto.NOT_FOUND, f"{args['prefix']} is not blocked")
        if cmd == "blocks":
            later = 2_000_000_000_000_000_000  # 2033: an expiry the table shows as a date
            return proto.example("blocks", blocks=[{"prefix": "10.1.0.0/16", "expires_ns": 0},
                                                   {"prefix": "2001:db8::/32", "expires_ns": later}])
        raise ControlError(proto.UNKNOWN_COMMAND, cmd)

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
    assert "interfaces" in out and "name=eth0" in out and "policy.name" in out and "observe-only" in out
    sock = str(daemon.path)
    for argv in (("--socket", sock, "--json", "status"), ("status", "--json", "--socket", sock)):
        rc, out, _ = run(*argv)
        assert rc == 0 and json.loads(out) == daemon.handle("status", {})


def test_socket_from_environment(daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYGUARD_SOCKET", str(daemon.path))
    rc, out, _ = run("stats", "--json")
    assert rc == 0 and json.loads(out) == proto.example("stats")


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
    assert rc == 1 and err == "skyguard: not-found: no flow udp [2001:db8::1]:5000 <-> [2603:1063::9]:3479\n"
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
    assert rc == 0 and json.loads(out) == {"ok": True, "name": "checked-by-daemon",
                                           "path": str(Path("rel.toml").absolute())}
    rc, out, _ = run("--socket", str(daemon.path), "policy", "check", "--daemon", "rel.toml")
    assert rc == 0 and out == "rel.toml: ok (policy 'checked-by-daemon')\n"
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
    assert rc == 1 and json.loads(out) == {"file": str(bad), "ok": False, "errors": [
        {"line": 3, "reason": "class.skype-out.action: unknown action 'explode' (expected pass | drop | mark)"}]}


def test_block_and_unblock(daemon: FakeDaemon) -> None:
    rc, out, _ = run("--socket", str(daemon.path), "block", "10.1.0.0/16", "--expire", "30")
    assert rc == 0 and out.strip() == "blocked 10.1.0.0/16 for 30 s (2 live flows caught)"
    assert daemon.calls[-1] == ("block", {"prefix": "10.1.0.0/16", "expire": 30.0})
    rc, out, _ = run("--socket", str(daemon.path), "--json", "block", "2001:db8::1")
    assert rc == 0 and json.loads(out) == {"blocked": "2001:db8::1/128", "flows": 2, "expires_ns": 0}
    rc, out, err = run("--socket", str(daemon.path), "unblock", "192.0.2.1")
    assert rc == 1 and out == "" and err.strip() == "skyguard: not-found: 192.0.2.1/32 is not blocked"
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
    seen: dict[str, Any] = {}
    replay = types.ModuleType("skyguard.offline.replay")
    replay.main = lambda args: (seen.setdefault("replay", args), 0)[1]  # type: ignore[attr-defined]
    lab = types.ModuleType("skyguard.lab.demo")
    lab.main = lambda args: (seen.setdefault("lab", args), 3)[1]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "skyguard.offline.replay", replay)
    monkeypatch.setitem(sys.modules, "skyguard.lab.demo", lab)
    rc, _, _ = run("--json", "replay", "a.pcap", "b.pcapng", "--policy", "p.toml")
    r = seen["replay"]
    assert rc == 0 and (r.captures, r.policy, r.json, r.log_all) == (["a.pcap", "b.pcapng"], "p.toml", True, False)
    rc, _, _ = run("lab", "--seed", "3", "--keep-logs")
    r = seen["lab"]
    assert rc == 3 and (r.seed, r.keep_logs, r.json, r.speed) == (3, True, False, 1.0)


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


# ---------------------------------------------------------------------------------------------------------------------
# One parser per command, --json everywhere, --version


def _help(*argv: str) -> str:
    rc, out, _ = run(*argv, "--help")
    assert rc == 0
    return " ".join(out.split())  # argparse wraps to the terminal: compare words


def test_replay_and_lab_help_are_their_own() -> None:
    from skyguard.cli.args import LAB_DESCRIPTION, REPLAY_DESCRIPTION, lab_parser, replay_parser

    text = _help("replay")
    assert "--socket" not in text and "pcap or pcapng files" in text and REPLAY_DESCRIPTION in text
    assert replay_parser().format_help().split("options:")[1].split() == \
        text.split("options:")[1].split()  # the module's own entry point offers exactly the same
    text = _help("lab")
    assert "--socket" not in text and LAB_DESCRIPTION in text
    assert LAB_DESCRIPTION.endswith("Needs root.")  # a whole sentence, not the docstring's cut first line
    assert lab_parser().format_help().split("options:")[1].split() == text.split("options:")[1].split()


def test_daemon_commands_help_comes_from_the_command_table() -> None:
    top = _help()
    for name in ("status", "flows", "block", "blocks"):
        assert proto.BY_NAME[name].help in top
    assert proto.BY_NAME["block"].arg("prefix").help in _help("block")


def test_every_command_has_json() -> None:
    from skyguard.cli.args import build_parser

    _parser, commands = build_parser()
    assert {"status", "stats", "flows", "flow", "events", "policy show", "policy check", "policy reload", "block",
            "unblock", "blocks", "replay", "lab"} <= set(commands)
    for key, sp in commands.items():
        if key != "policy":
            assert "--json" in sp._option_string_actions, key


@pytest.mark.parametrize("argv", [["status"], ["stats"], ["flows"], ["flow", "udp", "192.168.1.6:50010",
                                                                        "52.114.250.5:3478"],
                                  ["policy", "show"], ["policy", "reload"], ["blocks"], ["block", "10.1.0.0/16"]])
def test_json_after_the_command_prints_the_reply(daemon: FakeDaemon, argv: list[str]) -> None:
    rc, out, _ = run(*argv, "--json", "--socket", str(daemon.path))
    assert rc == 0 and isinstance(json.loads(out), dict)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from skyguard.daemon.config import parse_daemon_args

    assert run("--version") == (0, f"skyguard {__version__}\n", "")
    with pytest.raises(SystemExit) as ei:
        parse_daemon_args(["--version"])
    assert ei.value.code == 0 and capsys.readouterr().out == f"skyguardd {__version__}\n"


# ---------------------------------------------------------------------------------------------------------------------
# Usage errors name the command


@pytest.mark.parametrize("cmd", ["block", "unblock"])
def test_block_refuses_host_bits_like_the_policy_checker(daemon: FakeDaemon, cmd: str) -> None:
    rc, out, err = run("--socket", str(daemon.path), cmd, "10.1.2.3/8")
    assert rc == 2 and out == "" and not daemon.calls
    assert err.startswith(f"usage: skyguard {cmd} ")
    assert "'10.1.2.3/8' has host bits set; did you mean '10.0.0.0/8'?" in err


def test_bad_keyspec_prints_the_flow_usage(daemon: FakeDaemon) -> None:
    rc, out, err = run("--socket", str(daemon.path), "flow", "udp", "1.2.3.4", "6.7.8.9:1")
    assert rc == 2 and out == "" and not daemon.calls
    assert err.startswith("usage: skyguard flow ") and "usage: skyguard [" not in err
    assert err.endswith("skyguard: not an endpoint (ADDR:PORT or [V6ADDR]:PORT): '1.2.3.4'\n")


# ---------------------------------------------------------------------------------------------------------------------
# policy check


def test_policy_check_reports_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[class.skype-out]\naction = "explode"\n[exempt]\nprefixes = ["10.1.2.3/8"]\n'
                   "typo = 1\n")
    rc, out, err = run("policy", "check", str(bad))
    assert rc == 1 and out == ""
    assert [line.split(": ", 1)[0] for line in err.splitlines()] == [f"{bad}:3", f"{bad}:5", f"{bad}:6"]
    rc, out, _ = run("policy", "check", "--json", str(bad))
    assert [e["line"] for e in json.loads(out)["errors"]] == [3, 5, 6]


def test_policy_check_missing_file_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    rc, out, err = run("policy", "check", str(missing))
    assert rc == 1 and out == "" and err == f"{missing}: no such file: the policy file does not exist\n"


def test_policy_check_of_the_daemon_config_says_what_it_is(tmp_path: Path) -> None:
    cfg = tmp_path / "skyguard.toml"
    cfg.write_text('interfaces = ["eth0"]\nxdp_mode = "auto"\npolicy = "policy.toml"\n')
    rc, _, err = run("policy", "check", str(cfg))
    want = f"{cfg}:1: this is skyguardd's config file (it sets interfaces, xdp_mode, policy)"
    assert rc == 1 and err.startswith(want)
    assert "skyguardd --config FILE --check" in err


# ---------------------------------------------------------------------------------------------------------------------
# blocks


def test_blocks_human_and_json(daemon: FakeDaemon) -> None:
    rc, out, _ = run("--socket", str(daemon.path), "blocks")
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == ["PREFIX", "EXPIRES"]
    assert lines[1].split() == ["10.1.0.0/16", "never"]
    assert lines[2].startswith("2001:db8::/32") and "in " in lines[2] and "2033-05-18T03:33:20" in lines[2]
    rc, out, _ = run("--socket", str(daemon.path), "blocks", "--json")
    assert rc == 0 and json.loads(out) == daemon.handle("blocks", {})
    assert daemon.calls[-1] == ("blocks", {})


def test_flows_footer_when_the_daemon_matched_more(daemon: FakeDaemon) -> None:
    rc, out, _ = run("--socket", str(daemon.path), "flows", "--limit", "1")
    assert rc == 0 and out.splitlines()[-1] == "(1 of 2 flows; --limit N for more)"
