"""`skyguard`'s arguments: one parser per command, each defined once.

The daemon commands take their one-line help from proto's command table; `replay` and `lab` are defined here and
reused by those modules' own entry points (`python -m skyguard.offline.replay`, the lab's main), so `skyguard replay
--help` and the module's help are the same text. Light on purpose: building the parser imports neither bcc nor the lab.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from skyguard import __version__, feed, proto, wire
from skyguard.cli.client import DEFAULT_SOCKET
from skyguard.endpoints import normalize_endpoint, parse_network, parse_prefix

REPLAY_DESCRIPTION = (
    "Run captures (pcap, pcapng) through the same XDP program as the daemon, via BPF_PROG_TEST_RUN, with the "
    "capture's timestamps as the clock and the same slow path and policy. No daemon needed; needs root."
)
LAB_DESCRIPTION = (
    "The demo: builds a client LAN, a router running skyguardd and an 'internet' (a Skype peer, a PSTN gateway, an "
    "operator SBC, a Microsoft relay) in network namespaces, plays PC-to-PC calls, PC-to-phone calls and background "
    "traffic through the router, shows the operator's view while they run, and ends with which calls passed and which "
    "were blocked. Removes everything it made. Needs root."
)
FEED_UPDATE_HELP = (
    "download Microsoft's endpoint feed to a temporary file beside --output, check it, rename it over --output and "
    "reload the daemon; a failed download or check leaves the old file and the running policy"
)


class UsageError(Exception):
    """Bad arguments found after argparse (exit code 2, with the command's usage)."""


# ---------------------------------------------------------------------------------------------------------------------
# Argument types


def _prefix(text: str) -> str:
    """A rule's prefix: host bits refused, as the policy checker refuses them."""
    try:
        return str(parse_prefix(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _filter(text: str) -> str:
    try:
        return str(parse_network(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n <= 0:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return n


def _seconds(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        s = -1.0
    if not s > 0 or s == float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return s


def parse_keyspec(words: Sequence[str]) -> dict[str, Any]:
    """`PROTO A B [vlan N]` (also `PROTO A <-> B`, as flows print them) -> {"proto", "a", "b", "vlan"}."""
    tokens = [t for w in words for t in w.split() if t != "<->"]
    vlan = 0
    if len(tokens) >= 2 and tokens[-2].lower() == "vlan":
        try:
            vlan = int(tokens[-1])
        except ValueError:
            raise UsageError(f"not a VLAN id: {tokens[-1]!r}") from None
        if not 0 <= vlan <= 4095:
            raise UsageError(f"VLAN id out of range 0-4095: {vlan}")
        tokens = tokens[:-2]
    if len(tokens) != 3:
        raise UsageError("a flow is `PROTO A B [vlan N]`, e.g. `udp 192.168.1.6:50010 52.114.250.5:3478`")
    name = tokens[0].lower()
    if name not in proto.PROTOS:
        raise UsageError(f"protocol must be one of {', '.join(proto.PROTOS)}: {tokens[0]!r}")
    try:
        return {"proto": name, "a": normalize_endpoint(tokens[1]), "b": normalize_endpoint(tokens[2]), "vlan": vlan}
    except ValueError as e:
        raise UsageError(str(e)) from None


# ---------------------------------------------------------------------------------------------------------------------
# Commands that run here


def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("at least 0 (0: one per CPU)")
    return n or len(os.sched_getaffinity(0))


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap or pcapng files")
    p.add_argument("--policy", metavar="FILE", help="policy file (default: observe-only)")
    p.add_argument("--json", action="store_true", help="print one JSON object (docs/architecture.md, Replay JSON)")
    p.add_argument("--jobs", "-j", type=_jobs, default=1, metavar="N",
                   help="replay up to N captures at once, one process each (each loads its own program and maps, "
                        "about a second once the replay build's image is cached), at most one per CPU; 0: one per "
                        "CPU. The output is the same (default 1)")
    p.add_argument("--log-all", action="store_true", help=argparse.SUPPRESS)


def add_lab_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    p.add_argument("--speed", type=float, default=1.0, help="playback speed factor (default 1: real time)")
    p.add_argument("--xdp-mode", default="auto", choices=["auto", "native", "generic"],
                   help="how skyguardd attaches in the lab (default auto)")
    p.add_argument("--keep-logs", action="store_true", help="keep the daemon's log and config in /tmp")
    p.add_argument("--json", action="store_true", help="print the summary as JSON only")


def replay_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skyguard replay", description=REPLAY_DESCRIPTION)
    add_replay_arguments(p)
    return p


def lab_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skyguard lab", description=LAB_DESCRIPTION)
    add_lab_arguments(p)
    return p


# ---------------------------------------------------------------------------------------------------------------------
# The parser


def _common() -> argparse.ArgumentParser:
    """--json and --socket after a daemon command. SUPPRESS: absent, they leave the global options' values alone."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help="the daemon's control socket")
    return common


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser and each command's own (keys as typed: "flows", "policy check"), for usage after a late error."""
    common = _common()
    h = {c.name: c.help for c in proto.COMMANDS}
    p = argparse.ArgumentParser(prog="skyguard", description="Operate skyguardd, replay captures, run the lab.")
    p.add_argument("--socket", metavar="PATH", dest="socket_global", default=None,
                   help=f"the daemon's control socket (env SKYGUARD_SOCKET, default {DEFAULT_SOCKET})")
    p.add_argument("--json", action="store_true", dest="json_global", help="machine-readable output")
    p.add_argument("--version", action="version", version=f"skyguard {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cmds: dict[str, argparse.ArgumentParser] = {}

    def add(name: str, helptext: str, parents: list[argparse.ArgumentParser] | None = None,
            under: Any = sub, key: str | None = None, **kw: Any) -> argparse.ArgumentParser:
        sp = under.add_parser(name, parents=[common] if parents is None else parents, help=helptext,
                              description=kw.pop("description", helptext), **kw)
        cmds[key or name] = sp
        return sp

    add("status", h["status"])
    st = add("stats", h["stats"])
    st.add_argument("--format", choices=("table", "prometheus"), default="table",
                    help="prometheus: the daemon's metrics in the text exposition format, as a scrape returns them "
                         "(for node_exporter's textfile collector)")
    fl = add("flows", h["flows"])
    flows_args = proto.BY_NAME["flows"]
    fl.add_argument("--class", dest="cls", choices=wire.CLASS_NAMES, help=flows_args.arg("class").help)
    fl.add_argument("--addr", type=_filter, help=flows_args.arg("addr").help)
    fl.add_argument("--sort", choices=proto.SORT_KEYS, default="packets", help=flows_args.arg("sort").help)
    fl.add_argument("--limit", type=_positive_int, help="at most N flows (default: the daemon's, 100)")

    f1 = add("flow", h["flow"])
    f1.add_argument("keyspec", nargs="+", metavar="KEYSPEC", help="PROTO A B [vlan N], e.g. udp 10.0.0.2:5000 "
                    "[2001:db8::1]:3478 (A and B in either order; `<->` between them is allowed)")

    ev = add("events", h["events"])
    ev.add_argument("--follow", action=argparse.BooleanOptionalAction, default=True,
                    help="keep following (default); --no-follow stops after --timeout seconds without events")
    ev.add_argument("--count", type=_positive_int, help="stop after N events")
    ev.add_argument("--timeout", type=_seconds, default=1.0, help="with --no-follow: quiet seconds before exiting")

    po = add("policy", "show, check or reload the policy")
    posub = po.add_subparsers(dest="policy_cmd", metavar="ACTION", required=True)
    add("show", h["policy.show"], under=posub, key="policy show")
    pc = add("check", "validate a policy file: every error as file:line: reason (no daemon needed)", under=posub,
             key="policy check")
    pc.add_argument("file", metavar="FILE", nargs="?", help="the policy file (checked with the feed it names)")
    pc.add_argument("--feed", metavar="FEED",
                    help="a feed file in Microsoft's endpoints JSON format: checked alone, or with FILE in place of "
                         "the feed FILE names")
    pc.add_argument("--daemon", action="store_true", help="let the daemon check the file instead")
    add("reload", h["policy.reload"], under=posub, key="policy reload")

    fe = add("feed", "Microsoft's endpoint feed (Teams/Skype media ranges)")
    fesub = fe.add_subparsers(dest="feed_cmd", metavar="ACTION", required=True)
    fu = add("update", FEED_UPDATE_HELP, under=fesub, key="feed update")
    fu.add_argument("--url", default=os.environ.get("SKYGUARD_FEED_URL") or feed.DEFAULT_URL,
                    help=f"where to download from (env SKYGUARD_FEED_URL, default {feed.DEFAULT_URL}; a "
                         "clientrequestid for this machine is added to Microsoft's URLs that lack one)")
    fu.add_argument("--output", metavar="FILE", default=feed.DEFAULT_FILE,
                    help=f"the feed file the policy names (default {feed.DEFAULT_FILE})")
    fu.add_argument("--timeout", type=_seconds, default=60.0, metavar="SECONDS",
                    help="network timeout (default 60)")
    fu.add_argument("--no-reload", action="store_true", help="install the file but do not reload the daemon")

    bl = add("block", h["block"])
    bl.add_argument("prefix", type=_prefix, metavar="ADDR[/LEN]", help=proto.BY_NAME["block"].arg("prefix").help)
    bl.add_argument("--expire", type=_seconds, metavar="SECONDS", help=proto.BY_NAME["block"].arg("expire").help)
    ub = add("unblock", h["unblock"])
    ub.add_argument("prefix", type=_prefix, metavar="ADDR[/LEN]", help=proto.BY_NAME["unblock"].arg("prefix").help)
    add("blocks", h["blocks"])

    add_replay_arguments(add("replay", "run captures through the XDP program (no daemon)", parents=[],
                             description=REPLAY_DESCRIPTION))
    add_lab_arguments(add("lab", "namespace lab: the daemon and simulated calls (the demo)", parents=[],
                          description=LAB_DESCRIPTION))
    return p, cmds


def command_key(args: argparse.Namespace) -> str:
    if args.command == "feed":
        return f"feed {args.feed_cmd}"
    return f"policy {args.policy_cmd}" if args.command == "policy" else args.command
