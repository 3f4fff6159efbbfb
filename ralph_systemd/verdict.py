"""The verdict on a finished dispatch: its status and how it was terminated, from the facts we saw.

Pure logic, kept apart from the event loop so every combination can be unit-tested. The rules:
- systemd's Result=oom-kill wins: the kernel killed the scope for memory, whatever else happened.
- A stop (wall timeout, idle timeout, explicit or operator stop) decides the status only if it reached
  the session: a session that had already exited by itself is judged by its own exit status.
- Otherwise exit code 0 (and no signal) is COMPLETED; anything else is FAILED. Never success by default:
  a dispatch we re-attached to, whose exit status was not ours to see, is UNKNOWN.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from ralph_systemd.result import Status, Termination


@dataclass(frozen=True)
class Facts:
    systemd_result: str  # the scope's Result=
    stop_reason: Status | None  # why a stop was started (TIMEOUT, IDLE_TIMEOUT, STOPPED), if one was
    ladder_step_at_exit: Termination | None  # how far the ladder had gone when the main process exited
    exit_code: int | None
    exit_signal: int | None
    attached: bool  # re-attached: not our child
    stuck: bool  # the main process outlived its scope


def decide(f: Facts) -> tuple[Status, Termination]:
    stop = f.stop_reason
    if stop is not None and f.ladder_step_at_exit is Termination.NATURAL and not f.attached:
        stop = None  # the session had already ended by itself before the stop reached it
    if (f.attached or f.stuck) and stop is None:
        stop = Status.TIMEOUT if f.systemd_result == "timeout" else (Status.STOPPED if f.stuck else None)
    if f.systemd_result == "oom-kill":
        status = Status.OOM
    elif stop is not None:
        status = stop
    elif f.attached:
        status = Status.UNKNOWN
    elif f.exit_code == 0 and f.exit_signal is None:
        status = Status.COMPLETED
    else:
        status = Status.FAILED
    if f.attached:
        method = Termination.UNKNOWN
    elif f.exit_signal == signal.SIGKILL and f.ladder_step_at_exit is not Termination.NATURAL:
        method = Termination.SIGKILL  # systemd's SIGKILL at the end of the grace
    elif f.exit_signal == signal.SIGKILL and f.systemd_result in ("oom-kill", "timeout"):
        method = Termination.SIGKILL
    else:
        method = f.ladder_step_at_exit or Termination.NATURAL
    return status, method
