"""Shared fixtures. BPF and e2e tests skip where they cannot run, but fail under SKYGUARD_REQUIRE_BPF=1 (CI)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _scapy_offline() -> None:
    """Test frames are built offline. Left to itself, scapy fills a frame's destination MAC by asking the host's ARP or
    NDP for each new destination address: a request that leaves the machine (tests send packets only inside the
    namespaces they make) and waits up to two seconds for an answer, which made one BPF test take 20 s. Every
    resolution now fails at once, and the frame gets the broadcast address, as an unanswered request gave it."""
    try:
        from scapy.config import conf
        from scapy.layers.l2 import Neighbor  # sets conf.neighbor, which the layers then register with
    except ImportError:
        return

    class Offline(Neighbor):
        def resolve(self, l2inst, l3inst):  # noqa: ANN001, ANN201 - scapy's signature
            return None

    conf.neighbor = Offline()
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # "MAC address ... not found. Using broadcast."


_scapy_offline()
SHARED = ROOT.parent / "shared"
CAPTURES = SHARED / "captures"
REQUIRE_BPF = os.environ.get("SKYGUARD_REQUIRE_BPF") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip on a developer's machine; fail in CI, where every BPF test must run."""
    if REQUIRE_BPF:
        pytest.fail(f"SKYGUARD_REQUIRE_BPF=1 and {reason}", pytrace=False)
    pytest.skip(reason)


def bpf_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_BPF, CAP_NET_ADMIN)"
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        return f"bcc is not importable ({e}); run `make setup`"
    return None


@pytest.fixture(scope="session")
def bpf_ok() -> None:
    why = bpf_unavailable()
    if why:
        skip_or_fail(why)


@pytest.fixture(scope="session")
def captures() -> Path:
    """../shared/captures (real public captures with nDPI labels); absent in a user's clone."""
    if not (CAPTURES / "labels.csv").is_file():
        skip_or_fail(f"{CAPTURES} is missing (shared captures live beside the repository, not in it)")
    return CAPTURES
