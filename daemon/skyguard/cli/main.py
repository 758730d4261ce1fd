"""`skyguard`: the operator's command line. Talks to skyguardd over the control socket, or runs `replay`/`lab`.

Exit codes: 0 ok, 1 error, 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from skyguard import wire
from skyguard.cli import fmt
from skyguard.cli.client import DEFAULT_SOCKET, Client, ClientError, ConnectError
from skyguard.policy import PolicyError, load_policy

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
SORT_KEYS = ("packets", "bytes", "last", "first")


class UsageError(Exception):
    """Bad arguments found after argparse (exit code 2)."""


# ---------------------------------------------------------------------------------------------------------------------
# Argument types


def _prefix(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address or prefix: {text!r}") from None


def _address(text: str) -> str:
    return _prefix(text) if "/" in text else _ip(text)


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


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


_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.%]+)\]|(?P<v4>[0-9.]+)):(?P<port>\d{1,5})$")


def _endpoint(text: str) -> str:
    m = _ENDPOINT.match(text)
    if not m or int(m["port"]) > 65535:
        raise UsageError(f"not an endpoint (ADDR:PORT or [V6ADDR]:PORT): {text!r}")
    addr = m["v6"] or m["v4"]
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise UsageError(f"not an IP address: {addr!r}") from None
    if (ip.version == 6) != bool(m["v6"]):
        raise UsageError(f"IPv6 endpoints are written [ADDR]:PORT: {text!r}")
    return f"[{ip}]:{m['port']}" if ip.version == 6 else f"{ip}:{m['port']}"


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
    proto = tokens[0].lower()
    if proto not in wire.PROTO_NAMES.values():
        raise UsageError(f"protocol must be one of {', '.join(sorted(wire.PROTO_NAMES.values()))}: {tokens[0]!r}")
    return {"proto": proto, "a": _endpoint(tokens[1]), "b": _endpoint(tokens[2]), "vlan": vlan}


# ---------------------------------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's --json/--socket do not reset the global ones when absent
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help="the daemon's control socket")

    p = argparse.ArgumentParser(prog="skyguard", description="Operate skyguardd, replay captures, run the lab.")
    p.add_argument("--socket", metavar="PATH", default=None,
                   help=f"the daemon's control socket (env SKYGUARD_SOCKET, default {DEFAULT_SOCKET})")
    p.add_argument("--json", action="store_true", default=False, help="machine-readable output")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("status", parents=[common], help="daemon state: interfaces, policy, uptime")
    sub.add_parser("stats", parents=[common], help="packet, class and action counters")

    fl = sub.add_parser("flows", parents=[common], help="list flows")
    fl.add_argument("--class", dest="cls", choices=wire.CLASS_NAMES, help="only flows of this class")
    fl.add_argument("--addr", type=_address, help="only flows with an endpoint in this address or prefix")
    fl.add_argument("--sort", choices=SORT_KEYS, default="packets", help="sort key (descending; default packets)")
    fl.add_argument("--limit", type=_positive_int, help="at most N flows")

    f1 = sub.add_parser("flow", parents=[common], help="one flow in detail: PROTO A B [vlan N]")
    f1.add_argument("keyspec", nargs="+", metavar="KEYSPEC")

    ev = sub.add_parser("events", parents=[common], help="follow classification events (until interrupted)")
    ev.add_argument("--follow", action=argparse.BooleanOptionalAction, default=True,
                    help="keep following (default); --no-follow stops after --timeout seconds without events")
    ev.add_argument("--count", type=_positive_int, help="stop after N events")
    ev.add_argument("--timeout", type=_seconds, default=1.0, help="with --no-follow: quiet seconds before exiting")

    po = sub.add_parser("policy", parents=[common], help="show, check or reload the policy")
    posub = po.add_subparsers(dest="policy_cmd", metavar="ACTION", required=True)
    posub.add_parser("show", parents=[common], help="the policy the daemon enforces")
    pc = posub.add_parser("check", parents=[common], help="validate a policy file (no daemon needed)")
    pc.add_argument("file", metavar="FILE")
    pc.add_argument("--daemon", action="store_true", help="let the daemon check the file instead")
    posub.add_parser("reload", parents=[common], help="reload the policy file (atomic, keeps flows)")

    bl = sub.add_parser("block", parents=[common], help="drop all traffic of an address or prefix")
    bl.add_argument("prefix", type=_prefix, metavar="ADDR[/LEN]")
    bl.add_argument("--expire", type=_seconds, metavar="SECONDS", help="remove the block after SECONDS")
    ub = sub.add_parser("unblock", parents=[common], help="remove a manual block")
    ub.add_argument("prefix", type=_prefix, metavar="ADDR[/LEN]")

    rp = sub.add_parser("replay", parents=[common], help="run captures through the XDP program (no daemon)")
    rp.add_argument("captures", nargs="+", metavar="CAPTURE")
    rp.add_argument("--policy", metavar="FILE")

    # everything after `lab` belongs to the lab (split off in main(): argparse's REMAINDER drops leading options)
    sub.add_parser("lab", help="namespace lab: daemon + simulated calls (the demo); its options follow `lab`")
    return p


def _split_lab(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """(argv up to and including `lab`, the arguments after it) when the command is `lab`; else (argv, None)."""
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--socket":
            i += 2
            continue
        if tok.startswith("-"):
            i += 1
            continue
        return (argv[: i + 1], argv[i + 1 :]) if tok == "lab" else (argv, None)
    return argv, None


# ---------------------------------------------------------------------------------------------------------------------
# Commands


class Out:
    """Where a command writes: stdout for results, stderr for errors."""

    def __init__(self, stdout: TextIO, stderr: TextIO, as_json: bool) -> None:
        self.stdout, self.stderr, self.json = stdout, stderr, as_json

    def print(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def emit(self, data: Any, human: Callable[[Any], str]) -> None:
        if self.json:
            self.print(json.dumps(data, sort_keys=False, default=_json_default))
        else:
            self.print(human(data))

    def error(self, text: str) -> None:
        self.stderr.write(f"skyguard: {text}\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _human_any(data: Any) -> str:
    if isinstance(data, dict):
        return fmt.kv(data)
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        cols = list(dict.fromkeys(k for r in data for k in r))
        return fmt.table(data, [(c, c.upper()) for c in cols])
    return fmt.cell(data)


def cmd_flows(client: Client, args: argparse.Namespace, out: Out) -> int:
    req: dict[str, Any] = {"sort": args.sort}
    if args.cls:
        req["class"] = args.cls
    if args.addr:
        req["addr"] = args.addr
    if args.limit:
        req["limit"] = args.limit
    result = client.call("flows", **req)
    flows = result.get("flows", []) if isinstance(result, dict) else list(result or [])
    out.emit({"flows": flows}, lambda d: fmt.flows_table(d["flows"]))
    return EXIT_OK


def cmd_flow(client: Client, args: argparse.Namespace, out: Out) -> int:
    key = parse_keyspec(args.keyspec)
    out.emit(client.call("flow", **key), lambda d: fmt.flow_detail(d) if isinstance(d, dict) else _human_any(d))
    return EXIT_OK


def cmd_events(client: Client, args: argparse.Namespace, out: Out) -> int:
    n = 0
    try:
        for ev in client.events(timeout=None if args.follow else args.timeout):
            out.emit(ev, fmt.event_line)
            out.stdout.flush()
            n += 1
            if args.count and n >= args.count:
                break
    except ClientError as e:
        if e.code == "timeout" and not args.follow:
            return EXIT_OK
        raise
    return EXIT_OK


def cmd_policy(client_factory: Callable[[], Client], args: argparse.Namespace, out: Out) -> int:
    if args.policy_cmd == "check" and not args.daemon:
        return policy_check_offline(args.file, out)
    with client_factory() as client:
        if args.policy_cmd == "show":
            out.emit(client.call("policy.show"), _human_any)
        elif args.policy_cmd == "check":
            result = client.call("policy.check", path=os.path.abspath(args.file))
            out.emit(result, lambda r: f"{args.file}: ok" + (f" ({_human_any(r)})" if r else ""))
        else:
            result = client.call("policy.reload")
            name = result.get("name") if isinstance(result, dict) else None
            out.emit(result, lambda r: f"policy reloaded: {name}" if name else "policy reloaded")
    return EXIT_OK


def policy_check_offline(path: str, out: Out) -> int:
    try:
        pol = load_policy(path)
    except PolicyError as e:
        if out.json:
            out.print(json.dumps({"file": path, "ok": False, "error": str(e)}))
        else:
            out.stderr.write(f"{e}\n")
        return EXIT_ERROR
    except OSError as e:
        out.error(f"{path}: {e.strerror or e}")
        return EXIT_ERROR
    name = getattr(pol, "name", "")
    out.emit({"file": path, "ok": True, "name": name}, lambda d: f"{path}: ok (policy {name!r})")
    return EXIT_OK


def cmd_block(client: Client, args: argparse.Namespace, out: Out) -> int:
    req: dict[str, Any] = {"prefix": args.prefix}
    if args.expire:
        req["expire"] = args.expire
    result = client.call("block", **req)
    tail = f" for {args.expire:g} s" if args.expire else ""
    out.emit(result if result is not None else {"blocked": args.prefix}, lambda _r: f"blocked {args.prefix}{tail}")
    return EXIT_OK


def cmd_unblock(client: Client, args: argparse.Namespace, out: Out) -> int:
    result = client.call("unblock", prefix=args.prefix)
    out.emit(result if result is not None else {"unblocked": args.prefix}, lambda _r: f"unblocked {args.prefix}")
    return EXIT_OK


def run_replay(argv: list[str]) -> int:
    # imported when used: replay compiles the XDP program through bcc, which `skyguard status` never needs
    from skyguard.offline.replay import main as replay_main

    return replay_main(argv)


def run_lab(argv: list[str]) -> int:
    from skyguard.lab.demo import main as lab_main

    return lab_main(argv)


def _replay_argv(args: argparse.Namespace) -> list[str]:
    argv = list(args.captures)
    if args.policy:
        argv += ["--policy", args.policy]
    if args.json:
        argv.append("--json")
    return argv


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    argv, lab_args = _split_lab(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    out = Out(stdout, stderr, args.json)
    path = args.socket or os.environ.get("SKYGUARD_SOCKET") or DEFAULT_SOCKET

    def connect() -> Client:
        return Client(path, timeout=10.0)

    try:
        if args.command == "replay":
            return run_replay(_replay_argv(args))
        if args.command == "lab":
            return run_lab(lab_args or [])
        if args.command == "policy":
            return cmd_policy(connect, args, out)
        if args.command == "flow":
            parse_keyspec(args.keyspec)  # usage errors before connecting
        with connect() as client:
            if args.command in ("status", "stats"):
                out.emit(client.call(args.command), _human_any)
                return EXIT_OK
            handlers = {"flows": cmd_flows, "flow": cmd_flow, "events": cmd_events, "block": cmd_block,
                        "unblock": cmd_unblock}
            return handlers[args.command](client, args, out)
    except UsageError as e:
        parser.print_usage(stderr)
        out.error(str(e))
        return EXIT_USAGE
    except ConnectError as e:
        out.error(e.message)
        return EXIT_ERROR
    except ClientError as e:
        out.error(f"{e.code}: {e.message}" if e.message else e.code)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "events" else 130
    except BrokenPipeError:  # `skyguard flows | head`: quiet exit; stop Python complaining when it flushes stdout
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK

