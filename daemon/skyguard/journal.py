"""Syslog priorities on log lines written to journald's stdout stream, so `journalctl -p warning` finds warnings.

Under systemd, the daemon's stdout is a stream socket to journald, which stores each line as MESSAGE with the unit's
default priority (SyslogLevel=, info) unless the line starts with a `<N>` prefix: with SyslogLevelPrefix=yes (the
default) journald strips the prefix and stores PRIORITY=N (systemd.exec(5)). A PRIORITY key inside the JSON would be
part of MESSAGE, not a journal field. So each line gets `<N>` when, and only when, stdout is that journal stream:
systemd sets $JOURNAL_STREAM to the stream's "device:inode", and a prefix on a terminal, in a file or a pipe would only
be noise. The message after the prefix is unchanged (one JSON object per line in the json format).

Priorities are syslog's (RFC 5424): error 3, warning 4, info 6, debug 7; critical 2.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TextIO

PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "notice": 5, "info": 6, "debug": 7}
DEFAULT_PRIORITY = 6


def stream_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True when `stream` is the journal stream systemd gave this process ($JOURNAL_STREAM = "device:inode" of it).
    Checking the file itself, not only the variable: a child that inherited the variable but writes elsewhere (a
    pipe, a file) must not prefix."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not (sep and dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file descriptor (StringIO), or closed
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def priority_of(method_name: str, event_dict: dict[str, Any]) -> int:
    level = event_dict.get("level", method_name)
    return PRIORITY.get(str(level).lower(), DEFAULT_PRIORITY)


class PriorityPrefixed:
    """Wraps a structlog renderer: `<N>` + the rendered line. Every line of a multi-line rendering (a console
    traceback) gets the prefix, since journald reads the priority line by line."""

    def __init__(self, renderer: Callable[..., str]) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method_name: str, event_dict: dict[str, Any]) -> str:
        prio = priority_of(method_name, event_dict)
        text = self.renderer(logger, method_name, event_dict)
        return "\n".join(f"<{prio}>{line}" for line in text.split("\n"))
