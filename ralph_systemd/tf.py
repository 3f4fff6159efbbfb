"""A drop-in execution backend for tf's Ralph loop (github.com/legout/pi-ticketflow), backed by scopes.

Same names and signatures as `tf/ralph.py` (`run_ticket_dispatch`, `DispatchResult`) and
`tf/ralph_completion.py` (`wait_for_dispatch_completion`, `poll_dispatch_status`,
`graceful_terminate_dispatch`, `DispatchCompletionStatus`, `DispatchCompletionResult`), read from tf v1.1.10.
Switch Ralph over either by import::

    from ralph_systemd.tf import run_ticket_dispatch, wait_for_dispatch_completion, poll_dispatch_status, \\
        graceful_terminate_dispatch, DispatchCompletionStatus

or by setting, with two lines of glue where Ralph loads its config (`.tf/ralph/config.json`)::

    {"executionBackend": "systemd", "systemd": {"agentCommand": ["pi"], "graceMs": 5000}}

    backend = ralph_systemd.tf.backend_from_config(config)   # None unless executionBackend == "systemd"
    backend.run_ticket_dispatch(...); backend.poll_dispatch_status(pid); ...

Keys of the "systemd" section (anything else is rejected, naming the key): agentCommand (program, or list of
program + leading args; no shell), logDir (private session logs), graceMs (EOF/SIGTERM to systemd's SIGKILL of
the cgroup, default 5000 = tf's kill_wait_ms), eofGraceMs (EOF to SIGTERM), idleTimeoutMs (stop after that
long with no output; 0 = off), slice, memoryMax, tasksMax, cpuQuota, inheritTailBytes (see "Output").
The environment variable RALPH_SYSTEMD_PI (a program path) overrides agentCommand, as tf's env vars override
its config.

Threading: tf calls these from one thread. Each thread gets its own Supervisor (one D-Bus connection,
one event loop), created on first use and kept in a thread-local; pids are looked up in that thread's
table, so call poll/wait/terminate from the thread that launched. In the main thread the supervisor is
closed at interpreter exit (atexit), stopping still-running dispatches with the ladder: that covers
Ralph's own SIGINT/SIGTERM handlers, which raise SystemExit. Other threads call `backend.close()`.

Differences from tf's original semantics (each one a fix found in review, or forced by scopes):

1. A finished session is never read as success without its exit code. The session is our child, reaped via
   its pidfd by the supervisor, so the code is exact. Where it cannot be known (re-attached after Ralph
   died, or a pid that was not ours) the status is ERROR with return_code None and an error saying so, and
   poll_dispatch_status returns UNKNOWN_RETURN_CODE (255), never None, which Ralph's parallel loop would
   count as success. tf read every ChildProcessError as (False, None) -> COMPLETED.
2. No polling. wait_for_dispatch_completion blocks on the event loop (pidfd + systemd's D-Bus signals);
   poll_interval_ms is accepted and unused. poll_dispatch_status is one non-blocking turn of that loop.
3. EOF first. A stop closes the session's stdin (EOF), SIGTERMs it after eofGraceMs, and systemd SIGKILLs
   the whole cgroup after graceMs, or sooner if graceful_shutdown_ms / kill_wait_ms is smaller.
   termination_method can also be "eof" and "unknown" (re-attached); tf had no EOF step.
4. No orphans. The whole scope is stopped, setsid'd double-forked daemons included; what a session leaves
   behind when its main process exits is killed (DispatchCompletionResult.detail.leftovers_killed).
   use_process_group is accepted and unused: tf's killpg missed anything that called setsid.
5. timeout_ms of run_ticket_dispatch is enforced by systemd (RuntimeMaxSec), even if Ralph dies; tf
   ignored it. If Ralph is SIGKILLed, its dispatches stay visible (`systemctl --user list-units 'ralph-*'`),
   bounded by their timeouts; `recover_dispatches()` re-attaches to them after a restart.
6. Output. Every mode keeps a private per-session log (0600, in a 0700 directory: logDir, else
   <logs_dir>/sessions, else ~/.local/state/ralph-systemd/logs). "file": the log is also hard-linked at
   pi_output_file (or <logs_dir>/<ticket>.log): live, same bytes (copied at completion instead if the two
   are on different filesystems); it is 0600 too. "inherit": tf sent the output to /dev/null; we log where
   it is at launch (tail -f it) and copy its last inheritTailBytes (default 64 KiB; 0 = off) to our stdout,
   framed with the ticket id, when the dispatch is reported finished. "discard": only the private log.
7. capture_json passes `--mode json` to pi as an option; tf appended it to the prompt text.
8. A session that exits at once is reported when it completes, with its exit code; "failed" at launch
   only means it could not start (program not found, no cwd, scope error, a live dispatch of the same
   ticket: one per ticket, enforced by the unit name).
9. Statuses: non-zero exit -> ERROR with return_code (as tf); stopped by graceful_terminate_dispatch or an
   operator -> TERMINATED (tf never produced it); idle timeout -> TIMEOUT; OOM kill -> ERROR.
   duration_ms counts from the launch, not from the start of the wait.
10. A pid we did not launch is adopted if it lives in a `ralph-*` scope (e.g. after a restart); otherwise
    it is refused: we never signal a process outside our scopes.
11. Left out: ralph_dir's dispatch-sessions.json (systemd's unit list is the registry), the /tf prompt
    check (Ralph's ensure_worktree_prompt does it before dispatching), and dry-run's output-path notes.
"""

