"""The lock files cover pyproject.toml: every dependency (and, in dev.txt, every test tool) pinned at a version its
specifier allows, with hashes. A dependency added to pyproject.toml without `make lock` fails here, not on a router."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", re.M)


def pins(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / name).read_text()
    found = {canonicalize_name(m[1]): m[2] for m in PIN.finditer(text)}
    # --require-hashes: every pin carries at least one hash
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text.split("\n", 1)[1] if text.startswith("#") else text)
    assert all("--hash=sha256:" in b for b in blocks if PIN.match(b.strip())), f"{name}: a pin without a hash"
    return found


def requirements(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + (list(project["optional-dependencies"][extra]) if extra else [])
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    return [Requirement(r) for r in reqs + build]


@pytest.mark.parametrize(("lock", "extra"), [("install.txt", None), ("dev.txt", "test")])
def test_lock_pins_every_requirement_within_its_bounds(lock: str, extra: str | None) -> None:
    locked = pins(lock)
    missing = [str(r) for r in requirements(extra) if canonicalize_name(r.name) not in locked]
    outside = [f"{r} (locked {locked[canonicalize_name(r.name)]})" for r in requirements(extra)
               if canonicalize_name(r.name) in locked and not r.specifier.contains(locked[canonicalize_name(r.name)],
                                                                                      prereleases=True)]
    assert not missing and not outside, f"requirements/{lock} is stale (run `make lock`): {missing + outside}"


def test_ruff_is_pinned_for_ci() -> None:
    assert "ruff" in pins("dev.txt")
