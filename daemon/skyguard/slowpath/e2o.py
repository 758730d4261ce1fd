"""Legacy SkypeOut (E2O) vs PC-to-PC (E2E) vs look-alikes, from the `sample` events of one UDP flow.

Everything here is a bounded running statistic (no packet list is kept): at most MAX_SAMPLES samples are looked at,
and the state is a few hundred integers whatever the flow does. Features (docs/signatures.md, "Legacy SkypeOut"):

- Tstat's connection-ID rule, per direction: the first 4 payload bytes equal the previous packet's in that direction
  and byte 4 differs. Tstat calls a flow E2O after > 100 such packets that are > 90% of the flow; we ask for the same
  90% share but may decide from MIN_SAMPLES samples on when every other feature agrees.
- Bonfiglio's chi-square over the first 8 payload bytes as 16 nibble groups, threshold 150 with >= 100 packets:
  E2O = groups 1-8 deterministic (the CID) and 9-16 random; E2E = groups 5-6 (the SoM function byte) deterministic
  and the rest random. (WireGuard's constant type + receiver index make groups 9-16 deterministic too.)
- Payload size standard deviation per direction over CID packets: G.729 CBR about 1 byte, iSAC about 7.5 bytes.
- Inter-arrival regularity per direction: a dominant period of 10, 20, 30, 40 or 60 ms (losses count as multiples).
- Both directions active at similar rates (a call, not a stream or a probe).
"""

from __future__ import annotations

import math
import struct
from array import array
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

from skyguard import wire

R_E2O_STATS = wire.C["SG_R_E2O_STATS"]
R_SOM_VOICE = wire.C["SG_R_SOM_VOICE"]

# Bonfiglio's chi-square needs >= 100 packets; also the earliest E2O/E2E decision. The kernel knows it too
# (SG_SAMPLES_MIN): a replay's batch goes on past a sample that cannot decide
MIN_SAMPLES = wire.C["SG_SAMPLES_MIN"]
MAX_SAMPLES = 200  # samples looked at per flow; after that the tracker gives up (no decision)
# samples kept packed (_EARLY records) before the full per-flow state is built: all those before the first that may
# decide. Half the samples of a replay of calls are of flows that never reach it (short flows, or flows the kernel
# settles first), whose statistics are then never computed, and the others' are computed in one loop
LAZY_SAMPLES = MIN_SAMPLES - 1
# ts_ns, payload length, direction, bytes kept, the first (up to) 8 payload bytes: all the features read
_EARLY = struct.Struct("<QIBB8s")
CHI2_THRESHOLD = 150.0  # Bonfiglio 2007
CID_SHARE = 0.90  # Tstat: CID packets > 90% of the flow
SIZE_SD_MAX = 3.0  # bytes, per direction: G.729 CBR ~1 B passes, iSAC ~7.5 B does not
PERIODS_MS = (10, 20, 30, 40, 60)  # voice packetisation intervals (docs/signatures.md: 10 ms G.729 frames; 20/30/60 ms)
PERIOD_HIT_SHARE = 0.55  # inter-arrivals within tolerance of the dominant period
PERIOD_ANY_SHARE = 0.75  # ... or of 2x / 3x it (a lost packet), together
DIR_BALANCE = 0.5  # packets of the quieter direction / the busier one
RATE_BIN_MS = 100  # steady-rate test: bin width
RATE_MIN_BINS = 5  # ... complete bins needed
RATE_CV_MAX = 0.25  # ... coefficient of variation of packets per bin
RATE_TOL = 0.15  # ... mean interval within 15% of a packetisation period
SOM_FUNCS = frozenset({0x02, 0x03, 0x07, 0x0D, 0x0F})  # payload[2] & 0x8f (Bonfiglio, Tstat)
SOM_DATA = 0x0D
SOM_SHARE = 0.90  # E2E: packets with a valid SoM function
SOM_DATA_SHARE = 0.70  # E2E: data frames (func 0x0d), per direction
E2E_CID_SHARE_MAX = 0.5  # E2E: connection-ID repetitions below this share (not CBR-with-CID)


