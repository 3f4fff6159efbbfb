"""The journal against the real journald and user manager: lifecycle lines attributed to a dispatch's
scope (`systemctl --user status`, `journalctl --user -u`, `RALPH_TICKET=`), session output connected by a
forked child inside its scope, following it, and a process that cannot reach the journal at all.

The first test sends lifecycle lines itself, through ralph_systemd.journal; the others check the lines the
Supervisor sends for real dispatches, and the journal output mode end to end (run, status, logs -f)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from ralph_systemd import DispatchSpec, Status, Supervisor
from ralph_systemd import journal as J
from ralph_systemd.lifecycle import Event, Line
from ralph_systemd.journal_read import SETTLE_S, UnitJournal, find_launch, follow, latest_output_us

PROGRAMS = Path(__file__).parent / "programs"
SYSTEMCTL_ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "COLUMNS": "500"}


def _ticket(kind: str) -> str:
    return f"jr-{kind}-{uuid.uuid4().hex[:6]}"


def _wait_entries(n: int, timeout: float = 15.0, **matches: str) -> list[dict[str, Any]]:
    """The first n entries of the user's journal matching `matches`, waiting on the journal's fd for them."""
    sdj = J.bindings()
    r = sdj.Reader(flags=sdj.CURRENT_USER)
    r.fileno()  # the inotify watches, before the first read: nothing written after it goes unannounced
    r.add_match(**matches)
    r.seek_head()
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            while e := r.get_next():
                got.append(e)
            if len(got) >= n:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(got)} of {n} journal entries for {matches} after {timeout}s: "
                                     f"{[e.get('MESSAGE') for e in got]}")
            r.wait(left)
    finally:
        r.close()


def _entry_us(entry: dict[str, Any]) -> int:
    return int(entry["__REALTIME_TIMESTAMP"].timestamp() * 1_000_000)


def _status(unit: str, lines: int = 20) -> str:
    r = subprocess.run(["systemctl", "--user", "status", "--no-pager", "--full", f"--lines={lines}", unit],
                       capture_output=True, text=True, env=SYSTEMCTL_ENV)
    assert r.returncode in (0, 3), r.stderr  # 3: not running (also fine for the lines)
    return r.stdout


def _journalctl_json(*args: str) -> list[dict[str, Any]]:
    r = subprocess.run(["journalctl", "--user", "--no-pager", "-o", "json", *args],
                       capture_output=True, text=True, env=SYSTEMCTL_ENV)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def _invocation_id(unit: str) -> str:
    r = subprocess.run(["systemctl", "--user", "show", "-p", "InvocationID", "--value", unit],
                       capture_output=True, text=True, check=True)
    return r.stdout.strip()


@pytest.fixture(autouse=True)
def fresh_decision() -> Any:
    J.reset_for_tests()
    yield
    J.reset_for_tests()


def test_lifecycle_lines_show_in_status_while_running_and_in_journalctl_after(tmp_path: Path) -> None:
    """The Supervisor's own lines, for a session with hostile argv: one escaped line each, under the scope."""
    t = _ticket("life")
    assert J.Journal().enabled, J.journal_state().reason
    argv = ["sh", "-c", "read x; trap 'exit 3' TERM; while :; do sleep 0.1; done", "odd \x1b[31m\nargs"]
    with Supervisor() as sup:
        d = sup.launch(DispatchSpec(argv=argv, ticket=t, timeout=60, grace=5, stdin="pipe", eof_grace=1, log_dir=tmp_path))
        assert d.result is None, d.result
        inv = _invocation_id(d.unit)
        sup.stop(d)
        _wait_entries(1, RALPH_TICKET=t, RALPH_EVENT="eof")
        status = _status(d.unit)
        # While it runs: the ladder lines are under the scope in `systemctl --user status`.
        ours = [line for line in status.splitlines() if "ralph-systemd[" in line]
        assert [x.split("]: ", 1)[1].split(" ")[0] for x in ours] == ["launched", "stop", "stdin"], status
        assert not any("\x1b" in line for line in ours)  # argv's escape arrived escaped
        r = sup.wait(d)
    assert r.exit_code == 3 and r.status is Status.STOPPED, r
    _wait_entries(1, RALPH_TICKET=t, RALPH_EVENT="result")

    # After it ended (the unit is gone): journalctl -u has launch, ladder and result, with the fields.
    ours_after = [e for e in _journalctl_json("-u", d.unit) if e.get("SYSLOG_IDENTIFIER") == "ralph-systemd"]
    events = [e["RALPH_EVENT"] for e in ours_after]
    assert events == ["launched", "stop-requested", "eof", "sigterm", "result"], events
    for e in ours_after:
        assert e["USER_UNIT"] == d.unit and e["RALPH_TICKET"] == t and e["RALPH_SESSION"] == d.session
        assert e["RALPH_INVOCATION_ID"] == inv and e["USER_INVOCATION_ID"] == inv
        assert isinstance(e["MESSAGE"], str) and "\n" not in e["MESSAGE"] and "\x1b" not in e["MESSAGE"]
    launched, result = ours_after[0], ours_after[-1]
    assert "args" in launched["MESSAGE"] and launched["RALPH_OUTPUT"] == "file"
    assert result["RALPH_EXIT_CODE"] == "3" and result["RALPH_STATUS"] == "stopped"
    assert result["RALPH_TERMINATION"] == "sigterm" and result["PRIORITY"] == str(J.LOG_WARNING)
    # Filtering on the ticket field alone finds exactly these lines.
    assert [e["RALPH_EVENT"] for e in _journalctl_json(f"RALPH_TICKET={t}")] == events
    assert [e["RALPH_EVENT"] for e in _journalctl_json(f"RALPH_TICKET={t}", "RALPH_EXIT_CODE=3")] == ["result"]
    # `logs` can find where a dispatch wrote from its launched line, after the unit is gone.
    rec = find_launch(t)
    assert rec is not None and rec.unit == d.unit and rec.session == d.session and rec.invocation_id == inv
    assert find_launch(t, unit=d.unit) == rec and find_launch(t, unit="ralph-other-project.scope") is None
    assert rec.output == "file" and rec.log_path == r.log_path


