"""The REAL agent CLIs (pi and claude from the npm registry, pinned, cached by `./dev setup`) do their work under
ralph-systemd against scripted model servers on loopback (tests/agents), with the real user manager.

Each scripted conversation is one tool call that writes a file and commits it in the ticket's git worktree,
then a text answer: the tests assert the file and the commit, not the agent's words (claude, denied its tool,
still exits 0 with the scripted answer). Offline: the agents come from the cache; the models are ours.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import ralph_systemd
from ralph_systemd import DispatchSpec, Status, Supervisor, Termination

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "agents"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import agents  # noqa: E402
from anthropic_server import AnthropicServer  # noqa: E402
from cli_helpers import CLI, cli_env  # noqa: E402
from openai_server import OpenAIServer  # noqa: E402

TIMEOUT_S = 30.0  # a dispatch that waits on its stdin ends here (today's main: pi never starts)
HANG_GUARD_S = 5.0  # not a timing target: under ralph-systemd no more than this longer than alone


@pytest.fixture(autouse=True)
def real_agents() -> None:
    try:
        agents.agents_dir()
        agents.node_dir()
    except agents.AgentsMissing as e:
        pytest.fail(str(e), pytrace=False)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    (root / "README").write_text("a project\n")
    _git(root, "add", "README")
    _git(root, "commit", "-qm", "init")
    return root


def _worktree(project: Path, ticket: str) -> Path:
    """The ticket's git worktree (on its own branch), as a Ralph loop gives each dispatch."""
    wt = project.parent / f"wt-{ticket}"
    _git(project, "worktree", "add", "-q", "-b", f"ticket/{ticket}", str(wt))
    return wt


def _assert_committed(wt: Path, name: str) -> None:
    assert (wt / name).read_text() == "written by the real agent\n", f"{name} not written in {wt}"
    assert _git(wt, "log", "-1", "--format=%s") == f"agent: add {name}"
    assert _git(wt, "status", "--porcelain") == ""


