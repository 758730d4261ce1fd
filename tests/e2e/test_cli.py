"""The installed `skyguard` binary against the real daemon on the live router: every daemon command, with and without
--json, its exit code (0 ok, 1 error, 2 usage) and what it prints, checked against what the wire and the daemon saw.

One daemon for the module (the tests run in file order: block/unblock and the policy reload change its state and put
it back)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from skyguard import __version__
from skyguard.lab import demo as lab
from skyguard.lab.topo import CLIENT, PEER, PSTN_GW
from tests.conftest import skip_or_fail

from .conftest import Rig, settle, wait_for

pytestmark = pytest.mark.e2e

SKYGUARD = Path(sys.executable).with_name("skyguard")  # the installed entry point beside the venv's python
PC_TO_PC, PHONE_PREFIX = 0, 2
PLAYED_S = 2.0  # the calls play this long when the module starts


def run(*args: str, sock: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    argv = [str(SKYGUARD), *(["--socket", sock] if sock else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


class Live:
    """The module's rig, the calls played through it, and the CLI pointed at its socket."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.sched, main = rig.schedule([PC_TO_PC, PHONE_PREFIX])
        self.phone, self.p2p = main[PHONE_PREFIX], main[PC_TO_PC]
        self.sent: dict[tuple, int] = {}
        self.recv: dict[tuple, int] = {}
        self.pos = 0.0  # how far into the schedule the calls have played

    def play(self, seconds: float, passing: tuple = ()) -> tuple[Counter, Counter]:
        """Play the next `seconds` of both calls (waiting for the frames of the `passing` flows to arrive); returns
        (sent, received) per flow for this stretch."""
        with self.rig.wire(self.sched) as w:
            w.play(self.sched, 1.0, self.pos, self.pos + seconds, tail_s=0.1)
            settle(w, passing)
        self.pos += seconds
        for k in (self.phone, self.p2p):
            self.sent[k] = self.sent.get(k, 0) + w.sent[k]
            self.recv[k] = self.recv.get(k, 0) + w.recv[k]
        return w.sent, w.recv

    def sg(self, *args: str, rc: int = 0, timeout: float = 60) -> subprocess.CompletedProcess:
        r = run(*args, sock=self.rig.sock, timeout=timeout)
        assert r.returncode == rc, f"skyguard {' '.join(args)}: exit {r.returncode}, wanted {rc}\n{r.stdout}{r.stderr}"
        return r

    def sgj(self, *args: str) -> dict:
        r = self.sg(*args, "--json")
        return json.loads(r.stdout)

    def rows(self, *args: str) -> list[dict]:
        out = self.sgj("flows", *args)
        assert set(out) == {"flows"}, out.keys()
        return out["flows"]


@pytest.fixture(scope="module")
def live(bpf_ok):
    if not shutil.which("nsenter"):
        skip_or_fail("nsenter (util-linux) is missing")
    if not SKYGUARD.exists():
        pytest.fail(f"the installed CLI is missing: {SKYGUARD}", pytrace=False)
    rig = Rig()
    try:
        rig.up()
        rig.start()
        lv = Live(rig)
        lv.play(PLAYED_S, passing=(lv.p2p,))
        assert lv.sent[lv.phone] > 10 and lv.recv[lv.phone] == 0
        assert lv.sent[lv.p2p] > 10 and lv.recv[lv.p2p] == lv.sent[lv.p2p]
        yield lv
    except BaseException:
        print(f"--- skyguardd log ---\n{rig.log()[-4000:]}")
        raise
    finally:
        rig.down()  # Rig.up() registered its namespaces for the session's leftover check


def _ep(key: tuple, i: int) -> str:
    host, port = key[1 + i]
    return f"{host}:{port}"


# ---- status, stats ----------------------------------------------------------------------------------------------


def test_status(live):
    rig = live.rig
    st = live.sgj("status")
    assert st["pid"] == rig.proc.pid and st["version"] == __version__
    assert {i["name"] for i in st["interfaces"]} == {rig.topo.router_lan_if, rig.topo.router_wan_if}
    assert st["policy"]["name"] == "lab-block-pc-to-phone" and st["socket"] == rig.sock
    assert st["flows"]["count"] >= 2 and st["counters"]["act_drop"] >= live.sent[live.phone]
    human = live.sg("status").stdout
    lines = dict(ln.split(None, 1) for ln in human.splitlines() if len(ln.split(None, 1)) == 2)
    assert lines["pid"] == str(rig.proc.pid), human
    assert lines["policy.name"] == "lab-block-pc-to-phone", human
    assert int(lines["flows.count"]) >= 2, human
    assert rig.topo.router_lan_if in human and rig.topo.router_wan_if in human


