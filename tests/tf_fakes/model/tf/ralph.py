"""Model of tf/ralph.py, which tf/ralph/__init__.py loads as the module `_ralph_main`: the loop calls the names
bound in THIS module's globals. A small loop calls them in tf's order; the tickets and their agent flags come
from the config's "model" section ({"tickets": [...], "flags": {ticket: flags}}). Outcomes go to
<ralph_dir>/outcomes.txt, one "<ticket> COMPLETE|FAILED <rc> <detail>" line each."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tf.logger import RalphLogger, create_logger
from tf.ralph_completion import (
    DispatchCompletionResult,
    DispatchCompletionStatus,
    graceful_terminate_dispatch,
    poll_dispatch_status,
    update_dispatch_tracking_status,
    wait_for_dispatch_completion,
)
from tf.session_recovery import (
    DEFAULT_SESSION_TTL_MS,
    DispatchSessionState,
    get_process_start_time,
    register_dispatch_session,
    run_startup_recovery,
    update_dispatch_session_status,
)
from tf.utils import find_project_root

__all__ = ["DEFAULT_SESSION_TTL_MS", "DispatchCompletionResult", "DispatchSessionState", "RalphLogger",
           "get_process_start_time", "register_dispatch_session"]

VALID_EXECUTION_BACKENDS = ("dispatch", "subprocess", "interactive")


@dataclass
class DispatchResult:
    session_id: str
    ticket_id: str
    status: str
    pid: int | None = None
    error: str | None = None


def ensure_pi() -> bool:
    return shutil.which("pi") is not None


def resolve_execution_backend(cli_execution_backend: str | None, config: dict[str, Any], logger: Any) -> str:
    if cli_execution_backend:
        return cli_execution_backend if cli_execution_backend in VALID_EXECUTION_BACKENDS else "dispatch"
    value = config.get("executionBackend", "dispatch")
    if value not in VALID_EXECUTION_BACKENDS:
        logger.warning(f"Invalid executionBackend {value!r} in config, using default")  # tf's call
        return "dispatch"
    return str(value)


def run_ticket_dispatch(ticket: str, workflow: str, flags: str, dry_run: bool, cwd: Path | None = None,
                        logger: Any = None, mode: str = "serial", capture_json: bool = False,
                        logs_dir: Path | None = None, ticket_title: str | None = None, pi_output: str = "inherit",
                        pi_output_file: str | None = None, timeout_ms: int = 0,
                        ralph_dir: Path | None = None) -> DispatchResult:
    raise AssertionError("tf's own run_ticket_dispatch was called")


def _outcome(ralph_dir: Path, line: str) -> None:
    with open(ralph_dir / "outcomes.txt", "a") as f:
        f.write(line + "\n")


def ralph_start(args: list[str]) -> int:
    root = find_project_root()
    assert root is not None
    ralph_dir = root / ".tf" / "ralph"
    config = json.loads((ralph_dir / "config.json").read_text())
    logger = create_logger(mode="serial")
    if resolve_execution_backend(None, config, logger) != "dispatch":
        return 1
    run_startup_recovery(ralph_dir=ralph_dir, repo_root=root, ttl_ms=DEFAULT_SESSION_TTL_MS,
                         worktrees_root=None, logger=logger)
    model = config["model"]
    timeout_ms = int(config.get("attemptTimeoutMs", 0))
    if "--parallel" not in args:
        for t in model["tickets"]:
            d = run_ticket_dispatch(ticket=t, workflow="/tf", flags=model["flags"][t], dry_run=False, cwd=None,
                                    logger=logger, mode="serial", pi_output="discard", timeout_ms=timeout_ms,
                                    ralph_dir=ralph_dir)
            if d.status == "failed":
                _outcome(ralph_dir, f"{t} FAILED 1 launch: {d.error}")
                return 1
            c = wait_for_dispatch_completion(dispatch_result=d, ticket_id=t, timeout_ms=timeout_ms,
                                             poll_interval_ms=1000.0, logger=logger)
            if c.status == DispatchCompletionStatus.COMPLETED:
                rc = c.return_code or 0
            elif c.status == DispatchCompletionStatus.TIMEOUT:
                rc = -1
            else:
                rc = c.return_code or 1
            update_dispatch_tracking_status(ralph_dir=ralph_dir, ticket=t, completion_result=c, logger=logger)
            status = "completed" if c.status == DispatchCompletionStatus.COMPLETED else "failed"
            update_dispatch_session_status(ralph_dir, d.session_id, status, return_code=rc, logger=logger)
            _outcome(ralph_dir, f"{t} {'COMPLETE' if rc == 0 else 'FAILED'} {rc} {c.error or ''}".rstrip())
            if rc != 0:
                return rc
        print("<promise>COMPLETE</promise>")
        return 0
    if not ensure_pi():
        return 1
    active: dict[str, DispatchResult] = {}
    started: dict[str, float] = {}
    failed = False
    for t in model["tickets"]:
        d = run_ticket_dispatch(t, "/tf", model["flags"][t], False, cwd=root, logger=logger, mode="parallel",
                                pi_output="discard", timeout_ms=timeout_ms, ralph_dir=ralph_dir)
        if d.status != "launched" or not d.pid:
            _outcome(ralph_dir, f"{t} FAILED 1 launch: {d.error}")
            failed = True
            continue
        active[t], started[t] = d, time.time()
    while active:
        for t, d in list(active.items()):
            assert d.pid
            if timeout_ms > 0 and (time.time() - started[t]) * 1000 >= timeout_ms:
                graceful_terminate_dispatch(pid=d.pid, session_id=d.session_id, logger=logger)
                update_dispatch_session_status(ralph_dir, d.session_id, "failed", logger=logger)
                _outcome(ralph_dir, f"{t} FAILED -1 dispatch timeout after {timeout_ms}ms")
                failed = True
                active.pop(t)
                continue
            running, code = poll_dispatch_status(d.pid)
            if running:
                continue
            active.pop(t)
            if code not in (0, None):
                update_dispatch_session_status(ralph_dir, d.session_id, "failed", code, logger=logger)
                _outcome(ralph_dir, f"{t} FAILED {code} dispatch failed (exit {code})")
                failed = True
                continue
            update_dispatch_session_status(ralph_dir, d.session_id, "completed", logger=logger)
            _outcome(ralph_dir, f"{t} COMPLETE 0")
        if active:
            time.sleep(0.05)  # tf sleeps 1 s between polls
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = argv or []
    if argv and argv[0] == "start":
        return ralph_start(argv[1:])
    return 1
