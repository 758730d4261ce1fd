"""The live `events` stream of the real daemon: a subscriber receives the classification of a call as it is played,
and a subscriber that never reads is dropped once its unsent events pass the server's output limit, while the daemon
goes on serving everyone else."""

from __future__ import annotations

import re

import pytest

from skyguard.daemon.control import MAX_OUTBUF
from skyguard.lab import demo as lab
from skyguard.lab.topo import CLIENT, CLIENT2, PSTN_GW

from .conftest import RawConn, wait_for

pytestmark = pytest.mark.e2e

PC_TO_PC, PHONE_PREFIX = 0, 2


def _classified(events: list[dict], key: tuple) -> list[dict]:
    out = []
    for ev in events:
        if ev.get("type") != "classified":
            continue
        if key in lab.rows_by_tuple([ev]):
            out.append(ev)
    return out


def test_subscriber_receives_the_classification_of_a_call(rig):
    rig.start()
    sub = RawConn(rig.sock).subscribe()
    try:
        sched, main = rig.schedule([PC_TO_PC, PHONE_PREFIX])
        phone, p2p = main[PHONE_PREFIX], main[PC_TO_PC]
        with rig.wire(sched) as w:
            w.play(sched, 1.0, 0.0, 2.0, tail_s=0.2, tick=sub.drain)

        def both() -> bool:
            sub.drain()
            return bool(_classified(sub.events, phone) and _classified(sub.events, p2p))

        wait_for(both, "the classified events of the phone call and of the PC-to-PC call on the stream", timeout=10)
        [ev] = [e for e in _classified(sub.events, phone) if e["class"] == "skype-out"]
        assert ev["action"] == "drop" and ev["reason"] == "pstn-prefix" and ev["old_class"] == "unknown", ev
        assert ev["by"] == "kernel" and isinstance(ev["ts_ns"], int)
        assert {ev["a"], ev["b"]} == {f"{h}:{p}" for h, p in phone[1:]}
        pev = _classified(sub.events, p2p)[-1]
        assert pev["class"] == "skype-p2p" and pev["action"] == "pass", pev
        # the stream agrees with the flow table
        rows = rig.flows()
        assert rows[phone]["class"] == ev["class"] and rows[p2p]["class"] == pev["class"]
        assert w.recv[phone] == 0
    finally:
        sub.close()


def test_lazy_subscriber_is_dropped_and_the_daemon_serves_others(rig):
    rig.start()
    lazy = RawConn(rig.sock, rcvbuf=4096).subscribe()  # subscribes, then never reads
    good = RawConn(rig.sock).subscribe()
    lazy_cid = int(re.findall(r"control: client (\d+) subscribed to events", rig.log())[0])
    dropped = f"control: client {lazy_cid} (pid="
    try:
        with rig.wire([]) as w:
            n = [0]

            def flood(count: int) -> list[tuple]:
                """`count` new flows to the PSTN gateway: each is classified at its first packet, one event each."""
                keys = []
                for _ in range(count):
                    i = n[0]
                    n[0] += 1
                    src, port = (CLIENT, CLIENT2)[i // 60000], 2000 + i % 60000
                    side, frame, key = rig.frame(src, port, PSTN_GW, 5004, b"flood" * 8)
                    w.send(side, frame, key)
                    keys.append(key)
                return keys

            def lazy_dropped() -> bool:
                text = rig.log()
                return dropped in text and "too slow" in text.split(dropped, 1)[1].splitlines()[0]

            def burst() -> None:
                """500 new flows, then wait until the good subscriber has read their 500 events: it is never behind
                by more than a burst, while the lazy one's unsent events pile up."""
                flood(500)
                wait_for(lambda: (good.drain(), len(good.events) >= n[0])[1],
                         f"the reading subscriber to receive the events of all {n[0]} flows", timeout=30, every=0.02)

            wait_for(lazy_dropped, f"the daemon to drop the lazy subscriber (client {lazy_cid}) as too slow",
                     timeout=240, every=0.0, tick=burst)
            line = next(ln for ln in rig.log().splitlines() if dropped in ln)
            assert f"more than {MAX_OUTBUF} bytes unsent" in line, line
            print(f"{n[0]} flows sent; the reading subscriber read {len(good.events)} events ({good.nbytes} bytes)")
            # dropped because it did not read, after more than the limit was published: the reader got it all
            assert good.nbytes > MAX_OUTBUF and not good.eof
            assert len(good.events) == n[0], (len(good.events), n[0])

            # the lazy connection is closed: reading it now ends in EOF after what was in flight
            lazy.s.settimeout(10)
            got = 0
            while True:
                data = lazy.s.recv(1 << 16)
                if not data:
                    break
                got += len(data)
            assert got < MAX_OUTBUF + (1 << 20), got

            # the daemon goes on: the good subscriber still gets new classifications, a new client gets answers
            later = flood(3)
            wait_for(lambda: (good.drain(), all(_classified(good.events, k) for k in later))[1],
                     "the good subscriber to receive the classifications made after the drop", timeout=20)
            st = rig.call("status")
            assert st["pid"] == rig.proc.pid and rig.proc.poll() is None
            assert st["counters"]["act_drop"] >= n[0]
            late = RawConn(rig.sock).subscribe()
            try:
                k = flood(1)[0]
                wait_for(lambda: (late.drain(), _classified(late.events, k))[1],
                         "a new subscriber to receive a classification", timeout=20)
            finally:
                late.close()
            assert w.recv[k] == 0 and w.recv[later[0]] == 0
    finally:
        lazy.close()
        good.close()
