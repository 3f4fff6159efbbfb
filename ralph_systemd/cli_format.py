"""Terminal-safe rendering for the CLI: escaped text, tables, "key: value" lines, a log's last line.

Everything a session or a unit supplied (argv in a Description, a log line, a ticket, a path) goes through
`safe()` before it reaches a terminal, so an ESC sequence, a carriage return or a newline in it is shown as
`\\x1b`, `\\r`, `\\n` instead of retitling the terminal, clearing it or forging a table row.
"""

from __future__ import annotations

import codecs
import os
import re
import shutil
from typing import BinaryIO, TextIO

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def safe(text: object) -> str:
    """`text` with every non-printable character (C0/C1 controls, DEL, bidi and other format characters,
    line/paragraph separators, lone surrogates) written as a visible escape; printable text unchanged."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else _escape_char(c) for c in s)


def table(headers: list[str], rows: list[list[str]], out: TextIO, *, header: bool) -> None:
    """Left-aligned columns of escaped cells; the last column is not padded (and is cut to the terminal
    width on a TTY)."""
    shown = ([headers] if header else []) + [[safe(c) for c in r] for r in rows]
    if not shown:
        return
    widths = [max(len(r[i]) for r in shown) for i in range(len(headers) - 1)]
    cols = shutil.get_terminal_size((10_000, 20)).columns if out.isatty() else None
    for r in shown:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]
        print(line[:cols] if cols else line.rstrip(), file=out)


def print_pairs(rows: list[tuple[str, str]], out: TextIO) -> None:
    """`key: value` lines, values escaped and aligned."""
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k + ':':<{width + 1}} {safe(v)}", file=out)


def last_line(path: str | None, width: int) -> str:
    """The last non-empty line the session wrote (from the log's last 4 KiB), escaped and cut to width."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in tail.split("\n") if ln.strip()]
    return safe(lines[-1] if lines else "")[:max(0, width)]


def one_line(e: BaseException | str) -> str:
    """An error message as one escaped line (for stderr)."""
    return safe(" ".join(str(e).split()))


_SGR = re.compile(r"\x1b\[[0-9;]{0,32}m")  # colours and bold: they cannot move, clear or retitle anything
_UNSAFE = re.compile(r"\x1b\[[0-9;]{0,32}m|\r(?!\n)|[^\n\t\r\x20-\x7e\xa0-\U0010ffff]|[\x7f-\x9f]|"
                     r"[\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def terminal_safe(text: str) -> str:
    """A session's output for a terminal: newlines, tabs and colours (SGR) kept, every other control
    character or sequence (ESC that moves, clears or retitles; a bare CR that overwrites a line; bidi
    overrides) escaped."""
    return _UNSAFE.sub(lambda m: m.group(0) if _SGR.fullmatch(m.group(0)) else safe(m.group(0)), text)


class TerminalSink:
    """A binary sink that writes a session's output to a terminal through terminal_safe (UTF-8, decoded
    incrementally, so a character split between two reads stays whole)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes) -> int:
        self.raw.write(terminal_safe(self._decoder.decode(data)).encode())
        return len(data)

    def flush(self) -> None:
        self.raw.flush()  # a partial character stays in the decoder until its next bytes arrive


def drop_stdout(out: TextIO) -> None:
    """The reader of stdout has gone (`... | true`): point its fd at /dev/null so later writes and the
    interpreter's final flush cannot fail ("Exception ignored ... BrokenPipeError")."""
    try:
        fd = out.fileno()
    except (OSError, ValueError, AttributeError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
