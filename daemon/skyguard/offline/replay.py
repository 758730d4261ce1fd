"""`skyguard replay CAPTURE... [--policy FILE] [--json]`: captures through the very same XDP program.

Every packet goes through BPF_PROG_TEST_RUN with its capture timestamp handed to the program as XDP metadata; the ring
buffer is drained after every packet and the slow path's decisions are written back before the next one, so a replay
is deterministic and shows what the live daemon would do with zero decision latency.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
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
    kernel_ns: int = 0  # the kernel's own time for the program's runs (BPF_PROG_TEST_RUN durations)
    runs: int = 0  # test runs made (the compiled loop batches packets; the Python loop makes one per packet)


# A class change as noted during a replay: capture name, flow key, old class, new class, the packet's index in its
# capture, the flow's packets then, ts_ns, and ms since the flow's first packet (None: the flow was gone at the end)
Noted = tuple[str, wire.FlowKey, int, int, int, int, int, float | None]


@dataclass
class ReplayResult:
    captures: list[CaptureRun]
    policy: str
    flows: list[dict]
    stats: dict[str, int]
    noted: list[Noted] = field(default_factory=list, repr=False)  # every class change, as `decisions` lists them

    @functools.cached_property
    def decisions(self) -> list[dict]:
        """Every class change with its packet index: for time-to-verdict measurements. Written out on first use:
        naming the flow of each of thousands of decisions cost a replay a tenth of its slow path's time, and the
        replay's own output (to_json, the table) has no use for them."""
        out = []
        for capture, key, old, new, packet, pkts, ts_ns, ms in self.noted:
            d = {"capture": capture, "flow": str(key), "old": wire.class_name(old), "new": wire.class_name(new),
                 "packet": packet, "flow_packets": pkts, "ts_ns": ts_ns}
            if ms is not None:
                d["ms"] = ms
            out.append(d)
        return out

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


ENGINES = ("auto", "c", "python")
PROGRESS_EVERY = 65536  # packets the compiled loop runs before it lets the progress bar move


