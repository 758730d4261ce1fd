"""`skyguard`: the operator's command line. Talks to skyguardd over the control socket, or runs `replay`/`lab`.

Exit codes: 0 ok, 1 error, 2 usage. Every command prints a human table or, with --json, the data as JSON; the replies'
shapes are proto's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from skyguard.cli import fmt
from skyguard.cli.args import DEFAULT_SOCKET, UsageError, build_parser, command_key, parse_keyspec
from skyguard.cli.client import Client, ClientError, ConnectError
from skyguard.feed import FeedError, load_feed
from skyguard.policy import PolicyError, load_policy

__all__ = ["main", "parse_keyspec"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


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


def cmd_status(client: Client, args: argparse.Namespace, out: Out) -> int:
    out.emit(client.call(args.command), fmt.kv)
    return EXIT_OK


def cmd_stats(client: Client, args: argparse.Namespace, out: Out) -> int:
    if getattr(args, "format", "table") == "prometheus":
        sys.stdout.write(client.call("metrics")["text"])
        return EXIT_OK
    return cmd_status(client, args, out)


def cmd_flows(client: Client, args: argparse.Namespace, out: Out) -> int:
    req: dict[str, Any] = {"sort": args.sort}
    if args.cls:
        req["class"] = args.cls
    if args.addr:
        req["addr"] = args.addr
    if args.limit:
        req["limit"] = args.limit
    result = client.call("flows", **req)
    out.emit({"flows": result["flows"]}, lambda d: fmt.flows_table(d["flows"], total=result["total"]))
    return EXIT_OK


def cmd_flow(client: Client, args: argparse.Namespace, out: Out) -> int:
    out.emit(client.call("flow", **parse_keyspec(args.keyspec)), fmt.flow_detail)
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
    if args.policy_cmd == "check":
        if args.file is None and args.feed is None:
            raise UsageError("give a policy FILE, a --feed FEED, or both")
        if args.daemon and (args.feed is not None or args.file is None):
            raise UsageError("--daemon checks a policy FILE with the feed it names; --feed is checked here")
        if args.file is None:
            return feed_check_offline(args.feed, out)
        if not args.daemon:
            return policy_check_offline(args.file, out, feed=args.feed)
    with client_factory() as client:
        if args.policy_cmd == "show":
            out.emit(client.call("policy.show"), fmt.kv)
        elif args.policy_cmd == "check":
            result = client.call("policy.check", path=os.path.abspath(args.file))
            out.emit(result, lambda r: f"{args.file}: ok (policy {r['name']!r})")
        else:
            out.emit(client.call("policy.reload"), lambda r: f"policy reloaded: {r['name']}")
    return EXIT_OK


def policy_check_offline(path: str, out: Out, feed: str | None = None) -> int:
    try:
        pol = load_policy(path, feed_override=feed)
    except PolicyError as e:
        if out.json:
            out.print(json.dumps({"file": path, "ok": False,
                                  "errors": [{"line": ln, "reason": r} for ln, r in e.errors]}))
        else:
            out.stderr.write(f"{e}\n")
        return EXIT_ERROR
    data: dict[str, Any] = {"file": path, "ok": True, "name": pol.name}
    tail = ""
    if pol.feed is not None:
        data["feed"] = pol.feed.as_dict()
        tail = f"; feed {pol.feed.path}: {pol.feed.summary()}"
    out.emit(data, lambda d: f"{path}: ok (policy {pol.name!r}{tail})")
    return EXIT_OK


def feed_check_offline(path: str, out: Out) -> int:
    """`skyguard policy check --feed FEED`: the feed alone, with the parser a policy load uses."""
    try:
        fd = load_feed(path)
    except FeedError as e:
        if out.json:
            out.print(json.dumps({"feed": path, "ok": False,
                                  "errors": [{"line": e.line, "column": e.col, "reason": e.reason}]}))
        else:
            out.stderr.write(f"{e}\n")
        return EXIT_ERROR
    out.emit({"feed": path, "ok": True, **fd.as_dict()}, lambda d: f"{path}: ok ({fd.summary()})")
    return EXIT_OK


def cmd_feed(socket_path: str, args: argparse.Namespace, out: Out) -> int:
    from skyguard.cli import feedupdate  # urllib and friends only for this command

    return feedupdate.run(args, socket_path, out.emit, out.error)


def cmd_block(client: Client, args: argparse.Namespace, out: Out) -> int:
    req: dict[str, Any] = {"prefix": args.prefix}
    if args.expire:
        req["expire"] = args.expire
    result = client.call("block", **req)
    tail = f" for {args.expire:g} s" if args.expire else ""
    out.emit(result, lambda r: f"blocked {r['blocked']}{tail} ({r['flows']} live flows caught)")
    return EXIT_OK


def cmd_unblock(client: Client, args: argparse.Namespace, out: Out) -> int:
    out.emit(client.call("unblock", prefix=args.prefix), lambda r: f"unblocked {r['unblocked']}")
    return EXIT_OK


def cmd_blocks(client: Client, args: argparse.Namespace, out: Out) -> int:
    out.emit(client.call("blocks"), lambda r: fmt.blocks_table(r["blocks"], now_ns=time.time_ns()))
    return EXIT_OK


DAEMON_COMMANDS: dict[str, Callable[[Client, argparse.Namespace, Out], int]] = {
    "status": cmd_status, "stats": cmd_stats, "flows": cmd_flows, "flow": cmd_flow, "events": cmd_events,
    "block": cmd_block, "unblock": cmd_unblock, "blocks": cmd_blocks,
}


def run_replay(args: argparse.Namespace) -> int:
    # imported when used: replay compiles the XDP program through bcc, which `skyguard status` never needs
    from skyguard.offline.replay import main as replay_main

    return replay_main(args)


def run_lab(args: argparse.Namespace) -> int:
    from skyguard.lab.demo import main as lab_main

    return lab_main(args)


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser, commands = build_parser()
    try:  # argparse writes to sys.stdout/stderr itself: send its help and usage where this call's output goes
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # --help, --version (0) or a usage error (2)
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    args.json = bool(getattr(args, "json", False) or args.json_global)
    out = Out(stdout, stderr, args.json)
    path = getattr(args, "socket", None) or args.socket_global or os.environ.get("SKYGUARD_SOCKET") or DEFAULT_SOCKET

    def connect() -> Client:
        return Client(path, timeout=10.0)

    try:
        if args.command == "replay":
            return run_replay(args)
        if args.command == "lab":
            return run_lab(args)
        if args.command == "policy":
            return cmd_policy(connect, args, out)
        if args.command == "feed":
            return cmd_feed(path, args, out)
        if args.command == "flow":
            parse_keyspec(args.keyspec)  # usage errors before connecting
        with connect() as client:
            return DAEMON_COMMANDS[args.command](client, args, out)
    except UsageError as e:
        commands[command_key(args)].print_usage(stderr)
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
