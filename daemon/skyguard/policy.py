"""Policy files (TOML) -> validated Policy. No bcc here: this module knows only `wire`.

(Parsing and validation are filled in by the policy work; the dataclass below is the interface the kernel loader and
the slow path use.)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from . import wire

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Policy:
    name: str
    path: str | None
    # one slot per class id (0..5), then SG_POL_MALFORMED (6) and SG_POL_BLOCKED (7)
    slots: tuple[wire.PolicySlot, ...]
    pstn_prefixes: tuple[Network, ...] = ()
    pstn_names: tuple[str, ...] = ()
    msmedia_prefixes: tuple[Network, ...] = ()
    exempt_prefixes: tuple[Network, ...] = ()
    skype_names: tuple[str, ...] = ()  # Skype/Teams service name suffixes (SNI and DNS learning)
    loaded_ns: int = 0  # time.time_ns() when loaded
    digest: str = ""  # sha256 of the file text
    extra: dict = field(default_factory=dict, compare=False)

    def slot(self, cls_or_slot: int) -> wire.PolicySlot:
        return self.slots[cls_or_slot]
