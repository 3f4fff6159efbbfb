"""What an operator sees WITHOUT our CLI: `systemctl --user status` of a live dispatch and of ralph.slice
names the ticket, the session, the command and the time limit."""

from __future__ import annotations

import os
import subprocess
import urllib.parse
from pathlib import Path

from cli_helpers import cli_json, read_fifo, ticket


def _status(unit: str) -> str:
    r = subprocess.run(["systemctl", "--user", "status", "--no-pager", "--lines=0", unit],
                       capture_output=True, text=True, env={**os.environ, "SYSTEMD_COLORS": "0"})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_systemctl_status_shows_ticket_session_command_and_time_limit(tmp_path: Path) -> None:
    t = ticket("ops")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    rc, j = cli_json("run", "--detach", "--json", "--ticket", t, "--timeout", "1h 30min", "--log-dir", str(tmp_path),
                     "--", "sh", "-c", f"echo x > {fifo}; exec sleep 5400")
    assert rc == 0
    read_fifo(fifo)
    try:
        scope = _status(j["unit"])
        # First line: "● ralph-<ticket>.scope - ralph ticket=<t> session=<s>: <command>"
        assert f"ticket={t}" in scope and f"session={j['session']}" in scope
        assert "sleep 5400" in scope
        # The time limit (RuntimeMaxSec) appears as systemd's own "Until: <date>; <span> left" line.
        until = [line.strip() for line in scope.splitlines() if line.strip().startswith("Until:")]
        assert until and until[0].endswith(" left") and ("1h 29min" in until[0] or "1h 30min" in until[0]), scope
        docs = [line.strip()[len("Docs: "):] for line in scope.splitlines() if line.strip().startswith("Docs: ")]
        assert docs and urllib.parse.unquote(docs[0]) == f"file://{j['log_path']}", scope  # where its output goes
        slice_ = _status("ralph.slice")
        assert j["unit"] in slice_ and "sleep 5400" in slice_
    finally:
        cli_json("stop", "--json", t)
