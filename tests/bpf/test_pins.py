"""Pins made by another build (kernel/pins.py): what bcc does with them unchecked, a `stats` map of the previous
layout made anew while the flows are adopted, and a refusal that names the map, both layouts and the remedy for any
other mismatch, before anything is touched."""

from __future__ import annotations

import os

import pytest

from skyguard import wire
from skyguard.kernel import pins
from skyguard.lab import packet as P

OLD_STATS_U64 = 40  # sg_stats before the (verdict slot, action) pairs (SG_ST_MAX 40): what the previous version pinned
SMALL = {"flows_max": 4096, "lpm_max": 1024, "ringbuf_bytes": 1 << 20}
FRAME = P.udp("10.5.0.1", 4000, "10.5.0.2", 4001, bytes(range(40)))
FLOW = wire.FlowKey.make("10.5.0.1", 4000, "10.5.0.2", 4001, 17)


def pin_by_hand(path: str, name: str, bcc_type: str, key: str | None, value: str, entries: int) -> pins.Layout:
    """Pin a map the way an older build's bcc would (BPF_TABLE_PINNED), with the key and value members given (a key
    of None: u32, as array maps' BTF requires)."""
    import bcc

    ktype = "u32" if key is None else "struct k"
    b = bcc.BPF(text=((f"struct k {{ {key}; }};\n" if key else "") + f"struct v {{ {value}; }};\n"
                f'BPF_TABLE_PINNED("{bcc_type}", {ktype}, struct v, {name}, {entries}, "{path}/{name}");\n'
                "int f(struct xdp_md *ctx) { return XDP_PASS; }\n").encode())
    b.cleanup()  # the pin keeps the map
    return pins.pinned_layout(f"{path}/{name}")


def map_id(path: str) -> int:
    from skyguard.kernel.bpfobj import pinned_map_id

    got = pinned_map_id(path)
    assert got is not None, path
    return got


def previous_version_pins(path: str) -> int:
    """Pins as the previous version leaves them: this build's maps with one flow in `flows`, and a `stats` of the
    old layout. Returns the old stats map's id."""
    from skyguard.kernel.loader import Kernel

    with Kernel(pin_path=path, **SMALL) as k:
        k.test_run(FRAME)
        assert k.flow(FLOW).packets == 1
    os.unlink(f"{path}/stats")
    old = pin_by_hand(path, "stats", "percpu_array", None, f"__u64 c[{OLD_STATS_U64}]", 1)
    assert old.value_size == 8 * OLD_STATS_U64
    return map_id(f"{path}/stats")


def test_definitions_are_the_programs_maps_with_the_builds_sizes():
    defs = pins.definitions(["-DSG_FLOWS_MAX=4096", "-DSG_LPM_MAX=1024"])
    assert {"flows", "flows4", "policy", "config", "stats", "qos", "endpoints", "fwmarks", "chained", "chain",
            *(f"{k}_v{v}" for k in ("pstn", "msmedia", "exempt", "block", "drmedia") for v in (4, 6))} == set(defs)
    assert defs["flows"] == (pins.Layout(pins.MAP_TYPES["lru_hash"], 40, 96, 4096), "flows_max")
    assert defs["flows4"] == (pins.Layout(pins.MAP_TYPES["lru_hash"], 16, 96, 4096), "flows_max")
    assert defs["stats"][0] == pins.Layout(pins.MAP_TYPES["percpu_array"], 4, wire.STRUCTS["sg_stats"].size, 1)
    assert defs["policy"][0].max_entries == 2 * wire.POL_SLOTS and defs["pstn_v6"][0].max_entries == 1024
    assert defs["pstn_v6"][0].key_size == wire.LPM6_FMT.size and defs["chain"][0].type == pins.MAP_TYPES["prog"]


@pytest.mark.bpf
def test_unchecked_bcc_adopts_the_old_stats_and_the_verifier_refuses(pin_path, monkeypatch):
    """Why the loader checks: bcc 0.26 opens the pin as it is, and the program's first counter past the old struct
    is an out-of-bounds map access, reported by the verifier without naming the map."""
    from skyguard.kernel.bpfobj import BpfError
    from skyguard.kernel.loader import Kernel

    previous_version_pins(pin_path)
    monkeypatch.setattr(pins, "check", lambda _path, _defs: [])
    with pytest.raises(BpfError, match=f"invalid access to map value, value_size={8 * OLD_STATS_U64} "):
        Kernel(pin_path=pin_path, **SMALL)


@pytest.mark.bpf
def test_old_stats_layout_is_made_anew_and_the_flows_are_adopted(pin_path):
    from skyguard.kernel.loader import Kernel

    old_id = previous_version_pins(pin_path)
    with Kernel(pin_path=pin_path, **SMALL) as k:
        assert [(m.name, m.pinned.value_size, m.build.value_size) for m in k.recreated] == [
            ("stats", 8 * OLD_STATS_U64, wire.STRUCTS["sg_stats"].size)]
        assert pins.pinned_layout(f"{pin_path}/stats") == pins.definitions()["stats"][0]
        assert map_id(f"{pin_path}/stats") != old_id
        assert k.flow_count() == 1 and k.stats()["packets"] == 0  # flows carried over, counters restarted
        k.test_run(FRAME)
        st = k.stats()
        assert st["packets"] == st["packets_unknown_pass"] == 1 and st["bytes_unknown_pass"] == len(FRAME)
        assert k.flow(FLOW).packets == 2  # the adopted flow goes on
    with Kernel(pin_path=pin_path, **SMALL) as k:  # the next start finds its own layout: nothing to do
        assert k.recreated == [] and k.stats()["packets"] == 1


@pytest.mark.bpf
def test_a_mismatched_flows_pin_refuses_the_start_and_touches_nothing(pin_path):
    from skyguard.kernel.loader import Kernel

    pin_by_hand(pin_path, "flows", "lru_hash", "__u8 k[40]", "__u8 v[88]", 4096)
    pin_by_hand(pin_path, "stats", "percpu_array", None, f"__u64 c[{OLD_STATS_U64}]", 1)
    stats_id = map_id(f"{pin_path}/stats")
    with pytest.raises(pins.PinError) as ei:
        Kernel(pin_path=pin_path, **SMALL)
    msg = str(ei.value)
    assert msg.startswith(f"pinned map 'flows' ({pin_path}/flows) does not match this build"), msg
    assert "pinned lru_hash, key 40 B, value 88 B, 4096 entries" in msg, msg
    assert "this build lru_hash, key 40 B, value 96 B, 4096 entries" in msg, msg
    assert f"remove that pin (rm {pin_path}/flows), losing its state" in msg, msg
    assert "flows_max" not in msg  # not a size change: no hint about the setting
    assert map_id(f"{pin_path}/stats") == stats_id  # the refusal came before the stats pin was replaced
    assert sorted(os.listdir(pin_path)) == ["flows", "stats"]  # and before bcc pinned anything


@pytest.mark.bpf
def test_a_flows_pin_of_another_flows_max_names_the_setting(pin_path):
    from skyguard.kernel.loader import Kernel

    with Kernel(pin_path=pin_path, **SMALL):
        pass
    with pytest.raises(pins.PinError, match=r"was flows_max changed\? flows_max = 4096 adopts the pinned map"):
        Kernel(pin_path=pin_path, **{**SMALL, "flows_max": 8192})
