"""Accuracy: ../shared/captures against nDPI's labels, generated traffic against the generator's labels (per kind, with
nDPI's ndpiReader on the same captures beside it), and time to verdict for phone calls per kind (packets and ms from a
call flow's first packet to skype-out).

Usage: bench/accuracy.py [--seeds 1,2,3] [--captures DIR] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from common import ROOT

from skyguard.kernel.loader import Kernel  # noqa: E402
from skyguard.lab import (
    gen,
    score,  # noqa: E402
)
from skyguard.offline import replay

CAPTURES = ROOT.parent / "shared" / "captures"
PHONE_KINDS = ("legacy-e2o", "modern-sbc", "dns-pstn", "dr-trunk", "dr-media")


def ndpi_labels(pcap: Path) -> dict[tuple, str] | None:
    """nDPI's label of every flow of a capture (ndpiReader's CSV), by score.flow_id; None without ndpiReader."""
    exe = shutil.which("ndpiReader")
    if not exe:
        return None
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        subprocess.run([exe, "-q", "-i", str(pcap), "-C", out.name], capture_output=True, timeout=300, check=False)
        with open(out.name, newline="") as fh:
            rows = list(csv.DictReader(fh))
    labels = {}
    for r in rows:
        proto = {"6": "tcp", "17": "udp"}.get(r["protocol"], r["protocol"])
        a, b = (f"{r[f'{s}_ip']}:{r[f'{s}_port']}" for s in ("src", "dst"))
        a, b = (f"[{e.rsplit(':', 1)[0]}]:{e.rsplit(':', 1)[1]}" if e.count(":") > 1 else e for e in (a, b))
        labels[score.flow_id(pcap.name, proto, a, b)] = r["ndpi_proto"]
    return labels


def _ndpi_skype(label: str) -> bool:
    return "skype" in label.lower() or "teams" in label.lower()


def shared_captures(k: Kernel, cdir: Path) -> dict:
    paths = sorted(p for p in cdir.iterdir() if p.suffix in (".pcap", ".pcapng"))
    res = replay.replay(paths, kernel=k)
    s = score.score_ndpi(res.flows, score.read_labels(cdir / "labels.csv"))
    pk = sum(c.packets for c in res.captures)
    secs = sum(c.seconds for c in res.captures)
    return {"score": s.as_dict(), "packets": pk, "seconds": secs, "replay_pps": pk / secs if secs else None}


def time_to_verdict(res: replay.ReplayResult, labels: list[dict]) -> list[dict]:
    """Per phone-call flow: packets of the capture and ms from the flow's first packet to its skype-out decision."""
    first: dict[tuple, tuple[int, int]] = {}
    for d in res.decisions:  # decisions carry the capture's packet index; flows start with their first decision
        first.setdefault((d["capture"], d["flow"]), (d["packet"], d["ts_ns"]))
    rows = {(r["capture"], r["proto"], *sorted((r["a"], r["b"]))): r for r in res.flows}
    out = []
    for lab in labels:
        if lab["class"] != "skype-out":
            continue
        r = rows.get(score.flow_id(lab["capture"], lab["proto"], lab["endpoint_a"], lab["endpoint_b"]))
        if r is None or r["class"] != "skype-out":
            out.append({"capture": lab["capture"], "verdict": False})
            continue
        decs = [d for d in res.decisions if d["capture"] == lab["capture"] and d["new"] == "skype-out"
                and _same_flow(d["flow"], lab)]
        if not decs:
            out.append({"capture": lab["capture"], "verdict": False})
            continue
        d = decs[0]
        start_idx, start_ts = first.get((d["capture"], d["flow"]), (d["packet"], d["ts_ns"]))
        out.append({"capture": lab["capture"], "verdict": True, "flow_first_ns": r["first_ns"],
                    "ms": (d["ts_ns"] - r["first_ns"]) / 1e6,
                    # the flow's own packets at the decision (replay's flow_packets), else the capture's packet span
                    "packets": d.get("flow_packets") or d["packet"] - start_idx + 1})
    return out


def _same_flow(flow_str: str, lab: dict) -> bool:
    return all(ep.split(":")[-1] in flow_str and ep.rsplit(":", 1)[0].strip("[]") in flow_str
               for ep in (lab["endpoint_a"], lab["endpoint_b"]))


