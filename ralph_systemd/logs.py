"""Per-session log files, private to the user: mode 0600 in a 0700 directory, one file per session.

The child writes to its log itself (it is its stdout and stderr), so the log survives our death. Each log
file carries a marker, the extended attribute `user.ralph-systemd` holding its project, ticket and
session, written when we create it: `gc` removes only files whose name AND marker say they are ours, and
`logs` finds a finished dispatch's log by an exact (project, ticket) match, never by a prefix.

A directory we did not create is never chmod'ed: an existing log directory that others can read is refused
with the reason and the fix.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ralph_systemd.naming import log_file_name, parse_log_file_name

MARKER_XATTR = "user.ralph-systemd"
#: Below this much free space a log's file system counts as nearly full (a session's output is lost then).
LOW_SPACE_BYTES = 1024 * 1024


def ensure_private_dir(path: Path) -> None:
    """Create `path` 0700 (parents as needed), or check that an existing one is ours, private and writable.

    An existing directory is never chmod'ed: one that group or others can read is refused (ValueError with
    how to fix it), because the sessions' output would be readable by other users."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as e:
        raise ValueError(f"log directory {path} cannot be created: {e.strerror}; pick a writable log_dir") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"log directory {path} exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise ValueError(f"log directory {path} belongs to uid {st.st_uid}, not to us: pick a directory of your own")
    if st.st_mode & 0o077:
        who = "group and others" if st.st_mode & 0o070 and st.st_mode & 0o007 else \
            ("its group" if st.st_mode & 0o070 else "others")
        raise ValueError(
            f"log directory {path} is open to {who} (mode {stat.S_IMODE(st.st_mode):04o}) and session logs must "
            f"be private; we never change the mode of a directory we did not create: run `chmod 700 {path}`, or "
            "give a log directory that does not exist yet (it is created 0700)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"log directory {path} is not writable: fix its permissions or pick another log_dir")


def open_session_log(log_dir: Path, ticket: str, session: str, *, project: str | None = None) -> tuple[int, Path]:
    """Create the session's log file (never reusing one) with its marker; return (fd, path).

    project: the project key (spec.project); None = the current directory's. The fd is not inheritable."""
    ensure_private_dir(log_dir)
    path = log_dir / log_file_name(ticket, session, project)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise ValueError(f"log file {path} already exists: session id {session!r} was used before for this "
                         "ticket; use a new session id") from None
    except OSError as e:
        raise ValueError(f"log file {path} cannot be created: {e.strerror}") from None
    key, _, _ = parse_log_file_name(path.name) or ("", "", "")
    try:
        os.setxattr(fd, MARKER_XATTR, _marker(key, ticket, session))
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSPC, errno.EDQUOT, errno.EPERM):
            os.close(fd)
            os.unlink(path)
            raise ValueError(f"log file {path} cannot be marked as ours: {e.strerror}") from None
        # No user xattrs here: the log works, but gc will leave it alone (it cannot prove it is ours).
    return fd, path


def _marker(project: str, ticket: str, session: str) -> bytes:
    return json.dumps({"project": project, "ticket": ticket, "session": session}, sort_keys=True).encode()


@dataclass(frozen=True)
class LogFile:
    """A file in a log directory whose name has the shape of a session log."""

    name: str
    project: str
    ticket: str
    session: str


def session_logs(dir_fd: int) -> list[LogFile]:
    """Regular files (not symlinks) in the open directory whose names log_file_name() could have made."""
    out = []
    with os.scandir(dir_fd) as it:
        for e in it:
            parsed = parse_log_file_name(e.name)
            if parsed is not None and e.is_file(follow_symlinks=False):
                out.append(LogFile(e.name, *parsed))
    return out


def is_ours(dir_fd: int, log: LogFile) -> bool:
    """The file's marker (written when we created it) names the same project, ticket and session."""
    try:
        fd = os.open(log.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return os.getxattr(fd, MARKER_XATTR) == _marker(log.project, log.ticket, log.session)
    except OSError:
        return False
    finally:
        os.close(fd)


def open_log_dir(path: Path) -> int:
    """An O_DIRECTORY fd of the log directory itself, never through a symlink at its last component.

    OSError (ELOOP/ENOTDIR for a symlink) when it cannot be opened that way."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def log_space_problem(path_or_fd: str | os.PathLike[str] | int) -> str | None:
    """One line saying that the log's file system is full, nearly full, out of inodes or read-only (the
    session's output would be lost), or None when there is room."""
    try:
        st = os.fstatvfs(path_or_fd) if isinstance(path_or_fd, int) else os.statvfs(path_or_fd)
    except OSError:
        return None
    where = f"the log's file system ({os.fspath(path_or_fd)})" if not isinstance(path_or_fd, int) \
        else "the log's file system"
    free = st.f_bavail * st.f_frsize
    fix = "free some space or pass another --log-dir (log_dir)"
    if st.f_flag & os.ST_RDONLY:
        return f"{where} is read-only: the session's output cannot be written; pass another --log-dir (log_dir)"
    if free == 0:
        return f"{where} is full: the session's output is being lost; {fix}"
    if st.f_files and st.f_favail == 0:
        return f"{where} has no free inodes: the session's output may be lost; {fix}"
    if free < LOW_SPACE_BYTES:
        return f"{where} is nearly full ({free // 1024} KiB free): the session's output may be lost; {fix}"
    return None
