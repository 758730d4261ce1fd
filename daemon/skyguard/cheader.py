"""A strict reader of bpf/skyguard.h: its integer `#define SG_*`s, their wire names, and its struct layouts.

The header is the one description of everything the kernel and the daemon exchange; `wire` builds its struct formats
and numpy dtypes from what this module reads. It understands only the little C the header is written in and raises
HeaderError (file:line: what) on anything else, so a header change it cannot follow fails at import, not in a map.

What it reads:
- `#define SG_NAME <integer expression>` (decimal/hex numbers, `<<`, `|`, parentheses, and SG_ constants defined
  above it), optionally followed by a comment. A comment that starts with a double-quoted string names the constant
  on the wire: `/* "skype-out" */`.
- `struct sg_x { <member>; ... };` (or `} __attribute__((packed));`), members `__u8|__u16|__u32|__u64 name`,
  `struct sg_y name` or either with one `[dimension]`, the dimension a number or an SG_ constant. Members named
  `_pad...` are padding. Layout: natural alignment (x86-64 and BPF agree), none when packed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SCALARS = {"__u8": (1, "B", "u1"), "__u16": (2, "H", "<u2"), "__u32": (4, "I", "<u4"), "__u64": (8, "Q", "<u8")}
PER_DIR = "SG_DIRS"  # a `[SG_DIRS]` array holds one value per direction: a tuple, even of __u8


class HeaderError(ValueError):
    """skyguard.h holds something this reader does not understand."""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    ctype: str  # "__u8" .. "__u64" or "struct sg_x"
    count: int  # 0 for a scalar, else the array length
    per_dir: bool  # declared [SG_DIRS]
    offset: int
    size: int
    sub: Struct | None = None  # the layout of a nested struct

    @property
    def pad(self) -> bool:
        return self.name.startswith("_pad")

    @property
    def is_bytes(self) -> bool:
        """A __u8 array other than a per-direction pair: a byte string (addresses, payload bytes)."""
        return self.ctype == "__u8" and self.count > 0 and not self.per_dir

    def codes(self) -> str:
        """This member's `struct` module codes (a nested struct's own codes, its padding explicit)."""
        if self.sub is not None:
            if self.count:
                raise HeaderError(f"array of struct {self.name} has no struct-module form")
            return self.sub.codes()
        code = SCALARS[self.ctype][1]
        if self.is_bytes:
            return f"{self.count}s"
        return f"{self.count}{code}" if self.count else code

    def values(self) -> int:
        """How many values struct.unpack yields for this member."""
        if self.sub is not None:
            return sum(m.values() for m in self.sub.members)
        return self.count if self.count and not self.is_bytes else 1


@dataclass(frozen=True, slots=True)
class Struct:
    name: str
    size: int
    align: int
    fields: tuple[Member, ...]  # every member in order, padding included

    @property
    def members(self) -> tuple[Member, ...]:
        """The members that carry values (not `_pad...`)."""
        return tuple(m for m in self.fields if not m.pad)

    def member(self, name: str) -> Member:
        for m in self.fields:
            if m.name == name:
                return m
        raise KeyError(f"struct {self.name} has no member {name!r}")

    def offset(self, name: str) -> int:
        return self.member(name).offset

    def codes(self, start: str | None = None, stop: str | None = None, pads: bool = False) -> str:
        """`struct` codes for the members from `start` up to (not including) `stop`, laid out from `start`'s offset;
        alignment gaps and (unless `pads`) `_pad` members are `x`. Without `stop` the struct's tail is included."""
        names = [m.name for m in self.fields]
        lo = names.index(start) if start else 0
        hi = names.index(stop) if stop else len(names)
        pos = self.fields[lo].offset if lo < len(names) else self.size
        out = []
        for m in self.fields[lo:hi]:
            if m.offset > pos:
                out.append(f"{m.offset - pos}x")
            out.append(f"{m.size}x" if m.pad and not pads else m.codes())
            pos = m.offset + m.size
        end = self.fields[hi].offset if hi < len(names) else self.size
        if end > pos:
            out.append(f"{end - pos}x")
        return "".join(out)

    def numpy_spec(self) -> dict:
        """np.dtype(spec) of this struct: its value members at their offsets, itemsize the struct's size."""
        names, formats, offsets = [], [], []
        for m in self.members:
            if m.sub is not None:
                fmt: object = m.sub.numpy_spec()
            elif m.is_bytes:
                fmt = f"S{m.count}"
            else:
                fmt = (SCALARS[m.ctype][2], (m.count,)) if m.count else SCALARS[m.ctype][2]
            names.append(m.name)
            formats.append(fmt)
            offsets.append(m.offset)
        return {"names": names, "formats": formats, "offsets": offsets, "itemsize": self.size}


@dataclass(frozen=True, slots=True)
class Header:
    consts: dict[str, int]  # every SG_ define, in header order
    names: dict[str, str]  # define -> its wire name, for the defines that have one
    structs: dict[str, Struct]  # "sg_flow" -> layout

    def group(self, prefix: str) -> dict[int, str]:
        """value -> wire name of the named defines starting with `prefix`, in header order."""
        return {self.consts[d]: n for d, n in self.names.items() if d.startswith(prefix)}


