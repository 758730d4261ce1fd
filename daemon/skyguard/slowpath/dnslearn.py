"""Learn addresses from DNS responses: names of PSTN gateways/SBCs -> `pstn` prefixes, Microsoft media relay names ->
`msmedia` prefixes. Pure Python; the parser never raises out of `DnsLearner.on_response` (errors are counted).

What is learned, and why it is sound:
- Only answers reachable from the response's question through its CNAME chain are used (a record for an unrelated
  owner in the same response is ignored), and the chain matches when any name on it matches (the question, or a
  CNAME target such as sip.pstnhub.microsoft.com behind an operator alias).
- Only globally routable unicast addresses are learned: a spoofed or rebinding answer cannot turn 10.x, 127.x,
  link-local or multicast space into "pstn" (which a policy may drop).
- `msmedia` is learned only for media relay names (MEDIA_NAMES): TURN relays carry call media and nothing else, so
  their addresses are as good as the published media prefixes. Signalling names (trouter, teams.microsoft.com, ...)
  are NOT learned as msmedia: they serve HTTPS/websocket signalling, which the TLS SNI already identifies per flow,
  and their CNAME targets (*.cloudapp.net, *.trafficmanager.net, akamai) are shared front ends.
- Separately, and never pushed to the kernel: addresses whose chain runs through an Azure hosting zone (CLOUD_ZONES)
  are remembered as "cloud-hosted" (`cloud_name`), in their own bounded table so that they cannot evict PSTN or media
  entries. The slow path uses them for the host correlation of TLS flows (classify.py), nothing else.
- Each learned address lives for the record TTL (the smallest on its chain), clamped to [30 s, 1 day], is refreshed by
  later answers, and is removed on expiry, on LRU eviction past `max_entries`, or when the policy stops naming it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from skyguard import wire
from skyguard.names import match_suffix, normalize

TTL_MIN_S = 30
TTL_MAX_S = 86400
MAX_POINTER_JUMPS = 16
MAX_NAME_LEN = 255
MAX_CHAIN = 16  # CNAME hops followed from the question
MAX_RECORDS = 128  # answer records parsed per message (a 512-byte capture holds far fewer)

T_A, T_CNAME, T_AAAA = 1, 5, 28
R_PSTN_NAME = wire.C["SG_R_PSTN_NAME"]
R_DNS_NAME = wire.C["SG_R_DNS_NAME"]

# Media relay names (Microsoft 365 endpoint set 11 is published as IP prefixes only; clients find their TURN relays
# through these names: "<region>.relay.teams.microsoft.com", "worldaa.relay.teams.microsoft.com").
MEDIA_NAMES: tuple[str, ...] = ("relay.teams.microsoft.com",)

# Azure's own hosting zones (Microsoft Learn): a Traffic Manager profile answers as <profile>.trafficmanager.net
# (`az network traffic-manager profile check-dns`), a classic Cloud Service as <name>.cloudapp.net, and a public IP
# with a DNS label as <label>.<region>.cloudapp.azure.com (PublicIPAddressDnsSettings.DomainNameLabel). An answer whose
# CNAME chain passes through one of them comes from a server in Azure.
CLOUD_ZONES: tuple[str, ...] = ("trafficmanager.net", "cloudapp.net", "cloudapp.azure.com")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DnsError(ValueError):
    """Malformed or truncated DNS message (carries a short kind for the error counters)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class Record:
    name: str
    rtype: int
    ttl: int
    value: str | Address  # CNAME target or address


@dataclass(frozen=True)
class Response:
    question: str | None
    rcode: int
    truncated: bool  # answers were cut (TC bit, or the capture ended inside the answer section)
    answers: tuple[Record, ...]


def read_name(msg: bytes, off: int) -> tuple[str, int]:
    """Decode a (possibly compressed) name at `off`; returns (name, offset after it in the original position).
    Pointers must point strictly backwards and at most MAX_POINTER_JUMPS are followed (no loops)."""
    labels: list[str] = []
    length = 0
    end = -1
    jumps = 0
    pos = off
    while True:
        if pos >= len(msg):
            raise DnsError("name-truncated")
        b = msg[pos]
        if b & 0xC0 == 0xC0:
            if pos + 1 >= len(msg):
                raise DnsError("name-truncated")
            target = ((b & 0x3F) << 8) | msg[pos + 1]
            if end < 0:
                end = pos + 2
            jumps += 1
            if target >= pos or jumps > MAX_POINTER_JUMPS:
                raise DnsError("name-loop")
            pos = target
            continue
        if b & 0xC0:
            raise DnsError("name-label-type")
        pos += 1
        if b == 0:
            break
        if pos + b > len(msg):
            raise DnsError("name-truncated")
        length += b + 1
        if length > MAX_NAME_LEN:
            raise DnsError("name-too-long")
        labels.append(msg[pos : pos + b].decode("ascii", "replace").lower())
        pos += b
    return ".".join(labels), (end if end >= 0 else pos)


