"""SystemdBackend: tf's dispatch functions (run, wait, poll, terminate) over scopes, with one Supervisor."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ralph_systemd.cgroupfs import unit_of
from ralph_systemd.dispatch import Dispatch
from ralph_systemd.naming import is_unit_name_of_ours
from ralph_systemd.result import DispatchResult as NativeResult
from ralph_systemd.result import Status
from ralph_systemd.retry import BusError
from ralph_systemd.supervisor import Supervisor
from ralph_systemd.tf import output
from ralph_systemd.tf.compat import UNKNOWN_RETURN_CODE, TfTypes, build_cmd, completion_fields, poll_code, return_code
from ralph_systemd.tf.config import BackendConfig, make_spec

log = logging.getLogger("ralph_systemd.tf")

KILL_WAIT_SLACK_S = 10.0  # after our SIGKILL, how long the cgroup may take to empty before we give up
_FINISHED_KEPT = 4096  # finished dispatches remembered, for late polls and waits


class Registry(Protocol):
    """tf's session registry (`<ralph_dir>/dispatch-sessions.json`), written and read with tf's own functions."""

    def register(self, ralph_dir: Path, session_id: str, ticket: str, pid: int, cwd: Path | None,
                 logger: Any) -> None: ...

    def running(self, ralph_dir: Path, logger: Any) -> list[tuple[str, str, int | None]]:
        """(session_id, ticket, pid) of every session the registry says is running."""
        ...

    def update(self, ralph_dir: Path, session_id: str, status: str, return_code: int | None, logger: Any) -> None: ...


class _Say:
    """Log through Ralph's logger (RalphLogger: debug/info/warn/error(msg, ticket=...)) or a stdlib one;
    without one, to stderr like tf's default logger. Never to stdout."""

    def __init__(self, logger: Any, ticket: str | None) -> None:
        self.logger, self.ticket = logger, ticket

    def __call__(self, level: str, msg: str) -> None:
        if self.logger is None:
            if level != "debug":
                print(f"[ralph-systemd] {level.upper()}: {msg}", file=sys.stderr, flush=True)
            return
        fn = getattr(self.logger, level, None) or getattr(self.logger, {"warn": "warning"}.get(level, level), None)
        if fn is None:
            return
        try:
            fn(msg, ticket=self.ticket)
        except TypeError:  # a logging.Logger: no ticket= keyword
            fn(msg)


def unit_of_pid(pid: int) -> str | None:
    """The ralph-* scope a process lives in, or None."""
    unit = unit_of(pid)
    return unit if unit is not None and is_unit_name_of_ours(unit) else None


@dataclass
class _Tracked:
    dispatch: Dispatch
    session_id: str
    pi_output: str
    output_copy: Path | None = None  # "file" mode on another filesystem: copy the log there at the end
    reported: bool = False  # the finish has been handled (inherit echo, copy)
    ralph_dir: Path | None = None  # where tf's session registry is, if tf gave one


