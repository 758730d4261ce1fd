"""`skyguard replay --jobs N` (offline/parallel.py): captures spread over worker processes give what one process gives,
a pool loads each worker's program once for replay after replay, a worker that cannot load its program fails the
pool at once with that error, and the workers' packets move the caller's one progress bar."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from skyguard.lab import gen
from skyguard.offline import parallel, replay
from skyguard.offline.pcap import read_packets, write_pcap
from skyguard.policy import load_policy
from tests.bpf.test_replay_fast import kern, outcome, two_cpus  # noqa: F401 - the module's fixtures
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def captures3(tmp_path_factory):
    d = tmp_path_factory.mktemp("par")
    gen.generate(91, d, kinds=["modern-sbc", "legacy-e2o", "dns-pstn"], calls=3)
    # smallest first: the pool starts the largest first and still merges in the order given
    paths = sorted(glob.glob(str(d / "*.pcap")), key=os.path.getsize)
    assert len({os.path.getsize(p) for p in paths}) == 3
    return paths


def test_pool_replays_set_after_set_with_programs_loaded_once(kern, captures3, tmp_path, monkeypatch):  # noqa: F811
    from skyguard.kernel import loader

    loads = tmp_path / "loads"
    real = loader.Kernel

    def counted(*a, **k):  # inherited by the forked workers: each appends a line per program it loads
        with open(loads, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(*a, **k)

    monkeypatch.setattr(loader, "Kernel", counted)
    pol = load_policy(ROOT / "policies" / "block-pc-to-phone.toml")
    seq = outcome(replay.replay(captures3, pol, kernel=kern, engine="c"))
    assert seq["decisions"] and any(f["class"] == "skype-out" for f in seq["json"]["flows"])
    with parallel.ReplayPool(2) as pool:
        pids = list(pool.pids)
        assert len(pids) == 2 and os.getpid() not in pids
        first = outcome(pool.replay(captures3, pol, engine="c"))
        again = outcome(pool.replay(list(reversed(captures3)), pol, engine="c"))
    assert first == seq
    assert again["json"]["captures"] == [os.path.basename(p) for p in reversed(captures3)]
    assert again["json"]["flows"] == seq["json"]["flows"]  # rows are sorted by capture name: the same rows
    assert sorted(loads.read_text().split()) == sorted(str(p) for p in pids)  # once per worker, not per replay


def _refuse_kernel(monkeypatch) -> None:
    """Every program load fails as it does without root (the forked workers inherit the patch)."""
    from skyguard.kernel import loader

    def refused(*a, **k):
        raise PermissionError(1, "Operation not permitted (test)")

    monkeypatch.setattr(loader, "Kernel", refused)


def test_a_worker_that_cannot_load_fails_the_pool_with_its_own_error(bpf_ok, monkeypatch):
    _refuse_kernel(monkeypatch)
    monkeypatch.setattr(parallel, "READY_TIMEOUT_S", 60)  # a hang would fail, not wait ten minutes
    with pytest.raises(PermissionError, match="test"), parallel.ReplayPool(2):
        pass


def test_cli_error_of_a_worker_that_cannot_load(bpf_ok, captures3, monkeypatch, capsys, two_cpus):  # noqa: F811
    _refuse_kernel(monkeypatch)
    assert replay.main([*captures3, "--jobs", "2"]) == 1
    assert "replay needs root" in capsys.readouterr().err


def test_broken_capture_reported_as_in_one_process(kern, captures3, tmp_path, two_cpus):  # noqa: F811
    frames = [(p.ts_ns, p.frame) for p in read_packets(captures3[0])]
    cut = tmp_path / "cut.pcap"
    write_pcap(cut, frames)
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - 7])  # the last record's data runs past the file's end
    paths = [str(cut), *captures3[1:]]
    seq = outcome(replay.replay(paths, kernel=kern, engine="c"))
    par = outcome(replay.replay(paths, engine="c", jobs=2))
    assert par == seq
    err = seq["captures"][0][3]
    assert err and err.startswith(f"{cut}: at byte ") and "truncated" in err


def test_workers_move_one_progress_bar(bpf_ok, captures3, capsys):
    total = replay.count_all(captures3)
    with parallel.ReplayPool(2) as pool:
        for _ in range(2):  # the second replay's count starts again from 0
            res = pool.replay(captures3, engine="c", progress=True)
            assert sum(c.packets for c in res.captures) == total > 2000
            err = capsys.readouterr().err
            assert err.endswith(f"{total}/{total} 100%\n")  # every worker's packets counted into the parent's bar
            assert err.count("\n") == 1  # one bar, not one per worker


def _patch_worker_replay(monkeypatch, tmp_path, action):
    """The workers' replay of one capture, wrapped (the workers are forked after this, so they run the wrapper):
    every capture started is logged, and `action(path)` runs first."""
    log = tmp_path / "started"
    real = parallel.replay

    def wrapped(paths, *a, **k):
        with open(log, "a") as f:
            f.write(f"{paths[0]}\n")
        action(paths[0])
        return real(paths, *a, **k)

    monkeypatch.setattr(parallel, "replay", wrapped)
    return log


def test_captures_start_largest_first(bpf_ok, captures3, tmp_path, monkeypatch):
    log = _patch_worker_replay(monkeypatch, tmp_path, lambda p: None)
    with parallel.ReplayPool(1) as pool:  # one worker: it takes the captures in the order they were handed out
        pool.replay(captures3, engine="c")
    assert log.read_text().split() == sorted(captures3, key=os.path.getsize, reverse=True)


def test_a_failed_replay_leaves_nothing_running_into_the_next(bpf_ok, captures3, tmp_path, monkeypatch, capsys):
    import time

    def action(path):
        if "boom" in path:
            raise RuntimeError("a bug in one capture's replay")
        time.sleep(30)  # the other worker is in the middle of a capture when the failure comes

    boom = tmp_path / "boom.pcap"
    boom.write_bytes(Path(captures3[-1]).read_bytes())  # as large as the largest, and given first: it starts first
    _patch_worker_replay(monkeypatch, tmp_path, action)
    total = replay.count_all(captures3)
    pool = parallel.ReplayPool(2)
    with pool:
        first = list(pool.pids)
        t = time.monotonic()
        with pytest.raises(RuntimeError, match="a bug"):
            pool.replay([str(boom), *captures3], engine="c")
        assert time.monotonic() - t < 15  # the worker still sleeping was ended, not waited for
        for pid in first:  # the failed replay's workers are gone, not finishing its captures
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        monkeypatch.setattr(parallel, "replay", replay.replay)  # nothing sleeps in the workers started next
        capsys.readouterr()
        res = pool.replay(captures3, engine="c", progress=True)  # new workers, the count of this replay alone
        assert set(pool.pids).isdisjoint(first)
        assert sum(c.packets for c in res.captures) == total
        assert capsys.readouterr().err.endswith(f"{total}/{total} 100%\n")


def test_workers_end_with_a_killed_parent(bpf_ok, captures3, tmp_path):
    """SIGKILL (or `timeout`'s SIGTERM) reaches the replay alone, not its workers: they must not go on replaying,
    their programs loaded and the parent's stderr held open."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "run.py"
    pids = tmp_path / "pids"
    script.write_text(
        "import sys, time\n"
        "from skyguard.offline import parallel\n"
        "pool = parallel.ReplayPool(2)\n"
        "pool.start()\n"
        f"open({str(pids)!r}, 'w').write(' '.join(map(str, pool.pids)))\n"
        "time.sleep(120)\n")
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(parallel.__file__).parents[2]),
                                                       os.environ.get("PYTHONPATH")]))}
    err = tmp_path / "stderr"
    with open(err, "wb") as ferr:
        proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL, stderr=ferr)
    try:
        deadline = time.monotonic() + 120
        while not (pids.exists() and pids.read_text()) and time.monotonic() < deadline:
            assert proc.poll() is None, f"the pool did not start: {err.read_text()[-2000:]}"
            time.sleep(0.1)
        workers = [int(p) for p in pids.read_text().split()]
        assert len(workers) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in workers if _alive(p)]
    for p in alive:  # not left behind with their programs loaded, even when the test fails
        os.kill(p, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their parent"


def _alive(pid: int) -> bool:
    """Running (a zombie that init has not reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_worker_that_died_while_idle_is_replaced(bpf_ok, captures3):
    import signal
    import time

    with parallel.ReplayPool(2) as pool:
        first = pool.replay(captures3, engine="c")
        dead = pool.pids[0]
        os.kill(dead, signal.SIGKILL)  # killed between replays (the OOM killer, an operator)
        deadline = time.monotonic() + 30
        while not getattr(pool._ex, "_broken", False) and time.monotonic() < deadline:
            time.sleep(0.05)  # until the executor has noticed the death (its own thread, soon after)
        again = pool.replay(captures3, engine="c")  # new workers, not a broken pool
        assert dead not in pool.pids
    assert outcome(again) == outcome(first)


def test_a_worker_that_dies_is_one_line_of_error(bpf_ok, captures3, tmp_path, monkeypatch, capsys,
                                                 two_cpus):  # noqa: F811
    def action(path):
        if path == captures3[1]:
            os._exit(3)

    _patch_worker_replay(monkeypatch, tmp_path, action)
    assert replay.main([*captures3, "--jobs", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("skyguard: a replay worker failed") and "Traceback" not in err


def test_a_worker_that_hangs_loading_times_out(bpf_ok, monkeypatch):
    import multiprocessing as mp
    import time

    from skyguard.kernel import loader

    def hang(*a, **k):
        time.sleep(600)

    monkeypatch.setattr(loader, "Kernel", hang)
    monkeypatch.setattr(parallel, "READY_TIMEOUT_S", 1)
    t = time.monotonic()
    with pytest.raises(parallel.WorkersNotReady, match="not ready"), parallel.ReplayPool(1):
        pass
    assert time.monotonic() - t < 60
    assert not mp.active_children()  # the hung worker was ended, not left behind


def test_jobs_argument():
    from skyguard.cli.args import replay_parser

    assert replay_parser().parse_args(["x.pcap", "-j", "0"]).jobs == len(os.sched_getaffinity(0))
    assert replay_parser().parse_args(["x.pcap", "--jobs", "3"]).jobs == 3
    with pytest.raises(SystemExit):
        replay_parser().parse_args(["x.pcap", "-j", "-1"])