def test_the_dispatch_ladder_shows_in_status_while_it_runs_and_in_journalctl_after(
        tmp_path: Path) -> None:
    t = _ticket("ladder")
    deaf = "trap '' TERM; while :; do sleep 0.1; done"  # deaf to EOF and SIGTERM: the ladder runs to SIGKILL
    with Supervisor() as sup:
        d = sup.launch(DispatchSpec(argv=["sh", "-c", deaf], ticket=t, timeout=1, grace=2.5, stdin="pipe", eof_grace=0.5,
                                    log_dir=tmp_path))
        assert d.result is None, d.result
        _wait_entries(1, RALPH_TICKET=t, RALPH_EVENT="sigterm")  # the ladder is at its second step
        status = _status(d.unit)
        ours = [line.split("]: ", 1)[1] for line in status.splitlines() if "ralph-systemd[" in line]
        assert [x.split(" ")[0] for x in ours] == ["launched", "systemd", "stdin", "SIGTERM"], status
        sup.wait(d)
    r = d.result
    assert r is not None and r.status is Status.TIMEOUT and str(r.termination_method) == "sigkill", r
    _wait_entries(1, RALPH_TICKET=t, RALPH_EVENT="result")
    ours_after = [e for e in _journalctl_json("-u", d.unit) if e.get("SYSLOG_IDENTIFIER") == "ralph-systemd"]
    events = [e["RALPH_EVENT"] for e in ours_after]
    assert events[:5] == ["launched", "stop-requested", "eof", "sigterm", "sigkill"] and events[-1] == "result"
    assert set(events[5:-1]) <= {"leftovers"}, events  # 257: the loop's `sleep` may be seen left over
    result = ours_after[-1]
    assert result["RALPH_STATUS"] == "timeout" and result["RALPH_SIGNAL"] == "SIGKILL"
    assert "RALPH_EXIT_CODE" not in result and result["PRIORITY"] == str(J.LOG_WARNING)
    assert result["RALPH_INVOCATION_ID"] == r.invocation_id


