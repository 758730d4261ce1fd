"""bpf/skyguard.h is the one source: the layouts read from it agree with gcc byte for byte, the Python types follow it,
the reader refuses what it does not understand, and the sample config and the daemon's defaults are the header's."""

from __future__ import annotations

import shutil
import subprocess
import tomllib

import pytest

from skyguard import cheader, wire
from skyguard.daemon.config import Config
from tests.conftest import ROOT, skip_or_fail


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict[str, int]:
    """sizeof of every struct and offsetof of every member in the header, as gcc lays them out."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        skip_or_fail("no C compiler (gcc or cc) to check the header's layouts with")
    d = tmp_path_factory.mktemp("wire")
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "skyguard.h"', "int main(void) {"]
    for s, st in wire.STRUCTS.items():
        lines.append(f'printf("{s} %zu\\n", sizeof(struct {s}));')
        for m in st.fields:
            lines.append(f'printf("{s}.{m.name} %zu\\n", offsetof(struct {s}, {m.name}));')
    lines.append("return 0; }")
    (d / "l.c").write_text("\n".join(lines))
    subprocess.run([cc, "-I", str(wire.bpf_dir()), "-o", str(d / "l"), str(d / "l.c")], check=True)
    out = subprocess.run([str(d / "l")], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_every_struct_and_member_where_gcc_puts_it(layout):
    assert set(wire.STRUCTS) >= {"sg_flow_key", "sg_flow", "sg_policy", "sg_config", "sg_lpm4", "sg_lpm6",
                                 "sg_prefix", "sg_ev_hdr", "sg_ev_classified", "sg_ev_sample", "sg_ev_big",
                                 "sg_meta", "sg_stats"}
    for s, st in wire.STRUCTS.items():
        assert layout[s] == st.size, s
        for m in st.fields:
            assert layout[f"{s}.{m.name}"] == m.offset, f"{s}.{m.name}"


def test_struct_formats_have_the_c_sizes(layout):
    assert layout["sg_flow_key"] == wire.FlowKey.FMT.size == 40
    assert layout["sg_flow"] == wire.Flow.FMT.size == 96
    assert layout["sg_policy"] == wire.PolicySlot.FMT.size
    assert layout["sg_config"] == wire.CONFIG_FMT.size
    assert layout["sg_lpm4"] == wire.LPM4_FMT.size == 9
    assert layout["sg_lpm6"] == wire.LPM6_FMT.size == 21
    assert layout["sg_prefix"] == wire.PREFIX_FMT.size
    assert layout["sg_meta"] == wire.META_FMT.size
    assert layout["sg_stats"] == 8 * wire.C["SG_ST_MAX"]
    assert layout["sg_ev_hdr"] == wire.EV_HDR_SIZE
    assert layout["sg_ev_classified"] == wire.EV_HDR_SIZE + wire.EV_CLASSIFIED_FMT.size


def test_numpy_dtypes_have_the_c_layout(layout):
    from skyguard.kernel.flowtable import FLOW_DTYPE, KEY_DTYPE

    for dt, s in ((KEY_DTYPE, "sg_flow_key"), (FLOW_DTYPE, "sg_flow")):
        assert dt.itemsize == layout[s]
        for name in dt.names:
            assert dt.fields[name][1] == layout[f"{s}.{name}"], name


def test_flow_offsets(layout):
    """Each Flow field sits where the C compiler put it: pack a value with one distinct byte per field."""
    names = [f for f in wire.Flow.__dataclass_fields__]
    vals = {}
    for i, name in enumerate(names, 1):
        default = getattr(wire.Flow(), name)
        vals[name] = (2 * i, 2 * i + 1) if isinstance(default, tuple) else 2 * i
    f = wire.Flow(**vals)
    raw = f.pack()
    for name in names:
        c_name = "bytes" if name == "bytes_" else name
        first = vals[name][0] if isinstance(vals[name], tuple) else vals[name]
        assert raw[layout[f"sg_flow.{c_name}"]] == first, name
    assert wire.Flow.unpack(raw) == f


def test_key_offsets_and_direction(layout):
    k = wire.FlowKey.make("10.0.0.2", 5000, "10.0.0.1", 6000, 17, vlan=7)
    raw = k.pack()
    assert raw[layout["sg_flow_key.lo_addr"] + 15] == 1  # 10.0.0.1 is the lower endpoint
    assert int.from_bytes(raw[layout["sg_flow_key.lo_port"]:][:2], "little") == 6000
    assert int.from_bytes(raw[layout["sg_flow_key.vlan"]:][:2], "little") == 7
    assert raw[layout["sg_flow_key.proto"]] == 17
    assert k.endpoints(0) == ("10.0.0.1:6000", "10.0.0.2:5000")
    assert k.endpoints(1) == ("10.0.0.2:5000", "10.0.0.1:6000")
    assert wire.FlowKey.make("2001:db8::1", 1, "2001:db8::2", 2, 6).endpoints()[0] == "[2001:db8::1]:1"


def test_event_roundtrip(layout):
    k = wire.FlowKey.make("192.0.2.1", 1, "198.51.100.2", 2, 17)
    for ev in (wire.Event(wire.EV_CLASSIFIED, 1, 99, k, old_cls=0, new_cls=4, reason=0x40, pkts=3, place=12),
               wire.Event(wire.EV_SAMPLE, 0, 5, k, payload_len=67, inspected=9, data=bytes(range(64)), place=2**32 - 1),
               wire.Event(wire.EV_DNS, 1, 6, k, payload_len=100, data=b"x" * 100)):
        raw = ev.pack()
        assert len(raw) == layout[{wire.EV_CLASSIFIED: "sg_ev_classified", wire.EV_SAMPLE: "sg_ev_sample",
                                   wire.EV_DNS: "sg_ev_big"}[ev.type]]
        assert wire.Event.unpack(raw) == ev
        # the packet's place sits where the kernel writes it
        at = layout["sg_ev_hdr.place"]
        assert wire.Event.unpack(raw).place == ev.place and raw[at:at + 4] == ev.place.to_bytes(4, "little")
        if ev.type == wire.EV_SAMPLE:
            assert wire.sample_record(raw)[:2] == (ev.dir, ev.ts_ns)
    raw = wire.Event(wire.EV_SAMPLE, 0, 5, k, payload_len=67, inspected=9, data=b"abc").pack()
    assert raw[layout["sg_ev_sample.data"]:][:3] == b"abc" and raw[layout["sg_ev_sample.inspected"]] == 9
    with pytest.raises(ValueError):
        wire.Event.unpack(b"\x01" * 10)


def test_event_unpack_every_type_and_unknown():
    """Event.unpack decodes each record with one struct of the whole record: every type, the key's members in place,
    data cut at caplen; an unknown type is refused and named by its number."""
    k = wire.FlowKey.make("2001:db8::1", 443, "2001:db8::2", 50000, 6, vlan=12)
    for typ in (wire.EV_TLS, wire.EV_HTTP, wire.EV_DNS):
        ev = wire.Event(typ, 1, 2**40, k, payload_len=700, data=b"\x16\x03" * 300)
        got = wire.Event.unpack(ev.pack())
        assert got == wire.Event(typ, 1, 2**40, k, payload_len=700, data=(b"\x16\x03" * 300)[:wire.BIG_BYTES])
        assert type(got.key) is wire.FlowKey and got.key.vlan == 12 and got.name == wire.EVENT_NAMES[typ]
    ev = wire.Event(wire.EV_CLASSIFIED, 0, 7, k, old_cls=1, new_cls=5, reason=0xFFFFFFFF, pkts=2**63)
    assert wire.Event.unpack(ev.pack()) == ev
    raw = bytearray(ev.pack())
    raw[0] = 200
    with pytest.raises(ValueError, match="unknown event type 200"):
        wire.Event.unpack(bytes(raw))
    assert wire.Event(200, 0, 0, k).name == "200"


def test_names_come_from_the_header():
    assert wire.CLASS_NAMES == ("unknown", "other", "skype-signaling", "skype-p2p", "skype-out", "skype-relay")
    assert wire.ACTION_NAMES == ("pass", "drop", "mark")
    assert [wire.C[f"SG_CLASS_{n}"] for n in ("OUT", "RELAY")] == [wire.CLASS_IDS["skype-out"], wire.RELAY]
    assert wire.EVENT_NAMES == {1: "classified", 2: "sample", 3: "dns", 4: "tls", 5: "http"}
    assert len(wire.REASONS) == sum(1 for k in wire.C if k.startswith("SG_R_"))  # every reason bit has a name


def test_verdict_pairs_fill_the_stats_struct_after_the_other_counters():
    """The (verdict slot, action) block: slots named by the header, one packet and one byte counter per pair, past
    every other counter and exactly up to SG_ST_MAX (the C side only asserts that it fits)."""
    names = wire.stat_names()
    assert (*wire.CLASS_NAMES, "malformed", "blocked", "exempt", "none") == wire.VERDICT_SLOTS
    assert wire.VERDICT_SLOTS.index("malformed") == wire.POL_MALFORMED
    assert wire.VERDICT_SLOTS.index("blocked") == wire.POL_BLOCKED
    pair_idx = [i for i, n in names.items() if n.startswith(("packets_", "bytes_"))]
    assert len(pair_idx) == 2 * len(wire.VERDICT_SLOTS) * len(wire.ACTION_NAMES)
    assert min(pair_idx) == wire.C["SG_ST_VERDICT_BASE"] > max(set(names) - set(pair_idx))
    assert max(pair_idx) == wire.C["SG_ST_MAX"] - 1 == wire.verdict_index(len(wire.VERDICT_SLOTS) - 1, wire.MARK) + 1
    assert len(set(names.values())) == len(names)
    i = wire.verdict_index(wire.OUT, wire.DROP)
    assert (names[i], names[i + 1]) == ("packets_skype-out_drop", "bytes_skype-out_drop")
    assert names[wire.verdict_index(wire.C["SG_VS_NONE"], wire.PASS)] == "packets_none_pass"


def test_derived_counters_are_sums_of_the_pairs():
    """The counters the kernel leaves to userspace (bpf/skyguard.h): totals, per action, per class, out_flow."""
    c = [0] * wire.C["SG_ST_MAX"]
    names = {n: i for i, n in wire.stat_names().items()}
    moved = {("skype-out", "drop"): (3, 300), ("other", "pass"): (5, 500), ("other", "mark"): (2, 140),
             ("exempt", "pass"): (7, 70), ("none", "pass"): (11, 1100), ("malformed", "drop"): (1, 64),
             ("blocked", "drop"): (4, 256)}
    for (slot, act), (pkts, nbytes) in moved.items():
        c[names[f"packets_{slot}_{act}"]], c[names[f"bytes_{slot}_{act}"]] = pkts, nbytes
    c[names["packets"]] = c[names["act_pass"]] = 999  # whatever a pinned map of an older version held is replaced
    d = {n: wire.derive_stats(c)[i] for n, i in names.items()}
    assert (d["packets"], d["bytes"]) == (33, 2430)
    assert (d["act_pass"], d["act_drop"], d["act_mark"]) == (23, 8, 2)
    assert (d["class_skype-out"], d["class_other"], d["class_unknown"]) == (3, 7, 0)
    assert d["out_flow"] == 10  # classes only: not exempt (its own outcome), blocked, malformed or none


def test_reason_names_are_unique_bits():
    assert len(set(wire.REASONS.values())) == len(wire.REASONS)
    for bit in wire.REASONS:
        assert bit & (bit - 1) == 0
    assert wire.reason_name(wire.REASON_BITS["ms-prefix"] | wire.REASON_BITS["ms-stun-attr"]) == "ms-prefix"
    assert wire.reason_name(wire.REASON_BITS["manual"] | wire.REASON_BITS["window-end"]) == "manual"


def test_flag_and_bit_values_are_unique_within_their_field():
    for prefix in ("SG_E_", "SG_S_", "SG_SENT_", "SG_F_", "SG_R_"):
        bits = [v for k, v in wire.C.items() if k.startswith(prefix) and k != "SG_E_DECISIVE"]
        assert len(bits) == len(set(bits)), prefix
        assert all(b and b & (b - 1) == 0 for b in bits), prefix


@pytest.mark.parametrize("text, what", [
    ("#define SG_X foo\n", "not an integer"),
    ("#define SG_X (SG_Y | 1)\n#define SG_Y 2\n", "SG_Y is not defined above"),
    ('#define SG_X 1 /* "Not-A-Name" */\n', "wire name"),
    ("struct sg_a {\n\tint x;\n};\n", "cannot read this member"),
    ("struct sg_a {\n\t__u8 x[SG_NOPE];\n};\n", "array dimension"),
    ("struct sg_a {\n\tstruct sg_b b;\n};\n", "before it is defined"),
    ("struct sg_a {\n\t__u8 x;\n", "not closed"),
    ("struct sg_a {\n\t__u8 x; __u8 y;\n};\n", "cannot read this member"),
])
def test_the_reader_refuses_what_it_does_not_understand(text, what):
    with pytest.raises(cheader.HeaderError, match=what):
        cheader.parse(text, "t.h")


def test_reader_takes_constants_defined_above():
    h = cheader.parse("#define SG_A 0x1\n#define SG_B (1 << 3)\n#define SG_AB (SG_A | SG_B) /* both */\n", "t.h")
    assert h.consts["SG_AB"] == 9
    assert wire.C["SG_STRONG_REASONS"] == (wire.C["SG_R_SOM_VOICE"] | wire.C["SG_R_ICE_BOTH"] | wire.C["SG_R_ICE_LITE"]
                                     | wire.C["SG_R_RTP_STATIC"] | wire.C["SG_R_MS_PREFIX"])


def test_reader_layout_rules():
    h = cheader.parse("#define SG_N 3\nstruct sg_a {\n\t__u8 a;\n\t__u32 b[SG_N];\n\t__u16 c;\n};\n"
                      "struct sg_p {\n\t__u32 x;\n\t__u8 y;\n} __attribute__((packed));\n", "t.h")
    a, p = h.structs["sg_a"], h.structs["sg_p"]
    assert [(m.name, m.offset) for m in a.fields] == [("a", 0), ("b", 4), ("c", 16)] and a.size == 20
    assert p.size == 5 and a.codes() == "B3x3IH2x"


def test_sample_config_and_daemon_defaults_are_the_headers():
    """systemd/skyguard.toml documents the defaults: they are the header's, and so are the daemon's."""
    sample = tomllib.loads((ROOT / "systemd" / "skyguard.toml").read_text())
    assert sample["flows_max"] == wire.C["SG_FLOWS_MAX"] == Config().flows_max
    assert sample["window"] == wire.C["SG_WINDOW"] == Config().window


def test_addr_str_equals_ipaddress():
    """addr_str spells IPv4-mapped addresses itself: the same strings as the ipaddress module, v4 and v6."""
    import ipaddress
    import random

    rng = random.Random(3)
    raws = [bytes(10) + b"\xff\xff" + bytes(4), bytes(10) + b"\xff\xff" + b"\xff" * 4, bytes(16), bytes(15) + b"\x01",
            bytes(12) + b"\x01\x02\x03\x04", bytes(10) + b"\xff\xfe" + b"\x01\x02\x03\x04"]
    raws += [bytes(10) + b"\xff\xff" + rng.randbytes(4) for _ in range(2000)] + [rng.randbytes(16) for _ in range(500)]
    for raw in raws:
        ip = ipaddress.IPv6Address(raw)
        assert wire.addr_str(raw) == (str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip))
    assert wire.addr_str(wire.addr_bytes("192.0.2.10")) == "192.0.2.10"
    with pytest.raises(ValueError):
        wire.addr_str(bytes(10) + b"\xff\xff" + b"\x01")  # not 16 bytes: refused as before
