"""The daemon's command table: one handler per command of proto.COMMANDS, fed arguments proto.validate() checked.

Handlers read and change the daemon's state through the engine (flows, blocks, counters, the policy) and through
DaemonState (what only the daemon knows: interfaces, uptime, its config, policy reloads); they never touch the kernel
object or the flow-table snapshot themselves. `events` is the socket server's own (a subscription, not a call).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from skyguard import __version__, proto, wire
from skyguard.daemon.config import Config
from skyguard.endpoints import parse_endpoint, parse_network, parse_prefix
from skyguard.policy import Policy, PolicyError, load_policy
from skyguard.proto import BAD_POLICY, FORBIDDEN, NOT_FOUND, ControlError
from skyguard.slowpath.engine import Engine

Handler = Callable[[dict[str, Any]], Any]


class DaemonState(Protocol):
    """What the commands ask of the daemon beyond the engine."""

    cfg: Config
    started: float  # time.time() at start
    policy_loaded_at: float
    adopted_flows: int  # flows found in the pinned map at start

    @property
    def engine(self) -> Engine: ...
    def interfaces(self) -> list[dict[str, Any]]: ...
    def prog_id(self) -> int | None: ...
    def reload(self, source: str = "socket", path: str | None = None) -> Policy: ...


class Commands:
    """`commands(cmd, args)` is the control server's handler."""

    def __init__(self, state: DaemonState) -> None:
        self.state = state
        self.table: dict[str, Handler] = {
            "status": self.status,
            "stats": self.stats,
            "flows": self.flows,
            "flow": self.flow,
            "policy.show": self.policy_show,
            "policy.check": self.policy_check,
            "policy.reload": self.policy_reload,
            "block": self.block,
            "unblock": self.unblock,
            "blocks": self.blocks,
            "metrics": self.metrics,
        }
        missing = set(proto.COMMAND_NAMES) - set(self.table) - {"events"}
        assert not missing and set(self.table) <= set(proto.COMMAND_NAMES), missing

    def __call__(self, cmd: str, args: dict[str, Any]) -> Any:
        handler = self.table.get(cmd)
        if handler is None:
            raise ControlError(proto.UNKNOWN_COMMAND, f"unknown command {cmd!r}")
        return handler(proto.validate(cmd, args))

    @property
    def engine(self) -> Engine:
        return self.state.engine

    # ---- handlers ---------------------------------------------------------------------------------------------------

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        s, eng = self.state, self.engine
        pol, st, n = eng.policy, eng.kernel_stats(), eng.flow_count()
        cap = wire.FLOW_TABLES * s.cfg.flows_max  # both flow tables
        return {
            "version": __version__, "pid": os.getpid(), "uptime_s": round(time.time() - s.started, 3),
            "interfaces": s.interfaces(), "xdp_mode": s.cfg.xdp_mode, "prog_id": s.prog_id(),
            "policy": {"name": pol.name, "path": pol.path, "loaded_at": s.policy_loaded_at, "digest": pol.digest},
            "flows": {"count": n, "max": cap, "fill": round(n / max(cap, 1), 6),
                      "adopted": s.adopted_flows},
            "counters": {k: st.get(k, 0) for k in ("packets", "bytes", "act_pass", "act_drop", "act_mark",
                                                    "classified", "events_lost", "out_no_flow")},
            "slowpath": eng.slow.status(),
            "pin_path": s.cfg.pin_path, "socket": str(s.cfg.socket),
        }

    def stats(self, args: dict[str, Any]) -> dict[str, Any]:
        eng = self.engine
        c = eng.counters
        return {"kernel": eng.kernel_stats(),
                "daemon": {"events": dict(c.events), "decisions": c.decisions, "decisions_reapplied": c.reapplied,
                           "prefix_changes": c.prefix_changes, "expired_flows": c.expired_flows,
                           "log_suppressed": eng.log_suppressed}}

    def flows(self, args: dict[str, Any]) -> dict[str, Any]:
        cls = args.get("class")
        rows, total, age_ms = self.engine.query_flows(
            cls=None if cls is None else wire.CLASS_IDS[cls],
            net=parse_network(args["addr"]) if "addr" in args else None,
            sort=args.get("sort", "packets"), limit=args.get("limit", 100), fresh=args.get("fresh"))
        return {"flows": rows, "total": total, "snapshot_age_ms": age_ms}

    def flow(self, args: dict[str, Any]) -> dict[str, Any]:
        proto_name = args.get("proto", "udp")
        (ha, pa), (hb, pb) = parse_endpoint(args["a"]), parse_endpoint(args["b"])  # normalised by validate()
        key = wire.FlowKey.make(ha, pa, hb, pb, {"udp": 17, "tcp": 6}[proto_name], args.get("vlan", 0))
        row = self.engine.flow_detail(key)
        if row is None:
            raise ControlError(NOT_FOUND, f"no flow {proto_name} {args['a']} <-> {args['b']}")
        return row

    def policy_show(self, args: dict[str, Any]) -> dict[str, Any]:
        return policy_dict(self.engine.policy, self.state.policy_loaded_at)

    def policy_check(self, args: dict[str, Any]) -> dict[str, Any]:
        path = args.get("path") or self.state.cfg.policy
        try:
            p = load_policy(path)
        except PolicyError as e:
            raise ControlError(BAD_POLICY, str(e)) from None
        return {"ok": True, "name": p.name, "path": str(path)}

    def policy_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        # the socket may be group-writable: reloading another file would let its users load any policy
        if args.get("path") not in (None, self.state.cfg.policy):
            raise ControlError(FORBIDDEN, "policy.reload loads only the configured policy path")
        try:
            p = self.state.reload(source="socket")
        except PolicyError as e:
            raise ControlError(BAD_POLICY, str(e)) from None
        return {"ok": True, "name": p.name, "loaded_at": self.state.policy_loaded_at}

    def block(self, args: dict[str, Any]) -> dict[str, Any]:
        net = parse_prefix(args["prefix"])
        exp = args.get("expire")
        expires_ns = time.time_ns() + int(exp * 1e9) if exp else 0
        n = self.engine.block(net, expires_ns)
        return {"blocked": str(net), "flows": n, "expires_ns": expires_ns}

    def unblock(self, args: dict[str, Any]) -> dict[str, Any]:
        net = parse_prefix(args["prefix"])
        if not self.engine.unblock(net):
            raise ControlError(NOT_FOUND, f"{net} is not blocked")
        return {"unblocked": str(net)}

    def metrics(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"text": self.state.metrics.text()}

    def blocks(self, args: dict[str, Any]) -> dict[str, Any]:
        rows = sorted(self.engine.blocks(), key=lambda b: (b[0].version, b[0]))
        return {"blocks": [{"prefix": str(net), "expires_ns": exp} for net, exp in rows]}


def policy_dict(p: Policy, loaded_at: float) -> dict[str, Any]:
    classes = {}
    for i, name in enumerate(wire.CLASS_NAMES):
        s = p.slot(i)
        classes[name] = {"action": wire.ACTION_NAMES[s.action], "dscp": s.dscp, "log": s.log}
    mal = p.slot(wire.POL_MALFORMED)
    return {"name": p.name, "path": p.path, "digest": p.digest, "loaded_at": loaded_at, "classes": classes,
            "malformed": {"action": wire.ACTION_NAMES[mal.action], "dscp": mal.dscp},
            "pstn": {"prefixes": [str(n) for n in p.pstn_prefixes], "names": list(p.pstn_names)},
            "microsoft_media": {"prefixes": [str(n) for n in p.msmedia_prefixes],
                                **({"feed": p.feed.as_dict()} if p.feed is not None else {})},
            "exempt": {"prefixes": [str(n) for n in p.exempt_prefixes]}, "skype_names": list(p.skype_names),
            "host_correlation_s": p.host_corr_s}
