"""Skype/Teams service names (TLS SNI, DNS learning) and DNS-name helpers. Pure Python, no dependencies.

A name in these lists is a *suffix*: it matches itself and every name below it, on label boundaries only
("a.skype.com" matches "skype.com"; "evilskype.com" does not).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

BUILTIN_SKYPE_NAMES: tuple[str, ...] = (
    # Microsoft 365 URL/IP endpoint list, service area "Skype for Business Online and Microsoft Teams":
    #   ID 12 (category Allow, required): *.lync.com, *.teams.microsoft.com, teams.microsoft.com,
    #   *.teams.cloud.microsoft, teams.cloud.microsoft (TCP 443/80; the media prefixes of ID 11 live in policy.py).
    "lync.com",
    "teams.microsoft.com",
    "teams.cloud.microsoft",
    #   ID 127 (category Default, required): *.skype.com.
    "skype.com",
    #   Older editions of the same list (Skype for Business Online, retired 2021): *.skypeforbusiness.com.
    "skypeforbusiness.com",
    # Teams notification channel ("trouter"), a subdomain of teams.microsoft.com: listed explicitly so that logs
    # name the more specific suffix (match_suffix returns the longest match).
    "trouter.teams.microsoft.com",
    # nDPI src/lib/ndpi_content_match.c.inc host_match, Teams entries kept by hand next to the auto-generated
    # Microsoft lists: "teams.live.com" (Teams free/consumer) and "secure.skypeassets.com" (we take the whole
    # skypeassets.com zone: Skype's asset/join service, also in Microsoft's list as join.secure.skypeassets.com).
    "teams.live.com",
    "skypeassets.com",
    # Consumer Skype's second zone (nDPI's older Skype_Teams host list matched "skype." prefixes, which covered it).
    "skype.net",
    # Microsoft Direct Routing: the SBC's SIP/TLS peers sip.pstnhub.microsoft.com, sip2..., sip3... (port 5061),
    # see docs/signatures.md, "PC-to-phone today".
    "pstnhub.microsoft.com",
    # Skype's chat/presence gateway since the Messenger merge (Skype for Web and the Skype Web SDK connect to
    # client-s.gateway.messenger.live.com); skype.pcap's client reaches it with a ClientHello without SNI, so the
    # name comes from the server certificate's commonName (*.gateway.messenger.live.com).
    "gateway.messenger.live.com",
    # The Teams client's service name under office.com (sites.pcapng: teams.office.com, labelled TLS.Teams by nDPI).
    "teams.office.com",
)

# Microsoft's Direct Routing SIP proxies: sip.pstnhub.microsoft.com, sip2..., sip3... (TCP 5061; "Plan Direct
# Routing", docs/signatures.md "Teams Phone at a company's edge"). A TLS connection to one of them is an SBC's trunk,
# the signalling of phone calls: skype-out (dr-trunk) rather than skype-signaling.
DIRECT_ROUTING_NAMES: tuple[str, ...] = ("pstnhub.microsoft.com",)

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalize(name: str) -> str:
    """Lower-case, surrounding blanks and one trailing dot removed."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


def valid_dns_name(name: object) -> bool:
    """A host name or zone usable as a suffix: ASCII letters/digits/hyphens (IDNs in xn-- form), labels of 1..63
    characters not starting or ending with '-', at most 253 characters, at least two labels, and a top-level label
    that is not all digits (so IP addresses are refused). One trailing dot is tolerated."""
    if not isinstance(name, str) or not name or name != name.strip():
        return False
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii() or len(name) > 253:
        return False
    labels = name.lower().split(".")
    if len(labels) < 2 or labels[-1].isdigit():
        return False
    return all(_LABEL.match(label) for label in labels)


def match_suffix(name: object, suffixes: Iterable[str]) -> str | None:
    """The longest suffix in `suffixes` that `name` equals or ends with on a label boundary (case-insensitive,
    trailing dots ignored), normalised; None when nothing matches or `name` is not a usable string."""
    if not isinstance(name, str):
        return None
    name = normalize(name)
    if not name:
        return None
    known = _suffix_set(suffixes if isinstance(suffixes, tuple) else tuple(suffixes))
    # the candidates longest first: the name, then what follows each of its dots (every TLS name and DNS answer is
    # matched: a few set lookups, where normalising every suffix of a list each time cost more than the parse)
    i = -1
    while True:
        candidate = name[i + 1:]
        if candidate in known:
            return candidate
        i = name.find(".", i + 1)
        if i < 0:
            return None


@functools.lru_cache(maxsize=64)
def _suffix_set(suffixes: tuple[str, ...]) -> frozenset[str]:
    """A list of suffixes, normalised, empty ones left out (a policy's list, the built-in ones: a handful of lists)."""
    return frozenset(s for s in map(normalize, suffixes) if s)
