"""Supervisor: many dispatches over one user-bus connection and one event loop, no polling.

The loop waits (selectors) on the bus fd, one pidfd per child, an inotify watch on a finishing scope's
cgroup.events and a signal wake-up fd, with a timeout equal to the nearest ladder/idle deadline.
Completion = our child (the session's main process) has exited (pidfd, reaped at once) AND the manager
says the scope has ended (asked as soon as the kernel reports the cgroup empty; its PropertiesChanged
signal is the fallback). When the main process ends and others remain in the scope, they are counted
and stopped.

Threading contract: a Supervisor belongs to the thread that made it (pystemd's sd-bus connection is not
thread-safe). Calls from another thread raise RuntimeError. Use one Supervisor per thread if you must.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import selectors
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal

from ralph_systemd.cgroupfs import cgroup_dir_of, procs_in
from ralph_systemd.dispatch import Dispatch
from ralph_systemd.inotify import IN_MODIFY, Inotify
from ralph_systemd.bus import BusEvent, PystemdUserBus, SystemdBus, UnitExistsError, UnitState
from ralph_systemd.logs import open_session_log
from ralph_systemd.naming import UNIT_PREFIX, UNIT_SUFFIX, unit_name_for_ticket
from ralph_systemd.result import DispatchResult, Status, Termination
from ralph_systemd.retry import BusError
from ralph_systemd.scope import facts_from_unit, scope_properties
from ralph_systemd.spawn import ExecError, fork_gated, resolve_executable
from ralph_systemd.spec import DispatchSpec
from ralph_systemd.verdict import Facts, decide

log = logging.getLogger("ralph_systemd")

JOB_WAIT_S = 30.0  # a scope's start job takes milliseconds; this only bounds a wedged manager
STUCK_AFTER_S = 2.0  # after the scope ended, how long our child may take to exit before we call it stuck
TIMEOUT_SLACK_US = 200_000  # a stop this close to RuntimeMaxSec is the wall timeout firing
FDS_PER_DISPATCH = 2  # a running dispatch holds its pidfd and the write end of its stdin pipe
FD_HEADROOM = 64  # the launch itself (log, gate and error pipes), the bus, and the caller's own files


def _proc_state(pid: int) -> str | None:
    """The process state letter (R, S, D, Z, ...) from /proc, or None if it is gone or a zombie."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return None if state in ("Z", "X") else state


def _cgroup_populated(events: Path) -> bool:
    """False once the cgroup has no process left (or is gone)."""
    try:
        return "populated 1" in events.read_text()
    except OSError:
        return False


