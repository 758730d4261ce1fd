"""Policy files (TOML) -> validated Policy. No bcc here: this module knows only `wire` (and `names`).

File format (see policies/*.toml for commented examples)::

    name = "block-pc-to-phone"          # required, [a-z0-9._-]{1,64}
    [class.<class>]                     # one table per class in wire.CLASS_NAMES; a missing class passes
    action = "pass" | "drop" | "mark"   # default "pass"
    dscp = 0..63                        # REQUIRED with action = "mark", REFUSED otherwise (see below)
    log = true | false                  # default false
    fwmark = 1..0xffffffff              # firewall mark for nftables/tc/ip rule (any action but "drop")
    fwmark_mask = 1..0xffffffff         # the mark's bits skyguard owns (default all); fwmark must fit inside it
    [malformed]                         # packets that fail to parse (slot wire.POL_MALFORMED)
    action = "pass" | "drop"            # default "pass"; "mark" is refused (the IP header did not parse)
    log = true | false
    [blocked]                           # manually blocked addresses (slot wire.POL_BLOCKED): always dropped
    dscp = 0..63                        # default 0; `action`, if written, must be "drop"
    log = true | false
    [pstn]            prefixes = [CIDR...], names = [DNS name...]   # PSTN gateways / SBCs
    [microsoft_media] prefixes = [CIDR...]   # absent: DEFAULT_MSMEDIA_PREFIXES; an explicit list replaces it
                      feed = PATH            # Microsoft's endpoints JSON file: its Skype Optimize ranges join
                                             # the listed prefixes, and the built-in ones are no longer used
    [exempt]          prefixes = [CIDR...]   # never classified or touched
    [skype]           names = [DNS name...]  # service name suffixes added to names.BUILTIN_SKYPE_NAMES
    [direct_routing]  media_prefixes = [CIDR...]  # Microsoft's Direct Routing media processors (SBC <-> processor
                                             # media is skype-out, reason dr-media); absent: DEFAULT_DR_MEDIA_PREFIXES
    [qos]             media = true | false   # default false: mark Skype/Teams media (skype-p2p, skype-out,
                                             # skype-relay, unless their action is drop) by media kind
                      audio = [lo, hi], video = [lo, hi], sharing = [lo, hi]   # client ports (Teams QoS defaults)
                      audio_dscp = 0..63, video_dscp = 0..63, sharing_dscp = 0..63   # default 46, 34, 18

Decision on `dscp`: it is only meaningful when the action rewrites DSCP, so it is refused with "pass" and "drop".
A `dscp` written under a class whose action was forgotten would otherwise silently do nothing.

A refused file raises one PolicyError that lists every refusal found (up to MAX_ERRORS), one "file:line: reason" per
line of its str(). Lines are counted by "\\n" (as tomllib does), starting at 1; 0 means unknown and is left out
("file: reason"). Semantic errors point at the offending key, table header or array element. Unknown keys and tables
are errors. No other exception escapes parse_policy/load_policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import ipaddress
import re
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skyguard import names as names_mod
from skyguard import wire
from skyguard.endpoints import parse_prefix
from skyguard.feed import Feed, FeedError, load_feed, resolve
from skyguard.tomlpos import KeyPath, Locator, syntax_error_position

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Microsoft 365 endpoint set 11's media ranges plus two of its earlier editions' (52.120.0.0/14, 13.107.64.0/18); where
# each comes from: docs/signatures.md, "Microsoft's media ranges and ports".
DEFAULT_MSMEDIA_PREFIXES: tuple[str, ...] = (
    "52.112.0.0/14",
    "52.122.0.0/15",
    "52.120.0.0/14",
    "13.107.64.0/18",
    "2603:1063::/38",
)
# Direct Routing media processors (docs/signatures.md, "Teams Phone at a company's edge": "Plan Direct Routing"):
# Microsoft's cloud, then GCC High and DoD.
DEFAULT_DR_MEDIA_PREFIXES: tuple[str, ...] = ("52.112.0.0/14", "52.120.0.0/14", "52.127.88.0/21", "52.127.64.0/21")
# Teams QoS guidance (docs/signatures.md, "DSCP marking"): (name, default client ports, default DSCP) per media kind,
# in the order the kernel tries them (struct sg_qos)
QOS_KINDS: tuple[tuple[str, tuple[int, int], int], ...] = (
    ("audio", (50000, 50019), 46), ("video", (50020, 50039), 34), ("sharing", (50040, 50059), 18))
QOS_CLASSES = (wire.P2P, wire.OUT, wire.RELAY)  # the media classes
MAX_POLICY_BYTES = 1 << 20
NAME_RE = re.compile(r"[a-z0-9._-]{1,64}")


@dataclass(frozen=True)
class QosKind:
    """One media kind of [qos]: client ports lo..hi marked with dscp."""

    name: str
    lo: int
    hi: int
    dscp: int


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
    host_corr_s: int = 60  # host correlation window (classify.py), 0 = off
    feed: Feed | None = None  # Microsoft's endpoint feed, read at load time; its ranges are in msmedia_prefixes
    drmedia_prefixes: tuple[Network, ...] = ()  # Direct Routing media processors
    qos_kinds: tuple[QosKind | None, ...] = (None, None, None)  # [qos] media kinds, None when [qos] media is off
    fwmarks: dict[int, tuple[int, int]] = field(default_factory=dict)  # class id -> (fwmark, fwmark_mask)
    loaded_ns: int = 0  # time.time_ns() when loaded
    digest: str = ""  # sha256 of the file text
    extra: dict = field(default_factory=dict, compare=False)

    def slot(self, cls_or_slot: int) -> wire.PolicySlot:
        return self.slots[cls_or_slot]


class PolicyError(Exception):
    """A refused policy: one or more (line, reason), each written "file:line: reason" (line 0, unknown: "file: reason").

    `line` and `reason` are the first error's; `errors` lists them all (at most MAX_ERRORS, in file order), so an
    operator fixes a file in one pass instead of one run per mistake.
    """

    def __init__(self, path: str, line: int, reason: str, more: tuple[tuple[int, str], ...] = ()) -> None:
        super().__init__(path, line, reason, more)
        self.path = path
        self.line = line
        self.reason = reason
        self.more = tuple(more)

    @property
    def errors(self) -> list[tuple[int, str]]:
        return [(self.line, self.reason), *self.more]

    def lines(self) -> list[str]:
        return [f"{self.path}:{ln}: {r}" if ln else f"{self.path}: {r}" for ln, r in self.errors]

    def __str__(self) -> str:
        return "\n".join(self.lines())


MAX_ERRORS = 20  # a file with more mistakes than this is most likely not a policy at all

# Keys of skyguardd's own config file (daemon/config.py): a policy check that meets them says which file it was given.
DAEMON_CONFIG_KEYS = ("interfaces", "xdp_mode", "policy", "flows_max", "window", "socket", "socket_mode",
                      "socket_group", "log_format", "log_level", "pin_path", "on_stop", "foreign_xdp", "stats_interval",
                      "metrics_listen", "ipfix_collector", "ipfix_active_timeout", "ipfix_domain",
                      "ipfix_template_refresh", "ipfix_template_refresh_packets", "ipfix_mtu", "idle_timeout")


# ---------------------------------------------------------------------------------------------------------------------
# Validation

_TOP_KEYS = ("name", "class", "malformed", "blocked", "pstn", "microsoft_media", "exempt", "skype", "direct_routing",
             "qos")
_QOS_KEYS = ("media", *(k for name, _p, _d in QOS_KINDS for k in (name, f"{name}_dscp")))
_CLASS_KEYS = ("action", "dscp", "log", "fwmark", "fwmark_mask")
_MALFORMED_KEYS = ("action", "log")
_BLOCKED_KEYS = ("action", "dscp", "log")


def _type_name(v: object) -> str:
    if isinstance(v, bool):
        return "boolean"
    return {str: "string", int: "integer", float: "float", list: "array", dict: "table"}.get(type(v), "date/time")


def _hint(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _dotted(path: KeyPath) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class _TooMany(Exception):
    """MAX_ERRORS reached: stop checking."""


class _Checker:
    """Checks a parsed document and collects every refusal. Each check raises PolicyError for its own item;
    `part()` records it and lets the checks of the other items run, so one bad key does not hide the next."""

    def __init__(self, text: str, path: str, feed_override: str | None = None) -> None:
        self.text = text
        self.path = path
        self.feed_override = feed_override
        self.loc = Locator(text)
        self.errors: list[tuple[int, str]] = []
        self.fwmarks: dict[int, tuple[int, int]] = {}

    def fail(self, where: KeyPath, reason: str, line: int | None = None) -> PolicyError:
        return PolicyError(self.path, self.loc.line(where) if line is None else line, reason)

    def note(self, e: PolicyError) -> None:
        self.errors.append((e.line, e.reason))
        if len(self.errors) >= MAX_ERRORS:
            raise _TooMany

    @contextlib.contextmanager
    def part(self) -> Iterator[None]:
        try:
            yield
        except PolicyError as e:
            self.note(e)

    def table(self, doc: dict, key: str, allowed: tuple[str, ...], where: KeyPath) -> dict | None:
        if key not in doc:
            return None
        val = doc[key]
        if not isinstance(val, dict):
            raise self.fail(where, f"{_dotted(where)} must be a table, not {_type_name(val)}")
        for k in val:
            if k not in allowed:
                self.note(self.fail(
                    where + (k,),
                    f"unknown key {_dotted(where + (k,))!r} (allowed in [{_dotted(where)}]: {', '.join(allowed)})"
                    + _hint(k, allowed),
                ))
        return {k: v for k, v in val.items() if k in allowed}

    def action(self, tbl: dict, where: KeyPath, allowed: tuple[str, ...], default: str) -> str:
        a = tbl.get("action", default)
        w = where + ("action",)
        if not isinstance(a, str):
            raise self.fail(w, f"{_dotted(w)} must be a string ({' | '.join(allowed)}), not {_type_name(a)}")
        if a not in allowed:
            hint = _hint(a, allowed)
            raise self.fail(w, f"{_dotted(w)}: unknown action {a!r} (expected {' | '.join(allowed)}){hint}")
        return a

    def dscp(self, tbl: dict, where: KeyPath) -> int:
        d = tbl["dscp"]
        w = where + ("dscp",)
        if not isinstance(d, int) or isinstance(d, bool):
            raise self.fail(w, f"{_dotted(w)} must be an integer 0..63, not {_type_name(d)}")
        if not 0 <= d <= 63:
            raise self.fail(w, f"{_dotted(w)} = {d} is out of range (DSCP is 0..63)")
        return d

    def window(self, tbl: dict | None, where: KeyPath, key: str, default: int, top: int) -> int:
        if tbl is None or key not in tbl:
            return default
        v, w = tbl[key], where + (key,)
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.fail(w, f"{_dotted(w)} must be an integer 0..{top} (seconds, 0 = off), not {_type_name(v)}")
        if not 0 <= v <= top:
            raise self.fail(w, f"{_dotted(w)} = {v} is out of range (0..{top} seconds, 0 = off)")
        return v

    def log(self, tbl: dict, where: KeyPath) -> bool:
        v = tbl.get("log", False)
        if not isinstance(v, bool):
            raise self.fail(where + ("log",), f"{_dotted(where + ('log',))} must be true or false, not {_type_name(v)}")
        return v

    def str_list(self, tbl: dict, key: str, where: KeyPath) -> list[tuple[str, KeyPath]] | None:
        if key not in tbl:
            return None
        w = where + (key,)
        val = tbl[key]
        if not isinstance(val, list):
            raise self.fail(w, f"{_dotted(w)} must be an array of strings, not {_type_name(val)}")
        out = []
        for i, item in enumerate(val):
            if not isinstance(item, str):
                self.note(self.fail(w + (i,), f"{_dotted(w + (i,))} must be a string, not {_type_name(item)}"))
                continue
            out.append((item, w + (i,)))
        return out

    def prefixes(self, tbl: dict | None, where: KeyPath, key: str = "prefixes") -> tuple[Network, ...] | None:
        if tbl is None:
            return None
        items = self.str_list(tbl, key, where)
        if items is None:
            return None
        seen: dict[Network, KeyPath] = {}
        for raw, w in items:
            try:
                net = parse_prefix(raw)
            except ValueError as e:
                self.note(self.fail(w, f"{_dotted(w)}: {e}"))
                continue
            if net in seen:
                self.note(self.fail(
                    w, f"{_dotted(w)}: duplicate prefix {str(net)!r} (already at line {self.loc.line(seen[net])})"
                ))
                continue
            seen[net] = w
        return tuple(seen)

    def dns_names(self, tbl: dict | None, where: KeyPath) -> tuple[str, ...] | None:
        if tbl is None:
            return None
        items = self.str_list(tbl, "names", where)
        if items is None:
            return None
        seen: dict[str, KeyPath] = {}
        for raw, w in items:
            if not names_mod.valid_dns_name(raw):
                self.note(self.fail(w, f"{_dotted(w)}: {raw!r} is not a valid DNS name"))
                continue
            n = names_mod.normalize(raw)
            if n in seen:
                self.note(self.fail(
                    w, f"{_dotted(w)}: duplicate name {n!r} (already at line {self.loc.line(seen[n])})"))
                continue
            seen[n] = w
        return tuple(seen)

    def feed(self, tbl: dict | None) -> Feed | None:
        """Read the feed `microsoft_media.feed` names (or the override: `skyguard policy check --feed`); a refused
        feed is a refusal of the policy at the `feed` key's line, with the feed's own file:line:column."""
        w: KeyPath = ("microsoft_media", "feed")
        if tbl is None or "feed" not in tbl:
            if self.feed_override:
                raise self.fail((), f"microsoft_media.feed is not set: the feed file {self.feed_override} would not "
                                "be read", line=0)
            return None
        val = tbl["feed"]
        if not isinstance(val, str) or not val.strip() or "\0" in val:
            what = _type_name(val) if not isinstance(val, str) else repr(val)
            raise self.fail(w, f"microsoft_media.feed must be the path of Microsoft's endpoints JSON file, not {what}")
        try:
            return load_feed(self.feed_override or resolve(val, self.path))
        except FeedError as e:
            raise self.fail(w, f"microsoft_media.feed: {e}") from None

    def check(self, doc: dict) -> dict[str, Any]:
        """The Policy fields; raises PolicyError listing every refusal (in file order) if there was any."""
        try:
            fields = self._check(doc)
        except _TooMany:
            fields = None
            self.errors.append((0, f"stopped after {MAX_ERRORS} errors"))
        if self.errors:
            errs = sorted(self.errors[:MAX_ERRORS], key=lambda e: e[0] or 1 << 30) + self.errors[MAX_ERRORS:]
            raise PolicyError(self.path, errs[0][0], errs[0][1], tuple(errs[1:]))
        assert fields is not None
        return fields

    def _check(self, doc: dict) -> dict[str, Any]:
        config_keys = [k for k in doc if k in DAEMON_CONFIG_KEYS]
        if config_keys:
            # the likeliest mistake: the daemon's config passed where a policy was expected
            self.note(self.fail((), f"this is skyguardd's config file (it sets {', '.join(config_keys)}), not a "
                                "policy: skyguardd reads it with --config, and `skyguardd --config FILE --check` "
                                "checks it (with the policy it names)", line=1))
        for k in doc:
            if k not in _TOP_KEYS and k not in config_keys:
                hint = _hint(k, _TOP_KEYS)
                self.note(self.fail((k,), f"unknown key or table {k!r} (allowed: {', '.join(_TOP_KEYS)}){hint}"))
        nm = "x"
        with self.part():
            if "name" not in doc:
                raise self.fail((), 'missing required top-level key name (e.g. name = "my-policy")', line=1)
            nm = doc["name"]
            if not isinstance(nm, str):
                raise self.fail(("name",), f"name must be a string, not {_type_name(nm)}")
            if not NAME_RE.fullmatch(nm):
                raise self.fail(("name",), f"name {nm!r} must be 1..64 characters of a-z 0-9 . _ -")

        slots = [wire.PolicySlot() for _ in range(wire.POL_SLOTS)]
        classes = None
        with self.part():
            classes = self.table(doc, "class", wire.CLASS_NAMES, ("class",))
        for cname in classes or {}:
            with self.part():
                slots[wire.CLASS_IDS[cname]] = self._class(classes, cname)

        with self.part():
            mal = self.table(doc, "malformed", _MALFORMED_KEYS, ("malformed",))
            if mal is not None:
                w = ("malformed",)
                if mal.get("action") == "mark":
                    raise self.fail(
                        w + ("action",),
                        'malformed.action cannot be "mark" (the packet\'s IP header did not parse); use pass or drop',
                    )
                act = self.action(mal, w, ("pass", "drop"), "pass")
                slots[wire.POL_MALFORMED] = wire.PolicySlot(wire.ACTION_IDS[act], 0, self.log(mal, w))

        blocked = wire.PolicySlot(wire.DROP, 0, False)
        with self.part():
            blk = self.table(doc, "blocked", _BLOCKED_KEYS, ("blocked",))
            if blk is not None:
                w = ("blocked",)
                self.action(blk, w, ("drop",), "drop")
                dscp = self.dscp(blk, w) if "dscp" in blk else 0
                blocked = wire.PolicySlot(wire.DROP, dscp, self.log(blk, w))
        slots[wire.POL_BLOCKED] = blocked

        tables: dict[str, dict | None] = {}
        for key, allowed in (("pstn", ("prefixes", "names")), ("microsoft_media", ("prefixes", "feed")),
                             ("exempt", ("prefixes",)), ("skype", ("names", "host_correlation_s")),
                             ("direct_routing", ("media_prefixes",)), ("qos", _QOS_KEYS)):
            tables[key] = None
            with self.part():
                tables[key] = self.table(doc, key, allowed, (key,))

        def each(fn, default):  # one guarded check, with the value to use when it was refused
            with self.part():
                return fn()
            return default

        pstn_prefixes = each(lambda: self.prefixes(tables["pstn"], ("pstn",)), None) or ()
        pstn_names = each(lambda: self.dns_names(tables["pstn"], ("pstn",)), None) or ()
        msmedia = each(lambda: self.prefixes(tables["microsoft_media"], ("microsoft_media",)), None)
        feed = each(lambda: self.feed(tables["microsoft_media"]), None)
        if feed is not None:
            # the feed replaces the built-in list (which holds ranges Microsoft has since dropped); the policy's own
            # prefixes stay, e.g. for a relay Microsoft has not published yet
            msmedia = tuple(dict.fromkeys((*(msmedia or ()), *feed.prefixes)))
        elif msmedia is None:
            msmedia = tuple(ipaddress.ip_network(p) for p in DEFAULT_MSMEDIA_PREFIXES)
        exempt_prefixes = each(lambda: self.prefixes(tables["exempt"], ("exempt",)), None) or ()
        extra_names = each(lambda: self.dns_names(tables["skype"], ("skype",)), None) or ()
        skype_names = tuple(dict.fromkeys(names_mod.BUILTIN_SKYPE_NAMES + extra_names))
        host_corr = each(lambda: self.window(tables["skype"], ("skype",), "host_correlation_s", 60, 3600), 60)
        drmedia = each(lambda: self.prefixes(tables["direct_routing"], ("direct_routing",), "media_prefixes"), None)
        if drmedia is None:
            drmedia = tuple(ipaddress.ip_network(p) for p in DEFAULT_DR_MEDIA_PREFIXES)
        qos_kinds = each(lambda: self.qos(tables["qos"]), None) or (None, None, None)
        if qos_kinds[0] is not None:
            for c in QOS_CLASSES:
                if slots[c].action != wire.DROP:
                    slots[c] = dataclasses.replace(slots[c], qos=True)
        return {
            "name": nm,
            "slots": tuple(slots),  # after [qos], which sets the media classes' qos flag
            "pstn_prefixes": pstn_prefixes,
            "pstn_names": pstn_names,
            "msmedia_prefixes": msmedia,
            "exempt_prefixes": exempt_prefixes,
            "skype_names": skype_names,
            "host_corr_s": host_corr,
            "feed": feed,
            "drmedia_prefixes": drmedia,
            "qos_kinds": qos_kinds,
            "fwmarks": dict(self.fwmarks),
        }

    def qos(self, tbl: dict | None) -> tuple[QosKind, ...] | None:
        """[qos]: the media kinds when `media = true`, else None."""
        if tbl is None:
            return None
        media = tbl.get("media", False)
        if not isinstance(media, bool):
            raise self.fail(("qos", "media"), f"qos.media must be true or false, not {_type_name(media)}")
        kinds = []
        for name, (lo, hi), dscp in QOS_KINDS:
            with self.part():
                if name in tbl:
                    lo, hi = self.port_range(tbl[name], ("qos", name))
            with self.part():
                d, w = tbl.get(f"{name}_dscp", dscp), ("qos", f"{name}_dscp")
                if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= 63:
                    raise self.fail(w, f"{_dotted(w)} must be an integer 0..63 (DSCP)")
                dscp = d
            kinds.append(QosKind(name, lo, hi, dscp))
        return tuple(kinds) if media else None

    def port_range(self, v: object, where: KeyPath) -> tuple[int, int]:
        ok = (isinstance(v, list) and len(v) == 2 and all(isinstance(p, int) and not isinstance(p, bool) for p in v)
              and 1 <= v[0] <= v[1] <= 65535)
        if not ok:
            raise self.fail(where, f"{_dotted(where)} must be [first, last] ports, 1 <= first <= last <= 65535")
        return v[0], v[1]

    def _class(self, classes: dict, cname: str) -> wire.PolicySlot:
        """One class's slot; its action, dscp and log are checked each on their own (all their errors are noted)."""
        where = ("class", cname)
        ctbl = self.table(classes, cname, _CLASS_KEYS, where)
        act: str | None = None  # None: the action was refused (dscp is then checked for its range only)
        with self.part():
            act = self.action(ctbl, where, wire.ACTION_NAMES, "pass")
        log = False
        with self.part():
            log = self.log(ctbl, where)
        dscp = 0
        with self.part():
            if act == "mark" and "dscp" not in ctbl:
                raise self.fail(where + ("action",), f'{_dotted(where)}: action = "mark" needs dscp = 0..63')
            if act not in (None, "mark") and "dscp" in ctbl:
                reason = f'{_dotted(where)}: dscp is only allowed with action = "mark" (action is {act!r})'
                raise self.fail(where + ("dscp",), reason)
            if "dscp" in ctbl:
                dscp = self.dscp(ctbl, where)
        has_mark = False
        with self.part():
            has_mark = self._fwmark(ctbl, where, act, wire.CLASS_IDS[cname])
        return wire.PolicySlot(wire.ACTION_IDS.get(act or "pass", wire.PASS), dscp, log, fwmark=has_mark)

    def _fwmark(self, ctbl: dict, where: KeyPath, act: str | None, cid: int) -> bool:
        """fwmark / fwmark_mask of a class: a mark for the TC program to set on the class's passed packets."""
        if "fwmark" not in ctbl:
            if "fwmark_mask" in ctbl:
                raise self.fail(where + ("fwmark_mask",), f"{_dotted(where)}: fwmark_mask needs fwmark")
            return False
        vals = {}
        for key in ("fwmark", "fwmark_mask"):
            v, w = ctbl.get(key, 0xFFFFFFFF), where + (key,)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 0xFFFFFFFF:
                raise self.fail(w, f"{_dotted(w)} must be an integer 1..0xffffffff, not {v!r}")
            vals[key] = v
        mark, mask = vals["fwmark"], vals["fwmark_mask"]
        if act == "drop":
            reason = f'{_dotted(where)}: fwmark is not allowed with action = "drop" (a dropped packet is never marked)'
            raise self.fail(where + ("fwmark",), reason)
        if mark & ~mask:
            raise self.fail(where + ("fwmark",), f"{_dotted(where)}: fwmark {mark:#x} has bits outside fwmark_mask "
                            f"{mask:#x}")
        self.fwmarks[cid] = (mark, mask)
        return True


