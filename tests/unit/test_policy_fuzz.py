"""Fuzzing parse_policy: any text gives a Policy or a PolicyError "path:line: reason" with a line inside the file.

Lines are counted as tomllib counts them ("\\n" only), so a text has text.count("\\n") + 1 lines; 0 = unknown.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skyguard import wire
from skyguard.policy import MAX_ERRORS, Policy, PolicyError, parse_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [p.read_text() for p in sorted((ROOT / "policies").glob("*.toml"))]
PATH = "fuzz/policy.toml"

KEYS = ["name", "action", "dscp", "log", "prefixes", "names", "class", "pstn", "exempt", "skype", "lgo", "x y", "é"]
TABLES = [
    "class.skype-out",
    "class.skype-p2p",
    "class.skype-signaling",
    "class.skype-relay",
    "class.other",
    "class.unknown",
    "class.nope",
    "class",
    "malformed",
    "blocked",
    "pstn",
    "microsoft_media",
    "exempt",
    "skype",
    "bogus",
    'class."skype-out"',
    "class.skype-out.action",
    "pstn.names",
]
SCALARS = [
    '"pass"',
    '"drop"',
    '"mark"',
    '"dorp"',
    "0",
    "8",
    "46",
    "63",
    "64",
    "-1",
    "true",
    "false",
    "1.5",
    "1979-05-27",
    '"block-pc-to-phone"',
    '"Bad Name"',
    '""',
    "'lit'",
    '"""multi\nline"""',
    "'''a]b'''",
    "inf",
    "nan",
    "0x2e",
]
ELEMENTS = [
    '"192.0.2.0/24"',
    '"192.0.2.1/24"',
    '"198.51.100.0/33"',
    '"2603:1063::/38"',
    '"2603:1063::1/38"',
    '"10.0.0.0/8"',
    '"sip.pstnhub.microsoft.com"',
    '"a..b"',
    '"1.2.3.4"',
    '"xn--bcher-kva.example"',
    "7",
    "true",
    "[]",
    "{a = 1}",
]


@st.composite
def values(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.sampled_from(SCALARS))
    if kind == 1:
        elems = draw(st.lists(st.sampled_from(ELEMENTS), max_size=5))
        sep = draw(st.sampled_from([", ", ",\n  ", ",\n  # c\n  ", ",\n\n"]))
        tail = draw(st.sampled_from(["", ",", ",\n"]))
        return "[" + sep.join(elems) + tail + "]"
    if kind == 2:
        k = draw(st.sampled_from(KEYS))
        return "{ " + f'"{k}" = ' + draw(st.sampled_from(SCALARS[:12])) + " }"
    return draw(st.text(max_size=12))


@st.composite
def lines(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return "[" + draw(st.sampled_from(TABLES)) + "]"
    if kind == 1:
        return "[[" + draw(st.sampled_from(TABLES)) + "]]"
    if kind in (2, 3):
        key = draw(st.sampled_from(KEYS + [f"{t}.{k}" for t in ("class.skype-out", "pstn") for k in KEYS[:6]]))
        if " " in key or not key.isascii():
            key = f'"{key}"'
        return f"{key} = {draw(values())}" + draw(st.sampled_from(["", "  # comment", "#", " \t"]))
    if kind == 4:
        return draw(st.sampled_from(["", "# comment", "   ", "\r", "\t#x", '"""', "]", "= 1"]))
    return draw(st.text(max_size=30))


@st.composite
def policy_texts(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 4))
    if kind == 0:  # a valid start plus random lines
        head = draw(st.sampled_from(['name = "fuzz"\n', "", 'name = "x"\r\n']))
        return head + draw(st.sampled_from(["\n", "\r\n"])).join(draw(st.lists(lines(), max_size=12)))
    if kind == 1:  # a shipped example, truncated
        text = draw(st.sampled_from(EXAMPLES))
        return text[: draw(st.integers(0, len(text)))]
    if kind == 2:  # a shipped example with one line replaced or inserted
        ex = draw(st.sampled_from(EXAMPLES)).split("\n")
        i = draw(st.integers(0, len(ex) - 1))
        new = draw(lines())
        if draw(st.booleans()):
            ex[i] = new
        else:
            ex.insert(i, new)
        return "\n".join(ex)
    if kind == 3:  # random bytes, as load_policy would never pass them but callers might
        return draw(st.binary(max_size=200)).decode("latin-1")
    return draw(st.text(max_size=200))


def check_outcome(text: str) -> Policy | PolicyError:
    nlines = text.count("\n") + 1
    try:
        p = parse_policy(text, PATH)
    except PolicyError as e:
        m = re.match(rf"^{re.escape(PATH)}(?::(\d+))?: \S", str(e))  # line 0 (unknown) is left out
        assert m, str(e)
        assert int(m.group(1) or 0) == e.line and 0 <= e.line <= nlines, (e.line, nlines, str(e))
        assert len(e.errors) <= MAX_ERRORS + 1 and all(0 <= ln <= nlines for ln, _ in e.errors), str(e)
        assert e.path == PATH and e.reason
        return e
    assert isinstance(p, Policy)
    assert len(p.slots) == wire.POL_SLOTS
    assert all(0 <= s.dscp <= 63 and s.action in (wire.PASS, wire.DROP, wire.MARK) for s in p.slots)
    assert p.slot(wire.POL_BLOCKED).action == wire.DROP
    return p


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_texts())
def test_fuzz_policy_texts(text: str) -> None:
    check_outcome(text)


@pytest.mark.slow
@settings(max_examples=20000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_texts())
def test_fuzz_policy_texts_long(text: str) -> None:
    check_outcome(text)


def test_every_truncation_of_the_examples() -> None:
    """Deterministic companion of the fuzzer: every prefix of every shipped policy."""
    outcomes = {type(check_outcome(text[:n])) for text in EXAMPLES for n in range(len(text) + 1)}
    assert outcomes == {Policy, PolicyError}


def test_deep_nesting_does_not_escape() -> None:
    check_outcome('name = "x"\na = ' + "[" * 5000 + "]" * 5000 + "\n")