def _monotonic_us() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Supervisor:
    """Launch, follow and stop dispatches. See the module docstring for the threading contract."""

    def __init__(self, bus: SystemdBus | None = None) -> None:
        self._owner = threading.get_ident()
        self.bus: SystemdBus = bus if bus is not None else PystemdUserBus()
        self._selector = selectors.DefaultSelector()
        self._bus_fd = -1
        self._bus_failures = 0  # drains failed in a row (the bus is down while > 0)
        self._bus_retry_at: float | None = None  # when to try the bus again while it is down
        self._register_bus()
        self._live: dict[str, Dispatch] = {}  # by unit object path
        self._jobs: dict[str, str] = {}  # finished job path -> result
        self._orphans: dict[int, int] = {}  # pidfd -> pid of stuck children reported already, reaped on exit
        self._closed = False
        self._signal_r: int | None = None
        self.signals_received: list[int] = []

    # -- lifecycle ----------------------------------------------------------------------------------------

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close(stop_running=True)

    def close(self, stop_running: bool = True) -> None:
        """Stop (ladder) and wait for every live dispatch, then drop the bus. With stop_running=False the
        dispatches keep running (bounded by their timeouts) for a later `attach()`."""
        if self._closed:
            return
        try:
            if stop_running and self._live:
                self.stop_all()
                self.wait_all()
        finally:
            for d in list(self._live.values()):
                if d.child is not None:
                    d.child.close_all()
                if d.cgroup_watch is not None:
                    d.cgroup_watch.close()
            for pidfd in self._orphans:
                os.close(pidfd)
            if self._signal_r is not None:  # handle_signals() was used: undo its wake-up fd
                if signal.set_wakeup_fd(-1) != self._signal_w:
                    signal.set_wakeup_fd(self._signal_w)  # it was not ours any more: leave it as it was
                else:
                    os.close(self._signal_r)
                    os.close(self._signal_w)
                    self._signal_r = None
            self._selector.close()
            self.bus.close()
            self._closed = True

    def _check_thread(self) -> None:
        if threading.get_ident() != self._owner:
            raise RuntimeError("a Supervisor can only be used from the thread that created it "
                               "(its D-Bus connection is not thread-safe); create one per thread")
        if self._closed:
            raise RuntimeError("this Supervisor is closed")

    def _register_bus(self) -> None:
        fd = self.bus.fileno()
        if fd == self._bus_fd:
            return
        if self._bus_fd >= 0:
            try:
                self._selector.unregister(self._bus_fd)
            except (KeyError, ValueError):
                pass
        self._selector.register(fd, selectors.EVENT_READ, "bus")
        self._bus_fd = fd

    @property
    def live(self) -> list[Dispatch]:
        return list(self._live.values())

    # -- launch ---------------------------------------------------------------------------------------------

    def launch(self, spec: DispatchSpec) -> Dispatch:
        """Start spec's session in a new scope. Launch problems (missing program or cwd, unwritable log
        directory, a live dispatch for the ticket, a bus error) give a Dispatch that is already done with
        status ERROR and the reason; nothing is left behind for them."""
        self._check_thread()
        self._ensure_fd_headroom()
        d = Dispatch(self, ticket=spec.ticket, session=spec.session, unit=spec.unit, log_path=None, spec=spec)
        env = spec.environment
        cwd = os.fspath(spec.cwd)
        try:
            if not os.path.isdir(cwd):
                raise ValueError(f"working directory {cwd} does not exist (or is not a directory)")
            exe = resolve_executable(spec.argv[0], env.get("PATH"), cwd)
            assert spec.session is not None
            log_fd, log_path = open_session_log(spec.log_directory, spec.ticket, spec.session)
        except ValueError as e:
            return self._fail(d, str(e))
        d.log_path = str(log_path)
        try:
            child = fork_gated(exe, tuple(spec.argv), cwd, env, log_fd)
        except OSError as e:
            return self._fail(d, f"could not start {spec.argv[0]!r}: {e}")
        finally:
            os.close(log_fd)
        d.child, d.pid = child, child.pid
        try:
            job = self.bus.start_transient_scope(
                spec.unit, scope_properties(spec, child.pid, self.bus.unique_name, d.log_path))
        except UnitExistsError:
            child.abort()
            return self._fail(d, self._unit_exists_message(spec))
        except BusError as e:
            child.abort()
            return self._fail(d, f"could not create scope {spec.unit}: {e}")
        except BaseException:
            child.abort()
            raise
        try:
            result = self._wait_job(job, spec.unit)
            if result != "done":
                raise BusError(f"the start job of {spec.unit} ended with result {result!r}")
            child.release()
        except (BusError, ExecError) as e:
            child.abort()
            self._release_unit(spec.unit)
            return self._fail(d, f"{spec.argv[0]!r} did not start: {e}" if isinstance(e, ExecError)
                              else f"could not start scope {spec.unit}: {e}")
        except BaseException:
            child.abort()
            self._release_unit(spec.unit)
            raise
        d.started = time.monotonic()
        d.cgroup_dir = cgroup_dir_of(child.pid)  # the scope's cgroup: the child is in it now
        self._live[d.path] = d
        self._selector.register(child.pidfd, selectors.EVENT_READ, d)
        if d.idle_timeout is not None:
            d.idle_deadline = d.started + d.idle_timeout
        return d

    def _ensure_fd_headroom(self) -> None:
        """Raise the soft RLIMIT_NOFILE to the hard limit when one more dispatch might not fit (the
        default soft limit of 1024 holds ~480 dispatches); epoll has no FD_SETSIZE limit."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = FDS_PER_DISPATCH * (len(self._live) + 1) + FD_HEADROOM
        if soft == resource.RLIM_INFINITY or need <= soft or soft == hard:
            return
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("raised the soft limit on open files from %d to %s for %d live dispatches", soft,
                 "unlimited" if hard == resource.RLIM_INFINITY else hard, len(self._live))

    def _unit_exists_message(self, spec: DispatchSpec) -> str:
        other = ""
        try:
            st = self.bus.unit_state(spec.unit)
            facts = facts_from_unit(spec.unit, st.description, st.documentation)
            if facts and facts.session:
                other = f" (session {facts.session}, {st.active_state})"
        except BusError:
            pass
        return (f"ticket {spec.ticket!r} already has a live dispatch: unit {spec.unit}{other}. One dispatch per "
                f"ticket: wait for it, or stop it with `ralph-systemd stop {spec.ticket}`")

    def _wait_job(self, job: str, unit: str) -> str:
        deadline = time.monotonic() + JOB_WAIT_S
        last_check = time.monotonic() if job else 0.0  # "" = job unknown (its reply was lost): look now
        while job not in self._jobs:
            now = time.monotonic()
            if now >= deadline:
                raise BusError(f"the start job of {unit} did not finish in {JOB_WAIT_S:.0f} s")
            if now - last_check > 1.0:
                # JobRemoved can be lost across a manager re-exec: look at the unit itself.
                last_check = now
                st = self.bus.unit_state(unit)
                if st.active_state == "active":
                    return "done"
                if st.ended:
                    return "failed"
            self._step(min(deadline, now + 1.0))
        return self._jobs.pop(job)

    def _fail(self, d: Dispatch, error: str) -> Dispatch:
        d.result = DispatchResult(
            ticket=d.ticket, session=d.session or "", unit=d.unit, status=Status.ERROR,
            termination_method=Termination.NATURAL if d.pid is None else Termination.SIGKILL,
            exit_code=None, signal=None, systemd_result=None, leftovers_killed=0,
            duration_s=time.monotonic() - d.started, log_path=d.log_path, invocation_id=None, pid=None,
            error=error)
        return d

    def _release_unit(self, unit: str) -> None:
        try:
            self.bus.unref_unit(unit)
        except BusError as e:
            log.warning("could not release %s: %s", unit, e)

    # -- re-attach --------------------------------------------------------------------------------------------

    def attach(self, unit_or_ticket: str, *, grace: float | None = None) -> Dispatch:
        """Follow a live `ralph-*` scope launched by another (possibly dead) supervisor.

        Ticket, session, log path and start time come from the unit. Its exit code cannot be known (the
        process was not our child): a natural end is reported as status UNKNOWN, never as success.
        """
        self._check_thread()
        unit = unit_or_ticket if (unit_or_ticket.startswith(UNIT_PREFIX) and unit_or_ticket.endswith(UNIT_SUFFIX)) \
            else unit_name_for_ticket(unit_or_ticket)
        for d in self._live.values():
            if d.unit == unit:
                return d
        self.bus.ref_unit(unit)
        st = self.bus.unit_state(unit)
        facts = facts_from_unit(unit, st.description, st.documentation)
        if not st.exists or st.ended or facts is None:
            self._release_unit(unit)
            raise LookupError(f"no live dispatch {unit} to attach to ({st.load_state}/{st.active_state})")
        d = Dispatch(self, ticket=facts.ticket, session=facts.session, unit=unit, log_path=facts.log_path, spec=None)
        d.attached = True
        d.invocation_id = st.invocation_id
        d.grace = grace if grace is not None else st.timeout_stop_us / 1e6
        age = max(0.0, (_monotonic_us() - st.active_enter_monotonic_us) / 1e6)
        d.started = time.monotonic() - age
        d.main_exited = True  # nothing of ours to wait for: the unit's end is the end
        procs = self.bus.unit_processes(unit)
        d.pid = procs[0] if procs else None
        self._live[d.path] = d
        return d

    def attach_all(self) -> list[Dispatch]:
        """Attach to every live `ralph-*` scope of this user that this supervisor is not following."""
        out = []
        for unit in self.bus.list_units([f"{UNIT_PREFIX}*{UNIT_SUFFIX}"]):
            try:
                out.append(self.attach(unit))
            except LookupError:
                continue
        return out

    # -- stop -------------------------------------------------------------------------------------------------

    def stop(self, d: Dispatch, reason: Status = Status.STOPPED) -> None:
        """Stop one dispatch with the ladder: EOF, SIGTERM, then systemd's SIGKILL after the grace."""
        self._check_thread()
        if d.result is not None:
            return
        if d.stop_reason is None:
            d.stop_reason = reason
        try:
            self.bus.stop_unit(d.unit)
        except BusError as e:
            log.warning("StopUnit(%s) failed: %s; stopping the session ourselves", d.unit, e)
            self._ladder_start(d)

    def stop_all(self, reason: Status = Status.STOPPED) -> None:
        for d in list(self._live.values()):
            self.stop(d, reason)

    def _ladder_start(self, d: Dispatch) -> None:
        """Our answer to RequestStop (systemd's stop, by timeout or by anyone): EOF first."""
        now = time.monotonic()
        if d.child is not None and not d.main_exited:
            if d.step is Termination.NATURAL:
                d.child.close_stdin()
                d.step = Termination.EOF
                d.term_deadline = now + d.eof_grace
                log.info("%s: stdin closed (EOF); SIGTERM in %.1f s", d.unit, d.eof_grace)
                if d.eof_grace <= 0:
                    self._ladder_term(d)
        else:
            self._kill_all(d, signal.SIGTERM)

    def _ladder_term(self, d: Dispatch) -> None:
        d.term_deadline = None
        if d.child is None or d.main_exited or d.step is Termination.SIGTERM:
            return
        d.step = Termination.SIGTERM
        try:
            signal.pidfd_send_signal(d.child.pidfd, signal.SIGTERM)
            log.info("%s: SIGTERM to the session (pid %s); systemd SIGKILLs the cgroup at the end of the grace",
                     d.unit, d.pid)
        except ProcessLookupError:
            pass

    def _kill_all(self, d: Dispatch, signum: int) -> None:
        try:
            self.bus.kill_unit(d.unit, "all", signum)
        except BusError as e:
            log.debug("KillUnit(%s): %s", d.unit, e)

    # -- waiting ----------------------------------------------------------------------------------------------

    def wait(self, d: Dispatch, timeout: float | None = None) -> DispatchResult:
        """Block until d has a result; TimeoutError (d keeps running) if `timeout` seconds pass first."""
        self._check_thread()
        deadline = None if timeout is None else time.monotonic() + timeout
        while d.result is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{d.unit} still running after {timeout} s")
            self._step(deadline)
        return d.result

    def as_completed(self, dispatches: Iterable[Dispatch] | None = None,
                     timeout: float | None = None) -> Iterator[Dispatch]:
        """Yield dispatches as they finish (already finished ones first); TimeoutError when time runs out."""
        self._check_thread()
        pending = list(dispatches) if dispatches is not None else list(self._live.values())
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            done = [d for d in pending if d.result is not None]
            for d in done:
                pending.remove(d)
                yield d
            if not pending:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{len(pending)} dispatch(es) still running after {timeout} s")
            self._step(deadline)

    def poll(self) -> None:
        """Handle whatever is ready now, without blocking. For callers that must poll (tf's
        poll_dispatch_status); a `wait*(timeout=0)` returns before doing any work."""
        self._check_thread()
        now = time.monotonic()
        self._step(now)
        self._step(now)  # the first turn returns early after bus signals; this one also reaps pidfds

    def wait_any(self, dispatches: Iterable[Dispatch] | None = None, timeout: float | None = None) -> list[Dispatch]:
        """The finished ones among `dispatches` once at least one is; [] if `timeout` passes first."""
        self._check_thread()
        pending = list(dispatches) if dispatches is not None else list(self._live.values())
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            done = [d for d in pending if d.result is not None]
            if done or not pending:
                return done
            if deadline is not None and time.monotonic() >= deadline:
                return []
            self._step(deadline)

    def wait_all(self, dispatches: Iterable[Dispatch] | None = None,
                 timeout: float | None = None) -> list[DispatchResult]:
        pending = list(dispatches) if dispatches is not None else list(self._live.values())
        for _ in self.as_completed(pending, timeout):
            pass
        return [d.result for d in pending if d.result is not None]

    # -- the loop ---------------------------------------------------------------------------------------------

    def _step(self, deadline: float | None) -> None:
        """One turn: handle queued signals, or else sleep until an fd is ready or the nearest deadline and
        handle that. Returns after any progress so callers re-check their condition."""
        if self._handle_bus():
            self._run_timers(time.monotonic())
            return
        now = time.monotonic()
        timers = [t for t in (d._next_deadline() for d in self._live.values()) if t is not None]
        if deadline is not None:
            timers.append(deadline)
        if self._bus_retry_at is not None:
            timers.append(self._bus_retry_at)
        timeout = max(0.0, min(timers) - now) if timers else None
        for key, _ in self._selector.select(timeout):
            if key.data == "bus":
                self._handle_bus()
            elif key.data == "signal":
                self._handle_signal_fd()
            elif isinstance(key.data, Dispatch):
                self._reap(key.data)
            elif key.data == "orphan":
                self._reap_orphan(key.fd)
            elif isinstance(key.data, tuple) and key.data[0] == "cgroup":
                self._on_cgroup_event(key.data[1])
        self._run_timers(time.monotonic())

    def _handle_bus(self) -> bool:
        """Handle every signal the bus has queued (also those read during our own calls); True if any.

        While the bus is down (drain fails, the reconnect too), its fd is out of the selector and the next
        try waits with exponential backoff (20 ms .. 1 s): a dead socket polls readable forever, and
        re-reading it in a loop would spin. Once it works again every dispatch is re-checked, because
        signals sent meanwhile are lost."""
        if self._bus_retry_at is not None and time.monotonic() < self._bus_retry_at:
            return False
        handled = False
        while True:
            try:
                events = self.bus.drain()
                self._register_bus()
            except BusError as e:
                self._bus_down(e)
                return False
            if self._bus_failures:
                log.warning("user bus: back after %d failed tries; re-checking every dispatch", self._bus_failures)
                self._bus_failures = 0
                self._bus_retry_at = None
                self._resync()
                handled = True
            if not events:
                break
            handled = True
            for ev in events:
                self._on_event(ev)
        return handled

    def _bus_down(self, e: BusError) -> None:
        self._bus_failures += 1
        delay = min(1.0, 0.01 * 2 ** self._bus_failures)
        self._bus_retry_at = time.monotonic() + delay
        log.warning("user bus: %s; trying again in %.2f s", e, delay)
        if self._bus_fd >= 0:
            try:
                self._selector.unregister(self._bus_fd)
            except (KeyError, ValueError):
                pass
            self._bus_fd = -1

    def _resync(self) -> None:
        for d in list(self._live.values()):
            d.recheck_deadline = time.monotonic()

    def _on_event(self, ev: BusEvent) -> None:
        if ev.kind == "job-removed":
            self._jobs[ev.path] = ev.result or ""
            if len(self._jobs) > 4096:  # jobs of units we never waited for
                self._jobs.pop(next(iter(self._jobs)))
            return
        d = self._live.get(ev.path)
        if d is None:
            return
        if ev.kind == "request-stop":
            if d.stop_reason is None:
                d.stop_reason = self._why_stopped(d)
            self._ladder_start(d)
        elif ev.kind == "unit-changed" and ev.changes is not None:
            # The signal carries the new values: no round trip unless the unit has just ended.
            if "InvocationID" in ev.changes and ev.changes["InvocationID"]:
                d.invocation_id = ev.changes["InvocationID"]
            state = ev.changes.get("ActiveState")
            if isinstance(state, str):
                d.active_state = state
                if state in ("inactive", "failed"):
                    if d.main_exited:
                        self._finish_ended(d)
                    else:
                        self._watch_for_stuck(d)
        elif ev.kind in ("unit-changed", "unit-removed"):
            self._check_unit(d)

    def _finish_ended(self, d: Dispatch) -> None:
        """The scope has ended (as far as we know) and our child is reaped: read its state and Result (two
        small calls) and finish; if the manager has not got there yet, its signal will bring us back."""
        try:
            active, result, invocation_id = self.bus.unit_outcome(d.unit)
        except BusError:
            self._check_unit(d)  # fall back to a full snapshot (and its retries)
            return
        d.active_state = active
        d.invocation_id = d.invocation_id or invocation_id or None
        if active not in ("inactive", "failed"):
            return
        d.unit_final = UnitState(
            name=d.unit, load_state="loaded", active_state=active, sub_state="dead",
            result=result, invocation_id=d.invocation_id or "", description="", documentation=(),
            active_enter_monotonic_us=0, inactive_enter_monotonic_us=0, runtime_max_us=0, timeout_stop_us=0,
            control_group="", memory_current=None, cpu_usage_ns=None, controller="")
        self._maybe_finish(d)

    def _why_stopped(self, d: Dispatch) -> Status:
        """A stop we did not ask for: the wall timeout if RuntimeMaxSec is due, else someone's stop."""
        try:
            st = self.bus.unit_state(d.unit)
        except BusError:
            return Status.STOPPED
        if st.runtime_max_us != 2**64 - 1 and st.active_enter_monotonic_us and \
                _monotonic_us() - st.active_enter_monotonic_us >= st.runtime_max_us - TIMEOUT_SLACK_US:
            return Status.TIMEOUT
        return Status.STOPPED

    def _recheck_soon(self, d: Dispatch, e: BusError) -> None:
        """A state read failed (retries spent): look again in a second; the loop's timer brings us back."""
        log.warning("%s: cannot read its state (%s); will re-check", d.unit, e)
        d.recheck_deadline = time.monotonic() + 1.0

    def _check_unit(self, d: Dispatch) -> None:
        try:
            st = self.bus.unit_state(d.unit)
        except BusError as e:
            self._recheck_soon(d, e)
            return
        if d.invocation_id is None and st.invocation_id:
            d.invocation_id = st.invocation_id
        d.active_state = st.active_state
        if st.ended or not st.exists:
            d.unit_final = st
            if not d.main_exited:
                self._watch_for_stuck(d)
            self._maybe_finish(d)

    def _watch_for_stuck(self, d: Dispatch) -> None:
        """The scope has ended but our child has not exited: normally its exit is microseconds away. If it
        is still there STUCK_AFTER_S later it survived systemd's SIGKILL (uninterruptible sleep, e.g. a
        hung NFS/FUSE call): we report that instead of waiting for ever."""
        if d.stuck_deadline is None and not d.attached:
            d.stuck_deadline = time.monotonic() + STUCK_AFTER_S

    def _finish_stuck(self, d: Dispatch) -> None:
        d.stuck_deadline = None
        if d.main_exited or d.child is None or d.pid is None:
            return
        state = _proc_state(d.pid)
        if state is None:
            return  # it has exited after all: the pidfd reports it
        if d.unit_final is None:
            d.unit_final = self.bus.unit_state(d.unit)
        d.stuck = True
        self._orphans[d.child.pidfd] = d.pid  # reaped whenever it finally exits
        self._selector.modify(d.child.pidfd, selectors.EVENT_READ, "orphan")
        d.main_exited, d.main_exit_step = True, Termination.UNKNOWN
        d.error = (f"main process {d.pid} is still alive (state {state}) although its scope ended: it survived "
                   "SIGKILL, so it is in uninterruptible sleep (a hung NFS/FUSE/device call); only the kernel "
                   "call returning can end it. Reported as stuck; it is reaped if it ever exits")
        log.error("%s: %s", d.unit, d.error)
        self._maybe_finish(d)

    def _reap_orphan(self, pidfd: int) -> None:
        pid = self._orphans.pop(pidfd)
        self._selector.unregister(pidfd)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        os.close(pidfd)

    def _reap(self, d: Dispatch) -> None:
        if d.child is None or d.pid is None or d.main_exited or d.child.pidfd < 0:
            return  # a stale event: handled (or detached) earlier in the same select() batch
        try:
            pid, status = os.waitpid(d.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = d.pid, -1
        if pid == 0:
            return  # spurious wake-up
        self._selector.unregister(d.child.pidfd)
        d.child.close_all()
        d.main_exited = True
        d.main_exit_step = d.step
        if status == -1:
            pass
        elif os.WIFSIGNALED(status):
            d.exit_signal = os.WTERMSIG(status)
        else:
            d.exit_code = os.waitstatus_to_exitcode(status)
        d.term_deadline = None
        d.idle_deadline = None
        self._after_main_exit(d)

    def _after_main_exit(self, d: Dispatch) -> None:
        """Session exit is authoritative: whatever is left in its scope is counted and stopped."""
        if d.active_state in ("inactive", "failed"):
            self._finish_ended(d)
            return
        if not self._watch_cgroup_empty(d):
            self._finish_ended(d)  # empty or gone already: the manager's state is (about to be) final
            if d.result is not None:
                return
        procs = procs_in(d.cgroup_dir) if d.cgroup_dir is not None else None
        if procs is None:
            try:
                procs = self.bus.unit_processes(d.unit)
            except BusError as e:
                self._recheck_soon(d, e)
                return
        if procs:
            d.leftovers = max(d.leftovers, len(procs))
            log.info("%s: main process ended, %d process(es) left in the scope: stopping them", d.unit, len(procs))
            self._kill_all(d, signal.SIGTERM)
            try:
                self.bus.stop_unit(d.unit)  # systemd SIGKILLs what ignores SIGTERM after TimeoutStopSec
            except BusError as e:
                log.warning("StopUnit(%s): %s", d.unit, e)
        # The unit's end arrives as a signal; re-check after the grace in case it was lost.
        d.recheck_deadline = time.monotonic() + d.grace + 1.0

    def _watch_cgroup_empty(self, d: Dispatch) -> bool:
        """Watch the scope's cgroup.events: the kernel notifies `populated 0` when its last process is gone;
        the manager's state is final within a millisecond, several ms before its PropertiesChanged signal
        reaches us. False if the cgroup is empty or gone already (then ask the manager now)."""
        if d.cgroup_watch is not None or d.cgroup_dir is None:
            return True
        events = d.cgroup_dir / "cgroup.events"
        try:
            d.cgroup_watch = Inotify(events, IN_MODIFY)
        except FileNotFoundError:
            return False
        except OSError as e:  # e.g. out of inotify watches: the manager's signal still tells us
            log.debug("%s: no inotify watch on %s (%s)", d.unit, events, e)
            return True
        self._selector.register(d.cgroup_watch.fd, selectors.EVENT_READ, ("cgroup", d))
        return _cgroup_populated(events)  # it may have emptied before the watch existed

    def _drop_cgroup_watch(self, d: Dispatch) -> None:
        if d.cgroup_watch is not None:
            self._selector.unregister(d.cgroup_watch.fd)
            d.cgroup_watch.close()
            d.cgroup_watch = None

    def _on_cgroup_event(self, d: Dispatch) -> None:
        if d.cgroup_watch is None or d.cgroup_dir is None:
            return  # finished earlier in the same select() batch; its watch is gone
        d.cgroup_watch.drain()
        if d.result is None and d.main_exited and not _cgroup_populated(d.cgroup_dir / "cgroup.events"):
            self._finish_ended(d)  # usually final already; if not, its signal finishes the dispatch

    def _run_timers(self, now: float) -> None:
        for d in list(self._live.values()):
            if d.term_deadline is not None and now >= d.term_deadline:
                self._ladder_term(d)
            if d.idle_deadline is not None and now >= d.idle_deadline:
                self._check_idle(d, now)
            if d.stuck_deadline is not None and now >= d.stuck_deadline:
                self._finish_stuck(d)
            if d.recheck_deadline is not None and now >= d.recheck_deadline:
                d.recheck_deadline = None
                self._check_unit(d)  # a full snapshot: covers signals lost across a reconnect or re-exec
                if d.main_exited and not d.attached and d.result is None:
                    self._after_main_exit(d)

    def _check_idle(self, d: Dispatch, now: float) -> None:
        """Idle = nothing written to the log for idle_timeout s. We sleep until the earliest moment that
        could be true, look at the log's mtime once, and either stop or sleep until the new earliest moment:
        no wake-ups while the session writes, no fixed-interval polling."""
        assert d.idle_timeout is not None
        try:
            mtime_age = time.time() - os.stat(d.log_path or "").st_mtime
        except OSError:
            mtime_age = now - d.started
        last_activity_age = min(mtime_age, now - d.started)
        if last_activity_age >= d.idle_timeout:
            d.idle_deadline = None
            log.info("%s: no output for %.1f s: idle timeout", d.unit, last_activity_age)
            self.stop(d, Status.IDLE_TIMEOUT)
        else:
            d.idle_deadline = now + (d.idle_timeout - last_activity_age)

    def _maybe_finish(self, d: Dispatch) -> None:
        if d.result is not None or not d.main_exited or d.unit_final is None:
            return
        st = d.unit_final
        self._live.pop(d.path, None)
        self._drop_cgroup_watch(d)
        d.recheck_deadline = None
        self._release_unit(d.unit)
        d.result = self._result(d, st)
        log.info("%s: %s", d.unit, d.result.status)

    def _result(self, d: Dispatch, st: UnitState) -> DispatchResult:
        sysres = st.result if st.exists else ("success" if st.load_state == "not-found" else st.result)
        status, method = decide(Facts(
            systemd_result=sysres, stop_reason=d.stop_reason, ladder_step_at_exit=d.main_exit_step,
            exit_code=d.exit_code, exit_signal=d.exit_signal, attached=d.attached, stuck=d.stuck))
        return DispatchResult(
            ticket=d.ticket, session=d.session or "", unit=d.unit, status=status, termination_method=method,
            exit_code=d.exit_code, signal=d.exit_signal, systemd_result=sysres if st.exists or not d.attached else None,
            leftovers_killed=d.leftovers, duration_s=time.monotonic() - d.started, log_path=d.log_path,
            invocation_id=d.invocation_id or (st.invocation_id or None), pid=d.pid, error=d.error)

    # -- signals to us ---------------------------------------------------------------------------------------

    def handle_signals(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
                       action: Literal["stop", "detach"] = "stop") -> None:
        """On SIGINT/SIGTERM, stop every dispatch with the ladder ("stop") or leave them running for a
        later attach ("detach"); then the current wait returns with their results and the signal is in
        `signals_received`. Main thread only (Python's rule for signal handlers)."""
        self._check_thread()
        if self._signal_r is None:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._signal_r = r
            self._signal_w = w
            signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self._selector.register(r, selectors.EVENT_READ, "signal")
        self._signal_action = action
        for s in signals:
            signal.signal(s, lambda *_: None)  # the wake-up fd carries the signal number to the loop

    def _handle_signal_fd(self) -> None:
        assert self._signal_r is not None
        try:
            data = os.read(self._signal_r, 512)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return
            raise
        for signum in data:
            self.signals_received.append(signum)
            log.warning("received %s: %s", signal.Signals(signum).name,
                        "stopping all dispatches" if self._signal_action == "stop" else "detaching")
            if self._signal_action == "stop":
                self.stop_all(Status.STOPPED)
            else:
                self._detach_all()

    def _detach_all(self) -> None:
        for d in list(self._live.values()):
            self._live.pop(d.path, None)
            if d.child is not None:
                try:
                    self._selector.unregister(d.child.pidfd)
                except (KeyError, ValueError):
                    pass
                d.child.close_all()
            d.result = DispatchResult(
                ticket=d.ticket, session=d.session or "", unit=d.unit, status=Status.RUNNING,
                termination_method=Termination.UNKNOWN, exit_code=None, signal=None, systemd_result=None,
                leftovers_killed=0, duration_s=time.monotonic() - d.started, log_path=d.log_path,
                invocation_id=d.invocation_id, pid=d.pid, error="detached: still running; attach to it later")
