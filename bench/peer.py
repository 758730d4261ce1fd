"""nDPI (ndpiReader) beside skyguard on the same captures, each rate the best of TRIES runs: ndpiReader's own
packets/s, skyguard's kernel ns/packet (the kernel's BPF_PROG_TEST_RUN durations during a replay, per packet),
`skyguard replay` end-to-end packets/s (the compiled loop, and the per-packet Python loop it replaced, both measured
here) and their ratio to ndpiReader; then the marginal rate of each between two sizes of the same generated traffic
(start-up cancels out), with the test runs per packet; the same with the captures spread over one worker process per
CPU (`skyguard replay --jobs N`), against ndpiReader in one process and in N processes at a time; the ceiling of the
compiled loop itself: driving a program that does nothing, in batches and with one test run per packet; and the
seconds to a loaded replay build, compiled and from its cached image.

Usage: bench/peer.py [--captures DIR] [--json]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import ROOT, ratio

from skyguard import wire
from skyguard.kernel.loader import Kernel  # noqa: E402
from skyguard.lab import gen
from skyguard.offline import replay  # noqa: E402
from skyguard.offline.pcap import CaptureError, read_packets

CAPTURES = ROOT.parent / "shared" / "captures"
# each rate is the best of this many runs, for ndpiReader and skyguard alike: a capture of a few hundred packets runs
# in a millisecond, which one scheduling hiccup on a shared VM can double
TRIES = 3
_PPS = re.compile(r"nDPI throughput:\s+([\d.]+)\s*([KM]?) pps")


def ndpi_pps(path: Path, tries: int = TRIES) -> float | None:
    """ndpiReader's own throughput over `path` (its start-up left out by itself), the best of `tries` runs."""
    exe = shutil.which("ndpiReader")
    if not exe:
        return None
    best = None
    for _ in range(tries):
        out = subprocess.run([exe, "-i", str(path)], capture_output=True, text=True, timeout=120).stdout
        m = _PPS.search(out)
        if m:  # a run that printed no throughput does not count
            pps = float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6}[m.group(2)]
            best = pps if best is None else max(best, pps)
    return best


def skyguard_run(k: Kernel, path: Path, engine: str = "c", tries: int = TRIES) -> dict:
    """One capture's replay (its packet loop, per-capture set-up left out as ndpiReader leaves out its own): the
    best of `tries` runs, with that run's kernel ns per packet."""
    best: dict = {}
    for _ in range(tries):
        res = replay.replay([path], kernel=k, engine=engine)
        c = res.captures[0]
        row = {"packets": c.packets, "kernel_ns": c.kernel_ns / c.packets if c.packets else None,
               "replay_pps": c.packets / c.seconds if c.seconds else None}
        if not best or (row["replay_pps"] or 0) > (best["replay_pps"] or 0):
            best = row
    return best


def ndpi_seconds(paths: list[Path], counts: dict[Path, int] | None = None) -> float | None:
    """ndpiReader's own processing seconds over `paths` (packets / its reported throughput, file by file): its
    process start-up is left out by ndpiReader itself, which wall-clock differences between small runs drown in.
    `counts`: the files' packets, when the caller has counted them."""
    total = 0.0
    for p in paths:
        pps = ndpi_pps(p, tries=1)  # the marginal's sets are measured TRIES times whole (marginal)
        if not pps:
            return None
        total += (counts[p] if counts else sum(1 for _ in read_packets(p))) / pps
    return total


_NOOP_RB = b"BPF_RINGBUF_OUTPUT(events, 1);\nint xdp_noop_rb(struct xdp_md *ctx) { return XDP_PASS; }\n"


