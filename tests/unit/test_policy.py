"""Policy files: the shipped examples, every refusal kind with its exact file:line: reason, the default, names."""

from __future__ import annotations

import hashlib
import ipaddress
import pickle
from pathlib import Path

import pytest

from skyguard import names, wire
from skyguard.policy import DEFAULT_MSMEDIA_PREFIXES, PolicyError, default_policy, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
NET = ipaddress.ip_network


def refuse(text: str) -> str:
    with pytest.raises(PolicyError) as ei:
        parse_policy(text, "p.toml")
    e = ei.value
    assert str(e).splitlines()[0] == f"{e.path}:{e.line}: {e.reason}"
    return str(e)


# ---------------------------------------------------------------------------------------------------------------------
# The shipped policies


def test_block_pc_to_phone() -> None:
    p = load_policy(POLICIES / "block-pc-to-phone.toml")
    assert p.name == "block-pc-to-phone"
    assert p.path == str(POLICIES / "block-pc-to-phone.toml")
    assert len(p.slots) == wire.POL_SLOTS
    assert p.slot(wire.OUT) == wire.PolicySlot(wire.DROP, 0, True)
    assert p.slot(wire.SIGNALING) == wire.PolicySlot(wire.MARK, 8, False)
    assert p.slot(wire.RELAY) == wire.PolicySlot(wire.PASS, 0, True)
    for cls in (wire.UNKNOWN, wire.OTHER, wire.P2P):
        assert p.slot(cls) == wire.PolicySlot(wire.PASS, 0, False)
    assert p.slot(wire.POL_MALFORMED) == wire.PolicySlot(wire.PASS, 0, False)
    assert p.slot(wire.POL_BLOCKED) == wire.PolicySlot(wire.DROP, 0, True)
    assert p.pstn_prefixes == (NET("195.215.8.140/32"), NET("212.72.49.155/32"))
    assert p.pstn_names == ("sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com")
    assert p.msmedia_prefixes == (NET("52.112.0.0/14"), NET("52.122.0.0/15"), NET("2603:1063::/38"))
    assert NET("10.0.0.0/8") not in p.exempt_prefixes and p.exempt_prefixes
    assert "skype.com" in p.skype_names
    text = (POLICIES / "block-pc-to-phone.toml").read_bytes()
    assert p.digest == hashlib.sha256(text).hexdigest()
    assert p.loaded_ns > 0


def test_observe_only() -> None:
    p = load_policy(POLICIES / "observe-only.toml")
    assert p.name == "observe-only"
    assert all(s.action == wire.PASS for s in p.slots[: wire.NCLASSES])
    assert [s.log for s in p.slots[: wire.NCLASSES]] == [False, False, True, True, True, True]
    assert p.msmedia_prefixes == tuple(NET(x) for x in DEFAULT_MSMEDIA_PREFIXES)
    assert p.pstn_prefixes == () and p.exempt_prefixes == ()


def test_mark_voice() -> None:
    p = load_policy(POLICIES / "mark-voice.toml")
    assert p.name == "mark-voice"
    for cls in (wire.P2P, wire.OUT, wire.RELAY):
        assert p.slot(cls) == wire.PolicySlot(wire.MARK, 46, False)
    assert p.slot(wire.SIGNALING) == wire.PolicySlot(wire.MARK, 24, False)
    assert p.slot(wire.OTHER) == wire.PolicySlot(wire.PASS, 0, False)
    assert not any(s.action == wire.DROP for s in p.slots[: wire.NCLASSES])


def test_slots_pack_for_the_kernel() -> None:
    p = load_policy(POLICIES / "mark-voice.toml")
    assert p.slot(wire.P2P).pack() == bytes([wire.MARK, 46, 0, 0])


# ---------------------------------------------------------------------------------------------------------------------
# Accepted variations


def test_minimal_policy_everything_passes() -> None:
    p = parse_policy('name = "x"\n')
    assert p.path == "<string>"
    assert p.slots[: wire.NCLASSES] == (wire.PolicySlot(),) * wire.NCLASSES
    assert p.slot(wire.POL_BLOCKED).action == wire.DROP
    assert p.msmedia_prefixes == tuple(NET(x) for x in DEFAULT_MSMEDIA_PREFIXES)
    assert p.skype_names == names.BUILTIN_SKYPE_NAMES


