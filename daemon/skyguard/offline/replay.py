"""`skyguard replay CAPTURE... [--policy FILE] [--json]`: captures through the very same XDP program.

Every packet goes through BPF_PROG_TEST_RUN with its capture timestamp handed to the program as XDP metadata; the ring
buffer is drained after every packet and the slow path's decisions are written back before the next one, so a replay
is deterministic and shows what the live daemon would do with zero decision latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from skyguard import wire
from skyguard.offline.pcap import CaptureError, read_packets

XDP_VERDICTS = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}


@dataclass
class CaptureRun:
    path: str
    packets: int = 0
    verdicts: Counter = field(default_factory=Counter)
    error: str | None = None
    seconds: float = 0.0


@dataclass
class ReplayResult:
    captures: list[CaptureRun]
    policy: str
    flows: list[dict]
    stats: dict[str, int]
    decisions: list[dict]  # every class change with its packet index: for time-to-verdict measurements

    @property
    def ok(self) -> bool:
        return all(c.error is None for c in self.captures)

    def summary(self) -> dict:
        by_class = Counter(f["class"] for f in self.flows)
        parse_errors = sum(v for k, v in self.stats.items() if k.startswith("err_"))
        return {"packets": sum(c.packets for c in self.captures), "flows": len(self.flows),
                "by_class": dict(sorted(by_class.items())), "dropped": sum(f["dropped"] for f in self.flows),
                "parse_errors": parse_errors}

    def to_json(self) -> dict:
        out = {"captures": [Path(c.path).name for c in self.captures], "policy": self.policy, "flows": self.flows,
               "summary": self.summary()}
        errors = [c.error for c in self.captures if c.error]
        if errors:
            out["errors"] = errors
        return out


class Progress:
    """A one-line progress bar on a terminal (stderr); silent otherwise."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled = max(total, 1), label, enabled
        self._last = 0.0

    def update(self, n: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        frac = min(n / self.total, 1.0)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{self.label[:40]:40} [{bar:30}] {n}/{self.total} {frac:4.0%}")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def replay(paths: Sequence[str | os.PathLike], policy=None, *, kernel=None, progress: bool = False,
           on_packet: Callable[[int, int], None] | None = None, log_all: bool = False) -> ReplayResult:
    """Run captures through the program. Flows and slow-path state start fresh for every capture."""
    from skyguard.policy import default_policy
    from skyguard.slowpath.classify import SlowPath
    from skyguard.slowpath.engine import Engine

    policy = policy or default_policy()
    own_kernel = kernel is None
    if kernel is None:
        from skyguard.kernel.loader import Kernel

        kernel = Kernel(replay=True)
    elif not kernel.replay:
        raise ValueError("replay needs a Kernel(replay=True): the live program ignores capture timestamps")
    runs: list[CaptureRun] = []
    rows: list[dict] = []
    decisions: list[dict] = []
    totals: Counter = Counter()
    try:
        for path in paths:
            run = CaptureRun(str(path))
            runs.append(run)
            for key, _ in list(kernel.flows()):
                kernel.delete_flow(key)
            engine = Engine(kernel, policy, slowpath=SlowPath(policy), log_all=log_all,
                            logger=_quiet_logger())
            pkt_index = {"n": 0, "first": {}}

            def note(key, old, new, ts_ns, pkts, _run=run, _idx=pkt_index):
                decisions.append({"capture": Path(_run.path).name, "flow": str(key), "old": _cname(old),
                                  "new": _cname(new), "packet": _idx["n"], "flow_packets": pkts, "ts_ns": ts_ns})

            engine.on_decision.append(note)
            before = kernel.stats()
            total = _count(path) if progress else 0
            bar = Progress(total, Path(path).name, progress and total > 2000)
            t0 = time.perf_counter()
            try:
                for pkt in read_packets(path):
                    res = kernel.test_run(pkt.frame, ts_ns=pkt.ts_ns)
                    run.packets += 1
                    pkt_index["n"] = run.packets
                    run.verdicts[XDP_VERDICTS.get(res.verdict, str(res.verdict))] += 1
                    engine.pump()
                    if on_packet:
                        on_packet(run.packets, res.verdict)
                    bar.update(run.packets)
            except CaptureError as e:
                run.error = str(e)
            except OSError as e:
                run.error = f"{path}: {e.strerror or e}"
            finally:
                engine.pump()
                bar.update(run.packets, force=True)
                bar.done()
            run.seconds = time.perf_counter() - t0
            after = kernel.stats()
            totals.update({k: after.get(k, 0) - before.get(k, 0) for k in after})
            first = {}
            for key, flow in kernel.flows():
                rows.append({"capture": Path(path).name, **engine.flow_row(key, flow)})
                first[str(key)] = flow.first_ns
            for d in decisions:
                if d["capture"] == Path(path).name and d["flow"] in first and "ms" not in d:
                    d["ms"] = round((d["ts_ns"] - first[d["flow"]]) / 1e6, 3)
    finally:
        if own_kernel:
            kernel.close()
    rows.sort(key=lambda r: (r["capture"], r["first_ns"], r["a"], r["b"], r["proto"]))
    return ReplayResult(runs, policy.name, rows, dict(totals), decisions)


def _count(path) -> int:
    from skyguard.offline.pcap import count_packets

    try:
        return count_packets(path)
    except (CaptureError, OSError):
        return 0


def _cname(c: int) -> str:
    return wire.CLASS_NAMES[c] if 0 <= c < wire.NCLASSES else str(c)


def _quiet_logger():
    import structlog

    return structlog.wrap_logger(structlog.PrintLogger(open(os.devnull, "w")))  # noqa: SIM115


def format_table(result: ReplayResult) -> str:
    from skyguard.cli.fmt import table

    cols = ["capture", "proto", "a", "b", "class", "reason", "action", "packets", "bytes", "dropped"]
    body = table(result.flows, [(c, c) for c in cols])
    s = result.summary()
    by = ", ".join(f"{k} {v}" for k, v in s["by_class"].items())
    lines = [body, "", f"{s['packets']} packets, {s['flows']} flows ({by}), {s['dropped']} dropped, "
                       f"{s['parse_errors']} parse errors, policy {result.policy}"]
    for c in result.captures:
        if c.error:
            lines.append(f"error: {c.error}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from skyguard.cli.args import replay_parser  # the arguments are defined once, with `skyguard replay`'s

    return replay_parser().parse_args(argv)


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    from skyguard.policy import PolicyError, load_policy

    try:
        policy = load_policy(args.policy) if args.policy else None
    except PolicyError as e:
        print(f"skyguard: {e}", file=sys.stderr)
        return 1
    for c in args.captures:
        if not os.path.isfile(c):
            print(f"skyguard: {c}: no such file", file=sys.stderr)
            return 1
    try:
        result = replay(args.captures, policy, progress=sys.stderr.isatty() and not args.json)
    except PermissionError as e:
        print(f"skyguard: replay needs root to load the XDP program ({e})", file=sys.stderr)
        return 1
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=None)
        sys.stdout.write("\n")
    else:
        print(format_table(result))
    for c in result.captures:
        if c.error:
            print(f"skyguard: {c.error}", file=sys.stderr)
    return 0 if result.ok else 1
