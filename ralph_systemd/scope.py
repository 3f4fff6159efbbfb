"""What a dispatch's transient scope carries: its properties at launch, and what can be read back.

Kill settings (see README "Timeouts and crashes"): KillMode=control-group plus Controller=<our bus name>.
While we are connected, a stop (RuntimeMaxSec firing, `systemctl --user stop`, ours) makes systemd send
us Scope.RequestStop instead of SIGTERM; we close the session's stdin (EOF), then SIGTERM its main
process, and systemd SIGKILLs the whole cgroup after TimeoutStopSec no matter what. If we are dead the
controller is gone and control-group still gives every process SIGTERM first, then SIGKILL: the best
a scope can do without us. (KillMode=mixed on a scope would SIGKILL everything at once in that case,
because a scope has no main process in systemd 252.)
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from ralph_systemd.bus import Property
from ralph_systemd.naming import ticket_from_unit_name
from ralph_systemd.spec import DispatchSpec

USEC = 1_000_000


def scope_properties(spec: DispatchSpec, pid: int, controller: str, log_path: str) -> list[Property]:
    props: list[Property] = [
        ("Description", "s", spec.describe().encode()),
        # The log file, as a file:// URI: `systemctl --user status` shows it as "Docs:", and a new
        # supervisor re-attaching after our death reads it back from here.
        ("Documentation", "as", [log_uri(log_path).encode()]),
        ("Slice", "s", spec.slice.encode()),
        ("PIDs", "au", [pid]),
        ("AddRef", "b", True),  # keep the unit (and its Result) until we Unref it
        ("CollectMode", "s", b"inactive-or-failed"),  # ...and then never leave it behind, failed or not
        ("KillMode", "s", b"control-group"),
        ("KillSignal", "i", 15),
        ("SendSIGKILL", "b", True),
        ("TimeoutStopUSec", "t", int(spec.grace * USEC)),
        ("Controller", "s", controller.encode()),
    ]
    if spec.timeout is not None:
        props.append(("RuntimeMaxUSec", "t", max(1, int(spec.timeout * USEC))))
    if spec.memory_max is not None:
        props.append(("MemoryMax", "t", spec.memory_max))
    if spec.tasks_max is not None:
        props.append(("TasksMax", "t", spec.tasks_max))
    if spec.cpu_quota is not None:
        props.append(("CPUQuotaPerSecUSec", "t", max(1000, int(spec.cpu_quota / 100 * USEC))))
    return props


def log_uri(path: str) -> str:
    return "file://" + urllib.parse.quote(path)


@dataclass(frozen=True)
class UnitFacts:
    """What a live `ralph-*` scope tells a supervisor that did not launch it."""

    ticket: str
    session: str | None
    log_path: str | None
    command: str | None


_DESC_RE = re.compile(r"^ralph ticket=(?P<rest>.*)$", re.S)


def facts_from_unit(unit: str, description: str, documentation: tuple[str, ...]) -> UnitFacts | None:
    ticket = ticket_from_unit_name(unit)
    if ticket is None:
        return None
    session = command = None
    prefix = f"ralph ticket={ticket} session="
    if description.startswith(prefix):
        m = re.match(r"([A-Za-z0-9_.-]+): (.*)$", description[len(prefix):], re.S)
        if m:
            session, command = m.group(1), m.group(2)
    log_path = None
    for doc in documentation:
        if doc.startswith("file://"):
            log_path = urllib.parse.unquote(doc[len("file://"):])
            break
    return UnitFacts(ticket, session, log_path, command)
