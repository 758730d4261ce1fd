"""The generator's model of a call: one call's randomness (Ctx), the two endpoints of a leg and the frames between
them (Leg), a flow and the class it should get (Flow), the label rows, and the timing helpers."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import asdict, dataclass, field

from skyguard.lab import packet as pk

MS = 1_000_000  # nanoseconds per millisecond
SEC = 1_000_000_000
BASE_NS = 1_700_000_000 * SEC  # 2023-11-14: all generated captures start near here

LABEL_FIELDS = ("capture", "proto", "endpoint_a", "endpoint_b", "label", "packets", "bytes", "class")

# ---------------------------------------------------------------------------------------------------------------------
# Addresses and ports

# Microsoft media prefixes (docs/signatures.md, "Microsoft's media ranges and ports": endpoint set 11, incl. the 2022
# 52.120.0.0/14 and the older 13.107.64.0/18), used for the relay kind and kept out of every other kind's peers.
MS_MEDIA_V4 = (ipaddress.ip_network("52.112.0.0/14"), ipaddress.ip_network("52.122.0.0/15"))
MS_MEDIA_V6 = (ipaddress.ip_network("2603:1063::/38"),)
MS_AVOID = (*MS_MEDIA_V4, ipaddress.ip_network("52.120.0.0/14"), ipaddress.ip_network("13.107.64.0/18"), *MS_MEDIA_V6)
# SkypeOut gateways named in the literature (docs/signatures.md, "Legacy SkypeOut": Ehlert 2006)
E2O_GATEWAYS = ("195.215.8.140", "212.72.49.155")
E2O_PORT = 12340  # the legacy PSTN gateway's UDP port (Bonfiglio 2007)
# ports that mean something to a classifier: random ports avoid them
RESERVED_PORTS = frozenset({53, 443, 3478, 3479, 3480, 3481, 5060, 5061, 8801, E2O_PORT, 51820, *range(50000, 50060)})


@dataclass(slots=True)
class Ctx:
    """One call's randomness and options."""

    rng: random.Random
    ipv6: bool = False
    vlan: int | None = None

    def client(self) -> str:
        r = self.rng
        if self.ipv6:
            return str(ipaddress.IPv6Address((0xFD << 120) | r.getrandbits(56) << 64 | r.randrange(2, 1 << 16)))
        if r.random() < 0.5:
            return f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(2, 255)}"
        return f"192.168.{r.randrange(256)}.{r.randrange(2, 255)}"

    def public(self) -> str:
        """A random globally routable address outside Microsoft's media prefixes and the known PSTN gateways."""
        r = self.rng
        while True:
            if self.ipv6:
                ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(
                    (0x2 << 125) | r.getrandbits(125))
            else:
                ip = ipaddress.IPv4Address(r.randrange(0x01000000, 0xE0000000))
            if ip.is_global and not any(ip in n for n in MS_AVOID if n.version == ip.version) and str(
                    ip) not in E2O_GATEWAYS:
                return str(ip)

    def ms_media(self) -> str:
        nets = MS_MEDIA_V6 if self.ipv6 else MS_MEDIA_V4
        net = self.rng.choice(nets)
        host = self.rng.randrange(1, net.num_addresses - 1)
        return str(net.network_address + host)

    def port(self) -> int:
        while True:
            p = self.rng.randrange(1024, 65536)
            if p not in RESERVED_PORTS:
                return p

    def client_media_port(self) -> int:
        return self.rng.randrange(50000, 50020)  # Microsoft QoS guidance: client audio ports 50000-50019

    def mac(self) -> bytes:
        return bytes([0x02, *self.rng.randbytes(5)])

    def leg(self, a: str, ap: int, b: str, bp: int) -> Leg:
        return Leg(a, ap, b, bp, self.vlan, self.mac(), self.mac(), [self.rng.randrange(65536) for _ in range(2)],
                   self.rng.randrange(40, 60))

    def jitter(self, sigma_ms: float, limit_ms: float) -> int:
        return int(max(-limit_ms, min(limit_ms, self.rng.gauss(0.0, sigma_ms))) * MS)


@dataclass(slots=True)
class Leg:
    """Two endpoints and the frames between them; direction 0 is a -> b (a = client side)."""

    a: str
    ap: int
    b: str
    bp: int
    vlan: int | None
    a_mac: bytes
    b_mac: bytes
    ip_id: list[int]
    b_ttl: int

    def _ends(self, d: int) -> tuple[str, int, str, int, bytes, bytes, int]:
        if d == 0:
            return self.a, self.ap, self.b, self.bp, self.a_mac, self.b_mac, 64
        return self.b, self.bp, self.a, self.ap, self.b_mac, self.a_mac, self.b_ttl

    def _next_id(self, d: int) -> int:
        self.ip_id[d] = (self.ip_id[d] + 1) & 0xFFFF
        return self.ip_id[d]

    def udp(self, d: int, payload: bytes) -> bytes:
        s, sp, t, tp, smac, dmac, ttl = self._ends(d)
        return pk.udp(s, sp, t, tp, payload, vlan=self.vlan, ttl=ttl, ip_id=self._next_id(d), src_mac=smac,
                      dst_mac=dmac)

    def tcp(self, d: int, payload: bytes, flags: str, seq: int, ack: int, options: bytes = b"") -> bytes:
        s, sp, t, tp, smac, dmac, ttl = self._ends(d)
        return pk.tcp(s, sp, t, tp, payload, flags=flags, seq=seq, ack=ack, window=64240, options=options,
                      vlan=self.vlan, ttl=ttl, ip_id=self._next_id(d), src_mac=smac, dst_mac=dmac)


@dataclass(slots=True)
class Flow:
    """One generated flow (one 5-tuple) and the class skyguard should give it."""

    cls: str
    pkts: list[tuple[int, bytes]] = field(default_factory=list)

    def add(self, ts: int, frame: bytes) -> None:
        self.pkts.append((ts, frame))


@dataclass(frozen=True, slots=True)
class LabelRow:
    capture: str
    proto: str
    endpoint_a: str
    endpoint_b: str
    label: str
    packets: int
    bytes: int
    cls: str

    def as_csv(self) -> dict[str, str | int]:
        d: dict[str, str | int] = asdict(self)
        d["class"] = d.pop("cls")
        return d


# ---------------------------------------------------------------------------------------------------------------------
# Timing helpers


def periodic(c: Ctx, t0: int, interval_ms: float, duration_ns: int, jitter_ms: float) -> list[int]:
    """Send times every interval_ms for duration_ns with Gaussian jitter (kept under a third of the interval)."""
    n = max(1, int(duration_ns // int(interval_ms * MS)))
    return [max(t0, t0 + int(i * interval_ms * MS) + c.jitter(jitter_ms, interval_ms / 3)) for i in range(n)]


def duration(c: Ctx, lo_s: float, hi_s: float) -> int:
    return int(c.rng.uniform(lo_s, hi_s) * SEC)
