"""Helpers for driving `python -m ralph_systemd` as a subprocess against the real user manager."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from ralph_systemd.naming import project_key, unit_name_for_ticket


def unit_of(t: str, cwd: Path | str = ".") -> str:
    """The unit name of ticket t for a CLI run in cwd (its project key comes from that directory)."""
    return unit_name_for_ticket(t, project_key(cwd))


def ticket(prefix: str) -> str:
    return f"cli{prefix}.{uuid.uuid4().hex[:8]}"


# -P: with RALPH_TEST_CLI_PATH the working directory must not shadow that checkout on sys.path
CLI = [sys.executable, *(["-P"] if os.environ.get("RALPH_TEST_CLI_PATH") else []), "-m", "ralph_systemd"]


def cli_env(**extra: str) -> dict[str, str]:
    """The CLI's environment. RALPH_TEST_CLI_PATH=DIR runs the CLI from another checkout's code (PYTHONPATH),
    while the tests' own helpers stay on this one: how a new test is seen to fail on the old code."""
    env = dict(os.environ, **extra)
    if os.environ.get("RALPH_TEST_CLI_PATH"):
        env["PYTHONPATH"] = os.environ["RALPH_TEST_CLI_PATH"]
    return env


def cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=cli_env())


def cli_json(*args: str, cwd: Path | None = None) -> tuple[int, Any]:
    r = cli(*args, cwd=cwd)
    assert r.stdout.strip(), f"no JSON on stdout; stderr: {r.stderr}"
    return r.returncode, json.loads(r.stdout)


def popen(*args: str, cwd: Path | None = None, **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CLI, *args], cwd=cwd, env=cli_env(), **kw)


def read_fifo(path: Path, timeout: float = 30.0) -> bytes:
    """Block (select, no polling) until a writer has written to the FIFO and closed it; its bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    data = b""
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"nothing came through {path} in {timeout} s"
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if chunk:
                data += chunk
            elif data:  # EOF after data: the writer closed
                return data
            else:  # Linux reports a FIFO that never had a writer as not ready, so this is a closed writer
                return data
    finally:
        os.close(fd)


def unit_loaded(unit: str) -> bool:
    out = subprocess.run(["systemctl", "--user", "show", unit, "-pLoadState", "--value"],
                         capture_output=True, text=True).stdout.strip()
    return out not in ("not-found", "")


def alive(pid: int) -> bool:
    """Running (not a zombie) process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def read_until(fd: int, needle: bytes, timeout: float = 30.0) -> bytes:
    """Read from fd (a pty's master side) until needle has appeared or timeout passed; everything read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        if ready:
            seen += os.read(fd, 4096)
    return seen
