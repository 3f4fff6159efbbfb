"""ralph-systemd as the execution backend of tf's Ralph loop (github.com/legout/pi-ticketflow, tf v1.1.10).

The switch (one, documented, no edits to tf): run tf's own CLI through ours,

    ralph-systemd tf ralph start --parallel 2        # or: python -m ralph_systemd.tf ralph start ...

which calls `install()` (see ralph_systemd/tf/install.py for exactly what it rebinds, and why in the module
`_ralph_main`) and then tf's entry point in this process. `executionBackend` may stay "dispatch" (tf's default)
or be "systemd"; the optional "systemd" section of `.tf/ralph/config.json` configures us: agentCommand
(program, or list of program + leading args; no shell), logDir (private session logs), graceMs (start of a stop
to systemd's SIGKILL of the cgroup, default 5000 = tf's kill_wait_ms), eofGraceMs (EOF to SIGTERM), idleTimeoutMs
(stop after that long with no output; 0 = off), maxRuntimeMs (the RuntimeMaxSec of a dispatch tf gives no
timeout, default 4 h), slice, memoryMax, tasksMax, cpuQuota, inheritTailBytes. Any other key is an error naming
it (exit 2, nothing started). $RALPH_SYSTEMD_PI (a program path) overrides agentCommand.

Without tf, the same functions are importable from here (`run_ticket_dispatch`, `wait_for_dispatch_completion`,
`poll_dispatch_status`, `graceful_terminate_dispatch`, `recover_dispatches`) and answer with this package's
copies of tf's types; `backend_from_config(config)` builds a SystemdBackend from a Ralph config.

Differences from tf's own dispatch backend that matter to a tf user (the README's list; keep them in sync):

1. Success needs an exit code of 0. A session whose code is unknown (re-attached after Ralph died) is ERROR with
   return_code None, and poll_dispatch_status gives 255, never (False, None), which tf's parallel loop counts as
   success. tf read every ChildProcessError as success.
2. No orphans: the whole scope is stopped, setsid'd double-forked daemons included; what a session leaves
   behind when its main process exits is killed (the completion's detail.leftovers_killed). use_process_group
   is accepted and unused.
3. Stops begin with EOF (stdin closed), then SIGTERM, and systemd SIGKILLs the cgroup at the end of graceMs
   (or kill_wait_ms / graceful_shutdown_ms if smaller). termination_method can be "eof".
4. Every dispatch has a RuntimeMaxSec: timeout_ms, or maxRuntimeMs when tf passes 0. It is enforced by systemd
   even if Ralph is SIGKILLed; such dispatches stay visible (`ralph-systemd ls`, `systemctl --user status
   'ralph-*'`). EOF comes inside the budget, so SIGTERM lands at timeout_ms as with tf; a timeout's
   return_code is None, as with tf. In parallel mode systemd ends a dispatch at its timeout; tf's own check
   (every 1 s) then finds it ended: progress.md says "dispatch timeout after Nms" or "dispatch failed (exit
   124)".
5. SIGINT/SIGTERM to Ralph stop every dispatch with the ladder, record it "failed" in dispatch-sessions.json
   (return code included) and exit 130/143. tf's handler SIGTERMed process groups and recorded nothing.
6. A restarted `ralph start` first stops, with the ladder, the live scope of every session tf's registry says
   is running (Ralph was SIGKILLed); tf's own recovery then records it "orphaned" and the ticket runs again.
   tf's recovery SIGTERMed only the main pid, leaving the rest of its process group.
7. `ralph run` (one ticket, fire and forget) leaves its dispatch running when Ralph exits, as tf does, but
   bounded by its RuntimeMaxSec; its stdin sees EOF then. `ralph start` never leaves a dispatch behind.
8. Output: every mode keeps a private per-session log (0600 in a 0700 directory: logDir, else
   <logs_dir>/sessions, else ~/.local/state/ralph-systemd/logs). "file": the log is also hard-linked at
   pi_output_file (or <logs_dir>/<ticket>.log), live. "inherit": tf sent the output to /dev/null; we say at
   launch where it is (tail -f) and show its last inheritTailBytes (64 KiB; 0 = off) on Ralph's stderr when it
   ends, control characters escaped. Ralph's stdout carries only tf's own output (`<promise>COMPLETE</promise>`).
9. capture_json passes `--mode json` to the agent as an option; tf appended it to the prompt text.
10. One live dispatch per ticket within a project (the unit name carries the project's key). "failed" at launch only means it could not start (program
    or cwd missing, scope error, a live dispatch of the same ticket); a session that exits at once is reported
    when it completes, with its exit code.
11. Statuses: stopped by graceful_terminate_dispatch or an operator -> TERMINATED (tf never produced it); idle
    timeout -> TIMEOUT; OOM kill -> ERROR. duration_ms counts from the launch.
12. `ensure_pi()` looks for agentCommand / $RALPH_SYSTEMD_PI, not `pi`. The /tf prompt check stays tf's.
13. tf's `subprocess` and `interactive` execution backends are tf's own: they run pi outside scopes (a warning
    says so).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ralph_systemd.tf.backend import SystemdBackend
from ralph_systemd.tf.compat import (
    UNKNOWN_RETURN_CODE,
    DispatchCompletionResult,
    DispatchCompletionStatus,
    DispatchResult,
    build_cmd,
    poll_code,
    return_code,
)
from ralph_systemd.tf.config import (
    BACKEND_NAME,
    CONFIG_SECTION,
    DEFAULT_MAX_RUNTIME_MS,
    ENV_AGENT,
    BackendConfig,
    parse_config,
)
from ralph_systemd.tf.install import finish, install, uninstall

_poll_code = poll_code  # the old private names, still used by tests
_return_code = return_code


def backend_from_config(config: Mapping[str, Any]) -> SystemdBackend | None:
    """The backend Ralph's config asks for: a SystemdBackend if executionBackend is "systemd", else None
    (Ralph keeps its own). ValueError for a bad "systemd" section."""
    if config.get("executionBackend") != BACKEND_NAME:
        if CONFIG_SECTION in config:
            parse_config(config[CONFIG_SECTION])  # still say so if it is wrong
        return None
    return SystemdBackend(parse_config(config.get(CONFIG_SECTION, {})))


# -- module-level functions: the default backend, configured from the environment -------------------------------

_default: SystemdBackend | None = None
_default_lock = threading.Lock()


def default_backend() -> SystemdBackend:
    """The backend behind the module-level functions (agent: $RALPH_SYSTEMD_PI or `pi`)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SystemdBackend()
        return _default


