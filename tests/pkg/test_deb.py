"""The Debian package (make deb): lintian, then installed on this machine, used, and purged without a trace.

Builds dist/skyguard_VERSION_all.deb once per session (~5 s), installs it with apt-get (dependencies from Debian
only), checks both programs, the unit, the man pages and a replay of a capture made by the project's generator with the
installed `skyguard replay`, then purges it. Needs root and apt; under SKYGUARD_REQUIRE_BPF=1 (CI) it fails instead of
skipping. It refuses to touch a machine where skyguard is already installed from elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from skyguard import __version__
from tests.conftest import ROOT, bpf_unavailable, skip_or_fail

DEB = ROOT / "dist" / f"skyguard_{__version__}_all.deb"
# Debian's programs only: the package's scripts run /usr/bin/python3, and pyenv's python3 must not stand in for it
DEBIAN_ENV = {**{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")},
              "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
MAN_PAGES = ("skyguard.8", "skyguardd.8", "skyguard.toml.5", "skyguard-policy.5")

pytestmark = pytest.mark.bpf  # root, and BPF for the replay


def run(*cmd: str | Path, timeout: float = 300, cwd: Path | None = None) -> str:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=DEBIAN_ENV, cwd=cwd)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def installed() -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "skyguard"], capture_output=True, text=True)
    return "install ok installed" in r.stdout or "config-files" in r.stdout


@pytest.fixture(scope="session")
def deb() -> Path:
    if os.geteuid() != 0 or not shutil.which("dpkg-buildpackage") or not shutil.which("apt-get"):
        skip_or_fail("the package test needs root, dpkg-buildpackage and apt-get (make setup installs them)")
    run("make", "--no-print-directory", "-C", ROOT, "deb", timeout=600)
    assert DEB.is_file()
    return DEB


@pytest.fixture
def installed_deb(deb: Path) -> Iterator[list[str]]:
    """Installs the package; yields `dpkg -L` taken while installed; purges it (also when the test failed)."""
    if installed():
        skip_or_fail("a skyguard package is already installed here: not replacing it")
    if reason := bpf_unavailable():
        skip_or_fail(reason)
    run("apt-get", "install", "-y", "-q", "--no-install-recommends", deb)
    files = run("dpkg", "-L", "skyguard").split()
    try:
        yield files
    finally:
        if installed():
            run("apt-get", "purge", "-y", "-q", "skyguard")


def test_lintian_reports_no_errors(deb: Path) -> None:
    if not shutil.which("lintian"):
        skip_or_fail("lintian is not installed (make setup installs it)")
    r = subprocess.run(["lintian", "--no-tag-display-limit", str(deb)], capture_output=True, text=True,
                       timeout=300, env=DEBIAN_ENV)
    tags = [ln for ln in r.stdout.splitlines() if ln[:2] in ("E:", "W:", "I:")]
    errors = [t for t in tags if t.startswith("E:")]
    assert not errors, "\n".join(tags)
    assert r.returncode == 0, r.stdout + r.stderr


def test_install_use_purge(installed_deb: list[str], tmp_path: Path) -> None:
    files = installed_deb
    for path in ("/usr/bin/skyguard", "/usr/bin/skyguardd", "/lib/systemd/system/skyguard.service",
                 "/etc/skyguard/skyguard.toml", "/etc/skyguard/policy.toml", "/usr/lib/sysusers.d/skyguard.conf",
                 "/usr/share/bash-completion/completions/skyguard", "/usr/share/skyguard/policies/observe-only.toml",
                 "/usr/lib/python3/dist-packages/skyguard/bpf/skyguard.bpf.c"):
        assert path in files, path
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "skyguard")
    assert "/etc/skyguard/skyguard.toml" in conffiles

    # the programs, from the package (Debian's python3 and python3-* modules), not the work tree
    assert run("/usr/bin/skyguard", "--version", cwd=tmp_path).strip() == f"skyguard {__version__}"
    assert run("/usr/bin/skyguardd", "--version", cwd=tmp_path).strip() == f"skyguardd {__version__}"
    run("/usr/bin/skyguardd", "--check", "--interface", "lo", "--policy", "/etc/skyguard/policy.toml", cwd=tmp_path)

    # the unit as installed, with the paths it names; systemd-analyze works without systemd as PID 1
    if shutil.which("systemd-analyze"):
        run("systemd-analyze", "verify", "/lib/systemd/system/skyguard.service")
    unit = Path("/lib/systemd/system/skyguard.service").read_text()
    assert "ExecStart=/usr/bin/skyguardd --config /etc/skyguard/skyguard.toml" in unit
    assert "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON" in unit and "ProtectSystem=strict" in unit

    for page in MAN_PAGES:
        path = next(f for f in files if f.endswith(f"/{page}.gz"))
        text = run("man", "-l", path)
        assert "NAME" in text and page.rsplit(".", 1)[0] in text

    # a capture from the project's generator (the installed module), replayed by the installed CLI under a
    # shipped policy: the PC-to-phone call is classified skype-out and dropped
    caps = tmp_path / "caps"
    run("/usr/bin/python3", "-m", "skyguard.lab.gen", "--seed", "11", "--out", caps, "--calls", "1",
        "--kinds", "legacy-e2o,modern-p2p", cwd=tmp_path)
    out = run("/usr/bin/skyguard", "replay", "--json", "--policy",
              "/usr/share/skyguard/policies/block-pc-to-phone.toml", *sorted(caps.glob("*.pcap")), cwd=tmp_path)
    result = json.loads(out)
    by_class = {f["class"]: f for f in result["flows"]}
    assert result["policy"] == "block-pc-to-phone"
    assert by_class["skype-out"]["action"] == "drop" and by_class["skype-out"]["dropped"] > 0
    assert by_class["skype-p2p"]["action"] == "pass" and by_class["skype-p2p"]["dropped"] == 0

    run("apt-get", "purge", "-y", "-q", "skyguard")
    assert not installed()
    left = [f for f in files if os.path.lexists(f) and not os.path.isdir(f)]
    assert not left, left
    ours = [f for f in files if "skyguard" in f and os.path.isdir(f)]
    assert not ours, ours  # directories only the package had: /etc/skyguard, /usr/share/skyguard, the module...
    assert not Path("/etc/skyguard").exists()
