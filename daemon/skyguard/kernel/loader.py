"""The XDP program and its maps: compile (bcc), BPF_PROG_TEST_RUN, ring buffer, flow/policy/prefix maps.

Map values are read and written as raw bytes through the map fds (libbcc's
bpf_lookup_elem & co.) and decoded with `wire`'s struct formats, so the byte layout has one definition.
"""

from __future__ import annotations

import ctypes as ct
import errno
import ipaddress
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import bcc
from bcc import libbcc

from skyguard import wire
from skyguard.kernel import image, pins
from skyguard.kernel.bpfobj import BPF_F_XDP_HAS_FRAGS, BPF_XDP, BpfError, load_xdp
from skyguard.kernel.bpfsys import XDP_PASS, RawMap, RunResult, prog_test_run
from skyguard.kernel.clock import ClockModel, clock_model
from skyguard.kernel.memory import release_compiler_memory
from skyguard.policy import Network, Policy

_RINGBUF_CB = libbcc._RINGBUF_CB_TYPE  # int (*)(void *ctx, void *data, size_t size): libbpf's sample callback
_EV_SAMPLE = wire.EV_SAMPLE
PREFIX_KINDS = ("pstn", "msmedia", "exempt", "block", "drmedia")
_LPM_MAPS = {k: (f"{k}_v4", f"{k}_v6") for k in PREFIX_KINDS}
_STATS_SIZE = wire.STRUCTS["sg_stats"].size
_SETTLED = wire.C["SG_F_DONE"] | wire.C["SG_F_DAEMON"]  # a flow the kernel serves from flows4 when it is IPv4's
_F_DNS = wire.C["SG_F_DNS"]
# every map userspace opens by name (a cached replay image must carry them, whether the program loads them or not)
_MAP_NAMES = ("flows", "flows4", "policy", "config", "fwmarks", "chained", "rcu_sync", "rcu_inner", "stats", "qos",
              "endpoints", "events", *(n for pair in _LPM_MAPS.values() for n in pair))
_REPLAY_MAPS = ("batch", "replay_next")  # the replay build's own: its batches (offline/walk.c) and their tail call
_INNER = {"rcu_sync": "rcu_inner"}  # map of maps -> its template (bpf/skyguard.bpf.c)
_PROGS = ("xdp_skyguard", "xdp_verdict")


def _as_network(network: str | Network) -> Network:
    return ipaddress.ip_network(network, strict=False) if isinstance(network, str) else network


