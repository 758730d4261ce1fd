"""Microsoft's endpoint feed -> the Teams/Skype media ranges. Pure Python (standard library only).

The feed is a file in the format of the Microsoft 365 IP Address and URL web service's `endpoints` method
(https://endpoints.office.com/endpoints/worldwide?clientrequestid=GUID; docs/fleet.md, "Microsoft's endpoint feed"):
a JSON array of endpoint sets, each an object with `id`, `serviceArea` ("Common", "Exchange", "SharePoint",
"Skype"), `serviceAreaDisplayName`, `category` ("Optimize", "Allow", "Default"), and optionally `ips`, `urls`,
`tcpPorts`, `udpPorts`, `expressRoute`, `required`, `notes`.

What is read: the `ips` (IPv4 and IPv6) of the sets whose serviceArea is "Skype" and whose category is "Optimize"
(endpoint set 11 today: the media relays and processors). Everything else in the file is only checked for shape.

A feed is refused (FeedError, "file:line:column: reason" where JSON gives a position, "file: reason" otherwise) when
it is not UTF-8 JSON, not an array of endpoint sets (Microsoft's error answers and the `version` method's answer are
named as such), when a counted range is not an IP range or is implausibly wide, or when it yields no range at all:
an empty or truncated download must never empty the media ranges of a running policy.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# where `skyguard feed update` downloads from and writes to (systemd/skyguard-feed.service; SKYGUARD_FEED_URL in
# /etc/skyguard/feed.env overrides the URL). The service's clientrequestid is added per machine by the updater.
DEFAULT_URL = "https://endpoints.office.com/endpoints/worldwide"
DEFAULT_FILE = "/var/lib/skyguard/ms-endpoints.json"
SERVICE_AREA = "Skype"  # Microsoft's name for the Skype for Business Online and Teams service area
CATEGORY = "Optimize"
MAX_FEED_BYTES = 16 << 20  # the whole worldwide feed is about 100 kB; a much larger file is not the feed
MAX_RANGES = 4096  # endpoint set 11 has a handful; the msmedia maps hold 131072 entries across everything
# a counted range wider than this is a broken or hostile feed, not a relay range (Microsoft's widest Skype Optimize
# ranges are a /14 and a /38): it would make most of the Internet "Microsoft media"
MIN_PREFIXLEN = {4: 8, 6: 16}


class FeedError(Exception):
    """A refused feed: path, 1-based line and column when JSON gives them (0 otherwise), and the reason."""

    def __init__(self, path: str, reason: str, line: int = 0, col: int = 0) -> None:
        super().__init__(path, reason, line, col)
        self.path = path
        self.reason = reason
        self.line = line
        self.col = col

    def __str__(self) -> str:
        if self.line:
            return f"{self.path}:{self.line}:{self.col}: {self.reason}"
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class Feed:
    """What a feed file gave: its ranges (v4 first, each once, in file order), the sets they came from, the file's
    sha256 and how many endpoint sets it held in all."""

    path: str
    prefixes: tuple[Network, ...]
    set_ids: tuple[int, ...]
    sets_total: int
    digest: str

    def summary(self) -> str:
        v4 = sum(1 for p in self.prefixes if p.version == 4)
        ids = ", ".join(str(i) for i in self.set_ids)
        return (f"{len(self.prefixes)} {SERVICE_AREA} {CATEGORY} ranges ({v4} IPv4, {len(self.prefixes) - v4} IPv6) "
                f"from endpoint set{'s' if len(self.set_ids) != 1 else ''} {ids} of {self.sets_total}")

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.digest, "sets": list(self.set_ids), "sets_total": self.sets_total,
                "prefixes": [str(p) for p in self.prefixes]}


def _is(value: Any, wanted: str) -> bool:
    return isinstance(value, str) and value.strip().casefold() == wanted.casefold()


def _where(i: int, s: dict) -> str:
    sid = s.get("id")
    return f"endpoint set {sid}" if isinstance(sid, int) and not isinstance(sid, bool) else f"endpoint set #{i}"


def _not_sets(path: str, doc: Any) -> FeedError:
    """Why a JSON document is not the endpoints answer, naming the answers it is most often confused with."""
    if isinstance(doc, dict) and "latest" in doc:
        return FeedError(path, "this is the web service's `version` answer, not its `endpoints` answer")
    if isinstance(doc, dict):
        msg = doc.get("error") or doc.get("message") or doc.get("Message")
        if msg:
            return FeedError(path, f"the web service answered with an error, not endpoint sets: {str(msg)[:200]}")
        return FeedError(path, "a JSON object, not an array of endpoint sets (is the URL the `endpoints` method?)")
    if isinstance(doc, list) and doc and isinstance(doc[0], dict) and "latest" in doc[0]:
        return FeedError(path, "this is the web service's `version` answer, not its `endpoints` answer")
    return FeedError(path, f"expected a JSON array of endpoint sets, got {type(doc).__name__}")


def _range(path: str, where: str, j: int, raw: Any) -> Network:
    if not isinstance(raw, str):
        raise FeedError(path, f"{where}: ips[{j}] must be a string, not {type(raw).__name__}")
    try:
        # host bits are cleared, not refused: the range means the same either way, and refusing it would keep stale
        # ranges in force over a cosmetic slip in Microsoft's data
        net = ipaddress.ip_network(raw.strip(), strict=False)
    except ValueError:
        raise FeedError(path, f"{where}: ips[{j}] {raw!r} is not an IP range") from None
    if net.prefixlen < MIN_PREFIXLEN[net.version]:
        raise FeedError(path, f"{where}: ips[{j}] {raw!r} is implausibly wide for a media range "
                              f"(shorter than /{MIN_PREFIXLEN[net.version]})")
    return net


def parse_feed(data: bytes | str, path: str = "<feed>") -> Feed:
    """Validate a feed's bytes; FeedError on any refusal, never another exception."""
    try:
        return _parse(data, path)
    except FeedError:
        raise
    except Exception as e:  # noqa: BLE001 - the contract: only FeedError leaves, so a reload never crashes on a feed
        raise FeedError(path, f"internal error while reading the feed: {type(e).__name__}: {e}") from e


