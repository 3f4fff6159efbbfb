"""ralph_systemd.journal without journald: message wording, escaping, fields, the once-per-process
decision, and the child-side stream connection (with fakes for journald)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ralph_systemd import journal as J
from ralph_systemd import lifecycle as L
from ralph_systemd.spec import DispatchSpec
from ralph_systemd.result import DispatchResult, Status, Termination
from ralph_systemd.text import escape


@pytest.fixture(autouse=True)
def journal_on() -> Iterator[None]:
    J.reset_for_tests(lambda: J.JournalState(True))
    yield
    J.reset_for_tests()


def _result(**kw: object) -> DispatchResult:
    base: dict[str, object] = dict(ticket="T-1", session="s1", unit="ralph-T\\x2d1.scope", status=Status.COMPLETED,
                                   termination_method=Termination.NATURAL, exit_code=0, signal=None,
                                   systemd_result="success", leftovers_killed=0, duration_s=2.5, log_path="/l",
                                   invocation_id="abc", pid=10)
    base.update(kw)
    return DispatchResult(**base)  # type: ignore[arg-type]


# -- escaping ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text", "plain text"),
    ("two\nlines", "two\\nlines"),
    ("tab\there", "tab\\there"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("bell\x07 del\x7f c1\x9b", "bell\\x07 del\\x7f c1\\x9b"),
    ("rtl\u202eoverride", "rtl\\u202eoverride"),
    ("line\u2028sep", "line\\u2028sep"),
    ("ünïcødé ✓ 票", "ünïcødé ✓ 票"),
    ("back\\slash", "back\\slash"),
])
def test_escape_text(raw: str, shown: str) -> None:
    assert escape(raw) == shown


@given(st.text())
def test_escaped_text_is_one_printable_line(raw: str) -> None:
    out = escape(raw)
    assert "\n" not in out and "\r" not in out
    assert all(ch.isprintable() for ch in out)


def test_escape_text_limit_cuts_with_dots() -> None:
    assert escape("x" * 50, 10) == "xxxxxxx..."
    assert escape("short", 10) == "short"


# -- the wording of each line: lifecycle.py, what the product emits --------------------------------

def test_launched_line_names_the_description_output_stdin_and_limits(tmp_path: Path) -> None:
    spec = DispatchSpec(argv=["pi", "-p", "/tf T-42 --auto"], ticket="T-42", session="s1", cwd=tmp_path,
                        timeout=3600, grace=30)
    line = L.launched(spec, 123, "/logs/x.log")
    assert line.event is L.Event.LAUNCHED
    assert line.message == (f"launched {spec.describe()} (output to log /logs/x.log, stdin null, timeout 3600 s, "
                            "idle timeout none, grace 30 s)")
    assert line.fields["pid"] == 123 and line.fields["stdin"] == "null" and line.fields["timeout_s"] == 3600


def test_stop_lines_name_who_and_the_ladder_they_run() -> None:
    assert L.stop_requested(Status.TIMEOUT, L.ladder_words(5, False), by_manager=True).message == \
        "systemd stops the scope (timeout): SIGTERM, then SIGKILL after 5 s"
    assert L.stop_requested(Status.STOPPED, L.ladder_words(2.5, True), by_manager=False).message == \
        "stop requested (stopped): EOF, then SIGTERM, then SIGKILL after 2.5 s"
    assert L.eof(0.5).message == "stdin closed (EOF); SIGTERM in 0.5 s"
    assert L.sigkill(2).fields == {"leftovers": 2} and L.leftovers(3).event is L.Event.LEFTOVERS


def test_result_line_and_its_fields() -> None:
    line = L.result(_result(status=Status.TIMEOUT, termination_method=Termination.SIGKILL, exit_code=None,
                            signal=signal.SIGKILL, systemd_result="timeout", leftovers_killed=1, duration_s=8.25))
    assert line.message == "timeout (signal SIGKILL, sigkill, systemd result timeout, 1 leftover(s) killed, 8.250 s)"
    assert line.fields["status"] == "timeout" and line.fields["signal"] == "SIGKILL"


# -- the fields sent --------------------------------------------------------------------------------

def test_entry_fields_attribute_the_line_to_the_unit_and_mirror_the_invocation() -> None:
    fields = J.entry_fields("ralph-T\\x2d1.scope", "hello\nworld", J.LOG_NOTICE,
                            {"RALPH_TICKET": "T-1", "RALPH_SESSION": None, "RALPH_INVOCATION_ID": "abc",
                             "RALPH_EXIT_CODE": 0})
    assert fields == ["MESSAGE=hello\\nworld", "PRIORITY=5", "SYSLOG_IDENTIFIER=ralph-systemd",
                      "USER_UNIT=ralph-T\\x2d1.scope", "RALPH_TICKET=T-1", "RALPH_INVOCATION_ID=abc",
                      "USER_INVOCATION_ID=abc", "RALPH_EXIT_CODE=0"]


def test_entry_fields_escape_values_so_any_path_can_be_sent() -> None:
    fields = J.entry_fields("u.scope", "m", J.LOG_INFO, {"RALPH_LOG": "/tmp/odd\udcffname\n.log"})
    assert fields[-1] == "RALPH_LOG=/tmp/odd\\udcffname\\n.log"
    for f in fields:
        f.encode("utf-8")  # what sendv does: it must not raise


@pytest.mark.parametrize("name", ["lower", "_TRUSTED", "1ST", "WITH-DASH", "A" * 65, "MESSAGE", "USER_UNIT", ""])
def test_entry_fields_reject_bad_or_reserved_names(name: str) -> None:
    with pytest.raises(ValueError, match="journal field name"):
        J.entry_fields("u.scope", "m", J.LOG_INFO, {name: "x"})


def test_entry_fields_reject_a_bad_priority() -> None:
    with pytest.raises(ValueError, match="priority 9"):
        J.entry_fields("u.scope", "m", 9, {})


class FakeSender:
    def __init__(self, fail: OSError | None = None) -> None:
        self.sent: list[tuple[str, ...]] = []
        self.fail = fail

    def __call__(self, *fields: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append(fields)


def test_journal_off_sends_nothing_and_says_why_once(caplog: pytest.LogCaptureFixture) -> None:
    J.reset_for_tests(lambda: J.JournalState(False, "no journald socket at /x"))
    fake = FakeSender()
    j = J.Journal(fake)
    with caplog.at_level(logging.WARNING, logger="ralph_systemd"):
        assert [j.event("u.scope", "m") for _ in range(3)] == [False, False, False]
        assert J.journal_output("/bin/sh") is None
        assert not J.Journal(fake).enabled
    assert fake.sent == []
    assert [r.getMessage() for r in caplog.records] == [
        "journal off: no journald socket at /x; dispatches run as before, with lines only in their private logs"]


def test_a_failing_send_turns_the_journal_off_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeSender(fail=ConnectionRefusedError(111, "Connection refused"))
    j = J.Journal(fake)
    with caplog.at_level(logging.WARNING, logger="ralph_systemd"):
        assert j.event("u.scope", "m") is False  # never raises: the dispatch goes on
        fake.fail = None
        assert j.event("u.scope", "m") is False  # off for the rest of the process
    assert fake.sent == []
    assert [r.getMessage() for r in caplog.records] == [
        "journal off: sending to journald failed (Connection refused); dispatches run as before, "
        "with lines only in their private logs"]


def test_the_decision_is_made_once_per_process() -> None:
    calls = []

    def probe() -> J.JournalState:
        calls.append(1)
        return J.JournalState(True)

    J.reset_for_tests(probe)
    j = J.Journal(FakeSender())
    for _ in range(5):
        j.event("u.scope", "m")
    assert J.journal_state().enabled and calls == [1]


def test_bad_field_names_fail_even_when_the_journal_is_off() -> None:
    J.reset_for_tests(lambda: J.JournalState(False, "off"))
    with pytest.raises(ValueError):
        J.Journal(FakeSender()).event("u.scope", "m", fields={"bad-name": 1})


# -- session output -------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv0", "ident"), [
    ("/usr/bin/pi", "pi"), ("pi", "pi"), ("./bin/fake agent", "fake_agent"), ("/usr/bin/", "bin"),
    ("x\ny", "x_y"), ("", "session"), ("a" * 100, "a" * 64),
])
def test_stream_identifier(argv0: str, ident: str) -> None:
    assert J.stream_identifier(argv0) == ident


class FakeStreams:
    """stream_fd stand-in: hands out real pipe write ends so fds can be checked and closed."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.fds: list[int] = []
        self.fail_on = fail_on
        self.read_ends: list[int] = []

    def __call__(self, identifier: str, priority: int, level_prefix: int) -> int:
        self.calls.append((identifier, priority, level_prefix))
        if self.fail_on == len(self.calls):
            raise FileNotFoundError(2, "No such file or directory")
        r, w = os.pipe()
        self.read_ends.append(r)
        self.fds.append(w)
        return w

    def close(self) -> None:
        for fd in self.read_ends + self.fds:
            try:
                os.close(fd)
            except OSError:
                pass


