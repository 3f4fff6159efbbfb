"""The switch: put the systemd backend into tf's Ralph loop (tf v1.1.10) in this process, without editing tf.

tf's loop lives in `tf/ralph.py`, which the package `tf/ralph/__init__.py` loads under the module name
`_ralph_main`; the loop calls the names bound in THAT module's globals. So `install()` rebinds them there (and,
for consistency, in `tf.ralph` and `tf.ralph_completion`):

- run_ticket_dispatch, wait_for_dispatch_completion, poll_dispatch_status, graceful_terminate_dispatch: ours,
  answering with tf's own DispatchResult / DispatchCompletionResult / DispatchCompletionStatus classes;
- ensure_pi: looks for our agent command (agentCommand or $RALPH_SYSTEMD_PI), not for `pi` on PATH;
- resolve_execution_backend: "systemd" (config or CLI) selects the dispatch path, which is now ours;
- run_startup_recovery: first stops, with the ladder, the live scopes of sessions tf's registry says are
  running (a Ralph SIGKILLed mid-dispatch), then runs tf's own recovery, which records them "orphaned";
- RalphLogger gets `warning` (= its `warn`): tf's own session_recovery and ralph_completion call
  `logger.warning`, which RalphLogger lacks;
- SIGINT/SIGTERM (main thread only): unwind tf's loop with SystemExit(128+N), as tf's own handler does; then
  `finish()` stops our dispatches with the ladder and records them "failed" in tf's registry.

Sessions are registered in `<ralph_dir>/dispatch-sessions.json` with tf's own functions, as tf's backend does.
"""

from __future__ import annotations

import atexit
import importlib
import shutil
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from ralph_systemd.result import Status
from ralph_systemd.tf.backend import SystemdBackend, _Say
from ralph_systemd.tf.compat import TfTypes
from ralph_systemd.tf.config import BACKEND_NAME, BackendConfig

LOOP_MODULE = "_ralph_main"  # tf/ralph.py as tf/ralph/__init__.py loads it
BACKEND_FUNCTIONS = ("run_ticket_dispatch", "wait_for_dispatch_completion", "poll_dispatch_status",
                     "graceful_terminate_dispatch")
PATCHED_IN_LOOP = (*BACKEND_FUNCTIONS, "ensure_pi", "resolve_execution_backend", "run_startup_recovery")


class TfNotFound(ImportError):
    pass


class TfRegistry:
    """tf's session registry through tf's own functions (tf/session_recovery.py)."""

    def __init__(self, sr: ModuleType) -> None:
        self.sr = sr

    def register(self, ralph_dir: Path, session_id: str, ticket: str, pid: int, cwd: Path | None,
                 logger: Any) -> None:
        state = self.sr.DispatchSessionState(
            session_id=session_id, ticket_id=ticket, pid=pid, process_start_time=self.sr.get_process_start_time(pid),
            started_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            worktree_path=str(cwd) if cwd else None, status="running")
        self.sr.register_dispatch_session(ralph_dir, state, logger)

    def running(self, ralph_dir: Path, logger: Any) -> list[tuple[str, str, int | None]]:
        state = self.sr.load_session_state(ralph_dir, logger)
        return [(s.session_id, s.ticket_id, s.pid) for s in state.sessions if s.status == "running"]

    def update(self, ralph_dir: Path, session_id: str, status: str, return_code: int | None, logger: Any) -> None:
        self.sr.update_dispatch_session_status(ralph_dir, session_id, status, return_code=return_code, logger=logger)


class _State:
    backend: SystemdBackend | None = None
    originals: dict[tuple[str, str], Any] = {}
    logger_warning_added = False
    signalled: int | None = None
    finished = False
    lock = threading.Lock()


def _tf_modules() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType, ModuleType]:
    try:
        ralph_pkg = importlib.import_module("tf.ralph")  # loads tf/ralph.py as _ralph_main
        names = ("tf.ralph_completion", "tf.session_recovery", "tf.logger")
        completion, recovery, logger_mod = (importlib.import_module(n) for n in names)
    except ImportError as e:
        raise TfNotFound(f"tf (pi-ticketflow) is not importable here ({e}); install it in this Python "
                         "environment or put a tf checkout on PYTHONPATH") from None
    loop = sys.modules.get(LOOP_MODULE)
    if loop is None or not all(hasattr(loop, n) for n in PATCHED_IN_LOOP):
        raise TfNotFound(f"this tf has no {LOOP_MODULE} module with {', '.join(PATCHED_IN_LOOP)}: "
                         "ralph-systemd supports tf v1.1.10's layout")
    return loop, ralph_pkg, completion, recovery, logger_mod


def _set(mod: ModuleType, name: str, value: Any) -> None:
    key = (mod.__name__, name)
    if key not in _State.originals:
        _State.originals[key] = getattr(mod, name)
    setattr(mod, name, value)


def _original(mod: ModuleType, name: str) -> Any:
    return _State.originals.get((mod.__name__, name), getattr(mod, name))


