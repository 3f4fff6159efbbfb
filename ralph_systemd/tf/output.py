"""Where a dispatch's output goes in tf's three modes, beyond the private session log every mode keeps.

"file": the log is hard-linked at tf's path (live, same bytes), or copied there at the end when a link is not
possible. "inherit": its tail is shown on Ralph's **stderr** when the dispatch ends; Ralph's stdout is reserved
for tf's protocol (`<promise>COMPLETE</promise>`). Bytes from the session are shown with control characters
made visible, never raw.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ralph_systemd.result import DispatchResult as NativeResult
from ralph_systemd.text import terminal_safe

log = logging.getLogger("ralph_systemd.tf")


def link_output(log_path: Path, target: Path, warn: Callable[[str], None]) -> Path | None:
    """Make `target` a hard link to the session log (live output); None when done, else the path to copy the
    log to at completion (another filesystem, or links not allowed)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        os.link(log_path, tmp)
        os.replace(tmp, target)  # replaces an old log like tf's open(..., "w") did
        return None
    except OSError as e:
        warn(f"cannot link {target} to the session log ({e.strerror}); it is copied there at the end")
        return target


def copy_output(log_path: str, target: Path) -> None:
    try:
        shutil.copyfile(log_path, target)
    except OSError as e:
        log.warning("could not copy %s to %s: %s", log_path, target, e)


def echo_tail(r: NativeResult, limit: int, out: TextIO | None = None) -> None:
    """Show the last `limit` bytes of the session log on stderr, framed with the ticket id."""
    assert r.log_path is not None
    out = out or sys.stderr
    try:
        with open(r.log_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError as e:
        print(f"----- {r.ticket}: output log {r.log_path} unreadable: {e}", file=out, flush=True)
        return
    cut = f" (last {len(data)} of {size} bytes)" if size > len(data) else ""
    out.write(f"----- {r.ticket} output{cut}: {r.log_path}\n")
    out.write(terminal_safe(data.decode(errors="replace")))
    if data and not data.endswith(b"\n"):
        out.write("\n")
    out.write(f"----- end of {r.ticket} ({r.status})\n")
    out.flush()