def _ticket(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def pi_server() -> Iterator[OpenAIServer]:
    # the work is done only where no nested-agent variable reached the agent (tf's backend drops them)
    with OpenAIServer(command='test -z "${CLAUDECODE:-}" && ' + agents.commit_command("pi-was-here.txt")) as srv:
        yield srv  # type: ignore[misc]


def _pi_alone(project: Path, srv: OpenAIServer, home: Path) -> float:
    """pi by itself, stdin at EOF (</dev/null), the same script: the reference time."""
    t = _ticket("alone")
    wt = _worktree(project, t)
    env = agents.pi_env(home, srv.base_url)
    t0 = time.monotonic()
    r = subprocess.run(agents.pi_argv(f"/tf {t} --auto"), cwd=wt, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    _assert_committed(wt, "pi-was-here.txt")
    return took


def test_real_pi_under_ralph_systemd_run_does_its_work(project: Path, pi_server: OpenAIServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    alone = _pi_alone(project, pi_server, home)
    t = _ticket("pi-run")
    wt = _worktree(project, t)
    env = cli_env(**agents.pi_env(home, pi_server.base_url))
    t0 = time.monotonic()
    r = subprocess.run([*CLI, "run", "--json", "--ticket", t, "--timeout", f"{TIMEOUT_S:g}s", "--cwd", str(wt),
                        "--log-dir", str(tmp_path / "logs"), "--", *agents.pi_argv(f"/tf {t} --auto")],
                       env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT_S + 30)
    under = time.monotonic() - t0
    res = json.loads(r.stdout)
    print(f"\nreal pi {agents.PI_VERSION}, scripted tool call + answer: alone {alone:.2f} s, "
          f"under `ralph-systemd run` {under:.2f} s (+{under - alone:.2f} s, CLI start-up included)")
    assert (r.returncode, res["status"], res["termination_method"]) == (0, "completed", "natural"), (r.stderr, res)
    _assert_committed(wt, "pi-was-here.txt")
    assert under < alone + HANG_GUARD_S, "hang guard: pi waited on something under ralph-systemd"


def test_real_pi_through_supervisor_and_run(project: Path, pi_server: OpenAIServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    alone = _pi_alone(project, pi_server, home)
    env = agents.pi_env(home, pi_server.base_url)
    times = {}
    for how in ("Supervisor", "run()"):
        t = _ticket("pi-lib")
        wt = _worktree(project, t)
        spec = DispatchSpec(argv=agents.pi_argv(f"/tf {t} --auto"), ticket=t, cwd=wt, env=env, timeout=TIMEOUT_S,
                            log_dir=tmp_path / "logs")
        t0 = time.monotonic()
        if how == "Supervisor":
            with Supervisor() as sup:
                res = sup.wait(sup.launch(spec))
        else:
            res = ralph_systemd.run(spec)
        times[how] = time.monotonic() - t0
        assert (res.status, res.exit_code, res.termination_method) == (Status.COMPLETED, 0, Termination.NATURAL), \
            (how, res, Path(res.log_path or "/dev/null").read_text()[-2000:])
        _assert_committed(wt, "pi-was-here.txt")
        assert times[how] < alone + HANG_GUARD_S, f"hang guard ({how})"
    print(f"\nreal pi: alone {alone:.2f} s; " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))


def test_real_pi_through_tfs_backend(project: Path, pi_server: OpenAIServer, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ralph_systemd.tf import DispatchCompletionStatus, backend_from_config
    home = tmp_path / "home"
    alone = _pi_alone(project, pi_server, home)
    for k, v in agents.pi_env(home, pi_server.base_url).items():
        monkeypatch.setenv(k, v)  # tf's backend passes on its own environment
    monkeypatch.setenv("CLAUDECODE", "1")  # as if Ralph ran inside a Claude Code session: must not reach pi
    t = _ticket("pi-tf")
    wt = _worktree(project, t)
    backend = backend_from_config({"executionBackend": "systemd", "systemd": {
        "agentCommand": [agents.pi_path(), "--provider", agents.PROVIDER, "--model", agents.MODEL],
        "logDir": str(tmp_path / "logs")}})
    assert backend is not None
    try:
        t0 = time.monotonic()
        r = backend.run_ticket_dispatch(t, "/tf", "", False, cwd=wt, pi_output="discard", timeout_ms=30_000)
        assert r.status == "launched", r
        c = backend.wait_for_dispatch_completion(r, r.ticket_id)
        took = time.monotonic() - t0
    finally:
        backend.close()
    print(f"\nreal pi: alone {alone:.2f} s; through tf's backend {took:.2f} s")
    assert c.status is DispatchCompletionStatus.COMPLETED and c.return_code == 0, c
    _assert_committed(wt, "pi-was-here.txt")
    assert took < alone + HANG_GUARD_S, "hang guard (tf's backend)"


def test_real_pi_that_hangs_is_stopped_by_the_wall_timeout(project: Path, tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    t = _ticket("pi-hang")
    wt = _worktree(project, t)
    with OpenAIServer(mode="hang") as srv:
        env = agents.pi_env(tmp_path / "home", srv.base_url, mark=mark)
        spec = DispatchSpec(argv=agents.pi_argv(f"/tf {t} --auto"), ticket=t, cwd=wt, env=env, timeout=8.0,
                            grace=5.0, log_dir=tmp_path / "logs")
        with Supervisor() as sup:
            d = sup.launch(spec)
            # pi starts in ~1.5 s; well before the timeout it must be waiting on the MODEL, not on its stdin
            assert srv.wait_for_requests(1, 5.0), "pi did not ask the model within 5 s: waiting on its stdin?"
            res = sup.wait(d)
        assert srv.paths == ["POST /v1/chat/completions"]
    assert res.status is Status.TIMEOUT and res.systemd_result == "timeout", res
    # stdin was /dev/null from the start: no EOF step; pi leaves on SIGTERM, long before systemd's SIGKILL
    assert res.termination_method is Termination.SIGTERM, res
    assert 7.5 <= res.duration_s < 8.0 + 5.0, res.duration_s
    out = subprocess.run(["systemctl", "--user", "list-units", "--all", "--plain", "--no-legend", spec.unit],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", out
    assert agents.marked_processes(mark) == []
    assert not (wt / "pi-was-here.txt").exists()


def test_real_claude_does_its_work_against_a_scripted_messages_api(project: Path, tmp_path: Path) -> None:
    t = _ticket("claude")
    wt = _worktree(project, t)
    wt_alone = _worktree(project, t + "-alone")
    with AnthropicServer(command=agents.commit_command("claude-was-here.txt")) as srv:
        env = agents.claude_env(tmp_path / "home", srv.root_url)
        t0 = time.monotonic()
        alone = subprocess.run(agents.claude_argv(f"/tf {t} --auto"), cwd=wt_alone, env=env,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        t_alone = time.monotonic() - t0
        assert alone.returncode == 0, alone.stderr
        spec = DispatchSpec(argv=agents.claude_argv(f"/tf {t} --auto"), ticket=t, cwd=wt, env=env,
                            timeout=TIMEOUT_S, log_dir=tmp_path / "logs")
        t0 = time.monotonic()
        res = ralph_systemd.run(spec)
        t_under = time.monotonic() - t0
    print(f"\nreal claude {agents.CLAUDE_VERSION}, scripted Bash call + answer: alone {t_alone:.2f} s, "
          f"under ralph-systemd {t_under:.2f} s")
    assert (res.status, res.exit_code) == (Status.COMPLETED, 0), (res, Path(res.log_path or "").read_text()[-2000:])
    for w in (wt_alone, wt):
        _assert_committed(w, "claude-was-here.txt")
    assert t_under < t_alone + HANG_GUARD_S, "hang guard (claude)"


def test_real_claude_not_logged_in_fails_at_once(project: Path, tmp_path: Path) -> None:
    times = []
    for i in range(3):
        t = _ticket("claude-nologin")
        env = agents.claude_env(tmp_path / f"home{i}", None)
        res = ralph_systemd.run(DispatchSpec(argv=agents.claude_argv("hello"), ticket=t, cwd=project, env=env,
                                             timeout=TIMEOUT_S, log_dir=tmp_path / "logs"))
        log = Path(res.log_path or "").read_text()
        assert (res.status, res.exit_code) == (Status.FAILED, 1), (res, log)
        assert "Not logged in" in log, log
        times.append(res.duration_s)
    print(f"\nreal claude not logged in, under ralph-systemd: {', '.join(f'{x:.2f}' for x in times)} s")
    # a hang guard, not a timing target: today (stdin an open pipe) claude first waits ~3 s for input
    assert statistics.median(times) < 3.0, times
