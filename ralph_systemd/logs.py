"""Per-session log files, private to the user: mode 0600 in a 0700 directory, one file per session.

The child writes to its log itself (it is its stdout and stderr), so the log survives our death.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ralph_systemd.naming import log_file_name


def ensure_private_dir(path: Path) -> None:
    """Create `path` 0700 (parents as needed), or check an existing one is ours and not shared."""
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
        os.chmod(path, 0o700)  # ours but readable by others: make it private
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"log directory {path} is not writable: fix its permissions or pick another log_dir")


def open_session_log(log_dir: Path, ticket: str, session: str) -> tuple[int, Path]:
    """Create the session's log file (never reusing one); return (fd, path). The fd is not inheritable."""
    ensure_private_dir(log_dir)
    path = log_dir / log_file_name(ticket, session)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise ValueError(f"log file {path} already exists: session id {session!r} was used before for this "
                         "ticket; use a new session id") from None
    except OSError as e:
        raise ValueError(f"log file {path} cannot be created: {e.strerror}") from None
    return fd, path
