"""Shared helpers of the issue-7 reliability suite: /proc facts (not our own bookkeeping) and sessions."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

# A session that leaves descendants behind and records each of them (and itself) as "PID STARTTIME KIND"
# in $1, with the start time read from /proc/PID/stat (field 22), so the test can tell a survivor from a
# recycled PID. Then it exits 0 ("exit") or hangs until killed ("hang"). Descendants:
#   setsid    a new session, ignoring SIGTERM/SIGHUP (only SIGKILL ends it)
#   nohup     immune to SIGHUP
#   double    double-forked: its parent exits at once, it is reparented
DESCENDANTS_SESSION = r"""#!/bin/sh
rec=$1; mode=$2
st() { set -- $(sed 's/.*) //' /proc/$1/stat); echo "${20}"; }
note() { echo "$1 $(st $1) $2" >> "$rec"; }
note $$ main
setsid sh -c 'trap "" TERM HUP INT; exec sleep 300' </dev/null >/dev/null 2>&1 &
note $! setsid
nohup sleep 300 </dev/null >/dev/null 2>&1 &
note $! nohup
( sleep 300 </dev/null >/dev/null 2>&1 & echo $! > "$rec.double" )
note "$(cat "$rec.double")" double
echo done >> "$rec"
[ "$mode" = hang ] && exec sleep 300
exit 0
"""
DESCENDANTS_PER_SESSION = 4  # main + 3 descendants


def ticket(prefix: str) -> str:
    """A unique ticket id of plain characters only, so its unit name is `ralph-<ticket>.scope` verbatim."""
    return f"faults_{prefix}_{uuid.uuid4().hex[:10]}"


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat fields from field 3 (state) on, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2:].split()


def start_time(pid: int) -> str | None:
    f = stat_fields(pid)
    return f[19] if f else None


def alive(pid: int, started: str) -> bool:
    """The very process (same start time) still exists and is not a zombie."""
    f = stat_fields(pid)
    return f is not None and f[19] == started and f[0] != "Z"


def read_records(path: Path) -> tuple[list[tuple[int, str, str]], bool]:
    """(pid, starttime, kind) records of a session, and whether it finished writing them."""
    recs, done = [], False
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if parts == ["done"]:
                done = True
            elif len(parts) == 3:
                recs.append((int(parts[0]), parts[1], parts[2]))
    return recs, done


def survivors(records: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    return [r for r in records if alive(r[0], r[1])]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def child_zombies() -> list[int]:
    me = str(os.getpid())
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = stat_fields(int(entry))
            if f and f[1] == me and f[0] == "Z":
                out.append(int(entry))
    return out


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def processes_in_units(units: set[str]) -> list[tuple[int, str]]:
    """Every process on the machine whose cgroup is one of `units` (a scope's processes, read from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cg = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        for line in cg.splitlines():
            leaf = line.rsplit("/", 1)[-1]
            if leaf in units:
                out.append((int(entry), leaf))
    return out


def loaded_units(ticket_prefix: str) -> list[str]:
    """Loaded `ralph-<project key>-<ticket_prefix>*` units of the user manager, in any state (systemctl, not
    our code)."""
    prefix = f"ralph-*-{ticket_prefix}"
    out = subprocess.run(["systemctl", "--user", "list-units", "--all", "--plain", "--no-legend", "--no-pager",
                          f"{prefix}*"], capture_output=True, text=True, check=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ladder_events(log_path: str | None) -> dict[str, float]:
    """EVENT -> monotonic time, from the log of programs/ladder_session.py ("EVENT <pid> <monotonic>" lines)."""
    assert log_path is not None
    out = {}
    for line in Path(log_path).read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].isupper():
            out[parts[0]] = float(parts[2])
    return out