def test_connect_opens_one_stream_for_both_by_default() -> None:
    fake = FakeStreams()
    try:
        out, err = J.JournalOutput("pi", stream_fd=fake).connect()
        assert out == err and fake.calls == [("pi", J.LOG_INFO, 0)]
    finally:
        fake.close()


def test_connect_opens_a_second_stream_for_another_stderr_priority() -> None:
    fake = FakeStreams()
    try:
        out, err = J.JournalOutput("pi", J.LOG_INFO, J.LOG_WARNING, stream_fd=fake).connect()
        assert out != err and fake.calls == [("pi", J.LOG_INFO, 0), ("pi", J.LOG_WARNING, 0)]
    finally:
        fake.close()


def test_connect_failure_raises_and_leaks_no_fd() -> None:
    fake = FakeStreams(fail_on=2)
    try:
        with pytest.raises(OSError):
            J.JournalOutput("pi", J.LOG_INFO, J.LOG_WARNING, stream_fd=fake).connect()
        with pytest.raises(OSError):  # the first stream was closed again
            os.fstat(fake.fds[0])
    finally:
        fake.close()


@pytest.mark.parametrize(("kw", "what"), [
    ({"stdout_priority": 8}, "priority 8"), ({"stderr_priority": -1}, "priority -1"),
    ({"identifier": "a\nb"}, "identifier"), ({"identifier": ""}, "identifier")])
