"""Scapy differences between the versions the suite is tested with (Debian 12's 2.5 and the venv's current release)."""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import Any

from scapy.layers.dns import DNS, DNSRR


def dns_answers(rrs: Sequence[DNSRR]) -> Any:
    """A value for DNS(an=...): a list from scapy 2.6 on, a chain of DNSRR layers before.

    Scapy 2.5 (Debian 12's python3-scapy) types `an` as one packet whose payload is the next record: given a list it
    keeps the first record and drops the rest (or fails in compress()). Scapy 2.6 made it a list and reads a chain as
    one record. Detected by the field's default, not by the version string.
    """
    if isinstance(DNS().an, list):
        return list(rrs)
    return functools.reduce(operator.truediv, rrs) if rrs else None
