"""The switch (`python -m ralph_systemd.tf ralph start`) on the model of tf's loop (tests/tf_fakes/model: tf's
layout and order of calls, written from the facts in tests/unit/test_tf_conformance.py), over real scopes.
Runs in CI without tf; tests/integration/test_tf_real.py does the same with tf itself when RALPH_TF_SRC is set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "tests" / "tf_fakes" / "model"
AGENT = REPO / "examples" / "fake-agent"


def _project(tmp_path: Path, flags: dict[str, str], timeout_ms: int = 3000) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "proj"
    (root / ".tf" / "ralph").mkdir(parents=True)
    config = {"executionBackend": "systemd", "attemptTimeoutMs": timeout_ms,
              "model": {"tickets": sorted(flags), "flags": flags},
              "systemd": {"agentCommand": [sys.executable, str(AGENT)], "graceMs": 3000}}
    (root / ".tf" / "ralph" / "config.json").write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH=f"{MODEL}:{REPO}", PATH="/usr/bin:/bin")  # no pi on PATH
    return root, env


def _run(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ralph_systemd.tf", "ralph", "start", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)


def _outcomes(root: Path) -> list[str]:
    return (root / ".tf" / "ralph" / "outcomes.txt").read_text().splitlines()


def _registry(root: Path) -> dict[str, tuple[str, int | None]]:
    data = json.loads((root / ".tf" / "ralph" / "dispatch-sessions.json").read_text())
    return {s["ticket_id"]: (s["status"], s["return_code"]) for s in data["sessions"]}


def _tickets() -> tuple[str, str, str]:
    tag = uuid.uuid4().hex[:6]
    return f"M-A-{tag}", f"M-B-{tag}", f"M-C-{tag}"


def test_serial_order_with_tfs_types_registry_and_logger(tmp_path: Path) -> None:
    a, b, c = _tickets()
    root, env = _project(tmp_path, {a: "--fake-work=0.2", b: "--fake-work=0.2 --fake-exit=3", c: "--fake-hang"})
    r = _run(root, env)
    assert r.returncode == 3 and r.stdout == "", r.stderr
    # a success is COMPLETED in tf's own enum (the old glue recorded it FAILED); the session registry has it
    assert _outcomes(root) == [f"{a} COMPLETE 0", f"{b} FAILED 3 Process exited with code 3"]
    assert _registry(root) == {a: ("completed", 0), b: ("failed", 3)}
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("timeout_ms", [3000])
def test_serial_timeout_ends_at_the_budget_with_no_return_code(tmp_path: Path, timeout_ms: int) -> None:
    (c,) = _tickets()[2:]
    root, env = _project(tmp_path, {c: "--fake-work=0 --fake-daemon --fake-hang"}, timeout_ms)
    r = _run(root, env)
    assert r.returncode == 255, r.stderr
    assert _outcomes(root) == [f"{c} FAILED -1 Timeout after {timeout_ms}ms"]
    line = next(x for x in r.stderr.splitlines() if "Dispatch timeout after" in x and "(exit:" in x)
    ms = int(line.split("Dispatch timeout after ")[1].split("ms")[0])
    # SIGTERM lands at the budget (EOF inside it), not an EOF grace later (the old backend: 5277 ms for 4000)
    assert timeout_ms * 0.9 <= ms < timeout_ms + 700, line
    assert "(exit: None, sigterm)" in line


def test_parallel_order_and_the_agent_command_precheck(tmp_path: Path) -> None:
    a, b, c = _tickets()
    root, env = _project(tmp_path, {a: "--fake-work=0.2", b: "--fake-work=0.2 --fake-exit=3",
                                    c: "--fake-work=0 --fake-hang"})
    r = _run(root, env, "--parallel", "3")
    assert r.returncode == 1, r.stderr  # ran at all: ensure_pi() found agentCommand though pi is not on PATH
    got = sorted(_outcomes(root))
    assert got[0] == f"{a} COMPLETE 0" and got[1] == f"{b} FAILED 3 dispatch failed (exit 3)", got
    assert got[2] in (f"{c} FAILED -1 dispatch timeout after 3000ms", f"{c} FAILED 124 dispatch failed (exit 124)")
    reg = _registry(root)
    assert reg[a][0] == "completed" and reg[b] == ("failed", 3) and reg[c][0] == "failed"
