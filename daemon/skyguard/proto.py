"""The control socket protocol as data: frames' constants, error codes, and the command table's description (each
command's name, one-line help, arguments with their checks, and the shape of its reply).

Light on purpose (standard library, `wire`, `endpoints`): the CLI builds its help from this table and the client its
frames, without importing the daemon. The daemon binds a handler to every entry (daemon/commands.py), the socket's
hello lists the names from here, and the tests' fake daemon answers with `example()` replies, so the CLI is tested
against the shapes the daemon really sends. docs/architecture.md describes the protocol for readers.

Frames:  request {"v": 1, "id": N, "cmd": NAME, "args": {...}}   ("args" may be left out: {})
         reply   {"v": 1, "id": N, "ok": true, "result": ...}
                 {"v": 1, "id": N, "ok": false, "error": {"code": CODE, "message": TEXT}}
         hello   {"v": 1, "hello": {"server": "skyguardd", "version": ..., "commands": [...]}}  (sent on connect)
         event   {"event": {...}}   (to clients that sent `events`, until they close)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from skyguard import wire
from skyguard.endpoints import normalize_endpoint, parse_network, parse_prefix

PROTO_VERSION = 1
MAX_FRAME = 1 << 20  # 1 MiB: the largest request the server unpacks

# error codes: frames and requests (the server) ...
BAD_FRAME = "bad-frame"
BAD_REQUEST = "bad-request"
FRAME_TOO_LARGE = "frame-too-large"
UNKNOWN_COMMAND = "unknown-command"
INTERNAL = "internal"
TOO_MANY_CLIENTS = "too-many-clients"
TIMEOUT = "timeout"
# ... and commands (the handlers)
BAD_ARGUMENT = "bad-argument"
NOT_FOUND = "not-found"
BAD_POLICY = "bad-policy"
FORBIDDEN = "forbidden"

SORT_KEYS = ("packets", "bytes", "last", "first")  # descending; kernel/flowtable.SORTS selects by the same names
PROTOS = ("udp", "tcp")


class ControlError(Exception):
    """Raised by command handlers: becomes an error reply {"code": code, "message": message}."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------------------------------
# Argument checks: raw msgpack value -> normalised value, or ValueError(reason)


def _class(v: Any) -> str:
    if v not in wire.CLASS_NAMES:
        raise ValueError(f"unknown class {v!r} (one of {', '.join(wire.CLASS_NAMES)})")
    return v


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError(f"{v!r} is not one of {', '.join(options)}")
        return v

    return check