def test_explicit_microsoft_media_replaces_default_even_when_empty() -> None:
    assert parse_policy('name = "x"\n[microsoft_media]\nprefixes = ["52.112.0.0/14"]\n').msmedia_prefixes == (
        NET("52.112.0.0/14"),
    )
    assert parse_policy('name = "x"\n[microsoft_media]\nprefixes = []\n').msmedia_prefixes == ()


def test_skype_names_add_to_builtins_normalised() -> None:
    p = parse_policy('name = "x"\n[skype]\nnames = ["Example.ORG.", "skype.com"]\n')
    assert p.skype_names[: len(names.BUILTIN_SKYPE_NAMES)] == names.BUILTIN_SKYPE_NAMES
    assert p.skype_names[-1] == "example.org"
    assert p.skype_names.count("skype.com") == 1


def test_dotted_and_inline_forms() -> None:
    p = parse_policy('name = "x"\nclass.skype-out = { action = "mark", dscp = 10, log = true }\n')
    assert p.slot(wire.OUT) == wire.PolicySlot(wire.MARK, 10, True)
    p = parse_policy('name = "x"\n[class]\nskype-p2p.action = "drop"\n')
    assert p.slot(wire.P2P).action == wire.DROP


def test_malformed_and_blocked_slots() -> None:
    p = parse_policy('name = "x"\n[malformed]\naction = "drop"\nlog = true\n[blocked]\naction = "drop"\ndscp = 8\n')
    assert p.slot(wire.POL_MALFORMED) == wire.PolicySlot(wire.DROP, 0, True)
    assert p.slot(wire.POL_BLOCKED) == wire.PolicySlot(wire.DROP, 8, False)


def test_default_policy() -> None:
    p = default_policy()
    assert p.name == "default" and p.path is None
    assert len(p.slots) == wire.POL_SLOTS
    assert all(s == wire.PolicySlot() for s in p.slots[: wire.POL_BLOCKED])
    assert p.slot(wire.POL_BLOCKED).action == wire.DROP
    assert p.msmedia_prefixes == tuple(NET(x) for x in DEFAULT_MSMEDIA_PREFIXES)
    assert NET("13.107.64.0/18") in p.msmedia_prefixes and NET("2603:1063::/38") in p.msmedia_prefixes
    assert p.skype_names == names.BUILTIN_SKYPE_NAMES
    assert p.pstn_prefixes == p.exempt_prefixes == ()


# ---------------------------------------------------------------------------------------------------------------------
# Refusals: exact file:line: reason


def test_syntax_error_line_from_tomllib() -> None:
    assert refuse('name = "x"\n\n[class.skype-out]\naction = \n') == (
        "p.toml:4: TOML syntax error: Invalid value (column 10)"
    )


def test_syntax_error_duplicate_key() -> None:
    assert refuse('name = "x"\nname = "y"\n').startswith("p.toml:2: TOML syntax error: Cannot overwrite a value")


def test_syntax_error_at_end_of_document() -> None:
    assert refuse('name = "x"\nnames = [\n"a",\n').startswith("p.toml:3: TOML syntax error:")


def test_missing_name() -> None:
    assert refuse('[class.skype-out]\naction = "drop"\n') == (
        'p.toml:1: missing required top-level key name (e.g. name = "my-policy")'
    )


def test_bad_name() -> None:
    assert refuse('# c\nname = "Block Phones"\n') == (
        "p.toml:2: name 'Block Phones' must be 1..64 characters of a-z 0-9 . _ -"
    )
    assert refuse("name = 3\n") == "p.toml:1: name must be a string, not integer"


def test_unknown_top_level_table_with_hint() -> None:
    assert refuse('name = "x"\n\n[exmept]\nprefixes = []\n') == (
        "p.toml:3: unknown key or table 'exmept' (allowed: name, class, malformed, blocked, pstn, microsoft_media, "
        "exempt, skype, direct_routing, qos); did you mean 'exempt'?"
    )


def test_unknown_class() -> None:
    assert refuse('name = "x"\n[class.skype-outt]\naction = "drop"\n') == (
        "p.toml:2: unknown key 'class.skype-outt' (allowed in [class]: unknown, other, skype-signaling, skype-p2p, "
        "skype-out, skype-relay); did you mean 'skype-out'?"
    )