class SystemdBackend:
    """tf's dispatch functions over scopes. One Supervisor (one D-Bus connection, its event loop in its own
    thread), created on first use; usable from any thread."""

    def __init__(self, config: BackendConfig | None = None, types: TfTypes | None = None,
                 registry: Registry | None = None) -> None:
        self.config = config or BackendConfig()
        self.types = types or TfTypes()
        self.registry = registry
        self._sup: Supervisor | None = None
        self._by_pid: OrderedDict[int, _Tracked] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def supervisor(self) -> Supervisor:
        with self._lock:
            if self._sup is None:
                self._sup = Supervisor()
            return self._sup

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop (with the ladder) and wait for every running dispatch of ours; drop the bus connection."""
        self._close(stop_running=True)

    def detach(self) -> None:
        """Leave running dispatches running (bounded by their RuntimeMaxSec, visible in `ralph-systemd ls`);
        drop the bus connection. With stdin "pipe" their stdin closes (EOF) with our end of the pipe."""
        self._close(stop_running=False)

    def _close(self, stop_running: bool) -> None:
        with self._lock:
            sup, self._sup = self._sup, None
        if sup is None:
            return
        try:
            sup.close(stop_running=stop_running)
        finally:
            with self._lock:
                tracked = list(self._by_pid.values())
            for t in tracked:
                self._report(t)

    def running(self) -> list[_Tracked]:
        with self._lock:
            return [t for t in self._by_pid.values() if t.dispatch.result is None]

    def stop_all(self, reason: Status = Status.STOPPED) -> list[tuple[_Tracked, NativeResult | None]]:
        """Stop every running dispatch of ours with the ladder and wait for each (bounded by its grace)."""
        todo = self.running()
        if not todo or self._sup is None:
            return []
        for t in todo:
            self._sup.stop(t.dispatch, reason)
        return [(t, self._finish_stop(t, t.dispatch.grace * 1000)) for t in todo]

    # -- launch -------------------------------------------------------------------------------------------------

    def run_ticket_dispatch(
        self, ticket: str, workflow: str, flags: str, dry_run: bool, cwd: Path | None = None, logger: Any = None,
        mode: str = "serial", capture_json: bool = False, logs_dir: Path | None = None,
        ticket_title: str | None = None, pi_output: str = "inherit", pi_output_file: str | None = None,
        timeout_ms: int = 0, ralph_dir: Path | None = None,
    ) -> Any:
        """Launch `pi -p "<workflow> <ticket> <flags> --auto"` in cwd, in its own scope; return at once."""
        say = _Say(logger, ticket or None)
        mk = self.types.make_dispatch
        if not ticket:
            say("error", "No ticket specified")
            return mk(session_id="", ticket_id="", status="failed", error="No ticket specified")

        def failed(msg: str, session_id: str = "") -> Any:
            say("error", f"Failed to launch dispatch: {msg}")
            return mk(session_id=session_id, ticket_id=ticket, status="failed", error=msg)

        if pi_output not in ("inherit", "file", "discard"):
            return failed(f"pi_output {pi_output!r} is not one of 'inherit', 'file', 'discard'")
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or timeout_ms < 0:
            return failed(f"timeout_ms must be a number of milliseconds >= 0 (0 = none), got {timeout_ms!r}")
        try:
            cmd = build_cmd(workflow, ticket, flags)
        except ValueError as e:
            return failed(str(e))
        if "--auto" not in flags:
            cmd = f"{cmd} --auto"
        argv = [*self.config.agent(), *(["--mode", "json"] if capture_json else []), "-p", cmd]
        session_id = str(uuid.uuid4())
        out_path: Path | None = None
        if pi_output == "file":
            out_path = (Path(pi_output_file).expanduser() if pi_output_file else
                        Path(logs_dir if logs_dir is not None else ".tf/ralph/logs") / f"{ticket}.log").absolute()
        if dry_run:
            say("info", f"Dry run (dispatch, systemd): {' '.join(argv)} (cwd {cwd or os.getcwd()})")
            return mk(session_id=session_id, ticket_id=ticket, status="launched", pid=None)
        private_dir = self.config.log_dir or (str(Path(logs_dir) / "sessions") if logs_dir is not None else None)
        try:
            spec = make_spec(self.config, argv, ticket, cwd, session_id, timeout_ms, private_dir)
        except ValueError as e:
            return failed(str(e), session_id)
        try:
            sup = self.supervisor
        except BusError as e:
            return failed(str(e), session_id)
        say("info", f'Dispatching: {" ".join(argv[:-1])} "{cmd}" (session: {session_id}, unit {spec.unit}, '
                    f"RuntimeMaxSec {spec.timeout:.0f}s)")
        d = sup.launch(spec)
        if d.result is not None:
            return failed(d.result.error or f"launch ended with {d.result.status}", session_id)
        assert d.pid is not None and d.log_path is not None
        t = _Tracked(d, session_id, pi_output)
        if out_path is not None:
            t.output_copy = output.link_output(Path(d.log_path), out_path, lambda m: say("warn", m))
            say("info", f"Pi output written to: {out_path}")
        elif pi_output == "inherit":
            say("info", f"Output of {ticket} (live): tail -f {d.log_path}; its end is shown here when it ends")
        self._track(d.pid, t)
        if ralph_dir is not None and self.registry is not None:
            t.ralph_dir = Path(ralph_dir)
            self.registry.register(t.ralph_dir, session_id, ticket, d.pid, cwd, logger)
        say("info", f"Dispatch launched with PID: {d.pid} in {d.unit}")
        return mk(session_id=session_id, ticket_id=ticket, status="launched", pid=d.pid, log_path=d.log_path,
                  unit=d.unit)

    def _track(self, pid: int, t: _Tracked) -> None:
        with self._lock:
            self._by_pid.pop(pid, None)  # a reused pid: the new dispatch wins
            self._by_pid[pid] = t
            done = [p for p, x in self._by_pid.items() if x.reported]
            for p in done[: max(0, len(done) - _FINISHED_KEPT)]:
                del self._by_pid[p]

    def _lookup(self, pid: int) -> _Tracked | None:
        """Our dispatch with this pid, or one adopted from a live ralph-* scope the pid lives in."""
        t = self._by_pid.get(pid)
        if t is not None:
            return t
        unit = unit_of_pid(pid)
        if unit is None:
            return None
        return self.adopt(unit, pid)

    def adopt(self, unit: str, pid: int | None = None, session_id: str | None = None) -> _Tracked | None:
        """Follow a live scope launched by another (maybe dead) Ralph; None if it is gone."""
        try:
            d = self.supervisor.attach(unit)
        except (LookupError, BusError):
            return None
        t = _Tracked(d, session_id or d.session or "", "discard")
        key = pid if pid is not None else d.pid
        if key is not None:
            self._track(key, t)
        return t

    # -- results ----------------------------------------------------------------------------------------------

    def _report(self, t: _Tracked) -> None:
        """Once per dispatch, when it is seen finished: copy its output where it was asked to go."""
        r = t.dispatch.result
        if t.reported or r is None or r.status is Status.RUNNING:
            return
        t.reported = True
        if r.log_path is None:
            return
        if t.output_copy is not None:
            output.copy_output(r.log_path, t.output_copy)
        if t.pi_output == "inherit" and self.config.inherit_tail_bytes > 0:
            output.echo_tail(r, self.config.inherit_tail_bytes)

    def _completion(self, t: _Tracked, ticket_id: str, r: NativeResult) -> Any:
        self._report(t)
        name, error = completion_fields(r)
        return self.types.make_completion(
            ticket_id=ticket_id, session_id=t.session_id, status=self.types.status[name], return_code=return_code(r),
            pid=r.pid, duration_ms=r.duration_s * 1000, termination_method=str(r.termination_method), error=error,
            log_path=r.log_path, detail=r)

    def _kill(self, d: Dispatch) -> None:
        """SIGKILL every process in the scope, now."""
        try:
            self.supervisor.kill(d, signal.SIGKILL)
        except BusError as e:
            log.debug("SIGKILL to %s: %s", d.unit, e)

    def _finish_stop(self, t: _Tracked, kill_wait_ms: float) -> NativeResult | None:
        """Wait for a stop in progress, with systemd's SIGKILL brought forward to kill_wait_ms if that is sooner
        than the grace the scope was made with. None if the scope would not empty even after SIGKILL."""
        sup, d = self.supervisor, t.dispatch
        try:
            return sup.wait(d, timeout=max(0.0, kill_wait_ms / 1000))
        except TimeoutError:
            pass
        self._kill(d)
        try:
            return sup.wait(d, timeout=KILL_WAIT_SLACK_S)
        except TimeoutError:
            return None

    def _stop(self, t: _Tracked, reason: Status, kill_wait_ms: float) -> NativeResult | None:
        self.supervisor.stop(t.dispatch, reason)
        return self._finish_stop(t, kill_wait_ms)

    # -- tf.ralph_completion -------------------------------------------------------------------------------------

    def poll_dispatch_status(self, pid: int) -> tuple[bool, int | None]:
        """(is_running, return_code) without blocking. A finished dispatch's code is 0 only for a real success:
        its own non-zero code, -N for signal N, 124 for a timeout, else UNKNOWN_RETURN_CODE."""
        t = self._lookup(pid)
        if t is None:
            return False, UNKNOWN_RETURN_CODE  # not a dispatch of ours: ended as far as we know, never success
        self.supervisor.poll()
        r = t.dispatch.result
        if r is None or r.status is Status.RUNNING:
            return True, None
        self._report(t)
        return False, poll_code(r)

    def graceful_terminate_dispatch(self, pid: int, session_id: str | None = None, logger: Any = None,
                                    kill_wait_ms: float = 5000.0, use_process_group: bool = True) -> tuple[bool, str]:
        """Stop a dispatch with the ladder; (True, how its session ended: "eof"/"sigterm"/"sigkill", or
        "not_running"), or (False, "failed"). The whole scope goes, whatever use_process_group says."""
        say = _Say(logger, None)
        t = self._lookup(pid)
        if t is None:
            if not os.path.exists(f"/proc/{pid}"):
                return True, "not_running"
            say("error", f"PID {pid} is not in a ralph-* scope: not ours to terminate")
            return False, "failed"
        if t.dispatch.result is not None:
            self._report(t)
            return True, "not_running"
        say("info", f"Attempting graceful termination for session {session_id or t.session_id} (PID: {pid})")
        r = self._stop(t, Status.STOPPED, kill_wait_ms)
        if r is None:
            say("error", f"{t.dispatch.unit} still has processes after SIGKILL (uninterruptible sleep?)")
            return False, "failed"
        self._report(t)
        return True, str(r.termination_method)

    def wait_for_dispatch_completion(self, dispatch_result: Any, ticket_id: str, timeout_ms: int = 0,
                                     poll_interval_ms: float = 1000.0, logger: Any = None,
                                     graceful_shutdown_ms: float = 5000.0) -> Any:
        """Block (no polling) until the dispatch ends. With timeout_ms, the ladder starts so that SIGTERM lands
        timeout_ms after the launch (EOF comes first, inside that budget), as systemd's RuntimeMaxSec does."""
        say = _Say(logger, ticket_id)
        session_id, pid = dispatch_result.session_id, dispatch_result.pid
        error = self.types.status["ERROR"]
        if not pid:
            msg = "Cannot wait for completion: no PID in dispatch result"
            say("error", msg)
            return self.types.make_completion(ticket_id=ticket_id, session_id=session_id, status=error, error=msg)
        t = self._lookup(pid)
        if t is None:
            msg = f"Cannot wait for completion: PID {pid} is not a dispatch of ours (not in a ralph-* scope)"
            say("error", msg)
            return self.types.make_completion(ticket_id=ticket_id, session_id=session_id, status=error, pid=pid,
                                              error=msg)
        d = t.dispatch
        say("info", f"Waiting for dispatch completion: session={session_id}, pid={pid}, unit={d.unit}")
        sup = self.supervisor
        try:
            if timeout_ms and timeout_ms > 0:
                start_ladder = d.started + timeout_ms / 1000 - d.eof_grace
                r = sup.wait(d, timeout=max(0.0, start_ladder - time.monotonic()))
            else:
                r = sup.wait(d)
        except TimeoutError:
            say("warn", f"Dispatch timeout after {timeout_ms}ms, initiating graceful termination")
            stopped = self._stop(t, Status.TIMEOUT, graceful_shutdown_ms + d.eof_grace * 1000)
            if stopped is None:
                return self.types.make_completion(ticket_id=ticket_id, session_id=session_id, status=error, pid=pid,
                                                  termination_method="failed",
                                                  error="Failed to terminate process after timeout")
            r = stopped
        c = self._completion(t, ticket_id, r)
        if r.status is Status.TIMEOUT and timeout_ms:
            c.error = f"Timeout after {timeout_ms}ms"
        level = "info" if c.status.name == "COMPLETED" else "warn"
        say(level, f"Dispatch {c.status.value} after {c.duration_ms:.0f}ms (exit: {c.return_code}, "
                   f"{c.termination_method}){': ' + c.error if c.error else ''}")
        return c

    # -- recovery ---------------------------------------------------------------------------------------------

    def recover_dispatches(self) -> list[Any]:
        """Re-attach to every live ralph-* scope of this user (e.g. left by a Ralph that was SIGKILLed) so that
        poll / wait / terminate work on their pids. Their exit codes are not ours to see: they end as ERROR,
        code unknown."""
        out = []
        for d in self.supervisor.attach_all():
            if d.pid is None or d.pid in self._by_pid:
                continue
            self._track(d.pid, _Tracked(d, d.session or "", "discard"))
            out.append(self.types.make_dispatch(session_id=d.session or "", ticket_id=d.ticket, status="launched",
                                                pid=d.pid, log_path=d.log_path, unit=d.unit))
        return out

    def recover_registered(self, ralph_dir: Path, logger: Any = None) -> list[tuple[str, NativeResult | None]]:
        """Before tf's startup recovery: every session tf's registry says is running and whose process still
        lives in a ralph-* scope (a Ralph SIGKILLed mid-dispatch) is re-attached and stopped with the ladder,
        the whole scope with it. tf's recovery then finds it dead and records it "orphaned" (and removes its
        worktree), as it does for its own; the ticket's name is free for the new dispatch."""
        if self.registry is None:
            return []
        say = _Say(logger, None)
        done: list[tuple[str, NativeResult | None]] = []
        for session_id, ticket, pid in self.registry.running(Path(ralph_dir), logger):
            if not pid:
                continue
            unit = unit_of_pid(pid)
            if unit is None:
                continue
            t = self._by_pid.get(pid) or self.adopt(unit, pid, session_id)
            if t is None or (t.dispatch.session not in (None, "", session_id)):
                continue  # not the session tf registered (pid reused inside another dispatch): leave it
            say("info", f"Recovering dispatch of {ticket} from an earlier Ralph (session {session_id}, {unit}): "
                        "stopping it with the ladder")
            r = t.dispatch.result or self._stop(t, Status.STOPPED, t.dispatch.grace * 1000)
            done.append((ticket, r))
        return done
