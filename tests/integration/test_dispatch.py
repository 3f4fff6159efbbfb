"""The core launcher against the real user manager: outcomes, the kill ladder, leftovers, our own death."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from faults_util import ladder_events as events

from ralph_systemd import DispatchSpec, NoUserBusError, Status, Supervisor, Termination, run
from ralph_systemd.bus import PystemdUserBus

PROGRAMS = Path(__file__).parent / "programs"
LADDER = str(PROGRAMS / "ladder_session.py")
DAEMON = str(PROGRAMS / "spawn_daemon.sh")


def ticket(name: str) -> str:
    return f"test-{name}-{uuid.uuid4().hex[:8]}"


def spec(tmp_path: Path, argv: list[str], name: str, **kw: object) -> DispatchSpec:
    return DispatchSpec(argv=argv, ticket=ticket(name), log_dir=tmp_path / "logs", cwd=tmp_path, **kw)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def unit_loaded(unit: str) -> bool:
    bus = PystemdUserBus()
    try:
        return bus.unit_state(unit).exists
    finally:
        bus.close()


# -- natural ends ------------------------------------------------------------------------------------------------

def test_exit_zero_is_completed(tmp_path: Path) -> None:
    r = run(spec(tmp_path, ["sh", "-c", "echo hello"], "ok"))
    assert (r.status, r.exit_code, r.signal, r.termination_method) == (Status.COMPLETED, 0, None, Termination.NATURAL)
    assert r.systemd_result == "success" and r.leftovers_killed == 0
    assert r.invocation_id and len(r.invocation_id) == 32
    assert Path(r.log_path or "").read_text() == "hello\n"
    assert not unit_loaded(r.unit), "the unit must be garbage-collected once the result is read"


def test_nonzero_exit_is_failed_with_its_code(tmp_path: Path) -> None:
    r = run(spec(tmp_path, ["sh", "-c", "echo oops >&2; exit 3"], "fail"))
    assert (r.status, r.exit_code, r.termination_method) == (Status.FAILED, 3, Termination.NATURAL)
    assert r.exit_status_for_shell() == 3
    assert Path(r.log_path or "").read_text() == "oops\n"  # stderr goes to the same private log


def test_killed_by_a_signal_is_failed_with_the_signal(tmp_path: Path) -> None:
    r = run(spec(tmp_path, ["sh", "-c", "kill -KILL $$"], "sig"))
    assert (r.status, r.exit_code, r.signal, r.signal_name) == (Status.FAILED, None, 9, "SIGKILL")
    assert r.termination_method is Termination.NATURAL  # nobody on our side sent it
    assert r.exit_status_for_shell() == 128 + 9


def test_session_runs_inside_its_own_scope_before_it_can_do_anything(tmp_path: Path) -> None:
    r = run(spec(tmp_path, ["cat", "/proc/self/cgroup"], "cg"))
    cgroup = Path(r.log_path or "").read_text().strip().splitlines()[-1]
    assert cgroup.endswith(f"/ralph.slice/{r.unit}"), cgroup


def test_log_is_private(tmp_path: Path) -> None:
    r = run(spec(tmp_path, ["true"], "perm"))
    log = Path(r.log_path or "")
    assert log.stat().st_mode & 0o777 == 0o600
    assert log.parent.stat().st_mode & 0o777 == 0o700


# -- the session's stdin -------------------------------------------------------------------------------------------

def test_by_default_a_session_that_reads_its_stdin_to_eof_starts_at_once(tmp_path: Path) -> None:
    # the real `pi -p` reads piped stdin to EOF before it does anything: with an open pipe it never starts
    t0 = time.monotonic()
    r = run(spec(tmp_path, ["sh", "-c", "wc -c; readlink /proc/self/fd/0"], "null", timeout=20))
    took = time.monotonic() - t0
    assert (r.status, r.exit_code, r.termination_method) == (Status.COMPLETED, 0, Termination.NATURAL)
    assert Path(r.log_path or "").read_text().split() == ["0", "/dev/null"]
    assert took < 10, took  # a hang guard (the timeout is 20 s), not a performance figure


def test_with_stdin_null_the_timeout_ladder_is_sigterm_with_no_eof_step(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = run(spec(tmp_path, [LADDER, "term"], "nullterm", timeout=1.0, grace=2.0))
    ev = events(r.log_path)
    assert (r.status, r.termination_method, r.exit_code) == (Status.TIMEOUT, Termination.SIGTERM, 143)
    assert ev["EOF"] - t0 < 1.0  # /dev/null: at EOF from the start, long before the timeout
    assert 1.0 <= ev["TERM"] - t0 <= 3.0  # SIGTERM when RuntimeMaxSec fired: no EOF grace before it


def test_input_bytes_are_the_sessions_stdin_then_eof(tmp_path: Path) -> None:
    r = run(spec(tmp_path, ["sh", "-c", "cat; echo '<eof>'"], "input", stdin=b"the prompt\n", timeout=20))
    assert (r.status, r.exit_code) == (Status.COMPLETED, 0)
    assert Path(r.log_path or "").read_text() == "the prompt\n<eof>\n"


def test_a_file_is_the_sessions_stdin(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("from a file\n")
    r = run(spec(tmp_path, ["cat"], "file", stdin=prompt, timeout=20))
    assert (r.status, r.exit_code) == (Status.COMPLETED, 0)
    assert Path(r.log_path or "").read_text() == "from a file\n"


# -- the kill ladder on the wall timeout ---------------------------------------------------------------------------

LADDER_KW = dict(timeout=1.0, grace=2.0, stdin="pipe", eof_grace=0.5)


def test_timeout_session_that_exits_on_eof(tmp_path: Path) -> None:
    t0 = time.monotonic()  # the scope becomes active after this: RuntimeMaxSec counts from then
    r = run(spec(tmp_path, [LADDER, "eof"], "eof", **LADDER_KW))
    ev = events(r.log_path)
    assert (r.status, r.termination_method, r.exit_code) == (Status.TIMEOUT, Termination.EOF, 0)
    assert "TERM" not in ev
    assert 1.0 <= ev["EOF"] - t0 <= 3.5  # EOF when RuntimeMaxSec fired (never before)
    assert r.systemd_result == "timeout"  # systemd's word: RuntimeMaxSec fired (even though all exited in the grace)


def test_timeout_session_that_ignores_eof_gets_sigterm(tmp_path: Path) -> None:
    t0 = time.monotonic()  # the scope becomes active after this: RuntimeMaxSec counts from then
    r = run(spec(tmp_path, [LADDER, "term"], "term", **LADDER_KW))
    ev = events(r.log_path)
    assert (r.status, r.termination_method, r.exit_code) == (Status.TIMEOUT, Termination.SIGTERM, 143)
    assert 1.0 <= ev["EOF"] - t0 <= 3.5
    assert 0.45 <= ev["TERM"] - ev["EOF"] <= 1.5  # SIGTERM eof_grace after EOF


def test_timeout_session_that_traps_sigterm_is_sigkilled_by_systemd(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = run(spec(tmp_path, [LADDER, "kill"], "kill", **LADDER_KW))
    ended = time.monotonic()
    ev = events(r.log_path)
    assert (r.status, r.termination_method, r.signal, r.exit_code) == \
        (Status.TIMEOUT, Termination.SIGKILL, signal.SIGKILL, None)
    assert r.systemd_result == "timeout"
    assert 0.45 <= ev["TERM"] - ev["EOF"] <= 1.5
    # systemd's SIGKILL comes TimeoutStopSec (grace) after the stop began (= when EOF was sent)
    assert 1.8 <= ended - ev["EOF"] <= 4.0, ended - ev["EOF"]
    assert ended - t0 < 1.0 + 2.0 + 2.5


def test_idle_timeout_stops_a_session_that_stopped_writing(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = run(spec(tmp_path, ["sh", "-c", "echo working; exec sleep 300"], "idle", idle_timeout=1.0, grace=2.0,
                 stdin="pipe", eof_grace=0.2))
    took = time.monotonic() - t0
    assert r.status is Status.IDLE_TIMEOUT
    assert r.termination_method is Termination.SIGTERM and r.signal == signal.SIGTERM
    assert 0.9 <= took <= 3.5, took


def test_output_keeps_an_idle_timeout_away(tmp_path: Path) -> None:
    r = run(spec(tmp_path, ["sh", "-c", "for i in 1 2 3 4 5 6; do echo $i; sleep 0.3; done"], "busy",
                 idle_timeout=1.0))
    assert r.status is Status.COMPLETED  # 1.8 s of work, never 1 s silent


# -- escaped descendants ------------------------------------------------------------------------------------------

def test_daemon_left_behind_at_normal_completion_is_killed_and_counted(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    r = run(spec(tmp_path, [DAEMON, str(pidfile), "exit"], "daemon-ok", grace=2.0))
    daemon = int(pidfile.read_text())
    assert r.status is Status.COMPLETED and r.exit_code == 0
    assert r.leftovers_killed >= 1
    assert not alive(daemon)


def test_daemon_left_behind_at_timeout_is_killed_and_counted(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    r = run(spec(tmp_path, [DAEMON, str(pidfile), "hang"], "daemon-to", timeout=1.0, grace=2.0))
    daemon = int(pidfile.read_text())
    assert r.status is Status.TIMEOUT
    assert r.leftovers_killed >= 1
    assert not alive(daemon)
    assert not alive(r.pid or 0)


# -- explicit stop and the context manager ------------------------------------------------------------------------

def test_leaving_the_block_on_an_exception_stops_the_dispatch(tmp_path: Path) -> None:
    with Supervisor() as sup:
        with pytest.raises(RuntimeError):
            with sup.launch(spec(tmp_path, [LADDER, "term"], "ctx", grace=2.0, stdin="pipe", eof_grace=0.2)) as d:
                assert d.result is None
                raise RuntimeError("caller failed")
        assert d.result is not None
        assert (d.result.status, d.result.termination_method) == (Status.STOPPED, Termination.SIGTERM)
    assert not alive(d.pid or 0)
    assert not unit_loaded(d.unit)


def test_an_operators_systemctl_stop_is_reported_as_stopped(tmp_path: Path) -> None:
    with Supervisor() as sup:
        d = sup.launch(spec(tmp_path, [LADDER, "eof"], "opstop", timeout=60, grace=2.0, stdin="pipe"))
        subprocess.run(["systemctl", "--user", "stop", "--no-block", d.unit], check=True)
        r = sup.wait(d, timeout=10)
    assert (r.status, r.termination_method) == (Status.STOPPED, Termination.EOF)


# -- launch errors --------------------------------------------------------------------------------------------------

def test_missing_program_is_an_error_result_within_100ms_and_no_unit(tmp_path: Path) -> None:
    with Supervisor() as sup:
        t0 = time.monotonic()
        d = sup.launch(spec(tmp_path, ["no-such-program-xyz"], "missing"))
        took = time.monotonic() - t0
    assert d.result is not None and d.result.status is Status.ERROR
    assert "no-such-program-xyz" in (d.result.error or "") and "PATH" in (d.result.error or "")
    assert took < 0.1, took
    assert not unit_loaded(d.unit)
    assert d.result.exit_status_for_shell() == 125


def test_not_executable_program_is_an_error(tmp_path: Path) -> None:
    prog = tmp_path / "prog"
    prog.write_text("#!/bin/sh\necho hi\n")
    prog.chmod(0o644)
    r = run(spec(tmp_path, [str(prog)], "noexec"))
    assert r.status is Status.ERROR and "not executable" in (r.error or "") and "chmod +x" in (r.error or "")
    assert not unit_loaded(r.unit)


def test_missing_cwd_is_an_error(tmp_path: Path) -> None:
    r = run(DispatchSpec(argv=["true"], ticket=ticket("cwd"), cwd=tmp_path / "nope", log_dir=tmp_path / "logs"))
    assert r.status is Status.ERROR and "working directory" in (r.error or "")


def test_exec_failure_after_the_scope_exists_is_an_error_and_cleans_up(tmp_path: Path) -> None:
    # A program whose interpreter is missing passes the pre-flight check but fails in execve.
    prog = tmp_path / "prog"
    prog.write_text("#!/nonexistent/interpreter\n")
    prog.chmod(0o755)
    r = run(spec(tmp_path, [str(prog)], "execfail"))
    assert r.status is Status.ERROR and "did not start" in (r.error or "")
    # The scope ended with its only process; the manager collects it moments after our release (measured:
    # still loaded right after the result on a loaded machine). Nothing may be left once it has.
    deadline = time.monotonic() + 10
    while unit_loaded(r.unit):
        assert time.monotonic() < deadline, f"{r.unit} still loaded 10 s after an exec failure"
        time.sleep(0.05)


def test_one_live_dispatch_per_ticket(tmp_path: Path) -> None:
    first = spec(tmp_path, [LADDER, "eof"], "dup", grace=2.0, stdin="pipe")
    with Supervisor() as sup:
        a = sup.launch(first)
        b = sup.launch(DispatchSpec(argv=["true"], ticket=first.ticket, log_dir=tmp_path / "logs", cwd=tmp_path))
        assert b.result is not None and b.result.status is Status.ERROR
        assert first.ticket in (b.result.error or "") and first.unit in (b.result.error or "")
        assert str(first.session) in (b.result.error or "")
        assert a.result is None  # the live one is untouched
        sup.stop(a)
        assert sup.wait(a).status is Status.STOPPED


def test_no_user_bus_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    with pytest.raises(NoUserBusError) as e:
        Supervisor()
    assert "loginctl enable-linger" in str(e.value) and str(tmp_path) in str(e.value)


# -- our own death ---------------------------------------------------------------------------------------------------

LAUNCHER = textwrap.dedent("""
    import sys
    from ralph_systemd import DispatchSpec, Supervisor
    sup = Supervisor()
    argv = [a for a in sys.argv[1:4] if a != "x"]
    d = sup.launch(DispatchSpec(argv=argv, ticket=sys.argv[4], log_dir=sys.argv[5], cwd=sys.argv[5],
                                timeout=2.0, grace=1.0))
    print(d.unit, d.pid, flush=True)
    sys.stdin.read()  # block until killed
