"""ralph_systemd.tf without a user manager: Ralph's config section, tf's command line, status mapping."""

from __future__ import annotations

import pytest

from ralph_systemd.result import DispatchResult as NativeResult
from ralph_systemd.result import Status, Termination
from ralph_systemd.tf import (
    DEFAULT_MAX_RUNTIME_MS,
    UNKNOWN_RETURN_CODE,
    BackendConfig,
    _poll_code,
    _return_code,
    backend_from_config,
    build_cmd,
    parse_config,
)
from ralph_systemd.tf.config import make_spec


def test_other_backends_leave_ralph_alone() -> None:
    assert backend_from_config({}) is None
    assert backend_from_config({"executionBackend": "dispatch"}) is None


def test_systemd_backend_with_its_section() -> None:
    b = backend_from_config({"executionBackend": "systemd",
                             "systemd": {"agentCommand": ["/opt/pi", "--x"], "graceMs": 2000, "idleTimeoutMs": 0}})
    assert b is not None
    assert b.config == BackendConfig(agent_command=("/opt/pi", "--x"), grace_ms=2000)


def test_a_string_agent_command_is_one_program_not_a_shell_line() -> None:
    assert parse_config({"agentCommand": "my pi"}).agent_command == ("my pi",)


def test_env_overrides_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RALPH_SYSTEMD_PI", "/usr/local/bin/fake")
    assert parse_config({"agentCommand": ["pi"]}).agent() == ("/usr/local/bin/fake",)


@pytest.mark.parametrize("section, words", [
    ({"agentComand": ["pi"]}, "unknown key 'agentComand'"),
    ({"graceMs": -1}, "systemd.graceMs must be a number > 0"),
    ({"graceMs": 0}, "systemd.graceMs must be a number > 0"),
    ({"graceMs": "5s"}, "systemd.graceMs"),
    ({"idleTimeoutMs": True}, "systemd.idleTimeoutMs"),
    ({"tasksMax": 1.5}, "systemd.tasksMax must be an integer"),
    ({"agentCommand": []}, "systemd.agentCommand"),
    ({"agentCommand": ["pi", 3]}, "systemd.agentCommand"),
    ({"slice": ""}, "systemd.slice"),
    ({"slice": "notaslice"}, "slice 'notaslice' is not a slice unit name"),
    ({"graceMs": 1000, "eofGraceMs": 1000, "stdin": "pipe"}, "eof_grace (1.0 s) must be shorter than grace"),
    ({"eofGraceMs": 500}, 'systemd.eofGraceMs applies only with "stdin": "pipe"'),
    ({"stdin": "tty"}, "systemd.stdin must be"),
    ({"unsetEnv": "CLAUDECODE"}, "systemd.unsetEnv must be a list of variable names"),
])
def test_bad_config_names_the_key(section: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=None) as e:
        backend_from_config({"executionBackend": "systemd", "systemd": section})
    assert words in str(e.value)


def test_a_bad_section_is_reported_even_when_not_selected() -> None:
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        backend_from_config({"executionBackend": "dispatch", "systemd": {"bogus": 1}})
    with pytest.raises(ValueError, match="must be an object"):
        backend_from_config({"executionBackend": "systemd", "systemd": ["pi"]})


def test_build_cmd_matches_tf() -> None:
    assert build_cmd("/tf", "pt-1", "--plan") == "/tf pt-1 --plan"
    assert build_cmd("/tf", "pt-1", "") == "/tf pt-1"
    with pytest.raises(ValueError, match="Invalid ticket ID format"):
        build_cmd("/tf", "pt-1; rm -rf /", "")


def _r(status: Status, exit_code: int | None = None, sig: int | None = None) -> NativeResult:
    return NativeResult(ticket="t", session="s", unit="ralph-t.scope", status=status,
                        termination_method=Termination.NATURAL, exit_code=exit_code, signal=sig, systemd_result=None,
                        leftovers_killed=0, duration_s=1.0, log_path=None, invocation_id=None, pid=1)


@pytest.mark.parametrize("result, code", [
    (_r(Status.COMPLETED, 0), 0),
    (_r(Status.FAILED, 3), 3),
    (_r(Status.FAILED, None, 9), -9),
    (_r(Status.TIMEOUT, 0), 124),  # ended gracefully on EOF after its timeout: still not a success
    (_r(Status.IDLE_TIMEOUT, None, 15), 124),  # a timeout is 124, however the session ended
    (_r(Status.STOPPED, 0), UNKNOWN_RETURN_CODE),
    (_r(Status.UNKNOWN), UNKNOWN_RETURN_CODE),
    (_r(Status.ERROR), UNKNOWN_RETURN_CODE),
])
def test_poll_never_reads_an_unsuccessful_end_as_success(result: NativeResult, code: int) -> None:
    assert _poll_code(result) == code


@pytest.mark.parametrize("status", [Status.TIMEOUT, Status.IDLE_TIMEOUT])
def test_a_timeouts_return_code_is_none_as_in_tf(status: Status) -> None:
    # tf's wait_for_dispatch_completion gives no return_code for a timeout; the old backend gave -15
    assert _return_code(_r(status, None, 15)) is None and _return_code(_r(status, 143)) is None


@pytest.mark.parametrize("timeout_ms, runtime, eof", [
    (4000, 3.0, 1.0),        # EOF inside the budget: SIGTERM lands at 4 s, as with tf (graceMs 4000 -> eof 1 s)
    (1000, 0.75, 0.25),      # a short budget: EOF gets at most a quarter of it
    (0, 4 * 3600 - 1.0, 1.0),  # tf's "no timeout": the documented maxRuntimeMs, never unbounded
])
def test_every_dispatch_is_bounded_and_eof_comes_inside_the_budget(timeout_ms: int, runtime: float,
                                                                    eof: float) -> None:
    spec = make_spec(parse_config({"graceMs": 4000, "stdin": "pipe"}), ["pi"], "T-1", "/", None, timeout_ms)
    assert spec.timeout == pytest.approx(runtime) and spec.eof_grace == pytest.approx(eof)
    assert spec.timeout + eof == pytest.approx(timeout_ms / 1000 if timeout_ms else DEFAULT_MAX_RUNTIME_MS / 1000)


@pytest.mark.parametrize("timeout_ms, runtime", [(4000, 4.0), (0, 4 * 3600.0)])
def test_the_default_stdin_is_null_so_sigterm_lands_at_the_budget_with_no_eof_step(timeout_ms: int,
                                                                                    runtime: float) -> None:
    # tf's own backend gave pi the terminal; `pi -p` blocks reading an open pipe, so ours gives /dev/null
    spec = make_spec(parse_config({"graceMs": 4000}), ["pi"], "T-1", "/", None, timeout_ms)
    assert spec.stdin == "null" and spec.eof_grace == 0.0
    assert spec.timeout == pytest.approx(runtime)


def test_nested_agent_variables_are_not_passed_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDECODE", "1")
    monkeypatch.setenv("KEEP_ME", "yes")
    spec = make_spec(parse_config({}), ["claude", "-p", "x"], "T-1", "/", None, 0)
    assert "CLAUDECODE" not in spec.environment and spec.environment["KEEP_ME"] == "yes"
    spec = make_spec(parse_config({"unsetEnv": ["KEEP_ME"]}), ["pi"], "T-1", "/", None, 0)
    assert "KEEP_ME" not in spec.environment and spec.environment.get("CLAUDECODE") == "1"  # the list replaces