def parse_response(msg: bytes) -> Response:
    """Parse a DNS response's header, first question and answer section. Answers cut by the capture end the list
    (the complete ones are kept); anything else malformed raises DnsError."""
    if len(msg) < 12:
        raise DnsError("short-header")
    _id, flags, qd, an, _ns, _ar = struct.unpack_from("!HHHHHH", msg, 0)
    if not flags & 0x8000:
        raise DnsError("not-response")
    if (flags >> 11) & 0xF != 0:
        raise DnsError("opcode")
    off = 12
    question = None
    for i in range(qd):
        name, off = read_name(msg, off)
        if off + 4 > len(msg):
            raise DnsError("question-truncated")
        off += 4
        if i == 0:
            question = name
    truncated = bool(flags & 0x0200)
    answers: list[Record] = []
    for _ in range(min(an, MAX_RECORDS)):
        try:
            name, off = read_name(msg, off)
            if off + 10 > len(msg):
                raise DnsError("name-truncated")
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", msg, off)
            off += 10
            if off + rdlen > len(msg):
                raise DnsError("name-truncated")
        except DnsError as e:
            if e.kind != "name-truncated":
                raise
            truncated = True
            break
        rdata_off, off = off, off + rdlen
        if rclass != 1:
            continue
        if rtype == T_A and rdlen == 4:
            answers.append(Record(name, rtype, ttl, ipaddress.IPv4Address(msg[rdata_off:off])))
        elif rtype == T_AAAA and rdlen == 16:
            answers.append(Record(name, rtype, ttl, ipaddress.IPv6Address(msg[rdata_off:off])))
        elif rtype == T_CNAME:
            target, _ = read_name(msg[:off], rdata_off)  # the target may not run past its own rdata
            answers.append(Record(name, rtype, ttl, target))
        elif rtype in (T_A, T_AAAA):
            raise DnsError("bad-rdlength")
    return Response(question, flags & 0xF, truncated, tuple(answers))


def resolve_chain(resp: Response) -> tuple[list[str], list[tuple[Address, int]]]:
    """(names on the CNAME chain from the question, [(address, smallest TTL along the chain)])."""
    if resp.question is None:
        return [], []
    cnames: dict[str, tuple[str, int]] = {}
    for r in resp.answers:
        if r.rtype == T_CNAME and r.name not in cnames:
            cnames[r.name] = (str(r.value), r.ttl)
    chain = [resp.question]
    ttl_at = {resp.question: TTL_MAX_S}
    while chain[-1] in cnames and len(chain) <= MAX_CHAIN:
        target, ttl = cnames[chain[-1]]
        if target in ttl_at:
            break  # CNAME loop
        ttl_at[target] = min(ttl_at[chain[-1]], ttl)
        chain.append(target)
    addrs = [(r.value, min(ttl_at[r.name], r.ttl)) for r in resp.answers
             if r.rtype in (T_A, T_AAAA) and r.name in ttl_at and not isinstance(r.value, str)]
    return chain, addrs


def _expires_ns(now_ns: int, ttl: int) -> int:
    """When an answer seen at `now_ns` with record TTL `ttl` expires, the TTL clamped to [TTL_MIN_S, TTL_MAX_S]."""
    return now_ns + min(max(ttl, TTL_MIN_S), TTL_MAX_S) * 1_000_000_000


def learnable(addr: Address) -> bool:
    """Globally routable unicast only."""
    return addr.is_global and not addr.is_multicast


@dataclass(frozen=True)
class PrefixChange:
    kind: str  # "pstn" | "msmedia"
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    add: bool
    expires_ns: int
    name: str
    reason: int


@dataclass
class _Entry:
    expires_ns: int
    name: str  # the chain name that matched (for removal when the policy drops it)
    suffix: str


