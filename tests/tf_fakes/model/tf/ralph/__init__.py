"""Model of the tf/ralph package: it loads tf/ralph.py as the module `_ralph_main` and re-exports its names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_ralph_main", Path(__file__).parent.parent / "ralph.py")
assert _spec is not None and _spec.loader is not None
_ralph_module = importlib.util.module_from_spec(_spec)
sys.modules["_ralph_main"] = _ralph_module
_spec.loader.exec_module(_ralph_module)

DispatchResult = _ralph_module.DispatchResult
ensure_pi = _ralph_module.ensure_pi
main = _ralph_module.main
resolve_execution_backend = _ralph_module.resolve_execution_backend
run_ticket_dispatch = _ralph_module.run_ticket_dispatch

from tf.ralph_completion import (  # noqa: E402
    DispatchCompletionResult,
    DispatchCompletionStatus,
    graceful_terminate_dispatch,
    poll_dispatch_status,
    wait_for_dispatch_completion,
)

__all__ = ["DispatchCompletionResult", "DispatchCompletionStatus", "DispatchResult", "ensure_pi",
           "graceful_terminate_dispatch", "main", "poll_dispatch_status", "resolve_execution_backend",
           "run_ticket_dispatch", "wait_for_dispatch_completion"]
