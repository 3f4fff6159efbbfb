"""Text shown to a person or written to the journal: the one place that escapes and one-lines it.

Everything a session or a unit supplied (argv in a Description, a log line, a ticket, a path, an error
from the manager) goes through `escape()` before it reaches a terminal or the journal, so an ESC sequence,
a carriage return or a newline in it is shown as `\\x1b`, `\\r`, `\\n` instead of retitling the terminal,
clearing it, forging a table row or making journalctl show "[N blob data]". A session's *output* shown on
a terminal keeps its newlines, tabs and colours (`terminal_safe`); everything else is escaped the same way.
"""

from __future__ import annotations

import re

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SGR = re.compile(r"\x1b\[[0-9;]{0,32}m")  # colours and bold: they cannot move, clear or retitle anything
_UNSAFE_OUTPUT = re.compile(r"\x1b\[[0-9;]{0,32}m|\r(?!\n)|[^\n\t\r\x20-\x7e\xa0-\U0010ffff]|[\x7f-\x9f]|"
                            r"[\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def _escape_char(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def escape(text: object, limit: int | None = None) -> str:
    """`text` as one printable line: every character Python does not call printable (C0/C1 controls, DEL,
    bidi and other format characters, line/paragraph separators, lone surrogates) written as a visible
    escape; printable text unchanged. With `limit`, cut to that many characters, ending in "..."."""
    s = text if isinstance(text, str) else str(text)
    if not s.isprintable():
        s = "".join(c if c.isprintable() else _escape_char(c) for c in s)
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 3)] + "..."
    return s


def one_line(e: BaseException | str) -> str:
    """An error message as one escaped line (runs of whitespace, newlines included, become one space)."""
    return escape(" ".join(str(e).split()))


def terminal_safe(text: str) -> str:
    """A session's output for a terminal: newlines, tabs and colours (SGR) kept, every other control
    character or sequence (ESC that moves, clears or retitles; a bare CR that overwrites a line; bidi
    overrides) escaped."""
    return _UNSAFE_OUTPUT.sub(lambda m: m.group(0) if _SGR.fullmatch(m.group(0)) else escape(m.group(0)), text)
