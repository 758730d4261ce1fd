"""Policy files (TOML) -> validated Policy. No bcc here: this module knows only `wire` (and `names`).

File format (see policies/*.toml for commented examples)::

    name = "block-pc-to-phone"          # required, [a-z0-9._-]{1,64}
    [class.<class>]                     # one table per class in wire.CLASS_NAMES; a missing class passes
    action = "pass" | "drop" | "mark"   # default "pass"
    dscp = 0..63                        # REQUIRED with action = "mark", REFUSED otherwise (see below)
    log = true | false                  # default false
    [malformed]                         # packets that fail to parse (slot wire.POL_MALFORMED)
    action = "pass" | "drop"            # default "pass"; "mark" is refused (the IP header did not parse)
    log = true | false
    [blocked]                           # manually blocked addresses (slot wire.POL_BLOCKED): always dropped
    dscp = 0..63                        # default 0; `action`, if written, must be "drop"
    log = true | false
    [pstn]            prefixes = [CIDR...], names = [DNS name...]   # PSTN gateways / SBCs
    [microsoft_media] prefixes = [CIDR...]   # absent: DEFAULT_MSMEDIA_PREFIXES; an explicit list replaces it
    [exempt]          prefixes = [CIDR...]   # never classified or touched
    [skype]           names = [DNS name...]  # service name suffixes added to names.BUILTIN_SKYPE_NAMES

Decision on `dscp`: it is only meaningful when the action rewrites DSCP, so it is refused with "pass" and "drop".
A `dscp` written under a class whose action was forgotten would otherwise silently do nothing.

Every refusal is a PolicyError whose str() is "file:line: reason". Lines are counted by "\\n" (as tomllib does),
starting at 1; 0 means unknown. Semantic errors point at the offending key, table header or array element.
Unknown keys and tables are errors. No other exception escapes parse_policy/load_policy.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skyguard import names as names_mod
from skyguard import wire

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# SIGNATURES.md "Modern Skype/Teams media" (Microsoft 365 endpoint set 11): the 2023 list, the 2022 /14, the
# 13.107.64.0/18 that nDPI dropped in 2024 (still in Microsoft's list) and the IPv6 media prefix.
DEFAULT_MSMEDIA_PREFIXES: tuple[str, ...] = (
    "52.112.0.0/14",
    "52.122.0.0/15",
    "52.120.0.0/14",
    "13.107.64.0/18",
    "2603:1063::/38",
)
MAX_POLICY_BYTES = 1 << 20
NAME_RE = re.compile(r"[a-z0-9._-]{1,64}")


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
    loaded_ns: int = 0  # time.time_ns() when loaded
    digest: str = ""  # sha256 of the file text
    extra: dict = field(default_factory=dict, compare=False)

    def slot(self, cls_or_slot: int) -> wire.PolicySlot:
        return self.slots[cls_or_slot]


class PolicyError(Exception):
    """A refused policy: str(e) == f"{path}:{line}: {reason}" (line 0 when unknown)."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(path, line, reason)
        self.path = path
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


# ---------------------------------------------------------------------------------------------------------------------
# Locating keys in the text (tomllib gives no positions)

Path_ = tuple[str | int, ...]


