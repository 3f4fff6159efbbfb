"""A throw-away tf project for driving tf's real Ralph loop with the fake `pi` and `tk` of this directory.

    python tests/tf_fakes/project.py DIR [serial|parallel]   # prints the env to use (eval-able)
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

FAKES = Path(__file__).resolve().parent
FAKE_PI = FAKES / "pi"

# The three tickets of the scenario: exit 0, exit 3, hang past the timeout leaving a setsid daemon.
TICKETS = {
    "T-A": {"title": "works", "tags": ["component:a"], "agent": "--fake-work=0.5"},
    "T-B": {"title": "fails", "tags": ["component:b"], "agent": "--fake-work=0.5 --fake-exit=3"},
    "T-C": {"title": "hangs", "tags": ["component:c"], "agent": "--fake-work=0.3 --fake-daemon --fake-hang"},
}


def make_project(root: Path, tickets: dict[str, dict[str, object]] | None = None, timeout_ms: int = 4000,
                 **config: object) -> dict[str, str]:
    """A git repository with tf's layout (.tf/ralph/config.json, prompts/tf.md) and a fake ticket database.
    Returns the environment to run Ralph in (fake tk on PATH, pi NOT on PATH)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / ".tf" / "ralph").mkdir(parents=True, exist_ok=True)
    (root / "prompts").mkdir(exist_ok=True)
    (root / "prompts" / "tf.md").write_text("# /tf (fake prompt)\n")
    (root / ".gitignore").write_text(".tf/ralph/\n")
    cfg: dict[str, object] = {
        "executionBackend": "systemd", "attemptTimeoutMs": timeout_ms, "parallelDispatchTimeoutMs": timeout_ms,
        "sleepBetweenTickets": 0, "sleepBetweenRetries": 200, "maxIterations": 10, "promiseOnComplete": True,
        "systemd": {"agentCommand": [str(FAKE_PI)], "graceMs": 3000},
    }
    cfg.update(config)
    (root / ".tf" / "ralph" / "config.json").write_text(json.dumps(cfg, indent=1))
    db = root.parent / f"{root.name}.tickets.json"
    db.write_text(json.dumps({k: dict(v, status="open") for k, v in (tickets or TICKETS).items()}, indent=1))
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    if not (root / ".git").exists():
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", "init"], check=True)
    env = dict(os.environ)
    env["PATH"] = f"{FAKES / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env["FAKE_TK_DB"] = str(db)
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return env


def tickets(env: dict[str, str]) -> dict[str, str]:
    """ticket -> status in the fake database."""
    data = json.loads(Path(env["FAKE_TK_DB"]).read_text())
    return {k: str(v.get("status")) for k, v in data.items()}


def close(env: dict[str, str], ticket: str) -> None:
    subprocess.run(["tk", "close", ticket], env=env, check=True)


if __name__ == "__main__":
    e = make_project(Path(sys.argv[1]).absolute())
    for k in ("PATH", "FAKE_TK_DB"):
        print(f"export {k}={shlex.quote(e[k])}")
