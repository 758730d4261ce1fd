"""Pinned maps against this build's map definitions, checked before bcc compiles.

bcc 0.26 opens a map pinned at a BPF_TABLE_PINNED path and uses it as it is, comparing nothing with the program's
definition (tried on this kernel): a value that grew makes the program's load fail in the verifier with a message
that names an instruction, not a map (`invalid access to map value, value_size=320 off=792 size=8`, EACCES); a value
that shrank or a different number of entries is adopted silently, and userspace would then read values of the wrong
size. So the loader reads every pin itself first (BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD) and compares type, key size,
value size and entries with the definitions below (docs/architecture.md, "Pinning and adoption"):

- `stats` holds counters only: a mismatched pin is removed and bcc makes the map anew (the counters restart; the
  Prometheus counters show a reset, which rate() handles).
- any other mismatched map holds state that this build cannot adopt (flows, blocks, learned prefixes, the policy
  generation, chained programs): the start is refused before anything is touched, naming the map, both layouts and
  the remedy (remove that pin, losing what it holds).

The definitions are the SG_MAP lines of skyguard.bpf.c, read strictly (anything else there raises PinError), with
sizes from skyguard.h's structs (`wire.STRUCTS`) and entries from its limits and the build's -D overrides: the same
numbers bcc compiles, from the same text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from skyguard import wire
from skyguard.kernel.bpfobj import BpfError, map_info, obj_get

# bcc's table type names -> enum bpf_map_type (linux/bpf.h)
MAP_TYPES = {"hash": 1, "array": 2, "prog": 3, "percpu_array": 6, "lru_hash": 9, "lpm_trie": 11}
# maps whose whole content may be lost on a layout change, and what losing it means
RECREATE = {"stats": "counters restarted"}
# the daemon setting behind a map's entries, for a hint when only the entries differ
_LIMIT_KEYS = {"SG_FLOWS_MAX": "flows_max"}

_SG_MAP = re.compile(r'SG_MAP\("([a-z_]+)",\s*(u32|struct sg_[a-z0-9_]+),\s*(u32|struct sg_[a-z0-9_]+),\s*'
                     r'([a-z0-9_]+),\s*([A-Za-z0-9_ *]+),\s*[A-Z_0-9]+\);')
_DEFINE = re.compile(r"-D(SG_[A-Z0-9_]+)=(\d+)")


class PinError(ValueError):
    """A pinned map does not match this build (or cannot be read); the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class Layout:
    type: int
    key_size: int
    value_size: int
    max_entries: int

    def __str__(self) -> str:
        names = {v: k for k, v in MAP_TYPES.items()}
        return (f"{names.get(self.type, f'type {self.type}')}, key {self.key_size} B, value {self.value_size} B, "
                f"{self.max_entries} entries")


@dataclass(frozen=True, slots=True)
class Mismatch:
    name: str
    path: str
    pinned: Layout
    build: Layout
    limit: str | None  # the setting behind the entries (flows_max ...), when only the entries differ


def _size(ctype: str) -> int:
    return 4 if ctype == "u32" else wire.STRUCTS[ctype.removeprefix("struct ")].size


def definitions(cflags: list[str] | tuple[str, ...] = ()) -> dict[str, tuple[Layout, str | None]]:
    """name -> (layout, the -D limit behind its entries or None) of every SG_MAP in skyguard.bpf.c, under `cflags`'s
    -DSG_X=N overrides."""
    consts = dict(wire.C)
    for flag in cflags:
        if m := _DEFINE.fullmatch(flag):
            consts[m.group(1)] = int(m.group(2))
    path = wire.bpf_dir() / "skyguard.bpf.c"
    out: dict[str, tuple[Layout, str | None]] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip()
        if not s.startswith("SG_MAP(\""):
            continue
        m = _SG_MAP.fullmatch(s)
        if not m or m.group(1) not in MAP_TYPES:
            raise PinError(f"{path.name}:{i}: cannot read this map definition: {s!r}")
        typ, key, val, name, entries = m.groups()
        words = entries.split()
        limit = next((w for w in words if w in _LIMIT_KEYS), None)
        try:
            n = eval(" ".join(str(consts[w]) if w.startswith("SG_") else w for w in words),  # noqa: S307
                     {"__builtins__": {}}, {})
        except (KeyError, SyntaxError, NameError) as e:
            raise PinError(f"{path.name}:{i}: cannot compute the entries of {name}: {entries!r}") from e
        out[name] = (Layout(MAP_TYPES[typ], _size(key), _size(val), int(n)), _LIMIT_KEYS.get(limit or ""))
    return out


def pinned_layout(path: str) -> Layout:
    fd = obj_get(path)
    try:
        info = map_info(fd)
    finally:
        os.close(fd)
    return Layout(info.type, info.key_size, info.value_size, info.max_entries)


def check(pin_path: str, defs: Mapping[str, tuple[Layout, str | None]]) -> list[Mismatch]:
    """Compare every pin under `pin_path` that this build defines with its definition. Raises PinError when a map
    other than the RECREATE ones differs (before anything is touched); otherwise removes the mismatched RECREATE
    pins, so that bcc makes those maps anew, and returns what it removed."""
    found: list[Mismatch] = []
    for name, (want, limit) in defs.items():
        path = os.path.join(pin_path, name)
        if not os.path.lexists(path):
            continue
        try:
            have = pinned_layout(path)
        except BpfError as e:
            raise PinError(f"{path}: cannot read the pinned map {name!r} ({e.strerror}); remove it (rm {path}) if "
                           "it is not skyguard's, then start again") from None
        if have != want:
            only_entries = (have.type, have.key_size, have.value_size) == (want.type, want.key_size, want.value_size)
            found.append(Mismatch(name, path, have, want, limit if only_entries else None))
    refused = [m for m in found if m.name not in RECREATE]
    if refused:
        raise PinError("\n".join(_refusal(m) for m in refused))
    for m in found:
        os.unlink(m.path)
    return found


def _refusal(m: Mismatch) -> str:
    hint = ""
    if m.limit:
        hint = (f" Only the entries differ: was {m.limit} changed? {m.limit} = {m.pinned.max_entries} adopts the "
                "pinned map as it is.")
    return (f"pinned map {m.name!r} ({m.path}) does not match this build: pinned {m.pinned}; this build {m.build}. "
            f"This version cannot adopt what it holds.{hint} To start anyway, remove that pin (rm {m.path}), "
            "losing its state, and start again.")