class _Locator:
    """Maps key paths (("class", "skype-out", "action"), ("pstn", "prefixes", 2), ...) to 1-based line numbers.

    Runs only on text tomllib already accepted, so it can be a small, forgiving scanner: tables, dotted and quoted
    keys, strings of all four kinds, arrays (element by element, across lines) and inline tables. Anything it cannot
    follow stops the scan; unknown paths fall back to their closest recorded parent, then to 0.
    """

    _BARE = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.where: dict[Path_, int] = {}
        self._aot: dict[Path_, int] = {}
        try:
            self._document()
        except (IndexError, ValueError, tomllib.TOMLDecodeError, RecursionError):
            pass  # keep what was found

    # -- public
    def line(self, path: Path_) -> int:
        for k in range(len(path), 0, -1):
            if path[:k] in self.where:
                return self.where[path[:k]]
        return 0

    # -- scanner
    def _lineno(self) -> int:
        return self.s.count("\n", 0, self.i) + 1

    def _record(self, path: Path_, line: int) -> None:
        for k in range(1, len(path) + 1):
            self.where.setdefault(path[:k], line)

    def _peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def _skip_blank(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t" or (newlines and c in "\r\n"):
                self.i += 1
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            else:
                return

    def _document(self) -> None:
        table: Path_ = ()
        while True:
            self._skip_blank(newlines=True)
            if self.i >= len(self.s):
                return
            line = self._lineno()
            if self._peek(2) == "[[":
                self.i += 2
                path = self._key()
                self._expect("]]")
                idx = self._aot.get(path, 0)
                self._aot[path] = idx + 1
                table = path + (idx,)
                self._record(table, line)
            elif self._peek() == "[":
                self.i += 1
                table = self._key()
                self._expect("]")
                self._record(table, line)
            else:
                key = self._key()
                self._record(table + key, line)
                self._expect("=")
                self._value(table + key)

    def _expect(self, tok: str) -> None:
        self._skip_blank(newlines=False)
        if not self.s.startswith(tok, self.i):
            raise ValueError(f"expected {tok!r}")
        self.i += len(tok)

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip_blank(newlines=False)
            c = self._peek()
            if c in "\"'":
                start = self.i
                self._string()
                parts.append(tomllib.loads("k = " + self.s[start : self.i])["k"])
            else:
                m = self._BARE.match(self.s, self.i)
                if not m:
                    raise ValueError("expected a key")
                parts.append(m.group())
                self.i = m.end()
            self._skip_blank(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self.i += 1

    def _string(self) -> None:
        for quote in ('"""', "'''"):
            if self.s.startswith(quote, self.i):
                end = self.i + 3
                while True:
                    end = self.s.index(quote, end)
                    if quote == '"""' and self._escaped(end):
                        end += 1
                        continue
                    break
                # the delimiter is the last three of a run of up to five quotes (content may end with one or two)
                run = 3
                while run < 5 and end + run < len(self.s) and self.s[end + run] == quote[0]:
                    run += 1
                self.i = end + run
                return
        q = self.s[self.i]
        end = self.i + 1
        while True:
            end = self.s.index(q, end)
            if q == '"' and self._escaped(end):
                end += 1
                continue
            break
        self.i = end + 1

    def _escaped(self, pos: int) -> bool:
        n = 0
        while pos - 1 - n >= 0 and self.s[pos - 1 - n] == "\\":
            n += 1
        return n % 2 == 1

    def _value(self, path: Path_) -> None:
        self._skip_blank(newlines=False)
        c = self._peek()
        if c in "\"'":
            self._string()
        elif c == "[":
            self.i += 1
            idx = 0
            while True:
                self._skip_blank(newlines=True)
                if self._peek() == "]":
                    self.i += 1
                    return
                self._record(path + (idx,), self._lineno())
                self._value(path + (idx,))
                idx += 1
                self._skip_blank(newlines=True)
                if self._peek() == ",":
                    self.i += 1
        elif c == "{":
            self.i += 1
            while True:
                self._skip_blank(newlines=False)
                if self._peek() == "}":
                    self.i += 1
                    return
                line = self._lineno()
                key = self._key()
                self._record(path + key, line)
                self._expect("=")
                self._value(path + key)
                self._skip_blank(newlines=False)
                if self._peek() == ",":
                    self.i += 1
        else:
            m = re.compile(r"[^,\]}\n#]+").match(self.s, self.i)
            if not m:
                raise ValueError("expected a value")
            self.i = m.end()


# ---------------------------------------------------------------------------------------------------------------------
# Validation

_TOP_KEYS = ("name", "class", "malformed", "blocked", "pstn", "microsoft_media", "exempt", "skype")
_CLASS_KEYS = ("action", "dscp", "log")
_MALFORMED_KEYS = ("action", "log")
_BLOCKED_KEYS = ("action", "dscp", "log")
_TOML_ERR_POS = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")


def _type_name(v: object) -> str:
    if isinstance(v, bool):
        return "boolean"
    return {str: "string", int: "integer", float: "float", list: "array", dict: "table"}.get(type(v), "date/time")


def _hint(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _dotted(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class _Checker:
    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.loc = _Locator(text)

    def fail(self, where: Path_, reason: str, line: int | None = None) -> PolicyError:
        return PolicyError(self.path, self.loc.line(where) if line is None else line, reason)

    def table(self, doc: dict, key: str, allowed: tuple[str, ...], where: Path_) -> dict | None:
        if key not in doc:
            return None
        val = doc[key]
        if not isinstance(val, dict):
            raise self.fail(where, f"{_dotted(where)} must be a table, not {_type_name(val)}")
        for k in val:
            if k not in allowed:
                raise self.fail(
                    where + (k,),
                    f"unknown key {_dotted(where + (k,))!r} (allowed in [{_dotted(where)}]: {', '.join(allowed)})"
                    + _hint(k, allowed),
                )
        return val

    def action(self, tbl: dict, where: Path_, allowed: tuple[str, ...], default: str) -> str:
        a = tbl.get("action", default)
        w = where + ("action",)
        if not isinstance(a, str):
            raise self.fail(w, f"{_dotted(w)} must be a string ({' | '.join(allowed)}), not {_type_name(a)}")
        if a not in allowed:
            hint = _hint(a, allowed)
            raise self.fail(w, f"{_dotted(w)}: unknown action {a!r} (expected {' | '.join(allowed)}){hint}")
        return a

    def dscp(self, tbl: dict, where: Path_) -> int:
        d = tbl["dscp"]
        w = where + ("dscp",)
        if not isinstance(d, int) or isinstance(d, bool):
            raise self.fail(w, f"{_dotted(w)} must be an integer 0..63, not {_type_name(d)}")
        if not 0 <= d <= 63:
            raise self.fail(w, f"{_dotted(w)} = {d} is out of range (DSCP is 0..63)")
        return d

    def window(self, tbl: dict | None, where: Path_, key: str, default: int, top: int) -> int:
        if tbl is None or key not in tbl:
            return default
        v, w = tbl[key], where + (key,)
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.fail(w, f"{_dotted(w)} must be an integer 0..{top} (seconds, 0 = off), not {_type_name(v)}")
        if not 0 <= v <= top:
            raise self.fail(w, f"{_dotted(w)} = {v} is out of range (0..{top} seconds, 0 = off)")
        return v

    def log(self, tbl: dict, where: Path_) -> bool:
        v = tbl.get("log", False)
        if not isinstance(v, bool):
            raise self.fail(where + ("log",), f"{_dotted(where + ('log',))} must be true or false, not {_type_name(v)}")
        return v

    def str_list(self, tbl: dict, key: str, where: Path_) -> list[tuple[str, Path_]] | None:
        if key not in tbl:
            return None
        w = where + (key,)
        val = tbl[key]
        if not isinstance(val, list):
            raise self.fail(w, f"{_dotted(w)} must be an array of strings, not {_type_name(val)}")
        out = []
        for i, item in enumerate(val):
            if not isinstance(item, str):
                raise self.fail(w + (i,), f"{_dotted(w + (i,))} must be a string, not {_type_name(item)}")
            out.append((item, w + (i,)))
        return out

    def prefixes(self, tbl: dict | None, where: Path_) -> tuple[Network, ...] | None:
        if tbl is None:
            return None
        items = self.str_list(tbl, "prefixes", where)
        if items is None:
            return None
        seen: dict[Network, Path_] = {}
        for raw, w in items:
            s = raw.strip()
            try:
                net = ipaddress.ip_network(s, strict=True)
            except ValueError as e:
                try:
                    loose = ipaddress.ip_network(s, strict=False)
                except ValueError:
                    raise self.fail(w, f"{_dotted(w)}: {raw!r} is not a CIDR prefix ({e})") from None
                raise self.fail(w, f"{_dotted(w)}: {raw!r} has host bits set; did you mean {str(loose)!r}?") from None
            if net in seen:
                raise self.fail(
                    w, f"{_dotted(w)}: duplicate prefix {str(net)!r} (already at line {self.loc.line(seen[net])})"
                )
            seen[net] = w
        return tuple(seen)

    def dns_names(self, tbl: dict | None, where: Path_) -> tuple[str, ...] | None:
        if tbl is None:
            return None
        items = self.str_list(tbl, "names", where)
        if items is None:
            return None
        seen: dict[str, Path_] = {}
        for raw, w in items:
            if not names_mod.valid_dns_name(raw):
                raise self.fail(w, f"{_dotted(w)}: {raw!r} is not a valid DNS name")
            n = names_mod.normalize(raw)
            if n in seen:
                raise self.fail(w, f"{_dotted(w)}: duplicate name {n!r} (already at line {self.loc.line(seen[n])})")
            seen[n] = w
        return tuple(seen)

    def check(self, doc: dict) -> dict[str, Any]:
        for k in doc:
            if k not in _TOP_KEYS:
                hint = _hint(k, _TOP_KEYS)
                raise self.fail((k,), f"unknown key or table {k!r} (allowed: {', '.join(_TOP_KEYS)}){hint}")
        if "name" not in doc:
            raise self.fail((), 'missing required top-level key name (e.g. name = "my-policy")', line=1)
        nm = doc["name"]
        if not isinstance(nm, str):
            raise self.fail(("name",), f"name must be a string, not {_type_name(nm)}")
        if not NAME_RE.fullmatch(nm):
            raise self.fail(("name",), f"name {nm!r} must be 1..64 characters of a-z 0-9 . _ -")

        slots = [wire.PolicySlot() for _ in range(wire.POL_SLOTS)]
        classes = self.table(doc, "class", wire.CLASS_NAMES, ("class",))
        for cname, ctbl in (classes or {}).items():
            where = ("class", cname)
            ctbl = self.table(classes, cname, _CLASS_KEYS, where)
            act = self.action(ctbl, where, wire.ACTION_NAMES, "pass")
            if act == "mark" and "dscp" not in ctbl:
                raise self.fail(where + ("action",), f'{_dotted(where)}: action = "mark" needs dscp = 0..63')
            if act != "mark" and "dscp" in ctbl:
                reason = f'{_dotted(where)}: dscp is only allowed with action = "mark" (action is {act!r})'
                raise self.fail(where + ("dscp",), reason)
            dscp = self.dscp(ctbl, where) if act == "mark" else 0
            slots[wire.CLASS_IDS[cname]] = wire.PolicySlot(wire.ACTION_IDS[act], dscp, self.log(ctbl, where))

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

        blk = self.table(doc, "blocked", _BLOCKED_KEYS, ("blocked",))
        blocked = wire.PolicySlot(wire.DROP, 0, False)
        if blk is not None:
            w = ("blocked",)
            self.action(blk, w, ("drop",), "drop")
            dscp = self.dscp(blk, w) if "dscp" in blk else 0
            blocked = wire.PolicySlot(wire.DROP, dscp, self.log(blk, w))
        slots[wire.POL_BLOCKED] = blocked

        pstn = self.table(doc, "pstn", ("prefixes", "names"), ("pstn",))
        msm = self.table(doc, "microsoft_media", ("prefixes",), ("microsoft_media",))
        exempt = self.table(doc, "exempt", ("prefixes",), ("exempt",))
        skype = self.table(doc, "skype", ("names", "host_correlation_s"), ("skype",))

        pstn_prefixes = self.prefixes(pstn, ("pstn",)) or ()
        pstn_names = self.dns_names(pstn, ("pstn",)) or ()
        msmedia = self.prefixes(msm, ("microsoft_media",))
        if msmedia is None:
            msmedia = tuple(ipaddress.ip_network(p) for p in DEFAULT_MSMEDIA_PREFIXES)
        exempt_prefixes = self.prefixes(exempt, ("exempt",)) or ()
        extra_names = self.dns_names(skype, ("skype",)) or ()
        skype_names = tuple(dict.fromkeys(names_mod.BUILTIN_SKYPE_NAMES + extra_names))
        return {
            "name": nm,
            "slots": tuple(slots),
            "pstn_prefixes": pstn_prefixes,
            "pstn_names": pstn_names,
            "msmedia_prefixes": msmedia,
            "exempt_prefixes": exempt_prefixes,
            "skype_names": skype_names,
            "host_corr_s": self.window(skype, ("skype",), "host_correlation_s", 60, 3600),
        }


# ---------------------------------------------------------------------------------------------------------------------
# Entry points


def _syntax_error(text: str, path: str, e: tomllib.TOMLDecodeError) -> PolicyError:
    msg = str(e)
    m = _TOML_ERR_POS.search(msg)
    nlines = text.count("\n") + 1
    if not m:
        return PolicyError(path, 0, f"TOML syntax error: {msg}")
    if m.group(1) is None:
        return PolicyError(path, nlines, f"TOML syntax error: {msg[: m.start()]} (at end of file)")
    line = min(max(int(m.group(1)), 0), nlines)
    return PolicyError(path, line, f"TOML syntax error: {msg[: m.start()]} (column {m.group(2)})")


def parse_policy(text: str, path: str = "<string>") -> Policy:
    """Validate a policy text; PolicyError (file:line: reason) on any refusal, never another exception."""
    try:
        if not isinstance(text, str):
            raise PolicyError(path, 0, f"policy text must be a string, not {type(text).__name__}")
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise _syntax_error(text, path, e) from None
        fields = _Checker(text, path).check(doc)
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


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file (UTF-8, at most 1 MiB)."""
    p = str(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as e:
        raise PolicyError(p, 0, f"cannot read policy file: {e.strerror or e}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(p, 0, f"policy file is larger than {MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(p, data.count(b"\n", 0, e.start) + 1, f"not valid UTF-8 (byte {e.start})") from None
    return parse_policy(text, p)


def default_policy() -> Policy:
    """Observe only: every class passes, nothing logged, built-in Microsoft media prefixes and Skype names."""
    return dataclasses.replace(parse_policy('name = "default"\n', "<default>"), path=None)
