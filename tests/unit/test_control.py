"""Control socket server and client over real Unix sockets, with a fake command handler."""

from __future__ import annotations

import logging
import os
import queue
import random
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import pytest

from skyguard import proto
from skyguard.cli.client import Client, ClientError, ConnectError
from skyguard.daemon.control import ControlServer
from skyguard.proto import COMMAND_NAMES, MAX_FRAME, ControlError

FLOWS = [
    proto.example_row(first_ns=1, last_ns=2_000_000_001),
    proto.example_row(proto="tcp", a="10.0.0.2:40000", b="1.1.1.1:443", vlan=7, **{"class": "other"},
                      reason="no-evidence", packets=5, bytes=900, first_ns=5, last_ns=9),
]


class FakeEngine:
    """Replies in the daemon's shapes (proto's examples), plus commands to exercise error paths."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.blocked: set[str] = set()

    def __call__(self, cmd: str, args: dict) -> Any:
        self.calls.append((cmd, args))
        if cmd in ("status", "stats", "policy.show"):
            return proto.example(cmd)
        if cmd == "flows":
            rows = [f for f in FLOWS if args.get("class") in (None, f["class"])]
            return proto.example("flows", flows=rows[: args.get("limit") or len(rows)], total=len(rows))
        if cmd == "flow":
            for f in FLOWS:
                if (f["proto"], f["a"], f["b"]) == (args.get("proto"), args.get("a"), args.get("b")):
                    return f
            raise ControlError(proto.NOT_FOUND, "no flow with that key")
        if cmd == "policy.check":
            if str(args.get("path", "")).endswith("bad.toml"):
                raise ControlError(proto.BAD_POLICY, f"{args['path']}:3: unknown action 'explode'")
            return proto.example("policy.check", name="ok-policy", path=args["path"])
        if cmd == "policy.reload":
            return proto.example("policy.reload")
        if cmd == "block":
            self.blocked.add(args["prefix"])
            return proto.example("block", blocked=args["prefix"], expires_ns=int(args.get("expire", 0) * 1e9))
        if cmd == "unblock":
            if args["prefix"] not in self.blocked:
                raise ControlError(proto.NOT_FOUND, f"{args['prefix']} is not blocked")
            self.blocked.remove(args["prefix"])
            return proto.example("unblock", unblocked=args["prefix"])
        if cmd == "echo":
            return args
        if cmd == "boom":
            raise RuntimeError("kaboom")
        if cmd == "unserialisable":
            return {"x": object()}
        raise AssertionError(f"unexpected command {cmd}")


class Harness:
    """Runs a ControlServer's loop in a thread; `do(fn)` runs fn inside that loop (publish is not thread-safe)."""

    def __init__(self, path: Path, handler: Callable[[str, dict], Any], **kw: Any) -> None:
        kw.setdefault("commands", (*COMMAND_NAMES, "echo", "boom", "unserialisable"))
        self.server = ControlServer(path, handler, **kw)
        self.path = path
        self._q: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.server.poll(0.01)
            while True:
                try:
                    fn, fut = self._q.get_nowait()
                except queue.Empty:
                    break
                try:
                    fut.set_result(fn())
                except BaseException as e:  # pragma: no cover - surfaced in the test
                    fut.set_exception(e)

    def do(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        fut: Future = Future()
        self._q.put((fn, fut))
        return fut.result(timeout)

    def wait_for(self, cond: Callable[[], bool], timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.do(cond):
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def make_server(tmp_path: Path, engine: FakeEngine):
    made: list[Harness] = []

    def make(**kw: Any) -> Harness:
        h = Harness(kw.pop("path", tmp_path / "run" / "sg.sock"), kw.pop("handler", engine), **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


@pytest.fixture
def srv(make_server) -> Harness:
    return make_server()


class Raw:
    """A bare socket speaking frames, to send what a well-behaved client would not."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, obj: Any) -> None:
        self.send(msgpack.packb(obj, use_bin_type=True))

    def read(self) -> Any:
        while True:
            try:
                return next(self.unpacker)
            except StopIteration:
                pass
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError
            self.unpacker.feed(data)

    def closed(self) -> bool:
        """True when the server has closed the connection (after any frames still queued)."""
        try:
            while True:
                self.read()
        except (EOFError, ConnectionResetError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def test_hello_lists_server_version_and_commands(srv: Harness) -> None:
    raw = Raw(srv.path)
    hello = raw.read()
    assert hello["v"] == 1
    assert hello["hello"]["server"] == "skyguardd"
    assert isinstance(hello["hello"]["version"], str) and hello["hello"]["version"]
    assert {"status", "flows", "events", "policy.reload", "block"} <= set(hello["hello"]["commands"])
    with Client(srv.path) as c:
        assert c.hello == hello["hello"]


def test_every_command_reaches_the_handler_with_its_args(srv: Harness, engine: FakeEngine) -> None:
    with Client(srv.path) as c:
        assert c.call("status") == proto.example("status")
        assert c.call("stats")["kernel"]["packets"] == 1540
        assert [f["class"] for f in c.call("flows", **{"class": "other", "sort": "bytes"})["flows"]] == ["other"]
        assert c.call("flows", limit=1)["flows"] == [FLOWS[0]]
        assert c.call("flow", proto="tcp", a="10.0.0.2:40000", b="1.1.1.1:443", vlan=7)["vlan"] == 7
        assert c.call("policy.show")["name"] == "observe-only"
        assert c.call("policy.check", path="/x/good.toml")["name"] == "ok-policy"
        assert c.call("policy.reload") == proto.example("policy.reload")
        assert c.call("block", prefix="10.9.0.0/16", expire=30) == {"blocked": "10.9.0.0/16", "flows": 0,
                                                                     "expires_ns": 30_000_000_000}
        assert c.call("unblock", prefix="10.9.0.0/16") == {"unblocked": "10.9.0.0/16"}
    assert ("flows", {"class": "other", "sort": "bytes"}) in engine.calls
    assert ("block", {"prefix": "10.9.0.0/16", "expire": 30}) in engine.calls


def test_handler_control_error_becomes_error_reply(srv: Harness) -> None:
    with Client(srv.path) as c:
        with pytest.raises(ClientError) as ei:
            c.call("unblock", prefix="1.2.3.4/32")
        assert (ei.value.code, ei.value.message) == ("not-found", "1.2.3.4/32 is not blocked")
        with pytest.raises(ClientError) as ei:
            c.call("policy.check", path="/x/bad.toml")
        assert ei.value.code == "bad-policy" and ":3: " in ei.value.message
        with pytest.raises(ClientError) as ei:
            c.call("flow", proto="udp", a="1.1.1.1:1", b="2.2.2.2:2", vlan=0)
        assert ei.value.code == "not-found"
        assert c.call("status")["policy"]["name"] == "observe-only"  # the connection goes on


def test_handler_exception_is_internal_error_and_logged(srv: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="skyguard.control")
    with Client(srv.path) as c:
        with pytest.raises(ClientError) as ei:
            c.call("boom")
        assert ei.value.code == "internal" and "kaboom" in ei.value.message
        with pytest.raises(ClientError) as ei:
            c.call("unserialisable")
        assert ei.value.code == "internal"
        assert c.call("echo", x=1) == {"x": 1}
    assert any("boom" in r.getMessage() and r.exc_info for r in caplog.records)


def test_unknown_command(srv: Harness) -> None:
    with Client(srv.path) as c:
        with pytest.raises(ClientError) as ei:
            c.call("format-disk")
        assert ei.value.code == "unknown-command" and "format-disk" in ei.value.message
        assert c.call("echo", ok=True) == {"ok": True}


@pytest.mark.parametrize(
    ("request_obj", "reply_id"),
    [
        ([1, 2, 3], None),  # not a map
        ("status", None),
        ({"v": 1, "cmd": "status", "args": {}}, None),  # no id
        ({"v": 1, "id": "7", "cmd": "status"}, None),  # id not an int
        ({"v": 2, "id": 7, "cmd": "status"}, 7),  # wrong version
        ({"id": 7, "cmd": "status"}, 7),  # no version
        ({"v": 1, "id": 7}, 7),  # no cmd
        ({"v": 1, "id": 7, "cmd": 5}, 7),
        ({"v": 1, "id": 7, "cmd": "flows", "args": [1]}, 7),  # args not a map
    ],
)
def test_bad_requests_get_bad_request_and_connection_goes_on(srv: Harness, request_obj: Any, reply_id: Any) -> None:
    raw = Raw(srv.path)
    raw.read()
    raw.request(request_obj)
    reply = raw.read()
    assert reply["ok"] is False and reply["error"]["code"] == "bad-request" and reply["id"] == reply_id
    raw.request({"v": 1, "id": 8, "cmd": "status", "args": {}})
    assert raw.read() == {"v": 1, "id": 8, "ok": True, "result": FakeEngine()("status", {})}


def test_args_may_be_left_out(srv: Harness) -> None:
    raw = Raw(srv.path)
    raw.read()
    raw.request({"v": 1, "id": 1, "cmd": "echo"})
    assert raw.read() == {"v": 1, "id": 1, "ok": True, "result": {}}


def test_bad_msgpack_gets_bad_frame_then_close(srv: Harness) -> None:
    raw = Raw(srv.path)
    raw.read()
    raw.send(b"\xc1\x00\x00")  # 0xc1 is never valid msgpack
    reply = raw.read()
    assert reply["ok"] is False and reply["error"]["code"] == "bad-frame"
    assert raw.closed()
    with Client(srv.path) as c:  # the server goes on
        assert c.call("echo", a=1) == {"a": 1}


def test_random_bytes_never_hurt_the_server(srv: Harness) -> None:
    rng = random.Random(1234)
    for _ in range(30):
        raw = Raw(srv.path, timeout=2.0)
        raw.read()
        try:
            raw.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
        except OSError:
            pass
        # whatever came back is an error reply; a frame that is still incomplete is just left waiting
        raw.sock.settimeout(0.2)
        try:
            while True:
                msg = raw.read()
                assert msg["ok"] is False and msg["error"]["code"] in ("bad-frame", "bad-request")
        except (EOFError, TimeoutError, ConnectionResetError):
            pass
        raw.close()
    with Client(srv.path) as c:
        assert c.call("echo", n=30) == {"n": 30}


def test_truncated_frame_then_close(srv: Harness) -> None:
    frame = msgpack.packb({"v": 1, "id": 1, "cmd": "status", "args": {}})
    raw = Raw(srv.path)
    raw.read()
    raw.send(frame[: len(frame) // 2])
    assert srv.wait_for(lambda: srv.server.clients == 1)
    raw.close()
    assert srv.wait_for(lambda: srv.server.clients == 0)
    with Client(srv.path) as c:
        assert c.call("status")["interfaces"][0]["name"] == "eth0"


def test_frame_split_across_writes_is_reassembled(srv: Harness) -> None:
    frame = msgpack.packb({"v": 1, "id": 42, "cmd": "echo", "args": {"s": "x" * 5000}})
    raw = Raw(srv.path)
    raw.read()
    for i in range(0, len(frame), 997):
        raw.send(frame[i : i + 997])
        time.sleep(0.001)
    assert raw.read() == {"v": 1, "id": 42, "ok": True, "result": {"s": "x" * 5000}}


def test_pipelined_requests_are_answered_in_order(srv: Harness) -> None:
    raw = Raw(srv.path)
    raw.read()
    raw.send(b"".join(msgpack.packb({"v": 1, "id": i, "cmd": "echo", "args": {"i": i}}) for i in range(50)))
    assert [raw.read()["result"]["i"] for _ in range(50)] == list(range(50))


def test_oversized_frame_gets_frame_too_large_then_close(srv: Harness) -> None:
    raw = Raw(srv.path)
    raw.read()
    big = msgpack.packb({"v": 1, "id": 1, "cmd": "echo", "args": {"s": "y" * (MAX_FRAME + 100)}})
    try:
        raw.send(big)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading after 1 MiB
    reply = raw.read()
    assert reply["ok"] is False and reply["error"]["code"] == "frame-too-large"
    assert raw.closed()
    with Client(srv.path) as c:
        assert c.call("echo", after=1) == {"after": 1}


def test_frame_just_under_the_limit_is_accepted(srv: Harness) -> None:
    payload = "z" * (MAX_FRAME - 200)
    with Client(srv.path) as c:
        assert c.call("echo", s=payload) == {"s": payload}


def test_64_clients_at_once(make_server) -> None:
    h = make_server(max_clients=256)
    clients = [Client(h.path, timeout=10) for _ in range(64)]
    try:
        assert h.wait_for(lambda: h.server.clients == 64)

        def work(i: int) -> list[int]:
            return [clients[i].call("echo", i=i, k=k)["i"] * 1000 + k for k in range(5)]

        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(work, range(64)))
        assert results == [[i * 1000 + k for k in range(5)] for i in range(64)]
    finally:
        for c in clients:
            c.close()
    assert h.wait_for(lambda: h.server.clients == 0)


def test_max_clients_refuses_extra_clients(make_server) -> None:
    h = make_server(max_clients=2)
    a, b = Client(h.path), Client(h.path)
    with pytest.raises(ClientError) as ei:
        Client(h.path)
    assert ei.value.code == "too-many-clients"
    a.close()
    assert h.wait_for(lambda: h.server.clients == 1)
    with Client(h.path) as c:
        assert c.call("echo", x=2) == {"x": 2}
    b.close()


def test_events_are_streamed_to_subscribers(srv: Harness) -> None:
    c = Client(srv.path)
    it = c.events(timeout=5)

    def publisher() -> None:
        assert srv.wait_for(lambda: srv.server.subscribers == 1)
        for i in range(100):
            srv.do(lambda i=i: srv.server.publish({"type": "classified", "seq": i}))

    t = threading.Thread(target=publisher)
    t.start()
    got = [next(it)["seq"] for _ in range(100)]
    t.join()
    assert got == list(range(100))
    c.close()
    assert srv.wait_for(lambda: srv.server.subscribers == 0)


def test_subscriber_that_never_reads_is_dropped_without_stalling_others(make_server) -> None:
    h = make_server(max_outbuf=256 << 10)
    lazy = Raw(h.path)
    lazy.read()
    lazy.request({"v": 1, "id": 1, "cmd": "events", "args": {}})
    assert lazy.read()["result"] == {"subscribed": True}
    assert h.wait_for(lambda: h.server.subscribers == 1)
    other = Client(h.path)
    event = {"type": "sample", "data": b"\x00" * 1000}

    def flood() -> float:
        t0 = time.monotonic()
        for _ in range(5000):  # ~5 MB for a subscriber that reads nothing
            h.server.publish(event)
        return time.monotonic() - t0

    elapsed = h.do(flood)
    assert elapsed < 2.0, "publish must never block on a slow subscriber"
    assert h.do(lambda: h.server.subscribers) == 0
    t0 = time.monotonic()
    assert other.call("echo", still="here") == {"still": "here"}
    assert time.monotonic() - t0 < 1.0
    lazy.sock.settimeout(2)
    assert lazy.closed()  # it gets what was queued in the kernel, then EOF
    other.close()


def test_stalled_half_frame_client_is_dropped(make_server) -> None:
    h = make_server(request_timeout=0.3, idle_timeout=30)
    raw = Raw(h.path)
    raw.read()
    frame = msgpack.packb({"v": 1, "id": 1, "cmd": "status", "args": {}})
    raw.send(frame[:3])
    t0 = time.monotonic()
    assert raw.closed()
    assert 0.25 <= time.monotonic() - t0 < 3.0
    with Client(h.path) as c:  # a client that finishes its frames stays
        time.sleep(0.5)
        assert c.call("echo", v=1) == {"v": 1}


def test_idle_clients_are_dropped_but_not_subscribers(make_server) -> None:
    h = make_server(request_timeout=5, idle_timeout=1.0)  # the subscriber has that long to subscribe
    idle = Raw(h.path)
    idle.read()
    sub = Raw(h.path)
    sub.read()
    sub.request({"v": 1, "id": 1, "cmd": "events", "args": {}})
    assert sub.read()["ok"] is True
    assert idle.closed()
    time.sleep(1.2)
    h.do(lambda: h.server.publish({"type": "late"}))
    assert sub.read() == {"event": {"type": "late"}}


def test_socket_file_mode_group_parent_and_stale_file(tmp_path: Path, make_server) -> None:
    path = tmp_path / "a" / "b" / "sg.sock"
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a crashed daemon leaves this behind
    make_server(path=path, mode=0o660, group="daemon")
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    import grp

    assert st.st_gid == grp.getgrnam("daemon").gr_gid
    with Client(path) as c:
        assert c.call("echo", g=1) == {"g": 1}
    with pytest.raises(OSError, match="in use"):
        ControlServer(path, lambda c, a: None)
    assert list(path.parent.iterdir()) == [path]  # no temporary names left behind


def test_parent_dir_is_created_and_file_removed_on_close(tmp_path: Path, engine: FakeEngine) -> None:
    path = tmp_path / "x" / "y" / "s.sock"
    srv = ControlServer(path, engine, mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    srv.close()
    assert not path.exists()


def test_refuses_to_replace_a_regular_file(tmp_path: Path, engine: FakeEngine) -> None:
    path = tmp_path / "s.sock"
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        ControlServer(path, engine)
    assert path.read_text() == "not a socket"


def test_peer_credentials_are_logged(srv: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="skyguard.control")
    with Client(srv.path) as c:
        c.call("status")
    assert srv.wait_for(lambda: srv.server.clients == 0)
    msgs = [r.getMessage() for r in caplog.records]
    assert any(f"pid={os.getpid()} uid={os.getuid()} gid={os.getgid()}" in m for m in msgs), msgs


def test_external_selector_drives_the_server(tmp_path: Path, engine: FakeEngine) -> None:
    """The daemon's loop: one selector with the server's fd (and others); poll(0) on readiness, timeout() as wait."""
    server = ControlServer(tmp_path / "s.sock", engine, request_timeout=0.3)
    sel = selectors.DefaultSelector()
    server.register(sel)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            wait = server.timeout()
            sel.select(0.05 if wait is None else min(wait, 0.05))
            server.poll(0)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        with Client(tmp_path / "s.sock") as c:
            assert c.call("stats")["kernel"]["packets"] == 1540
        raw = Raw(tmp_path / "s.sock")
        raw.read()
        raw.send(b"\x81")  # a map header and nothing more
        assert raw.closed()
    finally:
        stop.set()
        t.join(5)
        server.close()
        sel.close()


def test_client_not_running_message(tmp_path: Path) -> None:
    with pytest.raises(ConnectError) as ei:
        Client(tmp_path / "nothing.sock")
    assert ei.value.message == f"cannot connect to {tmp_path / 'nothing.sock'}: is skyguardd running?"