def test_the_result_line_has_the_sessions_exit_code(tmp_path: Path) -> None:
    t = _ticket("exit")
    with Supervisor() as sup:
        d = sup.launch(DispatchSpec(argv=["sh", "-c", "exit 7"], ticket=t, timeout=30, log_dir=tmp_path))
        sup.wait(d)
    [result] = _wait_entries(1, RALPH_TICKET=t, RALPH_EVENT="result")
    assert result["RALPH_EXIT_CODE"] == "7" and result["RALPH_STATUS"] == "failed"
    assert [e["RALPH_EVENT"] for e in _journalctl_json(f"RALPH_TICKET={t}", "RALPH_EXIT_CODE=7")] == ["result"]


def test_forked_child_connected_inside_its_scope_has_its_lines_under_the_scope(tmp_path: Path) -> None:
    t = _ticket("out")
    tag = uuid.uuid4().hex[:8]
    with Supervisor() as sup:
        d = sup.launch(DispatchSpec(argv=[sys.executable, str(PROGRAMS / "journal_stream_child.py"), tag],
                                    ticket=t, timeout=60, grace=5, stdin="pipe", eof_grace=1, log_dir=tmp_path))
        assert d.result is None, d.result
        try:
            inv = _invocation_id(d.unit)
            lines = _wait_entries(3, _SYSTEMD_USER_UNIT=d.unit)
            assert [e["MESSAGE"] for e in lines[:2]] == [f"out {tag}", f"err {tag}"]
            for e in lines:
                assert e["SYSLOG_IDENTIFIER"] == "sh" and e["_TRANSPORT"] == "stdout" and e["PRIORITY"] == 6
                assert str(e["_SYSTEMD_INVOCATION_ID"]).replace("-", "") == inv
            status = _status(d.unit)
            assert f"out {tag}" in status and f"err {tag}" in status, status  # the scope's own lines
            assert not any("\x1b" in line for line in status.splitlines() if "sh[" in line)
            # Reading it back for `logs`: this invocation's output, escaped, lifecycle lines excluded.
            with UnitJournal(d.unit, invocation_id=inv) as uj:
                text = [ln.text for ln in uj.read()]
            assert text == [f"out {tag}", f"err {tag}", f"esc {tag} \\x1b[31mred"]
            # What `logs` does: find the run from its launched line, then read its output (the last 2 lines).
            journal = J.Journal()
            journal.lifecycle(d.unit, Line(Event.LAUNCHED, "launched x", {
                "ticket": t, "session": d.session, "invocation_id": inv, "output": "journal"}))
            _wait_entries(1, RALPH_TICKET=t, RALPH_EVENT="launched")
            rec = find_launch(t, d.session)
            assert rec is not None and rec.output == "journal" and rec.invocation_id == inv
            with rec.open_output(lines=2) as uj:
                assert [ln.text for ln in uj.read()] == [f"err {tag}", f"esc {tag} \\x1b[31mred"]
            # The journal mode's idle clock: when the scope last wrote (the stamp of its last line).
            last = latest_output_us(d.unit, inv)
            assert last is not None and abs(last - _entry_us(lines[-1])) < 1000
            assert latest_output_us(d.unit, "0" * 32) is None
        finally:
            sup.stop(d)
            sup.wait(d)
    assert d.result is not None
    log = Path(d.result.log_path or "").read_text()
    assert "child-exit 0" in log and tag not in log  # the output went to the journal, not the private log


def test_follow_prints_lines_as_they_come_and_returns_when_the_unit_ended(tmp_path: Path) -> None:
    t = _ticket("follow")
    script = "for i in 1 2 3 4; do echo \"line $i\"; sleep 0.3; done"
    with Supervisor() as sup:
        d = sup.launch(DispatchSpec(argv=[sys.executable, "-c", _STREAM_AND_EXIT, script], ticket=t, timeout=60,
                                    log_dir=tmp_path))
        assert d.result is None and d.pid is not None, d.result
        inv = _invocation_id(d.unit)
        pidfd = os.pidfd_open(d.pid)
        try:
            out = BytesIO()
            t0 = time.monotonic()
            with UnitJournal(d.unit, invocation_id=inv) as uj:  # the session's own lines only
                follow(uj, out, wake_fd=pidfd, ended=lambda: bool(select.select([pidfd], [], [], 0)[0]))
            took = time.monotonic() - t0
        finally:
            os.close(pidfd)
        sup.wait(d)
    assert out.getvalue().decode() == "line 1\nline 2\nline 3\nline 4\n", (out.getvalue(), took)
    assert took < 1.2 + SETTLE_S + 3.0, took  # ran ~1.2 s, then SETTLE_S of quiet; bounded, not a fixed wait


