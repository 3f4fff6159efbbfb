"""The real agent CLIs for the tests and the demo: where they are, and a private HOME wired to a scripted model.

    d = agents_dir()                          # AgentsMissing (one line: run ./dev setup) when not installed
    env = pi_env(home, server.base_url)       # writes home/.pi/agent/models.json; HOME, PATH (node), PI_OFFLINE
    argv = pi_argv("/tf T-1 --auto")          # [.../bin/pi, -p, PROMPT, --provider scripted, --model scripted-1]

Inside the bed, tests/sandbox/sdbox mounts the cache of tests/agents/install.py at $RALPH_AGENTS_DIR and puts
the host's node on PATH; on a host with its own user manager the cache is found where install.py put it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import install  # noqa: E402

PI_VERSION, CLAUDE_VERSION = install.PINS[install.PI], install.PINS[install.CLAUDE]
PROVIDER, MODEL = "scripted", "scripted-1"
# Variables that make an agent refuse or change mode when started from inside another agent's session.
NESTED_AGENT_VARS = ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT")
# Marks every process a test starts (its environment), so "nothing left" can be checked on the whole host.
MARK_VAR = "RALPH_AGENT_TEST_MARK"


class AgentsMissing(Exception):
    """The real agents are not installed here: one line saying what to do."""


def agents_dir() -> Path:
    d = os.environ.get("RALPH_AGENTS_DIR")
    path = Path(d) if d else install.cache_dir()
    if not (path / ".complete").exists():
        where = f"RALPH_AGENTS_DIR={d}" if d else str(path)
        raise AgentsMissing(f"the real agents (pi {PI_VERSION}, claude {CLAUDE_VERSION}) are not installed at "
                            f"{where}: run ./dev setup (it installs them from the npm registry, cached), then "
                            "bring the bed down and up again (tests/sandbox/sdbox down; ./dev test)")
    return path


def node_dir() -> str:
    node = shutil.which("node")
    if node is None:
        raise AgentsMissing(f"the real pi needs node >= {'.'.join(map(str, install.NODE_MIN))} on PATH and there "
                            "is none: run ./dev setup, and in the bed restart it (sdbox down; up) so node is bound in")
    return os.path.dirname(node)


def pi_path() -> str:
    return str(agents_dir() / "bin" / "pi")


def claude_path() -> str:
    return str(agents_dir() / "bin" / "claude")


def pi_argv(prompt: str, *extra: str) -> list[str]:
    return [pi_path(), "-p", prompt, "--provider", PROVIDER, "--model", MODEL, *extra]


def claude_argv(prompt: str, *extra: str) -> list[str]:
    # -p (print mode) asks before each tool; in a test nobody answers: allow exactly the Bash tool.
    return [claude_path(), "-p", prompt, "--allowedTools", "Bash", *extra]


def base_env(home: Path, mark: str = "", base: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with a private HOME, node on PATH, a git identity, no nested-agent variables."""
    env = {k: v for k, v in (base if base is not None else os.environ).items() if k not in NESTED_AGENT_VARS}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), PATH=f"{node_dir()}:{env.get('PATH', '/usr/bin:/bin')}",
               GIT_AUTHOR_NAME="agent", GIT_AUTHOR_EMAIL="agent@localhost",
               GIT_COMMITTER_NAME="agent", GIT_COMMITTER_EMAIL="agent@localhost")
    env.pop("XDG_CONFIG_HOME", None)
    if mark:
        env[MARK_VAR] = mark
    return env


def write_models(home: Path, base_url: str) -> Path:
    """pi's custom provider (docs/models.md in the package): an OpenAI-compatible server at base_url."""
    path = home / ".pi" / "agent" / "models.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"providers": {PROVIDER: {
        "baseUrl": base_url, "api": "openai-completions", "apiKey": "scripted-dummy-key",
        "compat": {"supportsDeveloperRole": False, "supportsReasoningEffort": False},
        "models": [{"id": MODEL, "name": "scripted test model", "contextWindow": 32000, "maxTokens": 4096}]}}},
        indent=1))
    return path


def pi_env(home: Path, base_url: str, mark: str = "", base: Mapping[str, str] | None = None) -> dict[str, str]:
    """pi's environment: private HOME with models.json; PI_OFFLINE=1 (no start-up network: CI has none)."""
    write_models(home, base_url)
    env = base_env(home, mark, base)
    env.pop("PI_CODING_AGENT_DIR", None)  # models.json is under HOME/.pi/agent
    env["PI_OFFLINE"] = "1"
    return env


def claude_env(home: Path, root_url: str | None, mark: str = "",
               base: Mapping[str, str] | None = None) -> dict[str, str]:
    """claude's environment: private HOME; with root_url, the scripted Messages API and a dummy key; no
    telemetry or other non-essential traffic (CI has no network). root_url None = not logged in at all."""
    env = base_env(home, mark, base)
    for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "CLAUDE_CONFIG_DIR"):
        env.pop(k, None)
    env.update(DISABLE_TELEMETRY="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1")
    if root_url is not None:
        env.update(ANTHROPIC_BASE_URL=root_url, ANTHROPIC_API_KEY="sk-ant-scripted-dummy")
    return env


def commit_command(name: str, text: str = "written by the real agent") -> str:
    """The shell command the scripted model has the agent run: write a file and commit it (in its cwd)."""
    return (f"printf '%s\\n' '{text}' > {name} && git add {name} && "
            f"git commit -q -m 'agent: add {name}' && git log -1 --format=%H")


def marked_processes(mark: str) -> list[str]:
    """Command lines of live processes on this host (container) whose environment carries the mark."""
    needle = f"{MARK_VAR}={mark}".encode()
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if needle in (p / "environ").read_bytes().split(b"\0"):
                stat = (p / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    found.append((p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found
