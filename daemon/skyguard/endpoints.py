"""Addresses as operators type them: endpoints (ADDR:PORT, [V6ADDR]:PORT) and prefixes (ADDR[/LEN]).

One parser for the CLI, the daemon's commands and the lab, so an endpoint the CLI accepts is one the daemon accepts and
a prefix with host bits is refused with the same words everywhere (the policy checker uses them too). Standard
library only: the CLI imports this without the daemon's modules.
"""

from __future__ import annotations

import ipaddress
import re

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>\d{1,5})$")


def parse_endpoint(text: str) -> tuple[str, int]:
    """`ADDR:PORT` or `[V6ADDR]:PORT` -> (address in canonical form, port); ValueError with a one-line reason.

    IPv6 needs the brackets: without them `2001:db8::1:5` would be ambiguous between an address and address+port.
    """
    m = _ENDPOINT.match(text.strip()) if isinstance(text, str) else None
    if not m or int(m["port"]) > 65535:
        raise ValueError(f"not an endpoint (ADDR:PORT or [V6ADDR]:PORT): {text!r}")
    addr = m["v6"] or m["v4"]
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"not an IP address: {addr!r}") from None
    if (ip.version == 6) != bool(m["v6"]):
        raise ValueError(f"IPv6 endpoints are written [ADDR]:PORT, IPv4 ones ADDR:PORT: {text!r}")
    return str(ip), int(m["port"])


def format_endpoint(addr: str, port: int) -> str:
    """The inverse of parse_endpoint (the form wire.FlowKey.endpoints() writes)."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def normalize_endpoint(text: str) -> str:
    return format_endpoint(*parse_endpoint(text))


def parse_prefix(text: str) -> Network:
    """`ADDR` or `ADDR/LEN` -> network; a prefix with host bits set is refused (ValueError), never silently widened:
    `10.1.2.3/8` is more likely a typo of `10.1.2.3/32` or `10.1.2.0/24` than a wish to block all of 10.0.0.0/8."""
    s = text.strip() if isinstance(text, str) else ""
    try:
        return ipaddress.ip_network(s, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(s, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a CIDR prefix ({e})") from None
        raise ValueError(f"{text!r} has host bits set; did you mean {str(loose)!r}?") from None


def parse_network(text: str) -> Network:
    """Like parse_prefix, but host bits are cleared: for filters (`flows --addr 192.168.1.7/24`), not for rules."""
    try:
        return ipaddress.ip_network(text.strip() if isinstance(text, str) else "", strict=False)
    except ValueError:
        raise ValueError(f"not an address or CIDR prefix: {text!r}") from None
