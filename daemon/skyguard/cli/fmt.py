"""Human output for the CLI: aligned tables, key/value blocks, event lines. Pure functions returning strings."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from skyguard import wire

FLOW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("proto", "PROTO"),
    ("a", "A"),
    ("b", "B"),
    ("vlan", "VLAN"),
    ("class", "CLASS"),
    ("reason", "REASON"),
    ("action", "ACTION"),
    ("packets", "PACKETS"),
    ("bytes", "BYTES"),
    ("dropped", "DROPPED"),
    ("duration", "DURATION"),
)


def class_name(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(wire.CLASS_NAMES):
        return wire.CLASS_NAMES[value]
    return "" if value is None else str(value)


def action_name(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(wire.ACTION_NAMES):
        return wire.ACTION_NAMES[value]
    return "" if value is None else str(value)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, Mapping):
        return " ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        sep = "; " if any(isinstance(v, Mapping) for v in value) else ","
        return sep.join(cell(v) for v in value) or "-"
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Columns (key, header) aligned with two spaces; numbers right-aligned, text left-aligned."""
    cells = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    right = [any(_numeric(r.get(k)) for r in rows) and all(_numeric(r.get(k)) or r.get(k) is None for r in rows)
             for k, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return "  ".join(parts).rstrip()

    return "\n".join([line([h for _, h in columns])] + [line(c) for c in cells])


def flatten(data: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            yield from flatten(v, name + ".")
        else:
            yield name, v


def kv(data: Mapping[str, Any]) -> str:
    """Nested maps as aligned `key  value` lines (nested keys joined by dots)."""
    items = list(flatten(data))
    if not items:
        return "(empty)"
    width = max(len(k) for k, _ in items)
    return "\n".join(f"{k.ljust(width)}  {cell(v)}".rstrip() for k, v in items)


def flow_row(flow: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(flow)
    row["class"] = class_name(flow.get("class"))
    row["action"] = action_name(flow.get("action"))
    first, last = flow.get("first_ns"), flow.get("last_ns")
    row["duration"] = f"{(last - first) / 1e9:.1f}s" if _numeric(first) and _numeric(last) and last >= first else "-"
    row["reason"] = flow.get("reason") or "-"
    return row


def flows_table(flows: Sequence[Mapping[str, Any]], total: int | None = None) -> str:
    """`total`: how many flows matched in the daemon; a footer says so when the table shows fewer."""
    columns = FLOW_COLUMNS
    if any("capture" in f for f in flows):
        columns = (("capture", "CAPTURE"), *columns)
    if not flows:
        return table([], columns) + "\n(no flows)"
    text = table([flow_row(f) for f in flows], columns)
    if total is not None and total > len(flows):
        text += f"\n({len(flows)} of {total} flows; --limit N for more)"
    return text


def expiry(expires_ns: Any, now_ns: int) -> str:
    """A block's expiry: `never`, or the time left and the wall-clock moment."""
    if not _numeric(expires_ns) or expires_ns <= 0:
        return "never"
    left = max(0.0, (expires_ns - now_ns) / 1e9)
    return f"in {left:.0f}s ({timestamp(expires_ns)})"


def blocks_table(blocks: Sequence[Mapping[str, Any]], now_ns: int) -> str:
    if not blocks:
        return "(no manual blocks)"
    rows = [{"prefix": b["prefix"], "expires": expiry(b["expires_ns"], now_ns)} for b in blocks]
    return table(rows, (("prefix", "PREFIX"), ("expires", "EXPIRES")))


def flow_detail(flow: Mapping[str, Any]) -> str:
    row = flow_row(flow)
    return kv({k: v for k, v in row.items() if v is not None})


def timestamp(ns: Any) -> str:
    """Wall-clock ns (as events carry when the daemon converts them) as ISO time; other values as they are."""
    if _numeric(ns) and ns > 10**17:  # after 1973 in ns: wall clock
        return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat(timespec="milliseconds")
    return cell(ns)


def event_line(ev: Mapping[str, Any]) -> str:
    """One line per event: time, type, flow, then the rest as key=value."""
    ev = dict(ev)
    parts = []
    for key in ("ts", "ts_ns", "time"):
        if key in ev:
            parts.append(timestamp(ev.pop(key)))
            break
    parts.append(str(ev.pop("type", ev.pop("event", "event"))))
    if "flow" in ev:
        flow = ev.pop("flow")
        parts.append(f"{flow.get('proto', '')} {flow.get('a', '')} <-> {flow.get('b', '')}".strip()
                     if isinstance(flow, Mapping) else str(flow))
    if "old" in ev or "new" in ev:
        parts.append(f"{class_name(ev.pop('old', None))} -> {class_name(ev.pop('new', None))}")
    for k in ("class", "action"):
        if k in ev:
            v = ev.pop(k)
            parts.append(f"{k}={class_name(v) if k == 'class' else action_name(v)}")
    parts.extend(f"{k}={cell(v)}" for k, v in ev.items())
    return " ".join(p for p in parts if p)
