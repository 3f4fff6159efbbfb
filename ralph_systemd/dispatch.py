"""Dispatch: one session in its scope, with its state and every transition it can make.

A Dispatch is driven by the loop that owns it (the Supervisor's engine, or a test's script): the loop
routes events to it (`on_job_removed`, `on_request_stop`, `on_unit_changed`, `on_unit_removed`, readable
fds through the callbacks it registered) and calls `on_timer(timer)` when a timer it armed is due (one
heap for the whole loop: timers.py). Every state change happens in a method here, through `_enter`, along
the table of states.py (the model is supervisord's `transition()`).

Life: STARTING (forked, scope requested, gate closed) -> RUNNING (exec'ed inside its scope) -> STOPPING
(the ladder runs) -> EXITED (the main process ended) -> DONE (`result` set). Completion = the main process
has exited (pidfd) AND the manager says the scope has ended (asked as soon as the kernel reports the cgroup
empty; its PropertiesChanged signal is the fallback). The ladder (EOF with a "pipe" stdin, SIGTERM, then
systemd's SIGKILL at the end of the grace) starts when the manager sends RequestStop (we are the scope's
Controller), or when StopUnit cannot be sent.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Protocol

from ralph_systemd import instrument
from ralph_systemd.bus import ENDED_STATES, SystemdBus, UnitExistsError, unit_path
from ralph_systemd.cgroupfs import cgroup_dir_of, cgroup_populated, procs_in, proc_state
from ralph_systemd.launch import Launch, LaunchError
from ralph_systemd import lifecycle
from ralph_systemd.journal_read import latest_output_us
from ralph_systemd.lifecycle import Line
from ralph_systemd.logs import log_space_problem
from ralph_systemd.manager_features import ManagerFeatures
from ralph_systemd.result import DispatchResult, Status, Termination
from ralph_systemd.retry import BusError
from ralph_systemd.scope import facts_from_unit
from ralph_systemd.spawn import GatedChild
from ralph_systemd.spec import STDIN_PIPE, DispatchSpec
from ralph_systemd.states import TRANSITIONS, State, Timer
from ralph_systemd.timers import TimerQueue
from ralph_systemd.verdict import Facts, decide

log = logging.getLogger("ralph_systemd")

JOB_WAIT_S = 30.0  # a scope's start job takes milliseconds; this only bounds a wedged manager
STUCK_AFTER_S = 2.0  # after the scope ended, how long our child may take to exit before we call it stuck
TIMEOUT_SLACK_S = 0.2  # a stop this close to RuntimeMaxSec is the wall timeout firing
RECHECK_S = 1.0  # how soon to look at the unit again when a read failed or a signal may have been lost


class DispatchHost(Protocol):
    """What a Dispatch needs from the loop that drives it."""

    @property
    def bus(self) -> SystemdBus: ...

    def now(self) -> float: ...

    @property
    def timers(self) -> TimerQueue:
        """The loop's one timer queue: it calls on_timer when a timer of ours is due."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...

    @property
    def features(self) -> ManagerFeatures:
        """What the user manager can do (from its version)."""

    def adopt_orphan(self, pidfd: int, pid: int) -> None:
        """Take over a pidfd of a main process that outlived its scope: reap it whenever it exits."""

    def watch_file(self, path: Path, callback: Callable[[], None]) -> int:
        """Call callback() when the file is modified; returns a handle for unwatch_file. FileNotFoundError if
        the file is gone, OSError if it cannot be watched."""

    def unwatch_file(self, handle: int) -> None: ...

    def changed(self, d: Dispatch) -> None:
        """d changed phase (running, or done): wake whoever waits on it; drop it from routing when done."""

    def lifecycle(self, d: Dispatch, line: Line) -> None:
        """One line of d's life for operators (log and journal)."""


class DispatchOwner(Protocol):
    """The public side the context manager uses (the Supervisor)."""

    def stop(self, d: Dispatch, reason: Status = Status.STOPPED) -> None: ...

    def wait(self, d: Dispatch, timeout: float | None = None) -> DispatchResult: ...


