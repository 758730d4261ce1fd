"""After a compile the loader gives back what only the compiler needed: its freed heap and its clean pages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .packets import udp4

pytestmark = pytest.mark.bpf

SMAPS = """\
7f0000000000-7f0000100000 r--p 00000000 fe:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Rss:                 512 kB
Anonymous:             0 kB
7f0000100000-7f0000900000 r-xp 00100000 fe:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Rss:               40000 kB
Anonymous:             0 kB
7f0000900000-7f0000a00000 r--p 00900000 fe:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Rss:                7000 kB
Anonymous:          7000 kB
7f0000a00000-7f0000a10000 rw-p 00a00000 fe:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Rss:                  64 kB
Anonymous:            64 kB
7f0001000000-7f0001800000 r-xp 00000000 fe:01 2 /usr/lib/llvm-14/lib/libclang-cpp.so.14
Rss:               20000 kB
Anonymous:             0 kB
7f0002000000-7f0002100000 r-xp 00000000 fe:01 3 /usr/lib/x86_64-linux-gnu/libbcc.so.0.26.0
Rss:                1500 kB
Anonymous:             0 kB
7f0003000000-7f0003001000 rw-p 00000000 00:00 0
Rss:                   4 kB
Anonymous:             4 kB
"""


def test_only_clean_compiler_mappings_are_dropped(bpf_ok):
    from skyguard.kernel.memory import compiler_pages

    assert [(m.lo, m.hi) for m in compiler_pages(SMAPS)] == [
        (0x7F0000000000, 0x7F0000100000),  # headers and constants
        (0x7F0000100000, 0x7F0000900000),  # code
        (0x7F0001000000, 0x7F0001800000),  # clang's code
    ]  # not LLVM's RELRO (relocated: anonymous pages), not its globals, not libbcc (used at run time), not anon


_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ (\S{4}) \S+ \S+ \d+ *(.*)$")
_FIELD = re.compile(r"^(\w+):\s+(\d+) kB$")


def clean_compiler_kib() -> dict[str, int]:
    """Resident clean pages (Shared_Clean + Private_Clean, kB) of the compiler's libraries (libLLVM*, libclang*) in
    their non-writable mappings, per library, from /proc/self/smaps. Parsed here, not with skyguard.kernel.memory,
    so that a filter there that matches nothing cannot make this measure zero too."""
    out: dict[str, int] = {}
    lib = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        m = _MAPPING.match(line)
        if m:
            name = m.group(2).rsplit("/", 1)[-1]
            lib = name if "w" not in m.group(1) and name.startswith(("libLLVM", "libclang")) else None
            if lib:
                out.setdefault(lib, 0)
            continue
        f = _FIELD.match(line)
        if lib and f and f.group(1) in ("Shared_Clean", "Private_Clean"):
            out[lib] += int(f.group(2))
    return out


def test_compile_leaves_no_compiler_code_resident_and_compiles_again(bpf_ok, monkeypatch):
    from skyguard.kernel import loader

    seen: list[tuple[dict[str, int], dict[str, int]]] = []
    release = loader.release_compiler_memory

    def measured_release() -> int:
        before = clean_compiler_kib()
        dropped = release()
        seen.append((before, clean_compiler_kib()))
        return dropped

    monkeypatch.setattr(loader, "release_compiler_memory", measured_release)
    for i in range(2):  # the second compile faults the dropped pages back in from the page cache
        with loader.Kernel(flows_max=256, lpm_max=64, ringbuf_bytes=1 << 16) as k:
            assert len(seen) == i + 1, "the loader no longer releases the compiler's memory after a compile"
            before, after = seen[i]
            # the compiler was there and had its code resident (~45 MiB of LLVM and clang code here) ...
            llvm = sum(v for n, v in before.items() if n.startswith("libLLVM"))
            clang = sum(v for n, v in before.items() if n.startswith("libclang"))
            assert llvm >= 4096 and clang >= 4096 and llvm + clang >= 16 * 1024, before
            # ... and after the release, next to none of it is
            assert sum(after.values()) < 1024, after
            assert k.test_run(udp4("192.0.2.90", 1000 + i, "198.51.100.90", 53, b"q" * 20)).verdict == 2
