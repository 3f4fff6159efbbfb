"""Reading a dispatch back from the user's journal: for `ralph-systemd logs [-f]` of a journal-mode dispatch.

What is read is what `journalctl --user` reads (the user's own journal files, SD_JOURNAL_CURRENT_USER):

* the scope's **own lines** (its processes' stdout/stderr streams, or anything they logged):
  `_SYSTEMD_USER_UNIT=<unit>` and our `_UID`, narrowed to one run with `_SYSTEMD_INVOCATION_ID`;
* optionally our **lifecycle lines** for it (`USER_UNIT=<unit>`, `SYSLOG_IDENTIFIER=ralph-systemd`,
  `RALPH_INVOCATION_ID`), marked with a "-- " prefix so they never pass for the session's output.

Following is event-driven: the journal's own fd (inotify inside libsystemd) is one source, the caller's
"the unit may have ended" fd (e.g. the user bus) is the other; see `follow`. Every message is escaped
(`text.escape`) before it is written: nothing from a session reaches a terminal raw.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from ralph_systemd.journal import IDENTIFIER, bindings, read_state
from ralph_systemd.lifecycle import Event
from ralph_systemd.text import escape


SETTLE_S = 1.0  # after the unit ended: stop once no new line came for this long (journald may still be writing)
SETTLE_MAX_S = 5.0  # ... and never wait longer than this for the tail


@dataclass(frozen=True)
class LogLine:
    """One journal entry, ready for a terminal: `text` is already escaped and holds no newline."""

    realtime_us: int
    text: str
    identifier: str
    pid: int | None
    priority: int | None
    lifecycle: bool  # one of our lifecycle lines, not the session's output

    def render(self) -> bytes:
        return (f"-- {IDENTIFIER}: {self.text}\n" if self.lifecycle else f"{self.text}\n").encode()


def to_line(entry: dict[str, Any], unit: str | None = None) -> LogLine:
    """A journal entry (as systemd.journal.Reader returns it) as a LogLine (pure).

    It is a lifecycle line when the scope did not write it: `_SYSTEMD_USER_UNIT` is set by journald from
    the sender's cgroup, so a session cannot pass its own lines off as ours.
    """
    msg = entry.get("MESSAGE", "")
    if isinstance(msg, list):  # a field given twice
        msg = msg[0] if msg else ""
    if isinstance(msg, bytes):  # not UTF-8: show what can be shown
        msg = msg.decode("utf-8", errors="replace")
    realtime_us = _realtime_us(entry.get("__REALTIME_TIMESTAMP"))
    return LogLine(
        realtime_us=realtime_us,
        text=escape(str(msg)),
        identifier=escape(str(entry.get("SYSLOG_IDENTIFIER", ""))),
        pid=_int(entry.get("_PID")),
        priority=_int(entry.get("PRIORITY")),
        lifecycle=unit is not None and entry.get("_SYSTEMD_USER_UNIT") != unit,
    )


def is_ralph_scope(unit: str) -> bool:
    """Whether journald's `_SYSTEMD_USER_UNIT` names a dispatch's scope (a sender we do not trust)."""
    return unit.startswith("ralph-") and unit.endswith(".scope")


def _realtime_us(ts: Any) -> int:
    """The reader gives a datetime; tests may give microseconds."""
    if ts is None:
        return 0
    return int(ts.timestamp() * 1_000_000) if hasattr(ts, "timestamp") else int(ts)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _reader() -> Any:
    sdj = bindings()
    if sdj is None:
        raise OSError("the systemd Python bindings (systemd-python) are not installed")
    return sdj.Reader(flags=sdj.CURRENT_USER)


class UnitJournal:
    """One dispatch's lines in the user's journal, read incrementally.

    `read()` returns the lines not returned before (the first call: all of them, or the last `lines`).
    For following, wait until `fileno()` is readable (or `timeout_s()` passed), call `process()`, then
    `read()` again. Not thread-safe (an sd_journal belongs to one thread).
    """

    def __init__(self, unit: str, *, invocation_id: str | None = None, lifecycle: bool = False,
                 since_us: int | None = None, lines: int | None = None, uid: int | None = None) -> None:
        uid = os.getuid() if uid is None else uid
        self._r = _reader()
        # The inotify watches exist from sd_journal_get_fd() on: set them up before the first read, or an
        # entry written between that read and a later get_fd() is never announced (sd_journal_get_fd(3)).
        self._fd = int(self._r.fileno())
        self._r.add_match(_SYSTEMD_USER_UNIT=unit, _UID=str(uid))
        if invocation_id:
            self._r.add_match(_SYSTEMD_INVOCATION_ID=invocation_id)
        if lifecycle:
            self._r.add_disjunction()
            self._r.add_match(USER_UNIT=unit, _UID=str(uid), SYSLOG_IDENTIFIER=IDENTIFIER)
            if invocation_id:
                self._r.add_match(RALPH_INVOCATION_ID=invocation_id)
        self._unit = unit
        self._since = since_us
        self._pending: list[dict[str, Any]] = []
        if lines is not None:
            self._r.seek_tail()
            if lines > 0 and (first := self._r.get_previous(lines)):  # the lines-th last entry, or the first
                self._pending.append(first)
        elif since_us is not None:
            self._r.seek_realtime(since_us / 1e6)
        else:
            self._r.seek_head()

    def read(self) -> list[LogLine]:
        out = []
        entries, self._pending = self._pending, []
        while entry := (entries.pop(0) if entries else self._r.get_next()):
            sender = str(entry.get("_SYSTEMD_USER_UNIT", ""))
            if sender != self._unit and is_ralph_scope(sender):
                continue  # a "lifecycle" line another session sent about this one: not ours, not its output
            line = to_line(entry, self._unit)
            if self._since is not None and line.realtime_us < self._since:
                continue
            out.append(line)
        return out

    def fileno(self) -> int:
        """The fd to wait on (readable = the journal changed; then call process())."""
        return self._fd

    def timeout_s(self) -> float | None:
        """How long a wait on fileno() may last before process() must be called anyway (None: forever)."""
        ms = int(self._r.get_timeout_ms())
        return None if ms < 0 else ms / 1000

    def process(self) -> None:
        self._r.process()

    def close(self) -> None:
        self._r.close()

    def __enter__(self) -> UnitJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_lines(lines: list[LogLine], out: BinaryIO) -> int:
    for line in lines:
        out.write(line.render())
    if lines:
        out.flush()
    return len(lines)


class LineSource(Protocol):
    """What follow() needs of a UnitJournal."""

    def read(self) -> list[LogLine]: ...
    def fileno(self) -> int: ...
    def timeout_s(self) -> float | None: ...
    def process(self) -> None: ...


def follow(uj: LineSource, out: BinaryIO, *, ended: Callable[[], bool], wake_fd: int,
           settle_s: float = SETTLE_S, settle_max_s: float = SETTLE_MAX_S) -> None:
    """Write the unit's lines as they come until it has ended, then its last lines.

    `ended()` is asked at the start and each time `wake_fd` is readable (the caller's event source for
    "the unit may have ended", e.g. the user bus with a ref on the unit; `ended` must drain it). Once it
    has ended, lines still arrive for a moment (journald reads the session's stream asynchronously and
    tells readers about new entries up to ~250 ms late), so we stop after `settle_s` without a new line,
    at most `settle_max_s` after the end.
    """
    jfd = uj.fileno()
    check = True
    end_at: float | None = None  # monotonic time of the end, once seen
    last_new = 0.0
    while True:
        if write_lines(uj.read(), out):
            last_new = time.monotonic()
        now = time.monotonic()
        if end_at is None and check:
            check = False
            if ended():
                end_at = last_new = now
        if end_at is not None:
            if now - last_new >= settle_s or now - end_at >= settle_max_s:
                return
            limit = min(last_new + settle_s, end_at + settle_max_s) - now
        else:
            limit = None
        jt = uj.timeout_s()
        timeout = jt if limit is None else (limit if jt is None else min(jt, limit))
        fds = [jfd] if end_at is not None else [jfd, wake_fd]
        ready, _, _ = select.select(fds, [], [], timeout)
        uj.process()
        if wake_fd in ready:
            check = True


def latest_output_us(unit: str, invocation_id: str | None = None, uid: int | None = None) -> int | None:
    """When the scope last wrote a line (realtime µs), or None: the journal mode's idle-timeout clock.

    In the journal output mode the private log's mtime no longer moves; this is its replacement (one
    journal open and a seek to the tail: a few ms, once per idle period). journald stamps a line when it
    reads it, so the age is at most a few hundred ms too high.
    """
    uid = os.getuid() if uid is None else uid
    r = _reader()
    try:
        r.add_match(_SYSTEMD_USER_UNIT=unit, _UID=str(uid))
        if invocation_id:
            r.add_match(_SYSTEMD_INVOCATION_ID=invocation_id)
        r.seek_tail()
        e = r.get_previous()
        return _realtime_us(e.get("__REALTIME_TIMESTAMP")) if e else None
    finally:
        r.close()


@dataclass(frozen=True)
class LaunchRecord:
    """What the `launched` line of a dispatch says: enough for `logs` to find its output."""

    unit: str
    ticket: str
    session: str
    invocation_id: str | None
    output: str  # "journal" or "file"
    log_path: str | None
    realtime_us: int

    #: The session may write before its launched line is sent (that waits for the exec report).
    EARLY_US = 2_000_000

    def open_output(self, *, lines: int | None = None, lifecycle: bool = False) -> UnitJournal:
        """The session's lines of this run: by invocation ID when the launched line has one, else from
        shortly before the launch on. OSError (its message says why) when the journal cannot be read."""
        state = read_state()
        if not state.enabled:
            raise OSError(state.reason)
        since = None if self.invocation_id else self.realtime_us - self.EARLY_US
        return UnitJournal(self.unit, invocation_id=self.invocation_id, since_us=since, lines=lines,
                           lifecycle=lifecycle)


def find_launch(ticket: str, session: str | None = None, uid: int | None = None, *,
                unit: str | None = None) -> LaunchRecord | None:
    """The newest launched line for a ticket (and session; and unit, which names the project too): where its
    output went. None if there is none.

    A line sent from inside a ralph scope is skipped: journald stamps the sender's unit, and a session
    could otherwise forge a launched line (say, naming another log file) for `logs` to follow.
    """
    uid = os.getuid() if uid is None else uid
    r = _reader()
    try:
        r.add_match(SYSLOG_IDENTIFIER=IDENTIFIER, RALPH_EVENT=str(Event.LAUNCHED), RALPH_TICKET=ticket,
                    _UID=str(uid))
        if session is not None:
            r.add_match(RALPH_SESSION=session)
        if unit is not None:
            r.add_match(USER_UNIT=unit)
        r.seek_tail()
        while e := r.get_previous():
            if not is_ralph_scope(str(e.get("_SYSTEMD_USER_UNIT", ""))):
                break
        if not e:
            return None
        return LaunchRecord(
            unit=str(e.get("USER_UNIT", "")), ticket=str(e.get("RALPH_TICKET", ticket)),
            session=str(e.get("RALPH_SESSION", "")), invocation_id=e.get("RALPH_INVOCATION_ID") or None,
            output=str(e.get("RALPH_OUTPUT", "file")), log_path=e.get("RALPH_LOG") or None,
            realtime_us=_realtime_us(e.get("__REALTIME_TIMESTAMP")))
    finally:
        r.close()


def wait_for_entry(timeout: float, **matches: str) -> bool:
    """Block until the user's journal has an entry matching all `matches` (journald stores a line a moment
    after it was sent); False after `timeout` s or when the journal cannot be read. Waits on the journal's
    own fd, no polling."""
    try:
        r = _reader()
    except OSError:
        return False
    try:
        r.fileno()  # the inotify watches exist from here on: nothing written after this goes unannounced
        r.add_match(**matches)
        r.seek_head()
        deadline = time.monotonic() + timeout
        while r.get_next() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r.wait(left)
        return True
    finally:
        r.close()