class Dispatch:
    """One session in its scope. Get its result from Supervisor.wait(); use it as a context manager to
    make sure it is stopped (with the ladder) and released if the block raises."""

    def __init__(self, host: DispatchHost, owner: DispatchOwner, *, ticket: str, session: str | None, unit: str,
                 spec: DispatchSpec | None, log_path: str | None = None, attached: bool = False) -> None:
        self._host = host
        self._owner = owner
        self.spec = spec
        self.ticket = ticket
        self.session = session
        self.unit = unit
        self.path = unit_path(unit)
        self.log_path = log_path
        self.attached = attached  # re-attached: not our child, its exit code is not ours to see
        self.state = State.STARTING
        # Set by the transitions, for callers in other threads: each wakes only the waiters that care.
        self.started_event = threading.Event()  # left STARTING (running, or done)
        self.done_event = threading.Event()  # `result` is set
        self.pid: int | None = None
        self.invocation_id: str | None = None
        self.started = host.now()
        self.result: DispatchResult | None = None
        self.grace = spec.grace if spec else 0.0
        self.eof_grace = (spec.eof_grace or 0.0) if spec else 0.0
        self.idle_timeout = spec.idle_timeout if spec else None
        self.runtime_max_s = spec.timeout if spec else None
        # the launch
        self._launch: Launch | None = None
        self._job: str | None = None
        self._exec_fd: int | None = None
        # the main process
        self.child: GatedChild | None = None
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self.main_exited = False
        self.main_exit_step: Termination | None = None
        self.stuck = False
        # the scope
        self.active_state: str | None = None  # as last reported by the manager
        self._unit_result: str | None = None  # the scope's Result, once it has ended
        self._unit_gone = False  # the unit was not found when we looked (garbage-collected)
        self._holds_ref = False
        self.cgroup_dir: Path | None = None
        self._cgroup_watch: int | None = None  # the host's watch on the scope's cgroup.events
        # the ladder
        self.stop_reason: Status | None = None
        self.step = Termination.NATURAL  # how far the ladder has gone
        self._ladder_pending = False  # RequestStop came while starting: run the ladder once it runs
        self.leftovers = 0
        self._zombie = False  # exited, status read, not reaped yet (see on_pidfd_ready)
        self.warnings: list[str] = []
        self._others_at_stop = 0  # processes besides the main one at the last ladder step
        self.error: str | None = None
        self._timers = host.timers  # every timer of this dispatch, keyed by what it is for (states.Timer)

    # -- reading ------------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.result is not None

    def __repr__(self) -> str:
        state = self.result.status if self.result else self.state.value
        return f"<Dispatch {self.unit} session={self.session} pid={self.pid} {state}>"

    def __enter__(self) -> Dispatch:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.result is None:
            if et is not None:
                self._owner.stop(self)
            self._owner.wait(self)

    def _fields(self, **extra: object) -> dict[str, object]:
        return {"ticket": self.ticket, "session": self.session, "unit": self.unit,
                "invocation_id": self.invocation_id, **extra}

    def _enter(self, state: State) -> None:
        """Move to `state`: only along the table in states.TRANSITIONS (anything else is a bug of ours)."""
        if state is self.state:
            return
        if state not in TRANSITIONS[self.state]:
            raise AssertionError(f"{self.unit}: {self.state.value} -> {state.value} is not a dispatch transition")
        self.state = state

    def _say(self, line: Line) -> None:
        self._host.lifecycle(self, Line(line.event, line.message, self._fields(**line.fields)))

    # -- launch -------------------------------------------------------------------------------------------

    def start_launch(self) -> None:
        """Create the log, fork the gated child, ask for the scope. Failures end the dispatch as ERROR with
        nothing left behind."""
        assert self.spec is not None and self.state is State.STARTING
        spec = self.spec
        self._launch = Launch(spec, self._host.bus, use_pidfds=self._host.features.scope_pidfds)
        try:
            job = self._launch.start()
        except LaunchError as e:
            self._fail(str(e))
            return
        except UnitExistsError:
            self._fail(self._unit_exists_message())
            return
        except BusError as e:
            self._fail(f"could not create scope {self.unit}: {e}")
            return
        assert self._launch.child is not None
        self.pid = self._launch.child.pid
        self.log_path = self._launch.log_path
        self._holds_ref = True
        self._job = job
        now = self._host.now()
        self._arm(Timer.START_JOB, now + JOB_WAIT_S)
        # JobRemoved can be lost across a manager re-exec, and "" means the reply was: look at the unit then.
        self._arm(Timer.RECHECK, now if not job else now + RECHECK_S)

    def on_job_removed(self, job: str, result: str) -> None:
        """The manager finished a job; ours is the scope's start job."""
        instrument.mark("dispatch.job_removed", self.unit)
        if self.state is not State.STARTING or self._launch is None or job != self._job or self._exec_fd is not None:
            return
        if result == "canceled":  # someone stopped the unit before it started (StopUnit replaced the job)
            self.stop_reason = self.stop_reason or Status.STOPPED
            self._fail("stopped before it started: its start job was cancelled by a stop")
            return
        if result != "done":
            self._fail(f"could not start scope {self.unit}: its start job ended with result {result!r}")
            return
        self._open_gate()

    def _open_gate(self) -> None:
        """The child is inside its scope: let it exec, and count it as running from now on. The exec's
        outcome arrives on a pipe moments later; a failure then ends the dispatch as ERROR, exactly as if
        the launch had failed (launch() does not wait for it: that is a millisecond off every launch)."""
        assert self._launch is not None and self._launch.child is not None and self.spec is not None
        self._disarm(Timer.RECHECK)
        self._disarm(Timer.START_JOB)
        instrument.mark("dispatch.gate_open", self.unit)
        self._exec_fd = self._launch.open_gate()
        self._host.add_reader(self._exec_fd, self._on_exec_report)
        self.child = self._launch.child
        self._enter(State.RUNNING)
        now = self._host.now()
        self.cgroup_dir = cgroup_dir_of(self.child.pid)  # the scope's cgroup: the child is in it now
        self._host.add_reader(self.child.pidfd, self.on_pidfd_ready)
        if self.idle_timeout is not None:
            self._arm(Timer.IDLE, now + self.idle_timeout)
        self._check_log_space()
        spec = self.spec
        if self.invocation_id is None and spec.output == "journal":
            # `logs` finds a journal-mode session's lines by the invocation ID on its launched line. (It is
            # usually known from the scope's PropertiesChanged by now; elsewhere it arrives later.)
            try:
                self.invocation_id = self._host.bus.invocation_id(self.unit) or None
            except BusError as e:
                log.debug("%s: InvocationID: %s", self.unit, e)
        self.started_event.set()  # launch() returns now; the operator's line below is not on its path
        time.sleep(0)  # let the woken caller take the GIL now, not at our next blocking call (~1.5 ms later)
        self._say(lifecycle.launched(spec, self.pid, self.log_path))
        self._host.changed(self)
        if self._ladder_pending:
            self._ladder_pending = False
            self._ladder_start()

    def _on_exec_report(self) -> None:
        """The exec-report pipe is readable: EOF means the program runs; anything else is why it does not."""
        if self._exec_fd is None or self._launch is None:
            return
        assert self.spec is not None
        self._host.remove_reader(self._exec_fd)
        self._exec_fd = None
        why = self._launch.exec_failure()
        instrument.mark("dispatch.exec_reported", self.unit)
        for notice in self._launch.child.notices if self._launch.child is not None else []:
            self.warnings.append(f"journal output unavailable ({notice}): the output goes to the log file "
                                 f"{self.log_path}")
            self._say(lifecycle.warning(self.warnings[-1]))
        if why is not None:
            self._fail(f"{self.spec.argv[0]!r} did not start: {why}")
            return
        self._launch.commit()
        self._launch = None

    def refuse_duplicate(self) -> None:
        """Another live dispatch of ours has this unit (the same ticket): fail before asking the manager."""
        self._fail(self._unit_exists_message())

    def _check_log_space(self) -> None:
        """A log on a full (or read-only) file system loses the session's output silently: say so, at launch
        and again at the end, in the log and in the result's warnings."""
        problem = log_space_problem(self.log_path) if self.log_path else None
        if problem is not None and problem not in self.warnings:
            self.warnings.append(problem)  # the API: d.warnings, result.warnings (the CLI prints them)
            self._say(lifecycle.warning(problem))

    def _unit_exists_message(self) -> str:
        assert self.spec is not None
        other = ""
        try:
            st = self._host.bus.unit_state(self.unit)
            facts = facts_from_unit(self.unit, st.description, st.documentation)
            if facts and facts.session:
                other = f" (session {facts.session}, {st.active_state})"
        except BusError:
            pass
        return (f"ticket {self.ticket!r} already has a live dispatch: unit {self.unit}{other}. One dispatch per "
                f"ticket: wait for it, or stop it with `ralph-systemd stop {self.ticket}`")

    # -- attach -------------------------------------------------------------------------------------------

    def adopt(self, *, invocation_id: str, grace: float, runtime_max_s: float | None, age_s: float,
              pid: int | None) -> None:
        """Follow a live scope launched by someone else (we hold a ref on it already)."""
        self._enter(State.RUNNING)
        self._holds_ref = True
        self.invocation_id = invocation_id or None
        self.grace = grace
        self.runtime_max_s = runtime_max_s
        self.started = self._host.now() - age_s
        self.main_exited = True  # nothing of ours to wait for: the unit's end is the end
        self.pid = pid

    # -- stop ---------------------------------------------------------------------------------------------

    def request_stop(self, reason: Status) -> None:
        """Stop with the ladder, through systemd: its RequestStop brings us back to on_request_stop, and
        it SIGKILLs what is left at the end of the grace. If StopUnit cannot be sent we run the ladder."""
        if self.state is State.DONE:
            return
        if self.stop_reason is None:
            self.stop_reason = reason
        self._say(lifecycle.stop_requested(self.stop_reason, self._ladder_words(), by_manager=False))
        try:
            self._host.bus.stop_unit(self.unit)
        except BusError as e:
            log.warning("%s: StopUnit failed (%s); stopping the session ourselves", self.unit, e)
            self._ladder_start()

    def on_request_stop(self) -> None:
        """The manager asks us, the scope's Controller, to stop it (RuntimeMaxSec, anyone's stop); what that
        means depends only on where the dispatch is."""
        match self.state:
            case State.DONE:
                return
            case State.EXITED:
                # The session ended by itself (its own exit status decides); this stop is for what it left in
                # the scope, whoever asked: the "leftovers" line said so already.
                self._ladder_start()
            case State.STARTING:
                self._note_stop_from_manager()
                self._ladder_pending = True  # the session is about to exec: the ladder starts the moment it has
            case State.RUNNING | State.STOPPING:
                self._note_stop_from_manager()
                self._ladder_start()

    def _note_stop_from_manager(self) -> None:
        if self.stop_reason is None:
            self.stop_reason = self._why_stopped()
            self._say(lifecycle.stop_requested(self.stop_reason, self._ladder_words(), by_manager=True))

    def _ladder_words(self) -> str:
        """The ladder this dispatch will run, for its stop line: EOF only when its stdin is our pipe."""
        eof = self.spec is not None and self.spec.stdin == STDIN_PIPE and not self.main_exited
        return lifecycle.ladder_words(self.grace, eof)

    def _why_stopped(self) -> Status:
        """A stop we did not ask for: the wall timeout if RuntimeMaxSec is due, else someone's stop."""
        if self.runtime_max_s is not None and \
                self._host.now() - self.started >= self.runtime_max_s - TIMEOUT_SLACK_S:
            return Status.TIMEOUT
        return Status.STOPPED

    def _ladder_start(self) -> None:
        """The first step of the ladder: EOF with a pipe stdin, else SIGTERM; for what a session left in its
        scope (or an attached one), SIGTERM to every process there."""
        if self.state is State.RUNNING:
            self._enter(State.STOPPING)
        if self.child is not None and not self.main_exited:
            if self.step is Termination.NATURAL:
                if self.child.stdin_w is None:  # stdin is not ours to close (null, input, a file): no EOF step
                    self._ladder_term()
                    return
                self._count_others()
                self.child.close_stdin()
                self.step = Termination.EOF
                self._arm(Timer.SIGTERM, self._host.now() + self.eof_grace)
                self._say(lifecycle.eof(self.eof_grace))
                if self.eof_grace <= 0:
                    self._ladder_term()
        else:
            self.kill(signal.SIGTERM)

    def _ladder_term(self) -> None:
        self._disarm(Timer.SIGTERM)
        if self.child is None or self.main_exited or self.step is Termination.SIGTERM:
            return
        self.step = Termination.SIGTERM
        self._count_others()
        try:
            signal.pidfd_send_signal(self.child.pidfd, signal.SIGTERM)
        except ProcessLookupError:
            return
        self._say(lifecycle.sigterm(self.pid))

    def _count_others(self) -> None:
        """How many processes besides the main one are in the scope now (at each ladder step). If the ladder
        ends in systemd's SIGKILL they die with the main process, and this count is the leftovers killed:
        once the cgroup is empty there is nothing left to count."""
        procs = procs_in(self.cgroup_dir) if self.cgroup_dir is not None else None
        if procs is not None:
            self._others_at_stop = len([p for p in procs if p != self.pid])

    def kill(self, signum: int) -> None:
        """Send signum to every process in the scope now (e.g. SIGKILL to end a grace early)."""
        try:
            self._host.bus.kill_unit(self.unit, "all", signum)
        except BusError as e:
            log.debug("KillUnit(%s, %d): %s", self.unit, signum, e)

    # -- the main process ---------------------------------------------------------------------------------

    def on_pidfd_ready(self) -> None:
        """Our child (the session's main process) has exited: read its exit status. It stays a zombie until
        the dispatch ends (close() reaps it): journald attributes a stream to a unit by reading the writer's
        /proc/PID when it handles its lines, which fails for a process already reaped."""
        if self.child is None or self.pid is None or self.main_exited:
            return
        if self._exec_fd is not None:
            self._on_exec_report()  # the child has exited, so its report is complete: read it first
            if self.done:
                return
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
        else:
            if info is None:
                return  # spurious wake-up
        self._host.remove_reader(self.child.pidfd)
        self.child.close_all()
        self.main_exited = True
        self._enter(State.EXITED)
        instrument.mark("dispatch.main_exited", self.unit)
        self._zombie = info is not None
        self.main_exit_step = self.step
        if info is not None:
            if info.si_code == os.CLD_EXITED:
                self.exit_code = info.si_status
            else:  # CLD_KILLED or CLD_DUMPED
                self.exit_signal = info.si_status
        self._disarm(Timer.SIGTERM)
        self._disarm(Timer.IDLE)
        if self.exit_signal == signal.SIGKILL and self.step is not Termination.NATURAL:
            self.leftovers = max(self.leftovers, self._others_at_stop)
            self._say(lifecycle.sigkill(self._others_at_stop))
        self._after_main_exit()

    def _after_main_exit(self) -> None:
        """Session exit is authoritative: whatever is left in its scope is counted and stopped."""
        if self.active_state in ENDED_STATES:
            self._read_outcome()
            return
        if not self._watch_cgroup_empty():
            self._read_outcome()  # empty or gone already: the manager's state is (about to be) final
            if self.state is State.DONE:
                return
        procs = procs_in(self.cgroup_dir) if self.cgroup_dir is not None else None
        if procs is None:
            try:
                procs = self._host.bus.unit_processes(self.unit)
            except BusError as e:
                self._recheck_soon(e)
                return
        if procs:
            self.leftovers = max(self.leftovers, len(procs))
            self._say(lifecycle.leftovers(len(procs)))
            self.kill(signal.SIGTERM)
            try:
                self._host.bus.stop_unit(self.unit)  # systemd SIGKILLs what ignores SIGTERM after the grace
            except BusError as e:
                log.warning("%s: StopUnit: %s", self.unit, e)
        # The unit's end arrives as a signal; look again after the grace in case it was lost.
        self._arm(Timer.RECHECK, self._host.now() + self.grace + RECHECK_S)

    def _watch_cgroup_empty(self) -> bool:
        """Watch the scope's cgroup.events: the kernel notifies `populated 0` when its last process is gone,
        several ms before the manager's PropertiesChanged reaches us. False if the cgroup is empty or gone
        already (then ask the manager now)."""
        if self._cgroup_watch is not None or self.cgroup_dir is None:
            return True
        events = self.cgroup_dir / "cgroup.events"
        try:
            self._cgroup_watch = self._host.watch_file(events, self.on_cgroup_event)
        except FileNotFoundError:
            return False
        except OSError as e:  # e.g. out of inotify watches: the manager's signal still tells us
            log.debug("%s: no inotify watch on %s (%s)", self.unit, events, e)
            return True
        return cgroup_populated(events)  # it may have emptied before the watch existed

    def on_cgroup_event(self) -> None:
        if self._cgroup_watch is None or self.cgroup_dir is None or self.state is State.DONE:
            return
        if self.main_exited and not cgroup_populated(self.cgroup_dir / "cgroup.events"):
            self._read_outcome()  # usually final already; if not, its signal finishes the dispatch

    # -- the scope ----------------------------------------------------------------------------------------

    def on_unit_changed(self, changes: Mapping[str, object]) -> None:
        """PropertiesChanged: the signal carries the new values, so no round trip unless the unit ended."""
        inv = changes.get("InvocationID")
        if isinstance(inv, str) and inv:
            self.invocation_id = inv
        state = changes.get("ActiveState")
        if not isinstance(state, str):
            return
        self.active_state = state
        if self.state is State.STARTING:
            if state == "active" and self._exec_fd is None and self._launch is not None:
                self._open_gate()  # in case its JobRemoved is lost
            return
        if state in ENDED_STATES:
            if self.main_exited:
                self._read_outcome()
            else:
                self._watch_for_stuck()

    def resync(self) -> None:
        """Signals may have been lost (the bus was down): look at the unit again now."""
        if self.state is not State.DONE:
            self._arm(Timer.RECHECK, self._host.now())

    def on_unit_removed(self) -> None:
        self._check_unit()

    def _read_outcome(self) -> None:
        """The scope has ended (as far as we know) and our child is reaped: read its state and Result (small
        calls) and finish; if the manager has not got there yet, its signal brings us back."""
        try:
            active, result, invocation_id = self._host.bus.unit_outcome(self.unit)
        except BusError:
            self._check_unit()  # fall back to a full snapshot (and its retries)
            return
        self.active_state = active
        self.invocation_id = self.invocation_id or invocation_id or None
        if active in ENDED_STATES:
            self._unit_result = result
            self._maybe_finish()

    def _check_unit(self) -> None:
        """A full snapshot: covers signals lost across a reconnect or a manager re-exec."""
        try:
            st = self._host.bus.unit_state(self.unit)
        except BusError as e:
            self._recheck_soon(e)
            return
        if self.invocation_id is None and st.invocation_id:
            self.invocation_id = st.invocation_id
        self.active_state = st.active_state
        if self.state is State.STARTING:
            if st.active_state == "active" or (st.exists and st.active_state == "deactivating"):
                if self._exec_fd is None and self._launch is not None:
                    self._open_gate()
            elif st.ended and st.exists:
                if st.active_state == "inactive" and st.result == "success":  # stopped before its start ran
                    self.stop_reason = self.stop_reason or Status.STOPPED
                    self._fail("stopped before it started: the unit was stopped while its start job was queued")
                else:
                    self._fail(f"could not start scope {self.unit}: it is {st.active_state} ({st.result})")
            else:
                self._arm(Timer.RECHECK, self._host.now() + RECHECK_S)
            return
        if st.ended or not st.exists:
            self._unit_result = st.result
            self._unit_gone = not st.exists
            if not self.main_exited:
                self._watch_for_stuck()
            self._maybe_finish()

    def _recheck_soon(self, e: BusError) -> None:
        log.warning("%s: cannot read its state (%s); will re-check", self.unit, e)
        self._arm(Timer.RECHECK, self._host.now() + RECHECK_S)

    def _watch_for_stuck(self) -> None:
        """The scope ended but our child has not exited: normally its exit is microseconds away. If it is
        still there STUCK_AFTER_S later it survived systemd's SIGKILL (uninterruptible sleep)."""
        if self._timers.deadline(self, Timer.STUCK) is None and not self.attached:
            self._arm(Timer.STUCK, self._host.now() + STUCK_AFTER_S)

    def _finish_stuck(self) -> None:
        if self.main_exited or self.child is None or self.pid is None:
            return
        state = proc_state(self.pid)
        if state is None:
            return  # it has exited after all: the pidfd reports it
        if self._unit_result is None:
            self._check_unit()
        self.stuck = True
        pidfd, self.child.pidfd = self.child.pidfd, -1
        self._host.remove_reader(pidfd)
        self._host.adopt_orphan(pidfd, self.pid)  # reaped whenever it finally exits
        self.main_exited, self.main_exit_step = True, Termination.UNKNOWN
        self._enter(State.EXITED)
        self.error = (f"main process {self.pid} is still alive (state {state}) although its scope ended: it "
                      "survived SIGKILL, so it is in uninterruptible sleep (a hung NFS/FUSE/device call); only the "
                      "kernel call returning can end it. Reported as stuck; it is reaped if it ever exits")
        log.error("%s: %s", self.unit, self.error)
        self._maybe_finish()

    # -- timers -------------------------------------------------------------------------------------------

    def _arm(self, timer: Timer, when: float) -> None:
        self._timers.arm(self, timer, when)

    def _disarm(self, timer: Timer) -> None:
        self._timers.disarm(self, timer)

    def deadline(self, timer: Timer) -> float | None:
        """When `timer` fires (monotonic seconds), or None if it is not armed."""
        return self._timers.deadline(self, timer)

    def on_timer(self, timer: Timer, now: float) -> None:
        """A timer of ours is due: each kind does one thing (see states.Timer)."""
        if self.state is State.DONE:
            return
        match timer:
            case Timer.START_JOB:
                self._fail(f"the start job of {self.unit} did not finish in {JOB_WAIT_S:.0f} s")
            case Timer.SIGTERM:
                self._ladder_term()
            case Timer.IDLE:
                self._check_idle(now)
            case Timer.STUCK:
                self._finish_stuck()
            case Timer.RECHECK:
                self._check_unit()
                if self.main_exited and not self.attached and not self.done:
                    self._after_main_exit()

    def _check_idle(self, now: float) -> None:
        """Idle = nothing written to the log for idle_timeout s. We sleep until the earliest moment that
        could be true, look at the log's mtime once, and either stop or sleep until the new earliest moment:
        no wake-ups while the session writes, no fixed-interval polling."""
        assert self.idle_timeout is not None
        mtime_age = self._output_age()
        if mtime_age is None:
            mtime_age = now - self.started
        last_activity_age = min(mtime_age, now - self.started)
        if last_activity_age >= self.idle_timeout:
            self.request_stop(Status.IDLE_TIMEOUT)
        else:
            self._arm(Timer.IDLE, now + (self.idle_timeout - last_activity_age))

    def _output_age(self) -> float | None:
        """Seconds since the session last wrote anything: its log file's mtime, or in the journal output mode
        its last journal line (whichever is newer: the file takes over if the journal stream failed)."""
        ages = []
        try:
            ages.append(max(0.0, time.time() - os.stat(self.log_path or "").st_mtime))
        except OSError:
            pass
        if self.spec is not None and self.spec.output == "journal":
            try:
                last_us = latest_output_us(self.unit, self.invocation_id)
            except OSError as e:  # the journal cannot be read: the file (and the start time) decide
                log.debug("%s: reading the journal: %s", self.unit, e)
                last_us = None
            if last_us is not None:
                ages.append(max(0.0, time.time() - last_us / 1e6))
        return min(ages) if ages else None

    # -- the end ------------------------------------------------------------------------------------------

    def _maybe_finish(self) -> None:
        if self.state is State.DONE or not self.main_exited or self._unit_result is None:
            return
        sysres = "success" if self._unit_gone else self._unit_result
        status, method = decide(Facts(
            systemd_result=sysres, stop_reason=self.stop_reason, ladder_step_at_exit=self.main_exit_step,
            exit_code=self.exit_code, exit_signal=self.exit_signal, attached=self.attached, stuck=self.stuck))
        self._end(self._result(status, method, systemd_result=None if self._unit_gone and self.attached else sysres))

    def _result(self, status: Status, method: Termination, *, systemd_result: str | None) -> DispatchResult:
        """The one place a DispatchResult is built."""
        return DispatchResult(
            ticket=self.ticket, session=self.session or "", unit=self.unit, status=status,
            termination_method=method, exit_code=self.exit_code, signal=self.exit_signal,
            systemd_result=systemd_result, leftovers_killed=self.leftovers,
            duration_s=self._host.now() - self.started, log_path=self.log_path,
            invocation_id=self.invocation_id, pid=self.pid, error=self.error)

    def _fail(self, error: str) -> None:
        """The launch failed: undo it (nothing is left behind) and end as ERROR (or as the stop that
        cancelled it)."""
        self.close()  # undoes the launch: the unit's ref, the child, the log file
        self.log_path = None  # removed with the rest of the launch
        self.error = error
        status = self.stop_reason if self.stop_reason is not None else Status.ERROR
        self._end(self._result(status, Termination.NATURAL, systemd_result=None))

    def _end(self, result: DispatchResult) -> None:
        if result.status is not Status.ERROR:
            self._check_log_space()
            result = dataclasses.replace(result, warnings=tuple(self.warnings))
        self.result = result
        self._enter(State.DONE)
        instrument.mark("dispatch.end", self.unit)
        self.close()
        if self._holds_ref:
            self._holds_ref = False
            try:
                self._host.bus.unref_unit(self.unit)
            except BusError as e:
                log.warning("could not release %s: %s", self.unit, e)
        if result.status is not Status.RUNNING:
            self._say(lifecycle.result(result))
        self.started_event.set()
        self.done_event.set()
        self._host.changed(self)

    def detach(self) -> None:
        """Leave the session running (bounded by its timeout) for a later attach; free what we hold."""
        if self.state is State.DONE:
            return
        if self.state is State.STARTING:
            self._fail("detached before it started")
            return
        self._on_exec_report()  # the gate is open: its report is a moment away; a failure ends it here
        if self.done:
            return
        self.error = "detached: still running; attach to it later"
        self._holds_ref = False  # the ref goes with our bus connection; the unit stays while it runs
        self._end(self._result(Status.RUNNING, Termination.UNKNOWN, systemd_result=None))

    def close(self) -> None:
        """Free every fd this dispatch holds (the only place they are freed); safe to call more than once.
        A launch that is not complete (its exec unconfirmed) is undone: child killed, unit released, log
        removed."""
        for fd in (self._exec_fd, self.child.pidfd if self.child is not None else -1):
            if fd is not None and fd >= 0:
                self._host.remove_reader(fd)
        if self._cgroup_watch is not None:
            self._host.unwatch_file(self._cgroup_watch)
            self._cgroup_watch = None
        self._exec_fd = None
        if self._launch is not None:
            self._launch.abort()
            self._launch = None
            self._holds_ref = False
        if self.child is not None:
            self.child.close_all()
        if self._zombie and self.pid is not None:
            self._zombie = False
            try:
                os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pass
        self._timers.disarm_all(self)

