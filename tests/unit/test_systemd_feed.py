"""systemd/skyguard-feed.service and .timer: what the update needs and nothing more (`systemd-analyze verify`, the
offline exposure score), and that the unit's command line is one the CLI accepts, writing where the unit lets it."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from skyguard import feed
from skyguard.cli.args import build_parser
from skyguard.cli.client import DEFAULT_SOCKET
from tests.conftest import ROOT
from tests.unit.test_systemd import SYSUSERS, Unit, systemd_analyze

SERVICE = ROOT / "systemd" / "skyguard-feed.service"
TIMER = ROOT / "systemd" / "skyguard-feed.timer"
ENV = ROOT / "systemd" / "skyguard-feed.env"
MAX_EXPOSURE = 2.0  # measured 1.3: network access and the socket group are what the job needs


@pytest.fixture(scope="module")
def service() -> Unit:
    return Unit.parse(SERVICE.read_text())


@pytest.fixture(scope="module")
def timer() -> Unit:
    return Unit.parse(TIMER.read_text())


def _argv(service: Unit) -> list[str]:
    return shlex.split(service.get("Service", "ExecStart") or "")


def test_runs_the_update_as_a_oneshot(service: Unit) -> None:
    assert service.get("Service", "Type") == "oneshot"
    argv = _argv(service)
    assert argv[0].startswith("/") and argv[0].endswith("/bin/skyguard")
    args = build_parser()[0].parse_args(argv[1:])  # a command line the CLI accepts
    assert (args.command, args.feed_cmd) == ("feed", "update")
    assert args.socket_global == DEFAULT_SOCKET
    assert args.output == feed.DEFAULT_FILE and not args.no_reload
    assert "network-online.target" in service.words("Unit", "After")
    assert "network-online.target" in service.words("Unit", "Wants")


def test_writes_only_its_state_directory(service: Unit) -> None:
    argv = _argv(service)
    out = Path(argv[argv.index("--output") + 1])
    assert service.get("Service", "StateDirectory") == "skyguard"
    assert out.parent == Path("/var/lib") / "skyguard"  # the temporary file goes beside it: a rename, same fs
    assert service.get("Service", "ProtectSystem") == "strict"
    assert not service.all("Service", "ReadWritePaths")
    # the daemon (root without CAP_DAC_OVERRIDE) must be able to enter the directory
    assert int(service.get("Service", "StateDirectoryMode") or "0755", 8) & 0o005 == 0o005


def test_no_root_no_capabilities_socket_group(service: Unit) -> None:
    assert service.get("Service", "DynamicUser") == "yes"
    assert service.get("Service", "CapabilityBoundingSet") == ""
    assert service.get("Service", "AmbientCapabilities") == ""
    assert service.get("Service", "NoNewPrivileges") == "yes"
    group = service.get("Service", "SupplementaryGroups")
    entries = [ln.split() for ln in SYSUSERS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ["g", group, "-"] in [e[:3] for e in entries]  # the control socket's group
    assert service.get("Service", "PrivateUsers") in (None, "no")  # the group would not be mapped in a user ns


def test_sockets_and_syscalls(service: Unit) -> None:
    assert service.words("Service", "RestrictAddressFamilies") == {"AF_UNIX", "AF_INET", "AF_INET6"}
    filters = service.all("Service", "SystemCallFilter")
    assert filters[0] == "@system-service" and any(f.startswith("~") and "@privileged" in f for f in filters)


def test_url_comes_from_an_optional_environment_file(service: Unit) -> None:
    assert service.get("Service", "EnvironmentFile") == "-/etc/skyguard/feed.env"
    text = ENV.read_text()
    assert re.search(r"^#SKYGUARD_FEED_URL=" + re.escape(feed.DEFAULT_URL) + "$", text, re.M)


def test_timer(timer: Unit) -> None:
    assert timer.get("Timer", "OnCalendar") == "daily"
    assert timer.get("Timer", "Persistent") == "yes"
    assert timer.get("Timer", "RandomizedDelaySec")
    assert "timers.target" in timer.words("Install", "WantedBy")
    assert timer.get("Timer", "Unit") is None  # the service of the same name


def _copies(tmp_path: Path) -> tuple[Path, Path]:
    """The units with ExecStart pointing at an existing executable (verify checks that the binary exists)."""
    text = SERVICE.read_text()
    exe = _argv(Unit.parse(text))[0]
    stub = tmp_path / "skyguard"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    svc = tmp_path / SERVICE.name
    svc.write_text(text.replace(f"ExecStart={exe}", f"ExecStart={stub}"))
    tmr = tmp_path / TIMER.name
    tmr.write_text(TIMER.read_text())
    return svc, tmr


def test_verify_is_clean(tmp_path: Path) -> None:
    exe = systemd_analyze()
    svc, tmr = _copies(tmp_path)
    r = subprocess.run([exe, "verify", str(svc), str(tmr)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [ln for ln in (r.stdout + r.stderr).splitlines() if "skyguard-feed" in ln] == []


def test_exposure_score(tmp_path: Path) -> None:
    exe = systemd_analyze()
    svc, _tmr = _copies(tmp_path)
    r = subprocess.run([exe, "security", "--offline=true", "--no-pager", str(svc)], capture_output=True, text=True,
                       timeout=60)
    m = re.search(r"Overall exposure level for skyguard-feed\.service: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    print(f"systemd-analyze security exposure: {m.group(1)}")
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout
