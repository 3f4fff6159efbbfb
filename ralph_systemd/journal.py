"""A dispatch's lifecycle, and optionally its output, in systemd's journal, attributed to its scope unit.

Operators look at `systemctl --user status <scope>` and `journalctl --user -u <scope>`. Two kinds of lines
reach them from here:

* **Lifecycle lines** (launched, stop requested, EOF, SIGTERM, SIGKILL, leftovers, result): sent by the
  supervisor, which is *outside* the scope, over journald's native protocol with `USER_UNIT=<scope>`.
  Both tools match `USER_UNIT=` together with the sender's `_UID` (systemd 252 and later alike; the
  alternative `OBJECT_SYSTEMD_USER_UNIT=` is only honoured from uid 0 on 252), so the line shows under the
  scope although the scope did not write it. Each carries `RALPH_*` fields to filter on
  (`journalctl --user RALPH_TICKET=T-42`) and `USER_INVOCATION_ID` (what `journalctl -I` matches).
  One line each: session-provided text is escaped (`text.escape`), so a line never breaks a terminal.
* **Session output** (the journal output mode): the forked child, once inside its scope and before it
  execs, connects its stdout/stderr to journald's stream socket (`JournalOutput.connect`). journald
  attributes a stream to the cgroup of the process that connected it, so the lines are the scope's own.
  No relay process sits in between: journald is the reader of the session's pipe.

Whether the journal is usable is decided once per process (`journal_state`): journald's socket must
accept messages, and the user must be able to read their own journal (otherwise `logs` could not show
what we wrote there). When it is not, every call here is a no-op and one warning says why.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ralph_systemd.lifecycle import Event, Line
from ralph_systemd.result import Status
from ralph_systemd.text import escape


def _import_bindings() -> Any:
    """systemd's Python bindings, imported in the parent (a forked child must never import), or None."""
    try:
        from systemd import journal
    except ImportError:  # pragma: no cover - a dependency in pyproject; this is for odd installs
        return None
    return journal


_sd_journal: Any = _import_bindings()


def bindings() -> Any:
    """The `systemd.journal` module, or None when systemd-python is missing."""
    return _sd_journal

log = logging.getLogger("ralph_systemd")

IDENTIFIER = "ralph-systemd"  # SYSLOG_IDENTIFIER of the lifecycle lines
SOCKET_PATH = "/run/systemd/journal/socket"  # native protocol (the path is built into libsystemd)
STDOUT_PATH = "/run/systemd/journal/stdout"  # stream protocol

LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG = 3, 4, 5, 6, 7

MAX_ARGV_CHARS = 300  # a launched line stays readable in `systemctl status`
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


# ------------------------------------------------------------------------------------ pure formatting

#: The priority of each lifecycle line (a result's depends on its status: see priority_for).
EVENT_PRIORITY = {Event.LAUNCHED: LOG_INFO, Event.WARNING: LOG_WARNING, Event.STOP_REQUESTED: LOG_NOTICE,
                  Event.EOF: LOG_NOTICE, Event.SIGTERM: LOG_NOTICE, Event.SIGKILL: LOG_WARNING,
                  Event.LEFTOVERS: LOG_NOTICE}


def priority_for(event: str, status: str | None = None) -> int:
    """info for a launch and a completed result, notice for ladder steps, warning for SIGKILL and for
    results other than completed, err for error, oom and unknown results."""
    if event == Event.RESULT:
        if status == Status.COMPLETED:
            return LOG_INFO
        return LOG_ERR if status in (Status.ERROR, Status.OOM, Status.UNKNOWN) else LOG_WARNING
    try:
        return EVENT_PRIORITY[Event(event)]
    except ValueError:
        return LOG_INFO


def ralph_fields(event: str, fields: Mapping[str, object]) -> dict[str, str | int | None]:
    """Lower-case dispatch facts ({"ticket": "T-1", "exit_code": 3, "unit": ...}) as RALPH_* fields
    (RALPH_TICKET, RALPH_EXIT_CODE, ...) plus RALPH_EVENT; "unit" is dropped (it is USER_UNIT)."""
    out: dict[str, str | int | None] = {"RALPH_EVENT": str(event)}
    for key, value in fields.items():
        if key == "unit":
            continue
        name = "RALPH_" + re.sub(r"[^A-Z0-9_]", "_", key.upper())
        if value is None or isinstance(value, (str, int)):
            out[name] = value
        elif isinstance(value, float):
            out[name] = _num(value)
        else:
            out[name] = str(value)
    return out


