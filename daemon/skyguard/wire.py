"""Wire structures shared with the XDP program: the mirror of bpf/skyguard.h.

Everything here comes from the header itself (one source of truth): numeric constants, the wire names of classes,
actions, reasons and events, and the struct layouts behind every struct format (cheader.py reads them, strictly).
tests/unit/test_wire.py checks the layouts against the C compiler's sizes and offsets.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import struct
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import NamedTuple

from skyguard import cheader

# ---------------------------------------------------------------------------------------------------------------------
# Locating bpf/ and reading its header


def bpf_dir() -> Path:
    """The directory holding skyguard.bpf.c and skyguard.h (SKYGUARD_BPF_DIR overrides)."""
    env = os.environ.get("SKYGUARD_BPF_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for cand in (here / "bpf", here.parent.parent / "bpf"):
        if (cand / "skyguard.h").is_file():
            return cand
    raise FileNotFoundError(f"bpf/skyguard.h not found near {here}; set SKYGUARD_BPF_DIR")


@cache
def header() -> cheader.Header:
    return cheader.read(bpf_dir() / "skyguard.h")


def constants() -> dict[str, int]:
    """Every `#define SG_X <integer expression>` in skyguard.h."""
    return header().consts


C = constants()
STRUCTS = header().structs

# ---------------------------------------------------------------------------------------------------------------------
# Classes, actions, reasons, default limits


def _names(prefix: str, count: int | None = None) -> tuple[str, ...]:
    """The wire names of a group of defines numbered 0..n-1 (classes, actions)."""
    group = header().group(prefix)
    if sorted(group) != list(range(len(group))) or (count is not None and len(group) != count):
        raise cheader.HeaderError(f"skyguard.h: the named {prefix}* defines are not numbered 0..{len(group) - 1}")
    return tuple(group[i] for i in range(len(group)))


CLASS_NAMES = _names("SG_CLASS_", C["SG_NCLASSES"])
CLASS_IDS = {n: i for i, n in enumerate(CLASS_NAMES)}
ACTION_NAMES = _names("SG_ACT_")
ACTION_IDS = {n: i for i, n in enumerate(ACTION_NAMES)}
NCLASSES = C["SG_NCLASSES"]
POL_MALFORMED = C["SG_POL_MALFORMED"]
POL_BLOCKED = C["SG_POL_BLOCKED"]
POL_SLOTS = C["SG_POL_SLOTS"]


def class_name(cls: int) -> str:
    """A class id's name; an id this build does not know (a newer layout's flow) as its number."""
    return CLASS_NAMES[cls] if 0 <= cls < NCLASSES else str(cls)


UNKNOWN, OTHER, SIGNALING, P2P, OUT, RELAY = (C[f"SG_CLASS_{n}"] for n in
                                              ("UNKNOWN", "OTHER", "SIGNALING", "P2P", "OUT", "RELAY"))
PASS, DROP, MARK = C["SG_ACT_PASS"], C["SG_ACT_DROP"], C["SG_ACT_MARK"]

# reason bit -> short name used in replay JSON, events, logs and the socket; in the header's order, which is the
# priority when several are set
REASONS: dict[int, str] = header().group("SG_R_")
REASON_BITS = {v: k for k, v in REASONS.items()}

# the program's default limits (the daemon overrides them with -D cflags)
FLOWS_MAX = C["SG_FLOWS_MAX"]
WINDOW = C["SG_WINDOW"]
PROBE = C["SG_PROBE"]
LPM_MAX = C["SG_LPM_MAX"]
RINGBUF_BYTES = C["SG_RINGBUF_BYTES"]
BATCH_MAX = C["SG_BATCH_MAX"]  # packets per test run in a replay's batch (struct sg_batch)


def reason_name(bits: int) -> str:
    """The name of the highest-priority reason bit set, '' for none."""
    for bit, name in REASONS.items():
        if bits & bit:
            return name
    return ""


def reason_names(bits: int) -> list[str]:
    return [name for bit, name in REASONS.items() if bits & bit]


def _verdict_slot_names() -> tuple[str, ...]:
    """The verdict slots of the per-(slot, action) counters, by number: the classes, the policy slots past them
    (malformed, blocked), then SG_VS_* (exempt, none)."""
    group = {**header().group("SG_CLASS_"), **header().group("SG_POL_"), **header().group("SG_VS_")}
    if sorted(group) != list(range(C["SG_VS_SLOTS"])):
        raise cheader.HeaderError("skyguard.h: the named SG_CLASS_, SG_POL_ and SG_VS_ defines are not the verdict "
                                  f"slots 0..{C['SG_VS_SLOTS'] - 1}")
    return tuple(group[i] for i in range(len(group)))


VERDICT_SLOTS = _verdict_slot_names()
if len(ACTION_NAMES) != C["SG_NACTIONS"]:
    raise cheader.HeaderError("skyguard.h: SG_NACTIONS is not the number of named SG_ACT_ defines")


def verdict_index(slot: int, action: int) -> int:
    """stats index of the packet counter of (verdict slot, action); its byte counter is the next index."""
    return C["SG_ST_VERDICT_BASE"] + 2 * (slot * C["SG_NACTIONS"] + action)


def derive_stats(c: list[int]) -> list[int]:
    """Fill in, from the (verdict slot, action) pairs, the counters the kernel leaves to userspace (bpf/skyguard.h):
    `packets` and `bytes` (every pair), each action's counter (its pairs over every slot), each class's counter (its
    slot's pairs) and `out_flow` (the class slots'). `c` is the map's counters summed over CPUs; returned filled."""
    na = C["SG_NACTIONS"]
    pairs = [[c[verdict_index(s, a)] for a in range(na)] for s in range(len(VERDICT_SLOTS))]
    c[C["SG_ST_PACKETS"]] = sum(map(sum, pairs))
    c[C["SG_ST_BYTES"]] = sum(c[verdict_index(s, a) + 1] for s in range(len(VERDICT_SLOTS)) for a in range(na))
    for a, name in enumerate(ACTION_NAMES):
        c[C[f"SG_ST_ACT_{name.upper()}"]] = sum(row[a] for row in pairs)
    for cls in range(C["SG_NCLASSES"]):
        c[C["SG_ST_CLASS_BASE"] + cls] = sum(pairs[cls])
    c[C["SG_ST_OUT_FLOW"]] = sum(sum(pairs[cls]) for cls in range(C["SG_NCLASSES"]))
    return c


