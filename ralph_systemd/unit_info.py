"""What the user manager knows about `ralph-*` dispatches, for `ls` and `status`: read-only, one snapshot each."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ralph_systemd.bus import NO_LIMIT, SystemdBus, monotonic_us
from ralph_systemd.naming import (
    UNIT_PREFIX,
    UNIT_SUFFIX,
    is_unit_name_of_ours,
    parse_unit_name,
    unit_name_for_ticket,
)
from ralph_systemd.scope import facts_from_unit

UNIT_PATTERN = f"{UNIT_PREFIX}*{UNIT_SUFFIX}"


def looks_like_unit(target: str) -> bool:
    return target.startswith(UNIT_PREFIX) and target.endswith(UNIT_SUFFIX)


def resolve_unit(target: str, project: str | None = None) -> str:
    """A `ralph-<key>-<ticket>.scope` unit name as given, else the unit of ticket `target` in `project` (a key;
    None = the current directory's project). ValueError when the target is neither."""
    if looks_like_unit(target):
        if not is_unit_name_of_ours(target):
            raise ValueError(f"{target!r} looks like a unit name but is not one of ours: ralph-systemd units are "
                             "ralph-<8 hex digits>-<escaped ticket>.scope (`ralph-systemd ls` shows them)")
        return target
    return unit_name_for_ticket(target, project)


class AmbiguousTicket(LookupError):
    """A ticket with no live dispatch in this project but live ones in several others."""

    def __init__(self, ticket: str, units: list[str]) -> None:
        super().__init__(f"ticket {ticket!r} has no live dispatch in this project but is live in "
                         f"{len(units)} others: {', '.join(units)}; give the unit name, or run from (or pass "
                         "--project) the project's directory")
        self.units = units


def find_unit(bus: SystemdBus, target: str, project: str | None = None) -> str:
    """The unit `target` names: a unit name as given; a ticket's unit in `project` when that is live there,
    else the one live dispatch of that ticket in any project. When none is live, the ticket's unit in
    `project` (the caller reports it missing). ValueError for a bad target, AmbiguousTicket for several."""
    unit = resolve_unit(target, project)
    if looks_like_unit(target) or dispatch_info(bus, unit) is not None:
        return unit
    others = [u for u in bus.list_units([UNIT_PATTERN])
              if (p := parse_unit_name(u)) is not None and p[1] == target and dispatch_info(bus, u) is not None]
    if len(others) == 1:
        return others[0]
    if len(others) > 1:
        raise AmbiguousTicket(target, sorted(others))
    return unit


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
    project: str | None = None  # the project key (from the unit name)
    project_root: str | None = None  # the project's directory, as the Description names it

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["pids"] = list(self.pids)
        for k in ("age_s", "time_left_s", "cpu_s"):
            if d[k] is not None:
                d[k] = round(d[k], 3)
        return d


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
        end = st.inactive_enter_monotonic_us if st.ended and st.inactive_enter_monotonic_us else monotonic_us()
        age = max(0.0, (end - st.active_enter_monotonic_us) / 1e6)
    timeout = None if st.runtime_max_us in (NO_LIMIT, 0) else st.runtime_max_us / 1e6
    left = None if timeout is None or age is None or st.ended else max(0.0, timeout - age)
    return DispatchInfo(
        ticket=facts.ticket, session=facts.session, unit=unit, state=st.active_state, sub_state=st.sub_state,
        result=st.result, command=facts.command, age_s=age, timeout_s=timeout, time_left_s=left,
        grace_s=st.timeout_stop_us / 1e6, memory_bytes=st.memory_current,
        cpu_s=None if st.cpu_usage_ns is None else st.cpu_usage_ns / 1e9, log_path=facts.log_path,
        invocation_id=st.invocation_id or None,
        pids=tuple(bus.unit_processes(unit)) if with_pids and not st.ended else (),
        project=facts.project, project_root=facts.project_root)


def list_dispatches(bus: SystemdBus) -> list[DispatchInfo]:
    """Every loaded `ralph-<key>-*.scope` of this user (all projects), oldest first."""
    out = [info for unit in bus.list_units([UNIT_PATTERN])
           if (info := dispatch_info(bus, unit)) is not None]
    return sorted(out, key=lambda i: -(i.age_s or 0.0))
