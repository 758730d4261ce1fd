"""The daemon's command table (daemon/commands.py) over a real Engine and a fake kernel: every reply has proto's shape,
arguments are checked from proto's table, and errors carry proto's codes."""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from skyguard import proto, wire
from skyguard.daemon.commands import Commands
from skyguard.daemon.config import Config
from skyguard.daemon.metrics import DaemonMetrics
from skyguard.policy import Policy, parse_policy
from skyguard.proto import ControlError
from skyguard.slowpath.engine import Engine

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
K1 = wire.FlowKey.make("192.168.1.6", 50010, "52.114.250.5", 3478, 17)
K2 = wire.FlowKey.make("2001:db8::1", 5000, "2603:1063::9", 3479, 17, 12)
K3 = wire.FlowKey.make("10.0.0.2", 40000, "1.1.1.1", 443, 6)


class FakeKernel:
    """The kernel's maps as dicts: flows, prefixes by kind, counters."""

    def __init__(self) -> None:
        self.flows_: dict[wire.FlowKey, wire.Flow] = {
            K1: wire.Flow(first_ns=1, last_ns=9, pkts=(60, 60), bytes_=(9000, 9000), cls=wire.RELAY),
            K2: wire.Flow(first_ns=2, last_ns=8, pkts=(4, 3), bytes_=(400, 300), cls=wire.OUT, dropped=6),
            K3: wire.Flow(first_ns=3, last_ns=7, pkts=(3, 2), bytes_=(50_000, 50_000), cls=wire.OTHER),
        }
        self.prefix: dict[str, dict[Network, tuple[int, int]]] = {}

    def load_policy(self, policy: Policy) -> None:
        pass

    def drain_events(self, sink: Callable[[wire.Event], None], timeout_ms: int = 0, sample_sink=None) -> int:
        return 0

    def flows(self) -> Iterator[tuple[wire.FlowKey, wire.Flow]]:
        return iter(list(self.flows_.items()))

    def flow(self, key: wire.FlowKey) -> wire.Flow | None:
        f = self.flows_.get(key)
        return None if f is None else dataclasses.replace(f)

    def flow_count(self) -> int:
        return len(self.flows_)

    def set_flow_flags(self, key: wire.FlowKey, set_flags: int = 0, clear_flags: int = 0) -> bool:
        if key not in self.flows_:
            return False
        f = self.flows_[key]
        f.flags = (f.flags | set_flags) & ~clear_flags
        return True

    def add_prefix(self, kind: str, network: Network, source: int, expires_ns: int = 0) -> None:
        self.prefix.setdefault(kind, {})[network] = (source, expires_ns)

    def remove_prefix(self, kind: str, network: Network) -> None:
        self.prefix.get(kind, {}).pop(network, None)

    def prefixes(self, kind: str) -> list[tuple[Network, int, int]]:
        return [(n, s, e) for n, (s, e) in self.prefix.get(kind, {}).items()]

    def stats(self) -> dict[str, int]:
        return {"packets": 132, "act_drop": 6}


class _Log:
    def info(self, *a: object, **kw: object) -> None:
        pass

    error = warning = debug = info


class State:
    """The daemon-side facade the commands use (daemon/main.Daemon in production)."""

    def __init__(self, policy_path: str) -> None:
        self.cfg = Config(interfaces=("eth0",), policy=policy_path)
        self.started = time.time() - 5
        self.policy_loaded_at = 1.5
        self.adopted_flows = 0
        self.kernel = FakeKernel()
        self.engine = Engine(self.kernel, parse_policy('name = "running"\n', policy_path), logger=_Log())
        self.reloads = 0
        self.attached: dict = {}  # nothing attached: eth0 shows as configured, not attached, in the metrics
        self.table = SimpleNamespace(snapshot=None)
        self.metrics = DaemonMetrics(self)
        self.metrics.tick()

    def interfaces(self) -> list[dict[str, Any]]:
        return [{"name": "eth0", "ifindex": 2, "mode": "native"}]

    def prog_id(self) -> int | None:
        return 17

    def reload(self, source: str = "socket", path: str | None = None) -> Policy:
        from skyguard.policy import load_policy

        p = load_policy(path or self.cfg.policy)
        self.engine.set_policy(p)
        self.reloads += 1
        return p