from __future__ import annotations

import atexit
import enum
import logging
import os
import re
import shutil
import sys
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ralph_systemd.naming import UNIT_PREFIX, UNIT_SUFFIX
from ralph_systemd.result import DispatchResult as NativeResult
from ralph_systemd.result import Status
from ralph_systemd.retry import BusError
from ralph_systemd.spec import DEFAULT_SLICE, DispatchSpec
from ralph_systemd.dispatch import Dispatch
from ralph_systemd.supervisor import Supervisor

log = logging.getLogger("ralph_systemd.tf")

BACKEND_NAME = "systemd"
CONFIG_SECTION = "systemd"
ENV_AGENT = "RALPH_SYSTEMD_PI"
UNKNOWN_RETURN_CODE = 255  # an ended dispatch whose exit code we cannot vouch for: never 0, never None
KILL_WAIT_SLACK_S = 10.0  # after our SIGKILL, how long the cgroup may take to empty before we give up
_FINISHED_KEPT = 4096  # finished dispatches remembered per thread, for late polls and waits


# -- tf's types ----------------------------------------------------------------------------------------------


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
    status: DispatchCompletionStatus
    return_code: int | None = None
    pid: int | None = None
    duration_ms: float = 0.0
    termination_method: str = "natural"
    error: str | None = None
    log_path: str | None = None
    detail: NativeResult | None = None


# -- configuration ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendConfig:
    """The "systemd" section of Ralph's config, validated."""

    agent_command: tuple[str, ...] = ("pi",)
    log_dir: str | None = None
    grace_ms: float = 5000.0
    eof_grace_ms: float | None = None
    idle_timeout_ms: float = 0.0
    slice: str = DEFAULT_SLICE
    memory_max: int | None = None
    tasks_max: int | None = None
    cpu_quota: float | None = None
    inherit_tail_bytes: int = 64 * 1024

    def agent(self) -> tuple[str, ...]:
        """The agent's argv prefix: $RALPH_SYSTEMD_PI (a program) if set, else agentCommand."""
        env = os.environ.get(ENV_AGENT)
        return (env,) if env else self.agent_command


_KEYS = {"agentCommand": "agent_command", "logDir": "log_dir", "graceMs": "grace_ms", "eofGraceMs": "eof_grace_ms",
         "idleTimeoutMs": "idle_timeout_ms", "slice": "slice", "memoryMax": "memory_max", "tasksMax": "tasks_max",
         "cpuQuota": "cpu_quota", "inheritTailBytes": "inherit_tail_bytes"}