def walk_ceiling(paths: list[Path], batched: bool = True) -> dict | None:
    """The replay's own C loop (offline/walk.c) over `paths` driving a program that does nothing with the packets:
    bench/batch_noop.bpf.c, which walks batches as the replay build does (`batched`), else a no-op program with one
    BPF_PROG_TEST_RUN per packet. What is left of a replay when the program and the slow path cost nothing: its
    packets, test runs and packets/s (None if a capture did not run to its end)."""
    import bcc

    from skyguard.offline import fastwalk as fw

    if batched:
        b = bcc.BPF(src_file=str(ROOT / "bench" / "batch_noop.bpf.c").encode(), cflags=[f"-I{wire.bpf_dir()}"])
        fd = b.load_func(b"xdp_batch_noop", bcc.BPF.XDP).fd
        b[b"replay_next"][ct.c_int(0)] = ct.c_int(fd)
        batch_fd = b[b"batch"].map_fd
    else:
        b = bcc.BPF(text=_NOOP_RB)
        fd, batch_fd = b.load_func(b"xdp_noop_rb", bcc.BPF.XDP).fd, -1
    ring = None
    try:
        ring = fw.Ring(b[b"events"].map_fd)  # mapped once, as a replay does
        n = runs = 0
        t = time.perf_counter()
        for p in paths:
            with fw.Walker(p, fd, ring, batch_fd) as w:
                while (step := w.run()).status == fw.PAUSE:
                    pass
                if step.status != fw.END or w.verdicts[2] != step.packets:  # all passed: each packet ran once
                    return None
                n, runs = n + step.packets, runs + w.runs
        return {"packets": n, "runs": runs, "pps": n / (time.perf_counter() - t)}
    finally:
        if ring is not None:
            ring.close()
        b.cleanup()


def packet_counts(paths: list[Path]) -> dict[Path, int] | None:
    """Each file's packets (for ndpiReader's seconds: packets / its reported rate); None if one cannot be read."""
    try:
        return {p: sum(1 for _ in read_packets(p)) for p in paths}
    except (CaptureError, OSError):
        return None


def ndpi_lane_seconds(paths: list[Path], lanes: int, counts: dict[Path, int] | None = None) -> float | None:
    """ndpiReader over `paths` in `lanes` processes at a time (it reads a pcap in one thread: -n is ignored for
    files), each lane running the next file as soon as its last ends (the packets are counted before, so that the
    lanes' processes overlap): the busiest lane's own processing seconds, as ndpi_seconds counts them. What an
    analyst gets from running ndpiReader by hand on every CPU. `counts`: packet_counts(paths), if already taken."""
    from concurrent.futures import ThreadPoolExecutor

    counts = counts or packet_counts(paths)
    if counts is None:
        return None  # a file that cannot be read has no rate
    busy: dict[int, float] = {}
    lock = threading.Lock()

    def one(p: Path) -> bool:
        secs = ndpi_seconds([p], counts)
        if secs is None:
            return False
        with lock:
            me = threading.get_ident()
            busy[me] = busy.get(me, 0.0) + secs
        return True

    with ThreadPoolExecutor(max_workers=lanes) as ex:
        ok = list(ex.map(one, sorted(paths, key=lambda p: -p.stat().st_size)))  # largest first, as ReplayPool
    return max(busy.values()) if all(ok) and busy else None


def _shortest(run: Callable[[], replay.ReplayResult]) -> tuple[replay.ReplayResult, float]:
    """`run`'s result and its shortest wall time of TRIES."""
    best = None
    for _ in range(TRIES):
        t = time.perf_counter()
        res = run()
        secs = time.perf_counter() - t
        best = secs if best is None else min(best, secs)
    assert best is not None
    return res, best


def _shortest_of(measure: Callable[[], float | None]) -> float | None:
    """The shortest of TRIES measurements, or None if one failed."""
    vals = [measure() for _ in range(TRIES)]
    return None if None in vals else min(vals)


def _marginal_pps(packets: list[int], secs: list[float | None]) -> float | None:
    """(P2 - P1) / (T2 - T1); None without both times, or when T2 is not above T1."""
    (p1, p2), (t1, t2) = packets, secs
    return (p2 - p1) / (t2 - t1) if t1 is not None and t2 is not None and t2 > t1 else None