@pytest.fixture
def st(tmp_path) -> State:
    path = tmp_path / "policy.toml"
    path.write_text('name = "on-disk"\n')
    return State(str(path))


@pytest.fixture
def commands(st: State) -> Commands:
    return Commands(st)


def test_every_reply_has_protos_shape(commands: Commands, st: State) -> None:
    calls = {
        "status": {}, "stats": {}, "flows": {}, "flow": {"a": "192.168.1.6:50010", "b": "52.114.250.5:3478"},
        "policy.show": {}, "policy.check": {}, "policy.reload": {}, "block": {"prefix": "10.1.0.0/16"},
        "unblock": {"prefix": "10.1.0.0/16"}, "blocks": {}, "metrics": {},
    }
    assert set(calls) | {"events"} == set(proto.COMMAND_NAMES)
    for cmd, args in calls.items():
        result = commands(cmd, args)
        assert proto.shape_problems(cmd, result) == [], cmd
        assert proto.shape_problems(cmd, proto.example(cmd)) == [], cmd  # the fakes' replies, too


def test_flows_filters_sorts_and_limits_through_the_engine(commands: Commands) -> None:
    r = commands("flows", {"sort": "bytes"})
    assert [(f["class"], f["bytes"]) for f in r["flows"]] == [("other", 100_000), ("skype-relay", 18_000),
                                                             ("skype-out", 700)]
    assert r["total"] == 3
    r = commands("flows", {"class": "skype-out"})
    assert [f["vlan"] for f in r["flows"]] == [12] and r["total"] == 1
    r = commands("flows", {"addr": "192.168.1.77/24", "limit": 1})  # a filter: host bits are cleared
    assert [{f["a"], f["b"]} for f in r["flows"]] == [{"192.168.1.6:50010", "52.114.250.5:3478"}]
    r = commands("flows", {"limit": 2})
    assert len(r["flows"]) == 2 and r["total"] == 3


def test_flow_is_found_from_either_side_and_missing_is_not_found(commands: Commands) -> None:
    row = commands("flow", {"proto": "udp", "a": "[2603:1063::9]:3479", "b": "[2001:0db8::1]:5000", "vlan": 12})
    assert row["class"] == "skype-out" and row["dropped"] == 6 and "reasons" in row
    with pytest.raises(ControlError) as ei:
        commands("flow", {"a": "1.1.1.1:1", "b": "2.2.2.2:2"})
    assert ei.value.code == proto.NOT_FOUND


@pytest.mark.parametrize(("cmd", "args", "words"), [
    ("flows", {"class": "skype"}, "unknown class 'skype'"),
    ("flows", {"sort": "name"}, "'name' is not one of packets"),
    ("flows", {"limit": -1}, "non-negative"),
    ("flows", {"limit": True}, "non-negative"),
    ("flows", {"addr": "x.y"}, "not an address"),
    ("flows", {"colour": "red"}, "unknown argument 'colour'"),
    ("flow", {"a": "1.1.1.1:1"}, "missing argument 'b'"),
    ("flow", {"a": "2001:db8::1:5", "b": "1.1.1.1:1"}, "not an endpoint"),
    ("flow", {"a": "1.1.1.1:1", "b": "2.2.2.2:2", "vlan": 5000}, "VLAN id"),
    ("block", {"prefix": "10.1.2.3/8"}, "'10.1.2.3/8' has host bits set; did you mean '10.0.0.0/8'?"),
    ("block", {"prefix": "10.0.0.0/8", "expire": -5}, "positive number of seconds"),
    ("block", {}, "missing argument 'prefix'"),
    ("unblock", {"addr": "10.1.2.3/8"}, "has host bits set"),
])
def test_bad_arguments_are_refused_before_the_handler(commands: Commands, st: State, cmd: str, args: dict,
                                                      words: str) -> None:
    with pytest.raises(ControlError) as ei:
        commands(cmd, args)
    assert ei.value.code == proto.BAD_ARGUMENT and words in ei.value.message
    assert st.kernel.prefix == {}


