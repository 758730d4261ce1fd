"""Plain-HTTP request -> the Host it names (RFC 9112: request line, header fields, Host). Pure Python, bounded, never
raises on bad input.

The kernel hands over the first payload of a TCP direction on port 80 that starts with an HTTP method, cut to 512
bytes. The Host header field is returned when the request line is well formed and the field lies entirely inside the
captured bytes; an absolute-form request target (a request to a proxy) names the host too.
"""

from __future__ import annotations

import re

_REQUEST_LINE = re.compile(rb"^(GET|POST|HEAD|PUT|OPTIONS|DELETE|PATCH) (\S{1,2048}) HTTP/1\.[01]$")
_HOST = re.compile(r"^[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?$")
MAX_FIELDS = 32


def _clean(host: str) -> str | None:
    """A host name from a Host value or an authority: port and one trailing dot removed, lower case; None for an
    address literal or anything that is not a host name."""
    host = host.strip().lower()
    if host.startswith("["):
        return None  # an IPv6 literal names no service
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    host = host.removesuffix(".")
    if not _HOST.match(host) or host.replace(".", "").isdigit():
        return None
    return host


def request_host(data: bytes) -> str | None:
    """The host a plain-HTTP request is for; None if the request is malformed, cut before its Host, or has none."""
    data = bytes(data)
    lines = data.split(b"\r\n")
    if len(lines) < 2:
        return None  # the request line itself is cut
    m = _REQUEST_LINE.match(lines[0])
    if m is None:
        return None
    target = m.group(2)
    if target.startswith((b"http://", b"https://")):  # absolute form: the authority is the host (RFC 9112 3.2.2)
        authority = target.split(b"://", 1)[1].split(b"/", 1)[0].rsplit(b"@", 1)[-1]
        try:
            return _clean(authority.decode("ascii"))
        except UnicodeDecodeError:
            return None
    # the last element may be cut mid-field: only fields followed by CRLF are complete
    for raw in lines[1:-1][:MAX_FIELDS]:
        if raw == b"":
            break  # end of the header section
        name, sep, value = raw.partition(b":")
        if not sep:
            return None
        if name.strip().lower() == b"host":
            try:
                return _clean(value.decode("ascii"))
            except UnicodeDecodeError:
                return None
    return None