def run_ticket_dispatch(ticket: str, workflow: str, flags: str, dry_run: bool, cwd: Path | None = None,
                        logger: Any = None, mode: str = "serial", capture_json: bool = False,
                        logs_dir: Path | None = None, ticket_title: str | None = None, pi_output: str = "inherit",
                        pi_output_file: str | None = None, timeout_ms: int = 0,
                        ralph_dir: Path | None = None) -> Any:
    return default_backend().run_ticket_dispatch(
        ticket, workflow, flags, dry_run, cwd=cwd, logger=logger, mode=mode, capture_json=capture_json,
        logs_dir=logs_dir, ticket_title=ticket_title, pi_output=pi_output, pi_output_file=pi_output_file,
        timeout_ms=timeout_ms, ralph_dir=ralph_dir)


def wait_for_dispatch_completion(dispatch_result: Any, ticket_id: str, timeout_ms: int = 0,
                                 poll_interval_ms: float = 1000.0, logger: Any = None,
                                 graceful_shutdown_ms: float = 5000.0) -> Any:
    return default_backend().wait_for_dispatch_completion(
        dispatch_result, ticket_id, timeout_ms=timeout_ms, poll_interval_ms=poll_interval_ms, logger=logger,
        graceful_shutdown_ms=graceful_shutdown_ms)


def poll_dispatch_status(pid: int) -> tuple[bool, int | None]:
    return default_backend().poll_dispatch_status(pid)


def graceful_terminate_dispatch(pid: int, session_id: str | None = None, logger: Any = None,
                                kill_wait_ms: float = 5000.0, use_process_group: bool = True) -> tuple[bool, str]:
    return default_backend().graceful_terminate_dispatch(pid, session_id=session_id, logger=logger,
                                                         kill_wait_ms=kill_wait_ms,
                                                         use_process_group=use_process_group)


def recover_dispatches() -> list[Any]:
    return default_backend().recover_dispatches()


__all__ = ["BACKEND_NAME", "DEFAULT_MAX_RUNTIME_MS", "ENV_AGENT", "UNKNOWN_RETURN_CODE", "BackendConfig",
           "DispatchCompletionResult", "DispatchCompletionStatus", "DispatchResult", "SystemdBackend",
           "backend_from_config", "build_cmd", "default_backend", "finish", "graceful_terminate_dispatch", "install",
           "parse_config", "poll_dispatch_status", "recover_dispatches", "run_ticket_dispatch", "uninstall",
           "wait_for_dispatch_completion"]
