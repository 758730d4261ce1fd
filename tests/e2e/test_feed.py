"""Microsoft's endpoint feed on the live router: a feed change moves the relay address in and out of
`microsoft_media` for new flows, with no restart and no flow lost, and a broken feed is refused with its position
while the old ranges stay in force. The feed reaches the daemon the way it does on a router: `skyguard feed update`
downloads it from an HTTP server (here on 127.0.0.1, in the test) and reloads the daemon; SIGHUP and
`skyguard policy reload` read the file as it is."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from skyguard.lab import demo as lab
from skyguard.lab.topo import CLIENT, RELAY
from tests import feedfiles as ff

from .conftest import wait_for

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "skyguard.cli"]
RELAY_PORT = 3478  # a UDP relay port: a flow to a Microsoft media prefix on it is skype-relay (ms-prefix) at once
PAYLOAD = b"skyguard feed test datagram: no STUN, RTP or SoM header in here"
# feed "in": the relay's /27 in the Skype Optimize set (with an IPv6 range beside it)
FEED_IN = {"optimize": ["203.0.113.64/27", "2001:db8:1063::/48"]}
# feed "out": the Optimize set moved to another /27; the relay address is still published, but only in the Skype
# Allow set and in Exchange's Optimize set, which do not count
FEED_OUT = {"optimize": ["203.0.113.96/27", "2001:db8:1063::/48"], "allow": [f"{RELAY}/32"],
            "exchange": [f"{RELAY}/32", "13.107.6.152/31"]}


def _policy(feed_path: str) -> str:
    text = lab.LAB_POLICY.replace('prefixes = ["203.0.113.64/27"]', f'feed = "{feed_path}"')
    assert text != lab.LAB_POLICY
    return text


def _cli(rig, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--socket", rig.sock, *argv], capture_output=True, text=True, timeout=120)


def _update(rig, feeds: ff.Feeds, path: str, feed_file) -> subprocess.CompletedProcess[str]:
    return _cli(rig, "feed", "update", "--url", feeds.url(path), "--output", str(feed_file), "--timeout", "30")


class Flows:
    """UDP flows from the LAN client to the relay, one source port each, sent through the router."""

    def __init__(self, rig, wire: lab.Wire) -> None:
        self.rig, self.wire = rig, wire
        self.keys: dict[str, tuple] = {}

    def send(self, name: str, sport: int, n: int = 5) -> tuple:
        for _ in range(n):
            side, frame, key = self.rig.frame(CLIENT, sport, RELAY, RELAY_PORT, PAYLOAD)
            self.wire.send(side, frame, key)
        self.wire.receive(0.2)
        self.keys[name] = key
        return key

    def row(self, name: str) -> dict:
        """The daemon's row for the flow once it shows every packet sent (flows are a snapshot)."""
        key = self.keys[name]
        return wait_for(lambda: (r := self.rig.flows().get(key)) and r["packets"] == self.wire.sent[key] and r,
                        f"flow {name} with {self.wire.sent[key]} packets", timeout=10)


