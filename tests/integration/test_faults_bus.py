"""Issue 7, D-Bus faults against the real user manager: errors injected in front of a real pystemd
connection (transient ones are retried and the dispatches come out right), and real permanent errors
from systemd surface after exactly one attempt. The exhaustive cases are in tests/unit/test_bus_faults.py."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faults_util import loaded_units, ticket

from ralph_systemd.naming import unit_name_for_ticket
from pystemd.dbusexc import DBusNoReplyError

from ralph_systemd import DispatchSpec, Status, Supervisor
from ralph_systemd.bus import PystemdUserBus, UnitExistsError
from ralph_systemd.retry import BusError

pytest_plugins = ["faults_table"]
pytestmark = pytest.mark.slow

Figure = Callable[[str, str], None]


class Flaky:
    """In front of pystemd's DBus object: every `every`-th method call fails with NoReply before reaching
    the manager; everything else is the real connection."""

    def __init__(self, real: Any, every: int) -> None:
        self.real, self.every = real, every
        self.calls: Counter[str] = Counter()
        self.injected = 0

    def call_method(self, dest: bytes, path: bytes, iface: bytes, method: bytes, args: Any) -> Any:
        self.calls[method.decode()] += 1
        if self.every and sum(self.calls.values()) % self.every == 0:
            self.injected += 1
            raise DBusNoReplyError(-110, None, b"injected: no reply")
        return self.real.call_method(dest, path, iface, method, args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_injected_transient_errors_on_the_real_bus_change_no_outcome(tmp_path: Path, figure: Figure) -> None:
    bus = PystemdUserBus(retry_budget_s=5.0)
    flaky = Flaky(bus._bus, every=3)
    bus._bus = flaky
    prefix = ticket("flaky")
    t0 = time.monotonic()
    with Supervisor(bus=bus) as sup:
        ds = [sup.launch(DispatchSpec(argv=["sh", "-c", f"exit {i % 3}"], ticket=f"{prefix}_{i}", cwd=tmp_path,
                                      log_dir=tmp_path, timeout=30.0)) for i in range(20)]
        stopped = sup.launch(DispatchSpec(argv=["sleep", "300"], ticket=f"{prefix}_stop", cwd=tmp_path,
                                          log_dir=tmp_path, timeout=30.0, grace=1.0))
        sup.stop(stopped)
        results = sup.wait_all([*ds, stopped], timeout=60)
    took = time.monotonic() - t0
    wrong = [r.to_json() for i, r in enumerate(results[:-1])
             if r.exit_code != i % 3 or r.status is not (Status.COMPLETED if i % 3 == 0 else Status.FAILED)]
    figure("D-Bus faults on the real bus",
           f"{flaky.injected} NoReply injected into {sum(flaky.calls.values())} calls (every 3rd): "
           f"{len(wrong)} wrong of 21 dispatches, stop -> {results[-1].status} ({took:.1f} s)")
    assert flaky.injected >= 20
    assert not wrong, wrong[:3]
    assert results[-1].status is Status.STOPPED
    assert loaded_units(prefix) == []


def test_real_permanent_errors_surface_after_one_attempt(tmp_path: Path, figure: Figure) -> None:
    bus = PystemdUserBus(retry_budget_s=5.0)
    counter = Flaky(bus._bus, every=0)
    bus._bus = counter
    name = unit_name_for_ticket(ticket("perm"))
    t0 = time.monotonic()
    with pytest.raises(BusError) as invalid:
        bus.start_transient_scope(name, [("Slice", "s", b"not a slice")])
    invalid_ms = (time.monotonic() - t0) * 1000
    invalid_attempts = counter.calls["StartTransientUnit"]
    # The live one belongs to another supervisor (a supervisor refuses a duplicate of its own without asking)
    with Supervisor() as holder, Supervisor(bus=bus) as sup:
        t = ticket("dup")
        first = holder.launch(DispatchSpec(argv=["sleep", "300"], ticket=t, cwd=tmp_path, log_dir=tmp_path,
                                           timeout=30.0, grace=1.0))
        before = counter.calls["StartTransientUnit"]
        dup = sup.launch(DispatchSpec(argv=["true"], ticket=t, cwd=tmp_path, log_dir=tmp_path, timeout=30.0))
        dup_attempts = counter.calls["StartTransientUnit"] - before
        holder.stop(first)
        holder.wait(first, timeout=30)
    assert dup.result is not None
    figure("D-Bus permanent errors (real)",
           f"InvalidArgs: {invalid_attempts} attempt, {invalid_ms:.0f} ms ({invalid.value.dbus_name}); "
           f"UnitExists: {dup_attempts} attempt -> {dup.result.status}: {(dup.result.error or '')[:60]}...")
    assert invalid_attempts == 1 and invalid.value.dbus_name == "org.freedesktop.DBus.Error.InvalidArgs"
    assert not isinstance(invalid.value, UnitExistsError)
    assert dup_attempts == 1 and dup.result.status is Status.ERROR and "already has a live dispatch" in (
        dup.result.error or "")


def test_fake_bus_fault_figures(figure: Figure) -> None:
    """The exhaustive injected-fault checks live in the everyday unit suite (tests/unit/test_bus_faults.py);
    run them here too so their figures are in this suite's table."""
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "pytest", str(repo / "tests" / "unit" / "test_bus_faults.py"), "-q",
                        "-s", "-p", "no:logging"], cwd=repo, capture_output=True, text=True, timeout=300)
    rows = [line[len("FIGURE  "):].split(": ", 1) for line in r.stdout.splitlines() if line.startswith("FIGURE  ")]
    for name, text in rows:
        figure(f"unit: {name}", text)
    assert r.returncode == 0, r.stdout[-3000:]
    assert len(rows) >= 10
