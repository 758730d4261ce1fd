"""Engine.recheck: a class decision read once more after it was applied. A packet that passed its SG_F_DAEMON check
just before the decision set the flag can still write its own class after the decision's read-back; the recheck,
long after any such run, applies the decision again, and only the latest decision for a flow counts."""

from __future__ import annotations

import dataclasses

from skyguard import wire
from skyguard.policy import parse_policy
from skyguard.slowpath.classify import Decision
from skyguard.slowpath.engine import Engine

K = wire.FlowKey.make("192.168.1.6", 50010, "198.51.100.7", 40000, 17)
F_DAEMON = wire.C["SG_F_DAEMON"]
R = wire.REASON_BITS["e2o-stats"]


class Kernel:
    """One flow; set_class as the kernel's xdp_verdict does it (flag first, then class and reason)."""

    def __init__(self) -> None:
        self.flows = {K: wire.Flow(first_ns=1, last_ns=2, pkts=(300, 300), bytes_=(1, 1), cls=wire.UNKNOWN)}
        self.set_calls = 0

    def load_policy(self, policy) -> None:
        pass

    def flow(self, key):
        f = self.flows.get(key)
        return None if f is None else dataclasses.replace(f)

    def set_class(self, key, cls, reason) -> bool:
        self.set_calls += 1
        f = self.flows.get(key)
        if f is None:
            return False
        f.flags |= F_DAEMON | wire.C["SG_F_DONE"]
        f.cls, f.reason = cls, reason
        return True

    def late_packet_writes(self, cls: int, reason: int = 0) -> None:
        """The in-flight packet's store, after the decision's read-back (sg_set_class writes the reason first)."""
        self.flows[K].cls, self.flows[K].reason = cls, reason


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def info(self, msg, **kw) -> None:
        self.lines.append((msg, kw))

    debug = warning = error = info


def engine(kernel: Kernel, recheck_ns: int | None = 1000) -> tuple[Engine, Log]:
    log = Log()
    eng = Engine(kernel, parse_policy('name = "t"\n'), logger=log)
    eng.recheck_ns = recheck_ns
    return eng, log


def test_a_decision_undone_by_a_late_packet_write_is_applied_again():
    k = Kernel()
    eng, log = engine(k)
    assert eng.apply(Decision(K, wire.OUT, R, "stats"))
    k.late_packet_writes(wire.OTHER)
    assert eng.recheck(now_ns=0) == 0  # not due yet
    assert eng.recheck(now_ns=2**62) == 1
    assert k.flows[K].cls == wire.OUT and eng.counters.reapplied == 1
    assert any(m == "decision applied again" and kw["overwritten_by"] == "other" for m, kw in log.lines)
    assert eng.recheck(now_ns=2**62) == 0  # checked once: nothing is left to do


def test_a_decision_that_held_costs_one_read_and_nothing_else():
    k = Kernel()
    eng, _log = engine(k)
    eng.apply(Decision(K, wire.OUT, R, "stats"))
    calls = k.set_calls
    assert eng.recheck(now_ns=2**62) == 0 and k.set_calls == calls


def test_only_the_latest_decision_of_a_flow_is_rechecked():
    k = Kernel()
    eng, _log = engine(k, recheck_ns=10**12)
    eng.apply(Decision(K, wire.OUT, R, "stats"))
    eng.apply(Decision(K, wire.P2P, wire.REASON_BITS["som-voice"], "som"))
    k.late_packet_writes(wire.OTHER)
    assert eng.recheck(now_ns=2**62) == 1
    assert k.flows[K].cls == wire.P2P  # the first decision's entry did not bring OUT back


def test_a_flow_gone_or_handed_back_is_left_alone():
    k = Kernel()
    eng, _log = engine(k)
    eng.apply(Decision(K, wire.OUT, R, "stats"))
    k.flows[K].flags &= ~F_DAEMON  # the operator handed it back to the kernel's signatures
    k.late_packet_writes(wire.OTHER)
    assert eng.recheck(now_ns=2**62) == 0 and k.flows[K].cls == wire.OTHER
    eng.apply(Decision(K, wire.OUT, R, "stats"))
    del k.flows[K]
    assert eng.recheck(now_ns=2**62) == 0


def test_off_unless_the_daemon_turns_it_on():
    """A replay runs the program only between its decisions: nothing is queued for it."""
    k = Kernel()
    eng, _log = engine(k, recheck_ns=None)
    eng.apply(Decision(K, wire.OUT, R, "stats"))
    assert not eng._recheck and eng.recheck(now_ns=2**62) == 0


def test_a_late_write_of_the_same_class_still_puts_the_decision_s_reason_back():
    k = Kernel()
    eng, _log = engine(k)
    eng.apply(Decision(K, wire.OUT, R, "stats"))
    k.late_packet_writes(wire.OUT, wire.REASON_BITS["pstn-prefix"])
    assert eng.recheck(now_ns=2**62) == 1 and k.flows[K].reason == R


def test_a_newer_decision_the_flow_already_holds_is_not_undone_by_the_older_one():
    """Decided OUT; a late packet wrote OTHER; the daemon then decides OTHER itself (apply finds it there and writes
    nothing): the recheck must not bring OUT back over that newer decision."""
    k = Kernel()
    eng, _log = engine(k)
    eng.apply(Decision(K, wire.OUT, R, "stats"))
    k.late_packet_writes(wire.OTHER, R)
    assert not eng.apply(Decision(K, wire.OTHER, R, "again"))
    assert eng.recheck(now_ns=2**62) == 0 and k.flows[K].cls == wire.OTHER


def test_a_recheck_reads_at_most_its_share_per_call():
    k = Kernel()
    eng, _log = engine(k)
    keys = [wire.FlowKey.make("192.168.1.6", 50000 + i, "198.51.100.7", 40000, 17) for i in range(10)]
    for key in keys:
        k.flows[key] = wire.Flow(first_ns=1, last_ns=2, pkts=(1, 1), bytes_=(1, 1))
        eng.apply(Decision(key, wire.OUT, R, "stats"))
    for key in keys:
        k.flows[key].cls = wire.OTHER
    assert eng.recheck(now_ns=2**62, most=4) == 4
    assert eng.recheck(now_ns=2**62, most=4) == 4
    assert eng.recheck(now_ns=2**62, most=4) == 2