def test_unknown_key_in_class() -> None:
    assert refuse('name = "x"\n[class.other]\naction = "pass"\nlgo = true\n') == (
        "p.toml:4: unknown key 'class.other.lgo' (allowed in [class.other]: action, dscp, log, fwmark, "
        "fwmark_mask); did you mean 'log'?"
    )


def test_bad_action() -> None:
    assert refuse('name = "x"\n[class.skype-out]\naction = "dorp"\n') == (
        "p.toml:3: class.skype-out.action: unknown action 'dorp' (expected pass | drop | mark); did you mean 'drop'?"
    )


def test_mark_needs_dscp() -> None:
    assert refuse('name = "x"\n[class.skype-p2p]\nlog = true\naction = "mark"\n') == (
        'p.toml:4: class.skype-p2p: action = "mark" needs dscp = 0..63'
    )


def test_dscp_refused_without_mark() -> None:
    assert refuse('name = "x"\n[class.skype-p2p]\naction = "pass"\ndscp = 46\n') == (
        "p.toml:4: class.skype-p2p: dscp is only allowed with action = \"mark\" (action is 'pass')"
    )
    assert refuse('name = "x"\n[class.skype-p2p]\ndscp = 46\n').startswith("p.toml:3: class.skype-p2p: dscp is only")


def test_dscp_out_of_range() -> None:
    assert refuse('name = "x"\n[class.skype-p2p]\naction = "mark"\ndscp = 64\n') == (
        "p.toml:4: class.skype-p2p.dscp = 64 is out of range (DSCP is 0..63)"
    )
    assert refuse('name = "x"\n[blocked]\ndscp = -1\n') == "p.toml:3: blocked.dscp = -1 is out of range (DSCP is 0..63)"


def test_wrong_types() -> None:
    assert refuse('name = "x"\n[class.skype-p2p]\naction = "mark"\ndscp = "46"\n') == (
        "p.toml:4: class.skype-p2p.dscp must be an integer 0..63, not string"
    )
    assert refuse('name = "x"\n[class.skype-p2p]\naction = "mark"\ndscp = true\n') == (
        "p.toml:4: class.skype-p2p.dscp must be an integer 0..63, not boolean"
    )
    assert refuse('name = "x"\n[class.other]\nlog = "yes"\n') == (
        "p.toml:3: class.other.log must be true or false, not string"
    )
    assert refuse('name = "x"\n[class.other]\naction = 1\n') == (
        "p.toml:3: class.other.action must be a string (pass | drop | mark), not integer"
    )
    assert refuse('name = "x"\nclass = 1\n') == "p.toml:2: class must be a table, not integer"
    assert refuse('name = "x"\n[pstn]\nprefixes = "1.2.3.4/32"\n') == (
        "p.toml:3: pstn.prefixes must be an array of strings, not string"
    )


def test_malformed_cannot_mark_and_blocked_always_drops() -> None:
    assert refuse('name = "x"\n[malformed]\naction = "mark"\n') == (
        'p.toml:3: malformed.action cannot be "mark" (the packet\'s IP header did not parse); use pass or drop'
    )
    assert refuse('name = "x"\n[blocked]\naction = "pass"\n') == (
        "p.toml:3: blocked.action: unknown action 'pass' (expected drop)"
    )


def test_bad_cidr_in_multiline_array_points_at_element() -> None:
    text = 'name = "x"\n[exempt]\nprefixes = [\n  "192.0.2.0/24",\n  # comment\n\n  "198.51.100.0/33",\n]\n'
    assert refuse(text) == (
        "p.toml:7: exempt.prefixes[1]: '198.51.100.0/33' is not a CIDR prefix "
        "('198.51.100.0/33' does not appear to be an IPv4 or IPv6 network)"
    )


def test_host_bits_set_suggests_network() -> None:
    text = 'name = "x"\n[pstn]\nprefixes = ["195.215.8.140/32",\n"212.72.49.155/24"]\n'
    assert (
        refuse(text)
        == "p.toml:4: pstn.prefixes[1]: '212.72.49.155/24' has host bits set; did you mean '212.72.49.0/24'?"
    )
    text = 'name = "x"\n[microsoft_media]\nprefixes = ["2603:1063::1/38"]\n'
    assert refuse(text) == (
        "p.toml:3: microsoft_media.prefixes[0]: '2603:1063::1/38' has host bits set; did you mean '2603:1063::/38'?"
    )


