"""systemd/skyguard.service: required directives, `systemd-analyze verify`, exposure score, and (with BPF) that the
unit's capability bounding set is enough to compile, load, attach and pin an XDP program with bcc."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, skip_or_fail

UNIT = ROOT / "systemd" / "skyguard.service"
SYSUSERS = ROOT / "systemd" / "skyguard.sysusers"
MAX_EXPOSURE = 4.5
NEEDED_CAPS = {"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"}


@dataclass
class Unit:
    """A unit file as section -> key -> every assignment in order (systemd allows repeated keys)."""

    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Unit:
        unit = cls()
        section = None
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                unit.sections.setdefault(section, {})
                continue
            assert section is not None, f"assignment outside a section: {raw!r}"
            assert "=" in line, f"not an assignment: {raw!r}"
            key, value = (s.strip() for s in line.split("=", 1))
            unit.sections[section].setdefault(key, []).append(value)
        return unit

    def all(self, section: str, key: str) -> list[str]:
        return self.sections.get(section, {}).get(key, [])

    def get(self, section: str, key: str) -> str | None:
        values = self.all(section, key)
        return values[-1] if values else None

    def words(self, section: str, key: str) -> set[str]:
        return {w for v in self.all(section, key) for w in v.split()}


@pytest.fixture(scope="module")
def unit() -> Unit:
    return Unit.parse(UNIT.read_text())


def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        skip_or_fail("systemd-analyze is missing (apt-get install systemd)")
    return exe


def verifiable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an existing executable (verify checks that the binary exists)."""
    text = UNIT.read_text()
    exe = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert exe, "no ExecStart="
    stub = tmp_path / "skyguardd"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = text.replace(exe.group(1), str(stub))
    reload = re.search(r"^ExecReload=(\S+)", text, re.M)
    if reload:  # the CLI that ExecReload runs must exist as well
        cli = tmp_path / "skyguard"
        cli.write_text("#!/bin/sh\nexit 0\n")
        cli.chmod(0o755)
        text = text.replace(f"ExecReload={reload.group(1)}", f"ExecReload={cli}")
    copy = tmp_path / "skyguard.service"
    copy.write_text(text)
    return copy


# --- directives -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30"),
        ("Restart", "on-failure"),
        ("RestartSec", "2"),
        ("ExecReload", "/usr/local/bin/skyguard --socket /run/skyguard/skyguard.sock policy reload"),
        ("KillMode", "mixed"),
        ("ProtectSystem", "strict"),
        ("RuntimeDirectory", "skyguard"),
        ("RuntimeDirectoryMode", "0750"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("SystemCallArchitectures", "native"),
        ("LockPersonality", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictNamespaces", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("UMask", "0077"),
    ],
)
def test_service_directive(unit: Unit, key: str, value: str) -> None:
    assert unit.get("Service", key) == value


def test_exec_start_runs_the_daemon_with_the_system_config(unit: Unit) -> None:
    argv = (unit.get("Service", "ExecStart") or "").split()
    assert argv[0].endswith("/bin/skyguardd") and argv[0].startswith("/")
    assert argv[1:] == ["--config", "/etc/skyguard/skyguard.toml"]


def test_only_the_measured_capabilities(unit: Unit) -> None:
    assert unit.words("Service", "CapabilityBoundingSet") == NEEDED_CAPS
    # root with a bounding set: ambient capabilities would be pointless, and no CAP_SYS_ADMIN anywhere
    assert not unit.all("Service", "AmbientCapabilities")
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assert "CAP_SYS_ADMIN" not in unit.words("Service", key)


def test_bpffs_stays_writable(unit: Unit) -> None:
    assert "/sys/fs/bpf" in unit.words("Service", "ReadWritePaths")
    # systemd's ProtectKernelTunables= table lists /sys/fs/bpf read-only, and read-only wins over ReadWritePaths=
    assert unit.get("Service", "ProtectKernelTunables") in (None, "no", "false")
    # ProtectKernelModules= hides /usr/lib/modules, where bcc finds the kernel headers
    assert unit.get("Service", "ProtectKernelModules") in (None, "no", "false")
    assert "/sys/fs/bpf" in unit.words("Unit", "RequiresMountsFor")