def marginal(k: Kernel, small: list[Path], large: list[Path]) -> dict:
    """Packets/s between two capture sets of the same traffic mix: (P2 - P1) / (T2 - T1), for the replay (kernel
    already compiled, as for one capture after another; per-capture set-up cancels out) and for ndpiReader, each T
    the shortest of TRIES."""
    packets: list[int] = []
    secs: list[float | None] = []
    ndpi: list[float | None] = []
    runs = 0
    for paths in (small, large):
        res, best = _shortest(lambda paths=paths: replay.replay(paths, kernel=k, engine="c"))
        counts = packet_counts(paths)  # once a set, not once a try
        packets.append(sum(c.packets for c in res.captures))
        secs.append(best)
        ndpi.append(_shortest_of(lambda paths=paths, counts=counts: ndpi_seconds(paths, counts)) if counts else None)
        runs = sum(c.runs for c in res.captures)
    out: dict = {"packets": packets, "replay_pps": _marginal_pps(packets, secs),
                 "ndpi_pps": _marginal_pps(packets, ndpi)}
    out["ratio"] = ratio(out["replay_pps"] or 0, out["ndpi_pps"] or 0)
    out["ceiling_pps"] = (walk_ceiling(large) or {}).get("pps")
    out["ceiling_ratio"] = ratio(out["ceiling_pps"] or 0, out["ndpi_pps"] or 0)
    out["single_ceiling_pps"] = (walk_ceiling(large, batched=False) or {}).get("pps")
    out["single_ceiling_ratio"] = ratio(out["single_ceiling_pps"] or 0, out["ndpi_pps"] or 0)
    out["runs_per_packet"] = runs / packets[1] if packets[1] else None
    return out


def marginal_parallel(small: list[Path], large: list[Path], jobs: int, ndpi_pps: float | None) -> dict:
    """marginal() for `skyguard replay --jobs N`: the captures spread over N worker processes whose programs are
    loaded (the pool's start-up left out, as the sequential replay's compile is), against ndpiReader in one process
    (`ndpi_pps`: marginal()'s, measured once a run; the tool has no parallel mode for captures) and in N processes at a
    time (ndpi_lane_seconds)."""
    from skyguard.offline.parallel import ReplayPool

    packets: list[int] = []
    secs: list[float | None] = []
    lanes: list[float | None] = []
    with ReplayPool(jobs) as pool:
        for paths in (small, large):
            res, best = _shortest(lambda paths=paths: pool.replay(paths, engine="c"))
            counts = packet_counts(paths)
            packets.append(sum(c.packets for c in res.captures))
            secs.append(best)
            lanes.append(_shortest_of(lambda paths=paths, counts=counts: ndpi_lane_seconds(paths, jobs, counts))
                         if counts else None)
    out = {"jobs": jobs, "packets": packets, "replay_pps": _marginal_pps(packets, secs), "ndpi_pps": ndpi_pps,
           "ndpi_lanes_pps": _marginal_pps(packets, lanes)}
    out["ratio"] = ratio(out["replay_pps"] or 0, out["ndpi_pps"] or 0)
    out["lanes_ratio"] = ratio(out["replay_pps"] or 0, out["ndpi_lanes_pps"] or 0)
    return out


def start_seconds() -> dict:
    """Seconds to a loaded replay build: compiled by bcc (the image cache off), then from the cached image."""
    from unittest import mock

    from skyguard.kernel import image

    out = {}
    with Kernel(replay=True):  # the image is written by a compile with the cache on, if it is not there yet
        pass
    for name, env in (("compiled", "0"), ("cached", "1")):
        with mock.patch.dict(os.environ, {image.ENV: env}):
            t = time.perf_counter()
            with Kernel(replay=True) as k:
                out[name] = time.perf_counter() - t
                out[f"{name}_from_cache"] = k.from_cache
    return out


