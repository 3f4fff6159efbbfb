"""A minimal inotify (glibc's inotify_* through ctypes) whose fd goes into a selector.

Used for two events we would otherwise have to poll for: a session's log growing (`logs -f`), and a
scope's cgroup becoming empty (its cgroup.events file changes), several milliseconds before the manager's
PropertiesChanged signal reaches us.

One instance can hold many watches. Keep one instance for the life of a process that watches many things:
closing an instance that still has a watch waits for a kernel (SRCU) grace period, measured at 8-16 ms,
while removing one watch from a live instance takes microseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_DELETE_SELF = 0x400
IN_IGNORED = 0x8000  # the watch is gone (removed, or its file was)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Inotify:
    """An inotify instance. `Inotify(path, mask)` is one with one watch (FileNotFoundError if the path is
    gone); `Inotify()` starts empty: add_watch/rm_watch as needed, read() says which watch fired."""

    def __init__(self, path: str | os.PathLike[str] | None = None, mask: int = 0) -> None:
        self.fd = int(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1 failed: {os.strerror(err)}")
        if path is not None:
            try:
                self.add_watch(path, mask)
            except BaseException:
                self.close()
                raise

    def add_watch(self, path: str | os.PathLike[str], mask: int) -> int:
        """Watch path; returns the watch descriptor. FileNotFoundError if the path is gone, OSError else."""
        wd = int(_libc.inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch({os.fspath(path)}) failed: {os.strerror(err)}", os.fspath(path))
        return wd

    def rm_watch(self, wd: int) -> None:
        """Stop a watch (nothing happens if the kernel removed it already, e.g. its file is gone)."""
        _libc.inotify_rm_watch(self.fd, wd)

    def read(self) -> list[tuple[int, int]]:
        """Pending events as (watch descriptor, mask), oldest first; [] if none."""
        out: list[tuple[int, int]] = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            pos = 0
            while pos + 16 <= len(buf):
                wd, mask, _cookie, length = struct.unpack_from("iIII", buf, pos)
                out.append((wd, mask))
                pos += 16 + length

    def drain(self) -> int:
        """Consume pending events; return the OR of their masks (0 if none)."""
        seen = 0
        for _, mask in self.read():
            seen |= mask
        return seen

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
