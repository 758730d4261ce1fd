"""skyguardd's configuration: /etc/skyguard/skyguard.toml plus command-line flags (flags win).

Errors are ConfigError("file:line: reason"), the same shape as policy errors.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from skyguard import __version__, wire
from skyguard.tomlpos import Locator, syntax_error_position

DEFAULT_CONFIG = "/etc/skyguard/skyguard.toml"
DEFAULT_SOCKET = "/run/skyguard/skyguard.sock"
DEFAULT_PIN_PATH = "/sys/fs/bpf/skyguard"
XDP_MODES = ("native", "generic", "auto")
LOG_FORMATS = ("json", "console", "auto")
ON_STOP = ("keep", "detach")
FOREIGN_XDP = ("refuse", "chain", "replace")
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")  # IFNAMSIZ - 1, no slash/colon/space


class ConfigError(Exception):
    """A bad config file or flag: str() is "file:line: reason" (or "file: reason" / "reason")."""


@dataclass(frozen=True)
class IdleTimeouts:
    """Seconds without packets after which the daemon forgets a flow (the LRU map also evicts under pressure)."""

    udp: float = 120.0
    tcp: float = 3600.0
    other: float = 60.0


@dataclass(frozen=True)
class Config:
    interfaces: tuple[str, ...] = ()
    xdp_mode: str = "auto"  # native | generic | auto (native, then generic)
    policy: str | None = None
    flows_max: int = wire.FLOWS_MAX
    window: int = wire.WINDOW  # inspection window: packets per flow that the signatures look at
    socket: str = DEFAULT_SOCKET
    socket_mode: int = 0o660
    socket_group: str | None = None
    log_format: str = "auto"  # json | console | auto (console on a terminal, JSON otherwise)
    log_level: str = "info"
    pin_path: str = DEFAULT_PIN_PATH
    on_stop: str = "keep"  # keep: programs and maps stay pinned and enforcing; detach: remove them
    foreign_xdp: str = "refuse"  # another tool's XDP program on an interface: refuse | chain | replace
    idle_timeout: IdleTimeouts = field(default_factory=IdleTimeouts)
    stats_interval: float = 60.0  # seconds between stats log lines; 0 = never
    metrics_listen: str | None = None  # ADDR:PORT of the Prometheus endpoint; None: no endpoint (off by default)
    # IPFIX export (RFC 7011 over UDP) of every flow's record: off unless a collector is set
    ipfix_collector: str | None = None  # HOST:PORT
    ipfix_active_timeout: float = 60.0  # s between records of a long flow
    ipfix_domain: int = 1  # observation domain id
    ipfix_template_refresh: float = 60.0  # s between template re-sends (RFC 7011 section 8.4)
    ipfix_template_refresh_packets: int = 0  # also re-send after this many messages; 0 = by time only
    ipfix_mtu: int = 1500  # path MTU to the collector: no message is larger than it less the IP and UDP headers
    path: str | None = None  # the file this came from (None: defaults and flags only)


# ---------------------------------------------------------------------------------------------------------------------
# Validation: one checker per key, each returning the normalised value or raising ValueError(reason)


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError("must be a non-empty string")
    return v


def _abs_path(v: Any) -> str:
    s = _str(v)
    if not s.startswith("/"):
        raise ValueError(f"must be an absolute path, not {s!r}")
    return s


def _choice(options: Sequence[str]):
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError(f"must be one of {', '.join(options)}, not {v!r}")
        return v

    return check


def _int_range(lo: int, hi: int):
    def check(v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"must be an integer from {lo} to {hi}, not {v!r}")
        return v

    return check


def _seconds(allow_zero: bool):
    def check(v: Any) -> float:
        ok = isinstance(v, int | float) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
        if not ok or v == float("inf"):
            raise ValueError(f"must be a {'non-negative' if allow_zero else 'positive'} number of seconds, not {v!r}")
        return float(v)

    return check


def _interfaces(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise ValueError("must be a non-empty list of interface names")
    for name in v:
        if not isinstance(name, str) or not _IFNAME.match(name):
            raise ValueError(f"not an interface name: {name!r}")
    if len(set(v)) != len(v):
        raise ValueError("lists an interface twice")
    return tuple(v)


def _mode(v: Any) -> int:
    if isinstance(v, str) and re.fullmatch(r"0?o?[0-7]{3,4}", v):
        v = int(v.replace("o", ""), 8)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0o777:
        raise ValueError(f"must be a permission mode like 0o660 or \"0660\", not {v!r}")
    return v


def _group(v: Any) -> str | None:
    if v in ("", None):
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return str(v)
    return _str(v)


CHECKS = {
    "interfaces": _interfaces,
    "xdp_mode": _choice(XDP_MODES),
    "policy": _str,  # relative paths are relative to the config file
    "flows_max": _int_range(1024, 1 << 24),
    "window": _int_range(1, 65535),
    "socket": _abs_path,
    "socket_mode": _mode,
    "socket_group": _group,
    "log_format": _choice(LOG_FORMATS),
    "log_level": _choice(("debug", "info", "warning", "error")),
    "pin_path": _abs_path,
    "on_stop": _choice(ON_STOP),
    "foreign_xdp": _choice(FOREIGN_XDP),
    "stats_interval": _seconds(allow_zero=True),
    "metrics_listen": lambda v: _listen(_str(v)),
    "ipfix_collector": lambda v: _collector(_str(v)),
    "ipfix_active_timeout": _seconds(allow_zero=False),
    "ipfix_domain": _int_range(0, 0xFFFFFFFF),
    "ipfix_template_refresh": _seconds(allow_zero=False),
    "ipfix_template_refresh_packets": _int_range(0, 1 << 31),
    "ipfix_mtu": _int_range(576, 65535),
}
IPFIX_FLAGS = {"ipfix_collector": str, "ipfix_active_timeout": float, "ipfix_domain": int,
               "ipfix_template_refresh": float, "ipfix_template_refresh_packets": int, "ipfix_mtu": int}


def _collector(v: str) -> str:
    from skyguard.export.ipfix import collector_address

    collector_address(v)
    return v


def _listen(v: str) -> str:
    from skyguard.endpoints import parse_endpoint

    parse_endpoint(v)
    return v


IDLE_CHECKS = {f.name: _seconds(allow_zero=False) for f in fields(IdleTimeouts)}


# ---------------------------------------------------------------------------------------------------------------------
# Files


def _error(path: str, text: str, table: str | None, key: str, reason: str) -> ConfigError:
    """A ConfigError at the line where `key` is set (in `table`, or at the top level), found by the same locator the
    policy checker uses: dotted keys and inline tables (`idle_timeout = { udp = -1 }`) included."""
    line = Locator(text).line((table, key) if table else (key,))
    return ConfigError(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")


def load_config(path: str | Path, base: Config | None = None) -> Config:
    """Read and validate a TOML config file (unknown keys are errors: they are usually typos)."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line, _col, reason = syntax_error_position(text, e)
        raise ConfigError(f"{path}:{max(line, 1)}: {reason}") from None
    return _from_dict(data, path, text, base or Config())


