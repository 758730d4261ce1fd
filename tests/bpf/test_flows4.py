"""The two flow tables (bpf/skyguard.bpf.c): a flow starts in `flows`; once it has settled (nothing left to inspect),
a flow between two IPv4 addresses moves to `flows4` with its next packet, where its later packets need only the
16-byte key. Whatever table holds it, a flow is one flow: the same key, counters and class, one row, one verdict,
and the daemon's reads and writes reach it. A flow that a version before flows4 left in `flows` (pins adopted across
an upgrade) moves with its next packet, its class and counters kept."""

from __future__ import annotations

import dataclasses

import pytest

from skyguard import wire
from skyguard.policy import Policy

from .packets import udp4, udp6

pytestmark = pytest.mark.bpf

PROBE = wire.C["SG_PROBE"]
DONE, DAEMON = wire.C["SG_F_DONE"], wire.C["SG_F_DAEMON"]
DROP, PASS = 1, 2
PAYLOAD = b"\x99" * 40  # no signature: the flow is `other` after SG_PROBE packets, and settled


@pytest.fixture(scope="module")
def kernel(bpf_ok):
    from skyguard.kernel.loader import Kernel

    with Kernel(flows_max=1024, lpm_max=256, ringbuf_bytes=1 << 16) as kern:
        yield kern


@pytest.fixture
def k(kernel):
    """The module's program with both tables empty and the test's policy."""
    kernel.delete_flows([key for key, _ in kernel.flows()])
    kernel.load_policy(pol())
    assert kernel.table_counts() == {"flows": 0, "flows4": 0}
    return kernel


def pol() -> Policy:
    slots = [wire.PolicySlot()] * wire.POL_SLOTS
    slots[wire.OUT] = wire.PolicySlot(action=wire.DROP)
    return Policy(name="p", path=None, slots=tuple(slots))


def settle(k, frame: bytes) -> None:
    for _ in range(PROBE):
        k.test_run(frame)
    assert k.test_run(frame).verdict == PASS


def test_a_settled_ipv4_flow_moves_whole_and_stays_one_flow(k):
    there = udp4("192.0.2.10", 40000, "198.51.100.20", 5000, PAYLOAD)
    back = udp4("198.51.100.20", 5000, "192.0.2.10", 40000, PAYLOAD)
    key = wire.FlowKey.make("192.0.2.10", 40000, "198.51.100.20", 5000, 17)
    k.test_run(there)
    assert k.table_counts() == {"flows": 1, "flows4": 0}  # a new flow is inspected in `flows`
    settle(k, there)  # SG_PROBE + 1 packets: `other`, settled; the last one moved it
    assert k.table_counts() == {"flows": 0, "flows4": 1}
    f = k.flow(key)
    assert f.cls == wire.C["SG_CLASS_OTHER"] and f.flags & DONE and f.packets == PROBE + 2
    for _ in range(3):
        assert k.test_run(back).verdict == PASS  # the other direction finds the same flow in flows4
    f = k.flow(key)
    assert f.pkts == (PROBE + 2, 3) and f.nbytes == (PROBE + 5) * len(there)
    assert [kk for kk, _ in k.flows()] == [key] and k.flow_count() == 1
    before = k.stats()
    k.test_run(back)
    after = k.stats()
    assert after["packets"] - before["packets"] == 1 and after["act_pass"] - before["act_pass"] == 1
    assert after["flow_new"] == before["flow_new"]


def test_ipv6_flows_stay_and_ipv4_mapped_ipv6_finds_the_ipv4_flow(k):
    v6 = udp6("2001:db8::1", 40000, "2001:db8::2", 5000, PAYLOAD)
    settle(k, v6)
    k.test_run(v6)
    assert k.table_counts() == {"flows": 1, "flows4": 0}
    v4 = udp4("192.0.2.11", 40001, "198.51.100.21", 5001, PAYLOAD)
    settle(k, v4)
    assert k.table_counts() == {"flows": 1, "flows4": 1}
    # the same conversation carried in IPv6 between IPv4-mapped addresses has the same flow key: the same flow
    mapped = udp6("::ffff:192.0.2.11", 40001, "::ffff:198.51.100.21", 5001, PAYLOAD)
    assert k.test_run(mapped).verdict == PASS
    assert k.table_counts() == {"flows": 1, "flows4": 1}
    assert k.flow(wire.FlowKey.make("192.0.2.11", 40001, "198.51.100.21", 5001, 17)).packets == PROBE + 2


def test_the_daemons_writes_reach_a_moved_flow(k):
    frame = udp4("192.0.2.12", 40002, "198.51.100.22", 5002, PAYLOAD)
    key = wire.FlowKey.make("192.0.2.12", 40002, "198.51.100.22", 5002, 17)
    settle(k, frame)
    assert k.table_counts()["flows4"] == 1
    assert k.set_class(key, wire.OUT, wire.C["SG_R_E2O_STATS"])
    f = k.flow(key)
    assert f.cls == wire.OUT and f.flags & DAEMON
    assert k.test_run(frame).verdict == DROP and k.flow(key).dropped == 1
    k.delete_flows([key])
    assert k.flow(key) is None and k.flow_count() == 0


