"""ralph-systemd: run long-lived, unattended child sessions in transient systemd user scopes.

    from ralph_systemd import DispatchSpec, run
    result = run(DispatchSpec(argv=["pi", "-p", "/tf T-1 --auto"], ticket="T-1", cwd=worktree, timeout=3600))
    result.status, result.exit_code, result.log_path

Many at once: `Supervisor` (launch / wait / as_completed / stop / attach).
"""

from __future__ import annotations

from ralph_systemd.bus import NoUserBusError
from ralph_systemd.result import DispatchResult, Status, Termination
from ralph_systemd.retry import BusError
from ralph_systemd.spec import DispatchSpec
from ralph_systemd.dispatch import Dispatch
from ralph_systemd.limits import HostLimitError
from ralph_systemd.supervisor import Supervisor

__version__ = "0.1.0"
__all__ = ["BusError", "Dispatch", "DispatchResult", "DispatchSpec", "HostLimitError", "NoUserBusError", "Status", "Supervisor",
           "Termination", "run"]


def run(spec: DispatchSpec) -> DispatchResult:
    """Launch one dispatch and wait for its result (its own supervisor and bus connection)."""
    with Supervisor() as sup:
        return sup.wait(sup.launch(spec))
