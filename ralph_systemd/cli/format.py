"""The CLI's rendering: tables, "key: value" lines, a log's last line, a session's output on a terminal.

Every cell and value goes through `text.escape` (session output through `text.terminal_safe`): see text.py.
"""

from __future__ import annotations

import codecs
import os
import shutil
from typing import BinaryIO, TextIO

from ralph_systemd.text import escape, terminal_safe


def table(headers: list[str], rows: list[list[str]], out: TextIO, *, header: bool) -> None:
    """Left-aligned columns of escaped cells; the last column is not padded (and is cut to the terminal
    width on a TTY)."""
    shown = ([headers] if header else []) + [[escape(c) for c in r] for r in rows]
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
        print(f"{k + ':':<{width + 1}} {escape(v)}", file=out)


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
    return escape(lines[-1] if lines else "")[:max(0, width)]


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
