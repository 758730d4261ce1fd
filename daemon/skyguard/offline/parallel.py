"""Captures replayed in worker processes, each with its own program and maps (`skyguard replay --jobs N`).

A capture starts from fresh state in any replay (offline/replay.py, _fresh_state), so replaying captures in separate
processes and merging the results in the order given equals replaying them one after the other in one process; the
tests hold the two to each other.

A ReplayPool loads its workers' programs once: as a context manager it can replay set after set with the programs
already loaded, as a sequential replay with a caller's `kernel` does (bench/peer.py measures both that way). Captures
go to the workers largest first, so that one large capture does not start last and run alone at the end.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait

from skyguard.offline.replay import Progress, ReplayResult, count_all, replay, row_order

READY_TIMEOUT_S = 600  # a worker's program is compiled on a cold image cache: tens of seconds, more on a slow machine
PROGRESS_S = 0.2

# the worker's own state, set by _init and _ready in each worker process
_kernel = None
_init_error: BaseException | None = None
_slots = None  # RawArray: per worker, the packets it ran in the current replay (for the parent's one bar)
_slot = -1  # this worker's own slot in it: the only writer of that slot, so no lock (which a killed worker could
# leave taken, hanging the parent's next read)
_barrier = None  # mp.Barrier: the pool's start waits for every worker's program

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class WorkersNotReady(TimeoutError):
    """The workers did not all load their programs within READY_TIMEOUT_S (one hangs); they were ended."""


def _die_with(parent: int) -> None:
    """A worker ends with the process that started it: a parent killed by a signal that its workers do not get
    (SIGTERM from `timeout`, SIGKILL) would leave them replaying, their programs loaded and its stderr held open.
    The kernel sends the signal when the parent's thread that forked the worker ends (prctl(2)): a pool belongs to
    the thread that starts it, as `replay()` and the bench use it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_PDEATHSIG): {os.strerror(e)}")
    if os.getppid() != parent:  # it died before the prctl took effect
        os._exit(1)


def _init(slots, barrier, parent: int) -> None:
    """A worker loads its replay build once, for every capture it will replay. An error is kept and raised by the
    first task (with its own type: the CLI tells a missing privilege from the rest), not lost in a broken pool.
    The count and the barrier come in here, at the fork: multiprocessing's shared objects cannot go with a task."""
    global _kernel, _init_error, _slots, _barrier
    _slots, _barrier = slots, barrier
    try:
        _die_with(parent)
        from skyguard.kernel.loader import Kernel

        _kernel = Kernel(replay=True)
    except BaseException as e:  # noqa: BLE001 - handed to the parent by _ready or _one
        _init_error = e


def _ready() -> int:
    """Held until every worker has loaded its program: each of the pool's first tasks runs in a worker of its own,
    and the barrier gives each a slot of its own (its wait returns a different index in every worker)."""
    global _slot
    assert _barrier is not None
    if _init_error is not None:
        _barrier.abort()  # the others stop waiting: the pool cannot start
        raise _init_error
    _slot = _barrier.wait(READY_TIMEOUT_S)
    return os.getpid()