class Kernel:
    """The compiled XDP program and its maps."""

    def __init__(
        self,
        *,
        flows_max: int = wire.FLOWS_MAX,
        window: int = wire.WINDOW,
        probe: int = wire.PROBE,
        lpm_max: int = wire.LPM_MAX,
        ringbuf_bytes: int = wire.RINGBUF_BYTES,
        pin_path: str | None = None,
        replay: bool = False,
        extra_cflags: Sequence[str] = (),
        chain: bool = False,
        before_load: Callable[[Kernel], None] | None = None,
    ):
        """`replay`: build the program that takes each packet's time from the XDP metadata a replay hands over
        (test_run with ts_ns); the live program (the daemon's) has no metadata check on its fast path.
        `chain`: build with the `chain` program array (packets passed go on to the interface's previous program);
        `before_load` runs once the maps exist and before the program is loaded (the daemon fills `chain` there: a
        program array takes the multi-buffer flag of the first program it meets, see _load)."""
        bpf_dir = wire.bpf_dir()
        cflags = [
            f"-I{bpf_dir}",
            f"-DSG_FLOWS_MAX={flows_max}",
            f"-DSG_WINDOW={window}",
            f"-DSG_PROBE={probe}",
            f"-DSG_LPM_MAX={lpm_max}",
            f"-DSG_RINGBUF_BYTES={ringbuf_bytes}",
            "-Wno-unused-function",
        ]
        self.clock: ClockModel | None = None  # None: the program reads bpf_ktime_get_coarse_ns instead
        if replay:
            # a replay's packets carry their capture time; a run without it (tests) reads the coarse clock, so the
            # build has no per-boot tick constants and its compiled image can be cached (kernel/image.py)
            cflags.append("-DSG_META_CLOCK")
            self.clock_note = "capture timestamps (replay build), else bpf_ktime_get_coarse_ns"
        else:
            try:
                self.clock = clock_model()
                cflags += self.clock.cflags()
                self.clock_note = f"jiffies x {self.clock.tick_ns} ns"
            except Exception as e:  # noqa: BLE001 - bcc raises bare Exception when the probe does not compile or load
                self.clock_note = f"bpf_ktime_get_coarse_ns (jiffies clock probe failed: {e})"
        if chain:
            cflags.append("-DSG_XDP_CHAIN")
        cflags += list(extra_cflags)
        # pins of another layout: bcc would adopt them unchecked, so they are compared with this build first
        self.recreated: list[pins.Mismatch] = []  # mismatched counter maps removed, made anew by this build
        if pin_path:
            Path(pin_path).mkdir(parents=True, exist_ok=True)
            self.recreated = pins.check(pin_path, pins.definitions(cflags))
            cflags.append(f'-DSG_PIN_PATH="{pin_path}"')
        self.pin_path = pin_path
        self.replay = replay
        self.chain = chain
        self.prog_fd = -1
        self.verdict_fd = -1
        self.bpf: bcc.BPF | None = None
        self._fds: dict[str, int] = {}  # the maps, when made from a cached image (then there is no bcc module)
        self._image: image.Image | None = None
        digest = None
        if replay and not pin_path and not chain and before_load is None and image.enabled():
            maps = (*_MAP_NAMES, *_REPLAY_MAPS)
            digest = image.key(bpf_dir, cflags, contract=(maps, _PROGS, sorted(_INNER.items())))
            self._image = image.load(digest, maps=maps, progs=_PROGS)
            if self._image is not None:
                try:
                    self._fds = self._image.create_maps()
                except Exception:  # noqa: BLE001 - whatever the image's maps fail on, the build is compiled instead
                    self._image = None  # an image this kernel refuses: compiled below, and written again
        self.from_cache = self._image is not None

        def compile_now() -> bcc.BPF:
            return bcc.BPF(src_file=str(bpf_dir / "skyguard.bpf.c").encode(), cflags=cflags)

        if self._image is None:
            self.bpf = compile_now()
        self._events: list[wire.Event] = []
        self._sink: Callable[[wire.Event], None] | None = None  # set while drain_events runs
        self._sample_sink: Callable[[bytes], None] | None = None  # and its sink of undecoded `sample` records
        self._sink_error: BaseException | None = None
        self._budget = 0  # events drain_events may still hand over in this call (negative: one past it)
        self._rb: int | None = None  # libbpf's ring_buffer manager (libbcc's bpf_new_ringbuf)
        self._rb_cb = _RINGBUF_CB(self._on_event)  # kept referenced while libbpf may call it
        self._rb_fd: int | None = None
        try:
            try:
                self._setup(chain, before_load, digest)
            except Exception:
                if not self.from_cache:
                    raise
                # the cached image did not load here (a kernel that verifies differently, a damaged file): compile
                self.close()
                self._image, self.from_cache = None, False
                self.bpf = compile_now()
                self._setup(chain, before_load, digest)
        except BaseException:
            self.close()  # the maps and what was loaded go with the failed start, not at some later collection
            raise
        if self.bpf is not None:
            release_compiler_memory()

    def _setup(self, chain: bool, before_load: Callable[[Kernel], None] | None, digest: str | None) -> None:
        """The maps by name, then the programs loaded (and, after a compile, the replay build's image written)."""
        kf = wire.FlowKey.FMT.size
        self._flows = self._raw("flows", kf, wire.Flow.FMT.size)
        self._flows4 = self._raw("flows4", wire.KEY4_SIZE, wire.Flow.FMT.size)  # IPv4's, under the compact key
        self._policy = self._raw("policy", 4, wire.PolicySlot.FMT.size)
        self._config = self._raw("config", 4, wire.CONFIG_FMT.size)
        self._fwmarks = self._raw("fwmarks", 4, wire.FWMARK_FMT.size)
        self.chained = self._raw("chained", 4, wire.CHAIN_FMT.size)
        self.chain_map = self._raw("chain", 4, 4) if chain else None
        self._rcu_sync = self._raw("rcu_sync", 4, 4)
        self._rcu_inner_fd = self._map_fd("rcu_inner")
        self._stats = self._raw("stats", 4, _STATS_SIZE, percpu=True)
        self._qos = self._raw("qos", 4, wire.QOS_FMT.size)
        self._endpoints = self._raw("endpoints", wire.EP_KEY_FMT.size, wire.EP_FMT.size)
        self._lpm: dict[str, tuple[RawMap, RawMap]] = {
            kind: (
                self._raw(m4, wire.LPM4_FMT.size, wire.PREFIX_FMT.size),
                self._raw(m6, wire.LPM6_FMT.size, wire.PREFIX_FMT.size),
            )
            for kind, (m4, m6) in _LPM_MAPS.items()
        }
        if before_load is not None:
            before_load(self)
        self.prog_fd, self.frags = self._load(chain)
        # the replay build runs a batch's next packet through a tail call to itself (struct sg_batch)
        if self.replay and not self._raw("replay_next", 4, 4).update(b"\0\0\0\0", self.prog_fd.to_bytes(4, "little")):
            raise OSError("cannot put the replay build into its own replay_next program array")
        verdict = self._insns("xdp_verdict")
        self.verdict_fd = load_xdp(verdict, "xdp_verdict")  # as bcc's load_func: no flags, no attach type
        if digest is not None and self.bpf is not None:
            try:
                image.save(digest, image.capture(self.bpf, list(_PROGS), [*_MAP_NAMES, *_REPLAY_MAPS], _INNER))
            except (image.ImageError, OSError):
                pass  # not carried as an image (this build cannot be, or the cache cannot be written): compiled again

    def _map_fd(self, name: str) -> int:
        return self._fds[name] if self._image is not None else self.bpf[name.encode()].map_fd

    def _insns(self, prog: str) -> bytes:
        """`prog`'s relocated instructions: bcc's, or the cached image's pointed at this Kernel's maps."""
        if self._image is not None:
            return self._image.instructions(prog, self._fds)
        return bytes(self.bpf.dump_func(prog.encode()))

    def _load(self, chain: bool) -> tuple[int, bool]:
        """Load xdp_skyguard multi-buffer aware (BPF_F_XDP_HAS_FRAGS), so that native XDP attaches at any MTU: bcc
        0.26's load_func passes no prog_flags, so its relocated instructions are loaded here. A program array only
        takes programs that match its first one (kernel: bpf_prog_map_compatible) in multi-buffer support and, on
        recent kernels, expected attach type (libbpf loads with BPF_XDP, bcc with 0); with a chained program already
        in `chain`, skyguard loads in the first shape it accepts, multi-buffer first."""
        insns = self._insns("xdp_skyguard")
        shapes = [(BPF_F_XDP_HAS_FRAGS, 0)]
        if chain:
            shapes = [(BPF_F_XDP_HAS_FRAGS, BPF_XDP), (BPF_F_XDP_HAS_FRAGS, 0), (0, BPF_XDP), (0, 0)]
        for i, (flags, attach_type) in enumerate(shapes):
            try:
                return load_xdp(insns, "xdp_skyguard", flags, attach_type), bool(flags)
            except BpfError as e:
                if e.errno != errno.EINVAL or i == len(shapes) - 1:
                    raise
        raise AssertionError("unreachable")

    def _raw(self, name: str, ks: int, vs: int, percpu: bool = False) -> RawMap:
        return RawMap(self._map_fd(name), ks, vs, percpu)

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._rb is not None:
            libbcc.lib.bpf_free_ringbuf(self._rb)
            self._rb = None
        for attr in ("prog_fd", "verdict_fd"):
            if getattr(self, attr, -1) >= 0:
                os.close(getattr(self, attr))
                setattr(self, attr, -1)
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        self._rb_fd = None  # libbpf's epoll fd went with its ring buffer manager
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- test run ----------------------------------------------------------------------------------------------------
    def test_run(self, frame: bytes, ts_ns: int | None = None, repeat: int = 1, place: int = 0) -> RunResult:
        """Run the program on `frame`; `ts_ns` (replay build only) is the packet's time, handed over as metadata with
        `place`, the packet's place in its capture (its records carry it: wire.Event.place)."""
        if ts_ns is None:
            return prog_test_run(self.prog_fd, frame, 0, repeat)
        if not self.replay:
            raise ValueError("ts_ns needs Kernel(replay=True): the live program has no metadata clock")
        meta = wire.META_FMT.pack(wire.META_MAGIC, place, ts_ns)
        return prog_test_run(self.prog_fd, meta + frame, len(meta), repeat)

    # -- events ------------------------------------------------------------------------------------------------------
    def _on_event(self, _ctx: object, data: int, size: int) -> int:
        raw = ct.string_at(data, size)
        sink = self._sink
        if sink is None:
            self._events.append(wire.Event.unpack(raw))
            return 0
        # _hand written out: libbpf calls this once per record
        try:
            if self._sample_sink is not None and raw[0] == _EV_SAMPLE:
                self._sample_sink(raw)  # most records: handed over undecoded (Engine.handle_sample)
            else:
                sink(wire.Event.unpack(raw))
        except BaseException as e:  # noqa: BLE001 - ctypes would swallow it: re-raised by drain_events
            self._sink_error = self._sink_error or e
        self._budget -= 1
        # a negative return makes libbpf stop after this record (which counts as consumed): under a flood the
        # producer outpaces the handler and ring_buffer__consume would otherwise never return to the daemon's loop
        return -1 if self._budget <= 0 else 0

    def _hand(self, ev: wire.Event) -> None:
        """One event to drain_events' sink, within its budget; an exception is kept for drain_events to raise."""
        assert self._sink is not None
        try:
            self._sink(ev)
        except BaseException as e:  # noqa: BLE001 - ctypes would swallow it: re-raised by drain_events
            self._sink_error = self._sink_error or e
        self._budget -= 1

    def _open_ring(self) -> int:
        if self._rb is None:
            rb = libbcc.lib.bpf_new_ringbuf(self.ring_map_fd, self._rb_cb, None)
            if not rb:
                raise OSError("cannot open the events ring buffer (libbpf ring_buffer__new)")
            self._rb = rb
        return self._rb

    @property
    def batch_map_fd(self) -> int:
        """The replay build's `batch` map (struct sg_batch), which replay's compiled loop maps to run packets in
        batches; -1 for the live build."""
        return self._map_fd("batch") if self.replay else -1

    @property
    def ring_map_fd(self) -> int:
        """The ring buffer map's own fd (replay's compiled loop maps its positions to see when records wait)."""
        return self._map_fd("events")

    def events_fd(self) -> int | None:
        """An fd that polls readable when events wait (libbpf's ring_buffer__epoll_fd on the ring buffer manager),
        for the daemon's selector; None if this libbpf lacks it (the daemon then polls on a short timer)."""
        rb = self._open_ring()
        if self._rb_fd is None:
            try:
                lib = ct.CDLL("libbpf.so.1")
                fn = lib.ring_buffer__epoll_fd
            except (OSError, AttributeError):
                return None
            fn.restype, fn.argtypes = ct.c_int, [ct.c_void_p]
            fd = fn(ct.c_void_p(rb))
            self._rb_fd = fd if fd >= 0 else None
        return self._rb_fd

    def drain_events(self, sink: Callable[[wire.Event], None], timeout_ms: int = 0, max_events: int = 4096,
                     sample_sink: Callable[[bytes], None] | None = None) -> int:
        """Hand waiting events to `sink` as they are read, at most `max_events` (the rest wait for the next call:
        the ring buffer's fd stays readable), without building a list first: under a flood the ring buffer holds
        tens of thousands of events, and a list of them all would be the daemon's largest transient. An exception from
        `sink` stops nothing in the ring buffer's loop; the first one is raised after it. With `sample_sink`, `sample`
        records go to it undecoded (bytes: wire.sample_record), the others to `sink` as Events. Returns how many
        events were handed over."""
        # replay calls this after every packet that left records: nothing here that an empty ring buffer can skip
        rb = self._rb if self._rb is not None else self._open_ring()
        budget = self._budget = max_events if max_events > 1 else 1
        self._sink, self._sample_sink, self._sink_error = sink, sample_sink, None
        try:
            if self._events:  # read by an earlier poll_events that nobody collected
                leftover, self._events = self._events, []
                for ev in leftover:
                    self._hand(ev)
            if self._budget > 0 and timeout_ms > 0:
                libbcc.lib.bpf_poll_ringbuf(rb, timeout_ms)
            if self._budget > 0:
                libbcc.lib.bpf_consume_ringbuf(rb)
        finally:
            self._sink = self._sample_sink = None
        if self._sink_error is not None:
            err, self._sink_error = self._sink_error, None
            raise err
        return budget - self._budget

    def poll_events(self, timeout_ms: int = 0) -> list[wire.Event]:
        rb = self._open_ring()
        if timeout_ms > 0:
            libbcc.lib.bpf_poll_ringbuf(rb, timeout_ms)
        libbcc.lib.bpf_consume_ringbuf(rb)
        out, self._events = self._events, []
        return out

    # -- flows -------------------------------------------------------------------------------------------------------
    # Two kernel tables hold the flows: `flows4` the settled ones between two IPv4 addresses (struct sg_flow_key4),
    # `flows` the rest. A flow moves from `flows` to `flows4` with its first packet after it settled (sg_move4 in
    # bpf/skyguard.bpf.c), so an IPv4 key may be in either: everything here speaks struct sg_flow_key (IPv4-mapped
    # addresses), and tries flows4 first for an IPv4 key, then `flows`.

    def flows(self) -> Iterator[tuple[wire.FlowKey, wire.Flow]]:
        """Every flow, decoded; read in batches (one syscall per BATCH flows) and snapshotted before yielding."""
        ks, vs = wire.FlowKey.FMT.size, wire.Flow.FMT.size
        for keys, vals, n in list(self.flows_raw()):
            for i in range(n):
                yield wire.FlowKey.unpack(keys[i * ks:(i + 1) * ks]), wire.Flow.unpack(vals[i * vs:(i + 1) * vs])

    def flows_raw(self) -> Iterator[tuple[bytes, bytes, int]]:
        """Both flow tables as raw (keys, values, n) chunks, every key a packed sg_flow_key, for callers that select
        before decoding (top-N)."""
        yield from self._flows.iter_batches()
        for keys, vals, n in self._flows4.iter_batches():
            yield wire.keys_of_key4s(keys, n), vals, n

    def write_flows_raw(self, keys: bytes, values: bytes) -> int:
        """Batch-insert packed flow keys (sg_flow_key) and values, each where the kernel would keep it: a settled IPv4
        flow in flows4 (benchmarks fill the tables this way); returns the count."""
        ks, vs, fo = wire.FlowKey.FMT.size, wire.Flow.FMT.size, wire.FLOW_FLAGS_OFF
        done, total, chunk = 0, len(keys) // ks, 65536  # a chunk at a time: a million flows' copies never pile up
        for start in range(0, total, chunk):
            k4, v4, k6, v6 = bytearray(), bytearray(), bytearray(), bytearray()
            for i in range(start, min(start + chunk, total)):
                key, val = keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs]
                compact = wire.key4_of(key) if val[fo] & _SETTLED and not val[fo] & _F_DNS else None
                if compact is None:
                    k6 += key
                    v6 += val
                else:
                    k4 += compact
                    v4 += val
            done += self._flows4.update_batch(bytes(k4), bytes(v4)) if k4 else 0
            done += self._flows.update_batch(bytes(k6), bytes(v6)) if k6 else 0
        return done

    def flow(self, key: wire.FlowKey) -> wire.Flow | None:
        raw = key.pack()
        compact = wire.key4_of(raw)
        val = self._flows4.lookup(compact) if compact is not None else None
        if val is None:
            val = self._flows.lookup(raw)
        return None if val is None else wire.Flow.unpack(val)

    def _verdict(self, key: wire.FlowKey, op: int, cls: int = 0, reason: int = 0, set_flags: int = 0,
                 clear_flags: int = 0) -> tuple[int, int] | None:
        """One decision applied in the kernel by xdp_verdict (see bpf/skyguard.bpf.c): the flow's class and flags
        after it, None when the flow is gone. Nothing the kernel counts is read or written back here."""
        v = key.pack() + wire.VERDICT_FMT.pack(wire.C["SG_V_MAGIC"], reason, op, cls, set_flags, clear_flags, 0)
        res = prog_test_run(self.verdict_fd, v.ljust(max(len(v), 64), b"\0"))
        if res.verdict != XDP_PASS:
            return None
        _m, _r, _op, now_cls, now_flags, _c, _p = wire.VERDICT_FMT.unpack_from(res.data, len(key.pack()))
        return now_cls, now_flags

    def set_class(self, key: wire.FlowKey, cls: int, reason: int) -> bool:
        """The daemon's class for a flow. SG_F_DAEMON goes in first (atomically), so the kernel's signatures stop
        changing the class; a packet that had already passed that check may still write its class once, hence the
        read-back and one more application."""
        flags = wire.C["SG_F_DAEMON"] | wire.C["SG_F_DONE"]
        for _ in range(3):
            got = self._verdict(key, wire.C["SG_V_CLASS"], cls, reason, set_flags=flags)
            if got is None:
                return False
            if got[0] == cls:
                return True
        return True

    def set_flow_flags(self, key: wire.FlowKey, set_flags: int = 0, clear_flags: int = 0) -> bool:
        """Set and clear SG_F_* bits of one flow (block, exempt) without touching anything else in it."""
        return self._verdict(key, wire.C["SG_V_FLAGS"], set_flags=set_flags, clear_flags=clear_flags) is not None

    def delete_flow(self, key: wire.FlowKey) -> None:
        self.delete_flows([key])

    def delete_flows(self, keys: Iterable[wire.FlowKey]) -> int:
        """Delete these flows (BPF_MAP_DELETE_BATCH: one syscall for thousands); those not in the tables are passed
        over. Returns how many were deleted."""
        packed = [k.pack() for k in keys]
        compact = [c for c in map(wire.key4_of, packed) if c is not None]
        n = self._flows4.delete_batch(b"".join(compact)) if compact else 0
        # an IPv4 key in `flows` too: a flow of a version before flows4 that no packet has moved yet
        return n + (self._flows.delete_batch(b"".join(packed)) if packed else 0)

    def flow_count(self) -> int:
        return sum(self.table_counts().values())

    def table_counts(self) -> dict[str, int]:
        """Flows in each kernel table: `flows` (new, inspecting and IPv6 flows) and `flows4` (settled IPv4 flows)."""
        return {name: sum(n for _k, _v, n in m.iter_batches())
                for name, m in (("flows", self._flows), ("flows4", self._flows4))}

    # -- stats -------------------------------------------------------------------------------------------------------
    def stats_per_cpu(self) -> list[list[int]]:
        """The `stats` map as the kernel holds it: each CPU's SG_ST_MAX counters, the derived ones as they are (0)."""
        raw = self._stats.lookup(b"\0\0\0\0") or b""
        n = wire.C["SG_ST_MAX"]
        return [[int.from_bytes(raw[base + 8 * i : base + 8 * i + 8], "little") for i in range(n)]
                for base in (cpu * self._stats.slot for cpu in range(self._stats.ncpus))]

    def stats(self) -> dict[str, int]:
        n = wire.C["SG_ST_MAX"]
        totals = [sum(col) for col in zip(*self.stats_per_cpu(), strict=True)] or [0] * n
        wire.derive_stats(totals)  # the totals and per-action, per-class counters: sums of pairs, never written
        return {name: totals[i] for i, name in wire.stat_names().items() if i < n}

    # -- policy and prefixes -----------------------------------------------------------------------------------------
    @property
    def gen(self) -> int:
        raw = self._config.lookup(b"\0\0\0\0")
        return wire.CONFIG_FMT.unpack(raw[: wire.CONFIG_FMT.size])[0] & 1 if raw else 0

    def _set_gen(self, gen: int) -> None:
        self._config.update(b"\0\0\0\0", wire.CONFIG_FMT.pack(gen, 0, time.time_ns()))

    def _entries(self, kind: str, gen: int) -> list[tuple[bytes, Network, int, int, int]]:
        """(raw key, network, source, expires_ns, family index) of one kind in one generation."""
        out = []
        for fam, m in enumerate(self._lpm[kind]):
            fmt = wire.LPM4_FMT if fam == 0 else wire.LPM6_FMT
            for raw in list(m.iter_keys()):
                plen, g, addr = fmt.unpack(raw)
                if g != gen:
                    continue
                val = m.lookup(raw)
                if val is None:
                    continue
                src, _pad, exp = wire.PREFIX_FMT.unpack(val[: wire.PREFIX_FMT.size])
                ip = ipaddress.ip_address(addr)
                out.append((raw, ipaddress.ip_network(f"{ip}/{plen - 8}", strict=False), src, exp, fam))
        return out

    def _write_prefix(self, kind: str, network: Network, gen: int, source: int, expires_ns: int) -> None:
        m = self._lpm[kind][0 if network.version == 4 else 1]
        if not m.update(wire.lpm_key(network, gen), wire.prefix_val(source, expires_ns)):
            raise OSError(f"cannot add {network} to {kind} (map full?)")

    def load_policy(self, policy: Policy) -> None:
        """Write the policy into the inactive generation, flip config.gen, then delete the old generation."""
        old = self.gen
        new = old ^ 1
        for i in range(wire.POL_SLOTS):
            slot = policy.slots[i] if i < len(policy.slots) else wire.PolicySlot()
            idx = (new * wire.POL_SLOTS + i).to_bytes(4, "little")
            mark, mask = policy.fwmarks.get(i, (0, 0))
            self._fwmarks.update(idx, wire.FWMARK_FMT.pack(mark, mask))  # before the slot that points at it
            self._policy.update(idx, slot.pack())
        for kind in PREFIX_KINDS:  # clear leftovers of the generation being written
            for raw, _net, _src, _exp, fam in self._entries(kind, new):
                self._lpm[kind][fam].delete(raw)
        self._qos.update(new.to_bytes(4, "little"), _qos_value(policy))
        wanted = {"pstn": policy.pstn_prefixes, "msmedia": policy.msmedia_prefixes, "exempt": policy.exempt_prefixes,
                  "drmedia": policy.drmedia_prefixes}
        for kind, nets in wanted.items():
            for net in nets:
                self._write_prefix(kind, _as_network(net), new, wire.SRC_POLICY, 0)
        carried = {wire.SRC_LEARNED, wire.SRC_MANUAL}
        for kind in PREFIX_KINDS:
            for _raw, net, src, exp, _fam in self._entries(kind, old):
                if kind == "block" or src in carried:
                    self._write_prefix(kind, net, new, src, exp)
        self._set_gen(new)
        # a packet that read the old generation just before the flip may still be looking its prefixes up: its
        # entries go (and its slots may be rewritten by the next reload) only once every such run has ended
        self.wait_for_programs()
        for kind in PREFIX_KINDS:
            for raw, _net, _src, _exp, fam in self._entries(kind, old):
                self._lpm[kind][fam].delete(raw)

    def endpoints(self) -> list[tuple[str, int, int, int, int]]:
        """Learned endpoints: (address, port, vlan, proved_ns, reason bits), as the kernel holds them (LRU, some
        possibly past their TTL: the kernel checks the TTL when it looks one up)."""
        out = []
        for k in list(self._endpoints.iter_keys()):
            v = self._endpoints.lookup(k)
            if v is None:
                continue
            addr, port, vlan = wire.EP_KEY_FMT.unpack(k[: wire.EP_KEY_FMT.size])
            proved, reason, _cls, _pad = wire.EP_FMT.unpack(v[: wire.EP_FMT.size])
            out.append((wire.addr_str(addr), port, vlan, proved, reason))
        return out

    def learn_endpoint(self, addr: bytes, port: int, vlan: int, proved_ns: int, reason: int, cls: int) -> None:
        """Write (or refresh) one learned endpoint: 16-byte address (IPv4 mapped), UDP port, VLAN id."""
        key = wire.EP_KEY_FMT.pack(addr, port, vlan)
        self._endpoints.update(key, wire.EP_FMT.pack(proved_ns, reason, cls, b"\0" * 3))

    def forget_endpoints(self) -> None:
        """Empty the learned endpoints (replay: each capture starts fresh)."""
        for k in list(self._endpoints.iter_keys()):
            self._endpoints.delete(k)

    def wait_for_programs(self) -> None:
        """Return once every run of the program that had started has ended. A write to a map of maps makes the
        kernel wait for an RCU grace period, and each run of an XDP program (and of BPF_PROG_TEST_RUN) is one RCU
        read-side section, however long it is delayed (preemption, a descheduled virtual CPU).

        A replay build is never attached (the daemon loads the live build): it runs only inside its owner's own,
        synchronous BPF_PROG_TEST_RUN calls, none of which is running while the owner is here (a replay Kernel is
        used by one thread), so there is nothing to wait for; the grace period (about 10 ms) would otherwise be paid
        once per replayed capture."""
        if self.replay:
            return
        if not self._rcu_sync.update(b"\0\0\0\0", self._rcu_inner_fd.to_bytes(4, "little")):
            raise OSError("cannot write rcu_sync: the reload cannot wait for running programs")

    def add_prefix(self, kind: str, network: str | Network, source: int, expires_ns: int = 0) -> None:
        self._write_prefix(self._kind(kind), _as_network(network), self.gen, source, expires_ns)

    def remove_prefix(self, kind: str, network: str | Network) -> None:
        net = _as_network(network)
        self._lpm[self._kind(kind)][0 if net.version == 4 else 1].delete(wire.lpm_key(net, self.gen))

    def prefixes(self, kind: str) -> list[tuple[Network, int, int]]:
        return [(net, src, exp) for _raw, net, src, exp, _fam in self._entries(self._kind(kind), self.gen)]

    @staticmethod
    def _kind(kind: str) -> str:
        if kind not in _LPM_MAPS:
            raise ValueError(f"unknown prefix kind {kind!r} (one of {', '.join(PREFIX_KINDS)})")
        return kind


def _qos_value(policy: Policy) -> bytes:
    """struct sg_qos of the policy's [qos] (a kind without ports gets an empty range: lo 1 > hi 0)."""
    kinds = policy.qos_kinds
    lo = [k.lo if k else 1 for k in kinds]
    hi = [k.hi if k else 0 for k in kinds]
    return wire.QOS_FMT.pack(*lo, *hi, bytes(k.dscp if k else 0 for k in kinds), b"\0\0\0")
