"""The loop thread under a Supervisor, and everything it alone owns.

The loop thread owns the D-Bus connection (pystemd's sd-bus connection is not thread-safe), every pidfd,
pipe and inotify fd, the one timer queue, and the routing table from a unit to its Dispatch. It sleeps in
select() on the bus, the dispatches' fds and a wake-up pipe, with a timeout equal to the nearest timer, and
routes each event to its Dispatch, which owns its transitions. It is each Dispatch's `DispatchHost`.

Its jobs besides routing: pumping the bus (with backoff and a re-check of every dispatch when it comes
back), the signal wake-up fd (`watch_signals`), and reaping main processes that outlived their scope.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from ralph_systemd import instrument
from ralph_systemd.bus import NO_LIMIT, BusEvent, PystemdUserBus, SystemdBus, monotonic_us, unit_path
from ralph_systemd.dispatch import Dispatch, DispatchOwner
from ralph_systemd.evloop import EventLoop
from ralph_systemd.inotify import IN_IGNORED, IN_MODIFY, Inotify
from ralph_systemd.journal import Journal
from ralph_systemd.lifecycle import Line
from ralph_systemd.manager_features import ManagerFeatures, features
from ralph_systemd.result import Status
from ralph_systemd.retry import BusError
from ralph_systemd.scope import facts_from_unit
from ralph_systemd.states import State
from ralph_systemd.timers import TimerQueue

log = logging.getLogger("ralph_systemd")

T = TypeVar("T")

CALL_CHECK_S = 1.0  # how often a caller waiting on the loop thread checks that the thread is still alive


class Engine:
    """The loop thread of one Supervisor (see the module docstring). Methods named `call`, `enqueue`,
    `watch_signals` and `close` may be used from any thread; the rest run in the loop thread."""

    def __init__(self, owner: DispatchOwner, bus: SystemdBus | None, cond: threading.Condition) -> None:
        self._owner = owner
        self._cond = cond  # notified whenever a dispatch is done (wait_any, as_completed)
        self._loop = EventLoop()
        self.timers = TimerQueue()
        self._journal = Journal()
        self._inotify: Inotify | None = None  # one instance for every dispatch's watch (see inotify.py)
        self._watches: dict[int, Callable[[], None]] = {}
        self.live: dict[str, Dispatch] = {}  # by unit object path: the routing table
        self.pending: deque[Dispatch] = deque()  # launches not started yet (launch_many pipelines them)
        self._orphans: dict[int, int] = {}  # pidfd -> pid of stuck main processes, reaped when they exit
        self._bus_fd = -1
        self._bus_failures = 0  # drains failed in a row (the bus is down while > 0)
        self._bus_retry_at: float | None = None  # when to try the bus again while it is down
        self._signal_r: int | None = None
        self._signal_w: int | None = None
        self._signal_action: Literal["stop", "detach"] = "stop"
        self.signals_received: list[int] = []
        self.closing = False
        self._startup_error: BaseException | None = None
        self._ready = threading.Event()
        self._given_bus = bus
        self._bus: SystemdBus | None = None
        self._features: ManagerFeatures | None = None
        self._thread = threading.Thread(target=self._run, name="ralph-systemd-supervisor", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._loop.close()
            raise self._startup_error

    # -- what a Dispatch gets from its host (dispatch.DispatchHost) ---------------------------------------

    @property
    def bus(self) -> SystemdBus:
        assert self._bus is not None
        return self._bus

    @property
    def features(self) -> ManagerFeatures:
        assert self._features is not None
        return self._features

    def now(self) -> float:
        return time.monotonic()

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._loop.add_reader(fd, callback)

    def remove_reader(self, fd: int) -> None:
        self._loop.remove_reader(fd)

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

    def changed(self, d: Dispatch) -> None:
        if d.state is not State.DONE:
            return  # a launch's waiter is woken by d.started_event alone
        if self.live.get(d.path) is d:
            del self.live[d.path]
        with self._cond:
            self._cond.notify_all()

    def lifecycle(self, d: Dispatch, line: Line) -> None:
        """One line of d's life: in our log, and in the user's journal attributed to d's scope (so
        `systemctl --user status` and `journalctl --user -u` show it), with RALPH_* fields to filter on."""
        log.info("%s: %s", d.unit, line.message)
        self._journal.lifecycle(d.unit, line)

    def adopt_orphan(self, pidfd: int, pid: int) -> None:
        """Take over the pidfd of a main process that outlived its scope: reap it whenever it exits."""
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

    # -- calls from other threads -------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn in the loop thread and return what it returns (or raise what it raised)."""
        if self.in_loop_thread():
            return fn()
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

    def enqueue(self, dispatches: list[Dispatch]) -> None:
        """Hand launches over without waiting for an answer (the caller waits on their started_event)."""
        self._loop.call_soon_threadsafe(lambda: self._enqueue(dispatches))

    def close(self) -> None:
        """End the loop thread (after detaching what is left) and free what it holds."""
        self.closing = True
        self._loop.call_soon_threadsafe(lambda: None)  # wake the loop so it sees `closing`
        if not self.in_loop_thread():
            self._thread.join()
        self._restore_signal_fd()
        self._loop.close()

    # -- launch and attach (loop thread) ------------------------------------------------------------------

    def _enqueue(self, dispatches: list[Dispatch]) -> None:
        self.pending.extend(dispatches)

    def _start_next(self) -> None:
        d = self.pending.popleft()
        if d.path in self.live:  # ours and live: systemd would say UnitExists; say it without asking
            d.refuse_duplicate()
            return
        self.live[d.path] = d  # routed from before StartTransientUnit: no event about it is lost
        d.start_launch()

    def attach(self, unit: str, grace: float | None) -> Dispatch:
        """Follow a live scope launched by someone else: a Dispatch that holds a ref on it."""
        existing = self.live.get(unit_path(unit))
        if existing is not None:
            return existing
        self.bus.ref_unit(unit)
        try:
            st = self.bus.unit_state(unit)
            facts = facts_from_unit(unit, st.description, st.documentation)
            if not st.exists or st.ended or facts is None:
                raise LookupError(f"no live dispatch {unit} to attach to ({st.load_state}/{st.active_state})")
            procs = self.bus.unit_processes(unit)
        except BaseException:
            self._release(unit)
            raise
        d = Dispatch(self, self._owner, ticket=facts.ticket, session=facts.session, unit=unit, spec=None,
                     log_path=facts.log_path, attached=True)
        runtime_max = None if st.runtime_max_us in (0, NO_LIMIT) else st.runtime_max_us / 1e6
        d.adopt(invocation_id=st.invocation_id, grace=grace if grace is not None else st.timeout_stop_us / 1e6,
                runtime_max_s=runtime_max, age_s=max(0.0, (monotonic_us() - st.active_enter_monotonic_us) / 1e6),
                pid=procs[0] if procs else None)
        self.live[d.path] = d
        return d

    def _release(self, unit: str) -> None:
        try:
            self.bus.unref_unit(unit)
        except BusError as e:
            log.warning("could not release %s: %s", unit, e)

    def detach_all(self) -> None:
        """Leave every dispatch running (their results say so) and free what we hold for them."""
        while self.pending:
            self.pending.popleft().detach()
        for d in list(self.live.values()):
            d.detach()

    # -- the loop -----------------------------------------------------------------------------------------

    def turn_now(self) -> None:
        """Bring every dispatch up to date with what has happened by now, without blocking."""
        self._handle_bus()
        self._loop.run_once(0.0)
        self._handle_bus()
        self.timers.fire_due(time.monotonic())

    def _run(self) -> None:
        try:
            self._bus = self._given_bus if self._given_bus is not None else PystemdUserBus()
            self._features = features(self._bus.manager_version())
            self._register_bus()
        except BaseException as e:
            self._startup_error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self.closing:
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
        instrument.mark("loop.turn", "")
        if self.pending:
            self._start_next()
        self._handle_bus()
        self.timers.fire_due(time.monotonic())
        nearest = self.timers.next_deadline()
        if self.pending or self.closing:
            timeout: float | None = 0.0
        else:
            if self._bus_retry_at is not None:
                nearest = self._bus_retry_at if nearest is None else min(nearest, self._bus_retry_at)
            timeout = None if nearest is None else max(0.0, nearest - time.monotonic())
        self._loop.run_once(timeout)

    def _shutdown_in_loop(self) -> None:
        self._loop.run_calls()  # e.g. a launch handed over just before the close: it ends detached, not lost
        self.detach_all()
        for pidfd in list(self._orphans):
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
        self._orphans.clear()
        if self._signal_r is not None:
            self._loop.remove_reader(self._signal_r)
        if self._bus_fd >= 0:
            self._loop.remove_reader(self._bus_fd)
        if self._inotify is not None:
            self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None
        if self._bus is not None:
            self._bus.close()
        with self._cond:
            self._cond.notify_all()

    # -- the bus ------------------------------------------------------------------------------------------

    def _register_bus(self) -> None:
        fd = self.bus.fileno()
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
        while True:
            try:
                events = self.bus.drain()
                self._register_bus()
            except BusError as e:
                self._bus_down(e)
                return
            if self._bus_failures:
                log.warning("user bus: back after %d failed tries; re-checking every dispatch", self._bus_failures)
                self._bus_failures = 0
                self._bus_retry_at = None
                for d in list(self.live.values()):
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
            d = self.live.get(unit_path(ev.unit)) if ev.unit else None
            if d is None:
                return
            if ev.kind == "job-removed":
                d.on_job_removed(ev.path, ev.result or "")
            else:
                d.on_unit_removed()
            return
        d = self.live.get(ev.path)
        if d is None:
            return
        if ev.kind == "request-stop":
            d.on_request_stop()
        elif ev.kind == "unit-changed" and ev.changes is not None:
            d.on_unit_changed(ev.changes)

    # -- signals to us ------------------------------------------------------------------------------------

    def watch_signals(self, signals: tuple[int, ...], action: Literal["stop", "detach"]) -> None:
        """Route `signals` to the loop thread through the signal module's wake-up fd (main thread only)."""
        self._signal_action = action
        if self._signal_r is None:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._signal_r, self._signal_w = r, w
            signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self.call(lambda: self._loop.add_reader(r, self._on_signal_fd))
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
                for d in list(self.live.values()):
                    d.request_stop(Status.STOPPED)
            else:
                self.detach_all()
        with self._cond:
            self._cond.notify_all()

    def _restore_signal_fd(self) -> None:
        """Undo watch_signals()'s wake-up fd (only if it is still ours)."""
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
