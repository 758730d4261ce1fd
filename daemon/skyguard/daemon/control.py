"""The control socket server: a Unix stream socket speaking msgpack maps back to back. The frames, error codes and
the command list are proto.py's; what each command does is daemon/commands.py's.

Single-threaded and non-blocking. The server keeps its own epoll selector whose file descriptor (`fileno()`) the
daemon's event loop watches for readability next to the ring buffer and signal fds; whenever it is readable, or when
`timeout()` seconds have passed, the loop calls `poll(0)`. Standalone users (tests, tools) call `poll(timeout)`.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from skyguard import __version__
from skyguard.proto import (
    BAD_FRAME,
    BAD_REQUEST,
    COMMAND_NAMES,
    FRAME_TOO_LARGE,
    INTERNAL,
    MAX_FRAME,
    PROTO_VERSION,
    TOO_MANY_CLIENTS,
    UNKNOWN_COMMAND,
    ControlError,
)

__all__ = ["ControlError", "ControlServer", "Peer", "error_reply"]

MAX_OUTBUF = 4 << 20  # a client whose unsent replies/events pass this is dropped
READ_PAUSE = 1 << 20  # stop reading a client's requests while this much of its output is unsent (backpressure)
RECV_CHUNK = 64 << 10

Handler = Callable[[str, dict], Any]
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    fd: int
    peer: Peer
    cid: int
    now: float
    unpacker: msgpack.Unpacker = field(init=False)
    out: bytearray = field(default_factory=bytearray)
    fed: int = 0  # bytes fed to the unpacker
    frame_end: int = 0  # stream offset where the last complete frame ended (tell() also counts partial parses)
    partial_since: float | None = None  # when an unfinished frame started waiting for its end
    last_active: float = 0.0
    subscribed: bool = False
    closing_since: float | None = None  # flush `out`, then close
    events_mask: int = 0

    def __post_init__(self) -> None:
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_FRAME, strict_map_key=True)
        self.last_active = self.now

    @property
    def buffered(self) -> int:
        """Bytes of the unfinished frame."""
        return self.fed - self.frame_end


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def error_reply(rid: Any, code: str, message: str) -> dict:
    return {"v": PROTO_VERSION, "id": rid, "ok": False, "error": {"code": code, "message": message}}


class ControlServer:
    """Serves `handler(cmd, args)` on a Unix socket. Not thread-safe: drive it from one loop."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        handler: Handler,
        *,
        mode: int = 0o660,
        group: str | int | None = None,
        max_clients: int = 256,
        idle_timeout: float = 60.0,
        request_timeout: float = 5.0,
        commands: tuple[str, ...] | list[str] = COMMAND_NAMES,
        version: str = __version__,
        max_outbuf: int = MAX_OUTBUF,
        logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.handler = handler
        self.mode = mode
        self.group = group
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.commands = tuple(commands)
        self.version = version
        self.max_outbuf = max_outbuf
        self.log = logger if logger is not None else logging.getLogger("skyguard.control")
        self.clock = clock
        self._sel = selectors.EpollSelector()
        self._conns: dict[int, _Conn] = {}  # fd -> connection
        self._nsub = 0  # connections subscribed to events
        self._next_cid = 0
        self._listener = self._bind()
        self._sel.register(self._listener, selectors.EVENT_READ, None)

    # ---- socket file ------------------------------------------------------------------------------------------------

    def _gid(self) -> int | None:
        if self.group is None or self.group == "":
            return None
        if isinstance(self.group, int) or str(self.group).isdigit():
            return int(self.group)
        try:
            return grp.getgrnam(str(self.group)).gr_gid
        except KeyError:
            raise ControlError(INTERNAL, f"socket group {self.group!r} does not exist") from None

    def _bind(self) -> socket.socket:
        """Bind under a temporary name, set mode and group, then rename over `path`: no moment with wrong permissions,
        and a stale socket file from a crashed daemon is replaced atomically. A live daemon's socket is refused."""
        gid = self._gid()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            st = self.path.lstat()
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(errno.EEXIST, f"{self.path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(0.5)
                probe.connect(str(self.path))
            except OSError:
                pass  # stale: nobody listens
            else:
                raise OSError(errno.EADDRINUSE, f"{self.path} is in use by a running server")
            finally:
                probe.close()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, self.mode)
            if gid is not None:
                os.chown(tmp, -1, gid)
            sock.listen(max(self.max_clients, 64))
            os.rename(tmp, self.path)
            self._inode = self.path.stat().st_ino
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return sock

    # ---- event loop integration -------------------------------------------------------------------------------------

    def fileno(self) -> int:
        """An epoll fd that is readable whenever `poll(0)` has work to do (except timers: see `timeout()`)."""
        return self._sel.fileno()

    def register(self, selector: selectors.BaseSelector, data: Any = None) -> None:
        """Register this server's fd for reading on the daemon's selector; on readiness call `poll(0)`."""
        selector.register(self, selectors.EVENT_READ, data)

    def timeout(self) -> float | None:
        """Seconds until the next per-client deadline (None: no deadline pending). The loop's wait must not exceed
        it, or stalled/idle clients are dropped late."""
        deadlines = [d for c in self._conns.values() for d in self._deadlines(c)]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - self.clock())

    @property
    def clients(self) -> int:
        return len(self._conns)

    @property
    def subscribers(self) -> int:
        return self._nsub  # kept as clients subscribe and leave: the engine asks once per event

    def poll(self, timeout: float | None = 0.0) -> None:
        """Handle whatever is ready (waiting up to `timeout` seconds), then expire clients past their deadlines."""
        wait = timeout
        pending = self.timeout()
        if pending is not None and (wait is None or pending < wait):
            wait = pending
        for key, mask in self._sel.select(wait):
            if key.data is None:
                self._accept()
                continue
            conn = self._conns.get(key.fd)
            if conn is None:
                continue
            if mask & selectors.EVENT_WRITE:
                self._flush(conn)
            if mask & selectors.EVENT_READ and self._alive(conn) and conn.closing_since is None:
                self._read(conn)
        self._expire()

    def publish(self, event: dict) -> None:
        """Send {"event": event} to every subscriber without blocking; slow subscribers are dropped."""
        subs = [c for c in self._conns.values() if c.subscribed and c.closing_since is None]
        if not subs:
            return
        frame = _pack({"event": event})
        for conn in subs:
            self._send(conn, frame)

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(self._listener)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_ino == self._inode:  # still ours, not a newer server's
                self.path.unlink()
        self._sel.close()

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- connections ------------------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: log, try again on the next readiness
                self.log.warning("control: accept failed: %s", e)
                return
            sock.setblocking(False)
            try:
                pid, uid, gid = _PEERCRED.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                )
            except OSError:
                pid, uid, gid = 0, -1, -1
            peer = Peer(pid, uid, gid)
            if len(self._conns) >= self.max_clients:
                with contextlib.suppress(OSError):
                    sock.send(_pack(error_reply(None, TOO_MANY_CLIENTS, f"at most {self.max_clients} clients")))
                sock.close()
                self.log.warning("control: refused client pid=%d uid=%d gid=%d: too many clients", pid, uid, gid)
                continue
            self._next_cid += 1
            conn = _Conn(sock=sock, fd=sock.fileno(), peer=peer, cid=self._next_cid, now=self.clock())
            self._conns[sock.fileno()] = conn
            conn.events_mask = selectors.EVENT_READ
            self._sel.register(sock, selectors.EVENT_READ, conn.cid)
            self.log.info("control: client %d connected pid=%d uid=%d gid=%d", conn.cid, pid, uid, gid)
            hello = {"server": "skyguardd", "version": self.version, "commands": list(self.commands)}
            self._send(conn, _pack({"v": PROTO_VERSION, "hello": hello}))

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._drop(conn, f"recv: {e}")
            return
        if not data:
            self._drop(conn, "closed by client" + (" mid-frame" if conn.buffered else ""))
            return
        now = self.clock()
        conn.last_active = now
        view = memoryview(data)
        while view and conn.closing_since is None:
            room = MAX_FRAME - conn.buffered
            if room <= 0:
                self._fail(conn, FRAME_TOO_LARGE, f"a frame is larger than {MAX_FRAME} bytes")
                return
            chunk, view = view[:room], view[room:]
            try:
                conn.unpacker.feed(chunk)
            except msgpack.BufferFull:
                self._fail(conn, FRAME_TOO_LARGE, f"a frame is larger than {MAX_FRAME} bytes")
                return
            conn.fed += len(chunk)
            if not self._unpack(conn):
                return
        if conn.closing_since is not None:
            return
        if conn.buffered:
            if conn.partial_since is None:
                conn.partial_since = now
        else:
            conn.partial_since = None

    def _unpack(self, conn: _Conn) -> bool:
        """Handle every complete frame; False when the connection is being closed."""
        while True:
            try:
                obj = next(conn.unpacker)
            except StopIteration:
                return True
            except (ValueError, msgpack.UnpackException) as e:
                self._fail(conn, BAD_FRAME, f"not msgpack: {e}")
                return False
            conn.frame_end = conn.unpacker.tell()
            conn.partial_since = None  # a frame ended: the stall clock restarts with the next unfinished frame
            self._dispatch(conn, obj)
            if conn.closing_since is not None or not self._alive(conn):
                return False
            if len(conn.out) >= READ_PAUSE:
                return True

    def _dispatch(self, conn: _Conn, req: Any) -> None:
        if not isinstance(req, dict):
            self._reply(conn, error_reply(None, BAD_REQUEST, f"a request is a map, not {type(req).__name__}"))
            return
        rid = req.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            self._reply(conn, error_reply(None, BAD_REQUEST, "'id' must be an integer"))
            return
        problem = None
        v, cmd, args = req.get("v"), req.get("cmd"), req.get("args", {})
        if v != PROTO_VERSION or isinstance(v, bool):
            problem = f"'v' must be {PROTO_VERSION}"
        elif not isinstance(cmd, str):
            problem = "'cmd' must be a string"
        elif not isinstance(args, dict):
            problem = "'args' must be a map"
        if problem:
            self._reply(conn, error_reply(rid, BAD_REQUEST, problem))
            return
        if cmd not in self.commands:
            self._reply(conn, error_reply(rid, UNKNOWN_COMMAND, f"unknown command {cmd!r}"))
            return
        if cmd == "events":
            if not conn.subscribed:
                self._nsub += 1
            conn.subscribed = True
            self.log.info("control: client %d subscribed to events", conn.cid)
            self._reply(conn, {"v": PROTO_VERSION, "id": rid, "ok": True, "result": {"subscribed": True}})
            return
        try:
            result = self.handler(cmd, args)
            frame = _pack({"v": PROTO_VERSION, "id": rid, "ok": True, "result": result})
        except ControlError as e:
            frame = _pack(error_reply(rid, e.code, e.message))
        except Exception as e:  # a handler bug must not take the daemon down
            self.log.exception("control: command %r from client %d failed", cmd, conn.cid)
            frame = _pack(error_reply(rid, INTERNAL, f"{type(e).__name__}: {e}"))
        self._send(conn, frame)

    def _reply(self, conn: _Conn, reply: dict) -> None:
        self._send(conn, _pack(reply))

    def _fail(self, conn: _Conn, code: str, message: str) -> None:
        """Send an error reply, then close once it is flushed (or after request_timeout)."""
        self.log.warning("control: client %d: %s: %s", conn.cid, code, message)
        self._send(conn, _pack(error_reply(None, code, message)))
        if self._alive(conn):
            conn.closing_since = self.clock()
            if not conn.out:
                self._drop(conn, None)
            else:
                self._set_mask(conn, selectors.EVENT_WRITE)

    def _send(self, conn: _Conn, frame: bytes) -> None:
        if not self._alive(conn):
            return
        if conn.out:
            conn.out += frame
        else:
            try:
                n = conn.sock.send(frame)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self._drop(conn, f"send: {e}")
                return
            if n < len(frame):
                conn.out += frame[n:]
        if not self._alive(conn):
            return
        if len(conn.out) > self.max_outbuf:
            self._drop(conn, f"too slow: more than {self.max_outbuf} bytes unsent")
            return
        self._update_mask(conn)

    def _flush(self, conn: _Conn) -> None:
        while conn.out:
            try:
                n = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._drop(conn, f"send: {e}")
                return
            del conn.out[:n]
        if not conn.out and conn.closing_since is not None:
            self._drop(conn, None)
            return
        self._update_mask(conn)
        if conn.buffered and len(conn.out) < READ_PAUSE and conn.closing_since is None:
            self._unpack(conn)  # frames left waiting while output was paused

    def _update_mask(self, conn: _Conn) -> None:
        if conn.closing_since is not None:
            mask = selectors.EVENT_WRITE
        else:
            mask = selectors.EVENT_READ if len(conn.out) < READ_PAUSE else 0
            if conn.out:
                mask |= selectors.EVENT_WRITE
        self._set_mask(conn, mask)

    def _set_mask(self, conn: _Conn, mask: int) -> None:
        if mask == conn.events_mask or not self._alive(conn):
            return
        conn.events_mask = mask
        self._sel.modify(conn.sock, mask, conn.cid)

    def _alive(self, conn: _Conn) -> bool:
        return self._conns.get(conn.fd) is conn

    def _drop(self, conn: _Conn, why: str | None) -> None:
        if not self._alive(conn):
            return
        del self._conns[conn.fd]
        if conn.subscribed:
            self._nsub -= 1
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        conn.sock.close()
        p = conn.peer
        if why:
            self.log.info("control: client %d (pid=%d uid=%d) dropped: %s", conn.cid, p.pid, p.uid, why)
        else:
            self.log.info("control: client %d (pid=%d uid=%d) closed", conn.cid, p.pid, p.uid)

    # ---- deadlines --------------------------------------------------------------------------------------------------

    def _deadlines(self, conn: _Conn) -> list[float]:
        out = []
        if conn.closing_since is not None:
            out.append(conn.closing_since + self.request_timeout)
        if conn.partial_since is not None:
            out.append(conn.partial_since + self.request_timeout)
        if not conn.subscribed:
            out.append(conn.last_active + self.idle_timeout)
        return out

    def _expire(self) -> None:
        now = self.clock()
        for conn in list(self._conns.values()):
            if conn.closing_since is not None and now >= conn.closing_since + self.request_timeout:
                self._drop(conn, "did not read its error reply")
            elif conn.partial_since is not None and now >= conn.partial_since + self.request_timeout:
                self._drop(conn, f"unfinished frame for more than {self.request_timeout:g} s")
            elif not conn.subscribed and now >= conn.last_active + self.idle_timeout:
                self._drop(conn, f"idle for more than {self.idle_timeout:g} s")
