"""tf's REAL Ralph loop (RALPH_TF_SRC) on ralph-systemd with the REAL pi (tests/agents) and a scripted model:
the ticket is worked in its own git worktree (a real `bash` tool call writes and commits a file, then closes the
ticket with the fake `tk`), tf merges the worktree into main and removes it, and progress.md says COMPLETE.

Runs only when RALPH_TF_SRC points at a tf checkout (like test_tf_real.py: otherwise no test is defined, since a
skip fails CI's RALPH_REQUIRE_INTEGRATION run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "tf_fakes"))
sys.path.insert(0, str(REPO / "tests" / "agents"))
import agents  # noqa: E402
import project  # noqa: E402
from openai_server import OpenAIServer  # noqa: E402

TF_SRC = os.environ.get("RALPH_TF_SRC")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


if TF_SRC:

    def test_tfs_real_loop_with_the_real_pi_works_merges_and_closes_a_ticket(tmp_path: Path) -> None:
        try:
            pi = agents.pi_path()
        except agents.AgentsMissing as e:
            pytest.fail(str(e), pytrace=False)
        t = f"T-PI-{uuid.uuid4().hex[:6]}"
        mark = uuid.uuid4().hex
        root = tmp_path / "proj"
        command = agents.commit_command("pi-was-here.txt") + " && tk close {ticket}"
        with OpenAIServer(command=command) as srv:
            env = project.make_project(root, {t: {"title": "the real pi writes and commits a file"}},
                                       timeout_ms=60_000, serialUseWorktree=True,
                                       systemd={"agentCommand": [pi, "--provider", agents.PROVIDER,
                                                                 "--model", agents.MODEL], "graceMs": 3000})
            env = agents.pi_env(tmp_path / "home", srv.base_url, mark=mark, base=env)
            env["PYTHONPATH"] = f"{TF_SRC}:{REPO}"
            t0 = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "ralph_systemd.tf", "ralph", "start"], cwd=root, env=env,
                               capture_output=True, text=True, timeout=120)
            took = time.monotonic() - t0
            asked = list(srv.requests)
        print(f"\ntf's real loop, one ticket worked by the real pi {agents.PI_VERSION}: {took:.2f} s "
              f"({len(asked)} model requests)")
        assert (r.returncode, r.stdout) == (0, "<promise>COMPLETE</promise>\n"), r.stderr
        assert len(asked) == 2 and srv.ticket_of(asked[0]) == t  # a tool call, then its result and the answer
        assert project.tickets(env) == {t: "closed"}
        progress = (root / ".tf" / "ralph" / "progress.md").read_text()
        assert f"- {t}: COMPLETE" in progress and "- Status: COMPLETE" in progress, progress
        # merged into main (tf's --no-ff merge of ralph/<ticket>), the agent's commit in it, the worktree gone
        assert (root / "pi-was-here.txt").read_text() == "written by the real agent\n"
        assert _git(root, "log", "-1", "--format=%s") == f"Merge {t} via Ralph"
        assert "agent: add pi-was-here.txt" in _git(root, "log", "--format=%s")
        assert len(_git(root, "worktree", "list").splitlines()) == 1
        assert agents.marked_processes(mark) == []
        out = subprocess.run(["systemctl", "--user", "list-units", "--all", "--plain", "--no-legend", "ralph-*"],
                             capture_output=True, text=True, check=True).stdout
        assert f"ticket={t} " not in out