""")


def test_launcher_sigkilled_mid_dispatch_systemd_still_enforces_the_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    t = ticket("orphan")
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, DAEMON, str(pidfile), "hang", t, str(tmp_path)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert launcher.stdout is not None
    unit, session_pid = launcher.stdout.readline().split()
    t_killed = time.monotonic()
    launcher.kill()
    launcher.wait()
    with Supervisor() as sup:
        d = sup.attach(unit)  # the unit is still there, bounded by its own RuntimeMaxSec
        assert d.ticket == t
        r = sup.wait(d, timeout=15)
    assert r.status is Status.TIMEOUT and r.systemd_result == "timeout"
    assert time.monotonic() - t_killed < 2.0 + 1.0 + 3.0
    assert not alive(int(session_pid))
    assert not alive(int(pidfile.read_text()))


def test_launcher_dead_the_timeout_still_sends_sigterm_first(tmp_path: Path) -> None:
    """Why KillMode=control-group: without us (no Controller) systemd still TERMs before it KILLs."""
    t = ticket("orphan-term")
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, LADDER, "kill", "x", t, str(tmp_path)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert launcher.stdout is not None
    unit, session_pid = launcher.stdout.readline().split()
    launcher.kill()
    launcher.wait()
    with Supervisor() as sup:
        d = sup.attach(unit)
        r = sup.wait(d, timeout=15)
    assert r.status is Status.TIMEOUT and r.systemd_result == "timeout"
    assert r.exit_code is None and r.termination_method is Termination.UNKNOWN  # not our child any more
    ev = events(d.log_path)
    assert "TERM" in ev, "systemd must SIGTERM the session before its SIGKILL when the controller is gone"
    assert 0.5 <= ev["TERM"] - ev["START"] <= 3.5  # at the 2 s timeout (START is logged after startup)
    assert not alive(int(session_pid))


def test_the_scope_is_made_with_a_pidfd_where_the_manager_takes_one(tmp_path: Path) -> None:
    """systemd >= 255 takes the child as a pidfd (a reused PID can then never put a stranger in the scope);
    older managers get its PID. Either way the session runs inside its own scope."""
    version = subprocess.run(["systemctl", "--user", "show", "-p", "Version", "--value"], capture_output=True,
                             text=True, check=True).stdout.strip()
    major = int(version.split(".")[0].split("~")[0])
    with Supervisor() as sup:
        assert sup.features.scope_pidfds == (major >= 255), version
        r = sup.wait(sup.launch(spec(tmp_path, ["sh", "-c", "cat /proc/self/cgroup"], "pidfd")), timeout=30)
    assert r.status is Status.COMPLETED, r
    assert Path(r.log_path or "").read_text().rstrip().endswith("/" + r.unit)