_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_EXPR = re.compile(r"[0-9a-fA-FxX()<|\s]+")
_DEFINE = re.compile(r"#define\s+(SG_[A-Z0-9_]+)\s+([^/]+?)\s*(/\*.*)?")
_WIRE_NAME = re.compile(r'/\*\s*"([a-z0-9-]+)"[\s:]')
_MEMBER = re.compile(r"(__u8|__u16|__u32|__u64|struct\s+(sg_[a-z0-9_]+))\s+([A-Za-z_][A-Za-z0-9_]*)"
                     r"(?:\[([A-Za-z0-9_]+)\])?;")
_OPEN = re.compile(r"struct\s+(sg_[a-z0-9_]+)\s*\{")
_CLOSE = re.compile(r"\}\s*(__attribute__\(\(packed\)\))?\s*;")


_NAME = re.compile(r"\bSG_[A-Z0-9_]+\b")


def _int(expr: str, where: str, consts: dict[str, int] | None = None) -> int:
    def value(m: re.Match) -> str:
        if consts is None or m.group(0) not in consts:
            raise HeaderError(f"{where}: {m.group(0)} is not defined above this line")
        return str(consts[m.group(0)])

    expr = _NAME.sub(value, expr)
    if not _EXPR.fullmatch(expr):
        raise HeaderError(f"{where}: not an integer expression: {expr!r}")
    try:
        return int(eval(expr, {"__builtins__": {}}, {}))  # noqa: S307 - digits, shifts, ors and parentheses only
    except (SyntaxError, NameError) as e:
        raise HeaderError(f"{where}: not an integer expression: {expr!r}") from e


def _lines_without_comments(text: str) -> list[str]:
    """The header's lines with comments blanked out (line numbers kept)."""
    return _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text).splitlines()


def parse(text: str, filename: str = "skyguard.h") -> Header:
    consts: dict[str, int] = {}
    names: dict[str, str] = {}
    raw = text.splitlines()
    for i, line in enumerate(raw, 1):
        s = line.strip()
        if not s.startswith("#define SG_"):
            continue
        m = _DEFINE.fullmatch(s)
        if not m:
            raise HeaderError(f"{filename}:{i}: cannot read this define: {s!r}")
        name, expr, comment = m.groups()
        wire_name = None
        if comment and comment[2:].lstrip().startswith('"'):
            named = _WIRE_NAME.match(comment)
            if not named:
                raise HeaderError(f"{filename}:{i}: a wire name is lower-case letters, digits and '-': {comment!r}")
            wire_name = named.group(1)
        value = _int(expr.strip(), f"{filename}:{i}", consts)
        if name in consts and consts[name] != value:
            raise HeaderError(f"{filename}:{i}: {name} defined twice with different values")
        consts.setdefault(name, value)
        if wire_name:
            names[name] = wire_name
    return Header(consts, names, _structs(_lines_without_comments(text), consts, filename))


def _structs(lines: list[str], consts: dict[str, int], filename: str) -> dict[str, Struct]:
    out: dict[str, Struct] = {}
    cur: str | None = None
    members: list[tuple[str, str, int, bool, Struct | None]] = []
    for i, line in enumerate(lines, 1):
        s = line.strip()
        where = f"{filename}:{i}"
        if cur is None:
            m = _OPEN.fullmatch(s)
            if m:
                cur, members = m.group(1), []
            elif s.startswith("struct ") and not s.endswith(";"):
                raise HeaderError(f"{where}: cannot read this struct: {s!r}")
            continue
        if not s:
            continue
        close = _CLOSE.fullmatch(s)
        if close:
            out[cur] = _layout(cur, members, packed=bool(close.group(1)), where=where)
            cur = None
            continue
        m = _MEMBER.fullmatch(s)
        if not m:
            raise HeaderError(f"{where}: cannot read this member of struct {cur}: {s!r}")
        ctype, sub_name, name, dim = m.groups()
        sub = None
        if sub_name:
            if sub_name not in out:
                raise HeaderError(f"{where}: struct {sub_name} is used before it is defined")
            sub, ctype = out[sub_name], f"struct {sub_name}"
        count = 0
        if dim is not None:
            count = consts.get(dim, -1) if dim.startswith("SG_") else _int(dim, where)
            if count <= 0:
                raise HeaderError(f"{where}: unknown or empty array dimension {dim!r}")
        members.append((name, ctype, count, dim == PER_DIR, sub))
    if cur is not None:
        raise HeaderError(f"{filename}: struct {cur} is not closed")
    return out


def _layout(name: str, members: list[tuple[str, str, int, bool, Struct | None]], packed: bool, where: str) -> Struct:
    if not members:
        raise HeaderError(f"{where}: struct {name} is empty")
    pos, align, fields = 0, 1, []
    for mname, ctype, count, per_dir, sub in members:
        esize, ealign = (sub.size, sub.align) if sub else (SCALARS[ctype][0], SCALARS[ctype][0])
        if packed:
            ealign = 1
        pos = (pos + ealign - 1) // ealign * ealign
        size = esize * (count or 1)
        fields.append(Member(mname, ctype, count, per_dir, pos, size, sub))
        pos += size
        align = max(align, ealign)
    size = (pos + align - 1) // align * align
    return Struct(name, size, align, tuple(fields))


def read(path: Path) -> Header:
    return parse(path.read_text(), path.name)