def test_stats(live):
    st = live.sgj("stats")
    k = st["kernel"]
    assert k["act_drop"] >= live.sent[live.phone] and k["class_skype-out"] >= 1 and k["class_skype-p2p"] >= 1
    assert k["packets"] >= live.sent[live.phone] + live.sent[live.p2p]
    assert st["daemon"]["events"]["classified"] >= 2
    human = live.sg("stats").stdout
    lines = dict(ln.split(None, 1) for ln in human.splitlines() if len(ln.split(None, 1)) == 2)
    assert int(lines["kernel.act_drop"]) >= k["act_drop"], human
    assert "daemon.events.classified" in lines


# ---- flows, flow ------------------------------------------------------------------------------------------------


def test_flows_filters_sort_limit(live):
    every = live.rows("--limit", "1000")
    by_key = lab.rows_by_tuple(every)
    phone, p2p = by_key[live.phone], by_key[live.p2p]
    assert phone["class"] == "skype-out" and phone["action"] == "drop" and phone["dropped"] == live.sent[live.phone]
    assert p2p["class"] == "skype-p2p" and p2p["action"] == "pass" and p2p["dropped"] == 0

    out = live.rows("--class", "skype-out")
    assert out and all(r["class"] == "skype-out" for r in out), out
    assert live.phone in lab.rows_by_tuple(out) and live.p2p not in lab.rows_by_tuple(out)

    out = live.rows("--addr", PSTN_GW)
    assert out and all(PSTN_GW in (r["a"].rsplit(":", 1)[0], r["b"].rsplit(":", 1)[0]) for r in out), out
    assert live.phone in lab.rows_by_tuple(out) and live.p2p not in lab.rows_by_tuple(out)
    out = live.rows("--addr", "203.0.113.0/24", "--class", "skype-p2p")
    assert list(lab.rows_by_tuple(out)) == [live.p2p], out

    for key, field in (("packets", "packets"), ("bytes", "bytes"), ("first", "first_ns"), ("last", "last_ns")):
        out = live.rows("--sort", key, "--limit", "1000")
        vals = [r[field] for r in out]
        assert vals == sorted(vals, reverse=True), f"--sort {key} is not descending: {vals}"
    top = live.rows("--sort", "packets", "--limit", "1")
    assert len(top) == 1 and top[0]["packets"] == max(r["packets"] for r in live.rows("--limit", "1000"))
    assert len(live.rows("--limit", "2")) == 2

    human = live.sg("flows", "--class", "skype-out").stdout
    head, *body = human.splitlines()
    assert head.split()[:7] == ["PROTO", "A", "B", "VLAN", "CLASS", "REASON", "ACTION"], head
    line = next(ln for ln in body if _ep(live.phone, 0) in ln and _ep(live.phone, 1) in ln)
    assert "skype-out" in line.split() and "drop" in line.split() and "pstn-prefix" in line.split(), line
    assert not any(_ep(live.p2p, 0) in ln for ln in body)
    human = live.sg("flows", "--class", "skype-relay").stdout
    assert "(no flows)" in human

    for bad in (["--class", "skype-in"], ["--limit", "-1"], ["--limit", "x"], ["--addr", "not-an-address"],
                ["--sort", "size"]):
        r = live.sg("flows", *bad, rc=2)
        assert "usage:" in r.stderr and r.stdout == "", (bad, r.stderr)


def test_flow_detail(live):
    a, b = _ep(live.phone, 0), _ep(live.phone, 1)
    d = live.sgj("flow", "udp", a, b)
    assert d["class"] == "skype-out" and d["action"] == "drop" and d["reason"] == "pstn-prefix", d
    assert d["dropped"] == live.sent[live.phone] == d["packets"]
    assert live.sgj("flow", "udp", b, "<->", a)["packets"] == d["packets"]  # either order, as flows print it
    human = live.sg("flow", "udp", a, b).stdout
    kv = dict(ln.split(None, 1) for ln in human.splitlines() if len(ln.split(None, 1)) == 2)
    assert kv["class"] == "skype-out" and kv["action"] == "drop" and kv["dropped"] == str(d["dropped"]), human

    r = live.sg("flow", "udp", a, "192.0.2.250:9", rc=1)
    assert "not-found" in r.stderr and r.stdout == ""
    r = live.sg("flow", "udp", a, "192.0.2.250:9", "--json", rc=1)
    assert "not-found" in r.stderr
    for bad in (["udp", a], ["sctp", a, b], ["udp", a, "192.0.2.250"], ["udp", a, b, "vlan", "5000"]):
        r = live.sg("flow", *bad, rc=2)
        assert "usage:" in r.stderr, (bad, r.stderr)


# ---- block, blocks, unblock ---------------------------------------------------------------------------------------


