"""skyguardd before its loop: what a failed start says it left behind, and `--check`. No BPF: the kernel is a stub."""

from __future__ import annotations

import socket
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from skyguard.daemon import main as dmain
from skyguard.daemon.config import Config
from skyguard.daemon.control import ControlServer
from skyguard.kernel.ifaces import InterfaceError


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, msg: str, **kw: Any) -> None:
        self.lines.append((level, msg, kw))

    def info(self, msg: str, **kw: Any) -> None:
        self._add("info", msg, **kw)

    def error(self, msg: str, **kw: Any) -> None:
        self._add("error", msg, **kw)

    warning = debug = info


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text('name = "t"\n')
    return p


def _failing_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start gets past the pin-path check and fails where the program would be compiled and the maps pinned."""
    mod = types.ModuleType("skyguard.kernel.loader")

    def kernel(**_kw: Any) -> None:
        raise OSError("BPF program did not compile")

    mod.Kernel = kernel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "skyguard.kernel.loader", mod)
    monkeypatch.setattr(dmain, "ensure_bpffs", lambda: False)  # never mount anything from a unit test


def _abort_line(d: dmain.Daemon, log: _Log, e: Exception) -> tuple[str, dict[str, Any]]:
    d.abort(e)
    errors = [(m, kw) for lvl, m, kw in log.lines if lvl == "error"]
    assert len(errors) == 1
    assert not any("stays attached" in m for _l, m, _k in log.lines if m.startswith("stopping"))
    return errors[0]


def test_failed_start_before_the_pins_says_nothing_was_touched(policy: Path, tmp_path: Path) -> None:
    log = _Log()
    d = dmain.Daemon(Config(interfaces=("sg-missing0",), policy=str(policy), pin_path=str(tmp_path / "pins"),
                            socket=tmp_path / "sock"), log)
    with pytest.raises(InterfaceError) as ei:
        d.start()
    msg, kw = _abort_line(d, log, ei.value)
    assert msg == "start failed: nothing attached; pin path not touched"
    assert kw["attached"] == [] and kw["pins_existed_before"] is None


def test_failed_start_says_whether_pins_existed_before(policy: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_kernel(monkeypatch)
    pins = tmp_path / "pins"
    pins.mkdir()
    (pins / "flows").write_text("")  # an earlier daemon's pinned map
    log = _Log()
    d = dmain.Daemon(Config(interfaces=("lo",), policy=str(policy), pin_path=str(pins), socket=tmp_path / "sock"), log)
    with pytest.raises(OSError) as ei:
        d.start()
    msg, kw = _abort_line(d, log, ei.value)
    assert msg == f"start failed: nothing attached; pins under {pins} existed before this start and stay"
    assert kw["pins_existed_before"] is True and "did not compile" in kw["error"]

    empty = tmp_path / "fresh"
    log = _Log()
    d = dmain.Daemon(Config(interfaces=("lo",), policy=str(policy), pin_path=str(empty), socket=tmp_path / "sock"), log)
    with pytest.raises(OSError) as ei:
        d.start()
    msg, kw = _abort_line(d, log, ei.value)
    assert msg == f"start failed: nothing attached; no pins under {empty}"
    assert kw["pins_existed_before"] is False


def test_check_verdicts(policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "skyguard.toml"
    cfg.write_text(f'interfaces = ["eth0"]\npolicy = "{policy}"\n')
    assert dmain.main(["--config", str(cfg), "--check"]) == 0
    assert capsys.readouterr().out == f"{cfg}: ok (interfaces eth0; policy 't' from {policy})\n"
    policy.write_text('name = "t"\n[class.skype-out]\naction = "explode"\nlog = 1\n')
    assert dmain.main(["--config", str(cfg), "--check"]) == 1
    err = capsys.readouterr().err
    assert [line.split(": ")[0] for line in err.splitlines()] == [f"{policy}:3", f"{policy}:4"]
    cfg.write_text('interfaces = ["eth0"]\npolicy = "p.toml"\nwindow = 0\n')
    assert dmain.main(["--config", str(cfg), "--check"]) == 1
    assert capsys.readouterr().err.startswith(f"skyguardd: {cfg}:3: window must be")


def test_a_second_daemon_stops_at_the_live_socket_before_touching_the_kernel(policy: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A second skyguardd started by mistake must not compile, pin or attach: the running one's socket stops it."""
    built: list[dict] = []
    mod = types.ModuleType("skyguard.kernel.loader")
    mod.Kernel = lambda **kw: built.append(kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "skyguard.kernel.loader", mod)
    monkeypatch.setattr(dmain, "ensure_bpffs", lambda: False)
    sock = tmp_path / "sock"
    running = ControlServer(sock, lambda _c, _a: None)
    try:
        log = _Log()
        pins = tmp_path / "pins"
        d = dmain.Daemon(Config(interfaces=("lo",), policy=str(policy), pin_path=str(pins), socket=sock), log)
        with pytest.raises(OSError) as ei:
            d.start()
        assert "in use by a running server" in str(ei.value)
        msg, _kw = _abort_line(d, log, ei.value)
        assert msg == "start failed: nothing attached; pin path not touched"
        assert built == [] and not pins.exists()
        assert sock.is_socket(), "the failed start removed the running daemon's socket"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(sock))  # still bound and listening: the running daemon keeps its clients
    finally:
        running.close()


def test_a_pin_of_another_layout_stops_the_start_with_the_loaders_message(policy: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The loader's refusal (kernel/pins.py) is the operator's error message and exit 1, not a traceback."""
    from skyguard.kernel.pins import PinError

    mod = types.ModuleType("skyguard.kernel.loader")

    def kernel(**_kw: Any) -> None:
        raise PinError("pinned map 'flows' (/sys/fs/bpf/x/flows) does not match this build: ... remove that pin")

    mod.Kernel = kernel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "skyguard.kernel.loader", mod)
    monkeypatch.setattr(dmain, "ensure_bpffs", lambda: False)
    cfg = tmp_path / "skyguard.toml"
    cfg.write_text(f'interfaces = ["lo"]\npolicy = "{policy}"\npin_path = "{tmp_path / "pins"}"\n'
                   f'socket = "{tmp_path / "sock"}"\n')
    assert dmain.main(["--config", str(cfg)]) == 1
    assert capsys.readouterr().err.startswith("skyguardd: pinned map 'flows' (/sys/fs/bpf/x/flows) does not match")
