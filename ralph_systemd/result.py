"""What happened to a dispatch: DispatchResult and its vocabulary."""

from __future__ import annotations

import enum
import signal as _signal
from dataclasses import asdict, dataclass
from typing import Any


class Status(enum.StrEnum):
    """How a dispatch ended. Nothing ends as COMPLETED unless its session exited 0 by itself."""

    RUNNING = "running"
    COMPLETED = "completed"  # exit code 0, ended by itself
    FAILED = "failed"  # non-zero exit, or killed by a signal nobody on our side sent
    TIMEOUT = "timeout"  # the wall-clock limit (RuntimeMaxSec) fired
    IDLE_TIMEOUT = "idle-timeout"  # nothing written to the log for idle_timeout seconds
    STOPPED = "stopped"  # stopped on request (ours, an operator's `systemctl --user stop`, a signal to us)
    OOM = "oom"  # the kernel's OOM killer hit the scope (systemd Result=oom-kill)
    ERROR = "error"  # could not be launched, or could not be followed
    UNKNOWN = "unknown"  # re-attached and ended without a fact to go on (its exit code was not ours to see)


class Termination(enum.StrEnum):
    """What ended the session's main process."""

    NATURAL = "natural"  # it exited by itself, before any stop step
    EOF = "eof"  # it exited after its stdin was closed
    SIGTERM = "sigterm"  # it exited after SIGTERM
    SIGKILL = "sigkill"  # it was SIGKILLed (by systemd at the end of the grace period, or the OOM killer)
    UNKNOWN = "unknown"  # not observed (re-attached dispatch)


@dataclass(frozen=True)
class DispatchResult:
    ticket: str
    session: str
    unit: str
    status: Status
    termination_method: Termination
    exit_code: int | None  # None when killed by a signal, not launched, or not known
    signal: int | None  # the signal that killed the main process, if one did
    systemd_result: str | None  # the scope's Result= (success, timeout, oom-kill, ...), None if never created
    leftovers_killed: int  # processes still in the scope after the main process ended, stopped by us
    duration_s: float
    log_path: str | None
    invocation_id: str | None
    pid: int | None
    error: str | None = None
    warnings: tuple[str, ...] = ()  # e.g. the log's file system was full: output may have been lost

    @property
    def ok(self) -> bool:
        return self.status is Status.COMPLETED

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return _signal.Signals(self.signal).name
        except ValueError:
            return f"SIG{self.signal}"

    def exit_status_for_shell(self) -> int:
        """The documented CLI exit code: session's code, 124 timeout, 125 launch error, 143 stopped, 128+N
        signal. A stopped dispatch never exits 0, whatever its session returned (`cat` exits 0 on EOF)."""
        if self.status in (Status.TIMEOUT, Status.IDLE_TIMEOUT):
            return 124
        if self.status is Status.STOPPED:
            return 128 + _signal.SIGTERM
        if self.status is Status.ERROR:
            return 125
        if self.signal is not None:
            return 128 + self.signal
        if self.exit_code is not None:
            return self.exit_code
        return 1 if self.status is not Status.COMPLETED else 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        d["termination_method"] = str(self.termination_method)
        d["signal"] = self.signal_name
        d["duration_s"] = round(self.duration_s, 6)
        d["warnings"] = list(self.warnings)
        return d