def test_block_with_expiry_blocks_then_expires(live):
    rig = live.rig
    expire = 8.0  # long enough for the CLI calls and the play below on a slow, busy machine
    t_block = time.time()
    res = live.sgj("block", PEER, "--expire", f"{expire:g}")
    assert res["blocked"] == f"{PEER}/32" and res["flows"] >= 1, res
    assert abs(res["expires_ns"] / 1e9 - (t_block + expire)) < 2.0, res
    r = live.sg("block", "192.0.2.99")
    assert r.stdout.strip() == "blocked 192.0.2.99/32 (0 live flows caught)", r.stdout

    blocks = {b["prefix"]: b for b in live.sgj("blocks")["blocks"]}
    assert set(blocks) == {f"{PEER}/32", "192.0.2.99/32"}, blocks
    assert blocks["192.0.2.99/32"]["expires_ns"] == 0 and blocks[f"{PEER}/32"]["expires_ns"] == res["expires_ns"]
    human = live.sg("blocks").stdout.splitlines()
    assert human[0].split() == ["PREFIX", "EXPIRES"], human
    rows = {ln.split()[0]: ln for ln in human[1:]}
    assert "never" in rows["192.0.2.99/32"] and " in " in f" {rows[f'{PEER}/32']} ", human

    # while blocked the PC-to-PC call to PEER is dropped, existing flow and all
    assert lab.rows_by_tuple(live.rows("--addr", PEER))[live.p2p]["action"] == "drop"
    sent, recv = live.play(1.0)
    assert sent[live.p2p] > 10 and recv[live.p2p] == 0, "the blocked peer's call crossed"

    # the block goes by itself: wait for it to leave `blocks` and for the flow to pass again
    def expired() -> bool:
        return f"{PEER}/32" not in {b["prefix"] for b in live.sgj("blocks")["blocks"]}

    wait_for(expired, f"the {expire:g} s block of {PEER} to expire", timeout=30, every=0.25)
    gone = time.time()
    assert gone - t_block >= expire - 0.5, f"the block went after {gone - t_block:.1f} s, not {expire:g}"
    wait_for(lambda: lab.rows_by_tuple(live.rows("--addr", PEER))[live.p2p]["action"] == "pass",
             "the PC-to-PC flow's action to be pass again after the block expired", timeout=10)
    sent, recv = live.play(1.0, passing=(live.p2p,))  # fails here if the call does not pass after the expiry
    assert "manual unblock" in rig.log()

    # unblock, human and JSON; unblocking what is not blocked is an error; bad input is a usage error
    r = live.sg("unblock", "192.0.2.99")
    assert r.stdout.strip() == "unblocked 192.0.2.99/32"
    live.sg("block", "198.51.100.0/24", "--json")
    assert live.sgj("unblock", "198.51.100.0/24") == {"unblocked": "198.51.100.0/24"}
    r = live.sg("unblock", "192.0.2.99", rc=1)
    assert "not-found" in r.stderr and "192.0.2.99/32" in r.stderr
    assert live.sgj("blocks") == {"blocks": []}
    assert live.sg("blocks").stdout.strip() == "(no manual blocks)"
    for bad in (["block", "300.1.2.3"], ["block", "10.0.0.1/8"], ["block", PEER, "--expire", "0"],
                ["block", PEER, "--expire", "soon"], ["block"], ["unblock", "x"]):
        r = live.sg(*bad, rc=2)
        assert "usage:" in r.stderr, (bad, r.stderr)
    assert live.sgj("blocks") == {"blocks": []}