def _number(key: str, value: Any, *, integer: bool = False, positive: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value < 0 or (positive and value == 0):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"Ralph config {CONFIG_SECTION}.{key} must be {kind} {'> 0' if positive else '>= 0'}, "
                         f"got {value!r}")
    return value


def parse_config(section: Mapping[str, Any]) -> BackendConfig:
    """Validate the "systemd" section of Ralph's config; ValueError naming the first bad key."""
    if not isinstance(section, Mapping):
        raise ValueError(f"Ralph config {CONFIG_SECTION!r} must be an object, not {type(section).__name__}")
    kw: dict[str, Any] = {}
    for key, value in section.items():
        if key not in _KEYS:
            raise ValueError(f"unknown key {key!r} in Ralph config section {CONFIG_SECTION!r}; "
                             f"known keys: {', '.join(sorted(_KEYS))}")
        if key == "agentCommand":
            argv = [value] if isinstance(value, str) else value
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
                raise ValueError(f"Ralph config {CONFIG_SECTION}.agentCommand must be a program path or a "
                                 f"non-empty list of strings (no shell is used), got {value!r}")
            value = tuple(argv)
        elif key in ("logDir", "slice"):
            if not isinstance(value, str) or not value:
                raise ValueError(f"Ralph config {CONFIG_SECTION}.{key} must be a non-empty string, got {value!r}")
        elif key in ("memoryMax", "tasksMax", "inheritTailBytes"):
            _number(key, value, integer=True, positive=key != "inheritTailBytes")
        else:
            _number(key, value, positive=key in ("graceMs", "cpuQuota"))
        kw[_KEYS[key]] = value
    cfg = BackendConfig(**kw)
    try:  # the rest (eofGraceMs < graceMs, slice name, ...) exactly as a launch would check it
        _spec(cfg, ["true"], "config-check", None, None, 0)
    except ValueError as e:
        raise ValueError(f"Ralph config section {CONFIG_SECTION!r}: {e}") from None
    return cfg


def backend_from_config(config: Mapping[str, Any]) -> SystemdBackend | None:
    """The backend Ralph's config asks for: a SystemdBackend if executionBackend is "systemd", else None
    (Ralph keeps its own). ValueError for a bad "systemd" section."""
    if config.get("executionBackend") != BACKEND_NAME:
        if CONFIG_SECTION in config:
            parse_config(config[CONFIG_SECTION])  # still say so if it is wrong
        return None
    return SystemdBackend(parse_config(config.get(CONFIG_SECTION, {})))


def _spec(cfg: BackendConfig, argv: Sequence[str], ticket: str, cwd: str | os.PathLike[str] | None,
          session: str | None, timeout_ms: float, log_dir: str | os.PathLike[str] | None = None) -> DispatchSpec:
    return DispatchSpec(
        argv=argv, ticket=ticket, cwd=cwd if cwd is not None else os.getcwd(), session=session,
        timeout=timeout_ms / 1000 if timeout_ms else None,
        idle_timeout=cfg.idle_timeout_ms / 1000 if cfg.idle_timeout_ms else None,
        grace=cfg.grace_ms / 1000, eof_grace=None if cfg.eof_grace_ms is None else cfg.eof_grace_ms / 1000,
        log_dir=log_dir if log_dir is not None else cfg.log_dir, slice=cfg.slice, memory_max=cfg.memory_max,
        tasks_max=cfg.tasks_max, cpu_quota=cfg.cpu_quota)


# -- helpers ------------------------------------------------------------------------------------------------------


class _Say:
    """Log through Ralph's logger (RalphLogger: info/warn/error(msg, ticket=...)) or a stdlib one; without
    one, to stderr like tf's default logger."""

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


def build_cmd(workflow: str, ticket: str, flags: str) -> str:
    """tf's build_cmd: the prompt `<workflow> <ticket> <flags>`; ValueError for an unsafe ticket id."""
    if not re.match(r"^[a-zA-Z0-9_-]+$", ticket):
        raise ValueError(f"Invalid ticket ID format: {ticket}")
    cmd = f"{workflow} {ticket}".strip()
    return f"{cmd} {flags}".strip() if flags else cmd