def generated(k: Kernel, seeds: list[int]) -> dict:
    conf = score.Confusion()
    ttv: list[dict] = []
    # kind -> expected class -> Counter(flows, skyguard right, nDPI right, nDPI labels...)
    per_kind: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    pk = 0
    secs = 0.0
    with tempfile.TemporaryDirectory(prefix="sg-acc-") as td:
        for seed in seeds:
            d = Path(td) / str(seed)
            gen.generate(seed, d)
            labels = score.read_gen_labels(d / "labels.csv")
            res = replay.replay(sorted(d.glob("*.pcap")), kernel=k)
            c = score.score_generated(res.flows, labels)
            got = {score.flow_id(r["capture"], r["proto"], r["a"], r["b"]): r["class"] for r in res.flows}
            ndpi: dict[tuple, str] | None = {}
            for pcap in sorted(d.glob("*.pcap")):
                lab = ndpi_labels(pcap)
                ndpi = None if lab is None or ndpi is None else {**ndpi, **lab}
            for lab in labels:
                fid = score.flow_id(lab["capture"], lab["proto"], lab["endpoint_a"], lab["endpoint_b"])
                row = per_kind[lab["label"]][lab["class"]]
                want_skype = lab["class"].startswith("skype-")
                g = got.get(fid, "missing")
                row["flows"] += 1
                row["skyguard"] += g == lab["class"] or (not want_skype and not g.startswith("skype-"))
                if ndpi is not None:
                    nl = ndpi.get(fid, "Unknown")  # ndpiReader's CSV leaves undetected flows out
                    row["ndpi"] += _ndpi_skype(nl) == want_skype
                    row["ndpi:" + nl] += 1
            for exp, row in c.matrix.items():
                for got, n in row.items():
                    conf.matrix[exp][got] += n
            ttv += time_to_verdict(res, [lab for lab in labels if lab["label"] in PHONE_KINDS])
            pk += sum(c.packets for c in res.captures)
            secs += sum(c.seconds for c in res.captures)
    hits = [t for t in ttv if t["verdict"]]
    per_kind_ttv = {}
    for kind in PHONE_KINDS:
        ks = [t for t in hits if t["capture"] == f"{kind}.pcap"]
        if ks:
            per_kind_ttv[kind] = {"calls": len([t for t in ttv if t["capture"] == f"{kind}.pcap"]),
                                  "decided": len(ks),
                                  "packets_median": statistics.median(t["packets"] for t in ks),
                                  "packets_max": max(t["packets"] for t in ks),
                                  "ms_median": round(statistics.median(t["ms"] for t in ks), 1),
                                  "ms_max": round(max(t["ms"] for t in ks), 1)}
    ms = [t["ms"] for t in hits]
    npk = [t["packets"] for t in hits]
    recall = {cls: round(conf.recall(cls), 4) for cls in sorted(conf.matrix)}
    return {"seeds": seeds, "matrix": {e: dict(r) for e, r in conf.matrix.items()}, "recall": recall,
            "false_skype_out": conf.false_out(), "table": conf.table(),
            "phone_calls": len(ttv), "phone_verdicts": len(hits),
            "ttv_ms": {"median": statistics.median(ms) if ms else None, "max": max(ms) if ms else None},
            "ttv_packets": {"median": statistics.median(npk) if npk else None, "max": max(npk) if npk else None,
                            "target_max": 150},
            "ttv_per_kind": per_kind_ttv, "kinds": kinds_rows(per_kind),
            "packets": pk, "seconds": secs}


def kinds_rows(per_kind: dict[str, dict[str, Counter]]) -> list[dict]:
    """One row per (kind, expected class): flows, skyguard right (the class; for `other`, anything not Skype), nDPI
    right (a Skype/Teams label for Skype classes, any other label for `other`), nDPI's commonest label."""
    out = []
    for kind in sorted(per_kind):
        for cls, c in sorted(per_kind[kind].items()):
            labels = Counter({k[5:]: v for k, v in c.items() if k.startswith("ndpi:")})
            out.append({"kind": kind, "class": cls, "flows": c["flows"], "skyguard": c["skyguard"],
                        "ndpi": c["ndpi"] if labels else None,
                        "ndpi_label": labels.most_common(1)[0][0] if labels else None})
    return out


def measure(seeds: list[int], cdir: Path = CAPTURES) -> dict:
    with Kernel(replay=True) as k:
        out = {"generated": generated(k, seeds)}
        if (cdir / "labels.csv").exists():
            out["captures"] = shared_captures(k, cdir)
    return out


def format_table(res: dict) -> str:
    lines = []
    if "captures" in res:
        s = res["captures"]["score"]
        lines.append("shared captures vs nDPI labels: recall per family")
        for fam, c in s["families"].items():
            lines.append(f"  {fam:12} {c['hit']:4}/{c['total']:<4} {c['recall']:.1%}")
        lines.append(f"  false positives {s['false_positives']}/{s['negatives']} = {s['fp_rate']:.2%}")
    g = res["generated"]
    lines.append(f"generated traffic, seeds {g['seeds']}: confusion matrix")
    lines.append(g["table"])
    lines.append(f"flows of another class called skype-out: {g['false_skype_out']}")
    t, p = g["ttv_ms"], g["ttv_packets"]
    lines.append(f"phone calls: {g['phone_verdicts']}/{g['phone_calls']} reached skype-out; time to verdict "
                 f"median {p['median']} / max {p['max']} packets of the flow (target <= 150), "
                 f"median {t['median']:.0f} / max {t['max']:.0f} ms")
    for kind, v in g["ttv_per_kind"].items():
        lines.append(f"  {kind:12} {v['decided']}/{v['calls']} decided; packets median {v['packets_median']} max "
                     f"{v['packets_max']}; ms median {v['ms_median']} max {v['ms_max']}")
    lines.append("per kind (skyguard: expected class, for `other` anything not Skype; nDPI: Skype/Teams label or not)")
    lines.append(f"  {'kind':16} {'class':16} {'flows':>5} {'skyguard':>9} {'nDPI':>9}  nDPI's commonest label")
    for r in g["kinds"]:
        nd = f"{r['ndpi'] / r['flows']:.1%}" if r["ndpi"] is not None else "n/a"
        lines.append(f"  {r['kind']:16} {r['class']:16} {r['flows']:5} {r['skyguard'] / r['flows']:9.1%} {nd:>9}"
                     f"  {r['ndpi_label'] or ''}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--captures", default=str(CAPTURES))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = measure([int(s) for s in args.seeds.split(",") if s], Path(args.captures))
    if args.json:
        res["generated"].pop("table", None)
    print(json.dumps(res, default=str) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