class _SharedBar(Progress):
    """A worker's progress, added into its slot of the parent's count instead of drawn (two workers cannot share a
    line)."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        super().__init__(total, label, False)
        self._seen = 0

    def update(self, n: int, force: bool = False) -> None:
        # the Python loop updates after every packet: the shared page is written every few thousand
        if _slots is not None and _slot >= 0 and (n - self._seen >= 4096 or (force and n > self._seen)):
            _slots[_slot] += n - self._seen
            self._seen = n


def _one(path: str, policy, engine: str, log_all: bool) -> ReplayResult:
    if _init_error is not None:
        raise _init_error
    return replay([path], policy, kernel=_kernel, engine=engine, log_all=log_all, bar_type=_SharedBar)


class ReplayPool:
    """`jobs` worker processes, started (each program loaded) when the pool is entered and kept until it is left.
    A replay that fails (a worker's error, a worker that died, an interrupt) ends the workers, so that none of its
    captures runs on into the next replay; the next replay starts new ones. The workers end with the thread that
    started them (_die_with): start the pool from the thread that keeps it."""

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.jobs = jobs
        self._ex: ProcessPoolExecutor | None = None
        self._lock = threading.RLock()  # one start, replay or close at a time (replay starts the pool itself)
        # fork: the workers inherit the loaded modules (and bcc) instead of importing them again
        self._ctx = mp.get_context("fork")
        self._slots = None  # the workers' packet counts, one slot each: made anew with every start
        self.pids: list[int] = []  # the workers, once started

    def __enter__(self) -> ReplayPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers and wait until every one has loaded its program; a worker's error is raised, and a load
        that takes longer than READY_TIMEOUT_S (a hung worker) raises WorkersNotReady. Either way no worker is left."""
        with self._lock:
            if self._ex is not None and getattr(self._ex, "_broken", False):
                self._abort()  # a worker died while the pool was idle (killed, OOM): start new ones
            if self._ex is not None:
                return
            barrier = self._ctx.Barrier(self.jobs)
            self._slots = self._ctx.RawArray("Q", self.jobs)
            self._ex = ProcessPoolExecutor(max_workers=self.jobs, mp_context=self._ctx, initializer=_init,
                                           initargs=(self._slots, barrier, os.getpid()))
            futs = [self._ex.submit(_ready) for _ in range(self.jobs)]
            try:
                _first_error(futs, READY_TIMEOUT_S + 5)  # the barrier's own timeout first, when a worker does run
            except BaseException:
                self._abort()
                raise
            self.pids = sorted(f.result() for f in futs)

    def close(self) -> None:
        with self._lock:
            if self._ex is not None:
                self._ex.shutdown(wait=True, cancel_futures=True)
                self._ex = None
                self.pids = []
                self._slots = None

    def _abort(self) -> None:
        """End the workers now: what they run is of a replay that failed, or they hang."""
        ex, self._ex, self.pids, self._slots = self._ex, None, [], None
        if ex is None:
            return
        # ProcessPoolExecutor has no public way to stop a running task (3.14 adds terminate_workers): its processes
        # are killed, after which its shutdown returns at once (the pool is broken)
        for proc in list(getattr(ex, "_processes", {}).values()):
            proc.kill()
        ex.shutdown(wait=True, cancel_futures=True)

    def replay(self, paths: Sequence[str | os.PathLike], policy=None, *, log_all: bool = False,
               engine: str = "auto", progress: bool = False) -> ReplayResult:
        """replay(paths, policy) with the captures spread over the workers; the result is merged in the order given.
        `progress`: one bar on the terminal for all the captures' packets."""
        from skyguard.policy import default_policy

        policy = policy or default_policy()
        paths = [str(p) for p in paths]
        with self._lock:  # one replay at a time: the shared packet count is the current replay's
            self.start()
            assert self._ex is not None and self._slots is not None
            slots = self._slots
            slots[:] = [0] * self.jobs  # the workers are idle between replays
            order = sorted(range(len(paths)), key=lambda i: -_size(paths[i]))  # largest first
            futs: dict[int, Future] = {}
            bar = Progress(0, "", False)
            try:
                for i in order:
                    futs[i] = self._ex.submit(_one, paths[i], policy, engine, log_all)
                total = count_all(paths) if progress else 0  # while the workers already run
                bar = Progress(total, f"{len(paths)} captures, {self.jobs} jobs", progress and total > 2000)
                pending = set(futs.values())
                while pending:
                    done, pending = wait(pending, timeout=PROGRESS_S, return_when=FIRST_EXCEPTION)
                    bar.update(sum(slots))
                    for f in done:
                        f.result()  # a worker's exception (not a capture error: those are in the result) ends it
            except BaseException:
                self._abort()
                raise
            finally:
                bar.update(sum(slots), force=True)
                bar.done()
        return merge([futs[i].result() for i in range(len(paths))], policy.name)


def merge(parts: list[ReplayResult], policy_name: str) -> ReplayResult:
    """Results of single captures, in the order of their captures, as one replay of all of them would give."""
    totals: Counter = Counter()
    for r in parts:
        totals.update(r.stats)
    rows = [row for r in parts for row in r.flows]
    rows.sort(key=row_order)
    return ReplayResult([c for r in parts for c in r.captures], policy_name, rows, dict(totals),
                        [n for r in parts for n in r.noted])


def _first_error(futs: list[Future], timeout_s: float) -> None:
    """Wait for `futs`; raise the first real error (a worker's own, not the barrier that its failure broke), or
    TimeoutError when they have not all ended within `timeout_s`."""
    from threading import BrokenBarrierError

    _done, late = wait(futs, timeout=timeout_s)
    if late:
        raise WorkersNotReady(f"replay workers not ready after {timeout_s:.0f} s (a worker hangs loading its program)")
    errors = [e for e in (f.exception() for f in futs) if e is not None]
    real = [e for e in errors if not isinstance(e, BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