def _from_dict(data: dict[str, Any], path: str, text: str, base: Config) -> Config:
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key == "idle_timeout":
            if not isinstance(raw, dict):
                raise _error(path, text, None, key, "idle_timeout must be a table: [idle_timeout]")
            idle = {}
            for sub, v in raw.items():
                if sub not in IDLE_CHECKS:
                    raise _error(path, text, key, sub, f"unknown key idle_timeout.{sub} "
                                 f"(known: {', '.join(IDLE_CHECKS)})")
                try:
                    idle[sub] = IDLE_CHECKS[sub](v)
                except ValueError as e:
                    raise _error(path, text, key, sub, f"idle_timeout.{sub} {e}") from None
            values[key] = replace(base.idle_timeout, **idle)
            continue
        check = CHECKS.get(key)
        if check is None:
            raise _error(path, text, None, key, f"unknown key {key!r} (known: {', '.join([*CHECKS, 'idle_timeout'])})")
        try:
            values[key] = check(raw)
        except ValueError as e:
            raise _error(path, text, None, key, f"{key} {e}") from None
    if isinstance(values.get("policy"), str):
        values["policy"] = str(Path(path).absolute().parent / values["policy"])
    return replace(base, path=path, **values)


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def build_daemon_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skyguardd", description="skyguard daemon: XDP classifier and policy enforcer.")
    p.add_argument("--config", metavar="PATH", help=f"config file (default {DEFAULT_CONFIG}; optional when "
                   "--interface and --policy are given)")
    p.add_argument("--interface", "-i", metavar="IF", action="append", dest="interfaces",
                   help="attach to IF (repeatable; replaces the file's interfaces)")
    p.add_argument("--policy", metavar="FILE", help="policy file")
    p.add_argument("--socket", metavar="PATH", help=f"control socket (default {DEFAULT_SOCKET})")
    p.add_argument("--pin-path", metavar="DIR", help=f"bpffs directory for pinned maps (default {DEFAULT_PIN_PATH})")
    p.add_argument("--xdp-mode", metavar="MODE", choices=XDP_MODES, help="native | generic | auto")
    p.add_argument("--log-format", metavar="FMT", choices=LOG_FORMATS, help="json | console | auto")
    p.add_argument("--foreign-xdp", metavar="WHAT", choices=FOREIGN_XDP,
                   help="another XDP program on an interface: refuse (default) | chain | replace")
    p.add_argument("--detach", action="store_true",
                   help="detach skyguard's program from every interface (putting back what it chained) and exit")
    p.add_argument("--check", action="store_true",
                   help="check the config and the policy it names, print the verdict and exit (nothing is attached)")
    for key, typ in IPFIX_FLAGS.items():
        p.add_argument("--" + key.replace("_", "-"), type=typ, metavar=key.split("_", 1)[1].upper(),
                       help=f"config key {key}")
    p.add_argument("--metrics-listen", metavar="ADDR:PORT", help="serve Prometheus metrics on ADDR:PORT (config "
                   "metrics_listen; off by default)")
    p.add_argument("--version", action="version", version=f"skyguardd {__version__}")
    return p


