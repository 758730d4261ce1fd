"""The compiled packet loop of `skyguard replay` (walk.c): build, load, drive.

walk.c is compiled on first use with the system's C compiler (gcc, installed by `make setup`) into a per-user cache
directory, named by a digest of its source and flags, so an edited source is rebuilt and concurrent replays (one
process per capture) share one build. Nothing prebuilt is shipped.
"""

from __future__ import annotations

import ctypes as ct
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("walk.c")
CFLAGS = ["-O2", "-shared", "-fPIC", "-std=gnu11", "-Wall"]

EVENTS, END, PAUSE, ECAPTURE, ERUN = 1, 2, 3, -1, -2
_LEN = struct.Struct("=I")  # walk.c's `ev`: each record after its length, in the machine's byte order


class BuildError(RuntimeError):
    """The helper cannot be built here (no compiler, unwritable cache): replay falls back to the Python loop."""


class _Sgw(ct.Structure):
    """walk.c's struct sgw: the public fields, then room for the private ones (never read here)."""

    _fields_ = [
        ("packets", ct.c_uint64),
        ("verdicts", ct.c_uint64 * 8),
        ("kernel_ns", ct.c_uint64),
        ("err_off", ct.c_uint64),
        ("err_no", ct.c_int32),
        ("err", ct.c_char * 240),
        ("runs", ct.c_uint64),
        ("ev", ct.c_void_p),
        ("ev_len", ct.c_uint64),
        ("_private", ct.c_uint8 * 8192),
    ]


class _Ring(ct.Structure):
    """walk.c's struct sgw_ring, never read here: room for it."""

    _fields_ = [("_private", ct.c_uint8 * 128)]


