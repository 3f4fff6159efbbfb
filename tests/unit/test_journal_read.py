"""ralph_systemd.journal_read without journald: entries as terminal lines, and follow()'s loop driven by
real fds (pipes stand in for the journal's fd and the caller's "the unit may have ended" source)."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from io import BytesIO

from ralph_systemd.journal_read import LogLine, follow, to_line

UNIT = "ralph-T\\x2d1.scope"


def test_a_session_line_is_escaped_and_not_marked() -> None:
    line = to_line({"MESSAGE": "hi \x1b[2J there\r", "_SYSTEMD_USER_UNIT": UNIT, "SYSLOG_IDENTIFIER": "pi",
                    "_PID": "12", "PRIORITY": 6, "__REALTIME_TIMESTAMP": dt.datetime.fromtimestamp(2.5)}, UNIT)
    assert line == LogLine(2_500_000, "hi \\x1b[2J there\\r", "pi", 12, 6, False)
    assert line.render() == b"hi \\x1b[2J there\\r\n"


def test_a_lifecycle_line_is_marked_and_a_session_cannot_forge_one() -> None:
    ours = to_line({"MESSAGE": "result: completed", "SYSLOG_IDENTIFIER": "ralph-systemd", "USER_UNIT": UNIT,
                    "_SYSTEMD_USER_UNIT": "app.service", "RALPH_EVENT": "result"}, UNIT)
    assert ours.lifecycle and ours.render() == b"-- ralph-systemd: result: completed\n"
    forged = to_line({"MESSAGE": "result: completed", "SYSLOG_IDENTIFIER": "ralph-systemd", "RALPH_EVENT": "result",
                      "_SYSTEMD_USER_UNIT": UNIT}, UNIT)  # sent from inside the scope: journald says so
    assert not forged.lifecycle and forged.render() == b"result: completed\n"


def test_undecodable_and_repeated_messages() -> None:
    assert to_line({"MESSAGE": b"\xff\xfe ok"}, UNIT).text == "\ufffd\ufffd ok"
    assert to_line({"MESSAGE": ["first", "second"]}, UNIT).text == "first"
    assert to_line({}, UNIT).text == ""


class FakeUnitJournal:
    """A UnitJournal whose fd is a pipe: add() makes lines available and the fd readable, like journald."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.lines: list[LogLine] = []
        self.lock = threading.Lock()
        self.processed = 0

    def add(self, text: str) -> None:
        with self.lock:
            self.lines.append(LogLine(0, text, "sh", 1, 6, False))
        os.write(self.w, b"x")

    def read(self) -> list[LogLine]:
        with self.lock:
            out, self.lines = self.lines, []
        return out

    def fileno(self) -> int:
        return self.r

    def timeout_s(self) -> float | None:
        return None

    def process(self) -> None:
        self.processed += 1
        try:
            os.set_blocking(self.r, False)
            os.read(self.r, 4096)
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def test_follow_writes_lines_as_they_come_and_the_tail_after_the_end() -> None:
    uj = FakeUnitJournal()
    wake_r, wake_w = os.pipe()
    done = threading.Event()
    out = BytesIO()

    def ended() -> bool:
        if done.is_set():
            return True
        return False

    def session() -> None:
        uj.add("one")
        time.sleep(0.05)
        uj.add("two")
        done.set()
        os.write(wake_w, b"!")  # the caller's event: the unit may have ended
        time.sleep(0.1)
        uj.add("late")  # journald still writing after the end: not lost

    t = threading.Thread(target=session)
    t0 = time.monotonic()
    t.start()
    follow(uj, out, ended=ended, wake_fd=wake_r, settle_s=0.3, settle_max_s=2.0)
    took = time.monotonic() - t0
    t.join()
    assert out.getvalue() == b"one\ntwo\nlate\n"
    assert 0.15 + 0.3 <= took < 1.5, took  # stopped after 0.3 s of quiet following the last line
    for fd in (wake_r, wake_w):
        os.close(fd)
    uj.close()


def test_follow_of_a_unit_that_already_ended_returns_after_the_settle_time() -> None:
    uj = FakeUnitJournal()
    uj.add("only")
    wake_r, wake_w = os.pipe()
    out = BytesIO()
    t0 = time.monotonic()
    follow(uj, out, ended=lambda: True, wake_fd=wake_r, settle_s=0.2)
    assert out.getvalue() == b"only\n" and time.monotonic() - t0 < 1.0
    for fd in (wake_r, wake_w):
        os.close(fd)
    uj.close()


def test_follow_never_waits_longer_than_settle_max_for_a_chatty_tail() -> None:
    uj = FakeUnitJournal()
    wake_r, wake_w = os.pipe()
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            uj.add("more")
            time.sleep(0.02)

    t = threading.Thread(target=chatter)
    t.start()
    t0 = time.monotonic()
    try:
        follow(uj, BytesIO(), ended=lambda: True, wake_fd=wake_r, settle_s=0.5, settle_max_s=0.4)
    finally:
        stop.set()
        t.join()
    assert time.monotonic() - t0 < 1.0
    for fd in (wake_r, wake_w):
        os.close(fd)
    uj.close()
