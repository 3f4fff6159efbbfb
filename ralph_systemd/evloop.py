"""The event loop under a Supervisor: a selector whose registrations carry their own callback.

It knows nothing of dispatches or D-Bus. Each fd is registered with the function to call when it is
readable, so the loop never inspects what an fd is (the model is asyncio's `add_reader`). Other threads
hand work to the loop thread with `call_soon_threadsafe`, which queues the call and writes one byte to a
wake-up pipe the loop always watches. `run_once(timeout)` sleeps until an fd is ready, a queued call
arrives, or the timeout passes, then runs what is due.
"""

from __future__ import annotations

import collections
import os
import selectors
import threading
from collections.abc import Callable


class EventLoop:
    """One selector, one wake-up pipe, one queue of calls from other threads."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Lock()
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wake_pipe)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback()` (in the loop thread) whenever fd is readable; replaces an earlier callback."""
        try:
            self._selector.register(fd, selectors.EVENT_READ, callback)
        except KeyError:
            self._selector.modify(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> bool:
        """Stop watching fd; False if it was not watched. Call it before closing the fd."""
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            return False
        return True

    def watching(self, fd: int) -> bool:
        try:
            self._selector.get_key(fd)
        except (KeyError, ValueError):
            return False
        return True

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        """Run fn() in the loop thread at its next turn; safe from any thread (and signal-safe enough)."""
        with self._lock:
            self._calls.append(fn)
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake already

    def run_calls(self) -> None:
        """Run the queued calls, in order (those queued while running wait for the next turn)."""
        with self._lock:
            calls, self._calls = self._calls, collections.deque()
        for fn in calls:
            fn()

    def run_once(self, timeout: float | None) -> None:
        """Sleep until an fd is ready or `timeout` seconds pass (None: no limit); run the ready callbacks
        and then the queued calls."""
        if self._calls:
            timeout = 0.0
        for key, _ in self._selector.select(timeout):
            callback: Callable[[], None] = key.data
            if self.watching(key.fd) and self._selector.get_key(key.fd).data is callback:
                callback()  # skipped when an earlier callback of this batch removed or replaced it
        self.run_calls()

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