def test_a_moved_flow_still_asks_the_block_prefixes(k):
    frame = udp4("192.0.2.13", 40003, "198.51.100.23", 5003, PAYLOAD)
    key = wire.FlowKey.make("192.0.2.13", 40003, "198.51.100.23", 5003, 17)
    k.add_prefix("block", "198.51.100.23/32", wire.SRC_MANUAL)
    assert k.test_run(frame).verdict == DROP  # blocked at creation: settled
    assert k.test_run(frame).verdict == DROP  # ... and moved
    assert k.table_counts()["flows4"] == 1
    assert k.test_run(frame).verdict == DROP  # served from flows4: still blocked
    k.remove_prefix("block", "198.51.100.23/32")  # the prefixes stay the authority, read with the compact key
    assert k.test_run(frame).verdict == PASS
    assert not k.flow(key).flags & wire.C["SG_F_BLOCKED"]


def test_an_ipv4_flow_an_older_version_left_in_flows_moves_with_its_class(k):
    """Adoption across an upgrade: the pinned `flows` held IPv4 flows under the 40-byte key. The kernel finds one
    there, serves it by its class, and moves it; the daemon's reads and writes find it before and after."""
    frame = udp4("192.0.2.14", 40004, "198.51.100.24", 5004, PAYLOAD)
    key = wire.FlowKey.make("192.0.2.14", 40004, "198.51.100.24", 5004, 17)
    k.test_run(frame)  # the flow as it is made, then rewritten as a decided flow an older daemon left
    f = k.flow(key)
    old = dataclasses.replace(f, cls=wire.OUT, reason=wire.C["SG_R_E2O_STATS"], flags=f.flags | DONE | DAEMON,
                              pkts=(500, 400))
    k._flows.update(key.pack(), old.pack())
    assert k.table_counts() == {"flows": 1, "flows4": 0}
    assert k.flow(key).cls == wire.OUT
    assert k.test_run(frame).verdict == DROP
    assert k.table_counts() == {"flows": 0, "flows4": 1}
    f = k.flow(key)
    assert f.cls == wire.OUT and f.pkts == (501, 400) and f.dropped == 1 and f.first_ns == old.first_ns
    assert k.test_run(frame).verdict == DROP and k.flow(key).dropped == 2


def test_write_flows_raw_puts_each_flow_where_the_kernel_would(k):
    fresh = wire.Flow.unpack(bytes(wire.Flow.FMT.size))
    keys = [wire.FlowKey.make("192.0.2.15", 1000 + i, "198.51.100.25", 53, 17) for i in range(3)]
    keys.append(wire.FlowKey.make("2001:db8::15", 1000, "2001:db8::25", 53, 17))
    vals = [dataclasses.replace(fresh, flags=f) for f in (DONE, 0, DONE | wire.C["SG_F_DNS"], DONE)]
    assert k.write_flows_raw(b"".join(x.pack() for x in keys), b"".join(v.pack() for v in vals)) == 4
    # only the settled IPv4 flow that is no DNS flow goes to flows4: the others still need the long path
    assert k.table_counts() == {"flows": 3, "flows4": 1}
    assert {kk for kk, _ in k.flows()} == set(keys)


def test_no_flow_is_made_twice_while_it_moves(k):
    """Two CPUs run packets of the same flows at once, as a NIC's receive queues do, while each flow moves: both may
    copy it, one insert wins, and neither packet may lose the flow, count it twice or leave a second flow of the same
    key behind. (The narrowest case, a packet that misses flows4 just before another CPU's move and `flows` just after
    it, is too narrow to provoke here; the program looks in flows4 once more before it makes a flow for it.)"""
    import os
    import threading

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to run packets at the same time")  # CI and the development VM have two
    # each thread on a CPU of its own, the setup on the first: an LRU table hands each CPU that inserts a batch of
    # free nodes, so threads wandering over many CPUs could make it evict long before it is full
    n = 400  # well below flows_max, with two CPUs' batches of free nodes taken
    pairs = [(udp4(f"10.9.{i >> 8}.{i & 255}", 40000, "198.51.100.30", 5000, PAYLOAD),
              udp4("198.51.100.30", 5000, f"10.9.{i >> 8}.{i & 255}", 40000, PAYLOAD)) for i in range(n)]
    os.sched_setaffinity(0, {cpus[0]})  # 0: this thread
    try:
        for there, _back in pairs:  # settled (`other` after SG_PROBE packets) and not moved yet: no packet since
            for _ in range(PROBE):
                k.test_run(there)
    finally:
        os.sched_setaffinity(0, set(cpus))
    assert k.table_counts() == {"flows": n, "flows4": 0}
    start = threading.Barrier(2)

    def run(side: int) -> None:
        os.sched_setaffinity(0, {cpus[side]})
        start.wait()
        for pair in pairs:
            k.test_run(pair[side])

    threads = [threading.Thread(target=run, args=(side,)) for side in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [key for key, _ in k.flows()]
    assert len(keys) == len(set(keys)) == n
    assert k.table_counts() == {"flows": 0, "flows4": n}
    assert all(f.packets == PROBE + 2 for _, f in k.flows())
