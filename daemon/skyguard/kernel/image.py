"""The replay build's compiled image, cached on disk: bcc's compile (clang and LLVM, about 3 s) is paid once per
source, flags, kernel and bcc, instead of once per `skyguard replay` process or parallel replay worker.

An image is what bcc hands the kernel: each program's relocated instructions, whose map references (64-bit immediate
loads of a map fd) are recorded by map name, and each map's definition as the kernel reports it. Loading one
creates the maps anew, points the instructions at them and loads the programs: the verifier checks them as it
checks bcc's. Only the replay build is cached (no pins to adopt, no program array): the daemon compiles at start,
as before. The cache is a directory private to the user (the same as the replay helper's, offline/fastwalk.py).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import platform
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from skyguard.kernel.bpfobj import BpfError, create_map, map_info

FORMAT = 1  # bumped when the file's layout changes: older files are ignored
ENV = "SKYGUARD_BPF_CACHE"  # "0": always compile (tests of the compile path, a suspected stale image)

_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
_PSEUDO_MAP_FD = 1  # src_reg of a load whose immediate is a map fd
_INSN = struct.Struct("<BBhi")
_MAPS_OF_MAPS = (12, 13)  # BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS


class ImageError(ValueError):
    """An image that cannot be taken from this build or read back: the caller compiles instead."""


@dataclass(frozen=True)
class MapSpec:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    inner: str | None = None  # a map of maps: the template map its values must match


@dataclass(frozen=True)
class Image:
    maps: tuple[MapSpec, ...]  # in creation order: a map of maps after its template
    progs: dict[str, tuple[bytes, tuple[tuple[int, str], ...]]]  # name -> (instructions, (slot, map name) each)

    def create_maps(self) -> dict[str, int]:
        """Every map made anew: name -> fd. On a failure the maps made so far are closed."""
        fds: dict[str, int] = {}
        try:
            for m in self.maps:
                inner = fds[m.inner] if m.inner else 0
                try:
                    fds[m.name] = create_map(m.type, m.key_size, m.value_size, m.max_entries, m.flags, inner,
                                             m.name)
                except BpfError as e:
                    raise BpfError(e.errno, f"cannot create map {m.name} from the cached image: {e.strerror}") from None
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        return fds

    def instructions(self, prog: str, fds: dict[str, int]) -> bytes:
        """`prog`'s instructions pointing at the maps `fds`."""
        raw, relocs = self.progs[prog]
        buf = bytearray(raw)
        for slot, name in relocs:
            code, regs, off, _imm = _INSN.unpack_from(buf, 8 * slot)
            _INSN.pack_into(buf, 8 * slot, code, regs, off, fds[name])
        return bytes(buf)

    # -- the file ----------------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"format": FORMAT, "maps": [m.__dict__ for m in self.maps],
                "progs": {n: {"insns": base64.b64encode(raw).decode(), "relocs": [list(r) for r in rel]}
                          for n, (raw, rel) in self.progs.items()}}

    @classmethod
    def from_json(cls, doc: object, maps: Sequence[str] = (), progs: Sequence[str] = ()) -> Image:
        """The image of a file's JSON, checked whole: every map and program the caller names is there, map names are
        unique, fields are in the kernel's ranges, each map of maps comes after its template, and the references are
        exactly the programs' map-fd loads, each to a map of the image."""
        try:
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ImageError(f"not an image of format {FORMAT}")
            specs = tuple(MapSpec(**m) for m in doc["maps"])
            made: set[str] = set()
            for m in specs:
                if not isinstance(m.name, str) or not m.name or m.name in made:
                    raise ImageError(f"map name {m.name!r} is missing, not a string or not unique")
                if not all(isinstance(v, int) and 0 <= v < 1 << 32
                           for v in (m.type, m.key_size, m.value_size, m.max_entries, m.flags)):
                    raise ImageError(f"map {m.name}: a field is not a 32-bit unsigned number")
                if m.inner is not None and (not isinstance(m.inner, str) or m.inner not in made):
                    raise ImageError(f"map {m.name}: its template {m.inner!r} does not come before it")
                made.add(m.name)
            if missing := [n for n in maps if n not in made]:
                raise ImageError(f"maps missing: {', '.join(missing)}")
            if not isinstance(doc["progs"], dict):
                raise ImageError("progs is not a table")
            out = {}
            for n, p in doc["progs"].items():
                raw = base64.b64decode(p["insns"], validate=True)
                if len(raw) % 8:
                    raise ImageError(f"program {n}: {len(raw)} bytes is no whole number of instructions")
                relocs = tuple((int(s), str(name)) for s, name in p["relocs"])
                if sorted(s for s, _name in relocs) != [s for s, _imm in _map_loads(n, raw)]:
                    raise ImageError(f"program {n}: its references are not exactly its map-fd loads")
                if any(name not in made for _s, name in relocs):
                    raise ImageError(f"program {n}: a reference names a map the image does not have")
                out[n] = (raw, relocs)
            if missing := [n for n in progs if n not in out]:
                raise ImageError(f"programs missing: {', '.join(missing)}")
        except (KeyError, TypeError, ValueError, AttributeError, struct.error) as e:
            if isinstance(e, ImageError):
                raise
            raise ImageError(f"unreadable image: {e!r}") from e
        return cls(specs, out)


