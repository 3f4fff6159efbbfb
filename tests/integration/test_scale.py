"""Issue 21: 4,096 live dispatches on one host. Each runs in its own scope, stop_all ends them all, and
nothing is left: no process of theirs (read from /proc), no unit (read with systemctl). Not timed: the
figures are printed for the reliability table, never asserted.

RALPH_SCALE_N overrides the number (e.g. 512 for a quick look).
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from faults_util import loaded_units, processes_in_units, ticket

from ralph_systemd import DispatchSpec, Status, Supervisor

pytest_plugins = ["faults_table"]
pytestmark = pytest.mark.slow

Figure = Callable[[str, str], None]
N = int(os.environ.get("RALPH_SCALE_N", "4096"))


def _scope_of(pid: int) -> str | None:
    """The leaf of the unified cgroup of `pid` (its scope's name), from /proc; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("0::")), None)
    return line.rsplit("/", 1)[-1] if line else None


def test_thousands_of_live_dispatches_each_in_its_scope_all_stopped_nothing_left(tmp_path: Path,
                                                                                 figure: Figure) -> None:
    prefix = ticket("scale")
    specs = [DispatchSpec(argv=["sleep", "3600"], ticket=f"{prefix}_{i}", cwd=tmp_path, log_dir=tmp_path / "logs",
                          timeout=1800, grace=20) for i in range(N)]
    units = {s.unit for s in specs}
    assert len(units) == N
    with Supervisor() as sup:
        t0 = time.monotonic()
        ds = sup.launch_many(specs)
        t_launched = time.monotonic() - t0
        failed = [d.result for d in ds if d.pid is None]
        assert not failed, f"{len(failed)} of {N} did not launch, e.g. {failed[:3]}"
        scopes = {d.unit: _scope_of(d.pid) for d in ds if d.pid is not None}
        elsewhere = {u: s for u, s in scopes.items() if s != u}
        loaded = set(loaded_units(prefix))
        t1 = time.monotonic()
        sup.stop_all()
        results = sup.wait_all(ds, timeout=900)
        t_stopped = time.monotonic() - t1
    statuses = collections.Counter(r.status for r in results)
    left = processes_in_units(units)
    units_left = loaded_units(prefix)
    figure("live dispatches at once",
           f"{N} sleeping dispatches: all in their own scopes after {t_launched:.1f} s (launch_many), "
           f"{len(elsewhere)} elsewhere; stop_all until every result {t_stopped:.1f} s; "
           f"statuses {dict((s.value, c) for s, c in statuses.items())}; {len(left)} processes and "
           f"{len(units_left)} units left")
    assert elsewhere == {}, f"{len(elsewhere)} sessions not in their own scope, e.g. {list(elsewhere.items())[:3]}"
    assert loaded == units, f"the manager lists {len(loaded)} of our {N} units while they run"
    assert len(results) == N and statuses == {Status.STOPPED: N}, statuses
    assert left == [], left[:5]
    assert units_left == [], units_left[:5]
