"""The manager's floor: a bare client of StartTransientUnit, for the benchmark to stand ralph-systemd beside.

`Floor.one()` times one scope (the manager's own timestamps say when it was active and when it ended);
`Floor.fanout()` and `Floor.stop_all()` do the same for many at once, for the scale curve (bench/scale.py).
"""

from __future__ import annotations

import importlib
import os
import select
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.ralph import mono_us
from ralph_systemd import DispatchSpec
from ralph_systemd.bus import BusEvent, Property, PystemdUserBus, unit_path


class Floor:
    """The bare client: StartTransientUnit with PIDs only; the manager's timestamps say the rest.

    The child is released the moment JobRemoved arrives, as ralph-systemd opens its gate, so the
    notification floor sees the same history (the kernel sends cgroup.events at most every 10 ms).
    """

    def __init__(self, workdir: Path) -> None:
        self.bus = PystemdUserBus(all_units=True)  # its scopes are not named ralph-*
        self._pending: list[BusEvent] = []
        self.workdir = workdir

    def ralph_properties(self, pid: int) -> list[Property]:
        """The property set ralph-systemd sends (its own scope_properties, wherever it lives now), for a
        floor that isolates what those properties cost the manager."""
        for modname in ("ralph_systemd.launch", "ralph_systemd.scope"):
            try:
                fn = getattr(importlib.import_module(modname), "scope_properties")
            except (ImportError, AttributeError):
                continue
            spec = DispatchSpec(argv=["true"], ticket="floor", cwd=self.workdir, timeout=3600)
            props: list[Property] = fn(spec, pid, self.bus.unique_name, str(self.workdir / "floor.log"))
            return props
        raise RuntimeError("no scope_properties in ralph_systemd.launch or ralph_systemd.scope")

    def _await(self, want: Callable[[BusEvent], bool], timeout: float = 10.0) -> BusEvent | None:
        """The first event (queued or new) that `want`s; the others stay queued. None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._pending):
                if want(ev):
                    del self._pending[: i + 1]
                    return ev
            self._pending.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([self.bus.fileno()], [], [], left)
            self._pending = self.bus.drain()

    def one(self, full: bool = False) -> dict[str, float]:
        gate_r, gate_w = os.pipe()
        exit_r, exit_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.close(gate_w)
                os.close(exit_r)
                os.read(gate_r, 1)
                os.write(exit_w, str(mono_us()).encode())
            finally:
                os._exit(0)
        os.close(gate_r)
        os.close(exit_w)
        name = f"bench-floor-{uuid.uuid4().hex[:12]}.scope"
        t0_us = 0
        path = unit_path(name)
        self._pending = self.bus.drain()
        out: dict[str, float] = {}
        active_us = inactive_us = 0
        try:
            t0_us, t0 = mono_us(), time.perf_counter()
            props = self.ralph_properties(pid) if full else [("PIDs", "au", [pid])]
            self.bus.start_transient_scope(name, props)
            out["reply"] = (time.perf_counter() - t0) * 1e3
            seen = self._await(lambda e: e.kind == "job-removed" and e.unit == name)
            out["client"] = (time.perf_counter() - t0) * 1e3 if seen else float("nan")
        finally:
            os.write(gate_w, b"1")
            os.close(gate_w)
            exit_us = int(os.read(exit_r, 64) or b"0")
            os.close(exit_r)
            os.waitpid(pid, 0)

        def stamps(e: BusEvent) -> bool:
            nonlocal active_us, inactive_us
            if e.kind == "unit-removed" and e.unit == name:
                return True
            if e.kind == "unit-changed" and e.path == path and e.changes:
                active_us = int(e.changes.get("ActiveEnterTimestampMonotonic") or active_us)
                inactive_us = int(e.changes.get("InactiveEnterTimestampMonotonic") or inactive_us)
            return bool(inactive_us)
        self._await(stamps)
        if full:  # AddRef=true was among them: release the unit
            self.bus.unref_unit(name)
        out["launch"] = (active_us - t0_us) / 1e3 if active_us else float("nan")
        out["notify"] = (inactive_us - exit_us) / 1e3 if inactive_us and exit_us else float("nan")
        return out

    def close(self) -> None:
        self.bus.close()



    # -- many at once, for the scale curve -------------------------------------------------------------------

    def fanout(self, n: int) -> tuple[list[tuple[str, int]], float]:
        """n `sleep` children (posix_spawn: no gate, no log), each put in a bare scope (PIDs only), the calls
        back to back as a client without pipelining makes them; returns (scope, pid) pairs and the seconds
        until every scope's JobRemoved was seen."""
        t0 = time.perf_counter()
        kids = spawn_sleepers(n)
        self.start_scopes(kids)
        return kids, time.perf_counter() - t0

    def start_scopes(self, kids: list[tuple[str, int]]) -> None:
        """StartTransientUnit for each (scope, pid), back to back; returns once every JobRemoved was seen."""
        self._pending = self.bus.drain()
        for name, pid in kids:
            self.bus.start_transient_scope(name, [("PIDs", "au", [pid])])
            self._pending += self.bus.drain()
        self._await_all({name for name, _ in kids}, "job-removed")

    def stop_all(self, kids: list[tuple[str, int]]) -> float:
        """StopUnit for each (back to back), until every scope is gone and every child reaped; seconds."""
        t0 = time.perf_counter()
        self._pending = self.bus.drain()
        for name, _ in kids:
            self.bus.stop_unit(name)
            self._pending += self.bus.drain()
        self._await_all({name for name, _ in kids}, "unit-removed")
        for _, pid in kids:
            os.waitpid(pid, 0)
        return time.perf_counter() - t0

    def _await_all(self, names: set[str], kind: str, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while names:
            for ev in self._pending:
                if ev.kind == kind and ev.unit in names:
                    names.discard(ev.unit)
            self._pending = []
            if not names:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"floor: {len(names)} scopes without {kind} after {timeout:.0f} s")
            select.select([self.bus.fileno()], [], [], min(left, 1.0))
            self._pending = self.bus.drain()


def spawn_sleepers(n: int) -> list[tuple[str, int]]:
    """n `sleep 3600` children of ours (posix_spawn), each with the name of the bare scope it is meant for."""
    sleep = "/bin/sleep" if os.path.exists("/bin/sleep") else "/usr/bin/sleep"
    return [(f"bench-floor-{uuid.uuid4().hex[:12]}.scope", os.posix_spawn(sleep, [sleep, "3600"], os.environ))
            for _ in range(n)]
