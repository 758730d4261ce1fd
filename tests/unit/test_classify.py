"""SlowPath: dispatch of kernel events to the E2O statistics, DNS learning and TLS SNI, with bounded per-flow state."""

from __future__ import annotations

import ipaddress
import ssl

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR

from skyguard import wire
from skyguard.policy import Policy
from skyguard.slowpath.classify import Decision, PrefixChange, SlowPath
from tests.scapy_compat import dns_answers

from .test_e2o import e2e_flow, e2o_flow, game_flow, random_flow, wireguard_flow

S = 1_000_000_000
R = wire.C


def policy(**kw) -> Policy:
    kw.setdefault("pstn_names", ("sip.pstnhub.microsoft.com",))
    return Policy(name="t", path=None, slots=tuple(wire.PolicySlot() for _ in range(wire.POL_SLOTS)), **kw)


def key(n: int = 1, proto: int = 17) -> wire.FlowKey:
    return wire.FlowKey.make(f"192.0.2.{n % 250 + 1}", 40000 + n // 250, "203.0.113.7", 12340, proto)


def sample_events(k: wire.FlowKey, samples) -> list[wire.Event]:
    """Sample events as the ring buffer delivers them (packed and unpacked: data cut to 64 bytes)."""
    out = []
    for i, (ts, d, plen, data) in enumerate(samples, 1):
        ev = wire.Event(type=wire.EV_SAMPLE, dir=d, ts_ns=ts, key=k, payload_len=plen, inspected=i + 2, data=data)
        out.append(wire.Event.unpack(ev.pack()))
    return out


def classified(k: wire.FlowKey, new: int, reason: int) -> wire.Event:
    return wire.Event(type=wire.EV_CLASSIFIED, dir=0, ts_ns=1, key=k, old_cls=0, new_cls=new, reason=reason, pkts=3)


def big(k: wire.FlowKey, typ: int, data: bytes, ts: int = 0) -> wire.Event:
    return wire.Event.unpack(wire.Event(type=typ, dir=1, ts_ns=ts, key=k, payload_len=len(data), data=data).pack())


def feed(sp: SlowPath, events) -> list[tuple[int, Decision]]:
    out = []
    for i, ev in enumerate(events, 1):
        out += [(i, d) for d in sp.on_event(ev)]
    return out


def test_e2o_flow_becomes_skype_out_once() -> None:
    sp = SlowPath(policy())
    k = key()
    got = feed(sp, sample_events(k, e2o_flow(11, n_per_dir=150)))
    assert len(got) == 1
    n, d = got[0]
    assert n <= 150
    assert d.key == k and d.cls == wire.OUT and d.reason == R["SG_R_E2O_STATS"] and "cid" in d.detail
    assert sp.status()["flows"]["tracked"] == 0  # state released once decided


def test_no_decision_from_a_sample_of_a_flows_first_min_samples() -> None:
    """A replay's batch goes on past a sample of a kernel flow's first SG_SAMPLES_MIN - 1 inspected packets, so no
    decision may come from one. Here the kernel's flow is made again after 80 samples (evicted, same key): the samples
    of the first one do not count for the second, which is decided on its own samples."""
    from skyguard.slowpath import e2o

    sp = SlowPath(policy())
    k = key()
    evs = []
    for i, (ts, d, plen, data) in enumerate(e2o_flow(11, n_per_dir=150)):
        insp = i + 1 if i < 80 else i - 79
        evs.append(wire.Event.unpack(wire.Event(type=wire.EV_SAMPLE, dir=d, ts_ns=ts, key=k, payload_len=plen,
                                                inspected=insp, data=data).pack()))
    got = feed(sp, evs)
    assert len(got) == 1 and got[0][1].cls == wire.OUT
    assert evs[got[0][0] - 1].inspected >= e2o.MIN_SAMPLES == R["SG_SAMPLES_MIN"]


def test_e2o_recall_through_slowpath() -> None:
    sp = SlowPath(policy())
    outs = 0
    for seed in range(100):
        k = key(seed)
        outs += any(d.cls == wire.OUT for _, d in feed(sp, sample_events(k, e2o_flow(1000 + seed))))
    assert outs >= 95


@pytest.mark.parametrize("model", [wireguard_flow, game_flow, random_flow])
def test_decoys_give_no_decision(model) -> None:
    sp = SlowPath(policy())
    for seed in range(40):
        assert feed(sp, sample_events(key(seed), model(seed))) == []


def test_e2e_flow_becomes_p2p_unless_kernel_already_did() -> None:
    sp = SlowPath(policy())
    got = feed(sp, sample_events(key(1), e2e_flow(2)))
    assert [(d.cls, d.reason) for _, d in got] == [(wire.P2P, R["SG_R_SOM_VOICE"])]
    sp2 = SlowPath(policy())
    k = key(2)
    assert sp2.on_event(classified(k, wire.P2P, R["SG_R_SOM_VOICE"])) == []
    assert feed(sp2, sample_events(k, e2e_flow(2))) == []


def test_kernel_pstn_decision_is_not_redone() -> None:
    sp = SlowPath(policy())
    k = key()
    sp.on_event(classified(k, wire.OUT, R["SG_R_PSTN_PREFIX"]))
    assert feed(sp, sample_events(k, e2o_flow(4))) == []
    assert sp.status()["flows"]["tracked"] == 0


def test_kernel_p2p_by_som_can_still_be_corrected_to_out() -> None:
    sp = SlowPath(policy())
    k = key()
    sp.on_event(classified(k, wire.P2P, R["SG_R_SOM"]))
    got = feed(sp, sample_events(k, e2o_flow(4)))
    assert [d.cls for _, d in got] == [wire.OUT]


def test_contradicted_other_can_become_out_but_not_p2p() -> None:
    sp = SlowPath(policy())
    k, k2, k3 = key(1), key(2), key(3)
    sp.on_event(classified(k, wire.OTHER, R["SG_R_CONTRADICT"]))
    assert [d.cls for _, d in feed(sp, sample_events(k, e2o_flow(8)))] == [wire.OUT]
    sp.on_event(classified(k2, wire.OTHER, R["SG_R_CONTRADICT"]))
    assert feed(sp, sample_events(k2, e2e_flow(8))) == []
    sp.on_event(classified(k3, wire.RELAY, R["SG_R_MS_STUN"]))
    assert feed(sp, sample_events(k3, e2o_flow(8))) == []


def test_flow_argument_with_daemon_flag_blocks_redecision() -> None:
    sp = SlowPath(policy())
    k = key()
    evs = sample_events(k, e2o_flow(5))
    flow = wire.Flow(cls=wire.OTHER, flags=R["SG_F_DAEMON"])
    assert [d for ev in evs for d in sp.on_event(ev, flow)] == []


def test_interleaved_flows_are_kept_apart() -> None:
    sp = SlowPath(policy())
    a, b, c = key(1), key(2), key(3)
    evs = sample_events(a, e2o_flow(7)) + sample_events(b, game_flow(7)) + sample_events(c, e2e_flow(7))
    evs.sort(key=lambda e: e.ts_ns)
    got = {d.key: d.cls for _, d in feed(sp, evs)}
    assert got == {a: wire.OUT, c: wire.P2P}


def test_flow_state_is_bounded() -> None:
    sp = SlowPath(policy(), flow_state_max=50)
    for n in range(400):
        for ev in sample_events(key(n), random_flow(n, n=5)):
            sp.on_event(ev)
    st = sp.status()["flows"]
    assert st["tracked"] <= 50 and st["max"] == 50 and st["evicted"] >= 350


def test_forget_drops_state() -> None:
    sp = SlowPath(policy())
    k = key()
    feed(sp, sample_events(k, e2o_flow(1))[:50])
    assert sp.status()["flows"]["tracked"] == 1
    sp.forget(k)
    assert sp.status()["flows"]["tracked"] == 0


def _hello(host: str) -> bytes:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(inc, out, server_hostname=host)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_tls_sni_decides_signalling_once() -> None:
    sp = SlowPath(policy())
    k = key(1, proto=6)
    ev = big(k, wire.EV_TLS, _hello("eu-api.asm.skype.com"))
    assert sp.on_event(ev) == [Decision(k, wire.SIGNALING, R["SG_R_SNI"], "eu-api.asm.skype.com")]
    assert sp.on_event(ev) == []


def test_tls_other_or_missing_sni_gives_nothing() -> None:
    sp = SlowPath(policy())
    assert sp.on_event(big(key(1, 6), wire.EV_TLS, _hello("www.example.org"))) == []
    assert sp.on_event(big(key(2, 6), wire.EV_TLS, b"\x16\x03\x01\x00")) == []
    assert sp.status()["counters"]["tls_other"] == 1 and sp.status()["counters"]["tls_no_sni"] == 1


def test_tls_uses_policy_names_and_respects_kernel_media_classes() -> None:
    sp = SlowPath(policy(skype_names=("corp.example",)))
    assert sp.on_event(big(key(1, 6), wire.EV_TLS, _hello("a.skype.com"))) == []
    assert len(sp.on_event(big(key(2, 6), wire.EV_TLS, _hello("sbc.corp.example")))) == 1
    sp = SlowPath(policy())
    k = key(3, 6)
    sp.on_event(classified(k, wire.OUT, R["SG_R_PSTN_PREFIX"]))
    assert sp.on_event(big(k, wire.EV_TLS, _hello("sip.pstnhub.microsoft.com"))) == []


def _dns(ttl: int) -> bytes:
    pkt = DNS(id=3, qr=1, rd=1, ra=1, qd=DNSQR(qname="sip.pstnhub.microsoft.com"),
              an=dns_answers([DNSRR(rrname="sip.pstnhub.microsoft.com", type="A", rdata="52.114.16.74", ttl=ttl)]))
    return bytes(pkt.compress())


def test_dns_learning_expiry_and_policy_reload() -> None:
    sp = SlowPath(policy())
    k = wire.FlowKey.make("192.0.2.1", 5353, "192.0.2.53", 53, 17)
    assert sp.on_event(big(k, wire.EV_DNS, _dns(120), ts=5 * S)) == []
    (pc,) = sp.take_prefix_changes()
    assert isinstance(pc, PrefixChange)
    assert (pc.kind, pc.add, pc.expires_ns) == ("pstn", True, 125 * S)
    assert pc.network == ipaddress.ip_network("52.114.16.74/32") and pc.reason == R["SG_R_PSTN_NAME"]
    assert sp.take_prefix_changes() == []
    assert sp.status()["learned"]["addresses"] == 1
    sp.expire(100 * S)
    assert sp.take_prefix_changes() == []
    sp.expire(125 * S)
    assert [(c.add, c.network) for c in sp.take_prefix_changes()] == [(False, pc.network)]
    # learn again, then a policy without the name removes it; one still naming it keeps it
    sp.on_event(big(k, wire.EV_DNS, _dns(120), ts=200 * S))
    sp.take_prefix_changes()
    sp.set_policy(policy(pstn_names=("sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com")))
    assert sp.take_prefix_changes() == []
    sp.set_policy(policy(pstn_names=()))
    assert [c.add for c in sp.take_prefix_changes()] == [False]


def test_dns_memory_bound_and_garbage() -> None:
    sp = SlowPath(policy(), dns_max_entries=4)
    k = key()
    for i in range(10):
        pkt = DNS(id=i, qr=1, qd=DNSQR(qname="sip.pstnhub.microsoft.com"),
                  an=dns_answers([DNSRR(rrname="sip.pstnhub.microsoft.com", type="A", rdata=f"52.114.1.{i + 1}",
                                           ttl=60)]))
        sp.on_event(big(k, wire.EV_DNS, bytes(pkt)))
    sp.on_event(big(k, wire.EV_DNS, b"\xff" * 40))
    st = sp.status()
    assert st["learned"]["addresses"] == 4 and st["learned"]["max"] == 4
    assert sum(st["dns"]["errors"].values()) >= 1


# ---- host correlation ----------------------------------------------------------------------------------------------

CLIENT, MS_SERVER, AZURE_SERVER = "198.51.100.20", "52.113.194.132", "104.40.187.151"


def _azure_dns(name: str, addr: str, ttl: int = 300, via: str = "api.stream.trafficmanager.net") -> bytes:
    pkt = DNS(id=9, qr=1, rd=1, ra=1, qd=DNSQR(qname=name),
              an=dns_answers([DNSRR(rrname=name, type="CNAME", rdata=via, ttl=ttl),
                              DNSRR(rrname=via, type="A", rdata=addr, ttl=ttl)]))
    return bytes(pkt)


def _hello_from(client: str, sport: int, server: str, host: str, ts: int) -> wire.Event:
    """A ClientHello event as the kernel sends it: dir 0 when the client is the key's lower endpoint."""
    k = wire.FlowKey.make(client, sport, server, 443, 6)
    d = 0 if k.lo_addr == wire.addr_bytes(client) else 1
    return wire.Event.unpack(wire.Event(type=wire.EV_TLS, dir=d, ts_ns=ts, key=k, data=_hello(host)).pack())


def _dns_event(data: bytes, ts: int) -> wire.Event:
    return big(wire.FlowKey.make("192.0.2.53", 53, CLIENT, 5353, 17), wire.EV_DNS, data, ts=ts)


def test_host_correlation_after_a_teams_session() -> None:
    sp = SlowPath(policy())
    assert len(sp.on_event(_hello_from(CLIENT, 50001, MS_SERVER, "teams.microsoft.com", 10 * S))) == 1
    sp.on_event(_dns_event(_azure_dns("api.microsoftstream.com", AZURE_SERVER), 11 * S))
    assert sp.status()["learned"]["cloud"] == 1 and sp.take_prefix_changes() == []  # never pushed to the kernel
    ev = _hello_from(CLIENT, 50002, AZURE_SERVER, "api.microsoftstream.com", 12 * S)
    (d,) = sp.on_event(ev)
    assert (d.key, d.cls, d.reason) == (ev.key, wire.SIGNALING, R["SG_R_HOST_CORR"])
    assert "api.microsoftstream.com" in d.detail and "Azure" in d.detail
    assert wire.reason_name(d.reason) == "host-corr"
    assert sp.on_event(ev) == []  # decided once
    # a ClientHello without server_name is correlated the same way
    nosni = _hello_from(CLIENT, 50003, AZURE_SERVER, "x.invalid", 13 * S)
    nosni = wire.Event(type=nosni.type, dir=nosni.dir, ts_ns=nosni.ts_ns, key=nosni.key,
                       data=b"\x16\x03\x01\x00\x05\x01")
    assert [x.reason for x in sp.on_event(nosni)] == [R["SG_R_HOST_CORR"]]
    assert sp.status()["counters"]["host_corr"] == 2


@pytest.mark.parametrize("case", ["no-session", "other-client", "stale", "not-azure", "dns-expired", "kernel-media"])
def test_host_correlation_needs_every_condition(case: str) -> None:
    sp = SlowPath(policy())
    if case != "no-session":
        sp.on_event(_hello_from(CLIENT, 50001, MS_SERVER, "teams.microsoft.com", 10 * S))
    if case == "not-azure":  # the same name served from a plain CDN: no Azure zone on the chain
        sp.on_event(_dns_event(_azure_dns("api.microsoftstream.com", AZURE_SERVER, via="cdn.example.net"), 11 * S))
    else:
        sp.on_event(_dns_event(_azure_dns("api.microsoftstream.com", AZURE_SERVER, ttl=30), 11 * S))
    client, ts = CLIENT, 12 * S
    if case == "other-client":
        client = "198.51.100.21"
    elif case == "stale":
        ts = (10 + 61) * S
        sp.on_event(_dns_event(_azure_dns("api.microsoftstream.com", AZURE_SERVER, ttl=300), ts - S))
    elif case == "dns-expired":
        ts = 42 * S  # 31 s after an answer with TTL 30
    ev = _hello_from(client, 50002, AZURE_SERVER, "api.microsoftstream.com", ts)
    if case == "kernel-media":
        sp.on_event(classified(ev.key, wire.OUT, R["SG_R_PSTN_PREFIX"]))
    assert sp.on_event(ev) == []


def test_correlated_flows_do_not_extend_the_session() -> None:
    sp = SlowPath(policy())
    sp.on_event(_hello_from(CLIENT, 50001, MS_SERVER, "teams.microsoft.com", 10 * S))
    sp.on_event(_dns_event(_azure_dns("api.microsoftstream.com", AZURE_SERVER, ttl=3600), 11 * S))
    assert len(sp.on_event(_hello_from(CLIENT, 50002, AZURE_SERVER, "api.microsoftstream.com", 60 * S))) == 1
    assert sp.on_event(_hello_from(CLIENT, 50003, AZURE_SERVER, "api.microsoftstream.com", 75 * S)) == []
    # a new SNI-proved flow opens the window again
    sp.on_event(_hello_from(CLIENT, 50004, MS_SERVER, "presence.teams.microsoft.com", 80 * S))
    assert len(sp.on_event(_hello_from(CLIENT, 50005, AZURE_SERVER, "api.microsoftstream.com", 81 * S))) == 1


def test_cloud_table_is_bounded_and_separate_from_learned_prefixes() -> None:
    sp = SlowPath(policy(), dns_max_entries=4)
    sp.on_event(_dns_event(_dns(600), 1 * S))  # one PSTN entry
    for i in range(20):
        sp.on_event(_dns_event(_azure_dns(f"h{i}.example.com", f"40.79.138.{i + 1}"), 2 * S))
    st = sp.status()
    assert st["learned"]["cloud"] == 4 and st["learned"]["pstn"] == 1  # Azure answers cannot evict PSTN entries
    assert st["dns"]["errors"]["cloud-evicted"] == 16
    sp.expire(10_000 * S)
    assert sp.status()["learned"]["cloud"] == 0


def test_host_correlation_window_comes_from_the_policy() -> None:
    from skyguard.policy import PolicyError, parse_policy

    base = 'name = "t"\n[skype]\n'
    assert parse_policy(base).host_corr_s == 60
    assert parse_policy(base + "host_correlation_s = 5\n").host_corr_s == 5
    for bad in ("-1", "3601", "true", '"60"'):
        with pytest.raises(PolicyError) as e:
            parse_policy(base + f"host_correlation_s = {bad}\n", "p.toml")
        assert e.value.line == 3 and "host_correlation_s" in str(e.value)
    for window, expect in ((0, 0), (5, 0), (60, 1)):
        sp = SlowPath(parse_policy(base + f"host_correlation_s = {window}\n"))
        sp.on_event(_hello_from(CLIENT, 50001, MS_SERVER, "teams.microsoft.com", 10 * S))
        sp.on_event(_dns_event(_azure_dns("api.microsoftstream.com", AZURE_SERVER), 11 * S))
        assert len(sp.on_event(_hello_from(CLIENT, 50002, AZURE_SERVER, "api.microsoftstream.com", 20 * S))) == expect


def test_slow_path_memory_per_watched_flow() -> None:
    """One LRU entry and one small record per flow, samples packed: under 600 B a watched probe flow (traced Python
    allocations, not RSS). It was 1.2 KB with one LRU per kind of state; at 65536 flows that is 40 MiB of RSS."""
    import tracemalloc

    sp = SlowPath(policy(), flow_state_max=20_000)
    evs = []
    for i in range(20_000):
        k = wire.FlowKey.make(f"10.0.{i >> 8}.{i & 255}", 40000, "203.0.113.7", 5000 + i % 1000, 17)
        evs.append(classified(k, wire.SIGNALING, R["SG_R_SOM"]))
        evs += sample_events(k, [(i * 1000, 0, 43, bytes([0x12, 0x34, 0x02]) + bytes(range(40)))])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for ev in evs:
            sp.on_event(ev)
        per_flow = (tracemalloc.get_traced_memory()[0] - before) / 20_000
    finally:
        tracemalloc.stop()
    assert sp.status()["flows"]["tracked"] == 20_000
    assert per_flow < 600, per_flow


def test_e2o_gate_equals_the_per_sample_formula() -> None:
    """_on_sample reads e2o_gate(kernel word), computed once per word, where it used to work the gate out per sample:
    the same answer for every class (and an unknown one) under every combination of reason bits."""
    from skyguard.slowpath import classify as cl

    def old(kernel: int) -> int:  # _on_sample's formula before e2o_gate
        kcls, kreason = (wire.UNKNOWN, 0) if kernel < 0 else (kernel & 0xFF, kernel >> 8)
        weak_other = kcls == wire.OTHER and (kreason == 0 or kreason & cl.R_WEAK_OTHER)
        if (kcls not in cl._E2O_OVER and not weak_other) or kreason & cl._KERNEL_SETTLED:
            return cl.E2O_NO
        return cl.E2O_NO_P2P if kcls not in cl._E2E_OVER or weak_other else cl.E2O_ANY

    bits = sorted({v for k, v in wire.C.items() if k.startswith("SG_R_")} | {1 << b for b in range(24)})
    reasons = {0} | set(bits) | {a | b for a in bits for b in bits} | {cl.R_WEAK_OTHER | cl._KERNEL_SETTLED}
    kernels = [-1] + [c | r << 8 for c in range(wire.NCLASSES + 2) for r in reasons]
    assert {cl.e2o_gate(k) for k in kernels} == {cl.E2O_NO, cl.E2O_ANY, cl.E2O_NO_P2P}
    for k in kernels:
        assert cl.e2o_gate(k) == old(k), k
    assert cl._Flow().e2o == old(-1)