def _return_code(r: NativeResult) -> int | None:
    """tf's convention: the exit code, or -N if killed by signal N."""
    if r.exit_code is not None:
        return r.exit_code
    return -r.signal if r.signal is not None else None


def _poll_code(r: NativeResult) -> int:
    """What poll_dispatch_status reports for a finished dispatch: 0 only for a real success."""
    if r.status is Status.COMPLETED:
        return 0
    code = _return_code(r)
    if code not in (None, 0):
        assert code is not None
        return code
    return 124 if r.status in (Status.TIMEOUT, Status.IDLE_TIMEOUT) else UNKNOWN_RETURN_CODE


def _unit_of_pid(pid: int) -> str | None:
    """The ralph-* scope a process lives in (from /proc/PID/cgroup), or None."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name = line.rsplit("/", 1)[-1]
        if name.startswith(UNIT_PREFIX) and name.endswith(UNIT_SUFFIX):
            return name
    return None


@dataclass
class _Tracked:
    dispatch: Dispatch
    session_id: str
    pi_output: str
    output_copy: Path | None = None  # "file" mode on another filesystem: copy the log there at the end
    reported: bool = False  # the finish has been handled (inherit echo, copy)


@dataclass
class _ThreadState:
    supervisor: Supervisor
    by_pid: OrderedDict[int, _Tracked] = field(default_factory=OrderedDict)


# -- the backend ---------------------------------------------------------------------------------------------------


class SystemdBackend:
    """tf's dispatch functions over scopes, with one Supervisor per calling thread."""

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config or BackendConfig()
        self._local = threading.local()

    def _state(self) -> _ThreadState:
        st: _ThreadState | None = getattr(self._local, "state", None)
        if st is None:
            st = _ThreadState(Supervisor())
            self._local.state = st
            if threading.current_thread() is threading.main_thread():
                atexit.register(self._close_state, st)
        return st

    def close(self) -> None:
        """Stop (with the ladder) and wait for this thread's running dispatches; drop its bus connection."""
        st = getattr(self._local, "state", None)
        if st is not None:
            self._local.state = None
            self._close_state(st)

    def _close_state(self, st: _ThreadState) -> None:
        try:
            st.supervisor.close(stop_running=True)
        except RuntimeError:
            pass  # already closed, or atexit from another thread
        for t in st.by_pid.values():
            self._report(t)

    # -- launch -------------------------------------------------------------------------------------------------

    def run_ticket_dispatch(
        self, ticket: str, workflow: str, flags: str, dry_run: bool, cwd: Path | None = None, logger: Any = None,
        mode: str = "serial", capture_json: bool = False, logs_dir: Path | None = None,
        ticket_title: str | None = None, pi_output: str = "inherit", pi_output_file: str | None = None,
        timeout_ms: int = 0, ralph_dir: Path | None = None,
    ) -> DispatchResult:
        """Launch `pi -p "<workflow> <ticket> <flags> --auto"` in cwd, in its own scope; return at once."""
        say = _Say(logger, ticket or None)
        if not ticket:
            say("error", "No ticket specified")
            return DispatchResult(session_id="", ticket_id="", status="failed", error="No ticket specified")

        def failed(msg: str, session_id: str = "") -> DispatchResult:
            say("error", f"Failed to launch dispatch: {msg}")
            return DispatchResult(session_id=session_id, ticket_id=ticket, status="failed", error=msg)

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
            return DispatchResult(session_id=session_id, ticket_id=ticket, status="launched", pid=None)
        private_dir = self.config.log_dir or (str(Path(logs_dir) / "sessions") if logs_dir is not None else None)
        try:
            spec = _spec(self.config, argv, ticket, cwd, session_id, timeout_ms, private_dir)
        except ValueError as e:
            return failed(str(e), session_id)
        try:
            st = self._state()
        except BusError as e:
            return failed(str(e), session_id)
        say("info", f'Dispatching: {" ".join(argv[:-1])} "{cmd}" (session: {session_id}, unit {spec.unit})')
        d = st.supervisor.launch(spec)
        if d.result is not None:
            return failed(d.result.error or f"launch ended with {d.result.status}", session_id)
        assert d.pid is not None and d.log_path is not None
        t = _Tracked(d, session_id, pi_output)
        if out_path is not None:
            t.output_copy = self._link_output(Path(d.log_path), out_path, say)
            say("info", f"Pi output written to: {out_path}")
        elif pi_output == "inherit":
            say("info", f"Output of {ticket} (live): tail -f {d.log_path}; shown here when it ends")
        self._track(st, d.pid, t)
        say("info", f"Dispatch launched with PID: {d.pid} in {d.unit}")
        return DispatchResult(session_id=session_id, ticket_id=ticket, status="launched", pid=d.pid,
                              log_path=d.log_path, unit=d.unit)

    @staticmethod
    def _link_output(log_path: Path, target: Path, say: _Say) -> Path | None:
        """Make `target` a hard link to the session log (live output); None when done, else the path to copy
        the log to at completion (another filesystem, or links not allowed)."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            os.link(log_path, tmp)
            os.replace(tmp, target)  # replaces an old log like tf's open(..., "w") did
            return None
        except OSError as e:
            say("warn", f"cannot link {target} to the session log ({e.strerror}); it is copied there at the end")
            return target

    def _track(self, st: _ThreadState, pid: int, t: _Tracked) -> None:
        st.by_pid.pop(pid, None)  # a reused pid: the new dispatch wins
        st.by_pid[pid] = t
        done = [p for p, x in st.by_pid.items() if x.reported]
        for p in done[: max(0, len(done) - _FINISHED_KEPT)]:
            del st.by_pid[p]

    def _lookup(self, pid: int) -> _Tracked | None:
        """Our dispatch with this pid, or one adopted from a live ralph-* scope the pid lives in."""
        st = self._state()
        t = st.by_pid.get(pid)
        if t is not None:
            return t
        unit = _unit_of_pid(pid)
        if unit is None:
            return None
        try:
            d = st.supervisor.attach(unit)
        except (LookupError, BusError):
            return None
        t = _Tracked(d, d.session or "", "discard")
        self._track(st, pid, t)
        return t

    # -- results ----------------------------------------------------------------------------------------------------

    def _report(self, t: _Tracked) -> None:
        """Once per dispatch, when it is seen finished: copy its output where it was asked to go."""
        r = t.dispatch.result
        if t.reported or r is None or r.status is Status.RUNNING:
            return
        t.reported = True
        if r.log_path is None:
            return
        if t.output_copy is not None:
            try:
                shutil.copyfile(r.log_path, t.output_copy)
            except OSError as e:
                log.warning("could not copy %s to %s: %s", r.log_path, t.output_copy, e)
        if t.pi_output == "inherit" and self.config.inherit_tail_bytes > 0:
            self._echo(r, self.config.inherit_tail_bytes)

    @staticmethod
    def _echo(r: NativeResult, limit: int) -> None:
        assert r.log_path is not None
        try:
            with open(r.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - limit))
                data = f.read()
        except OSError as e:
            print(f"----- {r.ticket}: output log {r.log_path} unreadable: {e}", flush=True)
            return
        cut = f" (last {len(data)} of {size} bytes)" if size > len(data) else ""
        out = sys.stdout
        out.write(f"----- {r.ticket} output{cut}: {r.log_path}\n")
        out.write(data.decode(errors="replace"))
        if data and not data.endswith(b"\n"):
            out.write("\n")
        out.write(f"----- end of {r.ticket} ({r.status})\n")
        out.flush()

    def _completion(self, t: _Tracked, ticket_id: str, r: NativeResult) -> DispatchCompletionResult:
        self._report(t)
        status = DispatchCompletionStatus.ERROR
        error: str | None = r.error
        if r.status is Status.COMPLETED:
            status, error = DispatchCompletionStatus.COMPLETED, None
        elif r.status is Status.FAILED:
            error = (f"Process exited with code {r.exit_code}" if r.exit_code is not None
                     else f"Process killed by {r.signal_name}")
        elif r.status is Status.TIMEOUT:
            status, error = DispatchCompletionStatus.TIMEOUT, error or "Timeout (wall-clock limit)"
        elif r.status is Status.IDLE_TIMEOUT:
            status, error = DispatchCompletionStatus.TIMEOUT, error or "Idle timeout (no output)"
        elif r.status is Status.STOPPED:
            status, error = DispatchCompletionStatus.TERMINATED, error or "Terminated on request"
        elif r.status is Status.RUNNING:
            status = DispatchCompletionStatus.RUNNING
        elif r.status is Status.OOM:
            error = "Killed by the kernel's OOM killer"
        elif r.status is Status.UNKNOWN:
            error = "Process ended; its exit code is unknown (not our child: re-attached)"
        return DispatchCompletionResult(
            ticket_id=ticket_id, session_id=t.session_id, status=status, return_code=_return_code(r), pid=r.pid,
            duration_ms=r.duration_s * 1000, termination_method=str(r.termination_method), error=error,
            log_path=r.log_path, detail=r)

    def _stop(self, t: _Tracked, reason: Status, kill_wait_ms: float) -> NativeResult | None:
        """The ladder, with systemd's SIGKILL brought forward to kill_wait_ms if that is sooner than the grace
        the scope was made with. None if the scope would not empty even after SIGKILL."""
        sup, d = self._state().supervisor, t.dispatch
        sup.stop(d, reason)
        try:
            return sup.wait(d, timeout=max(0.0, kill_wait_ms / 1000))
        except TimeoutError:
            pass
        sup.kill(d, 9)
        try:
            return sup.wait(d, timeout=KILL_WAIT_SLACK_S)
        except TimeoutError:
            return None

    # -- tf.ralph_completion -------------------------------------------------------------------------------------------

    def poll_dispatch_status(self, pid: int) -> tuple[bool, int | None]:
        """(is_running, return_code) without blocking. A finished dispatch's code is 0 only for a real success:
        its own non-zero code, -N for signal N, 124 for a timeout, else UNKNOWN_RETURN_CODE."""
        t = self._lookup(pid)
        if t is None:
            return False, UNKNOWN_RETURN_CODE  # not a dispatch of ours: ended as far as we know, never success
        self._state().supervisor.poll()
        r = t.dispatch.result
        if r is None or r.status is Status.RUNNING:
            return True, None
        self._report(t)
        return False, _poll_code(r)

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
                                     graceful_shutdown_ms: float = 5000.0) -> DispatchCompletionResult:
        """Block (no polling) until the dispatch ends, or stop it with the ladder once timeout_ms have passed."""
        say = _Say(logger, ticket_id)
        session_id, pid = dispatch_result.session_id, dispatch_result.pid
        if not pid:
            msg = "Cannot wait for completion: no PID in dispatch result"
            say("error", msg)
            return DispatchCompletionResult(ticket_id, session_id, DispatchCompletionStatus.ERROR, error=msg)
        t = self._lookup(pid)
        if t is None:
            msg = f"Cannot wait for completion: PID {pid} is not a dispatch of ours (not in a ralph-* scope)"
            say("error", msg)
            return DispatchCompletionResult(ticket_id, session_id, DispatchCompletionStatus.ERROR, pid=pid, error=msg)
        say("info", f"Waiting for dispatch completion: session={session_id}, pid={pid}, unit={t.dispatch.unit}")
        sup = self._state().supervisor
        try:
            r = sup.wait(t.dispatch, timeout=timeout_ms / 1000 if timeout_ms and timeout_ms > 0 else None)
        except TimeoutError:
            say("warn", f"Dispatch timeout after {timeout_ms}ms, initiating graceful termination")
            stopped = self._stop(t, Status.TIMEOUT, graceful_shutdown_ms)
            if stopped is None:
                return DispatchCompletionResult(ticket_id, session_id, DispatchCompletionStatus.ERROR, pid=pid,
                                                termination_method="failed",
                                                error="Failed to terminate process after timeout")
            r = stopped
        c = self._completion(t, ticket_id, r)
        if c.status is DispatchCompletionStatus.TIMEOUT and r.status is Status.TIMEOUT and timeout_ms:
            c.error = f"Timeout after {timeout_ms}ms"
        level = "info" if c.status is DispatchCompletionStatus.COMPLETED else "warn"
        say(level, f"Dispatch {c.status.value} after {c.duration_ms:.0f}ms (exit: {c.return_code}, "
                   f"{c.termination_method}){': ' + c.error if c.error else ''}")
        return c

    def recover_dispatches(self) -> list[DispatchResult]:
        """Re-attach to every live ralph-* scope (e.g. left by a Ralph that was SIGKILLed) so that poll / wait /
        terminate work on their pids. Their exit codes are not ours to see: they end as ERROR, code unknown."""
        st = self._state()
        out = []
        for d in st.supervisor.attach_all():
            if d.pid is None or d.pid in st.by_pid:
                continue
            self._track(st, d.pid, _Tracked(d, d.session or "", "discard"))
            out.append(DispatchResult(session_id=d.session or "", ticket_id=d.ticket, status="launched", pid=d.pid,
                                      log_path=d.log_path, unit=d.unit))
        return out


# -- module-level functions: the default backend, configured from the environment -------------------------------

_default: SystemdBackend | None = None
_default_lock = threading.Lock()


def default_backend() -> SystemdBackend:
    """The backend behind the module-level functions (agent: $RALPH_SYSTEMD_PI or `pi`)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SystemdBackend()
        return _default


