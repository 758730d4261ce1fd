"""Policy reload on the live daemon (SIGHUP and policy.reload), and interfaces that vanish and come back."""

from __future__ import annotations

import json
import re
import signal

import pytest

from skyguard.cli.client import ClientError
from skyguard.lab import demo as lab

from .conftest import settle, wait_for

pytestmark = pytest.mark.e2e

PC_TO_PC, PHONE_PREFIX, PHONE_BEHAVIOUR = 0, 2, 3
BROKEN_LINE = 'action = "explode"'


def _broken_policy() -> tuple[str, int]:
    """The lab policy with skype-out's action misspelt; returns the text and the bad line's number."""
    text = lab.LAB_POLICY.replace('action = "drop"', BROKEN_LINE, 1)
    return text, text.splitlines().index(BROKEN_LINE) + 1


def _pass_policy() -> str:
    return lab.LAB_POLICY.replace('action = "drop"', 'action = "pass"', 1).replace(
        'name = "lab-block-pc-to-phone"', 'name = "lab-let-phones-through"')


def _log_events(text: str, event: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            if str(d.get("event", "")).startswith(event):
                out.append(d)
    return out


def test_reload_bad_policy_kept_good_policy_swapped(rig):
    rig.start()
    sched, main = rig.schedule([PC_TO_PC, PHONE_PREFIX])
    phone, p2p = main[PHONE_PREFIX], main[PC_TO_PC]
    with rig.wire(sched) as w:
        w.play(sched, 1.0, 0.0, 1.5, tail_s=0.1)
        settle(w, [p2p])
        assert w.sent[phone] > 10 and w.recv[phone] == 0
        st0, show0 = rig.call("status"), rig.call("policy.show")
        assert show0["classes"]["skype-out"]["action"] == "drop"

        broken, line = _broken_policy()
        rig.policy.write_text(broken)
        where = f"{rig.policy}:{line}"
        # SIGHUP: refused, logged with file:line, nothing changes
        pos = len(rig.log())
        rig.signal(signal.SIGHUP)
        text = rig.wait_log("policy reload refused", start=pos)
        refused = _log_events(text, "policy reload refused")
        assert refused and where in refused[0]["error"], refused
        # policy.reload over the socket: an error reply naming file:line
        with pytest.raises(ClientError) as ei:
            rig.call("policy.reload")
        assert ei.value.code == "bad-policy"
        assert where in ei.value.message, ei.value.message
        # policy.check names it too
        with pytest.raises(ClientError) as ei:
            rig.call("policy.check", path=str(rig.policy))
        assert where in ei.value.message
        st1, show1 = rig.call("status"), rig.call("policy.show")
        assert show1 == show0
        assert st1["policy"] == st0["policy"]
        assert rig.proc.poll() is None
        w.play(sched, 1.0, 1.5, 2.5, tail_s=0.1)
        settle(w, [p2p])
        assert w.recv[phone] == 0, "the phone call crossed under the kept policy"

        # a good file swaps atomically: skype-out now passes and the blocked call flows again
        rig.policy.write_text(_pass_policy())
        res = rig.call("policy.reload")
        assert res["name"] == "lab-let-phones-through"
        show2 = rig.call("policy.show")
        assert show2["classes"]["skype-out"]["action"] == "pass" and show2["digest"] != show0["digest"]
        assert rig.call("status")["policy"]["name"] == "lab-let-phones-through"
        sent = w.sent[phone]
        w.play(sched, 1.0, 2.5, 3.5, tail_s=0.1)
        assert w.sent[phone] - sent > 50
        settle(w, [p2p])
        wait_for(lambda: w.recv[phone] == w.sent[phone] - sent, "the phone call to flow after skype-out became pass",
                 timeout=10, tick=lambda: w.receive(0.05))
        row = rig.flows()[phone]
        assert row["class"] == "skype-out" and row["action"] == "pass"  # the flow kept its class across reloads

        # and back to drop with SIGHUP
        rig.policy.write_text(lab.LAB_POLICY)
        pos = len(rig.log())
        rig.signal(signal.SIGHUP)
        rig.wait_log('"policy reloaded"', start=pos)
        assert rig.call("policy.show")["digest"] == show0["digest"]
        recv = w.recv[phone]
        w.play(sched, 1.0, 3.5, tail_s=0.1)
        settle(w, [p2p])
        assert w.recv[phone] == recv


def _ip_xdp_prog(rig, ifname: str) -> int | None:
    out = rig.topo.sh(rig.topo.router_ns, "ip", "-d", "link", "show", "dev", ifname, check=False).stdout
    m = re.search(r"prog/xdp\w* id (\d+)", out)
    return int(m.group(1)) if m else None


def test_interface_recreated_gets_program_back(rig):
    st = rig.start()
    t = rig.topo
    lan_if = t.router_lan_if
    prog0 = _ip_xdp_prog(rig, lan_if)
    assert prog0 and prog0 == st["prog_id"], (prog0, st["prog_id"])
    sched, main = rig.schedule([PC_TO_PC, PHONE_PREFIX])
    phone, p2p = main[PHONE_PREFIX], main[PC_TO_PC]
    with rig.wire(sched) as w:
        w.play(sched, 1.0, 0.0, 1.5, tail_s=0.1)
        settle(w, [p2p])
    assert w.recv[phone] == 0 and w.sent[phone] > 10

    old_index = next(i["ifindex"] for i in st["interfaces"] if i["name"] == lan_if)
    t.recreate_lan_link()
    wait_for(lambda: _ip_xdp_prog(rig, lan_if), f"the daemon to attach its program to the re-created {lan_if}")
    assert _ip_xdp_prog(rig, lan_if) == prog0, rig.topo.sh(t.router_ns, "ip", "-d", "link", "show", lan_if).stdout
    ifs = {i["name"]: i for i in rig.call("status")["interfaces"]}
    assert lan_if in ifs and ifs[lan_if]["ifindex"] != old_index, ifs

    # blocking works again through the new interface (new MACs: build the frames again), for the call that was
    # already blocked and for a new one (another seed: other ports)
    sched, main = rig.schedule([PC_TO_PC, PHONE_PREFIX])
    sched2, main2 = rig.schedule([PHONE_PREFIX], seed=8)
    phone2 = main2[PHONE_PREFIX]
    assert phone2 != phone
    later = [x for x in sched if x[0] >= 1.5] + [(ts + 1.5, *rest) for ts, *rest in sched2]
    with rig.wire(sched + sched2) as w:
        w.play(sorted(later, key=lambda x: x[0]), 1.0, 1.5, tail_s=0.1)
        settle(w, [p2p])
    assert w.sent[phone] > 50 and w.recv[phone] == 0
    assert w.sent[phone2] > 50 and w.recv[phone2] == 0
    assert w.sent[p2p] > 50 and w.recv[p2p] == w.sent[p2p]
    rows = rig.flows()
    assert rows[phone2]["class"] == "skype-out" and rows[phone2]["action"] == "drop", rows[phone2]
    assert rows[phone2]["dropped"] == w.sent[phone2]


def test_missing_interface_at_start_is_an_error(rig):
    missing = f"sgx{rig.topo.tag}"
    cfg = lab.write_config(rig.tmp / "missing.toml", rig.topo, policy=rig.policy, socket=rig.sock,
                           pin_path=rig.pin_path, interfaces=[rig.topo.router_lan_if, missing])
    proc = rig.spawn(cfg=cfg)
    assert proc.wait(60) == 1
    assert missing in rig.log(), rig.log()
    assert _ip_xdp_prog(rig, rig.topo.router_lan_if) is None  # nothing was attached