def _num(x: float | None) -> str | None:
    return None if x is None else f"{x:.3f}".rstrip("0").rstrip(".")


def entry_fields(unit: str, message: str, priority: int,
                 fields: Mapping[str, str | int | None]) -> list[str]:
    """The native-protocol fields of one lifecycle line (pure; ValueError on a bad field name or priority).

    Values are escaped like the message. `RALPH_INVOCATION_ID`, when given, is mirrored as
    `USER_INVOCATION_ID` (what `journalctl -I`/`--invocation` of newer systemd matches).
    """
    if not 0 <= priority <= 7:
        raise ValueError(f"journal priority {priority} is not 0..7")
    out = [f"MESSAGE={escape(message)}", f"PRIORITY={priority}", f"SYSLOG_IDENTIFIER={IDENTIFIER}",
           f"USER_UNIT={unit}"]
    for name, value in fields.items():
        if not _FIELD_NAME.fullmatch(name) or name in _RESERVED:
            raise ValueError(f"journal field name {name!r}: use A-Z, 0-9 and _, not starting with _ or a digit")
        if value is None:
            continue
        text = escape(str(value))  # printable and valid UTF-8 (a path may hold surrogate escapes)
        out.append(f"{name}={text}")
        if name == "RALPH_INVOCATION_ID":
            out.append(f"USER_INVOCATION_ID={text}")
    return out


_RESERVED = {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "USER_UNIT", "USER_INVOCATION_ID"}


# ----------------------------------------------------------------------------- is the journal there?

@dataclass(frozen=True)
class JournalState:
    """Whether this process uses the journal; `reason` (one line) says why not."""

    enabled: bool
    reason: str | None = None


def probe() -> JournalState:
    """Check journald's sockets and that the user can read their own journal (a few ms; no message sent)."""
    if _sd_journal is None:
        return JournalState(False, "the systemd Python bindings (systemd-python) are not installed")
    for path, kind in ((SOCKET_PATH, socket.SOCK_DGRAM), (STDOUT_PATH, socket.SOCK_STREAM)):
        try:
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                return JournalState(False, f"{path} is not a socket")
        except OSError as e:
            return JournalState(False, f"no journald socket at {path} ({e.strerror}): is systemd-journald running?")
    try:  # a datagram connect() checks that someone is bound there and that we may send to it
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(SOCKET_PATH)
    except OSError as e:
        return JournalState(False, f"journald does not accept messages at {SOCKET_PATH}: {e.strerror}")
    return read_state()


def read_state() -> JournalState:
    """Can this user read their own journal (what `journalctl --user` opens)?"""
    if _sd_journal is None:
        return JournalState(False, "the systemd Python bindings (systemd-python) are not installed")
    try:
        with _sd_journal.Reader(flags=_sd_journal.CURRENT_USER) as r:
            usage = int(r.get_usage())
    except OSError as e:
        return JournalState(False, f"cannot open your journal: {e}")
    if usage <= 0:
        return JournalState(False, f"you cannot read your own journal (uid {os.getuid()}: no readable journal file "
                                   "of yours; journald keeps one per user only with SplitMode=uid, Storage other than "
                                   "none, and uids from 1000 up)")
    return JournalState(True)


_lock = threading.Lock()
_state: JournalState | None = None
_probe: Callable[[], JournalState] = probe


def journal_state() -> JournalState:
    """The process-wide decision, made on first use; when off, says why once (warning, logger ralph_systemd)."""
    global _state
    with _lock:
        if _state is None:
            _state = _probe()
            if not _state.enabled:
                log.warning("journal off: %s; dispatches run as before, with lines only in their private logs",
                            _state.reason)
        return _state


def _disable(reason: str) -> None:
    global _state
    with _lock:
        if _state is not None and not _state.enabled:
            return
        _state = JournalState(False, reason)
    log.warning("journal off: %s; dispatches run as before, with lines only in their private logs", reason)


def reset_for_tests(probe_fn: Callable[[], JournalState] = probe) -> None:
    """Forget the decision (tests only): the next use probes again, with `probe_fn`."""
    global _state, _probe
    with _lock:
        _state, _probe = None, probe_fn