def install(config: BackendConfig | None = None, *, handle_signals: bool = True) -> SystemdBackend:
    """Switch tf's Ralph loop in this process to ralph-systemd; idempotent (a second call only replaces the
    config). Returns the backend. TfNotFound when tf cannot be imported."""
    with _State.lock:
        loop, ralph_pkg, completion, recovery, logger_mod = _tf_modules()
        if _State.backend is not None:
            if config is not None:
                _State.backend.config = config
            return _State.backend
        backend = SystemdBackend(
            config, TfTypes(status=completion.DispatchCompletionStatus, completion=completion.DispatchCompletionResult,
                            dispatch=loop.DispatchResult), TfRegistry(recovery))
        for name in BACKEND_FUNCTIONS:
            fn = getattr(backend, name)
            for mod in (loop, ralph_pkg, completion):
                if hasattr(mod, name):
                    _set(mod, name, fn)

        def ensure_pi() -> bool:
            return shutil.which(backend.config.agent()[0]) is not None

        tf_resolve = _original(loop, "resolve_execution_backend")

        def resolve_execution_backend(cli_execution_backend: str | None, config: dict[str, Any], logger: Any) -> str:
            if cli_execution_backend == BACKEND_NAME or (
                    not cli_execution_backend and isinstance(config, dict)
                    and config.get("executionBackend") == BACKEND_NAME):
                return "dispatch"
            chosen: str = tf_resolve(cli_execution_backend, config, logger)
            if chosen != "dispatch":
                _Say(logger, None)("warn", f"executionBackend {chosen!r} is tf's own and runs pi outside "
                                           f"ralph-systemd's scopes; use {BACKEND_NAME!r} or 'dispatch'")
            return chosen

        tf_recovery = _original(loop, "run_startup_recovery")

        def run_startup_recovery(ralph_dir: Path, repo_root: Path, ttl_ms: int = recovery.DEFAULT_SESSION_TTL_MS,
                                 worktrees_root: Path | None = None, logger: Any = None) -> Any:
            backend.recover_registered(Path(ralph_dir), logger)
            return tf_recovery(ralph_dir=ralph_dir, repo_root=repo_root, ttl_ms=ttl_ms,
                               worktrees_root=worktrees_root, logger=logger)

        for mod in (loop, ralph_pkg):
            if hasattr(mod, "ensure_pi"):
                _set(mod, "ensure_pi", ensure_pi)
            if hasattr(mod, "resolve_execution_backend"):
                _set(mod, "resolve_execution_backend", resolve_execution_backend)
        _set(loop, "run_startup_recovery", run_startup_recovery)
        rl = logger_mod.RalphLogger
        if not hasattr(rl, "warning"):
            rl.warning = rl.warn
            _State.logger_warning_added = True
        if handle_signals and threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, _on_signal)
            atexit.register(_at_exit)
        _State.backend = backend
        _State.signalled = None
        _State.finished = False
        return backend


def uninstall() -> None:
    """Undo install() (for tests): tf's own functions and signal handling come back."""
    with _State.lock:
        backend, _State.backend = _State.backend, None
        for (modname, name), value in _State.originals.items():
            mod = sys.modules.get(modname)
            if mod is not None:
                setattr(mod, name, value)
        _State.originals = {}
        if _State.logger_warning_added:
            del sys.modules["tf.logger"].RalphLogger.warning
            _State.logger_warning_added = False
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(s) is _on_signal:
                    signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)
        if backend is not None:
            backend.close()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Unwind tf's loop like tf's own handler (SystemExit(128+N)); finish() stops the dispatches. A second
    signal while that runs is noted and ignored: the stop is already bounded by the grace."""
    if _State.signalled is not None or _State.finished:
        print(f"[ralph-systemd] {signal.Signals(signum).name}: already stopping the dispatches",
              file=sys.stderr, flush=True)
        return
    _State.signalled = signum
    raise SystemExit(128 + signum)


def finish(*, detach: bool = False) -> None:
    """After tf's entry point returned or raised: on a signal, stop every running dispatch with the ladder
    and record it "failed" in tf's registry; else detach (fire-and-forget `ralph run`) or stop what tf left
    running (`ralph start` waits for all of its own; anything left is stopped, never orphaned)."""
    backend = _State.backend
    if backend is None or _State.finished:
        return
    _State.finished = True
    signum = _State.signalled
    if signum is None and detach:
        for t in backend.running():
            print(f"[ralph-systemd] {t.dispatch.ticket} keeps running in {t.dispatch.unit} (bounded by its "
                  f"RuntimeMaxSec); follow it with: ralph-systemd logs -f {t.dispatch.ticket}",
                  file=sys.stderr, flush=True)
        backend.detach()
        return
    why = signal.Signals(signum).name if signum is not None else "Ralph ended"
    for t, r in backend.stop_all(Status.STOPPED):
        how = f"{r.termination_method}, {r.duration_s:.1f} s after launch" if r else "still not empty after SIGKILL"
        print(f"[ralph-systemd] {why}: stopped {t.dispatch.ticket} (session {t.session_id}) with the ladder: {how}",
              file=sys.stderr, flush=True)
        if t.ralph_dir is not None and backend.registry is not None:
            code = None if r is None else (r.exit_code if r.exit_code is not None else
                                           (-r.signal if r.signal is not None else None))
            backend.registry.update(t.ralph_dir, t.session_id, "failed", code, None)
    backend.close()


def _at_exit() -> None:
    # Only after a signal: a normal exit leaves fire-and-forget dispatches alone (finish() was not called).
    if _State.signalled is not None:
        finish()
