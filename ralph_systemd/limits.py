"""What the host must allow for N live dispatches: raise what we may, name the rest before anything launches.

`preflight(more, live)` runs before a launch of `more` dispatches while `live` are running (or queued). It
raises the soft RLIMIT_NOFILE to the hard limit when the fds could run out (an unprivileged process may),
and raises HostLimitError, one message naming every limit that would still bite and how to raise it, when
the host cannot hold them: then nothing of the launch has been created. The limits, measured with 4,096
sleeping dispatches (README "What a host needs for N dispatches"):

- open files (RLIMIT_NOFILE): a dispatch holds 2 fds while it runs (its pidfd, its stdin pipe) and 4 while
  it starts (also its gate and exec-report pipes), plus ~64 for the bus, the loop and the caller;
- inotify watches (fs.inotify.max_user_watches, per user): the user manager watches each scope's cgroup
  (cgroup.events, and memory.events where memory is delegated) and we watch a scope's cgroup.events once its
  main process has exited: up to 3 per dispatch. Without its watch the manager would not see a scope empty;
- tasks: a dispatch needs at least one (its main process) in every pids cgroup above its scope (the
  user's slice, user@UID.service, ralph.slice: their pids.max), and one PID of the kernel's (pid_max,
  threads-max; threads count). What the sessions themselves fork is on top: we can only check the floor;
- not checked, since they do not grow with N: our inotify instance (one per Supervisor), the bus daemon's
  per-connection limits (4 match rules, one pending call at a time), the manager's own fds.

Below SMALL live dispatches only RLIMIT_NOFILE is looked at (stock hosts hold that many; it costs ~1 µs).
"""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ralph_systemd")

FDS_RUNNING = 2  # pidfd + stdin pipe
FDS_STARTING = 4  # + gate pipe + exec-report pipe, until the exec is confirmed
FD_HEADROOM = 64  # the bus, the loop's wake-up and signal fds, inotify, a log file being opened, the caller's
WATCHES_PER_DISPATCH = 3  # the manager's cgroup.events + memory.events, ours on cgroup.events after the exit
PID_HEADROOM = 256  # tasks left for everything else on the host (and the sessions' first forks)
SMALL = 64  # below this many live dispatches, only RLIMIT_NOFILE is checked
CGROUP_ROOT = Path("/sys/fs/cgroup")


class HostLimitError(RuntimeError):
    """The host cannot hold the dispatches asked for; the message names each limit and how to raise it."""


@dataclass(frozen=True)
class Shortfall:
    """One limit that would bite: what it is, what is needed, what there is, and how to raise it."""

    limit: str
    need: int
    have: int
    fix: str

    def render(self) -> str:
        return f"{self.limit}: {self.need} needed, {self.have} available ({self.fix})"


def preflight(more: int, live: int = 0, *, slices: tuple[str, ...] = ("ralph.slice",)) -> None:
    """Make room for `more` dispatches besides `live` ones, or raise HostLimitError naming what is short."""
    if more <= 0:
        return
    total = live + more
    short = [s for s in (_nofile(total),) if s is not None]
    if total >= SMALL:
        short += [s for s in (_inotify_watches(total), _kernel_pids(more)) if s is not None]
        short += _tasks_max(more, slices)
    if short:
        raise HostLimitError(f"cannot launch {more} dispatch(es) with {live} live: "
                             + "; ".join(s.render() for s in short) + ". Nothing was launched.")


#: The soft RLIMIT_NOFILE this process started with: sessions get it back before they exec (spawn.py), as
#: systemd gives services a soft 1024 whatever it raised for itself (select() breaks on fds >= 1024).
SESSION_NOFILE_SOFT = resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _nofile(total: int) -> Shortfall | None:
    """Raise the soft limit to the hard one when the starting fds might not fit; short if even the running
    ones cannot. (Sessions get SESSION_NOFILE_SOFT back.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    want = FDS_STARTING * total + FD_HEADROOM
    if soft != inf and soft < want and soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("raised the soft limit on open files from %d to %s for %d dispatches", soft,
                 "unlimited" if hard == inf else hard, total)
        soft = hard
    need = FDS_RUNNING * total + FD_HEADROOM
    if soft != inf and soft < need:
        return Shortfall("open files (RLIMIT_NOFILE)", need, soft,
                         "raise the hard limit: LimitNOFILE= for a service, `ulimit -Hn` / limits.conf nofile "
                         "for a login")
    return None


def _read_int(path: Path) -> int | None:
    """An integer sysctl or cgroup file; None if absent or 'max'."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _inotify_watches(total: int) -> Shortfall | None:
    limit = _read_int(Path("/proc/sys/fs/inotify/max_user_watches"))
    need = WATCHES_PER_DISPATCH * total
    if limit is None or need * 2 <= limit:
        return None
    have = limit - _watches_in_use()
    if need > have:
        return Shortfall("inotify watches (fs.inotify.max_user_watches, per user)", need, have,
                         f"sysctl fs.inotify.max_user_watches={max(need * 2, 65536)}")
    return None


def _watches_in_use() -> int:
    """Inotify watches held by this user's processes (their fdinfo); read only when the limit is near."""
    uid, used = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                try:
                    used += Path(f"/proc/{pid}/fdinfo/{fd}").read_text().count("inotify wd:")
                except OSError:
                    continue
        except OSError:
            continue
    return used


def _kernel_pids(more: int) -> Shortfall | None:
    """One PID (task) per dispatch at least. /proc/loadavg's 4th field counts every task on the host. (In a
    PID namespace, pid_max is the namespace's: a lower one of the host still applies and cannot be seen.)"""
    caps = [c for c in (_read_int(Path("/proc/sys/kernel/pid_max")), _read_int(Path("/proc/sys/kernel/threads-max")))
            if c is not None]
    try:
        tasks = int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    except (OSError, IndexError, ValueError):
        return None
    if not caps:
        return None
    have = min(caps) - tasks - PID_HEADROOM
    if more > have:
        return Shortfall("kernel tasks (kernel.pid_max / kernel.threads-max)", more, max(have, 0),
                         f"sysctl kernel.pid_max={max(4 * (tasks + more), 65536)}")
    return None


def _tasks_max(more: int, slices: tuple[str, ...]) -> list[Shortfall]:
    """pids.max - pids.current of every pids cgroup a new scope lands under (user@UID.service and its
    parents, and each slice of ours inside it): each dispatch needs one task there at least."""
    uid = os.getuid()
    manager = CGROUP_ROOT / "user.slice" / f"user-{uid}.slice" / f"user@{uid}.service"
    if not manager.is_dir():
        return []
    dirs = [manager / s for s in slices] + [manager, manager.parent, manager.parent.parent]
    out = []
    for d in dirs:
        cap, cur = _read_int(d / "pids.max"), _read_int(d / "pids.current")
        if cap is None or cur is None:
            continue  # no pids controller here, or no limit
        if more > cap - cur:
            unit = d.name
            fix = (f"TasksMax= of {unit}: `systemctl --user set-property {unit} TasksMax=infinity`"
                   if d.is_relative_to(manager) and d != manager else
                   f"TasksMax= of {unit} (root: `systemctl set-property {unit} TasksMax=infinity`; logind's "
                   "UserTasksMax= for user-UID.slice)")
            out.append(Shortfall(f"tasks in {unit} (its pids.max)", more, max(cap - cur, 0), fix))
    return out