# ------------------------------------------------------------------------------------ lifecycle lines

class Sender(Protocol):
    def __call__(self, *fields: str) -> None: ...


def _default_sender(*fields: str) -> None:
    assert _sd_journal is not None
    _sd_journal.sendv(*fields)


class Journal:
    """Sends lifecycle lines attributed to a unit. Thread-safe; every method is a no-op when the journal is off.

    A send never raises: a failing send turns the journal off for the process (one warning) and the
    dispatch goes on. Sends block only while journald's socket buffer is full (it is read at once
    normally); they run in the caller's thread.
    """

    def __init__(self, sender: Sender | None = None) -> None:
        self._send = sender or _default_sender

    @property
    def enabled(self) -> bool:
        return journal_state().enabled

    def event(self, unit: str, message: str, *, priority: int = LOG_INFO,
              fields: Mapping[str, str | int | None] | None = None) -> bool:
        """One line for `unit`; True if it was handed to journald."""
        lines = entry_fields(unit, message, priority, fields or {})  # bad names fail even with the journal off
        if not journal_state().enabled:
            return False
        try:
            self._send(*lines)
        except OSError as e:
            _disable(f"sending to journald failed ({e.strerror or e})")
            return False
        return True

    def lifecycle(self, unit: str, line: Line) -> bool:
        """One lifecycle line (lifecycle.py's wording): priority from the event (and a result's status),
        facts as RALPH_* fields (see ralph_fields)."""
        status = line.fields.get("status")
        return self.event(unit, line.message,
                          priority=priority_for(line.event, str(status) if status is not None else None),
                          fields=ralph_fields(line.event, line.fields))


# ---------------------------------------------------------------------------------- session output

def stream_identifier(argv0: str) -> str:
    """SYSLOG_IDENTIFIER for a session's lines: its program's name, the way systemd names a service's lines."""
    name = os.path.basename(argv0.rstrip("/")) or "session"
    name = "".join(ch if ch.isprintable() and not ch.isspace() else "_" for ch in name)
    return name[:64]


StreamFd = Callable[[str, int, int], int]


@dataclass(frozen=True)
class JournalOutput:
    """How a session's stdout/stderr go to the journal. Built in the parent; `connect()` runs in the child.

    Both streams default to one connection at LOG_INFO, the way systemd connects a service whose stdout
    and stderr both go to the journal: the lines keep the order the session wrote them in. A different
    `stderr_priority` opens a second stream (journald then orders the two streams' lines by arrival).
    """

    identifier: str
    stdout_priority: int = LOG_INFO
    stderr_priority: int = LOG_INFO
    stream_fd: StreamFd | None = None  # the C function, bound in the parent (tests pass a fake)

    def __post_init__(self) -> None:
        # Checked here, in the parent: libsystemd would otherwise log (and take locks) in the child.
        for p in (self.stdout_priority, self.stderr_priority):
            if not 0 <= p <= 7:
                raise ValueError(f"journal priority {p} is not 0..7")
        if not self.identifier or "\n" in self.identifier:
            raise ValueError(f"journal identifier {self.identifier!r}: use stream_identifier()")

    def connect(self) -> tuple[int, int]:
        """IN THE FORKED CHILD, after it is inside its scope, before exec: (stdout fd, stderr fd).

        Only system calls happen here (socket, connect, shutdown, setsockopt, write inside libsystemd; no
        import, no lock, no logging), so it is safe in a child forked from a threaded process. The fds
        are close-on-exec: dup2 them onto 1 and 2 (dup2 clears the flag). Raises OSError when journald
        cannot be reached; the child then keeps its private log file and reports the reason.
        """
        fn = self.stream_fd
        if fn is None:
            raise OSError(0, "the journal is off in this process")
        out = fn(self.identifier, self.stdout_priority, 0)
        if self.stderr_priority == self.stdout_priority:
            return out, out
        try:
            err = fn(self.identifier, self.stderr_priority, 0)
        except BaseException:
            os.close(out)
            raise
        return out, err


def journal_output(argv0: str, *, stderr_priority: int = LOG_INFO) -> JournalOutput | None:
    """In the parent, before the fork: the child's JournalOutput, or None when the journal is off."""
    if not journal_state().enabled or _sd_journal is None:
        return None
    return JournalOutput(stream_identifier(argv0), LOG_INFO, stderr_priority, _sd_journal.stream_fd)
