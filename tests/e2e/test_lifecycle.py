"""The daemon's life cycle on the live router: idle flows expire, `on_stop = keep | detach`, `xdp_mode = auto` falling
back to generic, and a restart that replaces the program while traffic is in flight."""

from __future__ import annotations

import os
import random
import time

import pytest

from skyguard.lab import demo as lab
from skyguard.lab.topo import CLIENT, CLIENT2, PEER, PSTN_GW

from .conftest import settle, wait_for

pytestmark = pytest.mark.e2e

PC_TO_PC, PHONE_PREFIX = 0, 2
OTHER_HOST = "192.0.2.31"  # an internet host no policy names: its flows are unknown/other and pass


def _noise(rng: random.Random) -> bytes:
    """A payload no signature matches (ASCII text: no STUN/RTP/SoM header bytes), of varying size."""
    return b"plain-datagram " + bytes(rng.choice(b"abcdefghijklmnop") for _ in range(rng.randrange(20, 160)))


def _pins(rig) -> list[str]:
    return sorted(os.listdir(rig.pin_path)) if os.path.isdir(rig.pin_path) else []


# ---- idle-flow expiry -------------------------------------------------------------------------------------------


def test_idle_flows_expire_by_class_timeout_active_flow_stays(rig):
    other_s, udp_s = 3.0, 6.0  # the active flow's keep-alive waits on a flows reply: room for a slow one
    rig.configure(extra=f"[idle_timeout]\nudp = {udp_s:g}\nother = {other_s:g}\ntcp = 3600\n")
    rig.start()
    rng = random.Random(1)
    quiet_other = rig.frame(CLIENT, 41001, OTHER_HOST, 41002, b"")[2]
    quiet_out = rig.frame(CLIENT, 41003, PSTN_GW, 41004, b"")[2]
    alive = rig.frame(CLIENT2, 41005, OTHER_HOST, 41006, b"")[2]
    last_sent: dict[tuple, float] = {}
    with rig.wire([]) as w:

        def send(key: tuple) -> None:
            (_p, (a, ap), (b, bp)) = key
            src, sp, dst, dp = (a, ap, b, bp) if a.startswith("198.18.") else (b, bp, a, ap)
            side, frame, k = rig.frame(src, sp, dst, dp, _noise(rng))
            w.send(side, frame, k)
            last_sent[k] = time.monotonic()

        for _ in range(5):
            for key in (quiet_other, quiet_out, alive):
                send(key)
        w.receive(0.2)
        rows = rig.flows()
        assert {quiet_other, quiet_out, alive} <= rows.keys(), sorted(rows)
        assert rows[quiet_out]["class"] == "skype-out" and rows[quiet_out]["dropped"] == 5, rows[quiet_out]
        assert rows[quiet_other]["class"] in ("unknown", "other"), rows[quiet_other]

        gone_at: dict[tuple, float] = {}
        next_alive = [0.0]

        def keep_alive() -> None:  # the active flow gets a packet every 0.2 s: it must never expire
            if time.monotonic() >= next_alive[0]:
                send(alive)
                next_alive[0] = time.monotonic() + 0.2
            w.receive(0.0)

        def both_gone() -> bool:
            rows = rig.flows()
            for key in (quiet_other, quiet_out):
                if key not in rows:
                    gone_at.setdefault(key, time.monotonic())
            assert alive in rows, f"the active flow expired: {rows.get(alive)}"
            return len(gone_at) == 2

        wait_for(both_gone, "both quiet flows to leave the daemon's flow list", timeout=40, every=0.2, tick=keep_alive)
    # a flow is removed only after its class's timeout (unknown/other: `other`; a decided UDP class: `udp`)
    q_other = gone_at[quiet_other] - last_sent[quiet_other]
    q_out = gone_at[quiet_out] - last_sent[quiet_out]
    print(f"expired after {q_other:.1f} s (other, timeout {other_s:g}), "
          f"{q_out:.1f} s (skype-out, timeout {udp_s:g})")
    assert q_other >= other_s - 0.1, f"an unknown flow expired after {q_other:.2f} s of quiet (timeout {other_s})"
    assert q_out >= udp_s - 0.1, f"a skype-out flow expired after {q_out:.2f} s of quiet (udp timeout {udp_s})"
    stats = rig.call("stats")
    assert stats["daemon"]["expired_flows"] >= 2, stats["daemon"]
    # the expired call's next packet opens a new flow, still dropped (the PSTN prefix is in the kernel's map)
    with rig.wire([]) as w:
        side, frame, key = rig.frame(CLIENT, 41003, PSTN_GW, 41004, _noise(rng))
        w.send(side, frame, key)
        w.receive(0.2)
        assert w.recv[key] == 0
    row = wait_for(lambda: rig.flows().get(quiet_out), "the expired flow's new packet to open a flow again")
    assert row["packets"] == 1 and row["dropped"] == 1 and row["class"] == "skype-out", row