def cache_dir() -> Path:
    """$SKYGUARD_CACHE_DIR, else $XDG_CACHE_HOME/skyguard, else ~/.cache/skyguard."""
    env = os.environ.get("SKYGUARD_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "skyguard"


def private_dir(d: Path) -> Path:
    """`d`, created 0700; refused unless it is ours and nobody else may write to it (we load code from it)."""
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.stat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise BuildError(f"{d}: not a private directory of this user: the replay helper is not built there")
    return d


def build(cc: str | None = None) -> Path:
    """The helper's shared object, compiled now unless the cache already holds this very source's build (walk.c and
    the header whose layouts it shares with the program)."""
    from skyguard import wire

    inc = wire.bpf_dir()
    src = SOURCE.read_bytes() + (inc / "skyguard.h").read_bytes()
    cc = cc or os.environ.get("CC") or "gcc"
    flags = [*CFLAGS, f"-I{inc}"]
    digest = hashlib.sha256(src + " ".join([cc, *flags]).encode()).hexdigest()[:16]
    try:
        d = private_dir(cache_dir())
    except OSError as e:
        raise BuildError(f"cannot create the cache directory {cache_dir()}: {e}") from e
    out = d / f"walk-{digest}.so"
    if out.is_file():
        return out
    if shutil.which(cc) is None:
        raise BuildError(f"no C compiler ({cc}) to build the replay helper; `make setup` installs gcc")
    fd, tmp = tempfile.mkstemp(prefix=".walk-", suffix=".so", dir=d)
    os.close(fd)
    try:
        r = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise BuildError(f"{cc} could not build {SOURCE.name}: {r.stderr.strip()[:2000]}")
        os.replace(tmp, out)  # atomic: a concurrent replay sees either no file or the whole one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


_lib: ct.CDLL | None = None


def lib() -> ct.CDLL:
    global _lib
    if _lib is None:
        so = ct.CDLL(str(build()))
        so.sgw_open.restype = ct.c_int
        so.sgw_open.argtypes = [ct.POINTER(_Sgw), ct.c_char_p, ct.c_int, ct.POINTER(_Ring), ct.c_int]
        so.sgw_run.restype = ct.c_int
        so.sgw_run.argtypes = [ct.POINTER(_Sgw), ct.c_uint64]
        so.sgw_close.restype = None
        so.sgw_close.argtypes = [ct.POINTER(_Sgw)]
        so.sgw_ring_open.restype = ct.c_int
        so.sgw_ring_open.argtypes = [ct.POINTER(_Ring), ct.c_int]
        so.sgw_ring_close.restype = None
        so.sgw_ring_close.argtypes = [ct.POINTER(_Ring)]
        so.sgw_size.restype = so.sgw_ring_size.restype = ct.c_size_t
        if so.sgw_size() > ct.sizeof(_Sgw):
            raise BuildError(f"walk.c's struct sgw ({so.sgw_size()} bytes) outgrew its mirror in fastwalk.py")
        if so.sgw_ring_size() > ct.sizeof(_Ring):
            raise BuildError(f"walk.c's struct sgw_ring ({so.sgw_ring_size()} bytes) outgrew its mirror")
        _lib = so
    return _lib


@dataclass(frozen=True, slots=True)
class Step:
    """What one call into the helper ended with."""

    status: int  # EVENTS, END, PAUSE, ECAPTURE, ERUN
    packets: int  # packets run so far in the capture


class Ring:
    """The program's ring buffer map `rb_fd`, mapped for walkers to take records from. Mapping it costs a few hundred
    microseconds (the kernel maps every page at once), so a replay maps it once for all its captures."""

    def __init__(self, rb_fd: int) -> None:
        self._lib = lib()
        self._r = _Ring()
        rc = self._lib.sgw_ring_open(ct.byref(self._r), rb_fd)
        if rc < 0:
            raise OSError(-rc, f"cannot map the ring buffer: {os.strerror(-rc)}")
        self._open = True

    def close(self) -> None:
        if self._open:
            self._lib.sgw_ring_close(ct.byref(self._r))
            self._open = False

    def __del__(self) -> None:
        # the mapping holds the ring buffer map, and 8 MB of address space, for as long as it lasts
        if getattr(self, "_open", False):
            self.close()

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Walker:
    """One capture walked through program `prog_fd`, pausing whenever its ring buffer (`ring`, which must outlive the
    walker) holds records; with the replay build's batch map `batch_fd`, up to SG_BATCH_MAX packets per test run,
    else one."""

    def __init__(self, path: str | os.PathLike[str], prog_fd: int, ring: Ring, batch_fd: int = -1) -> None:
        self._lib = lib()
        self._w = _Sgw()
        self._ring = ring  # referenced: walk.c reads its mapping
        rc = self._lib.sgw_open(ct.byref(self._w), os.fsencode(path), prog_fd, ct.byref(ring._r), batch_fd)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc), str(path))
        self._open = True

    def run(self, max_packets: int = 1 << 62) -> Step:
        rc = self._lib.sgw_run(ct.byref(self._w), max_packets)
        return Step(rc, self._w.packets)

    def records(self) -> Iterator[bytes]:
        """After EVENTS: the records the helper took from the ring buffer (consumed there), in the ring's order. Read
        them before the next run(), which reuses the buffer: they are in the ring buffer no more."""
        n = self._w.ev_len
        if not n:
            return
        raw = ct.string_at(self._w.ev, n)
        off, unpack = 0, _LEN.unpack_from
        while off < n:
            (ln,) = unpack(raw, off)
            off += 4
            yield raw[off:off + ln]
            off += ln

    @property
    def verdicts(self) -> list[int]:
        return list(self._w.verdicts)

    @property
    def kernel_ns(self) -> int:
        return self._w.kernel_ns

    @property
    def runs(self) -> int:
        """Test runs made: fewer than packets when they ran in batches."""
        return self._w.runs

    @property
    def error(self) -> tuple[int, str]:
        """ECAPTURE: (byte offset, message), worded as offline/pcap.py's CaptureError."""
        return self._w.err_off, self._w.err.decode(errors="replace")

    @property
    def errno(self) -> int:
        return self._w.err_no

    def close(self) -> None:
        if self._open:
            self._lib.sgw_close(ct.byref(self._w))
            self._open = False

    def __enter__(self) -> Walker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