def _map_loads(prog: str, raw: bytes) -> list[tuple[int, int]]:
    """(slot, immediate) of every map-fd load (a two-slot 64-bit immediate load) of `raw`, in order; ImageError on
    a 64-bit load of anything else but a plain constant (map values, BTF ids, functions: an image cannot carry them)."""
    out = []
    slot, n = 0, len(raw) // 8
    while slot < n:
        code, regs, _off, imm = _INSN.unpack_from(raw, 8 * slot)
        if code == _LD_IMM64:
            if slot + 1 >= n:
                raise ImageError(f"{prog}: instruction {slot} is a 64-bit load without its second half")
            src = regs >> 4
            if src == _PSEUDO_MAP_FD:
                out.append((slot, imm))
            elif src != 0:
                raise ImageError(f"{prog}: instruction {slot} loads an object the image cannot carry (src {src})")
            slot += 2
        else:
            slot += 1
    return out


def capture(bpf, progs: list[str], maps: list[str], inner: dict[str, str]) -> Image:
    """The image of bcc module `bpf`: programs `progs` (dump_func), maps `maps` (every map the instructions load,
    and those userspace needs besides), `inner`: map of maps -> its template map. Refused (ImageError) when an
    instruction loads an object other than a map fd."""
    by_fd = {bpf[n.encode()].map_fd: n for n in maps}
    out = {}
    for p in progs:
        raw = bytes(bpf.dump_func(p.encode()))
        relocs = []
        for slot, fd in _map_loads(p, raw):
            if fd not in by_fd:  # a map only the program uses (scratch space): named after its fd
                by_fd[fd] = f"fd{fd}"
            relocs.append((slot, by_fd[fd]))
        out[p] = (raw, tuple(relocs))
    specs = []
    for fd, n in sorted(by_fd.items(), key=lambda kv: kv[1] in inner):  # templates before the maps of maps
        info = map_info(fd)
        if info.type in _MAPS_OF_MAPS and n not in inner:
            raise ImageError(f"map {n} is a map of maps whose template is not known")
        specs.append(MapSpec(n, info.type, info.key_size, info.value_size, info.max_entries, info.flags,
                             inner.get(n)))
    return Image(tuple(specs), out)


def key(sources: Path, cflags: list[str], contract: object = ()) -> str:
    """What an image depends on: every file of bpf/, the flags, the kernel release, bcc's version and the loader's
    `contract` (the maps and programs it asks for by name)."""
    import bcc

    h = hashlib.sha256(f"{FORMAT}\0{platform.release()}\0{bcc.__version__}\0{' '.join(cflags)}\0{contract!r}\0"
                       .encode())
    for p in sorted(sources.iterdir()):
        if p.is_file() and p.suffix in (".c", ".h"):
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:24]


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def _path(digest: str) -> Path | None:
    from skyguard.offline.fastwalk import BuildError, cache_dir, private_dir

    try:
        return private_dir(cache_dir()) / f"replay-{digest}.json"
    except (BuildError, OSError):
        return None  # no private cache directory here: compile every time


def load(digest: str, maps: Sequence[str] = (), progs: Sequence[str] = ()) -> Image | None:
    """The cached image of `digest` with at least `maps` and `progs`, or None (none yet, or unreadable or
    incomplete: it is then compiled and written again)."""
    p = _path(digest)
    if p is None or not p.is_file():
        return None
    try:
        return Image.from_json(json.loads(p.read_text()), maps, progs)
    except (OSError, ValueError):
        return None


def save(digest: str, img: Image) -> None:
    """Written whole or not at all (a concurrent replay reads either no file or a complete one)."""
    p = _path(digest)
    if p is None:
        return
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".replay-", suffix=".json", dir=p.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(img.to_json(), f)
        os.replace(tmp, p)
    except OSError:  # a full or read-only cache: the next replay compiles again
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