def _count(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError("must be a non-negative integer")
    return v


def _vlan(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 4095:
        raise ValueError("must be a VLAN id 0..4095")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _seconds(v: Any) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool) or not v > 0 or math.isinf(v):
        raise ValueError("must be a positive number of seconds")
    return float(v)


def _path(v: Any) -> str:
    if not isinstance(v, str) or not v or "\0" in v:
        raise ValueError("must be a file path")
    return v


def _str_arg(fn: Callable[[str], Any]) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if not isinstance(v, str):
            raise ValueError(f"must be a string, not {type(v).__name__}")
        return fn(v)

    return check


@dataclass(frozen=True)
class Arg:
    name: str
    check: Callable[[Any], Any]
    help: str
    required: bool = False
    aliases: tuple[str, ...] = ()  # older spellings still accepted (block's `addr`)


# ---------------------------------------------------------------------------------------------------------------------
# Reply shapes (the keys of each command's result)


# a flow as `flows` lists it (the same fields as replay's rows, without `capture`): `a` is the endpoint that sent the
# flow's first packet, IPv6 written [addr]:port; class, reason and action are names
FLOW_ROW_KEYS = ("proto", "a", "b", "vlan", "class", "reason", "action", "packets", "bytes", "dropped", "first_ns",
                 "last_ns")
FLOW_DETAIL_KEYS = (*FLOW_ROW_KEYS, "reasons", "evidence", "inspected", "stun", "sent", "rtp_pt", "cid_rep",
                    "flags")


@dataclass(frozen=True)
class Command:
    name: str
    help: str  # one line: the CLI's help for the command, the docs' table
    args: tuple[Arg, ...] = ()
    reply: tuple[str, ...] = ()  # the result's keys
    row: tuple[str, ...] = ()  # for results holding a list (flows, blocks): the keys of each item

    def arg(self, name: str) -> Arg | None:
        return next((a for a in self.args if a.name == name or name in a.aliases), None)


_PREFIX = Arg("prefix", _str_arg(lambda s: str(parse_prefix(s))), "an address or a prefix without host bits",
              required=True, aliases=("addr",))

COMMANDS: tuple[Command, ...] = (
    Command("status", "daemon state: interfaces, policy, flow table, uptime",
            reply=("version", "pid", "uptime_s", "interfaces", "xdp_mode", "prog_id", "policy", "flows", "counters",
                   "slowpath", "pin_path", "socket")),
    Command("stats", "packet, class and action counters (kernel) and the slow path's (daemon)",
            reply=("kernel", "daemon")),
    Command("flows", "list flows (filter by class/address, sort, limit)", args=(
        Arg("class", _class, "only flows of this class"),
        Arg("addr", _str_arg(lambda s: str(parse_network(s))), "only flows with an endpoint in this address/prefix"),
        Arg("sort", _choice(SORT_KEYS), "sort key, descending (default packets)"),
        Arg("limit", _count, "at most N flows (default 100; 0: all)"),
        Arg("fresh", _bool, "read the flow table now instead of serving the last snapshot"),
    ), reply=("flows", "total", "snapshot_age_ms"), row=FLOW_ROW_KEYS),
    Command("flow", "one flow in detail: PROTO A B [vlan N]", args=(
        Arg("proto", _choice(PROTOS), "udp or tcp (default udp)"),
        Arg("a", _str_arg(normalize_endpoint), "one endpoint, ADDR:PORT or [V6ADDR]:PORT", required=True),
        Arg("b", _str_arg(normalize_endpoint), "the other endpoint", required=True),
        Arg("vlan", _vlan, "VLAN id (default 0)"),
    ), reply=FLOW_DETAIL_KEYS),
    Command("policy.show", "the policy the daemon enforces",
            reply=("name", "path", "digest", "loaded_at", "classes", "malformed", "pstn", "microsoft_media", "exempt",
                   "skype_names", "host_correlation_s")),
    Command("policy.check", "let the daemon validate a policy file (default: its own)", args=(
        Arg("path", _path, "the file to check"),
    ), reply=("ok", "name", "path")),
    Command("policy.reload", "reload the configured policy file (atomic, keeps flows)", args=(
        Arg("path", _path, "must be the configured path, if given"),
    ), reply=("ok", "name", "loaded_at")),
    Command("block", "drop all traffic of an address or prefix", args=(
        _PREFIX, Arg("expire", _seconds, "remove the block after this many seconds"),
    ), reply=("blocked", "flows", "expires_ns")),
    Command("unblock", "remove a manual block", args=(_PREFIX,), reply=("unblocked",)),
    Command("blocks", "the manual blocks, with their expiry", reply=("blocks",), row=("prefix", "expires_ns")),
    Command("events", "follow classification events (until the client closes)", reply=("subscribed",)),
    Command("metrics", "the Prometheus metrics as a scrape returns them (text exposition format)", reply=("text",)),
)
BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}
COMMAND_NAMES: tuple[str, ...] = tuple(BY_NAME)