@dataclass(frozen=True)
class Verdict:
    cls: int
    reason: int
    detail: str


@dataclass(slots=True)
class _Running:
    """Welford mean/variance (slots: two per direction of every watched flow, updated per sample)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    @property
    def sd(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


def _tolerance_ms(period: int) -> float:
    # 30%: the gateway's direction crosses the Internet and arrives with several ms of jitter (seen in generated calls
    # with 20 ms packetisation: 14-26 ms); bursts and silences still miss by far more
    return max(3.0, 0.3 * period)


# (period, tolerance, 2x, 3x) per packetisation period: every sample checks its inter-arrival against all of them
_PERIOD_TESTS = tuple((p, _tolerance_ms(p), 2 * p, 3 * p) for p in PERIODS_MS)
_BIN_NS = RATE_BIN_MS * 1_000_000


def _period_test(iat: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The periods (indices into PERIODS_MS) an inter-arrival of `iat` ms is within tolerance of, and those whose 2x
    or 3x it is instead: what _Dir counts in hits and mult."""
    hits: list[int] = []
    mult: list[int] = []
    for i, (p, tol, p2, p3) in enumerate(_PERIOD_TESTS):
        if abs(iat - p) <= tol:
            hits.append(i)
        elif abs(iat - p2) <= tol or abs(iat - p3) <= tol:
            mult.append(i)
    return tuple(hits), tuple(mult)


# _period_test is the slow path's costliest test (15 comparisons per sample), and its answer changes only where an
# inter-arrival crosses a bound c - tol or c + tol (c = P, 2P, 3P): each |iat - c| <= tol holds exactly on
# [c - tol, c + tol], as the bounds are whole milliseconds and iat - c is exact near them (Sterbenz: tol <= c / 2).
# So the answer is that of one representative per region (each bound, and each gap below, between and above them),
# and _iat_region finds an inter-arrival's region by bisection. tests/unit/test_e2o.py holds the table to
# _period_test at every bound, the floats next to it, and random inter-arrivals.
_IAT_BOUNDS = tuple(sorted({c + s * tol for p, tol, p2, p3 in _PERIOD_TESTS for c in (p, p2, p3) for s in (-1, 1)}))


