"""What the user manager knows about `ralph-*` dispatches, for `ls` and `status`: read-only, one snapshot each."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ralph_systemd.bus import SystemdBus
from ralph_systemd.naming import UNIT_PREFIX, UNIT_SUFFIX, ticket_from_unit_name, unit_name_for_ticket
from ralph_systemd.scope import facts_from_unit

NO_LIMIT = 2**64 - 1


def resolve_unit(target: str) -> str:
    """A `ralph-*.scope` unit name as given, else the unit of a ticket id (ValueError if it cannot be one)."""
    if target.startswith(UNIT_PREFIX) and target.endswith(UNIT_SUFFIX) and ticket_from_unit_name(target):
        return target
    return unit_name_for_ticket(target)


@dataclass(frozen=True)
class DispatchInfo:
    """A live (or failed, not yet collected) dispatch as its scope describes it."""

    ticket: str
    session: str | None
    unit: str
    state: str  # ActiveState (active, deactivating, failed, ...)
    sub_state: str
    result: str  # the scope's Result (success, timeout, ...)
    command: str | None
    age_s: float | None
    timeout_s: float | None  # RuntimeMaxSec; None = no limit
    time_left_s: float | None
    grace_s: float
    memory_bytes: int | None  # None where the manager does not account it
    cpu_s: float | None
    log_path: str | None
    invocation_id: str | None
    pids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["pids"] = list(self.pids)
        for k in ("age_s", "time_left_s", "cpu_s"):
            if d[k] is not None:
                d[k] = round(d[k], 3)
        return d


def _monotonic_us() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def dispatch_info(bus: SystemdBus, unit: str, *, with_pids: bool = False) -> DispatchInfo | None:
    """The dispatch in `unit`, or None when no such unit is loaded (never started, or already gone)."""
    st = bus.unit_state(unit)
    if not st.exists or st.load_state != "loaded" or (st.active_state == "inactive" and not st.active_enter_monotonic_us):
        return None
    facts = facts_from_unit(unit, st.description, st.documentation)
    if facts is None:
        return None
    age = None
    if st.active_enter_monotonic_us:
        end = st.inactive_enter_monotonic_us if st.ended and st.inactive_enter_monotonic_us else _monotonic_us()
        age = max(0.0, (end - st.active_enter_monotonic_us) / 1e6)
    timeout = None if st.runtime_max_us in (NO_LIMIT, 0) else st.runtime_max_us / 1e6
    left = None if timeout is None or age is None or st.ended else max(0.0, timeout - age)
    return DispatchInfo(
        ticket=facts.ticket, session=facts.session, unit=unit, state=st.active_state, sub_state=st.sub_state,
        result=st.result, command=facts.command, age_s=age, timeout_s=timeout, time_left_s=left,
        grace_s=st.timeout_stop_us / 1e6, memory_bytes=st.memory_current,
        cpu_s=None if st.cpu_usage_ns is None else st.cpu_usage_ns / 1e9, log_path=facts.log_path,
        invocation_id=st.invocation_id or None,
        pids=tuple(bus.unit_processes(unit)) if with_pids and not st.ended else ())


def list_dispatches(bus: SystemdBus) -> list[DispatchInfo]:
    """Every loaded `ralph-*.scope` of this user, oldest first."""
    out = [info for unit in bus.list_units([f"{UNIT_PREFIX}*{UNIT_SUFFIX}"])
           if (info := dispatch_info(bus, unit)) is not None]
    return sorted(out, key=lambda i: -(i.age_s or 0.0))
