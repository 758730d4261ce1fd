"""`make install` / `make uninstall` (mk/install.mk) into a DESTDIR: the tree, kept operator configs, exact removal.

Runs make on a copy of the sources, so the example daemon config is always there (a minimal one is written when
systemd/skyguard.toml does not exist yet). The install builds a venv with pip: it needs PyPI (or a pip config that
points at wheels); here it takes ~6 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, skip_or_fail

PREFIX = "/usr"
VENV = f"{PREFIX}/lib/skyguard/venv"
MANIFEST = f"{PREFIX}/share/skyguard/MANIFEST"
DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")
SOURCES = ("Makefile", "mk", "systemd", "policies", "daemon", "bpf", "pyproject.toml", "README.md", "LICENSE",
           "requirements")
# the installed venv's own interpreter, without a PYTHONPATH that points at the work tree (make test-debian sets one)
INSTALLED_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
MINIMAL_CONFIG = 'interfaces = ["eth0"]\npolicy = "/etc/skyguard/policy.toml"\n'


@dataclass(frozen=True)
class Tree:
    src: Path
    dest: Path

    def make(self, target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "--no-print-directory", "-C", str(self.src), target, f"DESTDIR={self.dest}", f"PREFIX={PREFIX}"],
            capture_output=True,
            text=True,
            timeout=600,
        )

    def install(self) -> str:
        r = self.make("install")
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout + r.stderr

    def uninstall(self) -> str:
        r = self.make("uninstall")
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout + r.stderr

    def at(self, path: str) -> Path:
        return self.dest / path.lstrip("/")

    def files(self) -> set[str]:
        """Every non-directory under DESTDIR, as a path without DESTDIR."""
        return {"/" + str(p.relative_to(self.dest)) for p in self.dest.rglob("*") if not p.is_dir() or p.is_symlink()}


def make_tree(base: Path) -> Tree:
    src, dest = base / "src", base / "dest"
    src.mkdir()
    dest.mkdir()
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif p.is_file():
            shutil.copy2(p, src / name)
    config = src / "systemd" / "skyguard.toml"
    if not config.exists():
        config.write_text(MINIMAL_CONFIG)
    return Tree(src, dest)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    if shutil.which("make") is None:
        skip_or_fail("make is missing")
    tree = make_tree(tmp_path_factory.mktemp("install"))
    tree.install()
    return tree


def manifest(tree: Tree) -> list[list[str]]:
    return [ln.split() for ln in tree.at(MANIFEST).read_text().splitlines() if ln.strip()]


# --- the installed tree -----------------------------------------------------------------------------------------------


def test_unit_points_at_the_installed_daemon(installed: Tree) -> None:
    unit = installed.at("/lib/systemd/system/skyguard.service").read_text()
    assert "ExecStart=/usr/bin/skyguardd --config /etc/skyguard/skyguard.toml\n" in unit
    assert "/usr/local/bin" not in unit
    assert (
        installed.at("/usr/lib/sysusers.d/skyguard.conf").read_text()
        == (installed.src / "systemd" / "skyguard.sysusers").read_text()
    )


def test_configs_and_policies(installed: Tree) -> None:
    src = installed.src
    assert installed.at("/etc/skyguard/skyguard.toml").read_bytes() == (src / "systemd/skyguard.toml").read_bytes()
    assert installed.at("/etc/skyguard/policy.toml").read_bytes() == (src / "policies/observe-only.toml").read_bytes()
    shipped = sorted(p.name for p in (src / "policies").glob("*.toml"))
    assert shipped, "no policies in the sources"
    assert sorted(p.name for p in installed.at("/usr/share/skyguard/policies").iterdir()) == shipped
    assert not list(installed.at("/etc/skyguard").glob("*.new"))


@pytest.mark.parametrize("cmd", ["skyguard", "skyguardd"])
def test_wrappers_run_the_venv_entry_points(installed: Tree, cmd: str) -> None:
    wrapper = installed.at(f"/usr/bin/{cmd}")
    assert wrapper.stat().st_mode & 0o111
    assert f"exec {VENV}/bin/{cmd} " in wrapper.read_text()
    script = installed.at(f"{VENV}/bin/{cmd}")
    # the #! line names the final path, not the DESTDIR one
    assert script.read_text().splitlines()[0] == f"#!{VENV}/bin/python"
    py = str(installed.at(f"{VENV}/bin/python"))
    module = next(ln.split()[1] for ln in script.read_text().splitlines() if ln.startswith("from skyguard"))
    where = subprocess.run(
        [py, "-c", f"import importlib.util as u; print(u.find_spec({module!r}).origin)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env=INSTALLED_ENV,
    )
    assert where.stdout.startswith(str(installed.at(VENV))), where.stderr
    r = subprocess.run([py, str(script), "--help"], capture_output=True, text=True, timeout=60, cwd="/",
                       env=INSTALLED_ENV)
    if r.returncode != 0:
        # differential, to say where the fault is: a broken entry point in the sources is not an install problem,
        # but it is a broken command all the same
        dev = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", module, "--help"], capture_output=True, timeout=60)
        if dev.returncode != 0:
            pytest.fail(f"`{cmd} --help` fails in the work tree too (the entry point is broken, not the install): "
                        f"{r.stderr.strip().splitlines()[-1:]}")
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout.lower()


def test_venv_has_the_package_with_its_bpf_sources(installed: Tree) -> None:
    py = installed.at(f"{VENV}/bin/python")
    code = "import skyguard.wire as w; d = w.bpf_dir(); print(d); print(sorted(p.name for p in d.iterdir()))"
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=60, cwd="/", env=INSTALLED_ENV)
    assert r.returncode == 0, r.stderr
    where, names = r.stdout.splitlines()
    assert where.startswith(str(installed.at(VENV)))  # the installed copy, not the work tree
    assert "skyguard.bpf.c" in names and "skyguard.h" in names
    for dep in ("structlog", "msgpack", "pyroute2"):
        assert subprocess.run([str(py), "-c", f"import {dep}"], timeout=60).returncode == 0, dep


def test_venv_sees_debian_bcc(installed: Tree) -> None:
    if not DEBIAN_BCC.is_dir():
        skip_or_fail("Debian's python3-bpfcc is not installed")
    py = installed.at(f"{VENV}/bin/python")
    r = subprocess.run([str(py), "-c", "import bcc; print(bcc.__file__)"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "debian-bcc" in r.stdout


def test_no_destdir_leaks_into_installed_text(installed: Tree) -> None:
    leaks = subprocess.run(
        ["grep", "-rlIF", "--exclude-dir=__pycache__", str(installed.dest), str(installed.dest)],
        capture_output=True,
        text=True,
    ).stdout.split()
    # pip's metadata records where it installed from (a temp dir), never the DESTDIR; scripts and configs must not
    assert leaks == []


def test_manifest_lists_everything_installed(installed: Tree) -> None:
    entries = manifest(installed)
    assert {e[0] for e in entries} <= {"f", "t", "c", "d"}
    listed = {e[1] for e in entries if e[0] in "fc"}
    trees = [e[1] for e in entries if e[0] == "t"]
    assert trees == [VENV]
    unlisted = {p for p in installed.files() if p not in listed and not any(p.startswith(t + "/") for t in trees)}
    assert unlisted == set()
    assert ["c", "/etc/skyguard/skyguard.toml", "/usr/share/skyguard/skyguard.toml"] in entries


def test_installed_unit_verifies(installed: Tree, tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        skip_or_fail("systemd-analyze is missing")
    unit = installed.at("/lib/systemd/system/skyguard.service").read_text()
    # only the prefix of the daemon changed (SYSCONFDIR is /etc here)
    source = (installed.src / "systemd/skyguard.service").read_text()
    assert unit == source.replace("/usr/local/bin/skyguard", "/usr/bin/skyguard")
    assert "ExecReload=/usr/bin/skyguard --socket" in unit
    # verify checks that ExecStart= and ExecReload= exist: point them at the installed wrappers inside DESTDIR
    copy = tmp_path / "skyguard.service"
    copy.write_text(unit.replace("ExecStart=/usr/bin/skyguardd", f"ExecStart={installed.at('/usr/bin/skyguardd')}")
                    .replace("ExecReload=/usr/bin/skyguard ", f"ExecReload={installed.at('/usr/bin/skyguard')} "))
    r = subprocess.run([exe, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [ln for ln in (r.stdout + r.stderr).splitlines() if "skyguard" in ln] == []


# --- uninstall --------------------------------------------------------------------------------------------------------


def test_uninstall_removes_everything(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    tree.install()
    assert tree.at(MANIFEST).is_file() and tree.at(f"{VENV}/bin/python").exists()
    tree.uninstall()
    assert sorted(str(p) for p in tree.dest.rglob("*")) == []


def test_uninstall_without_a_manifest_refuses(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    r = tree.make("uninstall")
    assert r.returncode != 0
    assert "MANIFEST" in r.stderr


def test_existing_configs_are_kept(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    conf = tree.at("/etc/skyguard")
    conf.mkdir(parents=True)
    mine = {"skyguard.toml": 'interfaces = ["wan0"]  # mine\n', "policy.toml": 'name = "mine"\n'}
    for name, text in mine.items():
        (conf / name).write_text(text)

    out = tree.install()
    out += tree.install()  # a second install over the first keeps them as well
    for name, text in mine.items():
        assert (conf / name).read_text() == text
        assert f"kept your /etc/skyguard/{name}" in out
    assert (conf / "skyguard.toml.new").read_bytes() == (tree.src / "systemd/skyguard.toml").read_bytes()
    assert (conf / "policy.toml.new").read_bytes() == (tree.src / "policies/observe-only.toml").read_bytes()

    out = tree.uninstall()
    assert tree.files() == {"/etc/skyguard/skyguard.toml", "/etc/skyguard/policy.toml"}
    assert "kept /etc/skyguard/skyguard.toml" in out


def test_edited_after_install_is_kept_and_unedited_is_removed(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    tree.install()
    with tree.at("/etc/skyguard/skyguard.toml").open("a") as f:
        f.write("# edited by the operator\n")
    out = tree.uninstall()
    assert tree.files() == {"/etc/skyguard/skyguard.toml"}  # policy.toml was untouched: removed
    assert "kept /etc/skyguard/skyguard.toml" in out
