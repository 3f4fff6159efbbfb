"""A Dispatch's transitions, driven by a scripted manager and an injected clock: no sleeping, no systemd.

The session is a real child process (so EOF, SIGTERM and reaping are real), but every "the manager says"
is scripted, and time moves only when the test moves it. What is asserted is the outcome: the process got
EOF/SIGTERM (or is gone), the status and termination method, what we asked the manager to do.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from ralph_systemd.bus import Property, UnitState
from ralph_systemd.dispatch import STUCK_AFTER_S, Dispatch
from ralph_systemd.lifecycle import Line
from ralph_systemd.states import State, Timer
from ralph_systemd.timers import TimerQueue
from ralph_systemd.manager_features import features
from ralph_systemd.result import DispatchResult, Status, Termination
from ralph_systemd.spec import DispatchSpec

from fakes import NullBus
from fakes import unit_state as fake_unit_state


class ScriptedBus(NullBus):
    """The manager, as the test scripts it: records what we asked; says what the test set."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self.active = "active"
        self.result = "success"
        self.refs: set[str] = set()

    def start_transient_scope(self, name: str, properties: Sequence[Property], pids: Sequence[int] = ()) -> str:
        self.calls.append(("start", name))
        self.properties = {prop: value for prop, _, value in properties}
        self.refs.add(name)
        return "/job/1"

    def stop_unit(self, name: str) -> None:
        self.calls.append(("stop", name))

    def kill_unit(self, name: str, who: str, signum: int) -> None:  # type: ignore[override]
        self.calls.append(("kill", f"{who}:{signum}"))

    def unref_unit(self, name: str) -> None:
        self.calls.append(("unref", name))
        self.refs.discard(name)

    def unit_outcome(self, name: str) -> tuple[str, str, str]:
        return self.active, self.result, "ab" * 16

    def unit_state(self, name: str) -> UnitState:
        return fake_unit_state(name, active_state=self.active, result=self.result)


class ScriptedHost:
    """The loop around a Dispatch: a clock the test moves, readers the test fires."""

    def __init__(self, version: str = "252.39-1~deb12u1") -> None:
        self.bus = ScriptedBus()
        self.features = features(version)
        self.clock = 1000.0
        self.readers: dict[int, Callable[[], None]] = {}
        self.orphans: dict[int, int] = {}
        self.watches: dict[int, Callable[[], None]] = {}
        self.events: list[str] = []
        self.timers = TimerQueue()

    def now(self) -> float:
        return self.clock

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def adopt_orphan(self, pidfd: int, pid: int) -> None:
        self.orphans[pidfd] = pid

    def watch_file(self, path: Path, callback: Callable[[], None]) -> int:
        self.watches[len(self.watches) + 1] = callback
        return len(self.watches)

    def unwatch_file(self, handle: int) -> None:
        self.watches.pop(handle, None)

    def changed(self, d: Dispatch) -> None:
        pass

    def lifecycle(self, d: Dispatch, line: Line) -> None:
        self.events.append(str(line.event))

    def fire_when_readable(self, fd: int, timeout: float = 10.0) -> None:
        """Block until fd is readable (a real event: the child exec'ed or exited), then run its callback."""
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"fd {fd} never became readable"
        self.readers[fd]()

    def advance(self, d: Dispatch, seconds: float) -> None:  # noqa: ARG002 (d: the dispatch the test watches)
        self.clock += seconds
        self.timers.fire_due(self.clock)


class NoOwner:
    def stop(self, d: Dispatch, reason: Status = Status.STOPPED) -> None:
        raise AssertionError("not used")

    def wait(self, d: Dispatch, timeout: float | None = None) -> DispatchResult:
        raise AssertionError("not used")


