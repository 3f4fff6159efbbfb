"""Supervisor: many dispatches over one user-bus connection, driven by an event loop in its own thread.

The loop thread alone owns the D-Bus connection (pystemd's sd-bus connection is not thread-safe) and every
pidfd, pipe and inotify fd. It sleeps in select() on the bus, the dispatches' fds and a wake-up pipe, with a
timeout equal to the nearest ladder/idle deadline, and routes each event to its Dispatch, which owns its
transitions. So the ladder, idle detection and completion advance on time whatever the caller does: a caller
busy for minutes (Ralph merging a worktree) or stopped with SIGSTOP still gets EOF, then SIGTERM, before
systemd's SIGKILL.

The public methods are safe from any thread: they hand their work to the loop thread and wait for it
(`launch`) or for a result (`wait`, `as_completed`, ...), without polling. `handle_signals()` (main thread
only, Python's rule) routes SIGINT/SIGTERM to the loop thread through the wake-up fd of the signal module,
so they are acted on at once even while the caller's thread is busy.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import os
import resource
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar

from ralph_systemd import instrument
from ralph_systemd.bus import NO_LIMIT, BusEvent, PystemdUserBus, SystemdBus, monotonic_us, unit_path
from ralph_systemd.dispatch import Dispatch, Phase
from ralph_systemd.evloop import EventLoop
from ralph_systemd.inotify import IN_IGNORED, IN_MODIFY, Inotify
from ralph_systemd.journal import Journal
from ralph_systemd.limits import preflight
from ralph_systemd.manager_features import ManagerFeatures, features
from ralph_systemd.inspect import UNIT_PATTERN, resolve_unit
from ralph_systemd.result import DispatchResult, Status
from ralph_systemd.retry import BusError
from ralph_systemd.scope import facts_from_unit
from ralph_systemd.spec import DispatchSpec

log = logging.getLogger("ralph_systemd")

T = TypeVar("T")

FDS_PER_DISPATCH = 2  # a running dispatch holds its pidfd and the write end of its stdin pipe
FD_HEADROOM = 64  # a launch in flight (log, gate and error pipes), the bus, and the caller's own files
CALL_CHECK_S = 1.0  # how often a caller waiting on the loop thread checks that the thread is still alive


class _Host:
    """What the loop thread offers its dispatches (dispatch.DispatchHost); lives in the loop thread."""

    def __init__(self, supervisor: Supervisor, bus: SystemdBus, loop: EventLoop) -> None:
        self._sup = supervisor
        self.bus = bus
        self.features = features(bus.manager_version())
        self._loop = loop
        self._journal = Journal()
        self._inotify: Inotify | None = None  # one instance for every dispatch's watch (see inotify.py)
        self._watches: dict[int, Callable[[], None]] = {}

    def now(self) -> float:
        return time.monotonic()

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._loop.add_reader(fd, callback)

    def remove_reader(self, fd: int) -> None:
        self._loop.remove_reader(fd)

    def adopt_orphan(self, pidfd: int, pid: int) -> None:
        self._sup._adopt_orphan(pidfd, pid)

    def watch_file(self, path: Path, callback: Callable[[], None]) -> int:
        if self._inotify is None:
            self._inotify = Inotify()
            self._loop.add_reader(self._inotify.fd, self._on_inotify)
        wd = self._inotify.add_watch(path, IN_MODIFY)
        self._watches[wd] = callback
        return wd

    def unwatch_file(self, handle: int) -> None:
        if self._watches.pop(handle, None) is not None and self._inotify is not None:
            self._inotify.rm_watch(handle)

    def _on_inotify(self) -> None:
        assert self._inotify is not None
        for wd, mask in self._inotify.read():
            callback = self._watches.get(wd)
            if mask & IN_IGNORED:  # the watched file is gone (its cgroup was removed): so is the watch
                self._watches.pop(wd, None)
            if callback is not None:
                callback()

    def close(self) -> None:
        if self._inotify is not None:
            self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None

    def changed(self, d: Dispatch) -> None:
        self._sup._changed(d)

    def lifecycle(self, d: Dispatch, event: str, message: str, fields: Mapping[str, object]) -> None:
        """One line of d's life: in our log, and in the user's journal attributed to d's scope (so
        `systemctl --user status` and `journalctl --user -u` show it), with RALPH_* fields to filter on."""
        log.info("%s: %s", d.unit, message)
        self._journal.lifecycle(d.unit, event, message, fields)


class Supervisor:
    """Launch, follow and stop dispatches; safe to use from any thread (see the module docstring)."""

    def __init__(self, bus: SystemdBus | None = None) -> None:
        self._loop = EventLoop()
        self._cond = threading.Condition()
        self._live: dict[str, Dispatch] = {}  # by unit object path; the loop thread's routing table
        self._pending: deque[Dispatch] = deque()  # launches not started yet (launch_many pipelines them)
        self._orphans: dict[int, int] = {}  # pidfd -> pid of stuck main processes, reaped when they exit
        self._bus_fd = -1
        self._bus_failures = 0  # drains failed in a row (the bus is down while > 0)
        self._bus_retry_at: float | None = None  # when to try the bus again while it is down
        self._signal_r: int | None = None
        self._signal_w: int | None = None
        self._signal_action: Literal["stop", "detach"] = "stop"
        self.signals_received: list[int] = []
        self._closing = False
        self._closed = False
        self._startup_error: BaseException | None = None
        self._ready = threading.Event()
        self._host: _Host | None = None
        self._given_bus = bus
        self._thread = threading.Thread(target=self._run, name="ralph-systemd-supervisor", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._loop.close()
            self._closed = True
            raise self._startup_error

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
                self._call(self._detach_all)
            except RuntimeError:
                pass
            self._closing = True
            self._loop.call_soon_threadsafe(lambda: None)  # wake the loop so it sees _closing
            if threading.get_ident() != self._thread.ident:
                self._thread.join()
            self._restore_signal_fd()
            self._loop.close()
            self._closed = True

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise RuntimeError("this Supervisor is closed")

    @property
    def features(self) -> ManagerFeatures:
        """What the user manager can do (its version decides: e.g. scopes made with PIDFDs from 255 on)."""
        return self._host_or_raise().features

    @property
    def live(self) -> list[Dispatch]:
        """Dispatches launched or attached and not finished yet."""
        return self._call(lambda: list(self._live.values()) + list(self._pending))

    # -- calls into the loop thread ----------------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        """Run fn in the loop thread and return what it returns (or raise what it raised)."""
        if threading.get_ident() == self._thread.ident:
            return fn()
        self._check_open()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

        self._loop.call_soon_threadsafe(run)
        while not fut.done():
            concurrent.futures.wait([fut], timeout=CALL_CHECK_S)
            if not fut.done() and not self._thread.is_alive():
                raise RuntimeError("the supervisor's loop thread has ended (see the log for why)")
        return fut.result()

    def _changed(self, d: Dispatch) -> None:
        if d.phase is not Phase.DONE:
            return  # a launch's waiter is woken by d.started_event alone
        if self._live.get(d.path) is d:
            del self._live[d.path]
        with self._cond:  # for wait_any / as_completed over several dispatches
            self._cond.notify_all()

    def _wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Block (no polling) until predicate() holds; False if `timeout` seconds pass first."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate() or not self._thread.is_alive(), timeout) and predicate()

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
        preflight(len(specs), len(self._live) + len(self._pending), slices=tuple({s.slice for s in specs}))
        dispatches = [Dispatch(self._host_or_raise(), self, ticket=s.ticket, session=s.session, unit=s.unit,
                               spec=s) for s in specs]
        # Handed over without waiting for an answer: the caller sleeps until the launches are done, and the
        # loop thread is not made to hand the GIL back and forth with it in between.
        self._loop.call_soon_threadsafe(lambda: self._enqueue(dispatches))
        for d in reversed(dispatches):  # started in order: once the last has, the others mostly have too
            d.started_event.wait()
        return dispatches

    def _host_or_raise(self) -> _Host:
        if self._host is None:
            raise RuntimeError("this Supervisor is closed")
        return self._host

    def _enqueue(self, dispatches: list[Dispatch]) -> None:
        self._ensure_fd_headroom(len(dispatches))
        self._pending.extend(dispatches)

    def _start_next(self) -> None:
        d = self._pending.popleft()
        if d.path in self._live:  # ours and live: systemd would say UnitExists; say it without asking
            d.refuse_duplicate()
            return
        self._live[d.path] = d  # routed from before StartTransientUnit: no event about it is lost
        d.start_launch()

    def _ensure_fd_headroom(self, more: int) -> None:
        """Raise the soft RLIMIT_NOFILE to the hard limit when more dispatches might not fit (the default soft
        limit of 1024 holds ~480 dispatches); epoll has no FD_SETSIZE limit."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = FDS_PER_DISPATCH * (len(self._live) + len(self._pending) + more) + FD_HEADROOM
        if soft == resource.RLIM_INFINITY or need <= soft or soft == hard:
            return
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("raised the soft limit on open files from %d to %s for %d dispatches", soft,
                 "unlimited" if hard == resource.RLIM_INFINITY else hard, len(self._live) + more)

    # -- re-attach ----------------------------------------------------------------------------------------

    def attach(self, unit_or_ticket: str, *, grace: float | None = None) -> Dispatch:
        """Follow a live `ralph-*` scope launched by another (possibly dead) supervisor.

        Ticket, session, log path and start time come from the unit. Its exit code cannot be known (the
        process was not our child): a natural end is reported as status UNKNOWN, never as success.
        """
        unit = resolve_unit(unit_or_ticket)  # a ticket: of the current directory's project
        return self._call(lambda: self._attach(unit, grace))

    def _attach(self, unit: str, grace: float | None) -> Dispatch:
        host = self._host_or_raise()
        existing = self._live.get(unit_path(unit))
        if existing is not None:
            return existing
        host.bus.ref_unit(unit)
        try:
            st = host.bus.unit_state(unit)
            facts = facts_from_unit(unit, st.description, st.documentation)
            if not st.exists or st.ended or facts is None:
                raise LookupError(f"no live dispatch {unit} to attach to ({st.load_state}/{st.active_state})")
            procs = host.bus.unit_processes(unit)
        except BaseException:
            self._release(unit)
            raise
        d = Dispatch(host, self, ticket=facts.ticket, session=facts.session, unit=unit, spec=None,
                     log_path=facts.log_path, attached=True)
        runtime_max = None if st.runtime_max_us in (0, NO_LIMIT) else st.runtime_max_us / 1e6
        d.adopt(invocation_id=st.invocation_id, grace=grace if grace is not None else st.timeout_stop_us / 1e6,
                runtime_max_s=runtime_max, age_s=max(0.0, (monotonic_us() - st.active_enter_monotonic_us) / 1e6),
                pid=procs[0] if procs else None)
        self._live[d.path] = d
        return d

    def _release(self, unit: str) -> None:
        try:
            self._host_or_raise().bus.unref_unit(unit)
        except BusError as e:
            log.warning("could not release %s: %s", unit, e)

    def attach_all(self) -> list[Dispatch]:
        """Attach to every live `ralph-*` scope of this user that this supervisor is not following."""
        def run() -> list[Dispatch]:
            out = []
            for unit in self._host_or_raise().bus.list_units([UNIT_PATTERN]):
                try:
                    out.append(self._attach(unit, None))
                except LookupError:
                    continue
            return out
        return self._call(run)

    # -- stop ---------------------------------------------------------------------------------------------

    def stop(self, d: Dispatch, reason: Status = Status.STOPPED) -> None:
        """Stop one dispatch with the ladder: EOF, SIGTERM, then systemd's SIGKILL after the grace."""
        self._call(lambda: d.request_stop(reason))

    def stop_all(self, reason: Status = Status.STOPPED) -> None:
        def run() -> None:
            for d in list(self._live.values()):
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
                if not self._thread.is_alive():
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
        self._call(self._turn_now)

    def _turn_now(self) -> None:
        self._handle_bus()
        self._loop.run_once(0.0)
        self._handle_bus()
        self._fire_timers(time.monotonic())

    # -- the loop thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            bus = self._given_bus if self._given_bus is not None else PystemdUserBus()
            self._host = _Host(self, bus, self._loop)
            self._register_bus()
        except BaseException as e:
            self._startup_error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._closing:
                self._turn()
        except BaseException:
            log.exception("the supervisor's loop thread failed")
            raise
        finally:
            with self._cond:
                self._cond.notify_all()
            self._shutdown_in_loop()

    def _turn(self) -> None:
        """One turn: start a pending launch, handle queued bus signals and due timers, then sleep until an
        fd is ready, a call arrives, or the nearest deadline."""
        instrument.mark("loop.turn")
        if self._pending:
            self._start_next()
        self._handle_bus()
        nearest = self._fire_timers(time.monotonic())
        if self._pending or self._closing:
            timeout: float | None = 0.0
        else:
            if self._bus_retry_at is not None:
                nearest = self._bus_retry_at if nearest is None else min(nearest, self._bus_retry_at)
            timeout = None if nearest is None else max(0.0, nearest - time.monotonic())
        self._loop.run_once(timeout)

    def _fire_timers(self, now: float) -> float | None:
        """Fire what is due; return the nearest deadline left (one pass over the live dispatches)."""
        nearest = None
        for d in list(self._live.values()):
            deadline = d.next_deadline()
            if deadline is not None and now >= deadline:
                d.fire_timers(now)
                deadline = d.next_deadline()
            if deadline is not None and (nearest is None or deadline < nearest):
                nearest = deadline
        return nearest

    def _shutdown_in_loop(self) -> None:
        self._loop.run_calls()  # e.g. a launch handed over just before the close: it ends detached, not lost
        self._detach_all()
        for pidfd in list(self._orphans):
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
        self._orphans.clear()
        if self._signal_r is not None:
            self._loop.remove_reader(self._signal_r)
        if self._bus_fd >= 0:
            self._loop.remove_reader(self._bus_fd)
        if self._host is not None:
            self._host.close()
            self._host.bus.close()
        with self._cond:
            self._cond.notify_all()

    def _detach_all(self) -> None:
        """Leave every dispatch running (their results say so) and free what we hold for them."""
        while self._pending:
            self._pending.popleft().detach()
        for d in list(self._live.values()):
            d.detach()

    # -- the bus ------------------------------------------------------------------------------------------

    def _register_bus(self) -> None:
        host = self._host_or_raise()
        fd = host.bus.fileno()
        if fd == self._bus_fd:
            return
        if self._bus_fd >= 0:
            self._loop.remove_reader(self._bus_fd)
        self._loop.add_reader(fd, self._handle_bus)
        self._bus_fd = fd

    def _handle_bus(self) -> None:
        """Handle every signal the bus has queued (also those read during our own calls).

        While the bus is down (drain fails, the reconnect too), its fd is out of the selector and the next
        try waits with exponential backoff (20 ms .. 1 s): a dead socket polls readable for ever, and
        re-reading it in a loop would spin. Once it works again every dispatch is re-checked, because
        signals sent meanwhile are lost."""
        if self._bus_retry_at is not None and time.monotonic() < self._bus_retry_at:
            return
        host = self._host_or_raise()
        while True:
            try:
                events = host.bus.drain()
                self._register_bus()
            except BusError as e:
                self._bus_down(e)
                return
            if self._bus_failures:
                log.warning("user bus: back after %d failed tries; re-checking every dispatch", self._bus_failures)
                self._bus_failures = 0
                self._bus_retry_at = None
                for d in list(self._live.values()):
                    d.resync()
            if not events:
                return
            for ev in events:
                self._route(ev)

    def _bus_down(self, e: BusError) -> None:
        self._bus_failures += 1
        delay = min(1.0, 0.01 * 2 ** self._bus_failures)
        self._bus_retry_at = time.monotonic() + delay
        log.warning("user bus: %s; trying again in %.2f s", e, delay)
        if self._bus_fd >= 0:
            self._loop.remove_reader(self._bus_fd)
            self._bus_fd = -1

    def _route(self, ev: BusEvent) -> None:
        if ev.kind in ("job-removed", "unit-removed"):
            d = self._live.get(unit_path(ev.unit)) if ev.unit else None
            if d is None:
                return
            if ev.kind == "job-removed":
                d.on_job_removed(ev.path, ev.result or "")
            else:
                d.on_unit_removed()
            return
        d = self._live.get(ev.path)
        if d is None:
            return
        if ev.kind == "request-stop":
            d.on_request_stop()
        elif ev.kind == "unit-changed" and ev.changes is not None:
            d.on_unit_changed(ev.changes)

    # -- stuck main processes -------------------------------------------------------------------------------

    def _adopt_orphan(self, pidfd: int, pid: int) -> None:
        self._orphans[pidfd] = pid
        self._loop.add_reader(pidfd, lambda: self._reap_orphan(pidfd))

    def _reap_orphan(self, pidfd: int) -> None:
        pid = self._orphans.pop(pidfd)
        self._loop.remove_reader(pidfd)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        os.close(pidfd)

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
        self._signal_action = action
        if self._signal_r is None:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._signal_r, self._signal_w = r, w
            signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self._call(lambda: self._loop.add_reader(r, self._on_signal_fd))
        for s in signals:
            signal.signal(s, lambda *_: None)  # the wake-up fd carries the signal number to the loop thread

    def _on_signal_fd(self) -> None:
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
                for d in list(self._live.values()):
                    d.request_stop(Status.STOPPED)
            else:
                self._detach_all()
        with self._cond:
            self._cond.notify_all()

    def _restore_signal_fd(self) -> None:
        """Undo handle_signals()'s wake-up fd (only if it is still ours)."""
        if self._signal_r is None or self._signal_w is None:
            return
        try:
            previous = signal.set_wakeup_fd(-1)
        except ValueError:  # not the main thread: leave it; the fds stay open for the process's life
            return
        if previous != self._signal_w:
            signal.set_wakeup_fd(previous)  # someone else's now: leave it as it was
            return
        os.close(self._signal_r)
        os.close(self._signal_w)
        self._signal_r = self._signal_w = None
