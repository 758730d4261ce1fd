"""Fixtures of the BPF tests."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator

import pytest


@pytest.fixture
def pin_path(bpf_ok) -> Iterator[str]:
    """An empty directory on bpffs for one test's pins: a unique name (a leftover or a parallel run must not count),
    removed with everything pinned in it when the test ends."""
    path = f"/sys/fs/bpf/skyguard-test-{secrets.token_hex(4)}"
    os.makedirs(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
