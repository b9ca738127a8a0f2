"""Line numbers for the keys of a TOML document, which `tomllib` does not report.

`key_lines` scans text that `tomllib` has already accepted and maps every key
path it sees (table headers, keys, dotted and quoted keys, inline tables and
array elements) to the 1-based line where it first appears. A key path is a
tuple of table keys and 0-based array indices: the second `[[file]]` table's
`mode` is `("file", 1, "mode")`, written `file[1].mode` by `format_key`.
Because the text is known to be valid TOML the scanner does not validate it;
it only has to find where things are.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping

KeyPath = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}
_SCALAR_END = frozenset(",]}#\n")


def format_key(path: KeyPath) -> str:
    """Write a key path the way a reader would look for it: `unit[0].dropins."10-env.conf"`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        if not _BARE_KEY.fullmatch(part):
            part = '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
        text += f".{part}" if text else part
    return text


def line_of(lines: Mapping[KeyPath, int], path: KeyPath) -> int:
    """The line of `path`, else of its nearest enclosing key or table, else 1."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return 1


def key_lines(text: str) -> dict[KeyPath, int]:
    return _Scanner(text).scan()


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.newlines = [i for i, c in enumerate(text) if c == "\n"]
        self.lines: dict[KeyPath, int] = {}
        # How many tables each array of tables has so far, by its resolved path.
        self.table_counts: dict[KeyPath, int] = {}

    def line(self) -> int:
        return bisect.bisect_left(self.newlines, self.pos) + 1

    def peek(self, count: int = 1) -> str:
        return self.text[self.pos : self.pos + count]

    def record(self, path: KeyPath, line: int) -> None:
        self.lines.setdefault(path, line)

    def scan(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while True:
            self.skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return self.lines
            if self.peek(2) == "[[":
                table = self.array_table_header()
            elif self.peek() == "[":
                table = self.table_header()
            else:
                self.key_value(table)

    def table_header(self) -> KeyPath:
        line = self.line()
        self.pos += 1
        path = self.resolve(self.key(), line)
        self.skip_blank()
        self.pos += 1  # ]
        return path

    def array_table_header(self) -> KeyPath:
        line = self.line()
        self.pos += 2
        keys = self.key()
        array = (*self.resolve(keys[:-1], line), keys[-1])
        self.record(array, line)
        index = self.table_counts.get(array, 0)
        self.table_counts[array] = index + 1
        path = (*array, index)
        self.record(path, line)
        self.skip_blank()
        self.pos += 2  # ]]
        return path

    def resolve(self, keys: list[str], line: int) -> KeyPath:
        # A header naming an array of tables means its last table, as in TOML itself.
        path: KeyPath = ()
        for key in keys:
            path += (key,)
            self.record(path, line)
            count = self.table_counts.get(path)
            if count is not None:
                path += (count - 1,)
        return path

    def key_value(self, table: KeyPath) -> None:
        line = self.line()
        path = table
        for key in self.key():
            path += (key,)
            self.record(path, line)
        self.skip_blank()
        self.pos += 1  # =
        self.skip_blank()
        self.value(path)

    def key(self) -> list[str]:
        keys = []
        while True:
            self.skip_blank()
            quote = self.peek()
            if quote == '"':
                keys.append(self.basic_string())
            elif quote == "'":
                end = self.text.index("'", self.pos + 1)
                keys.append(self.text[self.pos + 1 : end])
                self.pos = end + 1
            else:
                match = _BARE_KEY.match(self.text, self.pos)
                assert match is not None, "tomllib accepted a key the scanner cannot read"
                keys.append(match.group())
                self.pos = match.end()
            self.skip_blank()
            if self.peek() != ".":
                return keys
            self.pos += 1

    def value(self, path: KeyPath) -> None:
        start = self.peek(3)
        if start in ('"""', "'''"):
            self.multiline_string(start)
        elif start[:1] == '"':
            self.basic_string()
        elif start[:1] == "'":
            self.pos = self.text.index("'", self.pos + 1) + 1
        elif start[:1] == "[":
            self.array(path)
        elif start[:1] == "{":
            self.inline_table(path)
        else:
            while self.pos < len(self.text) and self.text[self.pos] not in _SCALAR_END:
                self.pos += 1

    def array(self, path: KeyPath) -> None:
        self.pos += 1
        index = 0
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "]":
                self.pos += 1
                return
            self.record((*path, index), self.line())
            self.value((*path, index))
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.pos += 1
            index += 1

    def inline_table(self, path: KeyPath) -> None:
        self.pos += 1
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "}":
                self.pos += 1
                return
            self.key_value(path)
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.pos += 1

    def basic_string(self) -> str:
        self.pos += 1
        chars = []
        while (char := self.text[self.pos]) != '"':
            self.pos += 1
            if char != "\\":
                chars.append(char)
                continue
            escape = self.text[self.pos]
            self.pos += 1
            if escape in "uU":
                digits = 4 if escape == "u" else 8
                chars.append(chr(int(self.text[self.pos : self.pos + digits], 16)))
                self.pos += digits
            else:
                chars.append(_ESCAPES.get(escape, escape))
        self.pos += 1
        return "".join(chars)

    def multiline_string(self, delimiter: str) -> None:
        self.pos += 3
        while not self.text.startswith(delimiter, self.pos):
            self.pos += 2 if delimiter == '"""' and self.text[self.pos] == "\\" else 1
        self.pos += 3
        # Up to two quotes right before the closing delimiter belong to the string.
        for _ in range(2):
            if self.peek() == delimiter[0]:
                self.pos += 1

    def skip_blank(self, newlines: bool = False) -> None:
        blank = " \t\r\n" if newlines else " \t"
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in blank:
                self.pos += 1
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return
