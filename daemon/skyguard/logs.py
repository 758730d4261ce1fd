"""structlog set-up: JSON lines to stdout under systemd (journald keeps them), a console renderer on a terminal.

Also `RateLimiter`, so per-flow log lines (classification, enforcement) cannot flood the journal.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import structlog

from skyguard.journal import PriorityPrefixed, stream_is_journal

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def resolve_format(log_format: str, stream: TextIO) -> str:
    """`auto` -> console on a terminal, json otherwise."""
    if log_format in ("json", "console"):
        return log_format
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def configure(log_format: str = "auto", level: str = "info", stream: TextIO | None = None) -> str:
    """Configure structlog (process-wide, as logging is) and the stdlib root logger through the same renderer.
    Returns the format chosen."""
    stream = stream or sys.stdout
    fmt = resolve_format(log_format, stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        renderer: Any = structlog.processors.JSONRenderer(sort_keys=False)
        shared += [structlog.processors.dict_tracebacks]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_colors(stream))
    if stream_is_journal(stream):  # journald's stdout stream: `<N>` gives each line its syslog priority
        renderer = PriorityPrefixed(renderer)
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # stdlib loggers (control.py, libraries) go through a structlog formatter to the same stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    return fmt


def _colors(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def get_logger(name: str, **context: Any) -> Any:
    """A structlog logger whose lines carry `logger=name` (and any extra bound context)."""
    return structlog.get_logger().bind(logger=name, **context)


@dataclass
class _Window:
    start: float
    count: int = 0
    suppressed: int = 0


@dataclass
class RateLimiter:
    """At most `limit` lines per key per `period` seconds (fixed windows). Bounded: at most `max_keys` keys are
    remembered, the least recently used are forgotten first.

        ok, suppressed = limiter.check(flow_key)
        if ok: log.info("classified", ..., suppressed=suppressed)
    """

    limit: int = 10
    period: float = 60.0
    max_keys: int = 65536
    clock: Callable[[], float] = time.monotonic
    _windows: OrderedDict[Any, _Window] = field(default_factory=OrderedDict, repr=False)

    def check(self, key: Any) -> tuple[bool, int]:
        """(allowed, lines suppressed for this key since the last allowed one)."""
        now = self.clock()
        w = self._windows.get(key)
        carried = 0
        if w is None or now - w.start >= self.period:
            carried = w.suppressed if w else 0
            w = _Window(start=now)
            self._windows[key] = w
        self._windows.move_to_end(key)
        if len(self._windows) > self.max_keys:
            self._windows.popitem(last=False)
        if w.count < self.limit:
            w.count += 1
            return True, carried
        w.suppressed += 1
        return False, 0

    def allow(self, key: Any) -> bool:
        return self.check(key)[0]

    def __len__(self) -> int:
        return len(self._windows)
