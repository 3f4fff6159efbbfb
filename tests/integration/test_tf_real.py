"""tf's REAL Ralph loop (tf v1.1.10's ralph_start / ralph_run) switched to ralph-systemd with `python -m
ralph_systemd.tf` (= `ralph-systemd tf`), with the fake `pi` and `tk` of tests/tf_fakes, against the real user
manager.

Runs only when RALPH_TF_SRC points at a tf checkout (tf is not on the package registries and is not vendored).
Without it this module defines no tests at all: a skipped test would fail CI's RALPH_REQUIRE_INTEGRATION run.
The loop needs git (worktrees, recovery); the bed has none unless installed (`apt-get install git`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "tf_fakes"))
import project  # noqa: E402

TF_SRC = os.environ.get("RALPH_TF_SRC")


def _tickets(tag: str) -> dict[str, dict[str, object]]:
    """The issue's three tickets (exit 0, exit 3, hang past the timeout with a setsid daemon), unique ids."""
    return {f"{k}-{tag}": v for k, v in project.TICKETS.items()}


def _setup(tmp_path: Path, tickets: dict[str, dict[str, object]] | None = None, timeout_ms: int = 4000,
           **config: object) -> tuple[Path, dict[str, str], list[str]]:
    if shutil.which("git") is None:
        pytest.fail("tf's loop needs git, which this machine lacks: apt-get install git")
    tag = uuid.uuid4().hex[:6]
    tickets = tickets if tickets is not None else _tickets(tag)
    root = tmp_path / f"proj-{tag}"
    env = project.make_project(root, tickets, timeout_ms=timeout_ms, **config)
    assert TF_SRC is not None
    env["PYTHONPATH"] = f"{TF_SRC}:{REPO}"
    assert shutil.which("pi", path=env["PATH"]) is None  # every pre-check must use agentCommand, not pi on PATH
    return root, env, sorted(tickets)


