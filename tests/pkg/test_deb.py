"""The Debian package (make deb): lintian, then installed on this machine, used, and purged without a trace.

Builds dist/skyguard_VERSION_all.deb once per session (~5 s), installs it with apt-get (dependencies from Debian
only), checks both programs, the unit, the man pages and a replay of a capture made by the project's generator with the
installed `skyguard replay`, then purges it. Then purges beside a foreign XDP program skyguard chained (Debian's
xdp-filter): the purge puts that very program back, or, where the kernel refuses it, leaves skyguard (and its chain)
in place. Needs root and apt; under SKYGUARD_REQUIRE_BPF=1 (CI) it fails instead of skipping. It refuses to touch a
machine where skyguard is already installed from elsewhere, or whose default pin path is in use.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from skyguard import __version__
from skyguard.kernel.bpfobj import prog_info_by_id
from skyguard.kernel.foreign import pinned_chain
from skyguard.kernel.ifaces import XDP_FLAGS_DRV_MODE
from tests.conftest import ROOT, bpf_unavailable, skip_or_fail
from tests.e2e.conftest import wait_for
from tests.e2e.pairnet import Pair, filter_hits, filtered_pair, until

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


# ---- purge beside a chained foreign XDP program ----------------------------------------------------------------------
PIN_PATH = Path("/sys/fs/bpf/skyguard")  # the default pin path, the one the package's postrm knows
PROG_NAME = "xdp_skyguard"
N = 20


@pytest.fixture
def chain_rig(request: pytest.FixtureRequest) -> Pair:
    """Two namespaces joined by a veth pair (tests/e2e/pairnet.py, unique names, removed even on failure), Debian's
    xdp-filter on b's end dropping UDP port 7777. Made before the package is installed and removed after its purge."""
    if os.geteuid() != 0 or not shutil.which("xdp-filter") or not shutil.which("nsenter"):
        skip_or_fail("the chained purge test needs root, xdp-filter (Debian xdp-tools) and nsenter")
    if PIN_PATH.exists():  # a real skyguard's pins (and chained programs): never this test's to remove
        pytest.fail(f"{PIN_PATH} exists: a skyguard on this machine uses the default pin path; the test would "
                    "purge it", pytrace=False)
    request.addfinalizer(lambda: shutil.rmtree(PIN_PATH, ignore_errors=True))  # last: after the namespaces are gone
    return filtered_pair(request)


def _udp_through(p: Pair) -> dict[int, int]:
    """N datagrams from a to b's ports 7777 (xdp-filter drops) and 8888 (passes): what arrived at each."""
    rx = {port: p.receiver(port) for port in (7777, 8888)}
    got = dict.fromkeys(rx, 0)
    p.send(p.addr_b, 7777, b"f" * 100, N, sport=50011)
    p.send(p.addr_b, 8888, b"o" * 100, N, sport=50012)

    def all_passed() -> bool:
        for port, s in rx.items():
            got[port] += len(Pair.drain(s))
        return got[8888] >= N

    until(all_passed, f"{N} datagrams to port 8888")
    for port, s in rx.items():  # a late one to port 7777 would show now
        got[port] += len(Pair.drain(s))
        s.close()
    return got


def _skyguard_on(p: Pair) -> bool:
    return f"name {PROG_NAME}" in p.sh_b("ip", "-o", "-d", "link", "show").stdout



def _start_skyguardd(p: Pair, extra: str = "") -> subprocess.Popen:
    """The installed skyguardd in b's network namespace, chaining, on_stop = keep, default pin path (nsenter keeps the
    host's bpffs: the pins land in PIN_PATH, where the postrm looks)."""
    cfg = p.tmp / "skyguard.toml"
    cfg.write_text(f'interfaces = ["{p.if_b}"]\npolicy = "/etc/skyguard/policy.toml"\nsocket = "{p.tmp}/sg.sock"\n'
                   f'log_format = "json"\nforeign_xdp = "chain"\non_stop = "keep"\n{extra}')
    log = p.tmp / "skyguardd.log"
    with open(log, "w") as out:
        d = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{p.ns_b}", "/usr/bin/skyguardd", "--config", str(cfg)],
                             stdout=out, stderr=subprocess.STDOUT, env=DEBIAN_ENV, cwd=p.tmp)
    p.procs.append(d)  # killed by the rig's clean-up whatever happens
    wait_for(lambda: d.poll() is not None or "skyguardd ready" in log.read_text(), "skyguardd ready", 120)
    assert d.poll() is None, f"skyguardd exited {d.returncode}:\n{log.read_text()[-3000:]}"
    return d


