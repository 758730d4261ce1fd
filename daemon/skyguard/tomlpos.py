"""Line numbers for TOML keys: tomllib parses but reports no positions, and every refusal (policy or daemon config)
names file:line. One locator for both, so a key inside an inline table (`idle_timeout = { udp = -1 }`) is found the
same way wherever it is written.
"""

from __future__ import annotations

import re
import tomllib

_TOML_ERR_POS = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")


def syntax_error_position(text: str, e: tomllib.TOMLDecodeError) -> tuple[int, int | None, str]:
    """(line, column or None, message without its position) of a tomllib error. "At end of document" is the file's
    last line (a trailing newline does not start one: the unclosed thing is on the line before); a message without a
    position is line 0 (unknown)."""
    msg = str(e)
    m = _TOML_ERR_POS.search(msg)
    nlines = text.count("\n") + 1
    if not m:
        return 0, None, msg
    if m.group(1) is None:
        last = nlines - 1 if text.endswith("\n") and nlines > 1 else nlines  # lines end at "\n" only, as tomllib's
        return last, None, msg[: m.start()]
    return min(max(int(m.group(1)), 0), nlines), int(m.group(2)), msg[: m.start()]


KeyPath = tuple[str | int, ...]


class Locator:
    """Maps key paths (("class", "skype-out", "action"), ("pstn", "prefixes", 2), ...) to 1-based line numbers.

    Runs only on text tomllib already accepted, so it can be a small, forgiving scanner: tables, dotted and quoted
    keys, strings of all four kinds, arrays (element by element, across lines) and inline tables. Anything it cannot
    follow stops the scan; unknown paths fall back to their closest recorded parent, then to 0.
    """

    _BARE = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.where: dict[KeyPath, int] = {}
        self._aot: dict[KeyPath, int] = {}
        try:
            self._document()
        except (IndexError, ValueError, tomllib.TOMLDecodeError, RecursionError):
            pass  # keep what was found

    # -- public
    def line(self, path: KeyPath) -> int:
        for k in range(len(path), 0, -1):
            if path[:k] in self.where:
                return self.where[path[:k]]
        return 0

    # -- scanner
    def _lineno(self) -> int:
        return self.s.count("\n", 0, self.i) + 1

    def _record(self, path: KeyPath, line: int) -> None:
        for k in range(1, len(path) + 1):
            self.where.setdefault(path[:k], line)

    def _peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def _skip_blank(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t" or (newlines and c in "\r\n"):
                self.i += 1
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            else:
                return

    def _document(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_blank(newlines=True)
            if self.i >= len(self.s):
                return
            line = self._lineno()
            if self._peek(2) == "[[":
                self.i += 2
                path = self._key()
                self._expect("]]")
                idx = self._aot.get(path, 0)
                self._aot[path] = idx + 1
                table = path + (idx,)
                self._record(table, line)
            elif self._peek() == "[":
                self.i += 1
                table = self._key()
                self._expect("]")
                self._record(table, line)
            else:
                key = self._key()
                self._record(table + key, line)
                self._expect("=")
                self._value(table + key)

    def _expect(self, tok: str) -> None:
        self._skip_blank(newlines=False)
        if not self.s.startswith(tok, self.i):
            raise ValueError(f"expected {tok!r}")
        self.i += len(tok)

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip_blank(newlines=False)
            c = self._peek()
            if c in "\"'":
                start = self.i
                self._string()
                parts.append(tomllib.loads("k = " + self.s[start : self.i])["k"])
            else:
                m = self._BARE.match(self.s, self.i)
                if not m:
                    raise ValueError("expected a key")
                parts.append(m.group())
                self.i = m.end()
            self._skip_blank(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self.i += 1

    def _string(self) -> None:
        for quote in ('"""', "'''"):
            if self.s.startswith(quote, self.i):
                end = self.i + 3
                while True:
                    end = self.s.index(quote, end)
                    if quote == '"""' and self._escaped(end):
                        end += 1
                        continue
                    break
                # the delimiter is the last three of a run of up to five quotes (content may end with one or two)
                run = 3
                while run < 5 and end + run < len(self.s) and self.s[end + run] == quote[0]:
                    run += 1
                self.i = end + run
                return
        q = self.s[self.i]
        end = self.i + 1
        while True:
            end = self.s.index(q, end)
            if q == '"' and self._escaped(end):
                end += 1
                continue
            break
        self.i = end + 1

    def _escaped(self, pos: int) -> bool:
        n = 0
        while pos - 1 - n >= 0 and self.s[pos - 1 - n] == "\\":
            n += 1
        return n % 2 == 1

    def _value(self, path: KeyPath) -> None:
        self._skip_blank(newlines=False)
        c = self._peek()
        if c in "\"'":
            self._string()
        elif c == "[":
            self.i += 1
            idx = 0
            while True:
                self._skip_blank(newlines=True)
                if self._peek() == "]":
                    self.i += 1
                    return
                self._record(path + (idx,), self._lineno())
                self._value(path + (idx,))
                idx += 1
                self._skip_blank(newlines=True)
                if self._peek() == ",":
                    self.i += 1
        elif c == "{":
            self.i += 1
            while True:
                self._skip_blank(newlines=False)
                if self._peek() == "}":
                    self.i += 1
                    return
                line = self._lineno()
                key = self._key()
                self._record(path + key, line)
                self._expect("=")
                self._value(path + key)
                self._skip_blank(newlines=False)
                if self._peek() == ",":
                    self.i += 1
        else:
            m = re.compile(r"[^,\]}\n#]+").match(self.s, self.i)
            if not m:
                raise ValueError("expected a value")
            self.i = m.end()
