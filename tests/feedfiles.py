"""Feed files in the format of the Microsoft 365 IP Address and URL web service's `endpoints` method, written by the
tests (no download of Microsoft's real feed): a Skype Optimize set with IPv4 and IPv6 ranges (the only one that
counts), a Skype Allow set and an Exchange Optimize set, with the fields Microsoft publishes; and a local HTTP
server on 127.0.0.1 that serves them to `skyguard feed update`."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SKYPE_OPTIMIZE_V4 = ["52.112.0.0/14", "52.122.0.0/15"]
SKYPE_OPTIMIZE_V6 = ["2603:1063::/38"]
SKYPE_ALLOW = ["52.238.119.141/32", "52.244.160.207/32", "2603:1027::/48"]
EXCHANGE_OPTIMIZE = ["13.107.6.152/31", "13.107.18.10/31", "2603:1006::/40"]


def endpoint_sets(optimize: list[str] | None = None, *, allow: list[str] | None = None,
                  exchange: list[str] | None = None) -> list[dict[str, Any]]:
    """The three sets; `optimize` replaces the Skype Optimize set's ips (default: v4 and v6 ranges above)."""
    return [
        {"id": 1, "serviceArea": "Exchange", "serviceAreaDisplayName": "Exchange Online",
         "urls": ["outlook.cloud.microsoft", "outlook.office.com", "outlook.office365.com"],
         "ips": list(EXCHANGE_OPTIMIZE if exchange is None else exchange),
         "tcpPorts": "80,443", "udpPorts": "443", "expressRoute": True, "category": "Optimize", "required": True},
        {"id": 11, "serviceArea": "Skype", "serviceAreaDisplayName": "Skype for Business Online and Microsoft Teams",
         "ips": list(SKYPE_OPTIMIZE_V4 + SKYPE_OPTIMIZE_V6 if optimize is None else optimize),
         "udpPorts": "3478,3479,3480,3481", "expressRoute": True, "category": "Optimize", "required": True},
        {"id": 12, "serviceArea": "Skype", "serviceAreaDisplayName": "Skype for Business Online and Microsoft Teams",
         "urls": ["*.lync.com", "*.teams.cloud.microsoft", "*.teams.microsoft.com", "teams.cloud.microsoft",
                  "teams.microsoft.com"],
         "ips": list(SKYPE_ALLOW if allow is None else allow),
         "tcpPorts": "443,80", "expressRoute": True, "category": "Allow", "required": True},
    ]


def feed_text(optimize: list[str] | None = None, **kw: Any) -> str:
    """Pretty-printed as Microsoft serves it (one key a line), so a syntax error has a meaningful line."""
    return json.dumps(endpoint_sets(optimize, **kw), indent=2) + "\n"


def write_feed(path: Path, optimize: list[str] | None = None, **kw: Any) -> Path:
    path.write_text(feed_text(optimize, **kw))
    return path


def broken_feed_text() -> tuple[str, int, int]:
    """A feed cut short inside the Skype Optimize set (an interrupted download); returns (text, line, column) of the
    position json reports."""
    text = feed_text()
    cut = text.index('"udpPorts": "3478')
    broken = text[:cut]
    line = broken.count("\n") + 1
    col = len(broken) - (broken.rfind("\n") + 1) + 1
    return broken, line, col


class Feeds(http.server.ThreadingHTTPServer):
    """path -> (status, body, extra headers); every request is recorded."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Feeds

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests.append((self.path, dict(self.headers)))
        status, body, headers = self.server.routes.get(self.path.split("?")[0], (404, b"not found", {}))
        self.send_response(status)
        length = headers.pop("Content-Length", str(len(body)))
        self.send_header("Content-Length", length)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve() -> Iterator[Feeds]:
    """A Feeds server on 127.0.0.1 (a free port) in a thread, shut down on exit."""
    srv = Feeds()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)
