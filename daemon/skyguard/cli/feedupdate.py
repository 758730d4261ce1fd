"""`skyguard feed update`: download Microsoft's endpoint feed, check it, put it in place atomically, reload skyguardd.

Run by systemd/skyguard-feed.service (from skyguard-feed.timer), or by hand. Each step can fail on its own, and a
failure leaves what was there:

1. download to a temporary file in the output's own directory (so step 3 is a rename within one file system);
2. check it with the parser `skyguard policy check --feed` uses (feed.load_feed); a refused download is deleted;
3. the same bytes as the installed file: nothing else to do (no reload). Otherwise fsync, mode 0644 (the daemon runs
   as root without CAP_DAC_OVERRIDE and must read a file this command's user owns), rename over the output, fsync
   the directory: a reader sees the old file or the new one, never a part;
4. `policy.reload` over the control socket: the daemon reads the policy and the new feed again and swaps them
   atomically (docs/architecture.md, "Policy reload by generation"). A daemon that is not running reads the new file
   when it starts; a refused reload (the policy itself is bad) leaves the running policy and exits 1.

Exit codes: 0 installed (or unchanged), 1 a step failed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skyguard import __version__
from skyguard.cli.client import Client, ClientError, ConnectError
from skyguard.feed import MAX_FEED_BYTES, Feed, FeedError, load_feed

# Microsoft asks for one GUID per machine that calls the service (clientrequestid): derived from /etc/machine-id
# through a namespace of our own, so it is stable on a router, differs between routers, and does not disclose the
# machine id (as sd_id128_get_machine_app_specific does it).
_CLIENT_ID_NAMESPACE = uuid.UUID("5b0e7a52-6f5c-4d7e-9a0c-2f1c7e0d3a91")
ALLOWED_SCHEMES = ("https", "http", "file")  # http and file: a fleet's own mirror; never ftp or others urllib knows


class UpdateError(Exception):
    """A step failed; the message says which and why."""


@dataclass
class Result:
    url: str
    output: str
    changed: bool = False
    feed: Feed | None = None
    reloaded: bool = False
    policy: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "output": self.output, "changed": self.changed,
                "feed": self.feed.as_dict() if self.feed else None, "reloaded": self.reloaded,
                "policy": self.policy, "notes": self.notes}

    def human(self) -> str:
        lines = [f"{self.output}: {self.feed.summary() if self.feed else 'no feed'}"]
        lines.append("installed (replaced the previous file atomically)" if self.changed
                     else "unchanged: same bytes as the installed file, no reload")
        if self.reloaded:
            lines.append(f"policy reloaded: {self.policy}")
        lines += self.notes
        return "\n".join(lines)


def client_request_id(machine_id_path: str = "/etc/machine-id") -> str:
    try:
        mid = Path(machine_id_path).read_text().strip()
    except OSError:
        mid = ""
    return str(uuid.uuid5(_CLIENT_ID_NAMESPACE, mid) if mid else uuid.uuid4())


def with_client_id(url: str, machine_id_path: str = "/etc/machine-id") -> str:
    """Microsoft's service needs clientrequestid (any case): add this machine's when the URL lacks one."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if not (host == "office.com" or host.endswith(".office.com")):
        return url
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if any(k.lower() == "clientrequestid" for k, _v in query):
        return url
    query.append(("clientrequestid", client_request_id(machine_id_path)))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def download(url: str, directory: Path, prefix: str, timeout: float) -> Path:
    """The body of `url` in a new temporary file in `directory` (fsynced); UpdateError, and no file, on failure."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        allowed = ", ".join(ALLOWED_SCHEMES)
        raise UpdateError(f"download refused: URL scheme {scheme or '(none)'!r} (allowed: {allowed})")
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=f".{prefix}.", suffix=".part")
    except OSError as e:
        raise UpdateError(f"cannot create a temporary file in {directory}: {e.strerror or e}") from None
    tmp = Path(name)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": f"skyguard/{__version__}",
                                                   "Accept": "application/json"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            total = 0
            while chunk := resp.read(1 << 16):
                total += len(chunk)
                if total > MAX_FEED_BYTES:  # stop reading: a runaway body must not fill the state directory
                    raise UpdateError(f"download failed: {url}: more than {MAX_FEED_BYTES} bytes, not the feed")
                out.write(chunk)
            # http.client's read(n) returns b"" when the peer closes early instead of raising: compare with what the
            # server promised, so a cut connection never passes for a short file
            declared = resp.headers.get("Content-Length")
            if declared and declared.strip().isdigit() and int(declared) != total:
                raise UpdateError(f"download failed: {url}: connection cut after {total} of {int(declared)} bytes")
            out.flush()
            os.fsync(out.fileno())
        return tmp
    except UpdateError:
        tmp.unlink(missing_ok=True)
        raise
    except urllib.error.HTTPError as e:
        tmp.unlink(missing_ok=True)
        raise UpdateError(f"download failed: {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        tmp.unlink(missing_ok=True)
        raise UpdateError(f"download failed: {url}: {e.reason}") from None
    except (OSError, ValueError) as e:  # timeouts, resets, a truncated chunked body (http.client.IncompleteRead)
        tmp.unlink(missing_ok=True)
        raise UpdateError(f"download failed: {url}: {type(e).__name__}: {e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def install(tmp: Path, output: Path) -> None:
    """Rename `tmp` over `output` (atomic on one file system) and make the rename durable."""
    os.chmod(tmp, 0o644)
    os.replace(tmp, output)
    dfd = os.open(output.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def update(url: str, output: str | os.PathLike[str], *, socket_path: str | None, timeout: float = 60.0,
           machine_id_path: str = "/etc/machine-id") -> Result:
    """Steps 1-4 of the module's docstring. `socket_path` None: no reload. UpdateError when a step fails."""
    out = Path(output)
    res = Result(url=url, output=str(out))
    if not out.parent.is_dir():
        raise UpdateError(f"{out.parent} is not a directory (the feed file's directory must exist)")
    real_url = with_client_id(url, machine_id_path)
    tmp = download(real_url, out.parent, out.name, timeout)
    try:
        try:
            res.feed = load_feed(tmp)
        except FeedError as e:
            where = f":{e.line}:{e.col}" if e.line else ""
            raise UpdateError(f"downloaded feed refused, {out} kept: {url}{where}: {e.reason}") from None
        res.feed = Feed(path=str(out), prefixes=res.feed.prefixes, set_ids=res.feed.set_ids,
                        sets_total=res.feed.sets_total, digest=res.feed.digest)
        if _same_bytes(tmp, out):
            return res
        try:
            install(tmp, out)
        except OSError as e:
            raise UpdateError(f"cannot put the feed in place at {out}: {e.strerror or e}") from None
        res.changed = True
    finally:
        tmp.unlink(missing_ok=True)  # after a rename it no longer exists: nothing to do
    if socket_path is None:
        return res
    try:
        with Client(socket_path, timeout=max(timeout, 30.0)) as c:
            reply = c.call("policy.reload")
    except ConnectError as e:
        if e.code == "permission-denied":
            raise UpdateError(f"feed installed, but the reload failed: {e.message}") from None
        res.notes.append(f"skyguardd is not running ({e.message}); it reads the new feed when it starts")
        return res
    except ClientError as e:
        raise UpdateError(f"feed installed, but the daemon refused the reload and kept its running policy: "
                          f"{e.code}: {e.message}") from None
    res.reloaded = True
    res.policy = str(reply.get("name")) if isinstance(reply, dict) else None
    return res


def run(args: argparse.Namespace, socket_path: str, emit: Any, error: Any) -> int:
    """The CLI's `feed update`: `emit(data, human)` prints the result, `error(text)` a failure."""
    try:
        res = update(args.url, args.output, socket_path=None if args.no_reload else socket_path, timeout=args.timeout)
    except UpdateError as e:
        error(str(e))
        return 1
    emit(res.as_dict(), lambda _d: res.human())
    return 0