def launched(tmp_path: Path, argv: list[str], **kw: object) -> tuple[ScriptedHost, Dispatch]:
    """A dispatch of argv, running (exec'ed) as far as the scripted manager is concerned."""
    host = ScriptedHost()
    spec = DispatchSpec(argv=argv, ticket="t-1", cwd=tmp_path, log_dir=tmp_path / "logs", **kw)  # type: ignore[arg-type]
    d = Dispatch(host, NoOwner(), ticket=spec.ticket, session=spec.session, unit=spec.unit, spec=spec)
    d.start_launch()
    assert d.state is State.STARTING and d.pid is not None
    d.on_job_removed("/job/1", "done")
    assert d.state is State.RUNNING, d.result  # in its scope and released: launch() returns here
    exec_fd = d._exec_fd
    assert exec_fd is not None
    host.fire_when_readable(exec_fd)  # the exec is confirmed a moment later
    assert d.result is None and d._exec_fd is None
    return host, d


def pidfd_of(d: Dispatch) -> int:
    assert d.child is not None
    return d.child.pidfd


def test_the_ladder_sends_eof_then_sigterm_on_time_and_the_verdict_is_the_timeout(tmp_path: Path) -> None:
    host, d = launched(tmp_path, ["sleep", "60"], timeout=30, grace=10, stdin="pipe", eof_grace=2)
    host.clock += 30  # RuntimeMaxSec is due: the manager's RequestStop is the wall timeout firing
    d.on_request_stop()
    assert d.stop_reason is Status.TIMEOUT and d.step is Termination.EOF
    assert d.child is not None and d.child.stdin_w is None  # EOF: our end of its stdin is closed
    assert d.deadline(Timer.SIGTERM) == pytest.approx(host.clock + 2)
    host.advance(d, 1.9)
    assert d.step is Termination.EOF  # not yet
    host.advance(d, 0.2)
    assert d.step is Termination.SIGTERM
    host.fire_when_readable(pidfd_of(d))  # `sleep` dies of the SIGTERM for real
    assert d.main_exited and d.exit_signal == signal.SIGTERM
    host.bus.active, host.bus.result = "failed", "timeout"
    d.on_unit_changed({"ActiveState": "failed"})
    r = d.result
    assert r is not None and (r.status, r.termination_method, r.systemd_result) == (
        Status.TIMEOUT, Termination.SIGTERM, "timeout")
    assert host.events == ["launched", "stop-requested", "eof", "sigterm", "result"]
    assert ("unref", d.unit) in host.bus.calls and not host.readers


def test_a_session_that_exits_on_eof_is_stopped_by_eof(tmp_path: Path) -> None:
    host, d = launched(tmp_path, ["cat"], grace=10, stdin="pipe", eof_grace=2)
    d.on_request_stop()  # an operator's stop: no timeout was set
    host.fire_when_readable(pidfd_of(d))  # cat exits 0 on EOF
    assert d.exit_code == 0 and d.main_exit_step is Termination.EOF
    host.bus.active = "inactive"
    d.on_unit_changed({"ActiveState": "inactive"})
    assert d.result is not None and (d.result.status, d.result.termination_method) == (Status.STOPPED, Termination.EOF)
    assert d.result.exit_status_for_shell() == 143  # stopped: never 0, whatever cat returned


def test_a_stop_that_arrives_while_starting_runs_the_ladder_the_moment_the_session_runs(tmp_path: Path) -> None:
    host = ScriptedHost()
    spec = DispatchSpec(argv=["sleep", "60"], ticket="t-early", cwd=tmp_path, log_dir=tmp_path / "logs",
                        timeout=1e-6, grace=5, stdin="pipe", eof_grace=0.5)
    d = Dispatch(host, NoOwner(), ticket=spec.ticket, session=spec.session, unit=spec.unit, spec=spec)
    d.start_launch()
    d.on_request_stop()  # RuntimeMaxSec=1us fired before we saw the start job end: not lost
    assert d.state is State.STARTING and d.stop_reason is Status.TIMEOUT and d.step is Termination.NATURAL
    d.on_job_removed("/job/1", "done")
    assert d.state is State.STOPPING and d.step is Termination.EOF  # the ladder starts the moment it runs
    host.advance(d, 0.5)
    assert d.step is Termination.SIGTERM
    host.fire_when_readable(pidfd_of(d))
    host.bus.active, host.bus.result = "failed", "timeout"
    d.on_unit_changed({"ActiveState": "failed"})
    assert d.result is not None and (d.result.status, d.result.termination_method) == (
        Status.TIMEOUT, Termination.SIGTERM)


