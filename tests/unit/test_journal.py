"""Log lines on journald's stdout stream carry their syslog priority as a `<N>` prefix (systemd.exec(5),
SyslogLevelPrefix=), so `journalctl -p warning` finds warnings and errors: the exact bytes, when the prefix is added
(only on the journal stream named by $JOURNAL_STREAM), and a real systemd-journald started by the test."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from skyguard import logs
from skyguard.journal import PRIORITY, PriorityPrefixed, stream_is_journal
from tests.conftest import ROOT, skip_or_fail


def _journal_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A file stream that $JOURNAL_STREAM names, as systemd names the journal socket it hands a service."""
    f = open(tmp_path / "stdout", "w+")  # noqa: SIM115 - closed by the caller
    st = os.fstat(f.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    return f


def test_json_lines_on_the_journal_stream_get_the_priority_prefix(tmp_path, monkeypatch):
    f = _journal_file(tmp_path, monkeypatch)
    try:
        assert logs.configure("json", "debug", stream=f) == "json"
        log = logs.get_logger("t")
        log.debug("d")
        log.info("i", n=1)
        log.warning("w")
        log.error("e")
        import logging

        logging.getLogger("stdlib").warning("from the stdlib")
        f.flush()
        lines = (tmp_path / "stdout").read_bytes().split(b"\n")
    finally:
        f.close()
        logs.configure("json", stream=io.StringIO())
    assert lines[-1] == b""
    got = [(ln[:3], json.loads(ln[3:])) for ln in lines[:-1]]
    assert [p for p, _ in got] == [b"<7>", b"<6>", b"<4>", b"<3>", b"<4>"]
    assert [d["event"] for _p, d in got] == ["d", "i", "w", "e", "from the stdlib"]
    assert got[1][1]["n"] == 1 and got[2][1]["level"] == "warning"  # the JSON after the prefix is unchanged


def test_no_prefix_off_the_journal(tmp_path, monkeypatch):
    buf = io.StringIO()
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    logs.configure("json", stream=buf)
    logs.get_logger("t").warning("w")
    assert buf.getvalue().startswith("{") and json.loads(buf.getvalue())["event"] == "w"
    f = open(tmp_path / "other", "w")  # a real file, but not the one $JOURNAL_STREAM names  # noqa: SIM115
    try:
        assert not stream_is_journal(f)
        st = os.fstat(f.fileno())
        assert stream_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stream_is_journal(f, {})
        assert not stream_is_journal(f, {"JOURNAL_STREAM": "junk"})
    finally:
        f.close()
        logs.configure("json", stream=io.StringIO())


def test_every_line_of_a_multiline_rendering_is_prefixed():
    r = PriorityPrefixed(lambda _l, _m, ed: "first\n  Traceback line")
    assert r(None, "error", {"level": "error"}) == "<3>first\n<3>  Traceback line"
    assert r(None, "exception", {}) == "<3>first\n<3>  Traceback line"
    assert PRIORITY["critical"] == 2 and PRIORITY["info"] == 6


JOURNALD_SCRIPT = textwrap.dedent("""
    set -eu
    # a private journald: tmpfs over its socket and storage directories in this mount namespace only
    # (/run/log: journald writes there until a flush PID 1 never asks for)
    mkdir -p /run/systemd /run/log /var/log/journal
    mount -t tmpfs tmpfs /run/systemd
    mount -t tmpfs tmpfs /run/log
    mount -t tmpfs tmpfs /var/log/journal
    mkdir -p /run/systemd/journal
    /lib/systemd/systemd-journald & jd=$!
    trap 'kill $jd 2>/dev/null; wait $jd 2>/dev/null || true' EXIT
    for i in $(seq 100); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.05; done
    # systemd-cat connects the program's stdout to journald's stdout stream with level prefixes on, as systemd does
    # for a unit with StandardOutput=journal and the default SyslogLevelPrefix=yes
    systemd-cat -t sg-journal-test --level-prefix=true "$PY" -c "$PROG"
    journalctl --sync 2>/dev/null || kill -USR1 $jd
    for i in $(seq 100); do
        n=$(journalctl --no-pager -t sg-journal-test -o json | wc -l)
        [ "$n" -ge 3 ] && break; sleep 0.05
    done
    echo '--- warning'; journalctl --no-pager -t sg-journal-test -p warning -o json
    echo '--- all'; journalctl --no-pager -t sg-journal-test -o json
""")

PROG = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, %r)
    # systemd sets JOURNAL_STREAM to the stdout socket's device:inode for a unit; systemd-cat (252) does not, so it is
    # set here the same way: the daemon's own check then compares it with its stdout, as under systemd
    st = os.fstat(1)
    os.environ["JOURNAL_STREAM"] = "%%d:%%d" %% (st.st_dev, st.st_ino)
    from skyguard import logs
    logs.configure("auto", "info")
    log = logs.get_logger("skyguardd")
    log.info("an info line", n=1)
    log.warning("a warning line")
    log.error("an error line", error="x")
""")


def test_real_journald_files_each_line_under_its_priority():
    if os.geteuid() != 0:
        skip_or_fail("needs root (a private mount namespace for a test journald)")
    for tool in ("/lib/systemd/systemd-journald", "systemd-cat", "journalctl", "unshare"):
        if not shutil.which(tool):
            skip_or_fail(f"{tool} is missing (Debian package systemd)")
    env = dict(os.environ, PY=sys.executable, PROG=PROG % str(ROOT / "daemon"))
    env.pop("JOURNAL_STREAM", None)
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", JOURNALD_SCRIPT],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    warn_part, all_part = r.stdout.split("--- all")
    warn = [json.loads(ln) for ln in warn_part.splitlines()[1:] if ln.startswith("{")]
    every = [json.loads(ln) for ln in all_part.splitlines() if ln.startswith("{")]
    by_event = {json.loads(e["MESSAGE"])["event"]: e for e in every}
    assert {k: by_event[k]["PRIORITY"] for k in by_event} == {"an info line": "6", "a warning line": "4",
                                                              "an error line": "3"}
    assert sorted(json.loads(e["MESSAGE"])["event"] for e in warn) == ["a warning line", "an error line"]
    assert all(not e["MESSAGE"].startswith("<") for e in every)  # journald stripped the prefix