def _iat_regions() -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Region 2k: the gap below bound k (above bound k - 1); region 2k + 1: bound k itself; the last: above all."""
    b = _IAT_BOUNDS
    reps = [b[0] - 1.0]
    for k in range(len(b)):
        reps += [b[k], (b[k] + b[k + 1]) / 2 if k + 1 < len(b) else b[k] + 1.0]
    return tuple(_period_test(x) for x in reps)


_IAT_REGIONS = _iat_regions()

# Chi2._counted: a byte's high and low nibble, by bytes.translate
_HIGH_NIBBLE = bytes(b >> 4 for b in range(256))
_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))


def _iat_region(iat: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """_period_test(iat), looked up."""
    k = bisect_left(_IAT_BOUNDS, iat)
    on_bound = k < len(_IAT_BOUNDS) and _IAT_BOUNDS[k] == iat
    return _IAT_REGIONS[2 * k + 1 if on_bound else 2 * k]


@dataclass(slots=True)
class _Dir:
    """Running facts about one direction of the flow (slots: smaller, and faster to update per sample)."""

    pkts: int = 0
    cid_rep: int = 0
    som: int = 0
    som_data: int = 0
    prev_head: bytes | None = None  # first 5 payload bytes of the previous packet
    last_ts: int | None = None
    cid_size: _Running = field(default_factory=_Running)  # sizes of CID packets
    all_size: _Running = field(default_factory=_Running)
    iats: int = 0
    hits: list[int] = field(default_factory=lambda: [0] * len(PERIODS_MS))  # |iat - P| <= tol
    mult: list[int] = field(default_factory=lambda: [0] * len(PERIODS_MS))  # |iat - kP| <= tol, k = 2, 3
    first_ts: int | None = None
    bins: dict[int, int] = field(default_factory=dict)  # packets per RATE_BIN_MS bin since the first packet

    def add(self, ts_ns: int, payload_len: int, data: bytes) -> None:
        self.add_clock(ts_ns, self.add_shape(payload_len, data))

    def add_shape(self, payload_len: int, data: bytes) -> bool:
        """A sample's contents: packets, CID, sizes, SoM. Returns whether it repeated the CID. Apart from the clock
        (add_clock), so that E2OTracker.hopeless can be asked of a flow's first samples before its clock is counted.
        The slow path's hottest code (every sample of every watched flow): attributes are read once into locals and
        the Welford updates are _Running.add written out, with the same operations in the same order."""
        self.pkts += 1
        head = data[:5]
        prev = self.prev_head
        cid = (
            len(head) == 5 and prev is not None and len(prev) == 5
            and head[:4] == prev[:4] and head[4] != prev[4]
        )
        if cid:
            self.cid_rep += 1
            r = self.cid_size
            r.n += 1
            d = payload_len - r.mean
            r.mean += d / r.n
            r.m2 += d * (payload_len - r.mean)
        r = self.all_size
        r.n += 1
        d = payload_len - r.mean
        r.mean += d / r.n
        r.m2 += d * (payload_len - r.mean)
        self.prev_head = bytes(head)
        if len(data) >= 3:
            func = data[2] & 0x8F
            if func in SOM_FUNCS:
                self.som += 1
                if func == SOM_DATA and payload_len > 4:
                    self.som_data += 1
        return cid

    def add_clock(self, ts_ns: int, cid: bool) -> None:
        """A sample's time: rate bins from the first CID packet on (`cid`: add_shape's answer), inter-arrivals."""
        first = self.first_ts
        if first is None and cid:
            first = self.first_ts = ts_ns  # the rate is the media's: count from the first connection-ID packet on
        if first is not None:
            since = ts_ns - first
            b = since // _BIN_NS if since > 0 else 0
            bins = self.bins
            n = bins.get(b)
            if n is not None:
                bins[b] = n + 1
            elif len(bins) < MAX_SAMPLES:
                bins[b] = 1
        last = self.last_ts
        if last is not None and ts_ns >= last:
            iat = (ts_ns - last) / 1e6
            self.iats += 1
            in_period, in_multiple = _iat_region(iat)
            if in_period:
                hits = self.hits
                for i in in_period:
                    hits[i] += 1
            if in_multiple:
                mult = self.mult
                for i in in_multiple:
                    mult[i] += 1
        self.last_ts = ts_ns

    def period(self) -> tuple[int, float, float]:
        """(dominant period ms, share of inter-arrivals at it, share at it or a multiple); (0, 0, 0) if none."""
        if self.iats == 0:
            return 0, 0.0, 0.0
        i = max(range(len(PERIODS_MS)), key=lambda j: self.hits[j])
        return PERIODS_MS[i], self.hits[i] / self.iats, (self.hits[i] + self.mult[i]) / self.iats

    def regular(self) -> bool:
        _p, hit, anyk = self.period()
        return (hit >= PERIOD_HIT_SHARE and anyk >= PERIOD_ANY_SHARE) or self.steady_rate()

    def steady_rate(self) -> bool:
        """A constant packet rate seen through jitter: a far end's packets cross the Internet and arrive with several ms
        of jitter, which at 10 ms packetisation scrambles the inter-arrival times but not the rate. Packets per
        RATE_BIN_MS bin (complete bins only) vary little, and the mean rate is one of the voice packetisation rates."""
        if not self.bins:
            return False
        last = max(self.bins)
        counts = [self.bins.get(i, 0) for i in range(last)]  # the last bin is still filling
        if len(counts) < RATE_MIN_BINS:
            return False
        mean = sum(counts) / len(counts)
        if mean <= 0:
            return False
        cv = math.sqrt(sum((c - mean) ** 2 for c in counts) / len(counts)) / mean
        rate_ms = RATE_BIN_MS / mean  # mean packet interval
        return cv <= RATE_CV_MAX and any(abs(rate_ms - p) <= RATE_TOL * p for p in PERIODS_MS)


class Chi2:
    """Bonfiglio's chi-square per nibble group over the first 8 payload bytes (16 groups x 16 values).

    A sample's 8 bytes are counted when the chi-square is first asked for (or once PENDING_MAX samples wait): about
    half the flows a replay of calls watches never get that far (too short, or one-way), and counting every sample
    on arrival was a quarter of the slow path's time. Counts and squares are integers: counted later, they are the
    same. Until then the flow keeps 8 bytes a sample, at most about what the counts take."""

    GROUPS = 16
    PENDING_MAX = MIN_SAMPLES  # a flow's first evaluation: its samples are counted by then anyway
    TALLY_MIN = 24  # samples from which _counted tallies by column (measured: below about 20 the byte loop is faster)

    __slots__ = ("n", "_counts", "_squares", "_pending")

    def __init__(self) -> None:
        self.n = 0
        # 16 groups x 16 nibble values in one 256-entry array of unsigned shorts (512 bytes, not 16 lists: the
        # slow path keeps one per tracked flow, tens of thousands of them); made when the first samples are counted
        self._counts: array | None = None
        # per group, the sum of its squared counts, kept as samples are counted: the chi-square is then one division
        # per group (see values), where a flow is evaluated again after each of its samples
        self._squares: array | None = None
        self._pending = bytearray()  # the first 8 bytes of each sample not counted yet

    def add(self, data: bytes) -> None:
        if len(data) < 8 or self.n >= 0xFFFF:
            return
        self.n += 1
        self._pending += data[:8]
        if len(self._pending) >= 8 * self.PENDING_MAX:
            self._counted()

    def _counted(self) -> tuple[array, array]:
        """(counts, squares) with every sample added so far counted."""
        c, sq, pend = self._counts, self._squares, self._pending
        if c is None or sq is None:
            c = self._counts = array("H", bytes(512))
            sq = self._squares = array("Q", bytes(8 * self.GROUPS))
        if len(pend) >= 8 * self.TALLY_MIN:
            # a flow's first hundred samples at once: each group's nibbles tallied in C (Counter over a column's
            # nibbles), then one update per distinct value: (x + k)^2 - x^2 = (2x + k)k keeps the squares exact
            for i in range(8):
                col = pend[i::8]  # byte i of every sample
                for g, nibbles in ((2 * i, col.translate(_HIGH_NIBBLE)), (2 * i + 1, col.translate(_LOW_NIBBLE))):
                    base, s = 16 * g, sq[g]
                    for v, k in Counter(nibbles).items():
                        x = c[base + v]
                        s += (2 * x + k) * k
                        c[base + v] = x + k
                    sq[g] = s
            self._pending = bytearray()
        elif pend:  # a few samples (one per evaluation): the byte loop is cheaper than tallying
            for k, b in enumerate(pend):
                i = k & 7  # byte i of its sample: its high nibble is group 2i, its low nibble group 2i + 1
                j = 32 * i + (b >> 4)
                sq[2 * i] += 2 * c[j] + 1  # (x + 1)^2 - x^2
                c[j] += 1
                j = 32 * i + 16 + (b & 0x0F)
                sq[2 * i + 1] += 2 * c[j] + 1
                c[j] += 1
            self._pending = bytearray()
        return c, sq

    @property
    def counts(self) -> array:
        """The 16 x 16 nibble counts, group g's at [16g, 16g + 16)."""
        return self._counted()[0]

    @property
    def squares(self) -> array:
        """Per group, the sum of its squared counts."""
        return self._counted()[1]

    def values(self) -> list[float]:
        """Chi-square of each group against a uniform nibble (15 degrees of freedom); 15*n for a constant group.

        Every sample adds one to each group, so with e = n/16 expected per value, sum((c - e)^2) / e equals
        (16 * sum(c^2) - n^2) / n: exact integers, one rounding."""
        n = self.n
        if n == 0:
            return [0.0] * self.GROUPS
        nn = n * n
        return [(16 * s - nn) / n for s in self.squares]

    def deterministic(self) -> list[bool]:
        """Groups above the threshold (far from uniform). Group i here is Bonfiglio's group i + 1."""
        return [v > CHI2_THRESHOLD for v in self.values()]


