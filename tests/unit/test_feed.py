"""Microsoft's endpoint feed: the parser (which sets count), every refusal with its position, the policy's `feed` key
(merge with the policy's own prefixes, relative paths, refusals at the key's line) and `skyguard policy check
--feed`."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest

from skyguard.feed import MAX_FEED_BYTES, FeedError, load_feed, parse_feed
from skyguard.policy import DEFAULT_MSMEDIA_PREFIXES, PolicyError, load_policy, parse_policy
from tests import feedfiles as ff
from tests.unit.test_cli import run

NET = ipaddress.ip_network


def refused(data: bytes | str) -> FeedError:
    with pytest.raises(FeedError) as ei:
        parse_feed(data, "ms.json")
    return ei.value


# ---------------------------------------------------------------------------------------------------------------------
# The parser


def test_only_skype_optimize_ranges_count() -> None:
    f = parse_feed(ff.feed_text(), "ms.json")
    assert f.prefixes == tuple(NET(p) for p in ff.SKYPE_OPTIMIZE_V4 + ff.SKYPE_OPTIMIZE_V6)
    assert f.set_ids == (11,) and f.sets_total == 3
    # nothing of the Skype Allow set or of Exchange's Optimize set
    for p in ff.SKYPE_ALLOW + ff.EXCHANGE_OPTIMIZE:
        assert NET(p) not in f.prefixes
    assert f.summary() == "3 Skype Optimize ranges (2 IPv4, 1 IPv6) from endpoint set 11 of 3"
    assert f.as_dict()["prefixes"] == ["52.112.0.0/14", "52.122.0.0/15", "2603:1063::/38"]


def test_ranges_once_v4_first_across_sets_and_host_bits_cleared() -> None:
    sets = ff.endpoint_sets(["2603:1063::/38", "52.112.0.0/14"])
    sets.append({"id": 13, "serviceArea": "Skype", "category": "Optimize",
                 "ips": ["52.112.0.0/14", "52.120.1.2/14", " 52.122.0.0/15 "]})
    f = parse_feed(json.dumps(sets), "ms.json")
    assert f.prefixes == (NET("52.112.0.0/14"), NET("52.120.0.0/14"), NET("52.122.0.0/15"), NET("2603:1063::/38"))
    assert f.set_ids == (11, 13)


def test_sets_without_ips_and_unknown_fields_are_fine() -> None:
    sets = ff.endpoint_sets()
    sets.append({"id": 46, "serviceArea": "Skype", "category": "Optimize", "urls": ["x.teams.microsoft.com"],
                 "notes": "a later field", "tcpPorts": "443"})
    sets.append({"id": 99, "serviceArea": "Common", "category": "Default", "ips": ["not checked"]})
    assert parse_feed(json.dumps(sets), "ms.json").set_ids == (11,)


def test_utf8_bom_is_accepted() -> None:
    assert parse_feed(b"\xef\xbb\xbf" + ff.feed_text().encode(), "ms.json").set_ids == (11,)


def test_digest_is_the_file_sha256() -> None:
    import hashlib

    text = ff.feed_text()
    assert parse_feed(text, "x").digest == hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Refusals


def test_syntax_error_names_line_and_column() -> None:
    text, line, col = ff.broken_feed_text()
    e = refused(text)
    assert (e.line, e.col) == (line, col)
    assert str(e) == f"ms.json:{line}:{col}: not valid JSON: Expecting property name enclosed in double quotes"


def test_syntax_error_in_the_middle() -> None:
    e = refused('[\n  {"id": 11,\n   "serviceArea": "Skype" "category": "Optimize"}\n]')
    assert str(e) == "ms.json:3:27: not valid JSON: Expecting ',' delimiter"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file (an interrupted download?)"),
        (b"  \n", "empty file (an interrupted download?)"),
        (b'{"error": "Invalid clientrequestid"}',
         "the web service answered with an error, not endpoint sets: Invalid clientrequestid"),
        (b'{"instance": "Worldwide", "latest": "2025043000"}',
         "this is the web service's `version` answer, not its `endpoints` answer"),
        (b'[{"instance": "Worldwide", "latest": "2025043000"}]',
         "this is the web service's `version` answer, not its `endpoints` answer"),
        (b'{"id": 11}', "a JSON object, not an array of endpoint sets (is the URL the `endpoints` method?)"),
        (b'"52.112.0.0/14"', "expected a JSON array of endpoint sets, got str"),
        (b"[]", "no IP ranges in the Skype service area's Optimize sets (0 endpoint sets read): refusing to empty "
                "the media ranges"),
        (b'[["52.112.0.0/14"]]', "element #0 is list, not an endpoint set (an object)"),
        (b'[{"serviceArea": "Skype"}]', "endpoint set #0: `id` must be an integer, not NoneType"),
        (b'[{"id": true, "serviceArea": "Skype"}]', "endpoint set #0: `id` must be an integer, not bool"),
        (b'[{"id": 11, "serviceArea": 3}]', "endpoint set 11: `serviceArea` must be a string, not int"),
        (b'[{"id": 11, "serviceArea": "Skype", "category": "Optimize", "ips": "52.112.0.0/14"}]',
         "endpoint set 11: `ips` must be an array of strings, not str"),
        (b'[{"id": 11, "serviceArea": "Skype", "category": "Optimize", "ips": [5]}]',
         "endpoint set 11: ips[0] must be a string, not int"),
        (b'[{"id": 11, "serviceArea": "Skype", "category": "Optimize", "ips": ["52.112.0.0/33"]}]',
         "endpoint set 11: ips[0] '52.112.0.0/33' is not an IP range"),
        (b'[{"id": 11, "serviceArea": "Skype", "category": "Optimize", "ips": ["0.0.0.0/0"]}]',
         "endpoint set 11: ips[0] '0.0.0.0/0' is implausibly wide for a media range (shorter than /8)"),
        (b'[{"id": 11, "serviceArea": "Skype", "category": "Optimize", "ips": ["2000::/3"]}]',
         "endpoint set 11: ips[0] '2000::/3' is implausibly wide for a media range (shorter than /16)"),
    ],
)
def test_refusals(data: bytes, reason: str) -> None:
    e = refused(data)
    assert e.reason == reason
    assert str(e) == f"ms.json: {reason}"


def test_a_feed_without_skype_optimize_ranges_is_refused() -> None:
    # the Allow and Exchange sets hold ranges, but none counts: the media ranges must never become empty
    e = refused(ff.feed_text([]))
    assert e.reason.startswith("no IP ranges in the Skype service area's Optimize sets (3 endpoint sets read)")


def test_not_utf8_names_line_and_column() -> None:
    e = refused(b'[\n {"id": 1, "x": "\xff"}]')
    assert (e.line, e.col, e.reason) == (2, 18, "not valid UTF-8 (byte 19)")


def test_deep_nesting_is_a_refusal_not_a_crash() -> None:
    assert refused("[" * 100000 + "]" * 100000).reason.startswith("not valid JSON")


def test_files(tmp_path: Path) -> None:
    good = ff.write_feed(tmp_path / "ms.json")
    assert load_feed(good).path == str(good)
    with pytest.raises(FeedError, match="no such file"):
        load_feed(tmp_path / "missing.json")
    with pytest.raises(FeedError, match="not a regular file"):
        load_feed(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(FeedError, match="not a regular file"):  # at once: a reload never hangs on a FIFO
        load_feed(fifo)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_FEED_BYTES + 1))
    with pytest.raises(FeedError, match="larger than"):
        load_feed(big)


# ---------------------------------------------------------------------------------------------------------------------
# The policy's `feed` key


def _policy(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(f'name = "feed-test"\n\n[microsoft_media]\n{body}')
    return p


def test_feed_ranges_join_the_policys_own_and_replace_the_builtin(tmp_path: Path) -> None:
    ff.write_feed(tmp_path / "ms.json")
    pol = load_policy(_policy(tmp_path, f'prefixes = ["203.0.113.64/27", "52.112.0.0/14"]\nfeed = '
                                        f'"{tmp_path / "ms.json"}"\n'))
    assert pol.msmedia_prefixes == (NET("203.0.113.64/27"), NET("52.112.0.0/14"), NET("52.122.0.0/15"),
                                    NET("2603:1063::/38"))
    assert pol.feed is not None and pol.feed.path == str(tmp_path / "ms.json")
    # without prefixes: the feed alone; the built-in list (13.107.64.0/18 has left Microsoft's) is not used
    pol = load_policy(_policy(tmp_path, 'feed = "ms.json"\n'))
    assert pol.msmedia_prefixes == tuple(NET(p) for p in ff.SKYPE_OPTIMIZE_V4 + ff.SKYPE_OPTIMIZE_V6)
    assert NET("13.107.64.0/18") not in pol.msmedia_prefixes
    assert "13.107.64.0/18" in DEFAULT_MSMEDIA_PREFIXES


def test_relative_feed_is_beside_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    ff.write_feed(tmp_path / "etc" / "ms.json", ["198.51.100.0/24"])
    monkeypatch.chdir("/")
    pol = load_policy(_policy(tmp_path / "etc", 'feed = "ms.json"\n'))
    assert pol.feed is not None and pol.feed.path == str(tmp_path / "etc" / "ms.json")
    assert pol.msmedia_prefixes == (NET("198.51.100.0/24"),)


def test_a_refused_feed_refuses_the_policy_at_the_feed_key(tmp_path: Path) -> None:
    text, line, col = ff.broken_feed_text()
    (tmp_path / "ms.json").write_text(text)
    p = _policy(tmp_path, 'prefixes = ["203.0.113.64/27"]\nfeed = "ms.json"\n')
    with pytest.raises(PolicyError) as ei:
        load_policy(p)
    assert str(ei.value) == (f"{p}:5: microsoft_media.feed: {tmp_path / 'ms.json'}:{line}:{col}: not valid JSON: "
                             "Expecting property name enclosed in double quotes")
    (tmp_path / "ms.json").unlink()
    with pytest.raises(PolicyError, match=r":5: microsoft_media.feed: .*ms.json: no such file"):
        load_policy(p)


def test_feed_errors_are_listed_with_the_policys_other_errors(tmp_path: Path) -> None:
    p = _policy(tmp_path, 'feed = "missing.json"\nprefixes = ["10.0.0.1/8"]\n[class.skype-out]\naction = "dorp"\n')
    with pytest.raises(PolicyError) as ei:
        load_policy(p)
    lines = str(ei.value).splitlines()
    assert [ln.split(": ")[0] for ln in lines] == [f"{p}:4", f"{p}:5", f"{p}:7"], lines
    assert "missing.json: no such file" in lines[0]


@pytest.mark.parametrize(("value", "shown"), [('""', "''"), ("7", "integer"), ('["a.json"]', "array")])
def test_feed_must_be_a_path(tmp_path: Path, value: str, shown: str) -> None:
    with pytest.raises(PolicyError) as ei:
        parse_policy(f'name = "x"\n[microsoft_media]\nfeed = {value}\n', "p.toml")
    assert str(ei.value) == (f"p.toml:3: microsoft_media.feed must be the path of Microsoft's endpoints JSON file, "
                             f"not {shown}")


def test_feed_override_replaces_the_named_file(tmp_path: Path) -> None:
    ff.write_feed(tmp_path / "ms.json")
    new = ff.write_feed(tmp_path / "new.json", ["198.51.100.0/24"])
    p = _policy(tmp_path, 'feed = "ms.json"\n')
    assert load_policy(p, feed_override=str(new)).msmedia_prefixes == (NET("198.51.100.0/24"),)
    with pytest.raises(PolicyError, match="microsoft_media.feed is not set"):
        load_policy(_policy(tmp_path, 'prefixes = ["203.0.113.64/27"]\n'), feed_override=str(new))


def test_no_feed_key_no_feed() -> None:
    assert parse_policy('name = "x"\n', "p.toml").feed is None


# ---------------------------------------------------------------------------------------------------------------------
# skyguard policy check [FILE] [--feed FEED]


def test_policy_check_feed_alone(tmp_path: Path) -> None:
    good = ff.write_feed(tmp_path / "ms.json")
    rc, out, err = run("policy", "check", "--feed", str(good))
    assert (rc, err) == (0, "")
    assert out == f"{good}: ok (3 Skype Optimize ranges (2 IPv4, 1 IPv6) from endpoint set 11 of 3)\n"
    rc, out, _ = run("policy", "check", "--feed", str(good), "--json")
    d = json.loads(out)
    assert rc == 0 and d["ok"] and d["prefixes"] == ["52.112.0.0/14", "52.122.0.0/15", "2603:1063::/38"]

    text, line, col = ff.broken_feed_text()
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    rc, out, err = run("policy", "check", "--feed", str(bad))
    assert (rc, out) == (1, "")
    assert err == f"{bad}:{line}:{col}: not valid JSON: Expecting property name enclosed in double quotes\n"
    rc, out, _ = run("policy", "check", "--feed", str(bad), "--json")
    assert rc == 1 and json.loads(out)["errors"] == [
        {"line": line, "column": col, "reason": "not valid JSON: Expecting property name enclosed in double quotes"}]


def test_policy_check_with_its_feed_and_with_another(tmp_path: Path) -> None:
    ff.write_feed(tmp_path / "ms.json")
    p = _policy(tmp_path, 'feed = "ms.json"\n')
    rc, out, _ = run("policy", "check", str(p))
    assert rc == 0 and out == (f"{p}: ok (policy 'feed-test'; feed {tmp_path / 'ms.json'}: 3 Skype Optimize ranges "
                               "(2 IPv4, 1 IPv6) from endpoint set 11 of 3)\n")
    rc, out, _ = run("policy", "check", str(p), "--json")
    assert rc == 0 and json.loads(out)["feed"]["sets"] == [11]
    empty = ff.write_feed(tmp_path / "empty.json", [])
    rc, out, err = run("policy", "check", str(p), "--feed", str(empty))
    assert rc == 1 and err.startswith(f"{p}:4: microsoft_media.feed: {empty}: no IP ranges in the Skype")


@pytest.mark.parametrize("argv", [["policy", "check"], ["policy", "check", "--feed", "x.json", "--daemon"]])
def test_policy_check_usage(argv: list[str]) -> None:
    rc, _out, err = run(*argv)
    assert rc == 2 and "usage: skyguard policy check" in err
