"""Model of tf.session_recovery: <ralph_dir>/dispatch-sessions.json in tf's format, and its startup recovery
(SIGTERM to the registered pid of every "running" session, then status "orphaned")."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_SESSION_TTL_MS = 7 * 24 * 60 * 60 * 1000


@dataclass
class DispatchSessionState:
    session_id: str
    ticket_id: str
    pid: int | None
    process_start_time: int | None = None
    started_at: str = ""
    worktree_path: str | None = None
    status: str = "running"
    completed_at: str | None = None
    return_code: int | None = None


@dataclass
class SessionStateFile:
    version: int = 1
    sessions: list[DispatchSessionState] | None = None


def _path(ralph_dir: Path) -> Path:
    return Path(ralph_dir) / "dispatch-sessions.json"


def load_session_state(ralph_dir: Path, logger: Any = None) -> SessionStateFile:
    try:
        data = json.loads(_path(ralph_dir).read_text())
    except FileNotFoundError:
        return SessionStateFile(sessions=[])
    return SessionStateFile(data["version"], [DispatchSessionState(**s) for s in data["sessions"]])


def _save(ralph_dir: Path, state: SessionStateFile) -> None:
    _path(ralph_dir).write_text(json.dumps({"version": state.version, "last_updated": "",
                                            "sessions": [asdict(s) for s in state.sessions or []]}, indent=2))


def get_process_start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def register_dispatch_session(ralph_dir: Path, session: DispatchSessionState, logger: Any = None) -> bool:
    state = load_session_state(ralph_dir)
    state.sessions = [s for s in state.sessions or [] if s.session_id != session.session_id] + [session]
    _save(ralph_dir, state)
    return True


def update_dispatch_session_status(ralph_dir: Path, session_id: str, status: str, return_code: int | None = None,
                                   logger: Any = None) -> bool:
    state = load_session_state(ralph_dir)
    for s in state.sessions or []:
        if s.session_id == session_id:
            s.status, s.completed_at = status, "now"
            if return_code is not None:
                s.return_code = return_code
            _save(ralph_dir, state)
            return True
    if logger:
        logger.warning(f"Session {session_id} not found in state file for update")  # tf's call: no such method
    return False


def run_startup_recovery(ralph_dir: Path, repo_root: Path, ttl_ms: int = DEFAULT_SESSION_TTL_MS,
                         worktrees_root: Path | None = None, logger: Any = None) -> tuple[int, int]:
    cleaned = 0
    for s in load_session_state(ralph_dir).sessions or []:
        if s.status != "running":
            continue
        if s.pid:
            try:
                os.kill(s.pid, signal.SIGTERM)  # tf: the registered pid only, never the rest of its scope
            except ProcessLookupError:
                pass
        update_dispatch_session_status(ralph_dir, s.session_id, "orphaned", logger=logger)
        cleaned += 1
    return cleaned, 0