class DnsLearner:
    """Names -> learned prefixes with TTLs, bounded to `max_entries` (least recently refreshed evicted first)."""

    def __init__(self, pstn_names: Iterable[str], media_names: Iterable[str] = MEDIA_NAMES, *,
                 max_entries: int = 65536) -> None:
        self.pstn_names = tuple(normalize(n) for n in pstn_names)
        self.media_names = tuple(normalize(n) for n in media_names)
        self.max_entries = max(1, max_entries)
        self.entries: OrderedDict[tuple[str, Address], _Entry] = OrderedDict()
        self.errors: Counter[str] = Counter()
        self.responses = 0
        self.pending: list[PrefixChange] = []
        # address -> (expiry ns, question name) for answers served through CLOUD_ZONES (see module docstring)
        self.cloud: OrderedDict[Address, tuple[int, str]] = OrderedDict()

    # -- names --------------------------------------------------------------------------------------------------

    def _kinds(self, chain: list[str]) -> list[tuple[str, str, str]]:
        """[(kind, matching name, suffix)] for the chain: at most one per kind."""
        out = []
        for kind, suffixes in (("pstn", self.pstn_names), ("msmedia", self.media_names)):
            for name in chain:
                s = match_suffix(name, suffixes)
                if s:
                    out.append((kind, name, s))
                    break
        return out

    def set_names(self, pstn_names: Iterable[str], media_names: Iterable[str] | None = None) -> None:
        """New policy names: learned entries whose name no longer matches are removed (queued)."""
        self.pstn_names = tuple(normalize(n) for n in pstn_names)
        if media_names is not None:
            self.media_names = tuple(normalize(n) for n in media_names)
        for (kind, addr), e in list(self.entries.items()):
            suffixes = self.pstn_names if kind == "pstn" else self.media_names
            if not match_suffix(e.name, suffixes):
                self._remove(kind, addr, e)

    # -- learning -----------------------------------------------------------------------------------------------

    def on_response(self, msg: bytes, now_ns: int) -> int:
        """Learn from one response (never raises); returns how many addresses were added or refreshed."""
        self.responses += 1
        try:
            resp = parse_response(bytes(msg))
        except DnsError as e:
            self.errors[e.kind] += 1
            return 0
        except Exception:  # noqa: BLE001 - a parser bug must not stop the daemon
            self.errors["internal"] += 1
            return 0
        if resp.rcode != 0:
            return 0
        chain, addrs = resolve_chain(resp)
        kinds = self._kinds(chain) if addrs else []
        if addrs and any(match_suffix(name, CLOUD_ZONES) for name in chain):
            self._note_cloud(chain[0], addrs, now_ns)
        n = 0
        for kind, name, suffix in kinds:
            for addr, ttl in addrs:
                if not learnable(addr):
                    self.errors["not-global"] += 1
                    continue
                n += self._learn(kind, addr, _expires_ns(now_ns, ttl), name, suffix)
        return n

    def _learn(self, kind: str, addr: Address, expires_ns: int, name: str, suffix: str) -> int:
        k = (kind, addr)
        old = self.entries.get(k)
        if old is not None:
            self.entries.move_to_end(k)
            if expires_ns <= old.expires_ns:
                return 0
            old.expires_ns, old.name, old.suffix = expires_ns, name, suffix
        else:
            self.entries[k] = _Entry(expires_ns, name, suffix)
            while len(self.entries) > self.max_entries:
                (ek, ea), ee = self.entries.popitem(last=False)
                self.errors["evicted"] += 1
                self.pending.append(self._change(ek, ea, ee, add=False))
        self.pending.append(self._change(kind, addr, self.entries[k], add=True))
        return 1

    def _note_cloud(self, question: str, addrs: list[tuple[Address, int]], now_ns: int) -> None:
        for addr, ttl in addrs:
            if not learnable(addr):
                continue
            self.cloud[addr] = (_expires_ns(now_ns, ttl), question)
            self.cloud.move_to_end(addr)
            while len(self.cloud) > self.max_entries:
                self.cloud.popitem(last=False)
                self.errors["cloud-evicted"] += 1

    def cloud_name(self, addr: Address, now_ns: int) -> str | None:
        """The name a DNS answer gave for `addr` through an Azure hosting zone, while its TTL lasts; else None."""
        hit = self.cloud.get(addr)
        if hit is None or hit[0] <= now_ns:
            return None
        return hit[1]

    def expire(self, now_ns: int) -> int:
        for addr, (exp, _) in list(self.cloud.items()):
            if exp <= now_ns:
                del self.cloud[addr]
        gone = 0
        for (kind, addr), e in list(self.entries.items()):
            if e.expires_ns <= now_ns:
                self._remove(kind, addr, e)
                gone += 1
        return gone

    def _remove(self, kind: str, addr: Address, e: _Entry) -> None:
        del self.entries[(kind, addr)]
        self.pending.append(self._change(kind, addr, e, add=False))

    @staticmethod
    def _change(kind: str, addr: Address, e: _Entry, *, add: bool) -> PrefixChange:
        net = ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")
        return PrefixChange(kind, net, add, e.expires_ns, e.name, R_PSTN_NAME if kind == "pstn" else R_DNS_NAME)

    def take(self) -> list[PrefixChange]:
        out, self.pending = self.pending, []
        return out

    def status(self) -> dict:
        by_kind = Counter(kind for kind, _ in self.entries)
        return {"entries": len(self.entries), "max_entries": self.max_entries, "pstn": by_kind["pstn"],
                "msmedia": by_kind["msmedia"], "names": len({e.name for e in self.entries.values()}),
                "cloud": len(self.cloud),
                "responses": self.responses, "errors": dict(self.errors)}