def test_idle_timeout_looks_at_the_log_once_per_idle_period(tmp_path: Path) -> None:
    host, d = launched(tmp_path, ["sleep", "60"], idle_timeout=10, grace=5)
    assert d.log_path is not None
    host.advance(d, 10)  # the log was written "just now" (its real mtime): sleep again, not stop
    assert ("stop", d.unit) not in host.bus.calls
    deadline = d.deadline(Timer.IDLE)
    assert deadline is not None and deadline > host.clock + 9
    past = time.time() - 60
    os.utime(d.log_path, (past, past))  # nothing written for a minute
    host.advance(d, deadline - host.clock)
    assert d.stop_reason is Status.IDLE_TIMEOUT and ("stop", d.unit) in host.bus.calls
    d.on_request_stop()  # the manager's answer to our StopUnit
    assert d.step is Termination.SIGTERM  # stdin is /dev/null by default: no EOF step
    d.close()


@pytest.mark.parametrize("stdin", ["null", b"a prompt\n", "file"])
def test_without_a_pipe_the_ladder_starts_with_sigterm_and_never_says_eof(tmp_path: Path, stdin: object) -> None:
    if stdin == "file":
        (tmp_path / "in.txt").write_text("input\n")
        stdin = tmp_path / "in.txt"
    # `cat` ends at once at the end of its input; `sh -c 'cat; sleep'` reads it, then waits for the stop
    host, d = launched(tmp_path, ["sh", "-c", "cat; exec sleep 60"], timeout=30, grace=10, stdin=stdin)
    assert d.child is not None and d.child.stdin_w is None  # nothing of ours to hold open, or to close
    host.clock += 30
    d.on_request_stop()  # RuntimeMaxSec fired
    assert d.stop_reason is Status.TIMEOUT and d.step is Termination.SIGTERM  # at once: no EOF grace
    host.fire_when_readable(pidfd_of(d))
    assert d.main_exited and d.exit_signal == signal.SIGTERM
    host.bus.active, host.bus.result = "failed", "timeout"
    d.on_unit_changed({"ActiveState": "failed"})
    r = d.result
    assert r is not None and (r.status, r.termination_method) == (Status.TIMEOUT, Termination.SIGTERM)
    assert "eof" not in host.events and host.events == ["launched", "stop-requested", "sigterm", "result"]


def test_a_main_process_that_outlives_its_scope_is_reported_stuck_and_handed_over_for_reaping(tmp_path: Path) -> None:
    # deaf to SIGTERM (ignored signals survive exec), as a process in uninterruptible sleep is to SIGKILL;
    # it says so through a FIFO once the trap is set, so our SIGTERM cannot come before it
    fifo = tmp_path / "ready"
    os.mkfifo(fifo)
    host, d = launched(tmp_path, ["sh", "-c", f"trap '' TERM; echo ready > {fifo}; exec sleep 60"],
                       timeout=1, grace=1)
    assert fifo.read_text() == "ready\n"
    pid, pidfd = d.pid, pidfd_of(d)
    host.clock += 1
    d.on_request_stop()
    host.bus.active, host.bus.result = "failed", "timeout"
    d.on_unit_changed({"ActiveState": "failed"})  # systemd gave up on it ("Still around after SIGKILL")
    assert d.result is None
    host.advance(d, STUCK_AFTER_S - 0.01)
    assert d.result is None
    host.advance(d, 0.02)
    r = d.result
    assert r is not None and r.status is Status.TIMEOUT and r.termination_method is Termination.UNKNOWN
    assert r.error and "still alive" in r.error and str(pid) in r.error
    assert host.orphans == {pidfd: pid}  # the loop reaps it whenever it exits
    os.kill(pid or 0, signal.SIGKILL)
    os.waitpid(pid or 0, 0)
    os.close(pidfd)


