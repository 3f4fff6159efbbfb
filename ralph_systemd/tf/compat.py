"""tf's data types (read from tf v1.1.10's tf/ralph.py and tf/ralph_completion.py) and the pure conversions
from our DispatchResult to what tf's loop reads. No I/O here."""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from typing import Any

from ralph_systemd.result import DispatchResult as NativeResult
from ralph_systemd.result import Status

UNKNOWN_RETURN_CODE = 255  # an ended dispatch whose exit code we cannot vouch for: never 0, never None


@dataclass
class DispatchResult:
    """tf.ralph.DispatchResult: what run_ticket_dispatch returns. status is "launched" or "failed"."""

    session_id: str
    ticket_id: str
    status: str
    pid: int | None = None
    error: str | None = None
    log_path: str | None = None  # ours: the private session log
    unit: str | None = None  # ours: the scope


class DispatchCompletionStatus(enum.Enum):
    """tf.ralph_completion.DispatchCompletionStatus. Installed into tf, the backend uses tf's own enum."""

    RUNNING = "running"
    COMPLETED = "completed"
    TIMEOUT = "timeout"
    TERMINATED = "terminated"
    ERROR = "error"


@dataclass
class DispatchCompletionResult:
    """tf.ralph_completion.DispatchCompletionResult, plus `log_path` and `detail` (our full result)."""

    ticket_id: str
    session_id: str
    status: Any  # a DispatchCompletionStatus member (ours, or tf's once installed)
    return_code: int | None = None
    pid: int | None = None
    duration_ms: float = 0.0
    termination_method: str = "natural"
    error: str | None = None
    log_path: str | None = None
    detail: NativeResult | None = None


@dataclass(frozen=True)
class TfTypes:
    """The classes the backend builds its answers from: ours, or tf's own once `install()` ran (so tf's
    `completion.status == DispatchCompletionStatus.COMPLETED` compares tf's enum with tf's enum)."""

    status: Any = DispatchCompletionStatus
    completion: Any = DispatchCompletionResult
    dispatch: Any = DispatchResult

    def make_completion(self, **kw: Any) -> Any:
        fields = {f.name for f in dataclasses.fields(self.completion)}
        return self.completion(**{k: v for k, v in kw.items() if k in fields})

    def make_dispatch(self, **kw: Any) -> Any:
        fields = {f.name for f in dataclasses.fields(self.dispatch)}
        return self.dispatch(**{k: v for k, v in kw.items() if k in fields})


def build_cmd(workflow: str, ticket: str, flags: str) -> str:
    """tf's build_cmd: the prompt `<workflow> <ticket> <flags>`; ValueError for an unsafe ticket id."""
    if not re.match(r"^[a-zA-Z0-9_-]+$", ticket):
        raise ValueError(f"Invalid ticket ID format: {ticket}")
    cmd = f"{workflow} {ticket}".strip()
    return f"{cmd} {flags}".strip() if flags else cmd


def return_code(r: NativeResult) -> int | None:
    """tf's convention: the exit code, -N if killed by signal N; None for a timeout (tf gives none there) and
    for a code we cannot know."""
    if r.status in (Status.TIMEOUT, Status.IDLE_TIMEOUT):
        return None
    if r.exit_code is not None:
        return r.exit_code
    return -r.signal if r.signal is not None else None


def poll_code(r: NativeResult) -> int:
    """What poll_dispatch_status reports for a finished dispatch: 0 only for a real success."""
    if r.status is Status.COMPLETED:
        return 0
    if r.status in (Status.TIMEOUT, Status.IDLE_TIMEOUT):
        return 124
    code = return_code(r)
    if code not in (None, 0):
        assert code is not None
        return code
    return UNKNOWN_RETURN_CODE


def completion_fields(r: NativeResult) -> tuple[str, str | None]:
    """(tf's status name, error) for a finished (or running) dispatch. Only an exit code of 0 is COMPLETED."""
    if r.status is Status.COMPLETED:
        return "COMPLETED", None
    if r.status is Status.RUNNING:
        return "RUNNING", r.error
    if r.status is Status.FAILED:
        return "ERROR", (f"Process exited with code {r.exit_code}" if r.exit_code is not None
                         else f"Process killed by {r.signal_name}")
    if r.status is Status.TIMEOUT:
        return "TIMEOUT", r.error or "Timeout (wall-clock limit)"
    if r.status is Status.IDLE_TIMEOUT:
        return "TIMEOUT", r.error or "Idle timeout (no output)"
    if r.status is Status.STOPPED:
        return "TERMINATED", r.error or "Terminated on request"
    if r.status is Status.OOM:
        return "ERROR", "Killed by the kernel's OOM killer"
    if r.status is Status.UNKNOWN:
        return "ERROR", "Process ended; its exit code is unknown (not our child: re-attached)"
    return "ERROR", r.error
