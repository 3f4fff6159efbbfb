"""ralph_systemd.journal without journald: message wording, escaping, fields, the once-per-process
decision, and the child-side stream connection (with fakes for journald)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ralph_systemd import journal as J
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


# -- the wording of each line -----------------------------------------------------------------------

def test_launched_message_names_ticket_session_command_limits_and_log() -> None:
    e = J.launched_entry(ticket="T-42", session="s1", argv=["pi", "-p", "/tf T-42 --auto"], pid=123,
                         log_path="/home/u/T-42.s1.log", timeout=3600, idle_timeout=600, grace=30,
                         memory_max=4 * 1024**3, tasks_max=512, cpu_quota=200.0)
    assert e.event is J.Event.LAUNCHED and e.priority == J.LOG_INFO
    assert e.message == ("launched T-42 (session s1, pid 123): pi -p '/tf T-42 --auto'; timeout 1h, idle 10min, "
                         "grace 30s, memory 4.0G, tasks 512, cpu 200%; log /home/u/T-42.s1.log")
    assert e.fields["RALPH_OUTPUT"] == "file" and e.fields["RALPH_TIMEOUT_S"] == "3600"
    assert e.fields["RALPH_COMMAND"] == "pi -p '/tf T-42 --auto'"


def test_launched_message_in_journal_mode_and_without_limits() -> None:
    e = J.launched_entry(ticket="T", session="s", argv=["true"], output="journal")
    assert e.message == "launched T (session s): true; no limits; output to the journal"
    assert e.fields["RALPH_OUTPUT"] == "journal" and e.fields["RALPH_PID"] is None


def test_launched_message_escapes_and_cuts_a_hostile_argv() -> None:
    e = J.launched_entry(ticket="T", session="s", argv=["sh", "-c", "x\n\x1b]0;pwned\x07" + "y" * 1000])
    assert "\n" not in e.message and "\x1b" not in e.message and "\x07" not in e.message
    assert "\\x1b]0;pwned\\x07" in e.message
    assert len(e.message) < J.MAX_ARGV_CHARS + 100 and "..." in e.message


@pytest.mark.parametrize(("reason", "kw", "text"), [
    ("timeout", {}, "stopping: the wall-clock timeout (RuntimeMaxSec) fired"),
    ("idle", {"idle": 600}, "stopping: idle timeout: no output for 10min"),
    ("request", {"by": "ralph-systemd stop"}, "stopping: stop requested by ralph-systemd stop"),
    ("manager", {"by": "systemctl --user stop"}, "stopping: systemd asked us to stop it (systemctl --user stop)"),
    ("signal", {"by": "SIGINT"}, "stopping: the launcher got SIGINT"),
    ("something-new", {}, "stopping: something-new"),
])
def test_stop_requested_says_why(reason: str, kw: dict[str, object], text: str) -> None:
    e = J.stop_requested_entry(reason, **kw)  # type: ignore[arg-type]
    assert e.message == text and e.event is J.Event.STOP_REQUESTED and e.fields["RALPH_REASON"] == reason


def test_stop_requested_with_grace_names_the_ladder() -> None:
    e = J.stop_requested_entry("timeout", grace=3)
    assert e.message.endswith("; ladder: EOF, SIGTERM, systemd's SIGKILL after 3s")


def test_ladder_step_messages() -> None:
    assert J.eof_entry(1.0).message == "closed the session's stdin (EOF); SIGTERM in 1s unless it exits"
    assert J.sigterm_entry(42, 2.5).message == ("sent SIGTERM to the session (pid 42); "
                                                "systemd SIGKILLs what is left in 2.5s")
    assert J.sigterm_entry(None).message == "sent SIGTERM to the session"
    assert J.sigkill_entry(3).message == "systemd SIGKILLed the session at the end of the 3s grace"
    assert J.sigkill_entry(3).priority == J.LOG_WARNING
    assert J.leftovers_entry(2).message == "the session exited; stopping 2 process(es) it left in the scope"
    assert [e.event for e in (J.eof_entry(1), J.sigterm_entry(1), J.sigkill_entry(), J.leftovers_entry(1))] == [
        J.Event.EOF, J.Event.SIGTERM, J.Event.SIGKILL, J.Event.LEFTOVERS]


def test_result_message_and_fields_completed() -> None:
    e = J.result_entry(_result())
    assert e.message == "result: completed (exit 0, terminated natural) after 2.5s; systemd result success"
    assert e.priority == J.LOG_INFO
    assert e.fields["RALPH_STATUS"] == "completed" and e.fields["RALPH_EXIT_CODE"] == 0
    assert e.fields["RALPH_SIGNAL"] is None and e.fields["RALPH_TERMINATION"] == "natural"


def test_result_message_for_a_timeout_killed_by_sigkill_with_leftovers() -> None:
    e = J.result_entry(_result(status=Status.TIMEOUT, termination_method=Termination.SIGKILL, exit_code=None,
                               signal=signal.SIGKILL, systemd_result="timeout", leftovers_killed=2, duration_s=8.24))
    assert e.message == ("result: timeout (SIGKILL, terminated sigkill) after 8.2s; systemd result timeout; "
                         "2 leftover process(es) killed")
    assert e.priority == J.LOG_WARNING and e.fields["RALPH_SIGNAL"] == "SIGKILL"
    assert e.fields["RALPH_EXIT_CODE"] is None and e.fields["RALPH_LEFTOVERS"] == 2


def test_result_message_for_an_error_carries_it_escaped() -> None:
    e = J.result_entry(_result(status=Status.ERROR, exit_code=None, systemd_result=None, error="no such\nprogram"))
    assert e.message == "result: error (exit code unknown, terminated natural) after 2.5s; no such\\nprogram"
    assert e.priority == J.LOG_ERR and e.fields["RALPH_ERROR"] == "no such\\nprogram"


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


def test_send_adds_the_dispatch_fields() -> None:
    fake = FakeSender()
    dj = J.Journal(fake).for_dispatch("u.scope", ticket="T-1", session="s1")
    assert dj.send(J.eof_entry(1.0))
    dj.invocation_id = "inv"
    assert dj.send(J.result_entry(_result()))
    first, second = (dict(f.split("=", 1) for f in sent) for sent in fake.sent)
    assert first["RALPH_EVENT"] == "eof" and first["RALPH_TICKET"] == "T-1" and first["RALPH_SESSION"] == "s1"
    assert "RALPH_INVOCATION_ID" not in first
    assert second["RALPH_EVENT"] == "result" and second["USER_INVOCATION_ID"] == "inv"
    assert second["RALPH_EXIT_CODE"] == "0" and second["USER_UNIT"] == "u.scope"


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
    assert J.Journal(fake).lifecycle(
        "ralph-T\\x2d1.scope", "result", "timeout (signal SIGKILL, ...)\nsecond line",
        {"ticket": "T-1", "session": "s1", "unit": "ralph-T\\x2d1.scope", "status": "timeout", "exit_code": None,
         "signal": "SIGKILL", "termination": "sigkill", "leftovers": 2, "duration_s": 8.25,
         "invocation_id": "abc"})
    sent = dict(f.split("=", 1) for f in fake.sent[0])
    assert sent == {"MESSAGE": "timeout (signal SIGKILL, ...)\\nsecond line", "PRIORITY": "4",
                    "SYSLOG_IDENTIFIER": "ralph-systemd", "USER_UNIT": "ralph-T\\x2d1.scope",
                    "RALPH_EVENT": "result", "RALPH_TICKET": "T-1", "RALPH_SESSION": "s1",
                    "RALPH_STATUS": "timeout", "RALPH_SIGNAL": "SIGKILL", "RALPH_TERMINATION": "sigkill",
                    "RALPH_LEFTOVERS": "2", "RALPH_DURATION_S": "8.25", "RALPH_INVOCATION_ID": "abc",
                    "USER_INVOCATION_ID": "abc"}


@pytest.mark.parametrize(("event", "status", "prio"), [
    ("launched", None, J.LOG_INFO), ("stop-requested", None, J.LOG_NOTICE), ("eof", None, J.LOG_NOTICE),
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
