"""Calls through the live router: phone calls are dropped on the wire, PC-to-PC calls and other traffic pass; the
kernel keeps enforcing while no daemon runs, and a restarted daemon adopts the pinned flows."""

from __future__ import annotations

import time

import pytest

from skyguard.lab import demo as lab

from .conftest import settle, wait_for

pytestmark = pytest.mark.e2e

# the inspection window (config `window`, default 160): a call not known by then is never blocked. Behavioural
# E2O statistics decide from 100 samples on (e2o.MIN_SAMPLES), so a call caught by behaviour alone lets ~100-150 cross.
MAX_BEFORE_BLOCK = 160

# indices into lab.SCENARIOS (the demo's calls)
PC_TO_PC, PHONE_PREFIX, PHONE_BEHAVIOUR = 0, 2, 3
EXPECT_CLASS = {0: "skype-p2p", 1: "skype-p2p", 2: "skype-out", 3: "skype-out", 4: "skype-out", 5: "skype-relay",
                6: "other", 7: "other", 8: "other", 9: "skype-signaling"}


def test_phone_calls_dropped_pc_calls_and_other_traffic_pass(rig):
    rig.start()
    sched, main = rig.schedule()
    passing = [main[si] for si, sc in enumerate(lab.SCENARIOS) if sc.expect == "pass"]
    with rig.wire(sched) as w:
        w.play(sched, speed=1.0, tail_s=0.1)  # real time: the E2O statistics look at inter-arrival periods
        settle(w, passing, "every frame of the passing calls to reach the far end")

    def decided() -> dict | None:
        rows = rig.flows()
        return rows if all(rows.get(main[si], {}).get("class", "unknown") != "unknown" for si in main) else None

    rows = wait_for(decided, "every call's flow to be listed with a class (the daemon has handled its events)")
    for si, sc in enumerate(lab.SCENARIOS):
        key = main[si]
        sent, recv = w.sent[key], w.recv[key]
        row = rows.get(key)
        assert row is not None, f"{sc.name}: the daemon lists no flow {key}"
        assert sent >= 7, sc.name
        assert row["class"] == EXPECT_CLASS[si], (sc.name, row)
        if sc.expect == "block":
            assert row["action"] == "drop", (sc.name, row)
            # the far end saw only what crossed before the verdict, and the kernel counted every other frame
            assert recv <= MAX_BEFORE_BLOCK, f"{sc.name}: {recv} packets crossed before the block"
            assert row["dropped"] == sent - recv, (sc.name, sent, recv, row)
            print(f"{sc.name}: {recv} of {sent} packets crossed before the block "
                  f"({row['reason']}; {row['dropped']} dropped)")
        else:
            assert row["action"] in ("pass", "mark"), (sc.name, row)
            assert row["dropped"] == 0, (sc.name, row)
            assert recv == sent, f"{sc.name}: {recv}/{sent} delivered"
    # a phone call to the policy's PSTN gateway is known from its first packet: nothing crosses
    assert w.recv[main[PHONE_PREFIX]] == 0
    st = rig.call("status")
    assert st["counters"]["act_drop"] >= sum(r["dropped"] for r in rows.values())


def test_enforcement_survives_sigkill_and_restart_adopts_flows(rig):
    rig.start()
    speed = 1.0
    sched, main = rig.schedule([PC_TO_PC, PHONE_BEHAVIOUR])
    phone, p2p = main[PHONE_BEHAVIOUR], main[PC_TO_PC]
    with rig.wire(sched) as w:
        w.play(sched, speed, 0.0, 2.5, tail_s=0.1)
        # the behavioural (E2O statistics) verdict is the daemon's: wait for it, however loaded the machine
        wait_for(lambda: rig.flows().get(phone, {}).get("class") == "skype-out",
                 "the daemon's E2O-statistics verdict (skype-out) on the phone call", tick=lambda: w.receive(0.0))
        settle(w, [p2p])
        before = rig.flows()
        assert before[phone]["class"] == "skype-out" and before[phone]["action"] == "drop", before[phone]
        assert before[p2p]["class"] == "skype-p2p", before[p2p]
        crossed = w.recv[phone]
        print(f"phone call: {crossed} of {w.sent[phone]} packets crossed before the block")
        assert crossed <= MAX_BEFORE_BLOCK

        rig.kill()
        sent_phone, sent_p2p, recv_p2p = w.sent[phone], w.sent[p2p], w.recv[p2p]
        w.play(sched, speed, 2.5, 4.5, tail_s=0.1)  # no daemon runs now
        settle(w, [p2p], "the PC-to-PC call's frames to cross while no daemon runs")
        assert rig.proc.poll() is not None
        assert w.sent[phone] - sent_phone > 50 and w.sent[p2p] - sent_p2p > 50
        assert w.recv[phone] == crossed, "frames of the blocked call crossed while no daemon ran"
        assert w.recv[p2p] - recv_p2p == w.sent[p2p] - sent_p2p, "the PC-to-PC call stalled while no daemon ran"

        t0 = time.monotonic()
        st = rig.start()  # same config, same pin path
        print(f"daemon restarted in {time.monotonic() - t0:.1f} s")
        assert st["flows"]["adopted"] >= 2, st["flows"]
        assert st["flows"]["count"] >= 2
        after = rig.flows()
        for key in (phone, p2p):
            assert after[key]["class"] == before[key]["class"], (before[key], after[key])
            assert after[key]["action"] == before[key]["action"]
            assert after[key]["packets"] >= before[key]["packets"]
        assert after[phone]["dropped"] == w.sent[phone] - crossed

        w.play(sched, speed, 4.5, tail_s=0.1)  # the restarted daemon enforces too
        settle(w, [p2p])
        assert w.recv[phone] == crossed
        assert w.recv[p2p] == w.sent[p2p]
