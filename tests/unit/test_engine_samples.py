"""The replay's compiled loop hands `sample` records over undecoded (Engine.handle_sample, SlowPath.on_sample_record):
the same decisions, counters and slow-path state as the decoded Event through Engine.handle, sample for sample."""

from __future__ import annotations

from skyguard import wire
from skyguard.policy import parse_policy
from skyguard.slowpath.engine import Engine

from .test_e2o import e2o_flow, game_flow
from .test_engine_recheck import K, Kernel, Log


def records(model, seed: int, restart_at: int | None = None) -> list[bytes]:
    out = []
    for i, (ts, d, plen, data) in enumerate(model(seed), 1):
        insp = i if restart_at is None or i <= restart_at else i - restart_at
        out.append(wire.Event(type=wire.EV_SAMPLE, dir=d, ts_ns=ts, key=K, payload_len=plen, inspected=insp,
                              data=data).pack())
    return out


def outcome(recs: list[bytes], raw: bool) -> dict:
    kernel = Kernel()
    eng = Engine(kernel, parse_policy('name = "t"\n'), logger=Log())
    decided = []
    eng.on_decision.append(lambda key, old, new, ts, pkts: decided.append((key, old, new, ts, pkts)))
    for i, rec in enumerate(recs):
        if raw:
            eng.handle_sample(rec)
        else:
            eng.handle(wire.Event.unpack(rec))
        decided.append(("after", i, len(decided)))
    return {"decided": decided, "set_calls": kernel.set_calls, "flow": kernel.flows[K],
            "events": dict(eng.counters.events), "decisions": eng.counters.decisions,
            "slow": dict(eng.slow.counters), "status": eng.slow.status()["flows"]}


def test_raw_samples_equal_decoded_events() -> None:
    for model, seed, restart in ((e2o_flow, 3, None), (e2o_flow, 4, 70), (game_flow, 5, None)):
        recs = records(model, seed, restart)
        raw, decoded = outcome(recs, True), outcome(recs, False)
        assert raw == decoded
        assert raw["events"] == {"sample": len(recs)}
    # the comparison covered a decision applied to the kernel's flow
    assert outcome(records(e2o_flow, 3), True)["set_calls"] == 1


def test_sample_record_fields() -> None:
    ev = wire.Event(type=wire.EV_SAMPLE, dir=1, ts_ns=123_456, key=K, payload_len=321, inspected=77, data=b"\x01" * 70)
    d, ts, key, plen, insp, data = wire.sample_record(ev.pack())
    assert (d, ts, key, plen, insp) == (1, 123_456, K.pack(), 321, 77)
    assert data == b"\x01" * wire.SAMPLE_BYTES  # what the record holds: SG_SAMPLE_BYTES at most
    assert wire.FlowKey.unpack(key) == K
