"""`skyguard replay --jobs N` (offline/parallel.py): captures spread over worker processes give what one process gives,
a pool loads each worker's program once for replay after replay, a worker that cannot load its program fails the
pool at once with that error, and the workers' packets move the caller's one progress bar."""

from __future__ import annotations

import glob
import os

import pytest

from skyguard.lab import gen
from skyguard.offline import parallel, replay
from skyguard.offline.pcap import read_packets, write_pcap
from skyguard.policy import load_policy
from tests.bpf.test_replay_fast import kern, outcome  # noqa: F401 - the module's fixture
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
        assert len(pool.pids) == 2 and os.getpid() not in pool.pids
        first = outcome(pool.replay(captures3, pol, engine="c"))
        again = outcome(pool.replay(list(reversed(captures3)), pol, engine="c"))
    assert first == seq
    assert again["json"]["captures"] == [os.path.basename(p) for p in reversed(captures3)]
    assert again["json"]["flows"] == seq["json"]["flows"]  # rows are sorted by capture name: the same rows
    assert sorted(loads.read_text().split()) == sorted(str(p) for p in pool.pids)  # once per worker, not per replay


def test_a_worker_that_cannot_load_fails_the_pool_with_its_own_error(bpf_ok, monkeypatch):
    from skyguard.kernel import loader

    def refused(*a, **k):
        raise PermissionError(1, "Operation not permitted (test)")

    monkeypatch.setattr(loader, "Kernel", refused)
    monkeypatch.setattr(parallel, "READY_TIMEOUT_S", 60)  # a hang would fail, not wait ten minutes
    with pytest.raises(PermissionError, match="test"), parallel.ReplayPool(2):
        pass


def test_cli_error_of_a_worker_that_cannot_load(bpf_ok, captures3, monkeypatch, capsys):
    from skyguard.kernel import loader

    def refused(*a, **k):
        raise PermissionError(1, "Operation not permitted (test)")

    monkeypatch.setattr(loader, "Kernel", refused)
    assert replay.main([*captures3, "--jobs", "2"]) == 1
    assert "replay needs root" in capsys.readouterr().err


def test_broken_capture_reported_as_in_one_process(kern, captures3, tmp_path):  # noqa: F811
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
        res = pool.replay(captures3, engine="c", progress=True)
    assert sum(c.packets for c in res.captures) == total > 2000
    err = capsys.readouterr().err
    assert f"{total}/{total} 100%" in err  # every worker's packets counted into the parent's bar
    assert err.count("\n") == 1  # one bar, not one per worker


def test_jobs_argument():
    from skyguard.cli.args import replay_parser

    assert replay_parser().parse_args(["x.pcap", "-j", "0"]).jobs == len(os.sched_getaffinity(0))
    assert replay_parser().parse_args(["x.pcap", "--jobs", "3"]).jobs == 3
    with pytest.raises(SystemExit):
        replay_parser().parse_args(["x.pcap", "-j", "-1"])
