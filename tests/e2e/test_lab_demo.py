"""`skyguard lab` (what `make demo` runs), non-interactively: the phone calls are blocked, the PC-to-PC calls pass,
and everything the lab made is gone afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from skyguard.lab.topo import leftover_namespaces

pytestmark = pytest.mark.e2e


def test_lab_summary(bpf_ok):
    r = subprocess.run([sys.executable, "-m", "skyguard.cli", "lab", "--json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    out = json.loads(r.stdout)
    calls = {c["name"]: c for c in out["calls"]}
    assert out["ok"] is True
    phone = [c for c in calls.values() if c["name"].startswith("PC-to-phone")]
    pc = [c for c in calls.values() if c["name"].startswith("PC-to-PC")]
    assert len(phone) == 3 and len(pc) == 2
    for c in phone:
        assert c["verdict"] == "blocked" and c["cls"] == "skype-out", c
        assert c["delivered_before_block"] is not None and c["delivered_before_block"] <= 150, c
        assert c["dropped"] > 0
    for c in pc:
        assert c["verdict"] == "passed" and c["cls"] == "skype-p2p", c
        assert c["delivered"] == c["sent"] > 100, c
    for c in calls.values():
        if c["name"].startswith("background"):
            assert c["verdict"] == "passed" and not c["cls"].startswith("skype-out"), c
    print({c["name"]: c["delivered_before_block"] for c in phone})
    assert len(out["namespaces"]) == 3
    assert not set(out["namespaces"]) & set(leftover_namespaces())
    assert not os.path.exists(out["pin_path"])


def test_lab_refuses_without_root(bpf_ok):
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                        "skyguard.cli", "lab"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert r.returncode == 1
    assert "must run as root" in r.stderr
