"""tf's Ralph dispatch functions over real scopes, with examples/fake-agent standing in for pi."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ralph_systemd.result import Status
from ralph_systemd.tf import (
    UNKNOWN_RETURN_CODE,
    DispatchCompletionStatus,
    DispatchResult,
    SystemdBackend,
    backend_from_config,
)

REPO = Path(__file__).resolve().parents[2]
FAKE_AGENT = str(REPO / "examples" / "fake-agent")


def _ticket() -> str:
    return f"tf-{uuid.uuid4().hex[:8]}"


def _gone(unit: str) -> bool:
    out = subprocess.run(["systemctl", "--user", "list-units", "--all", "--plain", "--no-legend", unit],
                         capture_output=True, text=True, check=True).stdout
    return out.strip() == ""


def _no_process(pid: int, unit: str) -> bool:
    try:
        return not Path(f"/proc/{pid}/cgroup").read_text().rstrip().endswith("/" + unit)
    except OSError:
        return True


def _make(tmp_path: Path, **section: object) -> Iterator[SystemdBackend]:
    section.setdefault("agentCommand", [FAKE_AGENT])
    section.setdefault("logDir", str(tmp_path / "private"))
    backend = backend_from_config({"executionBackend": "systemd", "systemd": section})
    assert backend is not None
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[SystemdBackend]:
    yield from _make(tmp_path, graceMs=3000, eofGraceMs=500, stdin="pipe")


def _launch(backend: SystemdBackend, tmp_path: Path, flags: str, **kw: object) -> DispatchResult:
    kw.setdefault("pi_output", "discard")
    r = backend.run_ticket_dispatch(_ticket(), "/tf", flags, False, cwd=tmp_path, **kw)  # type: ignore[arg-type]
    assert r.status == "launched" and r.pid, r
    return r


def test_completed(backend: SystemdBackend, tmp_path: Path) -> None:
    r = _launch(backend, tmp_path, "--fake-work=0.3")
    c = backend.wait_for_dispatch_completion(r, r.ticket_id)
    assert c.status is DispatchCompletionStatus.COMPLETED and c.return_code == 0, c
    assert c.termination_method == "natural" and c.session_id == r.session_id and c.pid == r.pid
    assert backend.poll_dispatch_status(r.pid or 0) == (False, 0)
    assert r.unit and _gone(r.unit)


def test_failed_exit_code_is_passed_through(backend: SystemdBackend, tmp_path: Path) -> None:
    r = _launch(backend, tmp_path, "--fake-work=0.2 --fake-exit=3")
    assert backend.poll_dispatch_status(r.pid or 0) == (True, None)  # still working
    c = backend.wait_for_dispatch_completion(r, r.ticket_id)
    assert c.status is DispatchCompletionStatus.ERROR and c.return_code == 3, c
    assert c.error == "Process exited with code 3"
    assert backend.poll_dispatch_status(r.pid or 0) == (False, 3)


def test_wait_timeout_ms_stops_with_the_ladder_and_reports_timeout(backend: SystemdBackend, tmp_path: Path) -> None:
    r = _launch(backend, tmp_path, "--fake-hang --fake-work=0")
    c = backend.wait_for_dispatch_completion(r, r.ticket_id, timeout_ms=1000, graceful_shutdown_ms=3000)
    assert c.status is DispatchCompletionStatus.TIMEOUT, c
    # deaf to EOF, it left on SIGTERM; tf gives no return_code for a timeout (the old backend gave -15 / 143)
    assert c.termination_method == "sigterm" and c.return_code is None
    assert c.detail is not None and c.detail.exit_code == 143
    assert c.error == "Timeout after 1000ms"
    # SIGTERM at the budget: EOF came inside it (the old backend overshot by the EOF grace: 5277 ms for 4000)
    assert 900 <= c.duration_ms < 1000 + 700, c.duration_ms
    assert r.unit and _gone(r.unit) and _no_process(r.pid or 0, r.unit)


def test_every_dispatch_has_a_runtime_max(backend: SystemdBackend, tmp_path: Path) -> None:
    # tf passes timeout_ms=0 for "none"; a dispatch nobody stops (Ralph SIGKILLed) must still end
    r = _launch(backend, tmp_path, "--fake-hang --fake-work=0")
    out = subprocess.run(["systemctl", "--user", "show", "-P", "RuntimeMaxUSec", r.unit or ""], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out.startswith("3h 59min"), out  # maxRuntimeMs (4 h) minus the EOF grace that comes inside it
    assert backend.graceful_terminate_dispatch(r.pid or 0)[0]


def test_launch_timeout_ms_is_enforced_by_systemd(backend: SystemdBackend, tmp_path: Path) -> None:
    r = _launch(backend, tmp_path, "--fake-hang --fake-work=0", timeout_ms=1000)
    c = backend.wait_for_dispatch_completion(r, r.ticket_id)  # no timeout of our own: systemd's RuntimeMaxSec
    assert c.status is DispatchCompletionStatus.TIMEOUT, c
    assert c.detail is not None and c.detail.systemd_result == "timeout"
    assert backend.poll_dispatch_status(r.pid or 0)[1] not in (0, None)


def test_graceful_terminate_dispatch_then_terminated(backend: SystemdBackend, tmp_path: Path) -> None:
    hang = _launch(backend, tmp_path, "--fake-hang --fake-work=0")
    idle = _launch(backend, tmp_path, "--fake-idle --fake-daemon --fake-work=0.2")
    assert backend.graceful_terminate_dispatch(hang.pid or 0, session_id=hang.session_id) == (True, "sigterm")
    assert backend.graceful_terminate_dispatch(hang.pid or 0) == (True, "not_running")
    c = backend.wait_for_dispatch_completion(hang, hang.ticket_id)
    assert c.status is DispatchCompletionStatus.TERMINATED and c.termination_method == "sigterm", c
    # idle reads its stdin: EOF alone ends it; the daemon it left behind goes with the scope
    log_path = Path(idle.log_path or "")
    deadline = time.monotonic() + 30
    while "daemon" not in log_path.read_text():  # the daemon exists before we stop it (a 0.2 s wait)
        assert time.monotonic() < deadline, "the fake agent never started its daemon"
        backend.poll_dispatch_status(idle.pid or 0)
    assert backend.graceful_terminate_dispatch(idle.pid or 0) == (True, "eof")
    c2 = backend.wait_for_dispatch_completion(idle, idle.ticket_id)
    assert c2.status is DispatchCompletionStatus.TERMINATED and c2.detail and c2.detail.leftovers_killed == 1, c2
    for r in (hang, idle):
        assert r.unit and _gone(r.unit)


def test_kill_wait_ms_brings_sigkill_forward(tmp_path: Path) -> None:
    # An agent deaf to EOF and SIGTERM; the scope's own grace is 30 s, kill_wait_ms says 0.5 s.
    for backend in _make(tmp_path, agentCommand=["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done", "agent"],
                         graceMs=30000, eofGraceMs=200, stdin="pipe"):
        r = _launch(backend, tmp_path, "")
        assert backend.graceful_terminate_dispatch(r.pid or 0, kill_wait_ms=500) == (True, "sigkill")
        c = backend.wait_for_dispatch_completion(r, r.ticket_id)
        assert c.status is DispatchCompletionStatus.TERMINATED and c.return_code == -9 and c.duration_ms < 10_000
        assert r.unit and _gone(r.unit)


def test_pi_output_file_goes_where_asked_and_a_private_log_is_kept(backend: SystemdBackend, tmp_path: Path) -> None:
    target = tmp_path / "out" / "agent.log"
    r = _launch(backend, tmp_path, "--fake-work=0.2", pi_output="file", pi_output_file=str(target))
    backend.wait_for_dispatch_completion(r, r.ticket_id)
    assert f"ticket {r.ticket_id}: starting" in target.read_text()
    assert r.log_path and Path(r.log_path).parent == tmp_path / "private"
    assert Path(r.log_path).read_text() == target.read_text()
    assert oct(Path(r.log_path).stat().st_mode & 0o777) == "0o600"
    # without pi_output_file: <logs_dir>/<ticket>.log
    r2 = _launch(backend, tmp_path, "--fake-work=0", pi_output="file", logs_dir=tmp_path / "logs")
    backend.wait_for_dispatch_completion(r2, r2.ticket_id)
    assert "done" in (tmp_path / "logs" / f"{r2.ticket_id}.log").read_text()


def test_inherit_shows_the_output_on_stderr(backend: SystemdBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = _launch(backend, tmp_path, "--fake-work=0", pi_output="inherit")
    backend.wait_for_dispatch_completion(r, r.ticket_id)
    out = capsys.readouterr()
    assert out.out == ""  # Ralph's stdout is tf's protocol (<promise>COMPLETE</promise>): nothing of ours there
    assert f"----- {r.ticket_id} output: {r.log_path}" in out.err
    assert f"ticket {r.ticket_id}: starting" in out.err and f"----- end of {r.ticket_id} (completed)" in out.err
    assert f"tail -f {r.log_path}" in out.err  # said at launch, where the live output is


def test_capture_json_is_a_pi_option_and_the_prompt_is_one_argument(tmp_path: Path) -> None:
    for backend in _make(tmp_path, agentCommand=["sh", "-c", 'for a in "$@"; do echo "[$a]"; done', "agent"]):
        target = tmp_path / "argv.log"
        r = backend.run_ticket_dispatch(_ticket(), "/tf", "--plan", False, cwd=tmp_path, capture_json=True,
                                        pi_output="file", pi_output_file=str(target))
        backend.wait_for_dispatch_completion(r, r.ticket_id)
        assert target.read_text().splitlines() == ["[--mode]", "[json]", "[-p]", f"[/tf {r.ticket_id} --plan --auto]"]


def test_launch_failures_are_reported_not_raised(tmp_path: Path) -> None:
    for backend in _make(tmp_path, agentCommand=[str(tmp_path / "no-such-pi")]):
        r = backend.run_ticket_dispatch(_ticket(), "/tf", "", False, cwd=tmp_path)
        assert r.status == "failed" and r.pid is None and "no-such-pi" in (r.error or "")
        r = backend.run_ticket_dispatch("bad ticket; rm -rf", "/tf", "", False, cwd=tmp_path)
        assert r.status == "failed" and "Invalid ticket ID" in (r.error or "")
        r = backend.run_ticket_dispatch(_ticket(), "/tf", "", False, cwd=tmp_path / "nope")
        assert r.status == "failed" and "does not exist" in (r.error or "")
        assert backend.wait_for_dispatch_completion(r, r.ticket_id).status is DispatchCompletionStatus.ERROR


def test_one_live_dispatch_per_ticket(backend: SystemdBackend, tmp_path: Path) -> None:
    r = _launch(backend, tmp_path, "--fake-hang --fake-work=0")
    again = backend.run_ticket_dispatch(r.ticket_id, "/tf", "", False, cwd=tmp_path)
    assert again.status == "failed" and "already has a live dispatch" in (again.error or "")
    assert backend.graceful_terminate_dispatch(r.pid or 0)[0]


def test_pids_that_are_not_ours_are_never_success_and_never_signalled(backend: SystemdBackend) -> None:
    assert backend.poll_dispatch_status(os.getpid()) == (False, UNKNOWN_RETURN_CODE)
    assert backend.graceful_terminate_dispatch(os.getpid()) == (False, "failed")
    c = backend.wait_for_dispatch_completion(DispatchResult("s", "t", "launched", pid=os.getpid()), "t")
    assert c.status is DispatchCompletionStatus.ERROR and "not a dispatch of ours" in (c.error or "")


def test_a_restarted_ralph_adopts_a_dispatch_by_pid_and_never_calls_it_success(tmp_path: Path) -> None:
    # A first "Ralph" launches and is SIGKILLed; a second one finds the pid in its records and waits on it.
    fifo = tmp_path / "go.fifo"
    os.mkfifo(fifo)
    agent = ["sh", "-c", f"read x < {fifo}; exit 0", "agent"]  # ends by itself when we say so
    script = (f"import sys; from ralph_systemd.tf import backend_from_config as b\n"
              f"be = b({{'executionBackend': 'systemd', 'systemd': {{'agentCommand': {agent!r}, "
              f"'logDir': {str(tmp_path)!r}}}}})\n"
              f"r = be.run_ticket_dispatch({_ticket()!r}, '/tf', '', False, cwd={str(tmp_path)!r}, "
              f"pi_output='discard', timeout_ms=60000)\n"
              "print(r.pid, r.unit, flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout is not None
    pid_s, unit = proc.stdout.readline().split()
    proc.kill()
    proc.wait()
    pid = int(pid_s)
    for backend in _make(tmp_path):
        assert backend.poll_dispatch_status(pid) == (True, None)  # adopted from its scope, still running
        fifo.write_text("go\n")
        c = backend.wait_for_dispatch_completion(DispatchResult("s", "t", "launched", pid=pid), "t")
        # it exited 0, but that code went to the dead launcher: not a success, not a failure code
        assert c.status is DispatchCompletionStatus.ERROR and c.return_code is None, c
        assert c.detail is not None and c.detail.status is Status.UNKNOWN and "unknown" in (c.error or "")
        assert backend.poll_dispatch_status(pid) == (False, UNKNOWN_RETURN_CODE)
        assert _gone(unit)
