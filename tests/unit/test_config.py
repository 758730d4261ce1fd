"""skyguardd config file + flags (precedence, errors with line numbers), and the logging helpers it selects."""

from __future__ import annotations

import io
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from skyguard import logs
from skyguard.daemon.config import Config, ConfigError, IdleTimeouts, load_config, parse_daemon_args

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "systemd" / "skyguard.toml"


def write(tmp_path: Path, text: str, name: str = "skyguard.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_match_the_design() -> None:
    c = Config()
    assert (c.xdp_mode, c.flows_max, c.window) == ("auto", 262144, 160)
    assert (c.socket, c.socket_mode, c.pin_path) == ("/run/skyguard/skyguard.sock", 0o660, "/sys/fs/bpf/skyguard")
    assert (c.on_stop, c.log_format) == ("keep", "auto")
    assert c.idle_timeout == IdleTimeouts(udp=120.0, tcp=3600.0, other=60.0)


def test_example_config_sets_every_key_and_loads() -> None:
    cfg = load_config(EXAMPLE)
    text = EXAMPLE.read_text()
    for f in fields(Config):
        if f.name not in ("path", "socket_group", "metrics_listen", "ipfix_collector"):
            assert f"\n{f.name} = " in text or f"[{f.name}]" in text, f"example config lacks {f.name}"
    assert "socket_group" in text
    assert "\n# metrics_listen = " in text and cfg.metrics_listen is None  # off by default: shown commented out
    assert "\n# ipfix_collector = " in text and cfg.ipfix_collector is None
    assert cfg.interfaces == ("eth0",) and cfg.policy == "/etc/skyguard/policy.toml"
    assert cfg.idle_timeout == IdleTimeouts() and cfg.path == str(EXAMPLE)


def test_full_file(tmp_path: Path) -> None:
    p = write(tmp_path, """
interfaces = ["eth0", "eth1.100"]
xdp_mode = "generic"
policy = "policies/observe.toml"
flows_max = 65536
window = 40
socket = "/tmp/sg/s.sock"
socket_mode = "0640"
socket_group = "skyguard"
log_format = "json"
pin_path = "/sys/fs/bpf/sg2"
on_stop = "detach"
stats_interval = 0
[idle_timeout]
udp = 30
other = 5.5
""")
    c = load_config(p)
    assert c.interfaces == ("eth0", "eth1.100") and c.xdp_mode == "generic"
    assert c.policy == str(tmp_path / "policies" / "observe.toml")  # relative to the config file
    assert (c.flows_max, c.window, c.socket_mode, c.socket_group) == (65536, 40, 0o640, "skyguard")
    assert (c.log_format, c.pin_path, c.on_stop, c.stats_interval) == ("json", "/sys/fs/bpf/sg2", "detach", 0.0)
    assert c.idle_timeout == IdleTimeouts(udp=30.0, tcp=3600.0, other=5.5)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('interfaces = ["eth0"]\nxdp_mode = "fast"\n', 2, "xdp_mode must be one of native, generic, auto"),
        ('interfaces = ["eth0"]\n\nflows_max = "big"\n', 3, "flows_max must be an integer"),
        ('window = 0\n', 1, "window must be an integer from 1"),
        ('interfaces = []\n', 1, "interfaces must be a non-empty list"),
        ('interfaces = ["eth0", "a/b"]\n', 1, "not an interface name"),
        ('interfaces = ["eth0"]\ninterfce = ["x"]\n', 2, "unknown key 'interfce'"),
        ('socket = "relative.sock"\n', 1, "socket must be an absolute path"),
        ('socket_mode = 0o1777\n', 1, "socket_mode must be a permission mode"),
        ('on_stop = "explode"\n', 1, "on_stop must be one of keep, detach"),
        ('log_format = "xml"\n', 1, "log_format must be one of"),
        ('[idle_timeout]\nudp = 120\ntcp = -1\n', 3, "idle_timeout.tcp must be a positive number"),
        ('# c\n[idle_timeout]\nicmp = 5\n', 3, "unknown key idle_timeout.icmp"),
        ('idle_timeout = 5\n', 1, "idle_timeout must be a table"),
        # inside an inline table: the line that sets the key (the old line scanner found none)
        ('window = 1\nidle_timeout = { udp = 120, tcp = -1 }\n', 2, "idle_timeout.tcp must be a positive number"),
        ('interfaces = [\n "eth0",\n]\nidle_timeout = { udp = 1, other = "x" }\n', 4, "idle_timeout.other must be"),
        ('idle_timeout.udp = 5\nidle_timeout.icmp = 5\n', 2, "unknown key idle_timeout.icmp"),
        ('interfaces = ["eth0"]\nwindow = 1\nwindow = 2\n', 3, "Cannot overwrite a value"),
        ('interfaces = ["eth0"\n\n', 2, "Unclosed array"),  # at the end of the file
        ('a = 1\nb = = 2\n', 2, "Invalid value"),
    ],
)
def test_errors_carry_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:{line}: "), msg
    assert words in msg
    assert "(at line" not in msg


