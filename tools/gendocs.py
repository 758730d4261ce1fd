#!/usr/bin/env python3
"""Man pages and bash completion, generated at build time from the definitions the programs themselves use.

    python3 tools/gendocs.py OUTDIR [--prefix /usr]

writes OUTDIR/man/{skyguard.8,skyguardd.8,skyguard.toml.5,skyguard-policy.5} and OUTDIR/completion/{skyguard,skyguardd}.
Sources: `skyguard`'s parser (cli.args.build_parser), `skyguardd`'s (daemon.config.build_daemon_parser), the
commented example config (systemd/skyguard.toml: one comment block per key) and the policy format in skyguard.policy's
docstring. Nothing is written by hand twice, so a new flag or key shows up in --help, the man page and the completion
alike. Needs the package's import-time dependencies (msgpack), not bcc.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "daemon"), str(ROOT / "tools")]

from completion import bash_completion  # noqa: E402  (tools/completion.py)

from skyguard import __version__, policy, wire  # noqa: E402
from skyguard.cli import main as cli_main  # noqa: E402
from skyguard.cli.args import build_parser  # noqa: E402
from skyguard.daemon.config import DEFAULT_CONFIG, DEFAULT_PIN_PATH, DEFAULT_SOCKET, build_daemon_parser  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------------
# roff


def esc(text: str) -> str:
    """Plain text -> roff: backslashes, hyphens of options, and a leading control character made literal."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln.startswith((".", "'")) else ln for ln in text.split("\n"))


def header(name: str, section: int, title: str) -> list[str]:
    # the date comes from the changelog under dpkg-buildpackage (SOURCE_DATE_EPOCH): the same source, the same page
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    date = time.strftime("%Y-%m-%d", time.gmtime(int(epoch))) if epoch else ""
    manual = "System Administration" if section == 8 else "File Formats"
    return [f'.TH {name.upper()} {section} "{date}" "skyguard {__version__}" "{manual}"', ".SH NAME",
            f"{esc(name)} \\- {esc(title)}"]


def para(text: str) -> list[str]:
    """Paragraphs separated by blank lines; each is filled by the formatter."""
    out: list[str] = []
    for p in re.split(r"\n\s*\n", text.strip()):
        out += [".PP", esc(" ".join(p.split()))]
    return out


def literal(text: str) -> list[str]:
    return [".PP", ".nf", ".RS 4", esc(text.rstrip("\n")), ".RE", ".fi"]


# ---------------------------------------------------------------------------------------------------------------------
# argparse walking (the actions' public attributes; the sub-parser action's choices map names to parsers)


def options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and a.help != argparse.SUPPRESS]


def positionals(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]


def subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def sub_help(p: argparse.ArgumentParser) -> dict[str, str]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return {c.dest: c.help or "" for c in a._choices_actions}
    return {}


def takes_value(a: argparse.Action) -> bool:
    return a.nargs != 0


def option_lines(acts: list[argparse.Action]) -> list[str]:
    out: list[str] = []
    for a in acts:
        meta = a.metavar or (a.dest.upper() if takes_value(a) else None)
        if a.choices and not a.metavar:
            meta = "{" + ",".join(map(str, a.choices)) + "}"
        spelled = ", ".join(f"\\fB{esc(o)}\\fR" + (f" \\fI{esc(str(meta))}\\fR" if meta else "")
                            for o in a.option_strings)
        text = (a.help or "") % {"default": a.default, "prog": ""} if a.help else ""
        if a.choices and a.metavar:
            text += f" (one of: {', '.join(map(str, a.choices))})"
        out += [".TP", spelled, esc(text)]
    return out


def usage(p: argparse.ArgumentParser) -> str:
    return " ".join(p.format_usage().removeprefix("usage:").split())


# ---------------------------------------------------------------------------------------------------------------------
# The pages