def test_duplicate_prefix() -> None:
    text = 'name = "x"\n[exempt]\nprefixes = [\n  "192.0.2.0/24",\n  "198.51.100.7",\n  "192.0.2.0/24",\n]\n'
    assert refuse(text) == "p.toml:6: exempt.prefixes[2]: duplicate prefix '192.0.2.0/24' (already at line 4)"


def test_bad_dns_name() -> None:
    text = 'name = "x"\n[pstn]\nnames = [\n  "sip.pstnhub.microsoft.com",\n  "sip2..pstnhub.microsoft.com",\n]\n'
    assert refuse(text) == "p.toml:5: pstn.names[1]: 'sip2..pstnhub.microsoft.com' is not a valid DNS name"
    assert refuse('name = "x"\n[skype]\nnames = ["1.2.3.4"]\n') == (
        "p.toml:3: skype.names[0]: '1.2.3.4' is not a valid DNS name"
    )


def test_duplicate_dns_name_case_insensitive() -> None:
    text = 'name = "x"\n[pstn]\nnames = ["sip.pstnhub.microsoft.com",\n         "SIP.pstnhub.microsoft.com."]\n'
    assert refuse(text) == "p.toml:4: pstn.names[1]: duplicate name 'sip.pstnhub.microsoft.com' (already at line 3)"


def test_non_string_array_element() -> None:
    assert refuse('name = "x"\n[skype]\nnames = [\n"a.example",\n 7]\n') == (
        "p.toml:5: skype.names[1] must be a string, not integer"
    )


def test_locator_not_fooled_by_strings_and_comments() -> None:
    text = (
        'name = "x"\n'
        'x_doc = """\n[class.skype-out]\naction = "drop"\n"""\n'  # a multi-line string that looks like a table
        "# [pstn]\n"
    )
    assert refuse(text).startswith("p.toml:2: unknown key or table 'x_doc'")
    text = "name = 'x'\n[pstn]\nnames = ['''a]b''', # ]\n  \"has space.example\"]\n"
    assert refuse(text).splitlines() == ["p.toml:3: pstn.names[0]: 'a]b' is not a valid DNS name",
                                         "p.toml:4: pstn.names[1]: 'has space.example' is not a valid DNS name"]


def test_quoted_keys_are_located() -> None:
    assert refuse('name = "x"\n[class."skype-out"]\n"action" = "nope"\n').startswith(
        "p.toml:3: class.skype-out.action: unknown action 'nope'"
    )


def test_load_missing_and_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(PolicyError) as ei:
        load_policy(missing)
    assert str(ei.value) == f"{missing}: no such file: the policy file does not exist"
    with pytest.raises(PolicyError) as ei:
        load_policy(tmp_path)
    assert str(ei.value) == f"{tmp_path}: cannot read policy file: Is a directory"


def test_load_bad_utf8_points_at_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_bytes(b'name = "x"\n# caf\xe9\n')
    with pytest.raises(PolicyError) as ei:
        load_policy(f)
    assert str(ei.value) == f"{f}:2: not valid UTF-8 (byte 16)"


def test_non_string_text_is_a_policy_error() -> None:
    with pytest.raises(PolicyError) as ei:
        parse_policy(b'name = "x"', "p.toml")  # type: ignore[arg-type]
    assert str(ei.value) == "p.toml: policy text must be a string, not bytes"


def test_error_is_picklable_and_keeps_fields() -> None:
    e = PolicyError("f.toml", 3, "bad")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.line, e2.reason, str(e2)) == ("f.toml", 3, "bad", "f.toml:3: bad")


# ---------------------------------------------------------------------------------------------------------------------
# names.py


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("skype.com", "skype.com"),
        ("api.asm.SKYPE.com.", "skype.com"),
        ("evilskype.com", None),
        ("skype.com.evil.net", None),
        ("a.trouter.teams.microsoft.com", "trouter.teams.microsoft.com"),  # longest suffix wins
        ("x.teams.microsoft.com", "teams.microsoft.com"),
        ("sip2.pstnhub.microsoft.com", "pstnhub.microsoft.com"),
        ("microsoft.com", None),
        ("", None),
        (".", None),
    ],
)
def test_match_suffix_builtins(name: str, expected: str | None) -> None:
    assert names.match_suffix(name, names.BUILTIN_SKYPE_NAMES) == expected


