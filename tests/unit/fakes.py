"""A do-nothing SystemdBus for unit tests: subclass it and override what the scenario needs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from ralph_systemd.bus import BusEvent, Property, UnitState


def unit_state(name: str, *, active_state: str = "active", result: str = "success",
               description: str = "") -> UnitState:
    return UnitState(name=name, load_state="loaded", active_state=active_state, sub_state="running",
                     result=result, invocation_id="ab" * 16, description=description, documentation=(),
                     active_enter_monotonic_us=1, inactive_enter_monotonic_us=0, runtime_max_us=2**64 - 1,
                     timeout_stop_us=10**6, control_group="", memory_current=None, cpu_usage_ns=None,
                     controller="")


class NullBus:
    """Every call succeeds and does nothing; fileno() is a pipe the test can make readable."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)

    @property
    def unique_name(self) -> str:
        return ":1.99"

    def fileno(self) -> int:
        return self.r

    def start_transient_scope(self, name: str, properties: Sequence[Property], pids: Sequence[int] = ()) -> str:
        raise AssertionError("not used")

    def unit_state(self, name: str) -> UnitState:
        return unit_state(name)

    def unit_processes(self, name: str) -> list[int]:
        return []

    def unit_outcome(self, name: str) -> tuple[str, str, str]:
        return "inactive", "success", "ab" * 16

    def invocation_id(self, name: str) -> str:
        return "ab" * 16

    def manager_version(self) -> str:
        return "252.39-1~deb12u1"

    def stop_unit(self, name: str) -> None: ...

    def kill_unit(self, name: str, who: Literal["main", "all"], signum: int) -> None: ...

    def ref_unit(self, name: str) -> None: ...

    def unref_unit(self, name: str) -> None: ...

    def reset_failed(self, name: str) -> None: ...

    def list_units(self, patterns: Sequence[str]) -> list[str]:
        return []

    def reload(self) -> None: ...

    def drain(self) -> list[BusEvent]:
        return []

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)