def test_socket_families(unit: Unit) -> None:
    assert unit.words("Service", "RestrictAddressFamilies") == {"AF_UNIX", "AF_NETLINK"}


def test_syscall_filter_allows_bpf_last(unit: Unit) -> None:
    """Assignments apply in order: the service set, minus @privileged, plus bpf(2) (which lives in @privileged)."""
    filters = unit.all("Service", "SystemCallFilter")
    assert filters[0].split()[0] == "@system-service"
    assert any(f.startswith("~") and "@privileged" in f for f in filters)
    last_positive = [f for f in filters if not f.startswith("~")][-1]
    assert "bpf" in last_positive.split()
    assert filters.index(last_positive) > max(i for i, f in enumerate(filters) if f.startswith("~"))
    assert "perf_event_open" not in " ".join(filters)


def test_socket_group_is_declared_by_sysusers(unit: Unit) -> None:
    group = unit.get("Service", "Group")
    assert group
    entries = [ln.split() for ln in SYSUSERS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ["g", group, "-"] in [e[:3] for e in entries]


def test_installable(unit: Unit) -> None:
    assert "multi-user.target" in unit.words("Install", "WantedBy")


# --- systemd-analyze --------------------------------------------------------------------------------------------------


def test_verify_is_clean(tmp_path: Path) -> None:
    exe = systemd_analyze()
    copy = verifiable_copy(tmp_path)
    r = subprocess.run([exe, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    complaints = [ln for ln in (r.stdout + r.stderr).splitlines() if "skyguard" in ln]
    assert r.returncode == 0, r.stdout + r.stderr
    assert complaints == []


def test_exposure_score(tmp_path: Path) -> None:
    exe = systemd_analyze()
    copy = verifiable_copy(tmp_path)
    r = subprocess.run(
        [exe, "security", "--offline=true", "--no-pager", str(copy)], capture_output=True, text=True, timeout=60
    )
    m = re.search(r"Overall exposure level for skyguard\.service: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    score = float(m.group(1))
    print(f"systemd-analyze security exposure: {score}")
    assert score <= MAX_EXPOSURE, r.stdout


# --- capabilities, measured (root + BPF) ------------------------------------------------------------------------------

LOADER = textwrap.dedent(
    r'''
    """Compile, load, attach (generic XDP) and pin an XDP program; optionally under prctl(PR_SET_MDWE)."""
    import ctypes, os, sys
    from bcc import BPF
    from bcc.libbcc import lib

    mode, dev, pin, src = sys.argv[1:5]
    if os.environ.get("SG_MDWE") == "1":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux >= 6.3)
            print("NO-MDWE"); sys.exit(3)
    os.makedirs(pin, exist_ok=True)
    if mode == "project":  # as skyguardd does it: its defaults, the jiffies clock probe, the ring buffer's fd
        from skyguard.daemon.config import Config
        from skyguard.kernel import ifaces
        from skyguard.kernel.loader import Kernel

        cfg = Config()
        k = Kernel(flows_max=cfg.flows_max, window=cfg.window, pin_path=pin)
        print("CLOCK", k.clock_note)
        if k.clock is None:  # the daemon would run a build without its clock flags: not what it ships
            sys.exit(4)
        k.events_fd()
        ifaces.attach(k.prog_fd, dev, "generic")
        ifaces.detach(dev)
        print("LOADED", len(os.listdir(pin)))
        sys.exit(0)
    else:
        bpf = BPF(text=open(src).read())
        fn = bpf.load_func(b"xdp_main", BPF.XDP)
        for name in (b"flows", b"prefixes", b"stats", b"events"):
            assert lib.bpf_obj_pin(bpf[name].map_fd, f"{pin}/{name.decode()}".encode()) == 0, name
        got = []
        bpf[b"events"].open_ring_buffer(lambda ctx, data, size: got.append(size))  # a ctypes (libffi) callback
        bpf.ring_buffer_poll(timeout=1)
    bpf.attach_xdp(dev, fn, 2)  # XDP_FLAGS_SKB_MODE
    bpf.remove_xdp(dev, 2)
    print("LOADED", len(os.listdir(pin)))
    '''
)

# Representative of skyguard's program: variable-offset packet parsing (IHL), LRU hash, LPM trie, per-CPU array,
# ring buffer. Variable packet offsets are what needs CAP_PERFMON.
REPRESENTATIVE = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>
struct key { u32 a, b; u16 pa, pb; };
struct lpm4 { u32 prefixlen; u32 addr; };
BPF_TABLE("lru_hash", struct key, u64, flows, 1024);
BPF_TABLE("percpu_array", u32, u64, stats, 4);
BPF_LPM_TRIE(prefixes, struct lpm4, u8, 64);
BPF_RINGBUF_OUTPUT(events, 8);
int xdp_main(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    u32 z = 0; u64 *c = stats.lookup(&z); if (c) (*c)++;
    if ((void *)(eth + 1) > end || eth->h_proto != htons(ETH_P_IP)) return XDP_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end) return XDP_PASS;
    u32 ihl = ip->ihl * 4; if (ihl < 20) return XDP_PASS;
    struct udphdr *udp = (void *)ip + ihl;
    if ((void *)(udp + 1) > end) return XDP_PASS;
    struct lpm4 lk = {32, ip->daddr}; if (prefixes.lookup(&lk)) return XDP_DROP;
    struct key k = {ip->saddr, ip->daddr, udp->source, udp->dest};
    u64 one = 1; flows.update(&k, &one);
    u32 *e = events.ringbuf_reserve(sizeof(u32));
    if (e) { *e = ihl; events.ringbuf_submit(e, 0); }
    return XDP_PASS;
}
"""


def _bounding_set(caps: set[str]) -> str:
    return "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in sorted(caps))


def _load(tmp_path: Path, mode: str, src: Path, bset: str | None, mdwe: bool) -> subprocess.CompletedProcess[str]:
    """Run the loader as root in a throwaway netns on a veth, with the given capability bounding set."""
    for tool in ("ip", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} is missing")
    tag = f"sgcap{os.getpid() % 100000}{mode[0]}"
    pin = f"/sys/fs/bpf/{tag}"
    loader = tmp_path / "loader.py"
    loader.write_text(LOADER)
    subprocess.run(["ip", "netns", "add", tag], check=True)
    try:
        netns = ["ip", "-n", tag, "link"]
        subprocess.run([*netns, "add", "sgc0", "type", "veth", "peer", "name", "sgc1"], check=True)
        subprocess.run([*netns, "set", "sgc0", "up"], check=True)
        # nsenter, not `ip netns exec`: the latter remounts /sys, which hides bpffs
        cmd = ["nsenter", f"--net=/run/netns/{tag}"]
        if bset:
            cmd += ["setpriv", f"--bounding-set={bset}", "--inh-caps=-all"]
        cmd += [sys.executable, str(loader), mode, "sgc0", pin, str(src)]
        env = {**os.environ, "SG_MDWE": "1" if mdwe else "0"}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    finally:
        subprocess.run(["ip", "netns", "del", tag], check=False)
        shutil.rmtree(pin, ignore_errors=True)


@pytest.mark.bpf
def test_bounding_set_suffices_for_a_representative_program(bpf_ok: None, unit: Unit, tmp_path: Path) -> None:
    src = tmp_path / "rep.c"
    src.write_text(REPRESENTATIVE)
    mdwe = unit.get("Service", "MemoryDenyWriteExecute") == "yes"
    r = _load(tmp_path, "representative", src, _bounding_set(unit.words("Service", "CapabilityBoundingSet")), mdwe)
    if r.returncode == 3 and "NO-MDWE" in r.stdout:
        r = _load(tmp_path, "representative", src, _bounding_set(unit.words("Service", "CapabilityBoundingSet")), False)
    assert r.returncode == 0 and "LOADED 4" in r.stdout, r.stdout + r.stderr[-3000:]


@pytest.mark.bpf
def test_perfmon_is_really_needed(bpf_ok: None, tmp_path: Path) -> None:
    """The measurement behind CAP_PERFMON: without it the verifier refuses variable packet offsets."""
    src = tmp_path / "rep.c"
    src.write_text(REPRESENTATIVE)
    r = _load(tmp_path, "representative", src, _bounding_set(NEEDED_CAPS - {"CAP_PERFMON"}), False)
    assert r.returncode != 0
    assert "pointer arithmetic" in r.stderr or "Permission denied" in r.stderr, r.stderr[-3000:]


@pytest.mark.bpf
def test_bounding_set_suffices_for_the_project_program(bpf_ok: None, unit: Unit, tmp_path: Path) -> None:
    """Differential: the program as skyguardd builds it (its defaults and jiffies clock flags, pinned maps, the ring
    buffer, generic XDP attach) loads as full root, and then with the unit's bounding set (and MDWE) too."""
    src = ROOT / "bpf" / "skyguard.bpf.c"
    assert src.is_file()
    full = _load(tmp_path, "project", src, None, False)
    if full.returncode != 0:
        skip_or_fail(f"the program does not load even as full root: {(full.stdout + full.stderr)[-2000:]}")
    assert "LOADED" in full.stdout and "CLOCK jiffies" in full.stdout, full.stdout
    bset = _bounding_set(unit.words("Service", "CapabilityBoundingSet"))
    mdwe = unit.get("Service", "MemoryDenyWriteExecute") == "yes"
    r = _load(tmp_path, "project", src, bset, mdwe)
    if r.returncode == 3 and "NO-MDWE" in r.stdout:  # a kernel before 6.3: no prctl(PR_SET_MDWE) to imitate it with
        r = _load(tmp_path, "project", src, bset, False)
    assert r.returncode == 0 and "LOADED" in r.stdout, r.stdout + r.stderr[-3000:]
    assert r.stdout.splitlines()[0] == full.stdout.splitlines()[0]  # the same clock: the build the daemon ships
    assert int(r.stdout.split()[-1]) == int(full.stdout.split()[-1]) > 0  # the same maps pinned


# --- the metrics drop-in ----------------------------------------------------------------------------------------------

DROPIN = ROOT / "systemd" / "skyguard-metrics.conf"


def _security(exe: str, unit: Path) -> str:
    r = subprocess.run([exe, "security", "--offline=true", "--no-pager", str(unit)], capture_output=True, text=True,
                       timeout=60)
    return r.stdout + r.stderr


def _af_inet_line(report: str) -> str:
    lines = [ln for ln in report.splitlines() if "RestrictAddressFamilies=~AF_(INET|INET6)" in ln]
    assert len(lines) == 1, report
    return lines[0]


def test_metrics_dropin_opens_ip_sockets_only_where_installed(tmp_path: Path) -> None:
    """Without the drop-in, IP sockets are refused; with it (as /etc/systemd/system/skyguard.service.d/ holds it),
    systemd merges it into the unit: verify stays clean and the security report now shows AF_INET/AF_INET6
    allowed, which is the drop-in's whole effect."""
    exe = systemd_analyze()
    copy = verifiable_copy(tmp_path)
    assert _af_inet_line(_security(exe, copy)).lstrip().startswith("✓")
    drop = tmp_path / "skyguard.service.d"
    drop.mkdir()
    (drop / "metrics.conf").write_text(DROPIN.read_text())
    r = subprocess.run([exe, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and [ln for ln in (r.stdout + r.stderr).splitlines() if "skyguard" in ln] == [], r
    assert _af_inet_line(_security(exe, copy)).lstrip().startswith("✗")
    dropin = Unit.parse(DROPIN.read_text())
    assert dropin.words("Service", "RestrictAddressFamilies") == {"AF_INET", "AF_INET6"}
    assert dropin.words("Service", "IPAddressAllow") == {"localhost"}