def run_ticket_dispatch(ticket: str, workflow: str, flags: str, dry_run: bool, cwd: Path | None = None,
                        logger: Any = None, mode: str = "serial", capture_json: bool = False,
                        logs_dir: Path | None = None, ticket_title: str | None = None, pi_output: str = "inherit",
                        pi_output_file: str | None = None, timeout_ms: int = 0,
                        ralph_dir: Path | None = None) -> DispatchResult:
    return default_backend().run_ticket_dispatch(
        ticket, workflow, flags, dry_run, cwd=cwd, logger=logger, mode=mode, capture_json=capture_json,
        logs_dir=logs_dir, ticket_title=ticket_title, pi_output=pi_output, pi_output_file=pi_output_file,
        timeout_ms=timeout_ms, ralph_dir=ralph_dir)


def wait_for_dispatch_completion(dispatch_result: Any, ticket_id: str, timeout_ms: int = 0,
                                 poll_interval_ms: float = 1000.0, logger: Any = None,
                                 graceful_shutdown_ms: float = 5000.0) -> DispatchCompletionResult:
    return default_backend().wait_for_dispatch_completion(
        dispatch_result, ticket_id, timeout_ms=timeout_ms, poll_interval_ms=poll_interval_ms, logger=logger,
        graceful_shutdown_ms=graceful_shutdown_ms)


def poll_dispatch_status(pid: int) -> tuple[bool, int | None]:
    return default_backend().poll_dispatch_status(pid)


def graceful_terminate_dispatch(pid: int, session_id: str | None = None, logger: Any = None,
                                kill_wait_ms: float = 5000.0, use_process_group: bool = True) -> tuple[bool, str]:
    return default_backend().graceful_terminate_dispatch(pid, session_id=session_id, logger=logger,
                                                         kill_wait_ms=kill_wait_ms,
                                                         use_process_group=use_process_group)


def recover_dispatches() -> list[DispatchResult]:
    return default_backend().recover_dispatches()


__all__ = ["BACKEND_NAME", "ENV_AGENT", "UNKNOWN_RETURN_CODE", "BackendConfig", "DispatchCompletionResult",
           "DispatchCompletionStatus", "DispatchResult", "SystemdBackend", "backend_from_config", "build_cmd",
           "default_backend", "graceful_terminate_dispatch", "parse_config", "poll_dispatch_status",
           "recover_dispatches", "run_ticket_dispatch", "wait_for_dispatch_completion"]
