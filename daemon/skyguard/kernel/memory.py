"""The compiler's memory: bcc embeds clang and LLVM, which a daemon needs only while it compiles. After a compile their
pages are handed back, and /proc/PID/smaps is parsed to find them (and to let tests check that it happened)."""

from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass
from pathlib import Path

_COMPILER_LIBS = ("/libLLVM", "/libclang")  # the compiler bcc embeds: used only while a program is compiled
_MADV_DONTNEED = 4


@dataclass(frozen=True, slots=True)
class Mapping:
    """One mapping of a /proc/PID/smaps text: address range, permissions, path and its kB fields (Rss, Anonymous...)."""

    lo: int
    hi: int
    perms: str
    path: str
    kib: dict[str, int]


def smaps_mappings(smaps: str) -> list[Mapping]:
    out: list[Mapping] = []
    for line in smaps.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0].endswith(":"):
            if out and len(parts) >= 2 and parts[1].isdigit():
                out[-1].kib[parts[0][:-1]] = int(parts[1])
        elif "-" in parts[0] and len(parts) >= 5:
            lo, hi = parts[0].split("-")
            out.append(Mapping(int(lo, 16), int(hi, 16), parts[1], parts[5] if len(parts) >= 6 else "", {}))
    return out


def compiler_pages(smaps: str) -> list[Mapping]:
    """The compiler libraries' mappings in a /proc/PID/smaps text that hold only clean file pages: read-only and with
    no anonymous (copied-on-write) page. That leaves out the libraries' globals and their RELRO segment (relocated by
    the dynamic linker, then made read-only), whose content is not the file's."""
    return [m for m in smaps_mappings(smaps) if "w" not in m.perms and any(n in m.path for n in _COMPILER_LIBS)
            and m.kib.get("Anonymous", 1) == 0]


def release_compiler_memory() -> int:
    """After a compile: hand clang/LLVM's freed heap back (malloc_trim) and drop the compiler's code and constants
    from this process's page tables (madvise DONTNEED on its clean mappings). Those pages stay in the page cache,
    shared and reclaimable, and fault back in if a program is compiled again; a daemon compiles once. Returns the
    bytes of mappings dropped."""
    dropped = 0
    try:
        libc = ct.CDLL("libc.so.6", use_errno=True)
        libc.malloc_trim(0)
        libc.madvise.argtypes = [ct.c_void_p, ct.c_size_t, ct.c_int]
        for m in compiler_pages(Path("/proc/self/smaps").read_text()):
            if libc.madvise(m.lo, m.hi - m.lo, _MADV_DONTNEED) == 0:
                dropped += m.hi - m.lo
    except (OSError, AttributeError):
        pass
    return dropped
