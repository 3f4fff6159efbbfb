"""Read a scope's membership straight from cgroupfs: a file read instead of a D-Bus round trip.

Used on the hot path (the main process has exited: is anything left in the scope?). Anything unexpected
returns None and the caller asks the manager instead.
"""

from __future__ import annotations

from pathlib import Path

_MOUNTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


def cgroup_path_of(pid: int) -> str | None:
    """The process's cgroup2 path (`/user.slice/.../ralph-x.scope`, from /proc/PID/cgroup), or None."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    rel = next((line[3:] for line in lines if line.startswith("0::")), None)
    return rel if rel and rel != "/" else None


def unit_of(pid: int) -> str | None:
    """The unit whose cgroup the process is directly in (its path's last part), or None."""
    rel = cgroup_path_of(pid)
    return rel.rsplit("/", 1)[-1] if rel else None


def cgroup_dir_of(pid: int) -> Path | None:
    """The cgroup2 directory the process is in, or None if it cannot be read."""
    rel = cgroup_path_of(pid)
    if rel is None:
        return None
    for mount in _MOUNTS:
        d = mount / rel.lstrip("/")
        if (d / "cgroup.procs").exists():
            return d
    return None


def procs_in(cgroup_dir: Path) -> list[int] | None:
    """PIDs in the cgroup and its children; [] once it is gone (empty scopes are removed); None if unreadable."""
    if not cgroup_dir.exists():
        return []
    pids: list[int] = []
    try:
        for procs in [cgroup_dir / "cgroup.procs", *cgroup_dir.glob("*/**/cgroup.procs")]:
            pids += [int(x) for x in procs.read_text().split()]
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return None
    return pids


def cgroup_populated(events: Path) -> bool:
    """False once the cgroup (its cgroup.events file) has no process left, or is gone."""
    try:
        return "populated 1" in events.read_text()
    except OSError:
        return False


def proc_state(pid: int) -> str | None:
    """The process state letter (R, S, D, T, ...) from /proc, or None if it is gone or a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return None if state in ("Z", "X") else state