def test_feed_change_moves_the_relay_without_restart_or_lost_flows(rig):
    feed_file = rig.tmp / "ms-endpoints.json"
    ff.write_feed(feed_file, **FEED_IN)
    rig.policy.write_text(_policy(str(feed_file)))
    st0 = rig.start()
    pid = rig.proc.pid
    show = rig.call("policy.show")["microsoft_media"]
    assert show["feed"]["sets"] == [11] and show["feed"]["path"] == str(feed_file)
    assert show["prefixes"] == ["203.0.113.64/27", "2001:db8:1063::/48"], show

    with ff.serve() as feeds, rig.wire([]) as w:
        flows = Flows(rig, w)
        # 1. feed "in": a new flow to the relay is skype-relay from its first packet
        flows.send("A", 40001)
        a0 = flows.row("A")
        assert (a0["class"], a0["reason"]) == ("skype-relay", "ms-prefix"), a0
        print(f"feed in : new flow A to {RELAY}:{RELAY_PORT} -> {a0['class']} ({a0['reason']})")

        # 2. a broken download is refused by the updater: the file and the running policy stay
        text, line, col = ff.broken_feed_text()
        feeds.routes["/broken"] = (200, text.encode(), {})
        before = feed_file.read_bytes()
        r = _update(rig, feeds, "/broken", feed_file)
        assert r.returncode == 1
        assert f"{feeds.url('/broken')}:{line}:{col}: not valid JSON" in r.stderr, r.stderr
        print(f"update refused: {r.stderr.strip()}")
        assert feed_file.read_bytes() == before

        # 3. a broken feed file in place: `skyguard policy reload` and SIGHUP are refused, naming the policy's
        # line and the feed's line:column; the old ranges stay in force for new flows
        feed_file.write_text(text)
        feed_line = rig.policy.read_text().splitlines().index(f'feed = "{feed_file}"') + 1
        reason = (f"{rig.policy}:{feed_line}: microsoft_media.feed: {feed_file}:{line}:{col}: not valid JSON: "
                  "Expecting property name enclosed in double quotes")
        r = _cli(rig, "policy", "reload")
        assert r.returncode == 1 and reason in r.stderr, r.stderr
        print(f"reload refused: {r.stderr.strip()}")
        pos = len(rig.log())
        rig.signal(signal.SIGHUP)
        logged = rig.wait_log("policy reload refused", start=pos)
        assert reason in logged
        assert rig.call("policy.show")["microsoft_media"] == show
        flows.send("B", 40002)
        b = flows.row("B")
        assert (b["class"], b["reason"]) == ("skype-relay", "ms-prefix"), b
        print(f"after the refused reloads: new flow B -> {b['class']} ({b['reason']})")

        # 4. feed "out" through the updater: installed and reloaded, no restart
        feeds.routes["/endpoints/worldwide"] = (200, ff.feed_text(**FEED_OUT).encode(), {})
        rows_before = rig.flows()
        r = _update(rig, feeds, "/endpoints/worldwide", feed_file)
        assert r.returncode == 0, r.stderr
        assert "policy reloaded: lab-block-pc-to-phone" in r.stdout, r.stdout
        assert json.loads(feed_file.read_text()) == ff.endpoint_sets(**FEED_OUT)
        show_out = rig.call("policy.show")["microsoft_media"]
        assert show_out["prefixes"] == ["203.0.113.96/27", "2001:db8:1063::/48"], show_out
        rows_after = rig.flows()
        assert rows_before.keys() <= rows_after.keys(), "a flow was lost across the reload"
        print(f"reload to feed out: flows {len(rows_before)} before, {len(rows_after)} after")
        flows.send("C", 40003)
        c = flows.row("C")
        assert c["class"] != "skype-relay" and c["reason"] != "ms-prefix", c
        print(f"feed out: new flow C -> {c['class']} ({c['reason']})")
        # the existing flow keeps its class and its counters, and goes on
        flows.send("A", 40001)
        a1 = flows.row("A")
        assert (a1["class"], a1["packets"], a1["first_ns"]) == ("skype-relay", 10, a0["first_ns"]), (a0, a1)
        assert w.recv[flows.keys["A"]] == w.sent[flows.keys["A"]] == 10  # every packet crossed the router

        # 5. back to feed "in" by SIGHUP after the file changes: new flows to the relay are skype-relay again
        ff.write_feed(feed_file, **FEED_IN)
        rows_before = rig.flows()
        pos = len(rig.log())
        rig.signal(signal.SIGHUP)
        rig.wait_log('"policy reloaded"', start=pos)
        assert rig.call("policy.show")["microsoft_media"]["prefixes"] == show["prefixes"]
        flows.send("D", 40004)
        d = flows.row("D")
        assert (d["class"], d["reason"]) == ("skype-relay", "ms-prefix"), d
        rows_after = rig.flows()
        assert rows_before.keys() <= rows_after.keys()
        print(f"feed in again: new flow D -> {d['class']} ({d['reason']}); flows {len(rows_before)} before, "
              f"{len(rows_after)} after")
        for name, want in (("A", "skype-relay"), ("B", "skype-relay"), ("C", c["class"])):
            assert rows_after[flows.keys[name]]["class"] == want, (name, rows_after[flows.keys[name]])
        assert rows_after[flows.keys["A"]]["packets"] == 10
        assert rows_after[flows.keys["C"]]["packets"] == 5

    assert rig.proc.poll() is None and rig.proc.pid == pid
    st = rig.call("status")
    assert st["pid"] == st0["pid"] and st["prog_id"] == st0["prog_id"]  # no restart, same program
