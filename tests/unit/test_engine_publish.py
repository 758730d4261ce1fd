"""Engine: classification events reach subscribers that listen, and cost nothing when nobody does."""

from __future__ import annotations

from skyguard import wire
from skyguard.policy import parse_policy
from skyguard.slowpath.engine import Engine

KEY = wire.FlowKey.make("192.0.2.7", 40000, "198.51.100.9", 3478, 17)


def _classified(new: int = wire.OTHER) -> wire.Event:
    return wire.Event(type=wire.EV_CLASSIFIED, dir=0, ts_ns=1, key=KEY, old_cls=0, new_cls=new,
                      reason=wire.C["SG_R_NO_EVIDENCE"], pkts=8)


class _Kernel:
    """What Engine touches for a kernel-made classification: the policy load at start, nothing per event."""

    def load_policy(self, _policy: object) -> None:
        pass


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def info(self, msg: str, **kw: object) -> None:
        self.lines.append((msg, kw))


def test_subscriber_gets_events_only_while_listening():
    eng = Engine(_Kernel(), parse_policy('name = "t"\n'), logger=_Log())
    got: list[dict] = []
    listening = [False]
    eng.subscribe(got.append, lambda: listening[0])
    eng.handle(_classified())
    assert got == [] and eng.counters.events["classified"] == 1
    listening[0] = True
    eng.handle(_classified())
    assert [(e["type"], e["class"], e["a"], e["b"]) for e in got] == [
        ("classified", "other", "192.0.2.7:40000", "198.51.100.9:3478")]


def test_subscriber_without_a_predicate_always_listens():
    eng = Engine(_Kernel(), parse_policy('name = "t"\n'), logger=_Log())
    got: list[dict] = []
    unsubscribe = eng.subscribe(got.append)
    eng.handle(_classified())
    unsubscribe()
    eng.handle(_classified())
    assert len(got) == 1 and not eng.listening()


def test_logged_classes_are_logged_with_nobody_listening():
    log = _Log()
    eng = Engine(_Kernel(), parse_policy('name = "t"\n[class.other]\naction = "drop"\n'), logger=log)
    eng.subscribe(lambda _e: None, lambda: False)
    eng.handle(_classified())
    assert [m for m, _kw in log.lines] == ["flow classified", "enforcement"]
    assert log.lines[0][1]["a"] == "192.0.2.7:40000" and log.lines[0][1]["action"] == "drop"
