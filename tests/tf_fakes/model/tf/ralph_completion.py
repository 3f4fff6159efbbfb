"""Model of tf.ralph_completion: its types, and its own (pid-polling) functions, which must not be reached."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DispatchCompletionStatus(enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    TIMEOUT = "timeout"
    TERMINATED = "terminated"
    ERROR = "error"


@dataclass
class DispatchCompletionResult:
    ticket_id: str
    session_id: str
    status: DispatchCompletionStatus
    return_code: int | None = None
    pid: int | None = None
    duration_ms: float = 0.0
    termination_method: str = "natural"
    error: str | None = None


class TfOwnBackendCalled(AssertionError):
    pass


def poll_dispatch_status(pid: int) -> tuple[bool, int | None]:
    raise TfOwnBackendCalled("tf's own poll_dispatch_status was called")


def graceful_terminate_dispatch(pid: int, session_id: str | None = None, logger: Any = None,
                                kill_wait_ms: float = 5000.0, use_process_group: bool = True) -> tuple[bool, str]:
    raise TfOwnBackendCalled("tf's own graceful_terminate_dispatch was called")


def wait_for_dispatch_completion(dispatch_result: Any, ticket_id: str, timeout_ms: int = 0,
                                 poll_interval_ms: float = 1000.0, logger: Any = None,
                                 graceful_shutdown_ms: float = 5000.0) -> DispatchCompletionResult:
    raise TfOwnBackendCalled("tf's own wait_for_dispatch_completion was called")


def update_dispatch_tracking_status(ralph_dir: Path, ticket: str, completion_result: DispatchCompletionResult,
                                    logger: Any = None) -> None:
    completion_result.status.value  # tf reads .status.value, return_code, duration_ms, termination_method, error