class E2OTracker:
    """Feed one flow's samples with add(); a Verdict comes back once, or never (leave the kernel's class)."""

    __slots__ = ("_dirs", "_chi2", "_early", "n", "done", "_hopeless")

    def __init__(self) -> None:
        # Most candidate flows are one- or two-packet probes, and most others end or are settled by the kernel before
        # a sample may decide: their first LAZY_SAMPLES samples are kept packed in one bytearray (22 bytes each: the
        # first 8 payload bytes are all the features read) and the per-direction state (about 3 KB) is built only
        # when a flow reaches MIN_SAMPLES. At 10k new flows/s this is most of the slow path's memory.
        self._dirs: tuple[_Dir, _Dir] | None = None
        self._chi2: Chi2 | None = None
        self._early: bytearray | None = bytearray()
        self.n = 0
        self.done = False  # a verdict was given or the sample budget is spent
        # no sample up to MAX_SAMPLES can pass either rule (hopeless()): later samples are only counted, and the
        # statistics stay as they were when that became certain
        self._hopeless = False

    def _packed(self) -> list[tuple[int, int, int, bytes]]:
        """The packed early samples: (ts_ns, payload length, direction, first payload bytes) each."""
        return [(ts_ns, payload_len, direction, head[:n])
                for ts_ns, payload_len, direction, n, head in _EARLY.iter_unpack(self._early or b"")]

    def _build(self, current: tuple[int, int, int, bytes] | None = None) -> bool:
        """The statistics from the packed samples and `current` (ts_ns, direction, payload length, data: the sample
        being added, if any). The samples' contents are counted first: at the first evaluation (`current` the
        MIN_SAMPLES-th sample) a flow that is hopeless from them alone (hopeless() reads no clock and no chi-square)
        keeps only those, and its clock and chi-square, most of such a flow's cost, are never counted. Returns
        whether it was."""
        samples = self._packed()
        if current is not None:
            ts_ns, direction, payload_len, data = current
            samples.append((ts_ns, payload_len, direction & 1, data))
        dirs = self._dirs = (_Dir(), _Dir())
        chi2 = self._chi2 = Chi2()
        self._early = None
        cids = [dirs[d].add_shape(plen, data) for _ts, plen, d, data in samples]
        if current is not None and SKIP_HOPELESS and self.n >= MIN_SAMPLES and self.hopeless():
            self._hopeless = True
            return True
        for (ts_ns, _plen, d, data), cid in zip(samples, cids, strict=True):
            dirs[d].add_clock(ts_ns, cid)
            chi2.add(data)
        return False

    @property
    def dirs(self) -> tuple[_Dir, _Dir]:
        if self._dirs is None:
            self._build()
        return self._dirs

    @property
    def chi2(self) -> Chi2:
        if self._chi2 is None:
            self._build()
        return self._chi2

    def add(self, ts_ns: int, direction: int, payload_len: int, data: bytes) -> Verdict | None:
        if self.done:
            return None
        self.n += 1
        if self._hopeless:
            # the budget still ends where it would: done (and the flow given up) at the same sample as before
            self.done = self.n >= MAX_SAMPLES
            return None
        if self._early is not None and len(self._early) < LAZY_SAMPLES * _EARLY.size:
            head = bytes(data[:8])
            self._early += _EARLY.pack(ts_ns, min(payload_len, 0xFFFFFFFF), direction & 1, len(head), head)
            return None
        dirs, chi2 = self._dirs, self._chi2
        if dirs is None or chi2 is None:  # the flow reached MIN_SAMPLES: its state now, from the packed samples
            if self._build((ts_ns, direction, payload_len, data)):
                self.done = self.n >= MAX_SAMPLES
                return None  # hopeless: this sample's evaluation could not give a verdict either
            built = True
        else:
            dirs[direction & 1].add(ts_ns, payload_len, data)
            chi2.add(data)
            built = False
        if self.n < MIN_SAMPLES:
            return None
        v = self.evaluate()
        if v is not None or self.n >= MAX_SAMPLES:
            self.done = True
        elif SKIP_HOPELESS and not built:  # (a build has just asked, with the same counts)
            self._hopeless = self.hopeless()
        return v

    def hopeless(self) -> bool:
        """Whether no verdict can come from this sample or any later one up to MAX_SAMPLES, whatever they are
        (_cannot_pass). In replays of calls most flows that reach MIN_SAMPLES are PC-to-PC media with a connection ID
        and variable sizes, certain from then on never to pass; their remaining samples then cost a count each instead
        of the statistics and an evaluation."""
        return _cannot_pass(self.n, *self.dirs)

    # -- features -------------------------------------------------------------------------------------------------

    # cid_share and balanced gate every evaluation (every sample from MIN_SAMPLES on): the two directions are added
    # and ordered without generators, min and max (integers: the same values)

    def cid_share(self) -> float:
        d0, d1 = self.dirs
        return (d0.cid_rep + d1.cid_rep) / self.n if self.n else 0.0

    def balanced(self) -> bool:
        d0, d1 = self.dirs
        lo, hi = (d0.pkts, d1.pkts) if d0.pkts <= d1.pkts else (d1.pkts, d0.pkts)
        return lo > 0 and lo / hi >= DIR_BALANCE

    def features(self) -> dict:
        """Everything the decision looks at (for logs, tests and `detail`). `hopeless`: the statistics stopped where the
        flow could no longer pass (hopeless()), so the clocks and the chi-square hold fewer than `n` samples or none."""
        det = self.chi2.deterministic()
        return {
            "n": self.n,
            "hopeless": self._hopeless,
            "cid_share": self.cid_share(),
            "det": det,
            "size_sd_cid": [d.cid_size.sd for d in self.dirs],
            "size_sd": [d.all_size.sd for d in self.dirs],
            "period": [d.period() for d in self.dirs],
            "regular": [d.regular() for d in self.dirs],
            "balanced": self.balanced(),
            "som_share": sum(d.som for d in self.dirs) / self.n if self.n else 0.0,
            "som_data_share": [d.som_data / d.pkts if d.pkts else 0.0 for d in self.dirs],
        }

    def evaluate(self) -> Verdict | None:
        """The E2O and E2E rules over features(), each feature computed only when its rule gets that far: a flow is
        evaluated after each of its samples from MIN_SAMPLES on, and in replays of calls most evaluations end at the
        size test, before the (costlier) clock tests. The features are pure functions of the state: the order in
        which they are computed changes no verdict. A change to these rules must keep _cannot_pass a relaxation of
        them: each of its bounds is a condition that a verdict needs."""
        # cheap gates first: the chi-square and the rest only for flows that could pass one of the two rules
        if not self.balanced():
            return None
        dirs, n = self.dirs, self.n
        cid_share = self.cid_share()
        som = dirs[0].som + dirs[1].som
        if cid_share <= CID_SHARE and som < SOM_SHARE * n:
            return None
        # the chi-square last within each rule: in replays of calls most evaluations are of PC-to-PC media with a
        # connection ID, whose sizes vary (iSAC), and end at the size test; the chi-square is counted once, if asked
        det: list[bool] | None = None
        # E2O: constant CID in every direction, random rest, constant bit rate, regular clock, both ways
        if (
            cid_share > CID_SHARE
            and all(d.cid_size.n >= 2 and d.cid_size.sd <= SIZE_SD_MAX for d in dirs)
            and _e2o_chi2(det := self.chi2.deterministic())
            and all(d.regular() for d in dirs)
        ):
            sd = max(d.cid_size.sd for d in dirs)
            return Verdict(wire.OUT, R_E2O_STATS,
                           f"cid {cid_share:.0%} chi2 {sum(det)}/16 det, size sd {sd:.1f}B, {_periods(dirs)}")
        # E2E: SoM data frames both ways, only the function byte's groups (5-6) deterministic, not CBR-with-CID
        som_data_share = [d.som_data / d.pkts if d.pkts else 0.0 for d in dirs]
        if (
            (som / n if n else 0.0) >= SOM_SHARE
            and all(s >= SOM_DATA_SHARE for s in som_data_share)
            and cid_share < E2E_CID_SHARE_MAX
            and _e2e_chi2(det := det if det is not None else self.chi2.deterministic())
        ):
            sd = max(d.all_size.sd for d in dirs)
            return Verdict(wire.P2P, R_SOM_VOICE,
                           f"som data {min(som_data_share):.0%} both ways, chi2 {sum(det)}/16 det (5-6), "
                           f"size sd {sd:.1f}B, {_periods(dirs) or 'irregular'}")
        return None


