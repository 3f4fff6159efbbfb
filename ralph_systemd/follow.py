"""`logs -f`: stream a session's log until its dispatch ends, without polling.

We sleep in select() on two real events: inotify on the log file (the session wrote something) and the
user bus (the manager's PropertiesChanged for the unit, which we hold a ref on, so the signal reaches us
even though we did not launch it). Each wake-up copies the new bytes; a bus wake-up also re-reads the
unit's state, and once it has ended we copy what is left and return. No timer, no fixed interval.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import selectors
import struct
from typing import BinaryIO

from ralph_systemd.bus import SystemdBus
from ralph_systemd.retry import BusError

_IN_MODIFY = 0x002
_IN_CLOSE_WRITE = 0x008
_IN_DELETE_SELF = 0x400
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


class Inotify:
    """A minimal inotify watch on one file (glibc's inotify_* through ctypes); its fd is selectable."""

    def __init__(self, path: str) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        wd = libc.inotify_add_watch(self.fd, os.fsencode(path), _IN_MODIFY | _IN_CLOSE_WRITE | _IN_DELETE_SELF)
        if wd < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch({path}) failed")

    def drain(self) -> bool:
        """Consume pending events; True if the file was deleted."""
        deleted = False
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return deleted
            pos = 0
            while pos + 16 <= len(buf):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, pos)
                deleted |= bool(mask & _IN_DELETE_SELF)
                pos += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def copy_new(src: BinaryIO, out: BinaryIO) -> int:
    """Copy whatever src has beyond its current position to out; bytes copied."""
    n = 0
    while chunk := src.read(65536):
        out.write(chunk)
        n += len(chunk)
    if n:
        out.flush()
    return n


def follow(log_path: str, bus: SystemdBus, unit: str, out: BinaryIO) -> None:
    """Print the log from its start, then as it grows, until `unit` has ended (or the log is deleted)."""
    with open(log_path, "rb") as src:
        watch = Inotify(log_path)  # before the first read: nothing written in between is missed
        sel = selectors.DefaultSelector()
        try:
            bus.ref_unit(unit)  # its PropertiesChanged now reaches us; a ref on a live scope keeps nothing alive
            sel.register(watch.fd, selectors.EVENT_READ, "log")
            sel.register(bus.fileno(), selectors.EVENT_READ, "bus")
            check_unit = True
            while True:
                copy_new(src, out)
                # Signals may already sit in sd-bus's queue (read during our last call): drain before sleeping.
                check_unit |= bool(bus.drain())
                if check_unit:
                    check_unit = False
                    st = bus.unit_state(unit)
                    if st.ended or not st.exists:
                        copy_new(src, out)
                        return
                for key, _ in sel.select(None):
                    if key.data == "log" and watch.drain():
                        copy_new(src, out)
                        return
                    if key.data == "bus":
                        check_unit = True
        except BusError:
            copy_new(src, out)
            raise
        finally:
            sel.close()
            watch.close()
            try:
                bus.unref_unit(unit)
            except BusError:
                pass