# ---------------------------------------------------------------------------------------------------------------------
# Entry points


def _syntax_error(text: str, path: str, e: tomllib.TOMLDecodeError) -> PolicyError:
    line, col, msg = syntax_error_position(text, e)
    if not line:
        return PolicyError(path, 0, f"TOML syntax error: {msg}")
    where = f"column {col}" if col is not None else "at end of file"
    return PolicyError(path, line, f"TOML syntax error: {msg} ({where})")


def parse_policy(text: str, path: str = "<string>", *, feed_override: str | None = None) -> Policy:
    """Validate a policy text; PolicyError (every refusal, file:line: reason) on any refusal, never another
    exception. A `[microsoft_media] feed` is read here (from `feed_override` instead, when given), so every load,
    reload and check reads the feed as it is now."""
    try:
        if not isinstance(text, str):
            raise PolicyError(path, 0, f"policy text must be a string, not {type(text).__name__}")
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise _syntax_error(text, path, e) from None
        fields = _Checker(text, path, feed_override).check(doc)
        return Policy(
            path=path,
            loaded_ns=time.time_ns(),
            digest=hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
            **fields,
        )
    except PolicyError:
        raise
    except Exception as e:  # noqa: BLE001 - the contract: nothing but PolicyError leaves this function
        raise PolicyError(path, 0, f"internal error while checking the policy: {type(e).__name__}: {e}") from e


def load_policy(path: str | Path, *, feed_override: str | None = None) -> Policy:
    """Read and validate a policy file (UTF-8, at most 1 MiB), with its feed (or `feed_override`)."""
    p = str(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError(p, 0, "no such file: the policy file does not exist") from None
    except OSError as e:
        raise PolicyError(p, 0, f"cannot read policy file: {e.strerror or e}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(p, 0, f"policy file is larger than {MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(p, data.count(b"\n", 0, e.start) + 1, f"not valid UTF-8 (byte {e.start})") from None
    return parse_policy(text, p, feed_override=feed_override)


def default_policy() -> Policy:
    """Observe only: every class passes, nothing logged, built-in Microsoft media prefixes and Skype names."""
    return dataclasses.replace(parse_policy('name = "default"\n', "<default>"), path=None)