def test_a_failed_start_job_leaves_nothing_behind(tmp_path: Path) -> None:
    host = ScriptedHost()
    spec = DispatchSpec(argv=["sleep", "60"], ticket="t-fail", cwd=tmp_path, log_dir=tmp_path / "logs")
    d = Dispatch(host, NoOwner(), ticket=spec.ticket, session=spec.session, unit=spec.unit, spec=spec)
    d.start_launch()
    pid = d.pid
    d.on_job_removed("/job/1", "failed")
    assert d.result is not None and d.result.status is Status.ERROR and "failed" in (d.result.error or "")
    assert not list((tmp_path / "logs").iterdir()), "the log file of a launch that failed must be removed"
    with pytest.raises(ChildProcessError):
        os.waitpid(pid or 0, os.WNOHANG)  # killed and reaped
    assert ("unref", spec.unit) in host.bus.calls and not host.readers


def test_an_exec_failure_after_launch_returned_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    prog = tmp_path / "prog"
    prog.write_text("#!/nonexistent/interpreter\n")  # passes the pre-flight check, fails in execve
    prog.chmod(0o755)
    host = ScriptedHost()
    spec = DispatchSpec(argv=[str(prog)], ticket="t-exec", cwd=tmp_path, log_dir=tmp_path / "logs")
    d = Dispatch(host, NoOwner(), ticket=spec.ticket, session=spec.session, unit=spec.unit, spec=spec)
    d.start_launch()
    d.on_job_removed("/job/1", "done")
    assert d.state is State.RUNNING
    host.fire_when_readable(pidfd_of(d))  # even if the child's exit is seen first, the exec report decides
    r = d.result
    assert r is not None and r.status is Status.ERROR and "did not start" in (r.error or "")
    assert r.exit_status_for_shell() == 125 and r.log_path is None
    assert not list((tmp_path / "logs").iterdir()) and not host.readers
    assert ("unref", spec.unit) in host.bus.calls


def test_detach_frees_every_fd(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    host, d = launched(tmp_path, ["sleep", "60"], grace=1)
    d.on_request_stop()
    host.bus.active = "deactivating"
    d.on_unit_changed({"ActiveState": "deactivating"})
    pid = d.pid
    d.detach()
    assert d.result is not None and d.result.status is Status.RUNNING and not host.readers
    host.bus.close()  # the scripted bus's own pipe
    assert len(os.listdir("/proc/self/fd")) == before
    os.kill(pid or 0, signal.SIGKILL)
    os.waitpid(pid or 0, 0)


def test_forged_events_for_units_we_do_not_follow_change_nothing(tmp_path: Path) -> None:
    """The bus layer drops signals not sent by the manager (tested against the real bus); a Dispatch that is
    done ignores anything late."""
    host, d = launched(tmp_path, ["true"])
    host.fire_when_readable(pidfd_of(d))
    host.bus.active = "inactive"
    d.on_unit_changed({"ActiveState": "inactive"})
    assert d.result is not None and d.result.status is Status.COMPLETED
    d.on_request_stop()
    d.on_unit_changed({"ActiveState": "failed"})
    assert d.result.status is Status.COMPLETED and d.stop_reason is None



@pytest.mark.parametrize("version, by_pidfd", [("252.39-1~deb12u1", False), ("257.13-1", True)])
def test_the_child_is_named_by_pidfd_where_the_manager_takes_one(tmp_path: Path, version: str, by_pidfd: bool) -> None:
    host = ScriptedHost(version)
    spec = DispatchSpec(argv=["sleep", "60"], ticket="t-pidfd", cwd=tmp_path, log_dir=tmp_path / "logs")
    d = Dispatch(host, NoOwner(), ticket=spec.ticket, session=spec.session, unit=spec.unit, spec=spec)
    d.start_launch()
    props = host.bus.properties
    if by_pidfd:  # a pidfd is our child or nothing: a reused PID cannot put a stranger in the scope
        assert "PIDs" not in props and props["PIDFDs"] == [pidfd_of_launch(d)]
    else:
        assert "PIDFDs" not in props and props["PIDs"] == [d.pid]
    d.close()


def pidfd_of_launch(d: Dispatch) -> int:
    assert d._launch is not None and d._launch.child is not None
    return d._launch.child.pidfd