# E2OTracker.hopeless: the thresholds as the decimal fractions they are written as (exact comparisons of integers)
_CID_SHARE = Fraction(repr(CID_SHARE))
_SOM_SHARE = Fraction(repr(SOM_SHARE))
_E2E_CID_SHARE_MAX = Fraction(repr(E2E_CID_SHARE_MAX))
SKIP_HOPELESS = True  # False: every sample is counted and evaluated to MAX_SAMPLES (the tests' reference)


def _sd_can_reach(r: _Running, left: int) -> bool:
    """Whether a direction's CID size statistics may still pass the E2O size test (at least 2 packets, sd at most
    SIZE_SD_MAX) after up to `left` more CID packets (_cannot_pass)."""
    most = r.n + left
    return most >= 2 and r.m2 <= SIZE_SD_MAX * SIZE_SD_MAX * (most - 1) * (1 + 1e-9)


def _cannot_pass(n: int, d0: _Dir, d1: _Dir) -> bool:
    """Whether a flow of `n` samples, with directions d0 and d1, can give no verdict at n or at any later sample up to
    MAX_SAMPLES, whatever those samples are: each rule needs something that the samples left cannot bring. It reads
    only what _Dir.add_shape counts, and asks only conditions that E2OTracker.evaluate asks:
    - E2O: a CID share above CID_SHARE, and in both directions at least 2 CID packets with a size sd <= SIZE_SD_MAX;
    - E2E: a SoM share of at least SOM_SHARE, and a CID share below E2E_CID_SHARE_MAX.
    A share grows by at most one sample per sample, so from c of n it reaches at most (c + left) / MAX_SAMPLES, and
    never falls below c / MAX_SAMPLES. These are compared exactly with the thresholds as the decimal fractions they are
    written as: a share with a denominator of at most MAX_SAMPLES that misses one misses it by at least
    1 / (10 * MAX_SAMPLES), which no rounding bridges, and one that equals it (180 / 200) is divided correctly rounded
    into the very float of the threshold, so `>` and `>=` answer as they do here. A direction's size sd: its Welford
    sum of squares never decreases (sizes are integers, so the mean after a sample never passes the sample, and each
    increment is a product of two numbers of one sign), and its CID packets grow by at most `left`, so the sd never
    falls below sqrt(m2 / (CID packets + left - 1)); the margin covers that division's and sqrt's rounding."""
    left = MAX_SAMPLES - n
    cid = d0.cid_rep + d1.cid_rep
    if cid + left > _CID_SHARE * MAX_SAMPLES and _sd_can_reach(d0.cid_size, left) and _sd_can_reach(d1.cid_size, left):
        return False
    som = d0.som + d1.som
    return not (som + left >= _SOM_SHARE * MAX_SAMPLES and cid < _E2E_CID_SHARE_MAX * MAX_SAMPLES)


def _e2o_chi2(det: list[bool]) -> bool:
    """Bonfiglio's E2O pattern: the CID's groups (1-8, at least 7 of them) deterministic, the rest (9-16) random."""
    return sum(det[:8]) >= 7 and not any(det[8:])


def _e2e_chi2(det: list[bool]) -> bool:
    """The E2E pattern: the SoM function byte's groups (5-6) deterministic, no other."""
    return det[5] and not any(det[:4]) and not any(det[6:])


def _periods(dirs: tuple[_Dir, _Dir]) -> str:
    """The directions' dominant periods for a verdict's detail: '20ms', '20ms/30ms', '' for none."""
    return "/".join(sorted({f"{p}ms" for p, _hit, _any in (d.period() for d in dirs) if p}))
