"""ClientHello -> SNI: hand-built hellos and real ones from the ssl module, truncated at every byte."""

from __future__ import annotations

import random
import ssl
import struct

import pytest

from skyguard.slowpath.tls import client_hello_sni, handshake_bytes


def ssl_hello(host: str | None, *, tls13_only: bool = False) -> bytes:
    """The ClientHello OpenSSL sends for `host` (ssl.MemoryBIO + SSLObject: no network)."""
    ctx = ssl.create_default_context()
    if host is None:
        ctx.check_hostname = False
    if tls13_only:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=host)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def _ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def sni_ext(*names: tuple[int, bytes]) -> bytes:
    lst = b"".join(struct.pack("!BH", t, len(n)) + n for t, n in names)
    return _ext(0, struct.pack("!H", len(lst)) + lst)


def hand_hello(exts: bytes, *, sid: bytes = b"", suites: int = 17, records: int = 1) -> bytes:
    body = b"\x03\x03" + bytes(range(32)) + bytes([len(sid)]) + sid
    body += struct.pack("!H", 2 * suites) + b"\x13\x01" * suites + b"\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    if records == 1:
        return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs
    step = -(-len(hs) // records)
    parts = [hs[i : i + step] for i in range(0, len(hs), step)]
    return b"".join(b"\x16\x03\x01" + struct.pack("!H", len(p)) + p for p in parts)


@pytest.mark.parametrize("host", ["eu-api.asm.skype.com", "teams.microsoft.com", "example.org"])
def test_real_openssl_hello(host: str) -> None:
    raw = ssl_hello(host)
    assert raw[:2] == b"\x16\x03"
    assert client_hello_sni(raw) == host
    assert client_hello_sni(raw[:512]) == host  # what the kernel hands over


def test_real_hello_without_sni() -> None:
    assert client_hello_sni(ssl_hello(None)) is None


@pytest.mark.parametrize("tls13_only", [False, True])
def test_truncated_at_every_byte(tls13_only: bool) -> None:
    host = "worldaa.relay.teams.microsoft.com"
    raw = ssl_hello(host, tls13_only=tls13_only)
    start = raw.index(host.encode())
    end = start + len(host)
    for n in range(len(raw) + 1):
        got = client_hello_sni(raw[:n])
        assert got == (host if n >= end else None), n


def test_hand_built_hello_with_session_id_and_other_extensions_first() -> None:
    exts = _ext(0x000A, b"\x00\x04\x00\x1d\x00\x17") + _ext(0xFF01, b"\x00") + sni_ext((0, b"Api.Skype.COM."))
    raw = hand_hello(exts, sid=bytes(32))
    assert client_hello_sni(raw) == "api.skype.com"
    for n in range(len(raw)):
        assert client_hello_sni(raw[:n]) is None


def test_hello_split_over_records() -> None:
    raw = hand_hello(sni_ext((0, b"a.lync.com")), suites=60, records=3)
    assert raw.count(b"\x16\x03\x01") >= 3
    assert client_hello_sni(raw) == "a.lync.com"
    assert len(handshake_bytes(raw)) == len(raw) - 3 * 5


def test_unknown_name_type_skipped() -> None:
    assert client_hello_sni(hand_hello(sni_ext((7, b"xx"), (0, b"b.skype.com")))) == "b.skype.com"
    assert client_hello_sni(hand_hello(sni_ext((7, b"xx")))) is None


@pytest.mark.parametrize("bad", [
    b"", b"\x16", b"\x17\x03\x01\x00\x05hello", b"\x16\x03\x01\x00\x00",
    b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # ServerHello
])
def test_not_a_hello(bad: bytes) -> None:
    assert client_hello_sni(bad) is None


def test_malformed_lengths_and_names() -> None:
    good = hand_hello(sni_ext((0, b"c.skype.com")))
    assert client_hello_sni(good) == "c.skype.com"
    odd = bytearray(good)
    assert odd[44:46] == b"\x00\x22"  # cipher_suites length (record 5 + handshake 4 + version 2 + random 32 + sid 1)
    odd[45] = 0x21  # an odd cipher-suite length is malformed
    assert client_hello_sni(bytes(odd)) is None
    assert client_hello_sni(hand_hello(sni_ext((0, b"bad name!")))) is None
    assert client_hello_sni(hand_hello(sni_ext((0, b"\xff\xfe.com")))) is None
    assert client_hello_sni(hand_hello(sni_ext((0, b"")))) is None
    # an extension whose length runs past the extensions block
    exts = sni_ext((0, b"c.skype.com"))
    bad = bytearray(hand_hello(exts))
    bad[-len(exts) + 3] = 0xFF
    assert client_hello_sni(bytes(bad)) is None


def test_fuzzed_hellos_never_raise() -> None:
    rng = random.Random(1)
    base = ssl_hello("x.teams.microsoft.com")
    for _ in range(3000):
        buf = bytearray(base[: rng.randint(0, len(base))])
        for _ in range(rng.randint(0, 4)):
            if buf:
                buf[rng.randrange(len(buf))] = rng.getrandbits(8)
        got = client_hello_sni(bytes(buf))
        assert got is None or isinstance(got, str)
