"""sd_notify datagrams to a socket the test owns."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from skyguard.daemon.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2)
    yield path, sock
    sock.close()


def recv(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_status_watchdog_stopping(listener) -> None:
    path, sock = listener
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    assert n.enabled
    assert n.ready("attached to eth0")
    assert recv(sock) == {"READY": "1", "STATUS": "attached to eth0"}
    assert n.status("42 flows\n3 classified")  # one line: a newline would start a new assignment
    assert recv(sock) == {"STATUS": "42 flows 3 classified"}
    assert n.watchdog()
    assert recv(sock) == {"WATCHDOG": "1"}
    assert n.stopping()
    assert recv(sock) == {"STOPPING": "1"}
    n.close()


def test_reloading_carries_monotonic_usec(listener) -> None:
    path, sock = listener
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading("reloading policy")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg = recv(sock)
    assert msg["RELOADING"] == "1" and msg["STATUS"] == "reloading policy"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after
    assert n.ready()
    assert recv(sock) == {"READY": "1"}


def test_abstract_socket_address() -> None:
    name = f"skyguard-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert recv(sock) == {"READY": "1"}
    finally:
        sock.close()


def test_no_op_without_notify_socket(tmp_path: Path) -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False and n.reloading() is False
    assert n.watchdog_interval() is None
    # a socket that has gone away is not fatal either
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert gone.enabled and gone.ready() is False


def test_reads_os_environ_by_default(listener, monkeypatch: pytest.MonkeyPatch) -> None:
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert Notifier().ready()
    assert recv(sock) == {"READY": "1"}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", **env}).watchdog_interval() == expected
