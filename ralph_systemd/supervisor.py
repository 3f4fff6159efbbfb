"""Supervisor: the public, thread-safe API over many dispatches: launch, attach, stop, wait.

Each Supervisor has one user-bus connection and one event loop in a thread of its own (engine.Engine),
which owns every fd and drives each Dispatch's transitions. So the ladder, idle detection and completion
advance on time whatever the caller does: a caller busy for minutes (Ralph merging a worktree) or stopped
with SIGSTOP still gets its ladder before systemd's SIGKILL.

The methods here are safe from any thread: they hand their work to the loop thread and wait for it
(`launch`) or for a result (`wait`, `as_completed`, ...), without polling. `handle_signals()` (main thread
only, Python's rule) routes SIGINT/SIGTERM to the loop thread through the signal module's wake-up fd, so
they are acted on at once even while the caller's thread is busy.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Literal, TypeVar

from ralph_systemd.bus import SystemdBus
from ralph_systemd.dispatch import Dispatch
from ralph_systemd.engine import Engine
from ralph_systemd.limits import preflight
from ralph_systemd.manager_features import ManagerFeatures
from ralph_systemd.unit_info import UNIT_PATTERN, resolve_unit
from ralph_systemd.result import DispatchResult, Status
from ralph_systemd.spec import DispatchSpec

T = TypeVar("T")


class Supervisor:
    """Launch, follow and stop dispatches; safe to use from any thread (see the module docstring)."""

    def __init__(self, bus: SystemdBus | None = None) -> None:
        self._cond = threading.Condition()
        self._closing = False
        self._closed = False
        self._engine = Engine(self, bus, self._cond)

    # -- lifecycle ----------------------------------------------------------------------------------------

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close(stop_running=True)

    def close(self, stop_running: bool = True) -> None:
        """Stop (ladder) and wait for every live dispatch, then drop the bus. With stop_running=False the
        dispatches keep running (bounded by their timeouts) for a later `attach()`; their results say so."""
        if self._closed or self._closing:
            return
        try:
            if stop_running:
                self.stop_all()
                self.wait_all()
        finally:
            try:
                self._call(self._engine.detach_all)
            except RuntimeError:
                pass
            self._closing = True
            self._engine.close()
            self._closed = True

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise RuntimeError("this Supervisor is closed")

    def _call(self, fn: Callable[[], T]) -> T:
        if not self._engine.in_loop_thread():
            self._check_open()
        return self._engine.call(fn)

    @property
    def features(self) -> ManagerFeatures:
        """What the user manager can do (its version decides: e.g. scopes made with PIDFDs from 255 on)."""
        self._check_open()
        return self._engine.features

    @property
    def live(self) -> list[Dispatch]:
        """Dispatches launched or attached and not finished yet."""
        return self._call(lambda: list(self._engine.live.values()) + list(self._engine.pending))

    @property
    def signals_received(self) -> list[int]:
        """The signals handle_signals() caught, in order."""
        return self._engine.signals_received

    @property
    def timer_operations(self) -> int:
        """Heap pushes and pops of the loop's timer queue so far (the loop's timer work; see timers.py)."""
        return self._engine.timers.operations

    def _wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Block (no polling) until predicate() holds; False if `timeout` seconds pass first."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate() or not self._engine.alive, timeout) and predicate()

    # -- launch -------------------------------------------------------------------------------------------

    def launch(self, spec: DispatchSpec) -> Dispatch:
        """Start spec's session in a new scope; returns once it runs there (or could not be launched).

        Launch problems (missing program or cwd, unwritable log directory, a live dispatch for the ticket, a
        bus error) give a Dispatch that is already done with status ERROR and the reason; nothing is left
        behind for them."""
        return self.launch_many([spec])[0]

    def launch_many(self, specs: Sequence[DispatchSpec]) -> list[Dispatch]:
        """Launch several at once, pipelined: the loop thread forks and asks for the next scope while the
        manager starts the earlier ones. Returns when every one runs or has failed, in the order given."""
        self._check_open()
        preflight(len(specs), len(self._engine.live) + len(self._engine.pending),
                  slices=tuple({s.slice for s in specs}))
        dispatches = [Dispatch(self._engine, self, ticket=s.ticket, session=s.session, unit=s.unit, spec=s)
                      for s in specs]
        # Handed over without waiting for an answer: the caller sleeps until the launches are done, and the
        # loop thread is not made to hand the GIL back and forth with it in between.
        self._engine.enqueue(dispatches)
        for d in reversed(dispatches):  # started in order: once the last has, the others mostly have too
            d.started_event.wait()
        return dispatches

    # -- re-attach ----------------------------------------------------------------------------------------

    def attach(self, unit_or_ticket: str, *, grace: float | None = None) -> Dispatch:
        """Follow a live `ralph-*` scope launched by another (possibly dead) supervisor.

        Ticket, session, log path and start time come from the unit. Its exit code cannot be known (the
        process was not our child): a natural end is reported as status UNKNOWN, never as success.
        """
        unit = resolve_unit(unit_or_ticket)  # a ticket: of the current directory's project
        return self._call(lambda: self._engine.attach(unit, grace))

    def attach_all(self) -> list[Dispatch]:
        """Attach to every live `ralph-*` scope of this user that this supervisor is not following."""
        def run() -> list[Dispatch]:
            out = []
            for unit in self._engine.bus.list_units([UNIT_PATTERN]):
                try:
                    out.append(self._engine.attach(unit, None))
                except LookupError:
                    continue
            return out
        return self._call(run)

    # -- stop ---------------------------------------------------------------------------------------------

    def stop(self, d: Dispatch, reason: Status = Status.STOPPED) -> None:
        """Stop one dispatch with the ladder: SIGTERM (EOF first with stdin "pipe"), then systemd's SIGKILL
        after the grace."""
        self._call(lambda: d.request_stop(reason))

    def stop_all(self, reason: Status = Status.STOPPED) -> None:
        def run() -> None:
            for d in list(self._engine.live.values()):
                d.request_stop(reason)
        self._call(run)

    def kill(self, d: Dispatch, signum: int) -> None:
        """Send signum to every process in d's scope now (e.g. SIGKILL, to end a grace period early)."""
        self._call(lambda: d.kill(signum))

    # -- waiting ------------------------------------------------------------------------------------------

    def wait(self, d: Dispatch, timeout: float | None = None) -> DispatchResult:
        """Block until d has a result; TimeoutError (d keeps running) if `timeout` seconds pass first."""
        if not d.done_event.wait(timeout):
            raise TimeoutError(f"{d.unit} still running after {timeout} s")
        assert d.result is not None
        return d.result

    def as_completed(self, dispatches: Iterable[Dispatch] | None = None,
                     timeout: float | None = None) -> Iterator[Dispatch]:
        """Yield dispatches as they finish (already finished ones first); TimeoutError when time runs out."""
        pending = list(dispatches) if dispatches is not None else self.live
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            done = [d for d in pending if d.result is not None]
            for d in done:
                pending.remove(d)
                yield d
            if not pending:
                return
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._wait_for(lambda: any(d.result is not None for d in pending), left):
                if not self._engine.alive:
                    raise RuntimeError("the supervisor's loop thread has ended (see the log for why)")
                raise TimeoutError(f"{len(pending)} dispatch(es) still running after {timeout} s")

    def wait_any(self, dispatches: Iterable[Dispatch] | None = None, timeout: float | None = None) -> list[Dispatch]:
        """The finished ones among `dispatches` once at least one is; [] if `timeout` passes first."""
        pending = list(dispatches) if dispatches is not None else self.live
        if not pending:
            return []
        self._wait_for(lambda: any(d.result is not None for d in pending), timeout)
        return [d for d in pending if d.result is not None]

    def wait_all(self, dispatches: Iterable[Dispatch] | None = None,
                 timeout: float | None = None) -> list[DispatchResult]:
        pending = list(dispatches) if dispatches is not None else self.live
        for _ in self.as_completed(pending, timeout):
            pass
        return [d.result for d in pending if d.result is not None]

    def poll(self) -> None:
        """Bring every dispatch up to date with what has happened by now (one turn of the loop, without
        blocking). Never needed for correctness: the loop thread does this by itself."""
        self._call(self._engine.turn_now)

    # -- signals to us ------------------------------------------------------------------------------------

    def handle_signals(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
                       action: Literal["stop", "detach"] = "stop") -> None:
        """On SIGINT/SIGTERM, stop every dispatch with the ladder ("stop") or leave them running for a
        later attach ("detach"); waits then return with their results and the signal is in
        `signals_received`. Call it from the main thread (Python's rule for signal handlers); the signals
        are then acted on in the loop thread at once, whatever the main thread is doing."""
        self._check_open()
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("handle_signals() must be called from the main thread (Python's rule)")
        self._engine.watch_signals(signals, action)