def skyguard_page(prefix: str) -> str:
    p, _cmds = build_parser()
    out = header("skyguard", 8, "operate skyguardd, replay captures, run the lab")
    out += [".SH SYNOPSIS", f".B {esc(usage(p))}", ".SH DESCRIPTION"] + para(p.description or "")
    out += para("The daemon commands talk to skyguardd over its control socket; replay and lab run here and need "
                "root. Every command prints a table for people, or JSON with --json.")
    out += [".SH OPTIONS"] + option_lines(options(p))
    out += [".SH COMMANDS"]
    helps = sub_help(p)
    for name, sp in subparsers(p).items():
        nested = subparsers(sp)
        parsers = [(f"{name} {n}", q, sub_help(sp).get(n, "")) for n, q in nested.items()] if nested else \
            [(name, sp, helps.get(name, ""))]
        for full, q, short in parsers:
            out += [f'.SS "{esc(full)}"', f".B {esc(usage(q))}"]
            out += para(q.description or short)
            for a in positionals(q):
                out += [".TP", f"\\fI{esc(str(a.metavar or a.dest))}\\fR", esc(a.help or "")]
            out += option_lines([a for a in options(q) if a.option_strings != ["-h", "--help"]])
    out += [".SH EXIT STATUS", ".TP", str(cli_main.EXIT_OK), "success", ".TP", str(cli_main.EXIT_ERROR),
            "an error (the daemon refused, could not be reached, or a file was bad)", ".TP",
            str(cli_main.EXIT_USAGE), "usage error"]
    out += [".SH ENVIRONMENT", ".TP", ".B SKYGUARD_SOCKET",
            esc(f"the daemon's control socket when --socket is not given (default {DEFAULT_SOCKET})"), ".TP",
            ".B SKYGUARD_CACHE_DIR",
            esc("where replay keeps its compiled packet loop and the replay build's program image, a directory "
                "private to the user (default $XDG_CACHE_HOME/skyguard, else ~/.cache/skyguard)"), ".TP",
            ".B SKYGUARD_BPF_CACHE",
            esc("0: replay compiles its XDP program every time instead of loading the cached image")]
    out += [".SH FILES", ".TP", esc(DEFAULT_SOCKET),
            esc("control socket; members of the skyguard group may use it"), ".TP",
            esc(f"{prefix}/share/skyguard/policies/"), esc("example policies (see skyguard-policy(5))")]
    out += [".SH SEE ALSO", "\\fBskyguardd\\fR(8), \\fBskyguard.toml\\fR(5), \\fBskyguard-policy\\fR(5)"]
    return "\n".join(out) + "\n"


def skyguardd_page() -> str:
    p = build_daemon_parser()
    out = header("skyguardd", 8, "the skyguard XDP classifier and policy enforcer")
    out += [".SH SYNOPSIS", f".B {esc(usage(p))}", ".SH DESCRIPTION"] + para(p.description or "")
    out += para(
        "skyguardd attaches the classifier's XDP program to the configured interfaces, pins its maps on bpffs and "
        "serves the control socket for skyguard(8). It runs in the foreground and tells systemd when it is ready "
        "(Type=notify). Flags override the configuration file, which overrides the defaults; with --interface and "
        "--policy no configuration file is needed.\n\n"
        "The kernel enforces: a restarted daemon adopts the pinned maps, and the attached program keeps enforcing "
        "known flows while no daemon runs. What stopping does is the configuration's on_stop (skyguard.toml(5)).")
    out += [".SH OPTIONS"] + option_lines(options(p))
    out += [".SH SIGNALS", ".TP", ".B SIGHUP",
            esc("reload the policy atomically; a refused file leaves the running policy in place"), ".TP",
            ".B SIGTERM, SIGINT", esc("stop; the XDP program stays attached unless on_stop = \"detach\"")]
    out += [".SH FILES", ".TP", esc(DEFAULT_CONFIG), "configuration (skyguard.toml(5))", ".TP",
            esc(DEFAULT_SOCKET), "control socket", ".TP", esc(DEFAULT_PIN_PATH), "pinned maps"]
    out += [".SH SEE ALSO", "\\fBskyguard\\fR(8), \\fBskyguard.toml\\fR(5), \\fBskyguard-policy\\fR(5), "
            "\\fBsystemctl\\fR(1)"]
    return "\n".join(out) + "\n"


@dataclass
class ConfigDoc:
    intro: list[str] = field(default_factory=list)
    # (table or "", key, example line, comment lines)
    keys: list[tuple[str, str, str, list[str]]] = field(default_factory=list)


_KEY = re.compile(r"^([a-z_][a-z0-9_]*)\s*=\s*(.+)$")
# `# socket_group = "skyguard"`: an optional key shown commented out (a value after `=`, not prose)
_OPTIONAL_KEY = re.compile(r"^#\s*([a-z_][a-z0-9_]*)\s*=\s*([\"\[{\d]|true|false)")