def test_a_line_written_after_the_first_read_is_announced_on_the_fd() -> None:
    """The fd must watch the journal from before the first read: else a line written in between is only
    seen after some other write, which for a quiet session may never come."""
    t = _ticket("race")
    unit = f"ralph-{t}.scope"  # lifecycle lines need no live unit
    with UnitJournal(unit, lifecycle=True) as uj:
        assert uj.read() == []
        assert J.Journal().event(unit, "hello", fields={"RALPH_TICKET": t})
        _wait_entries(1, RALPH_TICKET=t)  # journald has written it (another reader saw it) ...
        time.sleep(0.6)  # ... and announced it: its post-change notification follows within 250 ms (no event for us)
        ready, _, _ = select.select([uj.fileno()], [], [], 5.0)
        uj.process()
        assert ready and [ln.text for ln in uj.read()] == ["hello"]


# The session for the follow test: connect stdout to the journal (as the launcher's child will), then
# exec the script. It runs inside its scope already (the Supervisor's gate).
_STREAM_AND_EXIT = """
import os, sys
from ralph_systemd import journal
out = journal.journal_output("/bin/sh")
fd, err = out.connect()
os.dup2(fd, 1); os.dup2(err, 2)
os.execv("/bin/sh", ["sh", "-c", sys.argv[1]])
"""

# Runs in a process that cannot reach journald (see _unreachable): the dispatch must still succeed.
_UNREACHABLE = """
import errno, json, logging, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
from ralph_systemd import DispatchSpec, Supervisor, journal as J
j = J.Journal()
sent = [j.event("x.scope", "one", fields={"RALPH_TICKET": "t"}) for _ in range(3)]
out = J.journal_output("/bin/sh")
try:
    J.JournalOutput("sh", stream_fd=J.bindings().stream_fd).connect()
    connect_error = None
except OSError as e:
    connect_error = errno.errorcode.get(e.errno, str(e.errno))
with Supervisor() as sup:
    d = sup.launch(DispatchSpec(argv=["sh", "-c", "echo fine"], ticket=sys.argv[1], timeout=30, log_dir=sys.argv[2]))
    sup.wait(d)
print(json.dumps({"sent": sent, "output": out is not None, "connect_error": connect_error,
                  "state": J.journal_state().reason, "status": str(d.result.status),
                  "log": open(d.result.log_path).read()}))
"""


def _unreachable(tmp_path: Path, hide: list[str]) -> tuple[dict[str, Any], str]:
    """Run _UNREACHABLE as this user with `hide` covered by empty tmpfs mounts, in a mount namespace of its
    own: an unprivileged user namespace maps us to root to mount, a nested one maps us back to our uid
    (so the user bus and the user manager accept us as ourselves). Nothing outside that process changes."""
    mounts = " && ".join(f"mount -t tmpfs -o mode=0755 none {p}" for p in hide if os.path.isdir(p))
    inner = ["unshare", "--user", f"--map-user={os.getuid()}", f"--map-group={os.getgid()}", "--",
             sys.executable, "-c", _UNREACHABLE, _ticket("off"), str(tmp_path)]
    cmd = ["unshare", "--map-root-user", "--mount", "--", "sh", "-c", f'{mounts} && exec "$@"', "sh", *inner]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"rc {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return json.loads(r.stdout.splitlines()[-1]), r.stderr