def stat_names() -> dict[int, str]:
    """stats map index -> counter name (lower-case, without the SG_ST_ prefix); the (verdict slot, action) pairs
    are `packets_<slot>_<action>` and `bytes_<slot>_<action>` (packets_skype-out_drop, bytes_none_pass)."""
    out: dict[int, str] = {}
    skip = ("SG_ST_MAX", "SG_ST_CLASS_BASE", "SG_ST_VERDICT_BASE")
    for name, val in C.items():
        if name.startswith("SG_ST_") and name not in skip and "OUTCOME" not in name:
            out[val] = name[6:].lower()
    for i, cls in enumerate(CLASS_NAMES):
        out[C["SG_ST_CLASS_BASE"] + i] = f"class_{cls}"
    for s, slot in enumerate(VERDICT_SLOTS):
        for a, act in enumerate(ACTION_NAMES):
            out[verdict_index(s, a)] = f"packets_{slot}_{act}"
            out[verdict_index(s, a) + 1] = f"bytes_{slot}_{act}"
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Addresses


def addr_bytes(addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16-byte form used in flow keys: IPv4 mapped to ::ffff:a.b.c.d."""
    ip = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
    if ip.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


_V4_MAPPED = bytes(10) + b"\xff\xff"


def addr_str(raw: bytes) -> str:
    # IPv4 (mapped) spelt directly, as str(IPv4Address) does: replay names every flow it decides and lists, and the
    # daemon every flow it logs, and an ipaddress object each time is most of that
    if len(raw) == 16 and raw[:12] == _V4_MAPPED:
        return f"{raw[12]}.{raw[13]}.{raw[14]}.{raw[15]}"
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)


def endpoint_str(raw: bytes, port: int) -> str:
    s = addr_str(raw)
    return f"[{s}]:{port}" if ":" in s else f"{s}:{port}"


# ---------------------------------------------------------------------------------------------------------------------
# Structures: layouts from the header, Python types whose fields are checked against them at import

PROTO_NAMES = {6: "tcp", 17: "udp"}
_PY_NAME = {"bytes": "bytes_"}  # header member -> Python field where the C name shadows a builtin


def _fmt(name: str, pads: bool = False) -> struct.Struct:
    """The `struct` format of a whole header struct (`pads`: its _pad members as values, else skipped)."""
    return struct.Struct("<" + STRUCTS[name].codes(pads=pads))


def _part(name: str, start: str | None = None, stop: str | None = None) -> tuple[int, struct.Struct]:
    """(offset, format) of the members of a header struct from `start` up to `stop` (pads skipped)."""
    st = STRUCTS[name]
    return (st.offset(start) if start else 0), struct.Struct("<" + st.codes(start, stop))


def _check_fields(cls: type, sname: str, names: tuple[str, ...]) -> None:
    """The Python type's fields are the header struct's members, in order: fail at import otherwise."""
    want = tuple(_PY_NAME.get(m.name, m.name) for m in STRUCTS[sname].members)
    if names != want:
        raise cheader.HeaderError(f"{cls.__name__} fields {names} do not match struct {sname} in skyguard.h {want}")


def _grouper(sname: str):
    """A function that turns the flat values of struct.unpack into one value per member (a tuple per array)."""
    spans, at = [], 0
    for m in STRUCTS[sname].members:
        n = m.values()
        spans.append((at, at + n, m.count and not m.is_bytes))
        at += n

    def group(v: tuple) -> list:
        return [tuple(v[a:b]) if arr else v[a] for a, b, arr in spans]

    return group


class FlowKey(NamedTuple):
    """struct sg_flow_key. A named tuple rather than a frozen dataclass: the daemon builds one per ring-buffer event,
    and a tuple is built faster and hashes faster as a dict key."""

    lo_addr: bytes
    hi_addr: bytes
    lo_port: int
    hi_port: int
    vlan: int
    proto: int

    FMT = _fmt("sg_flow_key")

    @classmethod
    def unpack(cls, raw: bytes | bytearray | memoryview, offset: int = 0) -> FlowKey:
        return cls._make(cls.FMT.unpack_from(raw, offset))

    def pack(self) -> bytes:
        return self.FMT.pack(*self)

    @classmethod
    def make(cls, src: str, sport: int, dst: str, dport: int, proto: int, vlan: int = 0) -> FlowKey:
        """The bidirectional key of a packet src:sport -> dst:dport (lower endpoint first)."""
        a, b = (addr_bytes(src), sport), (addr_bytes(dst), dport)
        lo, hi = (a, b) if a <= b else (b, a)
        return cls(lo[0], hi[0], lo[1], hi[1], vlan, proto)

    def endpoints(self, init_dir: int = 0) -> tuple[str, str]:
        """(a, b) as strings, a being the endpoint that sent the first packet."""
        lo = endpoint_str(self.lo_addr, self.lo_port)
        hi = endpoint_str(self.hi_addr, self.hi_port)
        return (lo, hi) if init_dir == 0 else (hi, lo)

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    def __str__(self) -> str:
        a, b = self.endpoints()
        return f"{self.proto_name} {a} <-> {b}" + (f" vlan {self.vlan}" if self.vlan else "")


_check_fields(FlowKey, "sg_flow_key", FlowKey._fields)

# struct sg_flow_key4: a flow between two IPv4 addresses, as the kernel keeps it in `flows4` (what follows the two
# addresses is sg_flow_key's, byte for byte)
KEY4_SIZE = STRUCTS["sg_flow_key4"].size
_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped
_KEY = FlowKey.FMT.size
assert KEY4_SIZE == 16 and _KEY == 40, "flow key layouts"


FLOW_FLAGS_OFF = STRUCTS["sg_flow"].offset("flags")
FLOW_TABLES = 2  # `flows` and `flows4`, flows_max entries each: the kernel holds up to this many times flows_max flows


def key4_of(key: bytes) -> bytes | None:
    """The flows4 key of a packed sg_flow_key whose two addresses are IPv4-mapped, else None."""
    if key[:12] != _MAPPED or key[16:28] != _MAPPED:
        return None
    return key[12:16] + key[28:32] + key[32:40]


def keys_of_key4s(raw: bytes | bytearray | memoryview, n: int) -> bytes:
    """n packed sg_flow_key4 -> the n sg_flow_keys they stand for (IPv4-mapped), in one pass per byte column: a
    million flows' keys are read this way for every snapshot of the table."""
    src = bytes(raw[: n * KEY4_SIZE])  # bytes' extended slices are plain C loops; a strided memoryview's are not
    out = bytearray(n * _KEY)
    for j in (10, 11, 26, 27):
        out[j::_KEY] = b"\xff" * n
    for j in range(4):
        out[12 + j::_KEY] = src[j::KEY4_SIZE]
        out[28 + j::_KEY] = src[4 + j::KEY4_SIZE]
    for j in range(8):
        out[32 + j::_KEY] = src[8 + j::KEY4_SIZE]
    return bytes(out)


_group_flow = _grouper("sg_flow")


@dataclass(slots=True)
class Flow:
    """struct sg_flow (its members' meaning: the header)."""

    first_ns: int = 0
    last_ns: int = 0
    pkts: tuple[int, int] = (0, 0)
    bytes_: tuple[int, int] = (0, 0)
    dropped: int = 0
    reason: int = 0
    prev_cid: tuple[int, int] = (0, 0)
    cid_rep: tuple[int, int] = (0, 0)
    evidence: int = 0
    inspected: int = 0
    cls: int = 0
    init_dir: int = 0
    som_func: int = 0xFF
    som_ok: int = 0
    som_data: int = 0
    stun: tuple[int, int] = (0, 0)
    rtp_pt: tuple[int, int] = (0xFF, 0xFF)
    rtp_cnt: tuple[int, int] = (0, 0)
    flags: int = 0
    prev_b4: tuple[int, int] = (0, 0)
    scratch: int = 0
    sent: tuple[int, int] = (0, 0)

    FMT = _fmt("sg_flow")

    @classmethod
    def unpack(cls, raw: bytes) -> Flow:
        return cls(*_group_flow(cls.FMT.unpack_from(raw)))

    def pack(self) -> bytes:
        out: list = []
        for name in _FLOW_FIELDS:
            v = getattr(self, name)
            if isinstance(v, tuple):
                out.extend(v)
            else:
                out.append(v)
        return self.FMT.pack(*out)

    @property
    def packets(self) -> int:
        return self.pkts[0] + self.pkts[1]

    @property
    def nbytes(self) -> int:
        return self.bytes_[0] + self.bytes_[1]

    @property
    def class_name(self) -> str:
        return class_name(self.cls)


_FLOW_FIELDS = tuple(f.name for f in dataclasses.fields(Flow))
_check_fields(Flow, "sg_flow", _FLOW_FIELDS)


@dataclass(frozen=True, slots=True)
class PolicySlot:
    """struct sg_policy."""

    action: int = PASS
    dscp: int = 0
    log: bool = False
    qos: bool = False  # media of the class is marked by media kind (policy [qos], the `qos` map)
    fwmark: bool = False  # the mark itself is in Policy.fwmarks (the `fwmarks` map)

    FMT = _fmt("sg_policy")

    def pack(self) -> bytes:
        opts = (C["SG_OPT_QOS"] if self.qos else 0) | (C["SG_OPT_FWMARK"] if self.fwmark else 0)
        return self.FMT.pack(self.action, self.dscp, 1 if self.log else 0, opts)

    @classmethod
    def unpack(cls, raw: bytes) -> PolicySlot:
        a, d, lg, opts = cls.FMT.unpack_from(raw)
        return cls(a, d, bool(lg), bool(opts & C["SG_OPT_QOS"]), bool(opts & C["SG_OPT_FWMARK"]))


# qos and fwmark share the struct's `opts` byte as SG_OPT_* bits
_check_fields(PolicySlot, "sg_policy", ("action", "dscp", "log", "opts"))

# these formats keep the structs' _pad members as values (pack them as 0)
QOS_FMT = _fmt("sg_qos", pads=True)
EP_KEY_FMT = _fmt("sg_ep_key", pads=True)
EP_FMT = _fmt("sg_ep", pads=True)
CONFIG_FMT = _fmt("sg_config", pads=True)
LPM4_FMT = _fmt("sg_lpm4", pads=True)
LPM6_FMT = _fmt("sg_lpm6", pads=True)
PREFIX_FMT = _fmt("sg_prefix", pads=True)
META_FMT = _fmt("sg_meta", pads=True)
FWMARK_FMT = _fmt("sg_fwmark", pads=True)
MARK_META_FMT = _fmt("sg_mark_meta", pads=True)
CHAIN_FMT = _fmt("sg_chain", pads=True)
# struct sg_verdict after its flow key: magic, reason, op, cls, set_flags, clear_flags, _pad
VERDICT_FMT = struct.Struct("<IIBBBBI")
META_MAGIC = C["SG_META_MAGIC"]
SRC_POLICY, SRC_LEARNED, SRC_MANUAL = C["SG_SRC_POLICY"], C["SG_SRC_LEARNED"], C["SG_SRC_MANUAL"]


def lpm_key(network: ipaddress.IPv4Network | ipaddress.IPv6Network, gen: int) -> bytes:
    """The LPM trie key of a prefix in generation `gen` (see struct sg_lpm4/6)."""
    if network.version == 4:
        return LPM4_FMT.pack(8 + network.prefixlen, gen, network.network_address.packed)
    return LPM6_FMT.pack(8 + network.prefixlen, gen, network.network_address.packed)


def prefix_val(source: int, expires_ns: int = 0) -> bytes:
    return PREFIX_FMT.pack(source, 0, expires_ns)


# ---------------------------------------------------------------------------------------------------------------------
# Events

EV_CLASSIFIED, EV_SAMPLE, EV_DNS, EV_TLS = (C["SG_EV_CLASSIFIED"], C["SG_EV_SAMPLE"], C["SG_EV_DNS"], C["SG_EV_TLS"])
EV_HTTP = C["SG_EV_HTTP"]
EVENT_NAMES = header().group("SG_EV_")
SAMPLE_BYTES, BIG_BYTES = C["SG_SAMPLE_BYTES"], C["SG_BIG_BYTES"]
_, EV_HDR_FMT = _part("sg_ev_hdr", stop="key")  # type, dir, place, ts_ns
EV_KEY_OFF = STRUCTS["sg_ev_hdr"].offset("key")
EV_HDR_SIZE = STRUCTS["sg_ev_hdr"].size
_, EV_CLASSIFIED_FMT = _part("sg_ev_classified", "old_cls")  # old_cls, new_cls, reason, pkts
_SAMPLE_OFF, _SAMPLE_FMT = _part("sg_ev_sample", "payload_len", "data")  # payload_len, caplen, inspected
_SAMPLE_DATA = STRUCTS["sg_ev_sample"].offset("data")
_BIG_OFF, _BIG_FMT = _part("sg_ev_big", "payload_len", "data")  # payload_len, caplen
_BIG_DATA = STRUCTS["sg_ev_big"].offset("data")
assert STRUCTS["sg_ev_classified"].offset("old_cls") == EV_HDR_SIZE == _SAMPLE_OFF == _BIG_OFF
# whole records up to their data (Event.unpack): type, dir, place, ts_ns, the key's members, then the body's
_, _EV_CLASSIFIED_FMT = _part("sg_ev_classified")
_, _EV_SAMPLE_FMT = _part("sg_ev_sample", stop="data")
_, _EV_BIG_FMT = _part("sg_ev_big", stop="data")
_EV_BIG_TYPES = frozenset({EV_DNS, EV_TLS, EV_HTTP})
# a `sample` record with its key left packed: type, dir, place, ts_ns, the key's 40 bytes, payload_len, caplen,
# inspected
_SAMPLE_RECORD = struct.Struct(EV_HDR_FMT.format + f"{EV_HDR_SIZE - EV_KEY_OFF}s" + _SAMPLE_FMT.format[1:])
assert _SAMPLE_RECORD.size == _EV_SAMPLE_FMT.size and EV_HDR_FMT.size == EV_KEY_OFF == EV_HDR_SIZE - FlowKey.FMT.size
assert STRUCTS["sg_ev_hdr"].offset("type") == 0 and STRUCTS["sg_ev_hdr"].members[0].codes() == "B"
_new_key = tuple.__new__  # FlowKey from a tuple of its members (what FlowKey._make does, without its checks)


def sample_record(raw: bytes) -> tuple[int, int, bytes, int, int, bytes]:
    """(dir, ts_ns, key, payload_len, inspected, data) of a `sample` record, the key as packed (FlowKey.pack's bytes:
    the slow path keys its flow state by them). Event.unpack's work without the Event and the FlowKey, for the
    daemon's pump and the replay's compiled loop, where samples are most of the records."""
    _, d, _place, ts, key, plen, caplen, inspected = _SAMPLE_RECORD.unpack_from(raw)
    return d, ts, key, plen, inspected, raw[_SAMPLE_DATA:_SAMPLE_DATA + caplen]


@dataclass(slots=True)
class Event:
    type: int
    dir: int
    ts_ns: int
    key: FlowKey
    old_cls: int = 0
    new_cls: int = 0
    reason: int = 0
    pkts: int = 0
    payload_len: int = 0
    inspected: int = 0
    data: bytes = field(default=b"", repr=False)
    place: int = 0  # replay build: the place in its capture of the packet that left it (struct sg_meta); 0 live

    @property
    def name(self) -> str:
        name = EVENT_NAMES.get(self.type)  # the daemon counts every event by name: no str() for a known type
        return str(self.type) if name is None else name

    @classmethod
    def unpack(cls, raw: bytes) -> Event:
        # the daemon decodes every ring-buffer record: one unpack_from per record (header, key and body at once) and
        # the key made by tuple.__new__ (a NamedTuple's own constructor is a Python function)
        if len(raw) < EV_HDR_SIZE:
            raise ValueError(f"event of {len(raw)} bytes is shorter than its {EV_HDR_SIZE}-byte header")
        typ = raw[0]
        if typ == EV_SAMPLE:
            _, d, place, ts, la, ha, lp, hp, vlan, proto, plen, caplen, inspected = _EV_SAMPLE_FMT.unpack_from(raw)
            return cls(typ, d, ts, _new_key(FlowKey, (la, ha, lp, hp, vlan, proto)), 0, 0, 0, 0, plen, inspected,
                       bytes(raw[_SAMPLE_DATA:_SAMPLE_DATA + caplen]), place)
        if typ == EV_CLASSIFIED:
            _, d, place, ts, la, ha, lp, hp, vlan, proto, old, new, reason, pkts = _EV_CLASSIFIED_FMT.unpack_from(raw)
            return cls(typ, d, ts, _new_key(FlowKey, (la, ha, lp, hp, vlan, proto)), old, new, reason, pkts, 0, 0, b"",
                       place)
        if typ in _EV_BIG_TYPES:
            _, d, place, ts, la, ha, lp, hp, vlan, proto, plen, caplen = _EV_BIG_FMT.unpack_from(raw)
            return cls(typ, d, ts, _new_key(FlowKey, (la, ha, lp, hp, vlan, proto)), payload_len=plen,
                       data=bytes(raw[_BIG_DATA:_BIG_DATA + caplen]), place=place)
        raise ValueError(f"unknown event type {typ}")

    def pack(self) -> bytes:
        """Inverse of unpack (used by tests and by tools that synthesise events)."""
        hdr = EV_HDR_FMT.pack(self.type, self.dir, self.place, self.ts_ns) + self.key.pack()
        if self.type == EV_CLASSIFIED:
            return hdr + EV_CLASSIFIED_FMT.pack(self.old_cls, self.new_cls, self.reason, self.pkts)
        if self.type == EV_SAMPLE:
            data = self.data[:SAMPLE_BYTES]
            return hdr + _SAMPLE_FMT.pack(self.payload_len, len(data), self.inspected) + data.ljust(SAMPLE_BYTES, b"\0")
        data = self.data[:BIG_BYTES]
        return hdr + _BIG_FMT.pack(self.payload_len, len(data)) + data.ljust(BIG_BYTES, b"\0")