# ---- events -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "human"])
def test_events_stream_shows_a_classification(live, as_json):
    rig = live.rig
    argv = [str(SKYGUARD), "--socket", rig.sock, "events", "--count", "1", *(["--json"] if as_json else [])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = [50100 if as_json else 50200]
    try:
        with rig.wire([]) as w:

            def new_call() -> None:
                """A new call to the PSTN gateway (classified at its first packet) until the CLI has shown one."""
                side, frame, key = rig.frame(CLIENT, port[0], PSTN_GW, port[0] + 1, b"call-setup" * 5)
                w.send(side, frame, key)
                port[0] += 2

            wait_for(lambda: proc.poll() is not None, "`skyguard events --count 1` to print an event and exit",
                     timeout=60, every=0.2, tick=new_call)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    [line] = out.splitlines()
    if as_json:
        ev = json.loads(line)
        assert ev["type"] == "classified" and ev["class"] == "skype-out" and ev["action"] == "drop", ev
        assert ev["b"].startswith(f"{PSTN_GW}:") or ev["a"].startswith(f"{PSTN_GW}:"), ev
    else:
        assert "classified" in line and "class=skype-out" in line and "action=drop" in line and PSTN_GW in line, line


def test_events_no_follow_ends_when_quiet(live):
    t0 = time.monotonic()
    r = live.sg("events", "--no-follow", "--timeout", "0.5", "--json", timeout=30)
    assert r.stdout == "" and time.monotonic() - t0 < 25
    r = live.sg("events", "--count", "0", rc=2)
    assert "usage:" in r.stderr


# ---- policy -----------------------------------------------------------------------------------------------------


def test_policy_show_check_reload(live, tmp_path):
    rig = live.rig
    show = live.sgj("policy", "show")
    assert show["name"] == "lab-block-pc-to-phone" and show["classes"]["skype-out"]["action"] == "drop"
    assert show["pstn"]["prefixes"] == [f"{PSTN_GW}/32"]
    human = live.sg("policy", "show").stdout
    kv = dict(ln.split(None, 1) for ln in human.splitlines() if len(ln.split(None, 1)) == 2)
    assert kv["name"] == "lab-block-pc-to-phone" and kv["classes.skype-out.action"] == "drop", human

    good = tmp_path / "good.toml"
    good.write_text(lab.LAB_POLICY)
    bad = tmp_path / "bad.toml"
    bad.write_text(lab.LAB_POLICY.replace('action = "drop"', 'action = "explode"', 1))
    bad_line = bad.read_text().splitlines().index('action = "explode"') + 1

    # offline check (no daemon involved) and the daemon's check
    r = live.sg("policy", "check", str(good))
    assert r.stdout.strip() == f"{good}: ok (policy 'lab-block-pc-to-phone')"
    assert live.sgj("policy", "check", str(good)) == {"file": str(good), "ok": True, "name": "lab-block-pc-to-phone"}
    r = live.sg("policy", "check", str(bad), rc=1)
    assert f"{bad}:{bad_line}" in r.stderr, r.stderr
    r = live.sg("policy", "check", str(bad), "--json", rc=1)
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["errors"][0]["line"] == bad_line, out
    r = live.sg("policy", "check", "--daemon", str(good))
    assert "ok" in r.stdout and "lab-block-pc-to-phone" in r.stdout
    assert live.sgj("policy", "check", "--daemon", str(good))["ok"] is True
    r = live.sg("policy", "check", "--daemon", str(bad), rc=1)
    assert "bad-policy" in r.stderr and f"{bad}:{bad_line}" in r.stderr, r.stderr
    r = live.sg("policy", "check", str(tmp_path / "missing.toml"), rc=1)
    assert "missing.toml" in r.stderr
    live.sg("policy", "check", rc=2)
    live.sg("policy", rc=2)

    # reload: the configured file, changed to let phone calls through, then broken (refused), then back
    try:
        rig.policy.write_text(lab.LAB_POLICY.replace('action = "drop"', 'action = "pass"', 1).replace(
            'name = "lab-block-pc-to-phone"', 'name = "lab-let-phones-through"'))
        r = live.sg("policy", "reload")
        assert r.stdout.strip() == "policy reloaded: lab-let-phones-through"
        assert live.sgj("policy", "show")["classes"]["skype-out"]["action"] == "pass"
        sent, recv = live.play(1.0, passing=(live.phone, live.p2p))  # fails here if phones are still dropped

        rig.policy.write_text(bad.read_text())
        r = live.sg("policy", "reload", rc=1)
        assert "bad-policy" in r.stderr and f"{rig.policy}:{bad_line}" in r.stderr, r.stderr
        assert live.sgj("policy", "show")["name"] == "lab-let-phones-through"  # the running policy stayed
    finally:
        rig.policy.write_text(lab.LAB_POLICY)
        res = live.sgj("policy", "reload")
    assert res["ok"] is True and res["name"] == "lab-block-pc-to-phone"
    sent, recv = live.play(1.0, passing=(live.p2p,))
    assert sent[live.phone] > 10 and recv[live.phone] == 0


# ---- errors and usage -------------------------------------------------------------------------------------------


def test_no_daemon_usage_and_version(live, tmp_path):
    r = run("status", sock=str(tmp_path / "nobody.sock"))
    assert r.returncode == 1 and "is skyguardd running" in r.stderr and r.stdout == "", r
    r = run("flows", "--json", sock=str(tmp_path / "nobody.sock"))
    assert r.returncode == 1 and r.stdout == ""
    for argv in ([], ["frobnicate"], ["status", "--bogus"], ["block"]):
        r = run(*argv, sock=live.rig.sock)
        assert r.returncode == 2 and "usage:" in r.stderr, (argv, r)
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"skyguard {__version__}", r
    assert live.sgj("status")["version"] == __version__
    # the daemon served all of it and is still the same process
    assert live.rig.proc.poll() is None
