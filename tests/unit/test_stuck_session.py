"""A session that outlives its scope (unkillable, e.g. uninterruptible sleep) is reported, not waited on for ever.

The bus is scripted: it creates the "scope" at once and then says it ended (failed, Result=timeout), as
systemd does when a process survives SIGKILL ("Still around after SIGKILL. Ignoring."). The child is real
(`sleep`), so from our side it is exactly a main process that outlived its scope.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from ralph_systemd import DispatchSpec, Status, Supervisor, Termination
from ralph_systemd.bus import BusEvent, Property, UnitState, unit_path
from ralph_systemd.supervisor import STUCK_AFTER_S

from fakes import NullBus
from fakes import unit_state as fake_unit_state


class ScopeEndsBus(NullBus):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[BusEvent] = []
        self.state = "active"

    def _emit(self, ev: BusEvent) -> None:
        self.events.append(ev)
        os.write(self.w, b"x")

    def start_transient_scope(self, name: str, properties: Sequence[Property]) -> str:
        self._emit(BusEvent("job-removed", "/job/1", unit=name, result="done"))
        return "/job/1"

    def end_scope(self, name: str) -> None:
        self.state = "failed"
        self._emit(BusEvent("unit-changed", unit_path(name), interface="org.freedesktop.systemd1.Unit",
                            changes={"ActiveState": "failed"}))

    def unit_state(self, name: str) -> UnitState:
        return fake_unit_state(name, active_state=self.state, result="timeout")

    def unit_outcome(self, name: str) -> tuple[str, str, str]:
        return self.state, "timeout", "ab" * 16

    def drain(self) -> list[BusEvent]:
        try:
            os.read(self.r, 4096)
        except BlockingIOError:
            pass
        out, self.events = self.events, []
        return out


def zombies_of_ours() -> list[int]:
    me = str(os.getpid())
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and fields[1] == me:
            out.append(int(stat.parent.name))
    return out


def test_a_main_process_that_outlives_its_scope_is_reported_stuck_and_reaped_later(tmp_path: Path) -> None:
    bus = ScopeEndsBus()
    sup = Supervisor(bus=bus)
    d = sup.launch(DispatchSpec(argv=["sleep", "30"], ticket="stuck-1", cwd=tmp_path, log_dir=tmp_path / "logs",
                                timeout=1, grace=1))
    assert d.result is None and d.pid is not None
    bus.end_scope(d.unit)
    t0 = time.monotonic()
    r = sup.wait(d, timeout=STUCK_AFTER_S + 3)
    took = time.monotonic() - t0
    assert STUCK_AFTER_S - 0.1 <= took <= STUCK_AFTER_S + 1.0
    assert r.status is Status.TIMEOUT and r.systemd_result == "timeout"
    assert r.termination_method is Termination.UNKNOWN and r.exit_code is None
    assert r.error and "still alive" in r.error and str(d.pid) in r.error
    # When it finally exits, the supervisor reaps it: no zombie of ours is left.
    os.kill(d.pid, signal.SIGKILL)
    sup.wait_any([], timeout=0)
    deadline = time.monotonic() + 5
    while d.pid in zombies_of_ours() and time.monotonic() < deadline:
        sup._step(time.monotonic() + 0.5)
    assert d.pid not in zombies_of_ours()
    sup.close()