def test_match_suffix_odd_inputs() -> None:
    assert names.match_suffix(None, ["skype.com"]) is None
    assert names.match_suffix("a.example.org", ["Example.ORG."]) == "example.org"
    assert names.match_suffix("a.example.org", ["", "org"]) == "org"


def _match_suffix_by_definition(name: object, suffixes: tuple[str, ...]) -> str | None:
    """match_suffix as its docstring defines it: every suffix normalised and tried, the longest that matches wins."""
    if not isinstance(name, str) or not names.normalize(name):
        return None
    name = names.normalize(name)
    hits = [s for s in map(names.normalize, suffixes) if s and (name == s or name.endswith("." + s))]
    return max(hits, key=len, default=None)


def test_match_suffix_equals_its_definition() -> None:
    """match_suffix looks the name's own suffixes up in a set: on random names and lists, with case, blanks, trailing
    and doubled dots, lists and generators, the answer of trying every suffix of the list."""
    import random

    rng = random.Random(3)
    labels = ["a", "b", "skype", "com", "microsoft", "teams", "", "x-y", "COM", "Skype"]

    def name() -> str:
        return ".".join(rng.choice(labels) for _ in range(rng.randint(1, 5))) + rng.choice(["", ".", " ", ". "])

    matched = 0
    for _ in range(20000):
        suffixes = tuple(name() for _ in range(rng.randint(0, 6)))
        n = name()
        want = _match_suffix_by_definition(n, suffixes)
        assert names.match_suffix(n, suffixes) == want, (n, suffixes)
        assert names.match_suffix(n, iter(suffixes)) == want
        matched += want is not None
    assert matched > 1000  # the lists did match, often


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("sip.pstnhub.microsoft.com", True),
        ("sip.pstnhub.microsoft.com.", True),
        ("xn--bcher-kva.example", True),
        ("localhost", False),
        ("1.2.3.4", False),
        ("a..b", False),
        ("-a.example", False),
        ("a-.example", False),
        ("a_b.example", False),
        ("bücher.example", False),
        (" a.example", False),
        ("a" * 64 + ".example", False),
        (".".join(["a" * 63] * 4), False),  # 255 characters
        ("", False),
        (3, False),
    ],
)
def test_valid_dns_name(name: object, ok: bool) -> None:
    assert names.valid_dns_name(name) is ok


def test_builtin_names_are_valid_and_unique() -> None:
    assert all(names.valid_dns_name(n) for n in names.BUILTIN_SKYPE_NAMES)
    assert len(set(names.BUILTIN_SKYPE_NAMES)) == len(names.BUILTIN_SKYPE_NAMES)


# ---------------------------------------------------------------------------------------------------------------------
# Every error at once


def test_every_error_is_reported_in_file_order() -> None:
    text = ('name = "x"\n[class.skype-out]\naction = "explode"\n[class.skype-p2p]\naction = "drop"\ndscp = 8\n'
            '[exempt]\nprefixes = ["10.1.2.3/8", "nope", "192.0.2.0/24"]\n[pstn]\nnames = ["bad name"]\n')
    with pytest.raises(PolicyError) as ei:
        parse_policy(text, "p.toml")
    assert [ln for ln, _ in ei.value.errors] == [3, 6, 8, 8, 10]
    lines = str(ei.value).splitlines()
    assert lines[0] == "p.toml:3: class.skype-out.action: unknown action 'explode' (expected pass | drop | mark)"
    assert lines[2] == "p.toml:8: exempt.prefixes[0]: '10.1.2.3/8' has host bits set; did you mean '10.0.0.0/8'?"
    assert lines[4] == "p.toml:10: pstn.names[0]: 'bad name' is not a valid DNS name"


def test_errors_stop_at_the_cap() -> None:
    from skyguard.policy import MAX_ERRORS

    text = 'name = "x"\n' + "".join(f"typo{i} = 1\n" for i in range(MAX_ERRORS + 10))
    with pytest.raises(PolicyError) as ei:
        parse_policy(text, "p.toml")
    errs = ei.value.errors
    assert len(errs) == MAX_ERRORS + 1 and errs[-1] == (0, f"stopped after {MAX_ERRORS} errors")
    assert errs[0][0] == 2 and str(ei.value).splitlines()[-1] == f"p.toml: stopped after {MAX_ERRORS} errors"