def parse_daemon_args(argv: Sequence[str] | None = None, *, default_config: str = DEFAULT_CONFIG,
                      ) -> tuple[Config, argparse.Namespace]:
    """Flags over the file over defaults. Usage errors exit 2 (argparse); config errors raise ConfigError."""
    args = build_daemon_parser().parse_args(argv)
    if args.config:
        cfg = load_config(args.config)
    elif Path(default_config).exists():
        cfg = load_config(default_config)
    elif (args.interfaces and args.policy) or args.detach:
        cfg = Config()
    else:
        raise ConfigError(f"{default_config}: no such file; give --config PATH, or both --interface and --policy")

    flags: dict[str, Any] = {}
    where = "command line"
    try:
        if args.interfaces:
            flags["interfaces"] = _interfaces(args.interfaces)
        if args.policy:
            flags["policy"] = str(Path(args.policy).absolute())
        if args.socket:
            flags["socket"] = _abs_path(str(Path(args.socket).absolute()))
        if args.pin_path:
            flags["pin_path"] = str(Path(args.pin_path).absolute())
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    if args.xdp_mode:
        flags["xdp_mode"] = args.xdp_mode
    if args.log_format:
        flags["log_format"] = args.log_format
    if args.foreign_xdp:
        flags["foreign_xdp"] = args.foreign_xdp
    if args.metrics_listen:
        try:
            flags["metrics_listen"] = _listen(args.metrics_listen)
        except ValueError as e:
            raise ConfigError(f"{where}: --metrics-listen {e}") from None
    for key in IPFIX_FLAGS:
        if getattr(args, key) is not None:
            try:
                flags[key] = CHECKS[key](getattr(args, key))
            except ValueError as e:
                raise ConfigError(f"{where}: --{key.replace('_', '-')} {e}") from None
    cfg = replace(cfg, **flags)

    origin = cfg.path or where
    if args.detach:
        return cfg, args
    if not cfg.interfaces:
        raise ConfigError(f"{origin}: no interfaces: set `interfaces` or pass --interface")
    if not cfg.policy:
        raise ConfigError(f"{origin}: no policy: set `policy` or pass --policy")
    return cfg, args