def _purge_in(p: Pair) -> subprocess.CompletedProcess:
    """apt-get purge run in b's network namespace: the namespace of the router's interfaces."""
    r = subprocess.run(["nsenter", f"--net=/var/run/netns/{p.ns_b}", "apt-get", "purge", "-y", "-q", "skyguard"],
                       capture_output=True, text=True, timeout=300, env=DEBIAN_ENV)
    assert r.returncode == 0, f"purge: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert not installed()
    return r


def test_purge_puts_back_the_chained_program(chain_rig: Pair, installed_deb: list[str]) -> None:
    """foreign_xdp = chain, on_stop = keep, then a purge: xdp-filter's very program is back and filtering, skyguard's is
    gone, and so are the pins (debian/skyguard.postrm)."""
    p = chain_rig
    filt = p.xdp_id()
    assert filt and prog_info_by_id(filt).name.startswith("xdpfilt_")
    ifindex = json.loads(p.sh_b("ip", "-j", "link", "show", p.if_b).stdout)[0]["ifindex"]

    d = _start_skyguardd(p)
    own = p.xdp_id()
    assert own != filt and _skyguard_on(p)
    assert pinned_chain(str(PIN_PATH)).get(ifindex) == (filt, XDP_FLAGS_DRV_MODE)
    before = filter_hits(p)
    assert _udp_through(p) == {7777: 0, 8888: N}  # skyguard (observe-only) passes all; xdp-filter behind it drops
    assert filter_hits(p) - before == N
    d.send_signal(signal.SIGTERM)
    assert d.wait(60) == 0
    assert p.xdp_id() == own  # on_stop = keep: the chain stays in force with no daemon

    r = _purge_in(p)
    assert p.xdp_id() == filt, r.stdout + r.stderr  # xdp-filter's very program, in the mode it had
    assert f"detached the XDP program from {p.if_b}; the program it chained, id {filt}, is back in native mode" \
        in r.stdout
    assert not _skyguard_on(p)
    assert prog_info_by_id(own) is None  # skyguard's program is gone from the kernel, not just from the interface
    assert not PIN_PATH.exists()
    before = filter_hits(p)
    assert _udp_through(p) == {7777: 0, 8888: N}  # and it filters: port 7777 dropped, 8888 passed
    assert filter_hits(p) - before == N
    print(f"xdp-filter prog {filt}, skyguard prog {own} on {p.if_b} (ifindex {ifindex}); after purge: {p.xdp_id()}")


def test_purge_keeps_skyguard_where_the_chained_program_cannot_go_back(chain_rig: Pair,
                                                                       installed_deb: list[str]) -> None:
    """skyguard in generic mode chained xdp-filter's native program; then the peer's MTU grew past what a
    single-buffer program may run at in native mode on veth, so xdp-filter cannot go back. The purge says so and
    leaves skyguard attached, still handing xdp-filter its packets, with the pins its chain needs."""
    p = chain_rig
    filt = p.xdp_id()
    d = _start_skyguardd(p, 'xdp_mode = "generic"\n')
    own = p.xdp_id()
    assert own != filt and _skyguard_on(p)
    d.send_signal(signal.SIGTERM)
    assert d.wait(60) == 0
    p.sh_a("ip", "link", "set", p.if_a, "mtu", "9000")  # native XDP on veth checks the peer's MTU

    r = _purge_in(p)
    assert p.xdp_id() == own, r.stdout + r.stderr
    said = r.stdout + r.stderr  # apt runs dpkg on a pty: the maintainer script's stderr arrives on apt's stdout
    assert f"could not put back XDP program {filt} on {p.if_b} (Numerical result out of range)" in said
    assert "skyguard's program stays attached there" in said
    assert (PIN_PATH / "chain").exists() and (PIN_PATH / "chained").exists()
    before = filter_hits(p)
    assert _udp_through(p) == {7777: 0, 8888: N}  # the filter still works, behind skyguard
    assert filter_hits(p) - before == N
    print(f"xdp-filter prog {filt}; restore refused, skyguard prog {own} still on {p.if_b}:",
          next(ln for ln in said.splitlines() if "could not put back" in ln))
