"""The verdict table: status and termination method from what was observed."""

from __future__ import annotations

import signal

import pytest

from ralph_systemd.result import Status, Termination
from ralph_systemd.verdict import Facts, decide

N, E, T, K, U = Termination.NATURAL, Termination.EOF, Termination.SIGTERM, Termination.SIGKILL, Termination.UNKNOWN


def facts(**kw: object) -> Facts:
    base: dict[str, object] = dict(systemd_result="success", stop_reason=None, ladder_step_at_exit=N,
                                   exit_code=0, exit_signal=None, attached=False, stuck=False)
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw, expected", [
    (dict(), (Status.COMPLETED, N)),
    (dict(exit_code=3), (Status.FAILED, N)),
    (dict(exit_code=None, exit_signal=signal.SIGSEGV), (Status.FAILED, N)),
    (dict(exit_code=None, exit_signal=signal.SIGKILL), (Status.FAILED, N)),  # killed by someone else
    # the ladder reached it
    (dict(stop_reason=Status.TIMEOUT, ladder_step_at_exit=E, systemd_result="timeout"), (Status.TIMEOUT, E)),
    (dict(stop_reason=Status.TIMEOUT, ladder_step_at_exit=T, exit_code=143), (Status.TIMEOUT, T)),
    (dict(stop_reason=Status.TIMEOUT, ladder_step_at_exit=T, exit_code=None, exit_signal=signal.SIGKILL,
          systemd_result="timeout"), (Status.TIMEOUT, K)),
    (dict(stop_reason=Status.IDLE_TIMEOUT, ladder_step_at_exit=T, exit_code=None, exit_signal=15),
     (Status.IDLE_TIMEOUT, T)),
    (dict(stop_reason=Status.STOPPED, ladder_step_at_exit=E), (Status.STOPPED, E)),
    # a stop that came after the session had exited by itself does not change its verdict
    (dict(stop_reason=Status.TIMEOUT, ladder_step_at_exit=N, exit_code=0, systemd_result="timeout"),
     (Status.COMPLETED, N)),
    (dict(stop_reason=Status.TIMEOUT, ladder_step_at_exit=N, exit_code=2), (Status.FAILED, N)),
    # the OOM killer wins
    (dict(systemd_result="oom-kill", exit_code=None, exit_signal=signal.SIGKILL), (Status.OOM, K)),
    (dict(systemd_result="oom-kill", stop_reason=Status.TIMEOUT, ladder_step_at_exit=E), (Status.OOM, E)),
    # re-attached: never success by default
    (dict(attached=True, exit_code=None, ladder_step_at_exit=None), (Status.UNKNOWN, U)),
    (dict(attached=True, exit_code=None, systemd_result="timeout"), (Status.TIMEOUT, U)),
    (dict(attached=True, exit_code=None, stop_reason=Status.STOPPED), (Status.STOPPED, U)),
    # outlived its scope
    (dict(stuck=True, exit_code=None, ladder_step_at_exit=U, systemd_result="timeout"), (Status.TIMEOUT, U)),
    (dict(stuck=True, exit_code=None, ladder_step_at_exit=U, systemd_result="failed"), (Status.STOPPED, U)),
])
def test_verdict(kw: dict[str, object], expected: tuple[Status, Termination]) -> None:
    assert decide(facts(**kw)) == expected


def test_no_combination_without_a_zero_exit_is_completed() -> None:
    for code in (None, 1, 2, 127):
        for sig in (None, 9, 15):
            for attached in (False, True):
                status, _ = decide(facts(exit_code=code, exit_signal=sig, attached=attached))
                assert status is not Status.COMPLETED
