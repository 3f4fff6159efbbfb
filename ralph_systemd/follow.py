"""`logs -f`: stream a session's log until its dispatch ends, without polling.

We sleep in select() on two real events: inotify on the log file (the session wrote something) and the
user bus (the manager's PropertiesChanged for the unit, which we hold a ref on, so the signal reaches us
even though we did not launch it). Each wake-up copies the new bytes; a bus wake-up also re-reads the
unit's state, and once it has ended we copy what is left and return. No timer, no fixed interval.
"""

from __future__ import annotations

import errno
import selectors
from typing import BinaryIO

from ralph_systemd.bus import SystemdBus
from ralph_systemd.inotify import IN_CLOSE_WRITE, IN_DELETE_SELF, IN_MODIFY, Inotify
from ralph_systemd.retry import BusError


class FollowError(Exception):
    """The log cannot be followed (no inotify instance or watch to be had): one line with the fix."""


def _watch(log_path: str) -> Inotify:
    try:
        return Inotify(log_path, IN_MODIFY | IN_CLOSE_WRITE | IN_DELETE_SELF)
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENOSPC, errno.ENFILE):
            what = "inotify watches" if e.errno == errno.ENOSPC else "inotify instances (or file descriptors)"
            raise FollowError(f"cannot follow {log_path}: this user has run out of {what} "
                              f"({errno.errorcode.get(e.errno or 0, e.errno)}); raise fs.inotify.max_user_instances "
                              "/ max_user_watches with sysctl, or drop -f to print the log as it is now") from None
        raise FollowError(f"cannot follow {log_path}: {e.strerror}") from None


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
        watch = _watch(log_path)  # before the first read: nothing written in between is missed
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
                    if key.data == "log" and watch.drain() & IN_DELETE_SELF:
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