def replay(paths: Sequence[str | os.PathLike], policy=None, *, kernel=None, progress: bool = False,
           on_packet: Callable[[int, int], None] | None = None, log_all: bool = False, engine: str = "auto",
           jobs: int = 1, bar_type: Callable[[int, str, bool], Progress] = Progress) -> ReplayResult:
    """Run captures through the program. Flows, learned prefixes and slow-path state start fresh for every capture.

    `engine`: "c" runs the packet loop in the compiled helper (fastwalk), "python" one test run per packet from
    Python (the reference the helper is tested against), "auto" the helper when it builds here, else Python; a
    per-packet `on_packet` callback needs the Python loop. `jobs` > 1 replays captures in that many processes, each
    with its own program and maps, and merges the results (only without a caller's `kernel`; offline/parallel.py).
    `bar_type`: what draws a capture's progress (the parallel replay's workers count into their parent's instead)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
    # more workers than CPUs would only add programs to load and memory to lock (the flow table is tens of MB each)
    jobs = min(jobs, len(paths), len(os.sched_getaffinity(0)))
    if jobs > 1 and kernel is None and on_packet is None:
        from skyguard.offline.parallel import ReplayPool

        with ReplayPool(jobs) as pool:
            return pool.replay(paths, policy, log_all=log_all, engine=engine, progress=progress)
    from skyguard.policy import default_policy
    from skyguard.slowpath.classify import SlowPath
    from skyguard.slowpath.engine import Engine

    policy = policy or default_policy()
    walk = _walker_factory(engine if on_packet is None else "python")
    own_kernel = kernel is None
    if kernel is None:
        from skyguard.kernel.loader import Kernel

        kernel = Kernel(replay=True)
    elif not kernel.replay:
        raise ValueError("replay needs a Kernel(replay=True): the live program ignores capture timestamps")
    runs: list[CaptureRun] = []
    rows: list[dict] = []
    noted: list[Noted] = []
    totals: Counter = Counter()
    left: list | None = None  # the flows the previous capture left, as listed at its end (None: not known)
    prev = None  # the previous capture's Engine: what it learned is what there is to forget
    ring = None  # the ring buffer as the compiled loop maps it: once for all the captures
    try:
        if walk is not None:
            from skyguard.offline.fastwalk import Ring

            ring = Ring(kernel.ring_map_fd)
        for path in paths:
            run = CaptureRun(str(path))
            runs.append(run)
            name = Path(path).name
            if prev is None:
                _fresh_state(kernel, left)
            else:
                _fresh_state(kernel, left, prefixes=prev.counters.prefix_changes > 0,
                             endpoints=prev.counters.endpoints_learned > 0)
            eng = prev = Engine(kernel, policy, slowpath=SlowPath(policy), log_all=log_all, logger=_quiet_logger())
            pkt_index = {"n": 0}
            mine: list[tuple] = []  # this capture's decisions (their times to verdict are set once it ends)

            def note(key, old, new, ts_ns, pkts, _idx=pkt_index, _mine=mine):
                _mine.append((key, old, new, _idx["n"], pkts, ts_ns))

            eng.on_decision.append(note)
            before = kernel.stats()
            total = _count(path) if progress else 0
            bar = bar_type(total, Path(path).name, progress and total > 2000)
            t0 = time.perf_counter()
            try:
                if walk is None:
                    _loop_python(kernel, eng, path, run, pkt_index, bar, on_packet)
                else:
                    _loop_compiled(walk, kernel, ring, eng, path, run, pkt_index, bar)
            except CaptureError as e:
                run.error = str(e)
            except OSError as e:
                run.error = f"{path}: {e.strerror or e}"
            finally:
                eng.pump()
                bar.update(run.packets, force=True)
                bar.done()
            run.seconds = time.perf_counter() - t0
            after = kernel.stats()
            totals.update({k: after.get(k, 0) - before.get(k, 0) for k in after})
            first = {}
            left = []
            for key, flow in kernel.flows():
                rows.append({"capture": name, **eng.flow_row(key, flow)})
                first[key] = flow.first_ns
                left.append(key)
            for key, old, new, packet, pkts, ts_ns in mine:
                f0 = first.get(key)
                noted.append((name, key, old, new, packet, pkts, ts_ns,
                              None if f0 is None else round((ts_ns - f0) / 1e6, 3)))
    finally:
        if ring is not None:
            ring.close()
        if own_kernel:
            kernel.close()
    rows.sort(key=row_order)
    return ReplayResult(runs, policy.name, rows, dict(totals), noted)


def row_order(row: dict) -> tuple:
    """The order of a replay's flow rows: by capture, then first packet, ends and protocol (a parallel replay's
    merge sorts by it too, so that its output is a sequential replay's)."""
    return row["capture"], row["first_ns"], row["a"], row["b"], row["proto"]


def _fresh_state(kernel, flows: list | None = None, *, prefixes: bool = True, endpoints: bool = True) -> None:
    """No flow and no learned prefix of an earlier capture may decide anything in this one: every capture then
    gives the same result alone, after others, or in its own process (jobs > 1). `flows`: the keys of every flow in
    the table, when the caller has just listed them (only packets make flows), which spares a scan of the table.
    `prefixes`, `endpoints` False: the caller knows that nothing learned any since the table was last cleared (in a
    replay only its engine does, and counts them), which spares a scan of every prefix the policy holds."""
    from skyguard.kernel.loader import PREFIX_KINDS

    kernel.delete_flows(flows if flows is not None else [key for key, _ in kernel.flows()])
    if prefixes:
        for kind in PREFIX_KINDS:
            for net, src, _exp in kernel.prefixes(kind):
                if src == wire.SRC_LEARNED:
                    kernel.remove_prefix(kind, net)
    if endpoints:
        kernel.forget_endpoints()  # endpoints learned from one capture say nothing about the next


def _loop_python(kernel, eng, path, run: CaptureRun, idx: dict, bar: Progress,
                 on_packet: Callable[[int, int], None] | None) -> None:
    """One test run per packet from Python, the ring buffer drained and decisions written back after each."""
    for pkt in read_packets(path):
        res = kernel.test_run(pkt.frame, ts_ns=pkt.ts_ns, place=(run.packets + 1) & _PLACE_MASK)
        run.packets += 1
        idx["n"] = run.packets
        run.verdicts[XDP_VERDICTS.get(res.verdict, str(res.verdict))] += 1
        run.kernel_ns += res.duration_ns
        run.runs += 1
        eng.pump()
        if on_packet:
            on_packet(run.packets, res.verdict)
        bar.update(run.packets)


