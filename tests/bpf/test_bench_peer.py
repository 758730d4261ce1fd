"""bench/peer.py's ceiling of the replay loop: the batch walker it drives (bench/batch_noop.bpf.c) must follow the
replay build's batch protocol (struct sg_batch), or the ceiling it prints measures something else. This checks that
every packet ran once and that they ran in batches, never a rate."""

from __future__ import annotations

import sys
from pathlib import Path

from skyguard import wire
from skyguard.lab import gen
from tests.conftest import ROOT


def test_ceiling_walks_every_packet_once_in_batches(bpf_ok, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("peer", None)
    import peer

    gen.generate(5, tmp_path, calls=2, kinds=["modern-p2p", "sip-rtp"])
    paths = sorted(Path(tmp_path).glob("*.pcap"))
    batched = peer.walk_ceiling(paths)
    single = peer.walk_ceiling(paths, batched=False)
    assert batched and single, "a capture did not run to its end, or a packet did not pass exactly once"
    assert batched["packets"] == single["packets"] > 1000
    assert single["runs"] == single["packets"]
    # nothing ends a batch but its size: most runs hold many packets
    assert batched["runs"] * wire.BATCH_MAX < batched["packets"] * 4


def test_ndpi_lanes_count_every_file(bpf_ok, monkeypatch, tmp_path):
    """The parallel comparison's ndpiReader side: files shared among lanes, None when any one of them gave no rate
    (a lane that lost a file would make ndpiReader look faster)."""
    import shutil

    if not shutil.which("ndpiReader"):
        from tests.conftest import skip_or_fail

        skip_or_fail("ndpiReader (libndpi-bin) is not installed")
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("peer", None)
    import peer

    gen.generate(6, tmp_path, calls=1, kinds=["modern-p2p", "sip-rtp", "dns"])
    paths = sorted(Path(tmp_path).glob("*.pcap"))
    secs = peer.ndpi_lane_seconds(paths, 2)
    assert secs is not None and secs > 0
    bad = tmp_path / "garbage.pcap"
    bad.write_bytes(b"not a capture at all")
    assert peer.ndpi_lane_seconds([*paths, bad], 2) is None