def test_same_key_in_another_table_gets_its_own_line(tmp_path: Path) -> None:
    p = write(tmp_path, "[idle_timeout]\nother = 5\n")
    assert load_config(p).idle_timeout.other == 5.0
    p = write(tmp_path, 'stats_interval = 1\n[idle_timeout]\nudp = 5\ntcp = "x"\n')
    with pytest.raises(ConfigError, match=r":4: idle_timeout.tcp"):
        load_config(p)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.toml: No such file"):
        load_config(tmp_path / "nope.toml")
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p)


def test_flags_override_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, 'interfaces = ["eth0"]\npolicy = "/etc/p.toml"\nxdp_mode = "native"\nlog_format = "json"\n'
                        'socket = "/run/a.sock"\npin_path = "/sys/fs/bpf/a"\nwindow = 20\n')
    cfg, args = parse_daemon_args(["--config", str(p)])
    assert cfg.interfaces == ("eth0",) and cfg.xdp_mode == "native" and cfg.window == 20 and args.config == str(p)
    cfg, _ = parse_daemon_args(["--config", str(p), "-i", "veth1", "--interface", "veth2", "--policy", "rel.toml",
                                "--xdp-mode", "generic", "--log-format", "console", "--socket", "/tmp/b.sock",
                                "--pin-path", "/sys/fs/bpf/b"])
    assert cfg.interfaces == ("veth1", "veth2")  # flags replace, not extend
    assert cfg.policy == str(Path("rel.toml").absolute())
    assert (cfg.xdp_mode, cfg.log_format, cfg.socket, cfg.pin_path) == ("generic", "console", "/tmp/b.sock",
                                                                         "/sys/fs/bpf/b")
    assert cfg.window == 20  # untouched keys keep the file's value


def test_no_config_file_needed_with_interface_and_policy(tmp_path: Path) -> None:
    missing = str(tmp_path / "etc" / "skyguard.toml")
    cfg, _ = parse_daemon_args(["--interface", "eth0", "--policy", "/p.toml"], default_config=missing)
    assert cfg.interfaces == ("eth0",) and cfg.policy == "/p.toml" and cfg.path is None
    assert cfg.flows_max == 262144
    with pytest.raises(ConfigError, match="no such file"):
        parse_daemon_args(["--interface", "eth0"], default_config=missing)
    with pytest.raises(ConfigError, match="No such file"):  # an explicit --config must exist
        parse_daemon_args(["--config", missing, "--interface", "eth0", "--policy", "/p.toml"])


def test_default_config_file_is_read_when_present(tmp_path: Path) -> None:
    p = write(tmp_path, 'interfaces = ["br0"]\npolicy = "/etc/skyguard/p.toml"\n')
    cfg, _ = parse_daemon_args([], default_config=str(p))
    assert cfg.interfaces == ("br0",) and cfg.path == str(p)
    cfg, _ = parse_daemon_args(["--policy", "/x.toml"], default_config=str(p))
    assert cfg.interfaces == ("br0",) and cfg.policy == "/x.toml"


