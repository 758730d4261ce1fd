"""The Python mirror (wire.py) agrees with the C header byte for byte: sizes and offsets from gcc itself."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from skyguard import wire

FIELDS = {
    "sg_flow_key": ["lo_addr", "hi_addr", "lo_port", "hi_port", "vlan", "proto"],
    "sg_flow": ["first_ns", "last_ns", "pkts", "bytes", "dropped", "reason", "prev_cid", "cid_rep", "evidence",
                "inspected", "cls", "init_dir", "som_func", "som_ok", "som_data", "stun", "rtp_pt", "rtp_cnt",
                "flags", "prev_b4", "scratch"],
    "sg_ev_hdr": ["type", "dir", "ts_ns", "key"],
    "sg_ev_classified": ["hdr", "old_cls", "new_cls", "reason", "pkts"],
    "sg_ev_sample": ["hdr", "payload_len", "caplen", "inspected", "data"],
    "sg_ev_big": ["hdr", "payload_len", "caplen", "data"],
}
STRUCTS = [*FIELDS, "sg_policy", "sg_config", "sg_lpm4", "sg_lpm6", "sg_prefix", "sg_meta", "sg_stats"]


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict[str, int]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("wire")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "skyguard.h"', "int main(void) {"]
    for s in STRUCTS:
        lines.append(f'printf("{s} %zu\\n", sizeof(struct {s}));')
    for s, fields in FIELDS.items():
        for f in fields:
            lines.append(f'printf("{s}.{f} %zu\\n", offsetof(struct {s}, {f}));')
    lines.append("return 0; }")
    (d / "l.c").write_text("\n".join(lines))
    subprocess.run([cc, "-I", str(wire.bpf_dir()), "-o", str(d / "l"), str(d / "l.c")], check=True)
    out = subprocess.run([str(d / "l")], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_struct_sizes(layout):
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
    assert layout["sg_ev_sample"] == wire.EV_HDR_SIZE + 8 + wire.C["SG_SAMPLE_BYTES"]
    assert layout["sg_ev_big"] == wire.EV_HDR_SIZE + 8 + wire.C["SG_BIG_BYTES"]


def test_flow_offsets(layout):
    """Each Flow field sits where the C compiler put it: pack a value with one distinct byte per field."""
    f = wire.Flow(first_ns=1, last_ns=2, pkts=(3, 4), bytes_=(5, 6), dropped=7, reason=8, prev_cid=(9, 10),
                  cid_rep=(11, 12), evidence=13, inspected=14, cls=15, init_dir=16, som_func=17, som_ok=18,
                  som_data=19, stun=(20, 21), rtp_pt=(22, 23), rtp_cnt=(24, 25), flags=26,
                  prev_b4=(27, 28), scratch=29)
    raw = f.pack()
    expect = {"first_ns": 1, "last_ns": 2, "pkts": 3, "bytes": 5, "dropped": 7, "reason": 8, "prev_cid": 9,
              "cid_rep": 11, "evidence": 13, "inspected": 14, "cls": 15, "init_dir": 16, "som_func": 17,
              "som_ok": 18, "som_data": 19, "stun": 20, "rtp_pt": 22, "rtp_cnt": 24, "flags": 26,
              "prev_b4": 27, "scratch": 29}
    for name, val in expect.items():
        assert raw[layout[f"sg_flow.{name}"]] == val, name
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


def test_event_roundtrip():
    k = wire.FlowKey.make("192.0.2.1", 1, "198.51.100.2", 2, 17)
    for ev in (wire.Event(wire.EV_CLASSIFIED, 1, 99, k, old_cls=0, new_cls=4, reason=0x40, pkts=3),
               wire.Event(wire.EV_SAMPLE, 0, 5, k, payload_len=67, inspected=9, data=bytes(range(64))),
               wire.Event(wire.EV_DNS, 1, 6, k, payload_len=100, data=b"x" * 100)):
        assert wire.Event.unpack(ev.pack()) == ev
    with pytest.raises(ValueError):
        wire.Event.unpack(b"\x01" * 10)


def test_reason_names_are_unique_bits():
    assert len(set(wire.REASONS)) == len(wire.REASONS)
    for bit in wire.REASONS:
        assert bit & (bit - 1) == 0
    assert wire.reason_name(wire.REASON_BITS["ms-prefix"] | wire.REASON_BITS["ms-stun-attr"]) == "ms-prefix"