# ---- on_stop ----------------------------------------------------------------------------------------------------


def test_on_stop_keep_leaves_program_enforcing_and_maps_pinned(rig):
    rig.configure(on_stop="keep")
    st = rig.start()
    t = rig.topo
    ifs = (t.router_lan_if, t.router_wan_if)
    before = {i: rig.xdp(i) for i in ifs}
    assert all(pid == st["prog_id"] for _m, pid in before.values()), (before, st["prog_id"])
    sched, main = rig.schedule([PC_TO_PC, PHONE_PREFIX])
    phone, p2p = main[PHONE_PREFIX], main[PC_TO_PC]
    with rig.wire(sched) as w:
        w.play(sched, 1.0, 0.0, 1.5, tail_s=0.1)
        settle(w, [p2p])
        assert w.sent[phone] > 10 and w.recv[phone] == 0 and w.recv[p2p] == w.sent[p2p] > 10
        assert rig.stop() == 0
        assert "program stays attached" in rig.log()
        after = {i: rig.xdp(i) for i in ifs}
        assert after == before, f"on_stop = keep: the attached programs changed at stop: {before} -> {after}"
        pins = _pins(rig)
        assert "flows" in pins, f"on_stop = keep: the flow map is not pinned under {rig.pin_path}: {pins}"
        # no daemon: the known call stays blocked, the PC call passes, and a new flow to the PSTN gateway (an LPM
        # lookup in the pinned maps) is dropped from its first packet
        sent = w.sent[p2p]
        w.play(sched, 1.0, 1.5, 3.0, tail_s=0.1)
        settle(w, [p2p], "the PC-to-PC call's frames to cross after the daemon stopped (on_stop = keep)")
        assert w.sent[p2p] - sent > 20
        assert w.recv[phone] == 0, "the blocked call crossed after the daemon stopped with on_stop = keep"
        assert w.recv[p2p] == w.sent[p2p], "the PC-to-PC call lost packets after the daemon stopped"
        side, frame, key = rig.frame(CLIENT, 42001, PSTN_GW, 42002, b"new-call-after-stop" * 3)
        for _ in range(5):
            w.send(side, frame, key)
        w.receive(0.3)
        assert w.recv[key] == 0, "a new flow to the PSTN gateway crossed with no daemon (on_stop = keep)"
        side, frame, key = rig.frame(CLIENT2, 42003, OTHER_HOST, 42004, b"other-traffic-after-stop" * 3)
        for _ in range(5):
            w.send(side, frame, key)
        wait_for(lambda: w.recv[key] == 5, "5 frames of a new unknown flow to cross with no daemon",
                 timeout=5, tick=lambda: w.receive(0.05))


