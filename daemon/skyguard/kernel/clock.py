"""The flow clock: the XDP program reads jiffies (inlined by the verifier, cheaper than a clock helper) and scales them
to CLOCK_MONOTONIC ns with the kernel's tick and an offset that bpf/clock.bpf.c measures once per process."""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import bcc

from skyguard import wire
from skyguard.kernel.bpfsys import prog_test_run
from skyguard.kernel.memory import release_compiler_memory

# -- the flow clock --------------------------------------------------------------------------------------------------
HZ_CHOICES = (100, 250, 300, 1000)  # the kernel's CONFIG_HZ choices
CLOCK_MONOTONIC_COARSE = 6  # Linux's clock id (uapi linux/time.h); Python's time module does not name it


def kernel_tick_ns() -> int | None:
    """The kernel's tick, TICK_NSEC, as it states it: the resolution of the coarse clocks (include/vdso/ktime.h,
    LOW_RES_NSEC). None when the kernel gives none that a tick could be (then the probe's samples estimate it)."""
    try:
        res = time.clock_getres(CLOCK_MONOTONIC_COARSE)
    except OSError:
        return None
    ns = round(res * 1e9)
    return ns if 100_000 <= ns <= 100_000_000 else None  # HZ 10..10000


@dataclass(frozen=True, slots=True)
class ClockModel:
    """CLOCK_MONOTONIC ns = jiffies * tick_ns + off_ns (to within one tick): the XDP program's flow clock."""

    tick_ns: int
    off_ns: int

    def cflags(self) -> list[str]:
        return [f"-DSG_TICK_NS={self.tick_ns}ULL", f"-DSG_CLOCK_OFF=({self.off_ns}LL)"]


def clock_model_from(samples: Sequence[tuple[int, int]], tick_ns: int | None = None) -> ClockModel:
    """The model from (jiffies, coarse monotonic ns) samples taken in order: the kernel's tick (`tick_ns`, from
    kernel_tick_ns) or, when it states none, one estimated from the samples; the offset is the median over samples.
    An estimated tick can come out a whole tick long over the span of a few ticks: on a loaded VM the probe once
    measured 4,307,692 ns (14 coarse ticks over 13 jiffies) at CONFIG_HZ=250."""
    if tick_ns is None:
        tick_ns = _estimated_tick(samples)
    offs = sorted(c - j * tick_ns for j, c in samples)
    return ClockModel(tick_ns, offs[len(offs) // 2])


def _estimated_tick(samples: Sequence[tuple[int, int]]) -> int:
    """The median of the slopes between samples half the run apart (Theil-Sen), so that a single sample read between
    the two clocks' updates cannot skew it, snapped to the nominal TICK_NSEC of the nearest CONFIG_HZ choice when
    within 0.5% of it."""
    (j1, _c1), (j2, _c2) = samples[0], samples[-1]
    if j2 <= j1:
        raise ValueError(f"jiffies did not advance over {len(samples)} clock samples")
    half = max(1, len(samples) // 2)
    slopes = sorted((c2 - c1) / (j2 - j1) for (j1, c1), (j2, c2) in zip(samples, samples[half:], strict=False)
                    if j2 > j1)
    if not slopes:
        raise ValueError(f"jiffies did not advance between clock samples half a run apart ({len(samples)} samples)")
    tick = slopes[len(slopes) // 2]
    hz = min(HZ_CHOICES, key=lambda h: abs(1e9 / h - tick))
    nominal = (1_000_000_000 + hz // 2) // hz
    return nominal if abs(nominal - tick) <= 0.005 * nominal else round(tick)


@functools.lru_cache(maxsize=1)
def clock_model(ticks: int = 24, timeout_s: float = 1.0) -> ClockModel:
    """Measure the jiffies -> monotonic ns model with bpf/clock.bpf.c (once per process: it is fixed per boot)."""
    b = bcc.BPF(src_file=str(wire.bpf_dir() / "clock.bpf.c").encode())
    try:
        fd = b.load_func(b"xdp_clock", bcc.BPF.XDP).fd
        frame = bytes(64)

        def sample() -> tuple[int, int]:
            j, c = struct.unpack_from("<QQ", prog_test_run(fd, frame).data)
            return j, c

        samples = [sample()]
        deadline = time.monotonic() + timeout_s
        while samples[-1][0] - samples[0][0] < ticks and time.monotonic() < deadline:
            time.sleep(0.002)
            samples.append(sample())
    finally:
        b.cleanup()
        release_compiler_memory()
    return clock_model_from(samples, kernel_tick_ns())