def validate(cmd: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The request's arguments checked and normalised (aliases under their own name); ControlError otherwise."""
    spec = BY_NAME.get(cmd)
    if spec is None:
        raise ControlError(UNKNOWN_COMMAND, f"unknown command {cmd!r}")
    out: dict[str, Any] = {}
    for key, raw in args.items():
        a = spec.arg(key)
        if a is None:
            known = ", ".join(x.name for x in spec.args) or "none"
            raise ControlError(BAD_ARGUMENT, f"{cmd}: unknown argument {key!r} (arguments: {known})")
        try:
            out[a.name] = a.check(raw)
        except ValueError as e:
            raise ControlError(BAD_ARGUMENT, f"{cmd}: {a.name}: {e}") from None
    for a in spec.args:
        if a.required and a.name not in out:
            raise ControlError(BAD_ARGUMENT, f"{cmd}: missing argument {a.name!r} ({a.help})")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Example replies: one per command, in the daemon's shapes. The tests' fake daemon serves them; a test checks the real
# handlers' replies have the same keys (shape_problems).

_ROW: dict[str, Any] = {
    "proto": "udp", "a": "192.168.1.6:50010", "b": "52.114.250.5:3478", "vlan": 0, "class": "skype-relay",
    "reason": "ms-stun-attr", "action": "pass", "packets": 120, "bytes": 18000, "dropped": 0,
    "first_ns": 1_000_000_000, "last_ns": 3_500_000_000,
}
_EXAMPLES: dict[str, Any] = {
    "status": {"version": "0.1.0", "pid": 4242, "uptime_s": 12.5,
               "interfaces": [{"name": "eth0", "ifindex": 2, "mode": "native"}], "xdp_mode": "auto", "prog_id": 17,
               "policy": {"name": "observe-only", "path": "/etc/skyguard/policy.toml", "loaded_at": 1.7e9,
                          "digest": "ab12"},
               "flows": {"count": 2, "max": 262144, "fill": 8e-06, "adopted": 0},
               "counters": {"packets": 1540, "bytes": 99000, "act_pass": 1537, "act_drop": 3, "act_mark": 0,
                            "classified": 2, "events_lost": 0, "out_no_flow": 0},
               "slowpath": {}, "pin_path": "/sys/fs/bpf/skyguard", "socket": "/run/skyguard/skyguard.sock"},
    "stats": {"kernel": {"packets": 1540, "act_drop": 3}, "daemon": {"events": {"classified": 2}, "decisions": 1,
                                                                     "decisions_reapplied": 0,
                                                                     "prefix_changes": 0, "expired_flows": 0,
                                                                     "log_suppressed": 0}},
    "flows": {"flows": [_ROW], "total": 1, "snapshot_age_ms": 0.4},
    "flow": {**_ROW, "reasons": ["ms-stun-attr"], "evidence": 1, "inspected": 12, "stun": [1, 1], "rtp_pt": [0, 0],
             "cid_rep": [0, 0], "sent": [0, 0], "flags": 0},
    "policy.show": {"name": "observe-only", "path": "/etc/skyguard/policy.toml", "digest": "ab12", "loaded_at": 1.7e9,
                    "classes": {"skype-out": {"action": "pass", "dscp": 0, "log": False}},
                    "malformed": {"action": "pass", "dscp": 0}, "pstn": {"prefixes": [], "names": []},
                    "microsoft_media": {"prefixes": ["52.112.0.0/14"]}, "exempt": {"prefixes": []},
                    "skype_names": ["skype.com"], "host_correlation_s": 60},
    "policy.check": {"ok": True, "name": "observe-only", "path": "/etc/skyguard/policy.toml"},
    "policy.reload": {"ok": True, "name": "observe-only", "loaded_at": 1.7e9},
    "block": {"blocked": "10.1.0.0/16", "flows": 0, "expires_ns": 0},
    "unblock": {"unblocked": "10.1.0.0/16"},
    "blocks": {"blocks": [{"prefix": "10.1.0.0/16", "expires_ns": 0}]},
    "events": {"subscribed": True},
    "metrics": {"text": "# HELP skyguard_events_lost_total Ring-buffer events the kernel dropped\n"
                        "# TYPE skyguard_events_lost_total counter\nskyguard_events_lost_total 0.0\n"},
}


def example(cmd: str, **fields: Any) -> Any:
    """A deep copy of `cmd`'s example reply with `fields` replaced (only keys the shape has)."""
    out = copy.deepcopy(_EXAMPLES[cmd])
    unknown = set(fields) - set(out)
    if unknown:
        raise KeyError(f"{cmd} replies have no {', '.join(sorted(unknown))}")
    out.update(fields)
    return out


def example_row(**fields: Any) -> dict[str, Any]:
    """A `flows` row in the daemon's shape (for fakes)."""
    unknown = set(fields) - set(_ROW)
    if unknown:
        raise KeyError(f"flow rows have no {', '.join(sorted(unknown))}")
    return {**_ROW, **fields}


def shape_problems(cmd: str, result: Any) -> list[str]:
    """How `result` differs from `cmd`'s reply shape (empty: it matches)."""
    spec = BY_NAME[cmd]
    if not isinstance(result, dict):
        return [f"{cmd}: result is a {type(result).__name__}, not a map"]
    out = []
    if set(result) != set(spec.reply):
        out.append(f"{cmd}: keys {sorted(result)} != {sorted(spec.reply)}")
    if spec.row:
        rows = result.get(spec.reply[0])
        if not isinstance(rows, list):
            out.append(f"{cmd}: {spec.reply[0]} is not a list")
        else:
            out += [f"{cmd}: row keys {sorted(r)} != {sorted(spec.row)}" for r in rows
                    if not isinstance(r, dict) or set(r) != set(spec.row)]
    return out
