"""Launching one dispatch as one transaction: log file, gated child, scope, start job, gate, exec.

Every resource registers its undo on an ExitStack the moment it is acquired (the model is trio's
`_open_process`): the log file is unlinked, the child killed and reaped, the unit's ref dropped. The
launch spans several events of the loop (the scope's start job ends with a signal; the child reports its
exec on a pipe), so the stack lives in a `Launch` object until `commit()` dismisses it or `abort()` runs it.

The child is forked first and blocks on its gate pipe; only when the scope's start job is done (the child
is inside the scope) is the gate opened. It then execs; the close-on-exec error pipe gives EOF on
success, or the reason it failed.

Scope properties: KillMode=control-group plus Controller=<our bus name> (see README "Timeouts and
crashes"). While we are connected, a stop makes systemd send us Scope.RequestStop instead of SIGTERM and we
run the ladder (EOF when the session's stdin is our pipe, then SIGTERM); systemd SIGKILLs the cgroup after TimeoutStopSec regardless. If we are dead
the controller is gone and control-group still gives every process SIGTERM first, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ralph_systemd import instrument
from ralph_systemd.bus import Property, SystemdBus
from ralph_systemd.journal import journal_output
from ralph_systemd.logs import open_session_log
from ralph_systemd.scope import log_uri
from ralph_systemd.spawn import GatedChild, fork_gated, resolve_executable
from ralph_systemd.spec import DispatchSpec

US_PER_S = 1_000_000  # systemd's *USec properties are in microseconds


class LaunchError(Exception):
    """The dispatch could not be launched; the message says why (and nothing of it is left behind)."""


def scope_properties(spec: DispatchSpec, pid: int, controller: str, log_path: str,
                     pidfd: int | None = None) -> list[Property]:
    """The scope's properties. With `pidfd` (managers >= 255) the child is named by its pidfd, not its PID:
    if the PID were reused before the manager acts on it, a stranger could land in our scope; a pidfd
    refers to our child or to nothing (measured on 252/257: with a PID the manager moves the new owner of
    the PID into the scope; with a PIDFD the call fails)."""
    props: list[Property] = [
        ("Description", "s", spec.describe().encode()),
        # The log file, as a file:// URI: `systemctl --user status` shows it as "Docs:", and a new
        # supervisor re-attaching after our death reads it back from here.
        ("Documentation", "as", [log_uri(log_path).encode()]),
        ("Slice", "s", spec.slice.encode()),
        ("PIDFDs", "ah", [pidfd]) if pidfd is not None else ("PIDs", "au", [pid]),
        ("AddRef", "b", True),  # keep the unit (and its Result) until we Unref it
        ("CollectMode", "s", b"inactive-or-failed"),  # ...and then never leave it behind, failed or not
        ("KillMode", "s", b"control-group"),
        ("KillSignal", "i", 15),
        ("SendSIGKILL", "b", True),
        ("TimeoutStopUSec", "t", int(spec.grace * US_PER_S)),
        ("Controller", "s", controller.encode()),
    ]
    if spec.timeout is not None:
        props.append(("RuntimeMaxUSec", "t", max(1, int(spec.timeout * US_PER_S))))
    if spec.memory_max is not None:
        props.append(("MemoryMax", "t", spec.memory_max))
    if spec.tasks_max is not None:
        props.append(("TasksMax", "t", spec.tasks_max))
    if spec.cpu_quota is not None:
        props.append(("CPUQuotaPerSecUSec", "t", max(1000, int(spec.cpu_quota / 100 * US_PER_S))))
    return props


class Launch:
    """The launch of one spec, from nothing to a session that has exec'ed inside its scope."""

    def __init__(self, spec: DispatchSpec, bus: SystemdBus, *, use_pidfds: bool = False) -> None:
        self.spec = spec
        self._bus = bus
        self._use_pidfds = use_pidfds
        self._undo = contextlib.ExitStack()
        self.child: GatedChild | None = None
        self.log_path: str | None = None

    def start(self) -> str:
        """Log, fork, StartTransientUnit; the start job's path ("" if its reply was lost). LaunchError (after
        undoing everything) if any step fails; a BusError from StartTransientUnit propagates, also undone."""
        spec = self.spec
        try:
            instrument.mark("launch.begin", spec.unit)
            cwd = os.fspath(spec.cwd)
            if not os.path.isdir(cwd):
                raise LaunchError(f"working directory {cwd} does not exist (or is not a directory)")
            try:
                exe = resolve_executable(spec.argv[0], spec.environment.get("PATH"), cwd)
                assert spec.session is not None
                log_fd, log_path = open_session_log(spec.log_directory, spec.ticket, spec.session,
                                                    project=spec.project)
            except ValueError as e:
                raise LaunchError(str(e)) from None
            self._undo.callback(_unlink_quietly, log_path)
            self.log_path = str(log_path)
            instrument.mark("launch.log_opened", spec.unit)
            try:
                child = fork_gated(exe, tuple(spec.argv), cwd, spec.environment, log_fd,
                                   journal_output(spec.argv[0]) if spec.output == "journal" else None,
                                   stdin=spec.stdin)
            except OSError as e:
                raise LaunchError(f"could not start {spec.argv[0]!r}: {e}") from None
            finally:
                os.close(log_fd)
            self.child = child
            instrument.mark("launch.forked", spec.unit)
            self._undo.callback(child.abort)
            job = self._bus.start_transient_scope(
                spec.unit, scope_properties(spec, child.pid, self._bus.unique_name, self.log_path,
                                            child.pidfd if self._use_pidfds else None), pids=[child.pid])
            self._undo.callback(self._bus.unref_unit, spec.unit)
            return job
        except BaseException:
            self.abort()
            raise

    def open_gate(self) -> int:
        """The child is in its scope: let it exec. Returns the fd that reports the exec (see exec_failure)."""
        assert self.child is not None
        return self.child.open_gate()

    def exec_failure(self) -> str | None:
        """Once the exec-report fd is readable: None if the program started, else why it did not."""
        assert self.child is not None
        return self.child.exec_failure()

    def commit(self) -> GatedChild:
        """The session runs: keep everything (the caller owns the child's fds from now on)."""
        assert self.child is not None
        self._undo.pop_all()
        return self.child

    def abort(self) -> None:
        """Undo every step taken so far, newest first: drop the unit's ref, kill the child, remove the log."""
        self._undo.close()


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
