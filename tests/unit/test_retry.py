"""The retry policy: transient D-Bus errors are retried within a time budget, permanent ones surface at once."""

from __future__ import annotations

import time

import pytest

from ralph_systemd.retry import BusError, TransientBusError, call_with_retry


class FlakyCall:
    def __init__(self, failures: list[Exception], value: str = "ok") -> None:
        self.failures = list(failures)
        self.calls = 0
        self.value = value

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.value


def test_transient_errors_are_retried_until_success() -> None:
    call = FlakyCall([TransientBusError("no reply", "org.freedesktop.DBus.Error.NoReply")] * 3)
    assert call_with_retry(call, budget_s=5) == "ok"
    assert call.calls == 4


def test_permanent_errors_surface_at_once() -> None:
    call = FlakyCall([BusError("denied", "org.freedesktop.DBus.Error.AccessDenied")])
    with pytest.raises(BusError, match="denied"):
        call_with_retry(call, budget_s=5)
    assert call.calls == 1


def test_endless_transient_errors_give_up_within_the_budget_without_a_storm() -> None:
    call = FlakyCall([TransientBusError("gone", disconnected=True)] * 10_000)
    t0 = time.monotonic()
    with pytest.raises(TransientBusError, match="gone"):
        call_with_retry(call, budget_s=0.5)
    took = time.monotonic() - t0
    assert 0.4 <= took < 1.6
    assert call.calls < 12  # exponential backoff from 10 ms: a handful of attempts, not thousands


def test_reconnect_hook_runs_before_each_retry() -> None:
    seen: list[BaseException] = []
    call = FlakyCall([TransientBusError("dropped", disconnected=True)] * 2)
    call_with_retry(call, budget_s=5, before_retry=seen.append)
    assert len(seen) == 2 and all(isinstance(e, TransientBusError) for e in seen)