def test_on_stop_detach_leaves_nothing_attached(rig):
    rig.configure(on_stop="detach")
    st = rig.start()
    t = rig.topo
    ifs = (t.router_lan_if, t.router_wan_if)
    assert all(rig.xdp(i)[1] == st["prog_id"] for i in ifs)
    sched, main = rig.schedule([PHONE_PREFIX])
    phone = main[PHONE_PREFIX]
    with rig.wire(sched) as w:
        w.play(sched, 1.0, 0.0, 1.0, tail_s=0.2)
        assert w.sent[phone] > 5 and w.recv[phone] == 0
        assert rig.stop() == 0
        assert {i: rig.xdp(i) for i in ifs} == {i: (None, None) for i in ifs}, "on_stop = detach left XDP attached"
        # docs/operations.md: detach removes the program from the interfaces; the pins stay
        assert "flows" in _pins(rig), f"on_stop = detach: the pinned maps under {rig.pin_path} went: {_pins(rig)}"
        # nothing enforces any more: the call that was blocked now crosses the router
        sent = w.sent[phone]
        w.play(sched, 1.0, 1.0, 2.0, tail_s=0.1)
        assert w.sent[phone] - sent > 5
        wait_for(lambda: w.recv[phone] == w.sent[phone] - sent, "the once-blocked call to cross after detach",
                 timeout=10, tick=lambda: w.receive(0.05))


# ---- xdp_mode = auto ------------------------------------------------------------------------------------------------


def test_jumbo_peer_still_native_and_enforces(rig):
    """veth refuses native XDP for a program that is not frags-aware when its peer's MTU exceeds a page's worth
    (drivers/net/veth.c: "Peer MTU is too large to set XDP"); skyguard's program is frags-aware, so with the LAN
    client's end at MTU 9000 `auto` stays native on both interfaces, and enforces."""
    t = rig.topo
    t.sh(t.lan_ns, "ip", "link", "set", "dev", t.client_if, "mtu", "9000")
    rig.configure(xdp_mode="auto")
    st = rig.start()
    modes = {i["name"]: i["mode"] for i in st["interfaces"]}
    assert modes == {t.router_lan_if: "native", t.router_wan_if: "native"}, modes
    assert rig.xdp(t.router_lan_if) == ("native", st["prog_id"])
    sched, main = rig.schedule([PC_TO_PC, PHONE_PREFIX])
    phone, p2p = main[PHONE_PREFIX], main[PC_TO_PC]
    with rig.wire(sched) as w:
        w.play(sched, 1.0, 0.0, 2.0, tail_s=0.1)
        settle(w, [p2p], "the PC-to-PC call's frames to cross the program")
    assert w.sent[phone] > 10 and w.recv[phone] == 0, "the program did not drop the phone call"
    assert w.sent[p2p] > 10 and w.recv[p2p] == w.sent[p2p]
    assert rig.flows()[phone]["dropped"] == w.sent[phone]


def test_native_mode_refuses_instead_of_falling_back(rig):
    """`native` means native: the WAN side (attached second) refuses it, the daemon exits 1 naming the interface and
    the kernel's reason, and takes back what it attached to the LAN side. The WAN interface becomes a macvlan on the
    old veth, a driver without native XDP (veth has it at any MTU for a frags-aware program)."""
    t = rig.topo
    under = "sgu" + t.router_wan_if[3:]
    t.sh(t.router_ns, "ip", "link", "set", t.router_wan_if, "down")
    t.sh(t.router_ns, "ip", "link", "set", t.router_wan_if, "name", under)
    t.sh(t.router_ns, "ip", "link", "set", under, "up")
    t.sh(t.router_ns, "ip", "link", "add", "link", under, "name", t.router_wan_if, "type", "macvlan")
    t.sh(t.router_ns, "ip", "link", "set", t.router_wan_if, "up")
    rig.configure(xdp_mode="native")
    proc = rig.spawn()
    assert proc.wait(60) == 1, rig.log()[-2000:]
    assert f"cannot attach XDP to {t.router_wan_if}: native: " in rig.log(), rig.log()[-2000:]
    assert "native: driver macvlan has no native XDP" in rig.log(), rig.log()[-2000:]  # the cause, by name
    assert rig.xdp(t.router_wan_if) == (None, None)
    assert rig.xdp(t.router_lan_if) == (None, None), "a failed start left the program on the LAN interface"
    assert "start failed: nothing attached" in rig.log()  # the log claims no attach that is not there