def test_incomplete_config_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, 'window = 10\n')
    with pytest.raises(ConfigError, match=r"no interfaces"):
        parse_daemon_args(["--config", str(p)])
    with pytest.raises(ConfigError, match=r"no policy"):
        parse_daemon_args(["--config", str(p), "-i", "eth0"])


def test_bad_flags_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        parse_daemon_args(["--xdp-mode", "turbo", "-i", "eth0", "--policy", "/p"])
    assert ei.value.code == 2
    with pytest.raises(ConfigError, match="not an interface name"):
        parse_daemon_args(["-i", "this-name-is-way-too-long", "--policy", "/p"], default_config="/nonexistent")


# ---- logging (log_format picks the renderer) ------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    import logging

    import structlog

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    structlog.reset_defaults()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_format_auto_json_when_not_a_tty(restore_logging: None) -> None:
    buf = io.StringIO()
    assert logs.configure("auto", stream=buf) == "json"
    logs.get_logger("engine").info("classified", flow="udp 1.2.3.4:5 <-> 6.7.8.9:10", cls="skype-out")
    line = json.loads(buf.getvalue().splitlines()[-1])
    assert line["event"] == "classified" and line["logger"] == "engine" and line["level"] == "info"
    assert line["cls"] == "skype-out" and line["timestamp"].endswith("Z") and "T" in line["timestamp"]
    import logging

    logging.getLogger("skyguard.control").info("client %d connected", 3)  # stdlib loggers too
    line = json.loads(buf.getvalue().splitlines()[-1])
    assert line["event"] == "client 3 connected" and line["logger"] == "skyguard.control"


def test_log_format_console_on_a_tty(restore_logging: None) -> None:
    buf = _Tty()
    assert logs.configure("auto", stream=buf) == "console"
    logs.get_logger("x").warning("hello", n=1)
    out = re.sub(r"\x1b\[[0-9;]*m", "", buf.getvalue())  # colours on a terminal
    assert "hello" in out and "n=" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.splitlines()[-1])
    assert logs.configure("json", stream=_Tty()) == "json"


def test_rate_limiter_per_key_with_suppressed_count() -> None:
    now = [0.0]
    rl = logs.RateLimiter(limit=3, period=60.0, clock=lambda: now[0])
    assert [rl.allow("f1") for _ in range(5)] == [True, True, True, False, False]
    assert rl.allow("f2")  # another key has its own budget
    now[0] = 61.0
    assert rl.check("f1") == (True, 2)  # the next allowed line reports what was dropped
    assert rl.check("f1") == (True, 0)


def test_rate_limiter_is_bounded() -> None:
    rl = logs.RateLimiter(limit=1, max_keys=100)
    for i in range(1000):
        rl.allow(i)
    assert len(rl) == 100
    assert rl.allow(0)  # forgotten keys start afresh


def test_metrics_listen_from_file_and_flag(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('interfaces = ["eth0"]\npolicy = "p.toml"\nmetrics_listen = "127.0.0.1:9377"\n')
    assert load_config(p).metrics_listen == "127.0.0.1:9377"
    cfg, _ = parse_daemon_args(["--config", str(p), "--metrics-listen", "[::1]:9400"])
    assert cfg.metrics_listen == "[::1]:9400"
    p.write_text('interfaces = ["eth0"]\npolicy = "p.toml"\nmetrics_listen = "localhost:9377"\n')
    with pytest.raises(ConfigError, match=r":3: metrics_listen "):
        load_config(p)
    with pytest.raises(ConfigError, match="--metrics-listen"):
        parse_daemon_args(["--interface", "eth0", "--policy", "x", "--metrics-listen", "9377"],
                          default_config=str(tmp_path / "absent.toml"))
