"""The one retry policy for D-Bus calls: transient errors only, bounded in time, every retry logged.

Transient = what systemd-run itself treats as "reconnect and retry": no reply, disconnected, timed out,
service unknown, name has no owner (the manager is re-executing or the bus daemon restarting).
Everything else (access denied, invalid args, unit exists, no such unit) surfaces at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

log = logging.getLogger("ralph_systemd.bus")

T = TypeVar("T")

#: How long one call may keep retrying before its last error surfaces.
DEFAULT_RETRY_BUDGET_S = 15.0

TRANSIENT_DBUS_ERRORS = frozenset({
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
    "org.freedesktop.DBus.Error.TimedOut",
    "org.freedesktop.DBus.Error.Timeout",
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
})


class BusError(Exception):
    """A D-Bus call to the user manager failed. `dbus_name` is the D-Bus error name, when there is one."""

    def __init__(self, message: str, dbus_name: str | None = None) -> None:
        super().__init__(message)
        self.dbus_name = dbus_name


class TransientBusError(BusError):
    """Worth retrying: the manager or the bus is restarting, or the connection dropped."""

    def __init__(self, message: str, dbus_name: str | None = None, *, disconnected: bool = False) -> None:
        super().__init__(message, dbus_name)
        self.disconnected = disconnected


def retrying(budget_s: float = DEFAULT_RETRY_BUDGET_S,
             before_retry: Callable[[BaseException], None] | None = None,
             operation: str = "a D-Bus call") -> tenacity.Retrying:
    """A tenacity.Retrying for one call: exponential backoff 10 ms .. 1 s with jitter, at most budget_s.
    Each retry is logged at debug level (a manager re-exec makes a few; they are not news when the call
    then succeeds); a call that gives up is logged once, as a warning, by call_with_retry."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.debug("%s failed transiently (attempt %d, %.2f s so far): %s; retrying",
                  operation, state.attempt_number, state.seconds_since_start, exc)
        if before_retry is not None and exc is not None:
            before_retry(exc)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TransientBusError),
        stop=tenacity.stop_after_delay(budget_s),
        wait=tenacity.wait_exponential(multiplier=0.01, max=1.0) + tenacity.wait_random(0, 0.01),
        before_sleep=before_sleep,
        reraise=True,
    )


def call_with_retry(fn: Callable[[], T], budget_s: float = DEFAULT_RETRY_BUDGET_S,
                    before_retry: Callable[[BaseException], None] | None = None,
                    operation: str = "a D-Bus call") -> T:
    """fn() under the policy; the last error is re-raised when the budget is spent.

    The first attempt is a plain call: the policy (a tenacity.Retrying) is built only once it has failed
    transiently, so the common case costs nothing extra (measured: 0.1 s per 256 launches otherwise)."""
    started = time.monotonic()
    try:
        return fn()
    except TransientBusError as e:
        first = e
    replayed = False

    def attempt() -> T:  # the policy's first attempt is the one that just failed: it waits, then retries
        nonlocal replayed
        if not replayed:
            replayed = True
            raise first
        return fn()

    policy = retrying(max(0.0, budget_s - (time.monotonic() - started)), before_retry, operation)
    try:
        return policy(attempt)
    except TransientBusError as e:
        attempts = policy.statistics.get("attempt_number", 1)
        log.warning("%s still failing after %d attempts in %.1f s: %s", operation, attempts, budget_s, e)
        raise