def test_without_journald_runs_succeed_and_one_line_says_why(tmp_path: Path) -> None:
    res, err = _unreachable(tmp_path, ["/run/systemd/journal"])
    assert res["status"] == "completed" and res["log"] == "fine\n"
    assert res["sent"] == [False, False, False] and res["output"] is False
    assert res["connect_error"] == "ENOENT"  # the child-side call fails cleanly; the launcher falls back
    warnings = [line for line in err.splitlines() if "journal off" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("ralph_systemd WARNING journal off: no journald socket at /run/systemd/journal/")


def test_a_user_who_cannot_read_their_journal_gets_no_journal_either(tmp_path: Path) -> None:
    res, err = _unreachable(tmp_path, ["/var/log/journal", "/run/log/journal"])
    assert res["status"] == "completed" and res["sent"] == [False, False, False] and res["output"] is False
    assert res["connect_error"] is None  # journald itself is there ...
    assert "cannot read your own journal" in res["state"]  # ... but `logs` could not read what we sent
    assert len([line for line in err.splitlines() if "journal off" in line]) == 1, err


_FORGER = """
import sys
from systemd import journal
journal.sendv("MESSAGE=launched (forged)", "SYSLOG_IDENTIFIER=ralph-systemd", "RALPH_EVENT=launched",
              "RALPH_TICKET=" + sys.argv[1], "RALPH_OUTPUT=file", "RALPH_LOG=/etc/passwd", "USER_UNIT=x.scope")
"""


def test_a_session_cannot_forge_the_launched_line_logs_relies_on(tmp_path: Path) -> None:
    t = _ticket("forge")
    with Supervisor() as sup:
        d = sup.launch(DispatchSpec(argv=[sys.executable, "-c", _FORGER, t], ticket=t, timeout=30, log_dir=tmp_path))
        sup.wait(d)
    assert d.result is not None and d.result.status is Status.COMPLETED, d.result
    lines = _wait_entries(2, RALPH_TICKET=t, RALPH_EVENT="launched")  # ours, and the session's forgery
    assert {e.get("_SYSTEMD_USER_UNIT") == d.unit for e in lines} == {True, False}  # journald says who sent it
    rec = find_launch(t)
    assert rec is not None and rec.log_path == d.result.log_path != "/etc/passwd"  # the forgery is skipped


def test_journal_output_mode_end_to_end_status_and_logs_follow(tmp_path: Path) -> None:
    """`run --output journal`: the session's own lines are the scope's in the journal, `systemctl --user status`
    shows its last ones while it runs, `ralph-systemd logs -f` follows them to the end, the log file stays empty."""
    t = _ticket("mode")
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    cli = [sys.executable, "-m", "ralph_systemd"]
    script = f"echo first-line; echo 'second\x1b]0;title\x07line' >&2; read x < {fifo}; echo last-line"
    run = subprocess.Popen([*cli, "run", "--json", "--output", "journal", "--ticket", t, "--timeout", "60",
                            "--log-dir", str(tmp_path), "--", "sh", "-c", script],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        [launched] = _wait_entries(1, RALPH_TICKET=t, RALPH_EVENT="launched")
        unit = launched["USER_UNIT"]
        assert launched["RALPH_OUTPUT"] == "journal"
        _wait_entries(2, _SYSTEMD_USER_UNIT=unit)  # both lines of the session, attributed to its scope
        status = _status(unit)
        assert "first-line" in status and "second" in status, status
        assert "\x1b" not in status  # systemctl escapes what the session wrote
        follower = subprocess.Popen([*cli, "logs", "-f", t], cwd=tmp_path, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        assert follower.stdout is not None
        first = follower.stdout.readline()  # it is following: it printed what was there
        fifo.write_text("go\n")  # the session writes its last line and exits
        out = follower.stdout.read()  # (not communicate(): it would skip what readline() buffered)
        err = follower.stderr.read() if follower.stderr is not None else b""
        follower.wait(timeout=30)
        stdout, stderr = run.communicate(timeout=30)
    finally:
        for p in (run,):
            if p.poll() is None:
                p.kill()
    assert follower.returncode == 0, err
    lines = (first + out).decode().splitlines()
    assert lines[0] == "first-line" and lines[-1] == "last-line" and len(lines) == 3, lines
    assert "\x1b" not in out.decode()  # the title-setting escape is shown escaped, never sent raw
    result = json.loads(stdout)
    assert (result["status"], result["exit_code"], run.returncode) == ("completed", 0, 0), stderr
    assert Path(result["log_path"]).read_bytes() == b""  # all output went to the journal
    [res] = _wait_entries(1, RALPH_TICKET=t, RALPH_EVENT="result")
    assert res["RALPH_STATUS"] == "completed" and res["RALPH_EXIT_CODE"] == "0"
