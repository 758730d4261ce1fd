"""Bash completion generated from an argparse parser (used by tools/gendocs.py at build time).

The script is static: completing a word runs no Python, so it stays fast on a small router, and it needs no
python3-argcomplete (which would also mean a hook in the programs themselves). Tables of the parser's words, keyed by
the command path ("@" at the top, "@ flows", "@ policy check"), drive one small bash function.
"""

from __future__ import annotations

import argparse

FILE_METAVARS = {"FILE", "PATH", "CAPTURE"}
DIR_METAVARS = {"DIR"}
IFACE_METAVARS = {"IF"}


def _value_kind(a: argparse.Action) -> str:
    """What the word after this option is: a word list, @file, @dir, @iface or @any (free text)."""
    if a.choices:
        return " ".join(map(str, a.choices))
    meta = str(a.metavar or "")
    if meta in FILE_METAVARS:
        return "@file"
    if meta in DIR_METAVARS:
        return "@dir"
    if meta in IFACE_METAVARS:
        return "@iface"
    return "@any"


def _positional_kind(p: argparse.ArgumentParser) -> str:
    for a in p._actions:
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction):
            return "@file" if str(a.metavar) in FILE_METAVARS else "@any"
    return ""


def _walk(p: argparse.ArgumentParser, path: str, tables: dict[str, dict[str, str]]) -> None:
    opts: list[str] = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            tables["subs"][path] = " ".join(a.choices)
            for name, sp in a.choices.items():
                _walk(sp, f"{path} {name}", tables)
        elif a.option_strings:
            if a.help == argparse.SUPPRESS:
                continue
            opts += a.option_strings
            if a.nargs != 0:
                for o in a.option_strings:
                    tables["values"][f"{path}|{o}"] = _value_kind(a)
    tables["opts"][path] = " ".join(opts)
    if pos := _positional_kind(p):
        tables["pos"][path] = pos


def _assoc(name: str, table: dict[str, str]) -> str:
    def q(s: str) -> str:
        return "'" + s.replace("'", "'\\''") + "'"
    body = " ".join(f"[{q(k)}]={q(v)}" for k, v in sorted(table.items()))
    return f"declare -gA {name}=({body})"


_FUNCTION = r"""
_%(fn)s() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} path=@ w i kind
    # the command path so far: sub-command words, skipping options and the values they take
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [[ $w == -* ]]; then
            [[ -n ${%(t)s_values["$path|$w"]+x} ]] && ((i++))
        elif [[ " ${%(t)s_subs["$path"]} " == *" $w "* ]]; then
            path="$path $w"
        fi
    done
    kind=${%(t)s_values["$path|$prev"]-}
    if [[ -z $kind && $prev == -* && $path != @ ]]; then
        kind=${%(t)s_values["@|$prev"]-}   # a global option's value after a sub-command word
    fi
    if [[ -z $kind && $cur != -* ]]; then
        if [[ -n ${%(t)s_subs["$path"]-} ]]; then kind=${%(t)s_subs["$path"]}; else kind=${%(t)s_pos["$path"]-}; fi
    fi
    if [[ $cur == -* ]]; then
        kind=${%(t)s_opts["$path"]}
    fi
    case $kind in
        @file) compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
        @dir) compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -d -- "$cur") ;;
        @iface) mapfile -t COMPREPLY < <(compgen -W "$(ls /sys/class/net 2>/dev/null)" -- "$cur") ;;
        @any | "") COMPREPLY=() ;;
        *) mapfile -t COMPREPLY < <(compgen -W "$kind" -- "$cur") ;;
    esac
}
complete -F _%(fn)s %(prog)s
"""


def bash_completion(prog: str, parser: argparse.ArgumentParser) -> str:
    tables: dict[str, dict[str, str]] = {"subs": {}, "opts": {}, "values": {}, "pos": {}}
    _walk(parser, "@", tables)  # bash arrays refuse an empty key: "@" is the top
    t = "_" + prog.replace("-", "_")
    lines = [f"# bash completion for {prog}: generated from its argparse definitions by tools/gendocs.py",
             "# (keys: command paths, \"@\" at the top, \"@ policy check\"; values: words, @file, @dir, @iface, @any)"]
    lines += [_assoc(f"{t}_{name}", table) for name, table in tables.items()]
    return "\n".join(lines) + _FUNCTION % {"fn": t.lstrip("_"), "t": t, "prog": prog}
