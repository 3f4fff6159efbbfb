"""The lines of a dispatch's life, as the product says them: the one source of their wording and fields.

A Dispatch says each step through one of these functions; the loop sends the Line to our log and to the
user's journal (journal.Journal.lifecycle), where its fields become RALPH_* fields (RALPH_EVENT,
RALPH_TICKET, RALPH_EXIT_CODE, ...) and its event decides the priority.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from ralph_systemd.result import DispatchResult, Status
from ralph_systemd.spec import DispatchSpec


class Event(enum.StrEnum):
    """RALPH_EVENT: which step of a dispatch's life a line records."""

    LAUNCHED = "launched"
    WARNING = "warning"
    STOP_REQUESTED = "stop-requested"
    EOF = "eof"
    SIGTERM = "sigterm"
    SIGKILL = "sigkill"
    LEFTOVERS = "leftovers"
    RESULT = "result"


@dataclass(frozen=True)
class Line:
    """One lifecycle line: the event, the message (escaped when sent) and the facts behind it."""

    event: Event
    message: str
    fields: Mapping[str, object] = field(default_factory=dict)


def secs(value: float | None) -> str:
    return "none" if value is None else f"{value:g} s"


def ladder_words(grace: float, eof_step: bool) -> str:
    """The ladder a stop will run: EOF only when the session's stdin is our pipe."""
    return ("EOF, then " if eof_step else "") + f"SIGTERM, then SIGKILL after {secs(grace)}"


def launched(spec: DispatchSpec, pid: int | None, log_path: str | None) -> Line:
    where = "the journal" if spec.output == "journal" else f"log {log_path}"
    return Line(Event.LAUNCHED,
                f"launched {spec.describe()} (output to {where}, stdin {spec.stdin_label}, timeout "
                f"{secs(spec.timeout)}, idle timeout {secs(spec.idle_timeout)}, grace {secs(spec.grace)})",
                {"pid": pid, "log": log_path, "output": spec.output, "stdin": spec.stdin_kind,
                 "timeout_s": spec.timeout, "idle_timeout_s": spec.idle_timeout, "grace_s": spec.grace,
                 "memory_max": spec.memory_max, "tasks_max": spec.tasks_max, "cpu_quota": spec.cpu_quota})


def warning(text: str) -> Line:
    return Line(Event.WARNING, text)


def stop_requested(reason: Status, ladder: str, *, by_manager: bool) -> Line:
    """`stop requested (timeout): ...` for our own stop; `systemd stops the scope (...)` for the manager's."""
    head = "systemd stops the scope" if by_manager else "stop requested"
    return Line(Event.STOP_REQUESTED, f"{head} ({reason}): {ladder}", {"reason": str(reason)})


def eof(eof_grace: float) -> Line:
    return Line(Event.EOF, f"stdin closed (EOF); SIGTERM in {secs(eof_grace)}")


def sigterm(pid: int | None) -> Line:
    return Line(Event.SIGTERM, f"SIGTERM to the session (pid {pid}); systemd SIGKILLs the scope at the end of "
                "the grace")


def sigkill(others: int) -> Line:
    return Line(Event.SIGKILL, f"systemd SIGKILLed the scope at the end of the grace ({others} other "
                "process(es) with it)", {"leftovers": others})


def leftovers(count: int) -> Line:
    return Line(Event.LEFTOVERS, f"main process ended; {count} process(es) left in the scope: stopping them",
                {"leftovers": count})


def result(r: DispatchResult) -> Line:
    how = (f"exit code {r.exit_code}" if r.exit_code is not None else
           f"signal {r.signal_name}" if r.signal is not None else "exit status unknown")
    return Line(Event.RESULT,
                f"{r.status} ({how}, {r.termination_method}, systemd result {r.systemd_result or '-'}, "
                f"{r.leftovers_killed} leftover(s) killed, {r.duration_s:.3f} s)" + (f": {r.error}" if r.error else ""),
                {"status": str(r.status), "exit_code": r.exit_code, "signal": r.signal_name,
                 "termination": str(r.termination_method), "systemd_result": r.systemd_result,
                 "leftovers": r.leftovers_killed, "duration_s": round(r.duration_s, 3)})
