"""The daemon's flow-table snapshot answers like a full decode would: selection, sorting, prefixes, idle flows."""

from __future__ import annotations

import ipaddress
import random

import pytest

from skyguard import wire
from skyguard.kernel.flowtable import FlowTable, addr_mask


def endpoints(i: int) -> tuple[str, str]:
    """The addresses of the i-th flow: IPv4 from 10.0.0.0/13 (10.<i % 7>...) to one server, every fifth one IPv6."""
    if i % 5:
        return f"10.{i % 7}.{(i >> 8) & 255}.{i & 255}", "198.51.100.7"
    return f"2001:db8::{i:x}", "2001:db8:ffff::1"


@pytest.fixture
def filled(bpf_ok):
    from skyguard.kernel.loader import Kernel

    rng = random.Random(3)
    k = Kernel(flows_max=4096)
    keys, vals = bytearray(), bytearray()
    truth = []
    for i in range(3000):
        src, dst = endpoints(i)
        key = wire.FlowKey.make(src, 1000 + i, dst, 443 if i % 3 else 3478, 6 if i % 3 else 17)
        f = wire.Flow(first_ns=i, last_ns=10_000_000_000 + i * 1_000_000, pkts=(rng.randrange(1000), i),
                      bytes_=(rng.randrange(10**6), 0), cls=i % 6)
        keys += key.pack()
        vals += f.pack()
        truth.append((key, f))
    assert k.write_flows_raw(bytes(keys), bytes(vals)) == 3000
    yield k, truth
    k.close()


def test_select_matches_full_decode(filled):
    k, truth = filled
    t = FlowTable(k)
    snap, idx, total = t.select(sort="packets", limit=50)
    assert total == 3000
    got = [snap.flow(int(i)).packets for i in idx]  # read back from the kernel by key
    assert got == sorted((f.packets for _k, f in truth), reverse=True)[:50]
    snap, idx, total = t.select(cls=wire.OUT, sort="last", limit=0)
    want = sorted((f.last_ns for _k, f in truth if f.cls == wire.OUT), reverse=True)
    assert total == len(want) and [snap.flow(int(i)).last_ns for i in idx] == want
    net = ipaddress.ip_network("10.3.0.0/16")
    snap, idx, total = t.select(net=net, limit=0)
    # from the addresses the keys were made of (ipaddress), not from the key bytes with the product's prefix test
    want = sum(1 for src, dst in map(endpoints, range(3000))
               if ipaddress.ip_address(src) in net or ipaddress.ip_address(dst) in net)
    assert want == 343 and total == want  # i % 7 == 3 and i % 5 != 0
    v6 = ipaddress.ip_network("2001:db8::/32")
    v6_flows = sum(1 for src, _dst in map(endpoints, range(3000)) if ipaddress.ip_address(src) in v6)
    assert v6_flows == 600  # both ends in 2001:db8::/32
    assert addr_mask(snap.keys["lo_addr"], v6).sum() + addr_mask(snap.keys["hi_addr"], v6).sum() == 2 * v6_flows
    # a flow deleted after the snapshot reads back as None (the daemon skips it)
    k.delete_flow(snap.key(int(idx[0])))
    assert snap.flow(int(idx[0])) is None
    assert t.select(net=v6, limit=0)[2] == v6_flows


def test_incremental_refresh_and_idle(filled):
    k, truth = filled
    t = FlowTable(k, min_interval_s=0.0, cap=1000)  # grows as rows arrive
    steps = 0
    while not t.step(now=0.0):
        steps += 1
    assert steps >= 1 and len(t.snapshot) == 3000
    # last_ns runs from 10 s to 13 s: at 12.5 s with a 1 s timeout, flows last seen before 11.5 s are idle
    idle = t.idle(12_500_000_000, {"udp": 1.0, "tcp": 1.0, "other": 1.0})
    assert len(idle) == sum(1 for _k, f in truth if 12_500_000_000 - f.last_ns > 1e9)


def test_delete_batch_passes_over_missing_keys(filled):
    """Kernel.delete_flows (BPF_MAP_DELETE_BATCH, which stops at a key the map does not hold): every flow asked for
    that is there goes, missing ones in the middle and at the ends are passed over, and no other flow is touched."""
    k, truth = filled
    gone = [key for key, _ in truth[::3]]
    missing = [wire.FlowKey.make("192.0.2.1", p, "192.0.2.2", 9, 17) for p in range(3)]
    asked = [missing[0], *gone[:500], missing[1], *gone[500:], missing[2]]
    assert k.delete_flows(asked) == len(gone)
    left = {key for key, _ in k.flows()}
    assert left == {key for key, _ in truth} - set(gone) and len(left) == 2000
    assert k.delete_flows([]) == 0


def test_delete_batch_falls_back_where_the_map_has_none(filled):
    """An array map has no batch delete (the kernel refuses the call before deleting anything): delete_batch falls
    back to one delete per key, which an array refuses too, and says that none went."""
    k, _ = filled
    qos = k._qos
    assert qos.delete_batch(b"\0\0\0\0\1\0\0\0") == 0