def parse_example_config(text: str) -> ConfigDoc:
    """The example config's layout: a header comment up to the first blank line, then per key a comment block and
    `key = value` (`# key = value`: an optional key); `[table]` opens a table, its comment block describes its keys."""
    doc, table, block, in_header = ConfigDoc(), "", [], True
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            if in_header and block:
                doc.intro, block, in_header = block, [], False
            continue
        if line.startswith("[") and line.endswith("]"):
            table = line.strip("[]")
            doc.keys.append((table, "", line, block))
            block = []
        elif m := (_KEY.match(line) or _OPTIONAL_KEY.match(line)):
            setting, inline = line.lstrip("# "), ""
            if (i := setting.find(" #")) > 0 and setting.count('"', 0, i) % 2 == 0:  # a trailing comment, not a "#"
                setting, inline = setting[:i].rstrip(), setting[i + 2:].strip()
            doc.keys.append((table, m.group(1), setting, block + ([inline] if inline else [])))
            block = []
        elif line.startswith("#"):
            block.append(line[1:].strip())
    return doc


def config_page(example: Path) -> str:
    doc = parse_example_config(example.read_text())
    out = header("skyguard.toml", 5, "configuration of skyguardd")
    out += [".SH SYNOPSIS", f".B {esc(DEFAULT_CONFIG)}", ".SH DESCRIPTION"]
    out += para("The configuration of skyguardd(8), in TOML. Each key below is shown with the value the shipped file "
                "sets; a key written commented out is optional. Command-line flags of skyguardd override the file.")
    out += para("\n".join(doc.intro))
    out += [".SH KEYS"]
    for table, key, line, comment in doc.keys:
        if not key:
            out += [f'.SS "[{esc(table)}]"'] + para(" ".join(comment))
            continue
        out += [".TP", f"\\fB{esc(line)}\\fR", esc(" ".join(comment))]
    out += [".SH EXAMPLE", "The shipped file:"] + literal(example.read_text())
    out += [".SH FILES", ".TP", esc(DEFAULT_CONFIG), "this file"]
    out += [".SH SEE ALSO", "\\fBskyguardd\\fR(8), \\fBskyguard-policy\\fR(5)"]
    return "\n".join(out) + "\n"


def policy_page(prefix: str, examples: list[Path]) -> str:
    text = policy.__doc__ or ""
    _first, _, rest = text.partition("\n\n")
    fmt_head, _, rest = rest.partition("::\n")
    fmt_block, _, tail = rest.partition("\n\n")
    while tail.startswith("    ") or tail.startswith("\n"):  # a literal block with blank lines inside
        more, _, tail = tail.partition("\n\n")
        fmt_block += "\n\n" + more
    out = header("skyguard-policy", 5, "skyguard policy files")
    out += [".SH DESCRIPTION"] + para("A policy tells skyguardd(8) what to do with each class of traffic. "
                                       "It is a TOML file, named by the policy key of skyguard.toml(5).")
    out += [".SH FORMAT"] + para(fmt_head) + literal("\n".join(ln[4:] for ln in fmt_block.splitlines()))
    out += para(tail.replace("\\\\", "\\"))
    out += [".SH CLASSES", esc("Class names for [class.NAME]: " + ", ".join(wire.CLASS_NAMES) + ".")]
    out += [".SH ACTIONS", esc(", ".join(wire.ACTION_NAMES) + ".")]
    out += [".SH CHECKING AND RELOADING"] + para(
        "skyguard policy check FILE reports every refusal as file:line: reason without a daemon. "
        "systemctl reload skyguard (or skyguard policy reload, or SIGHUP) swaps the running policy atomically; a "
        "refused file changes nothing.")
    out += [".SH EXAMPLES"]
    for ex in examples:
        summary = ex.read_text().splitlines()[0].lstrip("# ")
        out += [".TP", esc(f"{prefix}/share/skyguard/policies/{ex.name}"), esc(summary)]
    out += [".SH SEE ALSO", "\\fBskyguard\\fR(8), \\fBskyguardd\\fR(8), \\fBskyguard.toml\\fR(5)"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="generate skyguard's man pages and bash completion")
    ap.add_argument("out", type=Path)
    ap.add_argument("--prefix", default="/usr", help="where the package's data lives (default /usr)")
    a = ap.parse_args()
    man, comp = a.out / "man", a.out / "completion"
    man.mkdir(parents=True, exist_ok=True)
    comp.mkdir(parents=True, exist_ok=True)
    examples = sorted((ROOT / "policies").glob("*.toml"))
    (man / "skyguard.8").write_text(skyguard_page(a.prefix))
    (man / "skyguardd.8").write_text(skyguardd_page())
    (man / "skyguard.toml.5").write_text(config_page(ROOT / "systemd" / "skyguard.toml"))
    (man / "skyguard-policy.5").write_text(policy_page(a.prefix, examples))
    (comp / "skyguard").write_text(bash_completion("skyguard", build_parser()[0]))
    (comp / "skyguardd").write_text(bash_completion("skyguardd", build_daemon_parser()))
    print(f"gendocs: wrote 4 man pages to {man} and 2 completions to {comp}")