def _parse(data: bytes | str, path: str) -> Feed:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_FEED_BYTES:
        raise FeedError(path, f"larger than {MAX_FEED_BYTES} bytes: not Microsoft's endpoint feed")
    try:
        text = raw.decode("utf-8-sig")  # a BOM is harmless; json.loads would refuse it
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise FeedError(path, f"not valid UTF-8 (byte {e.start})", line, col) from None
    if not text.strip():
        raise FeedError(path, "empty file (an interrupted download?)")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise FeedError(path, f"not valid JSON: {e.msg}", e.lineno, e.colno) from None
    except RecursionError:
        raise FeedError(path, "not valid JSON: nested too deeply") from None
    if not isinstance(doc, list) or (doc and isinstance(doc[0], dict) and "latest" in doc[0]):
        raise _not_sets(path, doc)

    seen: dict[Network, None] = {}
    ids: list[int] = []
    for i, s in enumerate(doc):
        # every element must look like an endpoint set: a file of another shape is not the feed, even if it holds
        # something that looks like ranges
        if not isinstance(s, dict):
            raise FeedError(path, f"element #{i} is {type(s).__name__}, not an endpoint set (an object)")
        where = _where(i, s)
        sid = s.get("id")
        if not isinstance(sid, int) or isinstance(sid, bool):
            raise FeedError(path, f"{where}: `id` must be an integer, not {type(sid).__name__}")
        area = s.get("serviceArea")
        if not isinstance(area, str):
            raise FeedError(path, f"{where}: `serviceArea` must be a string, not {type(area).__name__}")
        if not (_is(area, SERVICE_AREA) and _is(s.get("category"), CATEGORY)):
            continue
        ips = s.get("ips", [])
        if not isinstance(ips, list):
            raise FeedError(path, f"{where}: `ips` must be an array of strings, not {type(ips).__name__}")
        nets = [_range(path, where, j, item) for j, item in enumerate(ips)]
        if nets:
            ids.append(sid)
        for net in nets:
            seen.setdefault(net, None)
    if not seen:
        raise FeedError(path, f"no IP ranges in the {SERVICE_AREA} service area's {CATEGORY} sets "
                              f"({len(doc)} endpoint sets read): refusing to empty the media ranges")
    if len(seen) > MAX_RANGES:
        raise FeedError(path, f"{len(seen)} {SERVICE_AREA} {CATEGORY} ranges, more than {MAX_RANGES}: not the feed")
    prefixes = tuple(sorted(seen, key=lambda n: n.version))  # stable: file order within each family
    return Feed(path=path, prefixes=prefixes, set_ids=tuple(ids), sets_total=len(doc),
                digest=hashlib.sha256(raw).hexdigest())


def read_feed_bytes(path: str | os.PathLike[str]) -> bytes:
    """A feed file's bytes, at most MAX_FEED_BYTES + 1. Only a regular file is read: opened non-blocking, so a FIFO
    or a device named by mistake is refused at once instead of hanging a reload."""
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FeedError(p, "no such file: the feed file does not exist (has `skyguard feed update` run?)") from None
    except OSError as e:
        raise FeedError(p, f"cannot read the feed file: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FeedError(p, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_FEED_BYTES + 1)
    except OSError as e:
        raise FeedError(p, f"cannot read the feed file: {e.strerror or e}") from None
    finally:
        os.close(fd)


def load_feed(path: str | os.PathLike[str]) -> Feed:
    """Read and validate a feed file."""
    return parse_feed(read_feed_bytes(path), os.fspath(path))


def resolve(feed: str, policy_path: str | None) -> str:
    """A policy's `feed` value as a path: relative paths are taken from the policy file's directory (a policy and
    the feed beside it move together), or from the working directory for a policy that is not a file."""
    p = Path(feed)
    if p.is_absolute() or not policy_path or policy_path.startswith("<"):
        return str(p)
    return str(Path(policy_path).parent / p)