def _loop_compiled(walk, kernel, ring, eng, path, run: CaptureRun, idx: dict, bar: Progress) -> None:
    """The same loop in the compiled helper: it comes back after each test run that left a record which may lead
    the slow path to write into the kernel, with every record waiting, and the slow path acts on them (and writes its
    decisions) before the helper runs the next packet. A batch ends after any packet whose record may have the slow
    path write; it goes on past one that cannot (a sample below SG_SAMPLES_MIN, a `classified` record outside
    SG_STRONG_REASONS), whose record waits, across batches too. So every write reaches the kernel before the next
    packet, as in the Python loop, and packets that leave no such record need no trip through Python. A waiting
    `classified` record is a kernel decision made at an earlier packet: it is noted at that packet's place, which
    the record carries, as the Python loop notes it."""
    from skyguard.offline import fastwalk as fw

    unpack, handle, sample, ev_sample = wire.Event.unpack, eng.handle, eng.handle_sample, wire.EV_SAMPLE
    ev_classified = wire.EV_CLASSIFIED
    with walk(path, kernel.prog_fd, ring, kernel.batch_map_fd) as w:
        try:
            while True:
                step = w.run(PROGRESS_EVERY)
                run.packets = idx["n"] = step.packets
                if step.status == fw.EVENTS:  # the helper took the records from the ring buffer: no libbpf call
                    err = None
                    for rec in w.records():
                        try:
                            if rec[0] == ev_sample:  # most records: handed over undecoded
                                sample(rec)
                            elif rec[0] == ev_classified:
                                ev = unpack(rec)
                                idx["n"] = _place(ev.place, step.packets)
                                try:
                                    handle(ev)
                                finally:
                                    idx["n"] = step.packets
                            else:
                                handle(unpack(rec))
                        except Exception as e:  # noqa: BLE001 - raised once the rest is handled, as drain_events does
                            err = err or e
                    if err is not None:  # the records are off the ring buffer: none may be left unhandled
                        raise err
                elif step.status == fw.PAUSE:
                    bar.update(run.packets)
                elif step.status == fw.END:
                    return
                elif step.status == fw.ECAPTURE:
                    off, msg = w.error
                    raise CaptureError(path, off, msg)
                else:
                    err = w.errno
                    raise OSError(err, f"bpf_prog_test_run_opts failed: {os.strerror(err)}")
        finally:
            for v, n in enumerate(w.verdicts):
                if n:
                    run.verdicts[XDP_VERDICTS.get(v, "other")] += n
            run.kernel_ns = w.kernel_ns
            run.runs = w.runs


_PLACE_MASK = 0xFFFFFFFF  # a record carries its packet's place in 32 bits (struct sg_meta)


def _place(carried: int, ran: int) -> int:
    """The place of the packet that left a record, from the 32 bits it carries and the packets run so far (a record
    waits far fewer than 2^32 packets); 0 carried: not a packet of this walk (put there before), noted at `ran`."""
    return ran - ((ran - carried) & _PLACE_MASK) if carried else ran


_build_note_shown = False


def _walker_factory(engine: str):
    """fastwalk.Walker, or None for the Python loop ("python", or "auto" where the helper cannot be built)."""
    global _build_note_shown
    if engine == "python":
        return None
    from skyguard.offline import fastwalk

    try:
        fastwalk.lib()
    except fastwalk.BuildError as e:
        if engine == "c":
            raise
        if not _build_note_shown:
            print(f"skyguard: {e}; replaying with the slower Python loop", file=sys.stderr)
            _build_note_shown = True
        return None
    return fastwalk.Walker


def _count(path) -> int:
    from skyguard.offline.pcap import count_packets

    try:
        return count_packets(path)
    except (CaptureError, OSError):
        return 0


def count_all(paths: Sequence[str | os.PathLike]) -> int:
    """Packets in all of `paths` (a progress bar's total; a capture that cannot be read counts none)."""
    return sum(_count(p) for p in paths)


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
    from skyguard.offline.parallel import WorkersNotReady
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
        result = replay(args.captures, policy, progress=sys.stderr.isatty() and not args.json,
                        jobs=max(1, getattr(args, "jobs", 1)))
    except PermissionError as e:
        print(f"skyguard: replay needs root to load the XDP program ({e})", file=sys.stderr)
        return 1
    except (BrokenProcessPool, WorkersNotReady) as e:  # --jobs: a worker died or hung (it is ended)
        print(f"skyguard: a replay worker failed: {e}", file=sys.stderr)
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
