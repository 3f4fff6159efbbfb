"""A minimal inotify watch (glibc's inotify_* through ctypes) whose fd goes into a selector.

Used for two events we would otherwise have to poll for: a session's log growing (`logs -f`), and the
manager removing a scope's cgroup directory, which it does the moment the scope has ended (several
milliseconds before its PropertiesChanged signal reaches us).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_DELETE_SELF = 0x400

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Inotify:
    """One watch on one path. Raises FileNotFoundError if the path is already gone."""

    def __init__(self, path: str | os.PathLike[str], mask: int) -> None:
        self.fd = int(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1 failed: {os.strerror(err)}")
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch({os.fspath(path)}) failed: {os.strerror(err)}", os.fspath(path))

    def drain(self) -> int:
        """Consume pending events; return the OR of their masks (0 if none)."""
        seen = 0
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            pos = 0
            while pos + 16 <= len(buf):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, pos)
                seen |= mask
                pos += 16 + length

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