def test_block_blocks_and_unblock(commands: Commands, st: State) -> None:
    t0 = time.time_ns()
    r = commands("block", {"addr": "192.168.1.6", "expire": 30})  # `addr`: the older spelling
    assert r["blocked"] == "192.168.1.6/32" and r["flows"] == 1 and r["expires_ns"] >= t0 + 30 * 10**9
    assert commands("block", {"prefix": "2001:db8::/32"})["expires_ns"] == 0
    assert commands("blocks", {}) == {"blocks": [{"prefix": "192.168.1.6/32", "expires_ns": r["expires_ns"]},
                                                 {"prefix": "2001:db8::/32", "expires_ns": 0}]}
    assert st.kernel.flows_[K1].flags & wire.C["SG_F_BLOCKED"]
    assert commands("unblock", {"prefix": "192.168.1.6/32"}) == {"unblocked": "192.168.1.6/32"}
    assert not st.kernel.flows_[K1].flags & wire.C["SG_F_BLOCKED"]
    with pytest.raises(ControlError) as ei:
        commands("unblock", {"prefix": "192.168.1.6"})
    assert (ei.value.code, ei.value.message) == (proto.NOT_FOUND, "192.168.1.6/32 is not blocked")


def test_policy_reload_and_check(commands: Commands, st: State, tmp_path) -> None:
    assert commands("policy.reload", {})["name"] == "on-disk" and st.reloads == 1
    with pytest.raises(ControlError) as ei:
        commands("policy.reload", {"path": "/etc/passwd"})
    assert ei.value.code == proto.FORBIDDEN and st.reloads == 1
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[class.skype-out]\naction = "explode"\nlog = 3\n')
    with pytest.raises(ControlError) as ei:
        commands("policy.check", {"path": str(bad)})
    assert ei.value.code == proto.BAD_POLICY
    assert [line.split(": ")[0] for line in ei.value.message.splitlines()] == [f"{bad}:3", f"{bad}:4"]
    assert st.engine.policy.name == "on-disk"


def test_status_reads_the_facade_and_the_engine(commands: Commands) -> None:
    s = commands("status", {})
    assert s["flows"]["count"] == 3 and s["interfaces"][0]["name"] == "eth0" and s["prog_id"] == 17
    assert s["counters"]["packets"] == 132 and s["policy"]["name"] == "running" and s["uptime_s"] >= 5
    # the kernel's two flow tables (flows, flows4) hold flows_max each
    cap = 2 * commands.state.cfg.flows_max
    assert s["flows"]["max"] == cap and s["flows"]["fill"] == round(3 / cap, 6)


def test_unknown_command(commands: Commands) -> None:
    with pytest.raises(ControlError) as ei:
        commands("format-disk", {})
    assert ei.value.code == proto.UNKNOWN_COMMAND


def test_sort_keys_are_the_flow_tables() -> None:
    from skyguard.kernel.flowtable import SORTS

    assert proto.SORT_KEYS == SORTS


def test_metrics_is_the_exposition_of_the_daemons_counters(commands: Commands, st: State) -> None:
    st.kernel.stats = lambda: {"packets": 9, "out_flow": 9, "class_other": 9, "packets_other_pass": 9}
    st.metrics.tick()
    text = commands("metrics", {})["text"]
    assert 'skyguard_packets_total{action="pass",class="other"} 9.0' in text
    assert 'skyguard_xdp_attached{interface="eth0",mode="native"} 0.0' in text
    assert 'skyguard_build_info{policy="running",version=' in text
