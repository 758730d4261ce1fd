"""Feed files in the format of the Microsoft 365 IP Address and URL web service's `endpoints` method, written by the
tests (no download of Microsoft's real feed): a Skype Optimize set with IPv4 and IPv6 ranges (the only one that
counts), a Skype Allow set and an Exchange Optimize set, with the fields Microsoft publishes."""

from __future__ import annotations

import json
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
