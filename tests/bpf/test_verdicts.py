"""The daemon's decisions never overwrite what the kernel writes meanwhile (issue 14, item 4).

Packets are fired at one flow from another thread (BPF_PROG_TEST_RUN with repeat: the kernel runs the program that
many times in one call, and ctypes lets go of the GIL for it) while this thread writes decisions into the same flow
as fast as it can: classes (set_class) and flag bits (set_flow_flags, as block/unblock and exempt re-syncs do). Every
packet must be counted, in the flow and in the per-CPU stats, and the last decision must be the flow's state.
"""

from __future__ import annotations

import ipaddress
import threading

import pytest

from skyguard import wire
from skyguard.policy import Policy
from tests.bpf.packets import udp4

LOOPS, REPEAT = 200, 500  # 100,000 packets in 200 test runs


@pytest.fixture(scope="module")
def k(bpf_ok):
    from skyguard.kernel.loader import Kernel

    with Kernel(flows_max=1024, lpm_max=256, ringbuf_bytes=1 << 16) as kern:
        kern.load_policy(Policy(name="p", path=None, slots=tuple([wire.PolicySlot()] * wire.POL_SLOTS),
                                exempt_prefixes=(ipaddress.ip_network("10.0.0.0/8"),)))
        yield kern


def test_decisions_while_packets_fly_lose_no_packet(k) -> None:
    frame = udp4("192.0.2.70", 41000, "198.51.100.70", 42000, b"\x17" * 80)
    key = wire.FlowKey.make("192.0.2.70", 41000, "198.51.100.70", 42000, 17)
    assert k.test_run(frame).verdict == 2
    before = k.stats()
    errors: list[BaseException] = []
    done = threading.Event()

    def fire() -> None:
        try:
            for _ in range(LOOPS):
                assert k.test_run(frame, repeat=REPEAT).verdict == 2
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=fire)
    t.start()
    decisions = 0
    logged = wire.C["SG_F_LOGGED"]
    classes = (wire.RELAY, wire.P2P, wire.SIGNALING)
    while not done.is_set() or decisions < 50:
        cls = classes[decisions % len(classes)]
        assert k.set_class(key, cls, wire.C["SG_R_E2O_STATS"])
        assert k.set_flow_flags(key, set_flags=logged) if decisions % 2 else k.set_flow_flags(key, clear_flags=logged)
        decisions += 1
    t.join()
    assert not errors, errors
    f = k.flow(key)
    total = 1 + LOOPS * REPEAT
    assert f.packets == total, f"{total - f.packets} packets lost under {decisions} decisions"
    assert f.bytes_[0] + f.bytes_[1] == total * len(frame)
    after = k.stats()
    assert after["packets"] - before["packets"] == LOOPS * REPEAT
    last = decisions - 1
    assert f.cls == classes[last % len(classes)] and f.flags & wire.C["SG_F_DAEMON"]
    assert bool(f.flags & logged) == bool(last % 2)
    print(f"{decisions} decisions while {LOOPS * REPEAT} packets ran: none lost")


def test_verdict_on_a_missing_flow_changes_nothing(k) -> None:
    gone = wire.FlowKey.make("192.0.2.99", 1, "198.51.100.99", 2, 17)
    n = k.flow_count()
    assert not k.set_class(gone, wire.OUT, 0)
    assert not k.set_flow_flags(gone, set_flags=wire.C["SG_F_BLOCKED"])
    assert k.flow(gone) is None and k.flow_count() == n