def test_journal_output_is_checked_in_the_parent(kw: dict[str, object], what: str) -> None:
    args: dict[str, object] = {"identifier": "pi", **kw}
    with pytest.raises(ValueError, match=what):
        J.JournalOutput(**args)  # type: ignore[arg-type]


def test_connect_without_the_bindings_raises_oserror() -> None:
    with pytest.raises(OSError, match="journal is off"):
        J.JournalOutput("pi").connect()


def test_journal_output_is_built_in_the_parent_with_the_program_name() -> None:
    out = J.journal_output("/usr/local/bin/pi")
    if J.bindings() is None:
        assert out is None
    else:
        assert out is not None and out.identifier == "pi" and out.stdout_priority == out.stderr_priority == 6
        assert out.stream_fd is J.bindings().stream_fd


# -- the bridge from the Dispatch's own lifecycle hook ----------------------------------------------

def test_lifecycle_maps_the_dispatch_facts_to_ralph_fields() -> None:
    fake = FakeSender()
    assert J.Journal(fake).lifecycle("ralph-T\\x2d1.scope", L.Line(
        L.Event.RESULT, "timeout (signal SIGKILL, ...)\nsecond line",
        {"ticket": "T-1", "session": "s1", "unit": "ralph-T\\x2d1.scope", "status": "timeout", "exit_code": None,
         "signal": "SIGKILL", "termination": "sigkill", "leftovers": 2, "duration_s": 8.25,
         "invocation_id": "abc"}))
    sent = dict(f.split("=", 1) for f in fake.sent[0])
    assert sent == {"MESSAGE": "timeout (signal SIGKILL, ...)\\nsecond line", "PRIORITY": "4",
                    "SYSLOG_IDENTIFIER": "ralph-systemd", "USER_UNIT": "ralph-T\\x2d1.scope",
                    "RALPH_EVENT": "result", "RALPH_TICKET": "T-1", "RALPH_SESSION": "s1",
                    "RALPH_STATUS": "timeout", "RALPH_SIGNAL": "SIGKILL", "RALPH_TERMINATION": "sigkill",
                    "RALPH_LEFTOVERS": "2", "RALPH_DURATION_S": "8.25", "RALPH_INVOCATION_ID": "abc",
                    "USER_INVOCATION_ID": "abc"}


@pytest.mark.parametrize(("event", "status", "prio"), [
    ("launched", None, J.LOG_INFO), ("warning", None, J.LOG_WARNING), ("stop-requested", None, J.LOG_NOTICE), ("eof", None, J.LOG_NOTICE),
    ("sigterm", None, J.LOG_NOTICE), ("sigkill", None, J.LOG_WARNING), ("leftovers", None, J.LOG_NOTICE),
    ("result", "completed", J.LOG_INFO), ("result", "failed", J.LOG_WARNING), ("result", "timeout", J.LOG_WARNING),
    ("result", "error", J.LOG_ERR), ("result", "oom", J.LOG_ERR), ("result", "unknown", J.LOG_ERR),
    ("something-new", None, J.LOG_INFO),
])
def test_priority_for(event: str, status: str | None, prio: int) -> None:
    assert J.priority_for(event, status) == prio


def test_ralph_fields_names() -> None:
    assert J.ralph_fields("launched", {"log": "/l", "timeout_s": 1.5, "pid": 3, "weird-key": object}) == {
        "RALPH_EVENT": "launched", "RALPH_LOG": "/l", "RALPH_TIMEOUT_S": "1.5", "RALPH_PID": 3,
        "RALPH_WEIRD_KEY": "<class 'object'>"}