# ---- restart with traffic in flight ---------------------------------------------------------------------------------


def test_restart_replaces_program_with_traffic_in_flight(rig):
    """With on_stop = keep (the shipped default), stop the daemon and start a new one while a blocked call and passing
    flows keep sending: the old program enforces until the new one replaces it atomically, so no frame of the blocked
    call crosses and no passing frame is lost, including new flows opened in the gap."""
    rig.configure(on_stop="keep")
    st0 = rig.start()
    t = rig.topo
    old_id = st0["prog_id"]
    rng = random.Random(2)
    blocked: set[tuple] = set()
    passing: set[tuple] = set()
    n = [0]
    with rig.wire([]) as w:

        def traffic() -> None:
            """One frame of the blocked call and one of the long passing flow; every 25th round a new flow of each
            (a new PSTN flow is blocked from its first packet by the pinned prefix map)."""
            i = n[0]
            n[0] += 1
            port = 43000 + 2 * (i // 25)
            for src, sp, dst, dp, into in ((CLIENT, 40000, PSTN_GW, 40001, blocked),
                                           (PEER, 40003, CLIENT, 40002, passing),
                                           (CLIENT, port, PSTN_GW, port + 1, blocked),
                                           (CLIENT2, port, OTHER_HOST, port + 1, passing)):
                side, frame, key = rig.frame(src, sp, dst, dp, _noise(rng))
                w.send(side, frame, key)
                into.add(key)
            w.receive(0.01)

        def run(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                traffic()

        run(1.0)
        assert rig.stop() == 0  # SIGTERM
        rounds_at_stop = n[0]
        assert rig.xdp(t.router_lan_if)[1] == old_id, "on_stop = keep: the program left at stop"
        run(0.5)
        new = rig.spawn()
        ready: list[dict] = []

        def up() -> bool:
            if new.poll() is not None:
                raise AssertionError(f"the new daemon exited with {new.returncode}:\n{rig.log()[-3000:]}")
            try:
                with rig.client(timeout=2) as c:
                    ready.append(c.call("status"))
            except Exception:  # noqa: BLE001 - not up yet: no socket, or not answering
                return False
            return True

        wait_for(up, "the restarted daemon to answer `status`", timeout=120, every=0.0, tick=lambda: run(0.3))
        gap_rounds = n[0] - rounds_at_stop
        run(1.0)
        settle(w, passing, "every frame of the passing flows to arrive")
        new_id = ready[0]["prog_id"]
        assert new_id and new_id != old_id, (old_id, new_id)
        assert rig.xdp(t.router_lan_if)[1] == new_id and rig.xdp(t.router_wan_if)[1] == new_id
        print(f"{n[0]} rounds, {gap_rounds} while no daemon ran or it started; "
              f"{len(blocked)} blocked and {len(passing)} passing flows")
        assert gap_rounds > 50, "too little traffic crossed the restart to mean anything"
        crossed = {k: w.recv[k] for k in blocked if w.recv[k]}
        assert not crossed, f"frames of blocked flows crossed during the restart: {crossed}"
        lost = {k: (w.sent[k], w.recv[k]) for k in passing if w.recv[k] != w.sent[k]}
        assert not lost, f"passing flows lost frames during the restart (sent, received): {lost}"
    rows = rig.flows()
    call = lab._tuple(CLIENT, 40000, PSTN_GW, 40001, 17)
    assert rows[call]["dropped"] == w.sent[call] and rows[call]["class"] == "skype-out", rows[call]
    assert ready[0]["flows"]["adopted"] >= 4
