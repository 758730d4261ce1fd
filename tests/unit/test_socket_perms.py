"""Only root and the configured group reach the control socket; policy.reload loads only the configured path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from skyguard.daemon.config import Config
from skyguard.daemon.control import ControlError, ControlServer
from tests.conftest import skip_or_fail

CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("denied"); sys.exit(3)
s.settimeout(3)
print("hello" if s.recv(4096) else "closed")
"""


def _as_nobody(path: str) -> str:
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", CONNECT,
                        path], capture_output=True, text=True, timeout=20)
    return r.stdout.strip() or r.stderr.strip()


@pytest.fixture
def sockdir():
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        skip_or_fail("needs root and setpriv to test as another uid")
    d = tempfile.mkdtemp(prefix="sg-perm-")
    os.chmod(d, 0o755)  # the directory is reachable; the socket's own mode decides
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _serve(server: ControlServer, stop: threading.Event) -> threading.Thread:
    def loop():
        while not stop.is_set():
            server.poll(0.05)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("group, expect", [(None, "denied"), ("nogroup", "hello")])
def test_socket_only_root_and_group(sockdir, group, expect):
    path = sockdir / "s.sock"
    server = ControlServer(path, lambda cmd, args: {}, mode=0o660, group=group)
    stop = threading.Event()
    t = _serve(server, stop)
    try:
        st = path.stat()
        assert st.st_mode & 0o777 == 0o660
        assert _as_nobody(str(path)) == expect
    finally:
        stop.set()
        t.join()
        server.close()


def test_policy_reload_refuses_other_paths(tmp_path):
    from skyguard.daemon.main import Daemon
    from skyguard.logs import get_logger

    d = Daemon(Config(interfaces=("lo",), policy=str(tmp_path / "policy.toml")), get_logger("test"))
    with pytest.raises(ControlError) as e:
        d.commands("policy.reload", {"path": "/etc/passwd"})
    assert e.value.code == "forbidden"