def test_daemon_config_checked_as_a_policy_says_so() -> None:
    text = 'interfaces = ["eth0", "eth1"]\nxdp_mode = "native"\npolicy = "/etc/skyguard/policy.toml"\n'
    with pytest.raises(PolicyError) as ei:
        parse_policy(text, "skyguard.toml")
    first = str(ei.value).splitlines()[0]
    assert first.startswith("skyguard.toml:1: this is skyguardd's config file (it sets interfaces, xdp_mode, policy)")
    assert "skyguardd --config FILE --check" in first


def test_daemon_config_keys_are_the_configs_own() -> None:
    from skyguard.daemon.config import CHECKS
    from skyguard.policy import DAEMON_CONFIG_KEYS

    assert set(DAEMON_CONFIG_KEYS) == set(CHECKS) | {"idle_timeout"}  # a key added to the config is recognised


# ---------------------------------------------------------------------------------------------------------------------
# fwmark / fwmark_mask: the refusals the policy promises (file:line: reason) and what a good one becomes


def test_fwmark_with_action_drop_is_refused() -> None:
    msg = refuse('name = "x"\n[class.skype-p2p]\naction = "drop"\nfwmark = 0x2a\n')
    assert msg == ('p.toml:4: class.skype-p2p: fwmark is not allowed with action = "drop" '
                   "(a dropped packet is never marked)")


def test_fwmark_with_bits_outside_its_mask_is_refused() -> None:
    msg = refuse('name = "x"\n[class.skype-p2p]\nfwmark = 0x12a\nfwmark_mask = 0xff\n')
    assert msg == "p.toml:3: class.skype-p2p: fwmark 0x12a has bits outside fwmark_mask 0xff"


@pytest.mark.parametrize(
    ("value", "shown"),
    [('"0x2a"', "'0x2a'"), ("-1", "-1"), ("0x100000000", "4294967296"), ("0", "0"), ("true", "True"), ("4.2", "4.2")],
)
def test_fwmark_that_is_not_a_32_bit_positive_integer_is_refused(value: str, shown: str) -> None:
    msg = refuse(f'name = "x"\n[class.skype-p2p]\nfwmark = {value}\n')
    assert msg == f"p.toml:3: class.skype-p2p.fwmark must be an integer 1..0xffffffff, not {shown}"


@pytest.mark.parametrize(("value", "shown"), [("0", "0"), ("-255", "-255"), ("0x1ffffffff", "8589934591")])
def test_fwmark_mask_that_is_not_a_32_bit_positive_integer_is_refused(value: str, shown: str) -> None:
    msg = refuse(f'name = "x"\n[class.skype-p2p]\nfwmark = 1\nfwmark_mask = {value}\n')
    assert msg == f"p.toml:4: class.skype-p2p.fwmark_mask must be an integer 1..0xffffffff, not {shown}"


def test_fwmark_mask_without_fwmark_is_refused() -> None:
    msg = refuse('name = "x"\n[class.skype-p2p]\nfwmark_mask = 0xff\n')
    assert msg == "p.toml:3: class.skype-p2p: fwmark_mask needs fwmark"


def test_fwmark_and_its_mask_reach_policy_fwmarks() -> None:
    p2p = wire.CLASS_IDS["skype-p2p"]
    p = parse_policy('name = "x"\n[class.skype-p2p]\nfwmark = 0x2a\nfwmark_mask = 0xff\n', "p.toml")
    assert p.fwmarks == {p2p: (0x2A, 0xFF)}
    p = parse_policy('name = "x"\n[class.skype-p2p]\naction = "pass"\nfwmark = 0x2a\n', "p.toml")
    assert p.fwmarks == {p2p: (0x2A, 0xFFFFFFFF)}  # no fwmark_mask: skyguard owns the whole mark
    p = parse_policy('name = "x"\n[class.skype-p2p]\nfwmark = 0xffffffff\n', "p.toml")
    assert p.fwmarks == {p2p: (0xFFFFFFFF, 0xFFFFFFFF)}  # the top of the range is allowed
    assert parse_policy('name = "x"\n[class.skype-p2p]\naction = "pass"\n', "p.toml").fwmarks == {}
