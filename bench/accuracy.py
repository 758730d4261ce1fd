"""Accuracy: ../shared/captures against nDPI's labels, generated traffic against the generator's labels, and time to
verdict for phone calls (packets and ms from a call flow's first packet to skype-out).

Usage: bench/accuracy.py [--seeds 1,2,3] [--captures DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import ROOT

from skyguard.kernel.loader import Kernel  # noqa: E402
from skyguard.lab import (
    gen,
    score,  # noqa: E402
)
from skyguard.offline import replay

CAPTURES = ROOT.parent / "shared" / "captures"
PHONE_KINDS = ("legacy-e2o", "modern-sbc", "dns-pstn")


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
    pk = 0
    secs = 0.0
    with tempfile.TemporaryDirectory(prefix="sg-acc-") as td:
        for seed in seeds:
            d = Path(td) / str(seed)
            gen.generate(seed, d)
            labels = score.read_gen_labels(d / "labels.csv")
            res = replay.replay(sorted(d.glob("*.pcap")), kernel=k)
            c = score.score_generated(res.flows, labels)
            for exp, row in c.matrix.items():
                for got, n in row.items():
                    conf.matrix[exp][got] += n
            ttv += time_to_verdict(res, [lab for lab in labels if lab["label"] in PHONE_KINDS])
            pk += sum(c.packets for c in res.captures)
            secs += sum(c.seconds for c in res.captures)
    hits = [t for t in ttv if t["verdict"]]
    ms = [t["ms"] for t in hits]
    npk = [t["packets"] for t in hits]
    recall = {cls: round(conf.recall(cls), 4) for cls in sorted(conf.matrix)}
    return {"seeds": seeds, "matrix": {e: dict(r) for e, r in conf.matrix.items()}, "recall": recall,
            "false_skype_out": conf.false_out(), "table": conf.table(),
            "phone_calls": len(ttv), "phone_verdicts": len(hits),
            "ttv_ms": {"median": statistics.median(ms) if ms else None, "max": max(ms) if ms else None},
            "ttv_packets": {"median": statistics.median(npk) if npk else None, "max": max(npk) if npk else None,
                            "target_max": 150},
            "packets": pk, "seconds": secs}


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
