"""Client side of the control socket (frames and codes: proto.py)."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from typing import Any

import msgpack

from skyguard.proto import MAX_FRAME, PROTO_VERSION

DEFAULT_SOCKET = "/run/skyguard/skyguard.sock"


class ClientError(Exception):
    """An error reply from the daemon ({"code", "message"}) or a local failure (codes below)."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class ConnectError(ClientError):
    """The daemon's socket could not be reached (not running, wrong path, no permission)."""


CLOSED = "closed"  # the daemon closed the connection
TIMEOUT = "timeout"
PROTOCOL = "protocol"  # the daemon sent something that is not this protocol


class Client:
    """One connection to skyguardd. `call()` sends a request and returns its result; `events()` subscribes."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_SOCKET, timeout: float | None = 5.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._next_id = 0
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 * MAX_FRAME)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
        except OSError as e:
            self._sock.close()
            raise ConnectError(_connect_code(e), _connect_message(self.path, e)) from None
        hello = self._read()
        if not isinstance(hello, dict) or "hello" not in hello:
            self.close()
            if isinstance(hello, dict) and isinstance(hello.get("error"), dict):  # e.g. too-many-clients
                err = hello["error"]
                raise ClientError(str(err.get("code", PROTOCOL)), str(err.get("message", "")))
            raise ClientError(PROTOCOL, f"expected a hello from {self.path}, got {hello!r:.100}")
        self.hello: dict = hello["hello"]

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    # ---- frames -----------------------------------------------------------------------------------------------------

    def _read(self) -> Any:
        while True:
            try:
                return next(self._unpacker)
            except StopIteration:
                pass
            except (ValueError, msgpack.UnpackException) as e:
                raise ClientError(PROTOCOL, f"bad frame from the daemon: {e}") from None
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                raise ClientError(TIMEOUT, f"no answer from {self.path} within {self.timeout:g} s") from None
            except OSError as e:
                raise ClientError(CLOSED, f"connection to {self.path} lost: {e.strerror or e}") from None
            if not data:
                raise ClientError(CLOSED, f"{self.path}: the daemon closed the connection")
            self._unpacker.feed(data)

    def _request(self, cmd: str, args: dict) -> int:
        self._next_id += 1
        frame = msgpack.packb({"v": PROTO_VERSION, "id": self._next_id, "cmd": cmd, "args": args}, use_bin_type=True)
        try:
            self._sock.sendall(frame)
        except TimeoutError:
            raise ClientError(TIMEOUT, f"{self.path} did not take the request within {self.timeout:g} s") from None
        except OSError as e:
            raise ClientError(CLOSED, f"connection to {self.path} lost: {e.strerror or e}") from None
        return self._next_id

    def _reply(self, rid: int) -> Any:
        while True:
            msg = self._read()
            if not isinstance(msg, dict) or "event" in msg:
                continue  # events of an earlier subscription
            if msg.get("id") not in (rid, None):
                continue
            if msg.get("ok") is True:
                return msg.get("result")
            err = msg.get("error") if isinstance(msg.get("error"), dict) else {}
            raise ClientError(str(err.get("code", PROTOCOL)), str(err.get("message", "")))

    # ---- API --------------------------------------------------------------------------------------------------------

    def call(self, cmd: str, **args: Any) -> Any:
        """Run one command; returns its result or raises ClientError(code, message)."""
        return self._reply(self._request(cmd, args))

    def events(self, timeout: float | None = None) -> Iterator[dict]:
        """Subscribe and yield each event until the daemon closes (ClientError CLOSED) or the caller stops.
        `timeout` bounds the wait for each event (None: wait forever)."""
        self._reply(self._request("events", {}))
        self._sock.settimeout(timeout)
        self.timeout = timeout
        while True:
            msg = self._read()
            if isinstance(msg, dict) and isinstance(msg.get("event"), dict):
                yield msg["event"]


def _connect_code(e: OSError) -> str:
    return "permission-denied" if e.errno in (errno.EACCES, errno.EPERM) else "cannot-connect"


def _connect_message(path: str, e: OSError) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"cannot connect to {path}: permission denied (run as root or as a member of the socket's group)"
    return f"cannot connect to {path}: is skyguardd running?"