def measure(cdir: Path = CAPTURES, small_calls: int = 5, large_calls: int = 40) -> dict:
    rows = {}
    start = start_seconds()
    with tempfile.TemporaryDirectory(prefix="sg-peer-") as td, Kernel(replay=True) as k:
        gen.generate(11, td, calls=small_calls)
        paths = sorted(p for p in cdir.glob("*.pcap*")) + sorted(Path(td).glob("*.pcap"))
        for p in paths:
            row = skyguard_run(k, p)
            row["python_pps"] = skyguard_run(k, p, "python", tries=1)["replay_pps"]  # the slow reference loop
            row["ndpi_pps"] = ndpi_pps(p)
            row["kernel_pps"] = 1e9 / row["kernel_ns"] if row["kernel_ns"] else None
            rows[("gen/" if str(p).startswith(td) else "") + p.name] = row
        big = Path(td) / "large"
        gen.generate(11, big, calls=large_calls)
        marg = marginal(k, sorted(Path(td).glob("*.pcap")), sorted(big.glob("*.pcap")))
        cpus = len(os.sched_getaffinity(0))
        par = (marginal_parallel(sorted(Path(td).glob("*.pcap")), sorted(big.glob("*.pcap")), cpus, marg["ndpi_pps"])
               if cpus > 1 else None)
    tot = sum(r["packets"] for r in rows.values())

    def wmean(key):
        vals = [(r[key], r["packets"]) for r in rows.values() if r.get(key)]
        n = sum(w for _v, w in vals)
        return sum(v * w for v, w in vals) / n if n else None

    mean = {k: wmean(k) for k in ("ndpi_pps", "kernel_ns", "kernel_pps", "replay_pps", "python_pps")}
    return {"captures": rows, "packets": tot, "mean": mean,
            "ratio_vs_ndpi": ratio(mean["replay_pps"] or 0, mean["ndpi_pps"] or 0),
            "python_ratio_vs_ndpi": ratio(mean["python_pps"] or 0, mean["ndpi_pps"] or 0),
            "marginal": marg, "parallel": par, "start": start}


def format_table(res: dict) -> str:
    lines = [f"{'capture':40} {'packets':>7} {'nDPI pps':>10} {'sg kernel ns':>12} {'sg kernel pps':>13} "
             f"{'sg replay pps':>13} {'py loop pps':>11}"]

    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    mean = ("(packet-weighted mean)", {**res["mean"], "packets": res["packets"]})
    for name, r in [*res["captures"].items(), mean]:
        lines.append(f"{name[:40]:40} {r['packets']:7} {f(r['ndpi_pps'], '10.0f')} {f(r['kernel_ns'], '12.0f')} "
                     f"{f(r['kernel_pps'], '13.0f')} {f(r['replay_pps'], '13.0f')} {f(r.get('python_pps'), '11.0f')}")
    m, st = res["marginal"], res["start"]
    lines += [f"replay / nDPI (packet-weighted pps): {f(res['ratio_vs_ndpi'], '.2f')}x "
              f"(the per-packet Python loop: {f(res['python_ratio_vs_ndpi'], '.3f')}x)",
              f"marginal pps between {m['packets'][0]} and {m['packets'][1]} packets of generated traffic: "
              f"replay {f(m['replay_pps'], '.0f')}, nDPI {f(m['ndpi_pps'], '.0f')}, "
              f"replay / nDPI {f(m['ratio'], '.2f')}x",
              f"test runs per packet in the larger set: {f(m['runs_per_packet'], '.3f')} (batches of up to "
              f"{wire.BATCH_MAX} packets, cut after each packet whose records may have the slow path write)",
              f"ceiling of the same C loop driving a program that does nothing (the larger set): batched "
              f"{f(m['ceiling_pps'], '.0f')} pps, {f(m['ceiling_ratio'], '.2f')}x nDPI's marginal rate; one test run "
              f"per packet {f(m['single_ceiling_pps'], '.0f')} pps, {f(m['single_ceiling_ratio'], '.2f')}x",
              *_parallel_lines(res.get("parallel"), f),
              f"replay build ready in {st['compiled']:.2f} s compiled, {st['cached']:.2f} s from its cached image"
              f"{'' if st['cached_from_cache'] else ' (NOT from the cache)'}"]
    return "\n".join(lines)


def _parallel_lines(par: dict | None, f) -> list[str]:
    if not par:
        return ["parallel replay: not measured (one CPU)"]
    j = par["jobs"]
    return [f"marginal pps of `skyguard replay --jobs {j}` (workers loaded): {f(par['replay_pps'], '.0f')}; "
            f"nDPI in one process (it reads a pcap in one thread) {f(par['ndpi_pps'], '.0f')}, replay / nDPI "
            f"{f(par['ratio'], '.2f')}x; nDPI {j} processes at a time {f(par['ndpi_lanes_pps'], '.0f')}, replay / "
            f"nDPI {f(par['lanes_ratio'], '.2f')}x"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captures", default=str(CAPTURES))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = measure(Path(args.captures))
    print(json.dumps(res) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
