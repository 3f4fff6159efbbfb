"""Dispatch: one session in its scope, as the Supervisor follows it (its state, deadlines, and result)."""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ralph_systemd.bus import UnitState, unit_path
from ralph_systemd.inotify import Inotify
from ralph_systemd.result import DispatchResult, Status, Termination
from ralph_systemd.spawn import GatedChild
from ralph_systemd.spec import DispatchSpec

if TYPE_CHECKING:
    from ralph_systemd.supervisor import Supervisor


class Dispatch:
    """One session in its scope. Get its result from Supervisor.wait(); use it as a context manager to
    make sure it is stopped (with the ladder) and released if the block raises."""

    def __init__(self, supervisor: Supervisor, *, ticket: str, session: str | None, unit: str,
                 log_path: str | None, spec: DispatchSpec | None) -> None:
        self.supervisor = supervisor
        self.spec = spec
        self.ticket = ticket
        self.session = session
        self.unit = unit
        self.path = unit_path(unit)
        self.log_path = log_path
        self.child: GatedChild | None = None
        self.pid: int | None = None
        self.invocation_id: str | None = None
        self.started = time.monotonic()
        self.attached = False  # re-attached: not our child, its exit code is not ours to see
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self.main_exited = False
        self.main_exit_step: Termination | None = None
        self.active_state: str | None = None  # as last reported by the manager's signals
        self.cgroup_dir: Path | None = None
        self.cgroup_watch: Inotify | None = None  # on the scope's cgroup.events, once the main process has exited
        self.unit_final: UnitState | None = None
        self.stop_reason: Status | None = None
        self.step = Termination.NATURAL  # how far the ladder has gone
        self.term_deadline: float | None = None
        self.idle_deadline: float | None = None
        self.recheck_deadline: float | None = None
        self.stuck_deadline: float | None = None
        self.stuck = False  # the main process outlived its scope (unkillable): see Supervisor._finish_stuck
        self.error: str | None = None
        self.leftovers = 0
        self.result: DispatchResult | None = None
        self.grace = spec.grace if spec else 0.0
        self.eof_grace = (spec.eof_grace or 0.0) if spec else 0.0
        self.idle_timeout = spec.idle_timeout if spec else None

    @property
    def done(self) -> bool:
        return self.result is not None

    def __repr__(self) -> str:
        state = self.result.status if self.result else "running"
        return f"<Dispatch {self.unit} session={self.session} pid={self.pid} {state}>"

    def __enter__(self) -> Dispatch:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.result is None:
            if et is not None:
                self.supervisor.stop(self)
            self.supervisor.wait(self)

    def _next_deadline(self) -> float | None:
        ds = [d for d in (self.term_deadline, self.idle_deadline, self.recheck_deadline, self.stuck_deadline)
              if d is not None]
        return min(ds) if ds else None
