"""`ralph-systemd` (python -m ralph_systemd) against the real user manager: every subcommand, the JSON, the
exit codes, and bad input that must change nothing."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import alive, cli, cli_json, popen, read_fifo, read_until, ticket, unit_loaded, unit_of

RUN_KEYS = {"ticket", "session", "unit", "invocation_id", "status", "exit_code", "signal", "termination_method",
            "systemd_result", "leftovers_killed", "duration_s", "log_path", "error", "exit_status"}


@pytest.mark.parametrize("argv, code, status, sig", [
    (["sh", "-c", "echo out; exit 0"], 0, "completed", None),
    (["sh", "-c", "exit 3"], 3, "failed", None),
    (["sh", "-c", "kill -KILL $$"], 137, "failed", "SIGKILL"),
    (["sh", "-c", "kill -TERM $$"], 143, "failed", "SIGTERM"),
])
def test_run_exit_codes_and_json(argv: list[str], code: int, status: str, sig: str | None, tmp_path: Path) -> None:
    t = ticket("rc")
    rc, j = cli_json("run", "--json", "--ticket", t, "--log-dir", str(tmp_path), "--", *argv, cwd=tmp_path)
    assert rc == code
    assert RUN_KEYS <= set(j)
    assert (j["ticket"], j["unit"], j["status"], j["signal"], j["exit_status"]) == \
        (t, unit_of(t, tmp_path), status, sig, code)
    assert j["exit_code"] == (None if sig else code)
    assert j["systemd_result"] == "success" and j["error"] is None and len(j["invocation_id"]) == 32
    assert Path(j["log_path"]).parent == tmp_path and j["duration_s"] > 0
    assert not unit_loaded(j["unit"])


def test_run_quiet_when_not_a_tty_and_a_summary_with_v(tmp_path: Path) -> None:
    t = ticket("v")
    r = cli("run", "--ticket", t, "--log-dir", str(tmp_path), "--", "sh", "-c", "exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "", "")
    r = cli("run", "-v", "--log-dir", str(tmp_path), "--", "sh", "-c", "echo hi")
    assert r.returncode == 0
    fields = dict(line.split(":", 1) for line in r.stdout.splitlines())
    assert {"ticket", "unit", "session", "status", "duration", "log"} <= set(fields)
    assert fields["ticket"].strip().startswith("sh.")  # the default ticket: <program>.<6 hex>
    assert "completed (exit 0" in fields["status"]
    assert Path(fields["log"].strip()).read_text() == "hi\n"


def test_run_timeout_is_124(tmp_path: Path) -> None:
    rc, j = cli_json("run", "--json", "--timeout", "1s", "--grace", "1s", "--log-dir", str(tmp_path),
                     "--", "sleep", "30")
    assert rc == 124
    assert (j["status"], j["systemd_result"]) == ("timeout", "timeout")
    assert 1.0 <= j["duration_s"] < 10


def test_run_idle_timeout_is_124(tmp_path: Path) -> None:
    rc, j = cli_json("run", "--json", "--idle-timeout", "500ms", "--grace", "1s", "--log-dir", str(tmp_path),
                     "--", "sleep", "30")
    assert rc == 124 and j["status"] == "idle-timeout"


def test_run_missing_program_is_125_and_leaves_nothing(tmp_path: Path) -> None:
    t = ticket("missing")
    logs = tmp_path / "logs"
    r = cli("run", "--json", "--ticket", t, "--log-dir", str(logs), "--", "no-such-program-xyz")
    assert r.returncode == 125
    assert r.stderr.count("\n") == 1 and "'no-such-program-xyz' was not found in PATH" in r.stderr
    j = json.loads(r.stdout)
    assert (j["status"], j["exit_status"], j["log_path"]) == ("error", 125, None)
    assert not unit_loaded(unit_of(t)) and not logs.exists()


def test_a_second_run_of_a_live_ticket_is_125(tmp_path: Path) -> None:
    t = ticket("dup")
    r = cli("run", "--detach", "--ticket", t, "--timeout", "1min", "--log-dir", str(tmp_path), "--", "sleep", "60")
    assert r.returncode == 0, r.stderr
    try:
        r2 = cli("run", "--ticket", t, "--log-dir", str(tmp_path), "--", "true")
        assert r2.returncode == 125
        assert "already has a live dispatch" in r2.stderr and f"ralph-systemd stop {t}" in r2.stderr
    finally:
        assert cli("stop", t).returncode == 0


def test_run_gives_the_session_dev_null_by_default_so_a_stdin_reader_starts_at_once(tmp_path: Path) -> None:
    # `pi -p` reads piped stdin to EOF first: under an open pipe it sat silent until the timeout (issue 18)
    rc, j = cli_json("run", "--json", "--timeout", "20s", "--log-dir", str(tmp_path), "--",
                     "sh", "-c", "cat; echo started")
    assert (rc, j["status"], j["termination_method"]) == (0, "completed", "natural")
    assert Path(j["log_path"]).read_text() == "started\n" and j["duration_s"] < 10  # hang guard


@pytest.mark.parametrize("policy, expected", [("text:hello agent", "hello agent|"), ("file:PROMPT", "from a file\n|")])
def test_run_stdin_text_and_file(policy: str, expected: str, tmp_path: Path) -> None:
    (tmp_path / "prompt.txt").write_text("from a file\n")
    policy = policy.replace("PROMPT", str(tmp_path / "prompt.txt"))
    rc, j = cli_json("run", "--json", "--stdin", policy, "--log-dir", str(tmp_path / "logs"), "--",
                     "sh", "-c", "cat; echo '|'")
    assert (rc, j["status"]) == (0, "completed")
    assert Path(j["log_path"]).read_text() == expected + "\n"


def test_run_stdin_pipe_keeps_the_eof_step(tmp_path: Path) -> None:
    rc, j = cli_json("run", "--json", "--stdin", "pipe", "--timeout", "1s", "--grace", "5s", "--log-dir", str(tmp_path),
                     "--", "sh", "-c", "cat; echo got-eof")
    assert (rc, j["status"], j["termination_method"], j["exit_code"]) == (124, "timeout", "eof", 0)
    assert Path(j["log_path"]).read_text() == "got-eof\n"


@pytest.mark.parametrize("args, needle", [
    (["--stdin", "file:/nonexistent/prompt"], "stdin file /nonexistent/prompt: No such file"),
    (["--stdin", "terminal"], "is not a stdin policy"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--timeout", "ten minutes"], "is not a time span"),
    (["--idle-timeout", "5parsecs"], "unknown time unit"),
    (["--memory-max", "2 gigs"], "is not a size"),
    (["--cwd", "/nonexistent/dir"], "working directory /nonexistent/dir does not exist"),
])
def test_bad_run_input_changes_nothing(args: list[str], needle: str, tmp_path: Path) -> None:
    t = ticket("bad")
    logs = tmp_path / "logs"
    r = cli("run", "--ticket", t, "--log-dir", str(logs), *args, "--", "true")
    assert r.returncode in (2, 125) and r.stdout == ""
    assert r.stderr.count("\n") == 1 and needle in r.stderr and "Traceback" not in r.stderr
    assert not unit_loaded(unit_of(t)) and not logs.exists()


@pytest.mark.parametrize("cmd", [["status"], ["stop"], ["logs"], ["status", "--json"]])
def test_unknown_ticket_is_4_with_one_line(cmd: list[str], tmp_path: Path) -> None:
    t = ticket("unknown")
    r = cli(*cmd, t, *(["--log-dir", str(tmp_path)] if cmd == ["logs"] else []))
    assert (r.returncode, r.stdout) == (4, "")
    assert r.stderr.count("\n") == 1 and repr(t) in r.stderr and "Traceback" not in r.stderr
    assert not unit_loaded(unit_of(t))


def test_detach_ls_status_logs_stop(tmp_path: Path) -> None:
    t = ticket("det")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    rc, j = cli_json("run", "--detach", "--json", "--ticket", t, "--timeout", "5min", "--log-dir", str(tmp_path),
                     "--", "sh", "-c", f"echo started; echo x > {fifo}; sleep 300 & wait")
    assert rc == 0 and j["status"] == "running" and j["unit"] == unit_of(t)
    read_fifo(fifo)  # the session is running, in its scope, after we returned
    try:
        rc, rows = cli_json("ls", "--json")
        mine = [row for row in rows if row["ticket"] == t]
        assert len(mine) == 1
        row = mine[0]
        assert (row["session"], row["unit"], row["state"], row["log_path"]) == \
            (j["session"], j["unit"], "active", j["log_path"])
        assert row["timeout_s"] == 300 and 250 < row["time_left_s"] <= 300 and row["age_s"] >= 0
        assert "memory_bytes" in row and "cpu_s" in row
        r = cli("ls")
        assert r.returncode == 0 and any(line.split()[0] == t for line in r.stdout.splitlines())
        r = cli("ls", "-v")
        assert r.stdout.splitlines()[0].split() == ["TICKET", "PROJECT", "SESSION", "STATE", "AGE", "LEFT", "MEMORY",
                                                    "CPU", "COMMAND"]
        rc, st = cli_json("status", "--json", t)
        assert rc == 0 and st["ticket"] == t and len(st["pids"]) == 2  # sh and its sleep
        pids = st["pids"]
        r = cli("status", j["unit"])  # a unit name works as well as a ticket
        assert r.returncode == 0 and f"ticket:    {t}" in r.stdout and "left)" in r.stdout
        r = cli("logs", t)
        assert (r.returncode, r.stdout) == (0, "started\n")
    finally:
        r = cli("stop", "-v", t)
    assert r.returncode == 0 and f"stopped {t}" in r.stdout, r.stderr
    assert not unit_loaded(j["unit"])
    assert not any(alive(p) for p in pids)
    r = cli("logs", t, "--log-dir", str(tmp_path))  # finished: found in the log directory
    assert (r.returncode, r.stdout) == (0, "started\n")


def test_stop_of_a_foreground_run_goes_through_its_launchers_ladder(tmp_path: Path) -> None:
    t = ticket("fg")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    launcher = popen("run", "--json", "--ticket", t, "--grace", "5s", "--log-dir", str(tmp_path), "--",
                     "sh", "-c", f"trap 'echo got-term; exit 7' TERM; echo x > {fifo}; sleep 300 & wait",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_fifo(fifo)
        r = cli("stop", "--json", t)
        assert r.returncode == 0, r.stderr
        out, _ = launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    j = json.loads(out)
    # The launcher got RequestStop and ran the ladder: SIGTERM (stdin is /dev/null: no EOF step), which the
    # session's trap handled.
    # A stopped run exits 143 whatever the session's own code (7 here).
    assert launcher.returncode == 143 and j["exit_status"] == 143
    assert (j["status"], j["termination_method"], j["exit_code"]) == ("stopped", "sigterm", 7)
    assert "got-term" in Path(j["log_path"]).read_text()


def test_stop_all(tmp_path: Path) -> None:
    ts = [ticket("all") for _ in range(2)]
    for t in ts:
        assert cli("run", "--detach", "--ticket", t, "--timeout", "1min", "--log-dir", str(tmp_path),
                   "--", "sleep", "60").returncode == 0
    rc, results = cli_json("stop", "--all", "--json")
    assert rc == 0 and {r["ticket"] for r in results} >= set(ts)
    assert not any(unit_loaded(unit_of(t)) for t in ts)


def test_logs_follow_streams_until_the_dispatch_ends(tmp_path: Path) -> None:
    t = ticket("follow")
    go = tmp_path / "go"
    os.mkfifo(go)
    r = cli("run", "--detach", "--ticket", t, "--timeout", "1min", "--log-dir", str(tmp_path), "--",
            "sh", "-c", f"echo one; read x < {go}; echo two; exit 0")
    assert r.returncode == 0, r.stderr
    follower = popen("logs", "-f", t, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert follower.stdout is not None
        ready, _, _ = select.select([follower.stdout], [], [], 30)
        assert ready, "logs -f printed nothing"
        assert follower.stdout.readline() == b"one\n"
        assert follower.poll() is None  # still following: the session waits on us
        with open(go, "w") as f:
            f.write("go\n")
        rest, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert rest == b"two\n"
    assert not unit_loaded(unit_of(t))


def test_logs_tail_lines(tmp_path: Path) -> None:
    t = ticket("tail")
    assert cli("run", "--ticket", t, "--log-dir", str(tmp_path), "--", "seq", "1", "100").returncode == 0
    r = cli("logs", t, "-n", "3", "--log-dir", str(tmp_path))
    assert (r.returncode, r.stdout) == (0, "98\n99\n100\n")


def test_gc_resets_failed_units_and_removes_old_logs_but_not_live_ones(tmp_path: Path) -> None:
    failed = unit_of(ticket("gcfail"))
    subprocess.run(["systemd-run", "--user", "--scope", "-q", f"--unit={failed}", "-p", "RuntimeMaxSec=200ms",
                    "sleep", "30"], capture_output=True, timeout=30)
    assert unit_loaded(failed)  # failed, kept until reset
    week_ago = time.time() - 8 * 86400
    rc, done = cli_json("run", "--json", "--log-dir", str(tmp_path), "--", "echo", "old")
    old = Path(done["log_path"])
    os.utime(old, (week_ago, week_ago))
    rc, fresh = cli_json("run", "--json", "--log-dir", str(tmp_path), "--", "echo", "new")
    new = Path(fresh["log_path"])
    t = ticket("gclive")
    rc, live = cli_json("run", "--detach", "--json", "--ticket", t, "--timeout", "1min", "--log-dir", str(tmp_path),
                        "--", "sleep", "60")
    os.utime(live["log_path"], (week_ago, week_ago))  # an idle live session's log is never garbage
    try:
        r = cli("gc", "--log-dir", str(tmp_path), "--older-than", "1d", "--dry-run")
        assert r.returncode == 0 and old.exists() and unit_loaded(failed) and f"would remove {old}" in r.stdout
        r = cli("gc", "--log-dir", str(tmp_path), "--older-than", "1d")
        assert r.returncode == 0, r.stderr
        assert f"reset failed unit {failed}" in r.stdout and f"removed {old}" in r.stdout
        assert not old.exists() and new.exists() and Path(live["log_path"]).exists()
        assert not unit_loaded(failed)
    finally:
        cli("stop", t)


def test_progress_on_a_tty_shows_elapsed_time_left_and_the_last_line(tmp_path: Path) -> None:
    go = tmp_path / "go"
    os.mkfifo(go)
    master, slave = pty.openpty()
    proc = popen("run", "--timeout", "10min", "--log-dir", str(tmp_path), "--",
                 "sh", "-c", f"echo progress-marker; read x < {go}", stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    try:
        seen = read_until(master, b"progress-marker")
        with open(go, "w") as f:
            f.write("go\n")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        os.close(master)
    line = seen.decode(errors="replace").split("\r")[-2 if seen.endswith(b"\r") else -1]
    assert "running" in line and "left" in line and "progress-marker" in line, seen


def test_install_units_puts_the_slice_where_the_user_manager_reads_it(tmp_path: Path) -> None:
    dest = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user" / "ralph.slice"
    existed = dest.exists()
    try:
        r = cli("install-units", "-v")
        assert r.returncode == 0, r.stderr
        assert str(dest) in r.stdout and "reloaded" in r.stderr
        show = subprocess.run(["systemctl", "--user", "show", "ralph.slice", "-pFragmentPath", "-pDescription"],
                              capture_output=True, text=True, check=True).stdout
        assert f"FragmentPath={dest}" in show and "Description=ralph-systemd dispatches" in show
        rc, j = cli_json("run", "--json", "--log-dir", str(tmp_path), "--", "cat", "/proc/self/cgroup")
        assert rc == 0 and "/ralph.slice/ralph-" in Path(j["log_path"]).read_text()
    finally:
        if not existed:
            dest.unlink(missing_ok=True)
            subprocess.run(["systemctl", "--user", "daemon-reload"], check=True)


def test_ctrl_c_stops_the_session_with_the_ladder(tmp_path: Path) -> None:
    t = ticket("int")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    launcher = popen("run", "--json", "--ticket", t, "--grace", "5s", "--log-dir", str(tmp_path), "--",
                     "sh", "-c", f"echo x > {fifo}; exec sleep 300", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_fifo(fifo)
        launcher.send_signal(signal.SIGINT)
        out, _ = launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    j = json.loads(out)
    assert launcher.returncode == 130  # interrupted by SIGINT; the ladder's SIGTERM ended it
    assert (j["status"], j["termination_method"], j["signal"]) == ("stopped", "sigterm", "SIGTERM")
    assert not unit_loaded(unit_of(t))
