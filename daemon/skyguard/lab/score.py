"""Scoring replay output against labels: nDPI's labels for the public captures of its test suite (docs/signatures.md,
"Sources"), the generator's for generated traffic.

Used by tests/bpf/test_accuracy.py and bench/accuracy.py, so that the figures quoted and the figures asserted come
from one piece of code.
"""

from __future__ import annotations

import csv
import ipaddress
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SKYPE_CAPTURES = {"skype.pcap", "skype_udp.pcap", "teams.pcap", "stun_msteams_unidir.pcapng"}
# inside the Skype and Teams captures, these generic labels may be Skype's own servers: not scored (captures/README)
GENERIC_IN_SKYPE = {"TLS", "TLS.Microsoft", "TLS.Microsoft365", "TLS.Azure", "Microsoft", "Microsoft365", "Azure"}


def flow_id(capture: str, proto: str, a: str, b: str) -> tuple:
    """A flow's identity whichever end is named first and however its addresses are spelt: nDPI and Python write
    the same IPv6 address differently (where `::` stands for a single zero group)."""
    return (capture, proto, *sorted((_canonical(a), _canonical(b))))


def _canonical(endpoint: str) -> str:
    host, sep, port = endpoint.rpartition(":")
    if not sep:
        return endpoint
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return endpoint
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


@dataclass
class LabelledFlow:
    capture: str
    proto: str
    a: str
    b: str
    label: str
    skype: bool
    packets: int


def read_labels(path: str | Path) -> list[LabelledFlow]:
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.append(LabelledFlow(row["capture"], row["proto"], row["endpoint_a"], row["endpoint_b"],
                                    row["ndpi_label"], row.get("skype", "0").strip() == "1", int(row["packets"])))
    return out


def family(lf: LabelledFlow) -> str | None:
    """The label family a flow is scored in; None for flows that are not scored."""
    lab = lf.label
    if lab.startswith("DNS") or lab == "Unknown" or lf.proto not in ("udp", "tcp"):
        return None
    if lf.capture in SKYPE_CAPTURES and lab in GENERIC_IN_SKYPE:
        return None
    if not lf.skype:
        return "negative"
    if lab.startswith("TLS"):
        return "tls"
    if lab.startswith("STUN") or lf.capture in ("teams.pcap", "stun_msteams_unidir.pcapng"):
        return "stun"
    return "legacy-udp"


@dataclass
class Score:
    per_family: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    misses: list[tuple[LabelledFlow, str]] = field(default_factory=list)
    false_positives: list[tuple[LabelledFlow, str]] = field(default_factory=list)
    unmatched: list[LabelledFlow] = field(default_factory=list)

    def recall(self, fam: str) -> float:
        c = self.per_family.get(fam, {"hit": 0, "total": 0})  # .get: asking must not add an empty family
        return c["hit"] / c["total"] if c["total"] else float("nan")

    @property
    def negatives(self) -> int:
        return self.per_family["negative"]["total"]

    @property
    def fp_rate(self) -> float:
        return len(self.false_positives) / self.negatives if self.negatives else 0.0

    def as_dict(self) -> dict:
        fams = {f: {"total": c["total"], "hit": c["hit"], "recall": round(self.recall(f), 4) if c["total"] else None}
                for f, c in sorted(self.per_family.items()) if f != "negative"}
        return {"families": fams, "negatives": self.negatives, "false_positives": len(self.false_positives),
                "fp_rate": round(self.fp_rate, 5), "unmatched": len(self.unmatched),
                "misses": [f"{lf.capture} {lf.proto} {lf.a} {lf.b} {lf.label} -> {cls}" for lf, cls in self.misses],
                "false_positive_flows": [f"{lf.capture} {lf.proto} {lf.a} {lf.b} {lf.label} -> {cls}"
                                         for lf, cls in self.false_positives]}


def score_ndpi(flows: Iterable[dict], labels: Iterable[LabelledFlow], captures: set[str] | None = None) -> Score:
    """Replay flow rows (with "capture") against nDPI's labels: skype-* class = Skype."""
    got = {flow_id(r["capture"], r["proto"], r["a"], r["b"]): r["class"] for r in flows}
    s = Score()
    for lf in labels:
        if captures is not None and lf.capture not in captures:
            continue
        fam = family(lf)
        if fam is None:
            continue
        cls = got.get(flow_id(lf.capture, lf.proto, lf.a, lf.b))
        if cls is None:
            s.unmatched.append(lf)
            cls = "missing"
        is_skype = cls.startswith("skype-")
        s.per_family[fam]["total"] += 1
        if fam == "negative":
            if is_skype:
                s.false_positives.append((lf, cls))
        elif is_skype:
            s.per_family[fam]["hit"] += 1
        else:
            s.misses.append((lf, cls))
    return s


@dataclass
class Confusion:
    """Generated traffic: expected class (labels.csv `class`) against the class skyguard gave."""

    matrix: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, expected: str, got: str) -> None:
        self.matrix[expected][got] += 1

    def recall(self, cls: str) -> float:
        row = self.matrix.get(cls, Counter())  # .get: asking must not add an empty row
        n = sum(row.values())
        return row[cls] / n if n else float("nan")

    def false_out(self) -> int:
        """Flows of another class that skyguard called skype-out: must be 0."""
        return sum(row["skype-out"] for exp, row in self.matrix.items() if exp != "skype-out")

    def table(self) -> str:
        classes = sorted({*self.matrix, *(g for r in self.matrix.values() for g in r)})
        w = max(len(c) for c in classes) + 2
        head = "expected \\ got".ljust(w + 2) + "".join(c.rjust(w) for c in classes) + "   recall"
        lines = [head]
        for exp in sorted(self.matrix):
            row = self.matrix[exp]
            lines.append(exp.ljust(w + 2) + "".join(str(row[c]).rjust(w) for c in classes)
                         + f"   {self.recall(exp):6.1%}")
        return "\n".join(lines)


def read_gen_labels(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def score_generated(flows: Iterable[dict], labels: Iterable[dict]) -> Confusion:
    got = {flow_id(r["capture"], r["proto"], r["a"], r["b"]): r["class"] for r in flows}
    c = Confusion()
    for row in labels:
        key = flow_id(row["capture"], row["proto"], row["endpoint_a"], row["endpoint_b"])
        c.add(row["class"], got.get(key, "missing"))
    return c