def _ralph(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ralph_systemd.tf", "ralph", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def _ours(env: dict[str, str]) -> list[str]:
    """Processes started for this project (they carry its FAKE_TK_DB), zombies excepted."""
    mark = f"FAKE_TK_DB={env['FAKE_TK_DB']}".encode()
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if mark in (p / "environ").read_bytes().split(b"\0"):
                found.append((p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def _scopes(tickets: list[str]) -> list[str]:
    out = subprocess.run(["systemctl", "--user", "list-units", "--all", "--plain", "--no-legend", "ralph-*"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if any(f"ticket={t} " in line for t in tickets)]


def _registry(root: Path) -> dict[str, tuple[str, int | None]]:
    data = json.loads((root / ".tf" / "ralph" / "dispatch-sessions.json").read_text())
    return {s["ticket_id"]: (s["status"], s["return_code"]) for s in data["sessions"]}


def _progress(root: Path) -> str:
    return (root / ".tf" / "ralph" / "progress.md").read_text()


def _nothing_left(env: dict[str, str], tickets: list[str]) -> None:
    assert _scopes(tickets) == []
    assert _ours(env) == []


def _wait_for(cond: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


if TF_SRC:

    def test_serial_loop_over_three_tickets(tmp_path: Path) -> None:
        root, env, (a, b, c) = _setup(tmp_path)
        r = _ralph(root, env, "start")
        # tf's serial loop stops at the first failed ticket, with its exit code
        assert r.returncode == 3, r.stderr
        assert r.stdout == ""  # nothing of ours on Ralph's stdout
        assert project.tickets(env) == {a: "closed", b: "open", c: "open"}
        assert f"- {a}: COMPLETE" in _progress(root)
        assert f"- {b}: FAILED" in _progress(root) and "Process exited with code 3 (exit 3)" in _progress(root)
        reg = _registry(root)
        assert reg[a] == ("completed", 0) and reg[b] == ("failed", 3)
        project.close(env, b)  # the operator sets the failing ticket aside
        t0 = time.monotonic()
        r = _ralph(root, env, "start")
        assert r.returncode == 255, r.stderr  # tf's -1 for a timeout
        assert time.monotonic() - t0 < 4.0 + 3.0 + 3.0  # timeout, grace, python start-ups
        assert "due to timeout (last threshold: 4000ms)" in _progress(root)
        assert _registry(root)[c] == ("failed", -1)
        line = next(x for x in r.stderr.splitlines() if "Dispatch timeout after" in x and "(exit:" in x)
        ms = int(line.split("Dispatch timeout after ")[1].split("ms")[0])
        assert 3500 <= ms < 4000 + 1000, line  # SIGTERM at the timeout: EOF came inside the budget
        assert "(exit: None, sigterm)" in line  # tf's return_code for a timeout is None
        _nothing_left(env, [a, b, c])  # the setsid daemon went with the scope
        project.close(env, c)
        r = _ralph(root, env, "start")
        assert (r.returncode, r.stdout) == (0, "<promise>COMPLETE</promise>\n"), r.stderr
        assert "- Status: COMPLETE" in _progress(root)

    def test_parallel_loop_over_three_tickets(tmp_path: Path) -> None:
        root, env, (a, b, c) = _setup(tmp_path)
        r = _ralph(root, env, "start", "--parallel", "3")
        assert r.returncode == 1, r.stderr  # tf: some ticket of the batch failed
        assert r.stdout == ""
        assert "Traceback" not in r.stderr and f"Parallel dispatch failed for tickets: {b}, {c}" in r.stderr
        assert project.tickets(env) == {a: "closed", b: "open", c: "open"}
        progress = _progress(root)
        assert f"- {a}: COMPLETE" in progress and "dispatch failed (exit 3)" in progress  # tf's own merged exit 3
        assert "dispatch timeout after 4000ms" in progress or "dispatch failed (exit 124)" in progress
        reg = _registry(root)
        assert reg[a][0] == "completed" and reg[b] == ("failed", 3) and reg[c][0] == "failed"
        _nothing_left(env, [a, b, c])
        worktrees = subprocess.run(["git", "-C", str(root), "worktree", "list"], capture_output=True, text=True,
                                   check=True).stdout.splitlines()
        assert len(worktrees) == 1, worktrees

    def test_ralph_run_is_fire_and_forget_and_bounded(tmp_path: Path) -> None:
        root, env, (a, _, c) = _setup(tmp_path)
        for t in (a, c):
            r = _ralph(root, env, "run", t)
            assert r.returncode == 0 and r.stdout == "", r.stderr
            assert f"{t} keeps running" in r.stderr
            assert _scopes([t]), f"{t}: the dispatch must outlive `ralph run`"
        _wait_for(lambda: project.tickets(env)[a] == "closed", f"{a} to finish after Ralph returned")
        _wait_for(lambda: not _scopes([a, c]) and not _ours(env), f"{c} to end at its RuntimeMaxSec", 4 + 3 + 5)
        assert f"- {a}: DISPATCHED" in _progress(root)

    @pytest.mark.parametrize("signum, mode", [(signal.SIGTERM, []), (signal.SIGINT, []),
                                              (signal.SIGTERM, ["--parallel", "2"])])
    def test_a_signal_to_ralph_stops_and_records_the_dispatch_then_a_restart_runs_it(tmp_path: Path, signum: int,
                                                                                     mode: list[str]) -> None:
        tag = uuid.uuid4().hex[:6]
        t = f"T-S-{tag}"
        hang = "--fake-work=0.2 --fake-daemon --fake-hang"
        root, env, _ = _setup(tmp_path, {t: {"title": "hangs", "tags": ["component:s"], "agent": hang}},
                              timeout_ms=60000)
        proc = subprocess.Popen([sys.executable, "-m", "ralph_systemd.tf", "ralph", "start", *mode], cwd=root,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: any(x.startswith("sleep 3600") for x in _ours(env)), "the agent's daemon")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signum, err
        assert out == "" and f"stopped {t} (session" in err
        _nothing_left(env, [t])
        assert _registry(root)[t] == ("failed", 143)  # recorded: the agent left on SIGTERM (the ladder)
        data = json.loads(Path(env["FAKE_TK_DB"]).read_text())
        data[t]["agent"] = "--fake-work=0.2"
        Path(env["FAKE_TK_DB"]).write_text(json.dumps(data))
        r = _ralph(root, env, "start", *mode)
        assert (r.returncode, r.stdout) == (0, "<promise>COMPLETE</promise>\n"), r.stderr
        assert project.tickets(env)[t] == "closed"
        assert not (root / ".tf" / "ralph" / "lock").exists()  # tf's finally ran: the loop lock is released

    def test_sigkill_to_ralph_then_a_restart_recovers_the_ticket(tmp_path: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        t = f"T-K-{tag}"
        root, env, _ = _setup(tmp_path, {t: {"title": "hangs", "agent": "--fake-work=0.2 --fake-daemon --fake-hang"}},
                              timeout_ms=60000)
        proc = subprocess.Popen([sys.executable, "-m", "ralph_systemd.tf", "ralph", "start"], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(lambda: any(x.startswith("sleep 3600") for x in _ours(env)), "the agent's daemon")
        proc.kill()
        proc.wait()
        # bounded and visible: the scope runs on, with a RuntimeMaxSec
        (line,) = _scopes([t])
        unit = line.split()[0]
        runtime = subprocess.run(["systemctl", "--user", "show", "-P", "RuntimeMaxUSec", unit], capture_output=True,
                                 text=True, check=True).stdout.strip()
        assert runtime not in ("", "infinity"), runtime
        assert _registry(root)[t] == ("running", None)
        data = json.loads(Path(env["FAKE_TK_DB"]).read_text())
        data[t]["agent"] = "--fake-work=0.2"
        Path(env["FAKE_TK_DB"]).write_text(json.dumps(data))
        r = _ralph(root, env, "start")
        assert (r.returncode, r.stdout) == (0, "<promise>COMPLETE</promise>\n"), r.stderr
        assert "already has a live dispatch" not in r.stderr and f"Recovering dispatch of {t}" in r.stderr
        sessions = json.loads((root / ".tf" / "ralph" / "dispatch-sessions.json").read_text())["sessions"]
        assert [s["status"] for s in sessions] == ["orphaned", "completed"]
        _nothing_left(env, [t])

    def test_two_projects_run_the_same_ticket_id_at_once(tmp_path: Path) -> None:
        # unit names are scoped to a project (the git common dir): one project's T-1 never blocks another's
        t = f"T-P-{uuid.uuid4().hex[:6]}"
        spec = {t: {"title": "works", "agent": "--fake-work=1.5"}}
        (root1, env1, _), (root2, env2, _) = (_setup(tmp_path / "one", spec), _setup(tmp_path / "two", spec))
        procs = [subprocess.Popen([sys.executable, "-m", "ralph_systemd.tf", "ralph", "start"], cwd=root, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for root, env in ((root1, env1), (root2, env2))]
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert (p.returncode, out) == (0, "<promise>COMPLETE</promise>\n"), err
            assert "already has a live dispatch" not in err
        assert project.tickets(env1)[t] == project.tickets(env2)[t] == "closed"
        _nothing_left(env1, [t])
        _nothing_left(env2, [t])
