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

from ralph_systemd.text import escape
from ralph_systemd.naming import UNIT_PREFIX, UNIT_SUFFIX, parse_unit_name, unescape



def log_uri(path: str) -> str:
    return "file://" + urllib.parse.quote(path, safe="/@")


@dataclass(frozen=True)
class UnitFacts:
    """What a live `ralph-*` scope tells a supervisor that did not launch it."""

    ticket: str
    session: str | None
    log_path: str | None
    command: str | None  # as the Description has it: control characters escaped
    project: str | None = None  # the project key (from the unit name)
    project_root: str | None = None  # as the Description names it (escaped), when it does


_DESC_RE = re.compile(r"([A-Za-z0-9_.-]+)(?: project=([^:]*))?: (.*)", re.S)


def facts_from_unit(unit: str, description: str, documentation: tuple[str, ...]) -> UnitFacts | None:
    """Ticket, session, log path and command of a `ralph-<key>-<ticket>.scope` (None for other names; a
    `ralph-<ticket>.scope` of an older version is read with project None).

    Description: `ralph ticket=<ticket> session=<session> project=<root>: <command>` (spec.describe)."""
    parsed = parse_unit_name(unit)
    if parsed is not None:
        key: str | None = parsed[0]
        ticket = parsed[1]
    elif unit.startswith(UNIT_PREFIX) and unit.endswith(UNIT_SUFFIX) and len(unit) > len(UNIT_PREFIX + UNIT_SUFFIX):
        key, ticket = None, unescape(unit[len(UNIT_PREFIX):-len(UNIT_SUFFIX)])  # made before project keys
    else:
        return None
    session = command = root = None
    prefix = f"ralph ticket={escape(ticket)} session="
    if description.startswith(prefix):
        m = _DESC_RE.fullmatch(description[len(prefix):])
        if m:
            session, root, command = m.group(1), m.group(2), m.group(3)
    log_path = None
    for doc in documentation:
        if doc.startswith("file://"):
            log_path = urllib.parse.unquote(doc[len("file://"):])
            break
    return UnitFacts(ticket, session, log_path, command, key, root)
