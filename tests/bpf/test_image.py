"""The replay build's cached image (kernel/image.py): a Kernel made from it compiles nothing, loads the same program
against maps of its own, and replays to exactly what a freshly compiled one gives; a damaged or foreign image is
never trusted (the build is compiled and the image written again)."""

from __future__ import annotations

import base64
import json

import pytest

from skyguard.kernel import image, loader
from skyguard.lab import gen
from skyguard.offline import replay

pytestmark = pytest.mark.bpf

SMALL = {"flows_max": 4096, "lpm_max": 1024, "ringbuf_bytes": 1 << 20}  # small maps: quick to create and verify


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("SKYGUARD_CACHE_DIR", str(d))
    monkeypatch.delenv(image.ENV, raising=False)
    return d


@pytest.fixture(scope="module")
def compiled(bpf_ok, tmp_path_factory):
    """One compile for the module: the image it wrote (file name, JSON) and its replay of a generated set."""
    caps, d = tmp_path_factory.mktemp("caps"), tmp_path_factory.mktemp("cache")
    gen.generate(5, caps, calls=2)
    paths = sorted(caps.glob("*.pcap"))
    mp = pytest.MonkeyPatch()
    mp.setenv("SKYGUARD_CACHE_DIR", str(d))
    mp.delenv(image.ENV, raising=False)
    try:
        with loader.Kernel(replay=True, **SMALL) as k:
            assert not k.from_cache and k.bpf is not None
            out = outcome(replay.replay(paths, kernel=k, engine="c"))
    finally:
        mp.undo()
    files = list(d.glob("replay-*.json"))
    assert len(files) == 1, "the compile wrote no image"
    return {"name": files[0].name, "doc": json.loads(files[0].read_text()), "paths": paths, "outcome": out}


def _put(cache, compiled, doc=None) -> object:
    """The module's image (or `doc`) in this test's cache, under the name the Kernel looks for."""
    cache.mkdir(mode=0o700, exist_ok=True)
    path = cache / compiled["name"]
    path.write_text(json.dumps(compiled["doc"] if doc is None else doc))
    return path


def _no_compiler(monkeypatch) -> None:
    def refuse(*_a, **_k):
        raise AssertionError("bcc compiled, though a cached image was there")

    monkeypatch.setattr(loader.bcc, "BPF", refuse)


def outcome(res: replay.ReplayResult) -> dict:
    return {"json": res.to_json(), "stats": res.stats, "decisions": res.decisions,
            "captures": [(c.packets, dict(c.verdicts), c.error) for c in res.captures]}


def test_cached_image_replays_like_a_compiled_build(cache, compiled, monkeypatch) -> None:
    _put(cache, compiled)
    _no_compiler(monkeypatch)
    with loader.Kernel(replay=True, **SMALL) as k:
        assert k.from_cache and k.bpf is None
        cached = outcome(replay.replay(compiled["paths"], kernel=k, engine="c"))
        # its maps are its own (the image's loads point at them), not some other Kernel's
        assert set(k._fds) >= {"flows", "events", "rcu_sync", "rcu_inner"}
    assert compiled["outcome"]["json"]["summary"]["packets"] > 1000 and compiled["outcome"]["decisions"]
    assert cached == compiled["outcome"]


def test_damaged_image_is_compiled_again(cache, compiled) -> None:
    """Unreadable as JSON (the shapes JSON can take are refused without a compile below): compiled, and written
    again whole."""
    path = _put(cache, compiled)
    path.write_text("{not json")
    with loader.Kernel(replay=True, **SMALL) as k:
        assert not k.from_cache
        assert k.test_run(bytes(60), ts_ns=1).verdict in (1, 2)
    assert json.loads(path.read_text()) == compiled["doc"], "the image was not written again"


