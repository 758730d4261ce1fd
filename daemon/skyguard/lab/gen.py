"""Synthetic traffic generator: Skype calls of every class and look-alike decoys, following docs/signatures.md.

`python -m skyguard.lab.gen --seed N --out DIR [--calls K] [--kinds a,b] [--ipv6] [--vlan ID] [--json]` writes one pcap
per kind (DIR/<kind>.pcap) and DIR/labels.csv (capture,proto,endpoint_a,endpoint_b,label,packets,bytes,class), where
`label` is the generator's kind and `class` the skyguard class the flow should get. Everything random comes from the
seed: the same seed gives the same bytes.

Python API: `generate(seed, out_dir, ...)` for files, `kind_flows(kind, rng, ...)` / `kind_packets(kind, rng, ...)`
for one call (the lab plays single calls).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from skyguard.lab import packet as pk
from skyguard.lab.kinds import (
    azure_web,
    dns_kind,
    dns_pstn,
    game,
    legacy_e2e,
    legacy_e2o,
    modern_p2p,
    modern_relay,
    modern_sbc,
    random_udp,
    sip_rtp,
    teams_azure,
    tls_other,
    tls_skype,
    webrtc_stun,
    wireguard,
)
from skyguard.lab.kinds_edge import (
    busy_service,
    carrier_rtp,
    carrier_trunk,
    dr_media,
    dr_trunk,
    http_other,
    http_skype,
    legacy_endpoint,
    ms_https,
    nat_users,
    p2p_bare,
    port_reuse,
)
from skyguard.lab.traffic import BASE_NS, LABEL_FIELDS, SEC, Ctx, Flow, LabelRow
from skyguard.offline.pcap import write_pcap

# ---------------------------------------------------------------------------------------------------------------------
# Registry and drivers

Builder = Callable[[Ctx, int], list[Flow]]
KINDS: dict[str, Builder] = {
    "legacy-e2e": legacy_e2e,
    "legacy-e2o": legacy_e2o,
    "modern-p2p": modern_p2p,
    "modern-sbc": modern_sbc,
    "modern-relay": modern_relay,
    "dns-pstn": dns_pstn,
    "tls-skype": tls_skype,
    "tls-other": tls_other,
    "teams-azure": teams_azure,
    "azure-web": azure_web,
    "sip-rtp": sip_rtp,
    "webrtc-stun": webrtc_stun,
    "random-udp": random_udp,
    "wireguard": wireguard,
    "game": game,
    "dns": dns_kind,
    # issue 16: learned endpoints, plain HTTP, ICE without optional attributes, Direct Routing; and their decoys
    "legacy-endpoint": legacy_endpoint,
    "http-skype": http_skype,
    "p2p-bare": p2p_bare,
    "dr-trunk": dr_trunk,
    "dr-media": dr_media,
    "nat-users": nat_users,
    "port-reuse": port_reuse,
    "busy-service": busy_service,
    "http-other": http_other,
    "carrier-trunk": carrier_trunk,
    "carrier-rtp": carrier_rtp,
    "ms-https": ms_https,
}
# the class of each kind's main flow (dns-pstn's DNS lookup and sip-rtp's signalling flow are `other`)
KIND_CLASS = {
    "legacy-e2e": "skype-p2p", "legacy-e2o": "skype-out", "modern-p2p": "skype-p2p", "modern-sbc": "skype-out",
    "modern-relay": "skype-relay", "dns-pstn": "skype-out", "tls-skype": "skype-signaling", "tls-other": "other",
    "teams-azure": "skype-signaling", "azure-web": "other",
    "sip-rtp": "other", "webrtc-stun": "other", "random-udp": "other", "wireguard": "other", "game": "other",
    "dns": "other",
    "legacy-endpoint": "skype-signaling", "http-skype": "skype-signaling", "p2p-bare": "skype-p2p",
    "dr-trunk": "skype-out", "dr-media": "skype-out", "nat-users": "other", "port-reuse": "other",
    "busy-service": "other", "http-other": "other", "carrier-trunk": "other", "carrier-rtp": "other",
    "ms-https": "other",
}
# the decoy kinds: every flow they make that is labelled `other` must stay non-Skype
DECOY_KINDS = tuple(k for k, cls in KIND_CLASS.items() if cls == "other")


def kind_flows(kind: str, rng: random.Random, *, start_ns: int = BASE_NS, ipv6: bool = False,
               vlan: int | None = None) -> list[Flow]:
    """One call (or exchange) of `kind`: its flows, each with its expected class, packets in time order."""
    try:
        builder = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}") from None
    flows = builder(Ctx(rng, ipv6, vlan), start_ns)
    for f in flows:
        f.pkts.sort(key=lambda p: p[0])
    return flows


def kind_packets(kind: str, rng: random.Random, *, start_ns: int = BASE_NS, ipv6: bool = False,
                 vlan: int | None = None) -> list[tuple[int, bytes]]:
    """All packets of one call of `kind`, merged in time order: (ts_ns, Ethernet frame)."""
    flows = kind_flows(kind, rng, start_ns=start_ns, ipv6=ipv6, vlan=vlan)
    return sorted((p for f in flows for p in f.pkts), key=lambda p: p[0])


def _flow_key(frame: bytes) -> tuple[str, int, str, int, int, int]:
    p = pk.parse(frame)
    assert p is not None, "generated a frame that is not UDP/TCP"
    a, b = (p.src, p.sport), (p.dst, p.dport)
    lo, hi = (a, b) if a <= b else (b, a)
    return (*lo, *hi, p.proto, p.vlan)


def label_row(capture: str, kind: str, flow: Flow) -> LabelRow:
    p = pk.parse(flow.pkts[0][1])
    assert p is not None
    a, b = p.endpoints
    return LabelRow(capture, pk_proto(p.proto), a, b, kind, len(flow.pkts), sum(len(f) for _, f in flow.pkts),
                    flow.cls)


def pk_proto(proto: int) -> str:
    return {6: "tcp", 17: "udp"}.get(proto, str(proto))


def generate(seed: int, out_dir: str | Path, kinds: Sequence[str] | None = None, calls: int = 3, *,
             ipv6: bool = False, vlan: int | None = None) -> list[LabelRow]:
    """Write DIR/<kind>.pcap for each kind (`calls` calls each, overlapping in time) and DIR/labels.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[LabelRow] = []
    for kind in kinds or list(KINDS):
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        rng = random.Random(f"skyguard-gen:{seed}:{kind}:{int(ipv6)}:{vlan}")  # str seeds hash with SHA-512: stable
        capture = f"{kind}.pcap"
        start = BASE_NS + rng.randrange(0, 10 * SEC)
        used: set[tuple[str, int, str, int, int, int]] = set()
        flows: list[Flow] = []
        for _ in range(calls):
            while True:  # a (very unlikely) repeated 5-tuple would merge two flows: draw that call again
                call = kind_flows(kind, rng, start_ns=start, ipv6=ipv6, vlan=vlan)
                keys = [_flow_key(f.pkts[0][1]) for f in call]
                if not used.intersection(keys) and len(set(keys)) == len(keys):
                    break
            used.update(keys)
            flows += call
            start += rng.randrange(SEC // 2, 3 * SEC)
        write_pcap(out / capture, sorted((p for f in flows for p in f.pkts), key=lambda p: p[0]))
        rows += [label_row(capture, kind, f) for f in sorted(flows, key=lambda f: f.pkts[0][0])]
    with open(out / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LABEL_FIELDS)
        w.writeheader()
        for row in rows:
            w.writerow(row.as_csv())
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m skyguard.lab.gen", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--calls", type=int, default=3, help="calls per kind (default 3)")
    ap.add_argument("--kinds", default="", help=f"comma-separated subset of: {', '.join(KINDS)}")
    ap.add_argument("--ipv6", action="store_true", help="IPv6 addresses instead of IPv4")
    ap.add_argument("--vlan", type=int, default=None, help="802.1Q VLAN id on every frame")
    ap.add_argument("--json", action="store_true", help="print the label rows as JSON")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k] or None
    try:
        rows = generate(args.seed, args.out, kinds, args.calls, ipv6=args.ipv6, vlan=args.vlan)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"out": str(args.out), "labels": [r.as_csv() for r in rows]}, indent=1))
    else:
        for r in rows:
            print(f"{r.capture:18} {r.proto} {r.endpoint_a:>42} -> {r.endpoint_b:<42} {r.cls:16} {r.packets:6}")
        print(f"{len(rows)} flows written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
