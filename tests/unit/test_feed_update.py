"""`skyguard feed update` against a local HTTP server on 127.0.0.1 (http.server in the test) and a fake daemon on a
real control socket: a good download is checked, renamed into place and reloaded; a bad download (broken JSON, an
empty set, an HTTP error, a cut connection, an oversized body) leaves the old file byte for byte, no temporary file,
and no reload."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skyguard import proto
from skyguard.cli import feedupdate
from skyguard.feed import MAX_FEED_BYTES, load_feed
from skyguard.proto import ControlError
from tests import feedfiles as ff
from tests.conftest import ROOT
from tests.feedfiles import Feeds
from tests.unit.test_cli import FakeDaemon, run


@pytest.fixture
def feeds() -> Iterator[Feeds]:
    with ff.serve() as srv:
        yield srv


class ReloadDaemon(FakeDaemon):
    """policy.reload reads the feed file as the daemon's policy load would; `refuse` makes it a bad-policy."""

    feed_path: Path
    refuse: str | None = None
    loaded: list[tuple[str, ...]]

    def handle(self, cmd: str, args: dict) -> Any:
        if cmd != "policy.reload":
            return super().handle(cmd, args)
        self.calls.append((cmd, args))
        if self.refuse:
            raise ControlError(proto.BAD_POLICY, self.refuse)
        self.loaded.append(tuple(str(p) for p in load_feed(self.feed_path).prefixes))
        return proto.example("policy.reload", name="with-feed")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[ReloadDaemon]:
    d = ReloadDaemon(tmp_path / "sg.sock")
    d.feed_path = tmp_path / "state" / "ms-endpoints.json"
    d.loaded = []
    yield d
    d.close()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The state directory with the feed already installed (the old file a bad download must leave)."""
    d = tmp_path / "state"
    d.mkdir()
    ff.write_feed(d / "ms-endpoints.json", ["52.112.0.0/14", "13.107.64.0/18", "2603:1063::/38"])
    return d


def update(feeds: Feeds, daemon: ReloadDaemon, path: str, *extra: str) -> tuple[int, str, str]:
    return run("feed", "update", "--url", feeds.url(path), "--output", str(daemon.feed_path),
               "--socket", str(daemon.path), "--timeout", "10", *extra)


def reloads(daemon: ReloadDaemon) -> int:
    return sum(1 for c, _a in daemon.calls if c == "policy.reload")


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name != "ms-endpoints.json")


def test_good_download_is_installed_and_reloaded(feeds: Feeds, daemon: ReloadDaemon, state: Path) -> None:
    new = ff.feed_text(["52.112.0.0/14", "52.122.0.0/15", "2603:1063::/38"]).encode()
    feeds.routes["/endpoints/worldwide"] = (200, new, {"Content-Type": "application/json"})
    ino = (state / "ms-endpoints.json").stat().st_ino
    rc, out, err = update(feeds, daemon, "/endpoints/worldwide")
    assert (rc, err) == (0, ""), err
    assert (state / "ms-endpoints.json").read_bytes() == new
    st = (state / "ms-endpoints.json").stat()
    assert st.st_ino != ino, "not replaced by a rename"
    assert stat.S_IMODE(st.st_mode) == 0o644  # readable by the daemon, which has no CAP_DAC_OVERRIDE
    assert leftovers(state) == []
    assert daemon.loaded == [("52.112.0.0/14", "52.122.0.0/15", "2603:1063::/38")]  # the reload saw the new file
    assert out.splitlines() == [
        f"{state / 'ms-endpoints.json'}: 3 Skype Optimize ranges (2 IPv4, 1 IPv6) from endpoint set 11 of 3",
        "installed (replaced the previous file atomically)",
        "policy reloaded: with-feed",
    ]
    path, headers = feeds.requests[-1]
    assert headers["User-Agent"].startswith("skyguard/")

    # the same bytes again: nothing to rename, nothing to reload
    rc, out, _ = update(feeds, daemon, "/endpoints/worldwide", "--json")
    d = json.loads(out)
    assert rc == 0 and d["changed"] is False and d["reloaded"] is False
    assert reloads(daemon) == 1 and (state / "ms-endpoints.json").stat().st_ino == st.st_ino


@pytest.mark.parametrize(
    ("status", "body", "headers", "message"),
    [
        (200, ff.broken_feed_text()[0].encode(), {},
         "downloaded feed refused, {out} kept: {url}:{line}:{col}: not valid JSON: Expecting property name "
         "enclosed in double quotes"),
        (200, ff.feed_text([]).encode(), {},
         "downloaded feed refused, {out} kept: {url}: no IP ranges in the Skype service area's Optimize sets "
         "(3 endpoint sets read): refusing to empty the media ranges"),
        (200, b"<html>captive portal</html>", {},
         "downloaded feed refused, {out} kept: {url}:1:1: not valid JSON: Expecting value"),
        (200, b"", {}, "downloaded feed refused, {out} kept: {url}: empty file (an interrupted download?)"),
        (429, b'{"error": "too many requests"}', {}, "download failed: {url}: HTTP 429 Too Many Requests"),
        (500, b"oops", {}, "download failed: {url}: HTTP 500 Internal Server Error"),
        # the server promises more than it sends, then closes: a cut connection, never a short file installed
        (200, ff.feed_text().encode()[:100], {"Content-Length": "5000", "Connection": "close"},
         "download failed: {url}: connection cut after 100 of 5000 bytes"),
    ],
    ids=["broken-json", "no-ranges", "html", "empty", "http-429", "http-500", "cut"],
)
def test_bad_download_leaves_the_old_file(feeds: Feeds, daemon: ReloadDaemon, state: Path, status: int, body: bytes,
                                          headers: dict[str, str], message: str) -> None:
    old = (state / "ms-endpoints.json").read_bytes()
    feeds.routes["/feed"] = (status, body, dict(headers))
    rc, out, err = update(feeds, daemon, "/feed")
    _text, line, col = ff.broken_feed_text()
    want = message.format(out=state / "ms-endpoints.json", url=feeds.url("/feed"), line=line, col=col)
    assert (rc, out) == (1, "")
    assert err.startswith(f"skyguard: {want}"), err
    assert (state / "ms-endpoints.json").read_bytes() == old
    assert leftovers(state) == [], "a temporary file was left behind"
    assert reloads(daemon) == 0


def test_oversized_body_is_cut_off(feeds: Feeds, daemon: ReloadDaemon, state: Path) -> None:
    old = (state / "ms-endpoints.json").read_bytes()
    feeds.routes["/big"] = (200, b" " * (MAX_FEED_BYTES + 10), {})
    rc, _out, err = update(feeds, daemon, "/big")
    assert rc == 1 and "more than 16777216 bytes, not the feed" in err
    assert (state / "ms-endpoints.json").read_bytes() == old and leftovers(state) == []


def test_refused_reload_keeps_the_running_policy_and_fails(feeds: Feeds, daemon: ReloadDaemon, state: Path) -> None:
    feeds.routes["/feed"] = (200, ff.feed_text().encode(), {})
    daemon.refuse = "/etc/skyguard/policy.toml:3: class.skype-out: unknown action 'dorp'"
    rc, _out, err = update(feeds, daemon, "/feed")
    assert rc == 1
    assert err == ("skyguard: feed installed, but the daemon refused the reload and kept its running policy: "
                   "bad-policy: /etc/skyguard/policy.toml:3: class.skype-out: unknown action 'dorp'\n")
    assert (state / "ms-endpoints.json").read_text() == ff.feed_text()  # the feed itself was good


def test_no_daemon_running_installs_and_says_so(feeds: Feeds, state: Path, tmp_path: Path) -> None:
    feeds.routes["/feed"] = (200, ff.feed_text().encode(), {})
    rc, out, err = run("feed", "update", "--url", feeds.url("/feed"), "--output", str(state / "ms-endpoints.json"),
                       "--socket", str(tmp_path / "nobody.sock"))
    assert rc == 0, err
    assert "skyguardd is not running" in out and "it reads the new feed when it starts" in out
    assert (state / "ms-endpoints.json").read_text() == ff.feed_text()


def test_no_reload_and_missing_directory(feeds: Feeds, daemon: ReloadDaemon, state: Path, tmp_path: Path) -> None:
    feeds.routes["/feed"] = (200, ff.feed_text().encode(), {})
    rc, _out, err = update(feeds, daemon, "/feed", "--no-reload")
    assert rc == 0 and reloads(daemon) == 0
    rc, _out, err = run("feed", "update", "--url", feeds.url("/feed"), "--output", str(tmp_path / "no" / "f.json"))
    assert rc == 1 and "is not a directory" in err


def test_scheme_and_client_request_id(tmp_path: Path) -> None:
    with pytest.raises(feedupdate.UpdateError, match="URL scheme 'ftp'"):
        feedupdate.download("ftp://example.net/feed", tmp_path, "f", 1.0)
    mid = tmp_path / "machine-id"
    mid.write_text("0123456789abcdef0123456789abcdef\n")
    url = feedupdate.with_client_id("https://endpoints.office.com/endpoints/worldwide?NoIPv6=true", str(mid))
    assert url.startswith("https://endpoints.office.com/endpoints/worldwide?NoIPv6=true&clientrequestid=")
    guid = url.rsplit("=", 1)[1]
    assert guid == feedupdate.with_client_id("https://endpoints.office.com/x", str(mid)).rsplit("=", 1)[1]  # stable
    assert "0123456789abcdef" not in guid  # derived, not the machine id itself
    given = "https://endpoints.office.com/endpoints/worldwide?ClientRequestId=b10c5ed1-bad1-445f-b386-b919946339a7"
    assert feedupdate.with_client_id(given, str(mid)) == given
    mirror = "https://feeds.example.net/ms.json"
    assert feedupdate.with_client_id(mirror, str(mid)) == mirror


def test_url_from_the_environment_file(feeds: Feeds, state: Path, tmp_path: Path) -> None:
    """The unit's EnvironmentFile sets SKYGUARD_FEED_URL; the installed command (a subprocess, as systemd runs it)
    downloads from there."""
    feeds.routes["/mirror.json"] = (200, ff.feed_text(["198.51.100.0/24"]).encode(), {})
    # daemon/ too: under make test-debian (Debian's python3, no venv) skyguard is found only through PYTHONPATH
    env = {**os.environ, "SKYGUARD_FEED_URL": feeds.url("/mirror.json"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "daemon")])}
    r = subprocess.run([sys.executable, "-m", "skyguard.cli", "feed", "update", "--no-reload", "--output",
                        str(state / "ms-endpoints.json")], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert load_feed(state / "ms-endpoints.json").as_dict()["prefixes"] == ["198.51.100.0/24"]
    assert feeds.requests[-1][0] == "/mirror.json"