def test_incomplete_or_inconsistent_images_are_refused(compiled) -> None:
    good = compiled["doc"]
    image.Image.from_json(good, loader._MAP_NAMES, loader._PROGS)  # the written one is whole
    bad = dict(good, progs={n: dict(p, relocs=[[10**9, "flows"]]) for n, p in good["progs"].items()})
    with pytest.raises(image.ImageError):
        image.Image.from_json(bad, loader._MAP_NAMES, loader._PROGS)
    with pytest.raises(image.ImageError, match="format"):
        image.Image.from_json(dict(good, format=0), loader._MAP_NAMES, loader._PROGS)
    no_flows = dict(good, maps=[m for m in good["maps"] if m["name"] != "flows"])
    inner_late = dict(good, maps=sorted(good["maps"], key=lambda m: m["name"] != "rcu_sync"))
    prog = good["progs"]["xdp_skyguard"]
    not_a_load = dict(good, progs=dict(good["progs"], xdp_skyguard=dict(prog, relocs=[[0, "flows"]])))
    one_short = dict(good, progs=dict(good["progs"], xdp_skyguard=dict(prog, relocs=prog["relocs"][1:])))
    no_verdict = dict(good, progs={"xdp_skyguard": prog})
    twice = dict(good, maps=[*good["maps"], good["maps"][0]])
    negative = dict(good, maps=[dict(good["maps"][0], key_size=-1), *good["maps"][1:]])
    for doc, why in ((no_flows, "maps missing"), (inner_late, "template"), (not_a_load, "not exactly"),
                     (one_short, "not exactly"), (no_verdict, "programs missing"), (twice, "not unique"),
                     (negative, "32-bit"), ([], "not an image"), (None, "not an image"),
                     (dict(good, progs=[]), "not a table"), (dict(good, maps=[1]), "unreadable")):
        with pytest.raises(image.ImageError, match=why):
            image.Image.from_json(doc, loader._MAP_NAMES, loader._PROGS)


def test_an_image_the_verifier_refuses_is_compiled_instead(cache, compiled) -> None:
    """A well-formed image whose program does not load here (another kernel's verifier, a damaged instruction):
    the Kernel compiles, works, and writes a good image again."""
    good = compiled["doc"]
    path = _put(cache, compiled)
    raw = bytearray(base64.b64decode(good["progs"]["xdp_skyguard"]["insns"]))
    raw[-8:] = bytes([0xFF]) + bytes(7)  # the last instruction (the exit) becomes an opcode no kernel knows
    bad = dict(good, progs=dict(good["progs"], xdp_skyguard=dict(good["progs"]["xdp_skyguard"],
                                                                  insns=base64.b64encode(bytes(raw)).decode())))
    path.write_text(json.dumps(bad))
    with loader.Kernel(replay=True, **SMALL) as k:
        assert not k.from_cache and k.bpf is not None
        assert k.test_run(bytes(60), ts_ns=1).verdict in (1, 2)
    assert json.loads(path.read_text()) == good


def test_a_cache_that_cannot_be_written_costs_only_the_compile(bpf_ok, cache, monkeypatch) -> None:
    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image.tempfile, "mkstemp", full)
    with loader.Kernel(replay=True, **SMALL) as k:
        assert not k.from_cache
        assert k.test_run(bytes(60), ts_ns=1).verdict in (1, 2)
    assert not list(cache.glob("replay-*.json")) and not list(cache.glob(".replay-*"))


def test_image_key_follows_sources_and_flags(tmp_path) -> None:
    pytest.importorskip("bcc")
    src = tmp_path / "bpf"
    src.mkdir()
    (src / "a.h").write_text("#define X 1\n")
    k1 = image.key(src, ["-DA=1"])
    assert image.key(src, ["-DA=2"]) != k1
    assert image.key(src, ["-DA=1"], contract=("flows",)) != k1  # the maps and programs the loader asks for
    (src / "a.h").write_text("#define X 2\n")
    assert image.key(src, ["-DA=1"]) != k1
    (src / "notes.txt").write_text("not a source")
    assert image.key(src, ["-DA=1"]) == image.key(src, ["-DA=1"])


def test_live_and_pinned_builds_are_never_taken_from_the_cache(cache, pin_path) -> None:
    with loader.Kernel(**SMALL) as k:
        assert not k.from_cache and k.clock_note.startswith(("jiffies", "bpf_ktime"))
    with loader.Kernel(replay=True, pin_path=pin_path, **SMALL) as k:
        assert not k.from_cache
    assert not list(cache.glob("replay-*.json"))


def test_cache_off(cache, compiled, monkeypatch) -> None:
    _put(cache, compiled)
    monkeypatch.setenv(image.ENV, "0")
    with loader.Kernel(replay=True, **SMALL) as k:
        assert not k.from_cache
