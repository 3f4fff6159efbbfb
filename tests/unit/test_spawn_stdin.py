"""A session's stdin as each policy gives it: what the real child process reads, and what we hold."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ralph_systemd.spawn import fork_gated
from ralph_systemd.spec import StdinPolicy


def _run(tmp_path: Path, stdin: StdinPolicy, script: str) -> tuple[str, int | None]:
    """Fork, open the gate, reap: (the session's output, our write end of its stdin or None)."""
    log = tmp_path / "out.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        child = fork_gated("/bin/sh", ("sh", "-c", script), str(tmp_path), {"PATH": "/usr/bin:/bin"}, fd, stdin=stdin)
    finally:
        os.close(fd)
    held = child.stdin_w
    child.open_gate()
    assert child.exec_failure() is None
    child.close_stdin()
    os.waitpid(child.pid, 0)
    child.close_all()
    return log.read_text(), held


def test_null_is_at_eof_from_the_start_and_we_hold_nothing(tmp_path: Path) -> None:
    out, held = _run(tmp_path, "null", "wc -c; readlink /proc/self/fd/0")
    assert held is None and out.split() == ["0", "/dev/null"]


def test_input_bytes_are_read_to_the_end_then_eof_and_we_hold_nothing(tmp_path: Path) -> None:
    data = os.urandom(300_000)  # far over a pipe's 64 KiB: nobody writes it from our loop
    out, held = _run(tmp_path, data, "sha256sum")
    import hashlib
    assert held is None and out.split()[0] == hashlib.sha256(data).hexdigest()


def test_a_file_is_the_sessions_stdin(tmp_path: Path) -> None:
    (tmp_path / "prompt.txt").write_text("line one\nline two\n")
    out, held = _run(tmp_path, tmp_path / "prompt.txt", "cat")
    assert held is None and out == "line one\nline two\n"


def test_a_fifo_without_a_writer_does_not_block_the_launch(tmp_path: Path) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    signal.alarm(10)  # a blocking open(2) of a FIFO waits for a writer for ever: fail instead of hanging
    try:
        out, held = _run(tmp_path, fifo, "cat; echo done")
    finally:
        signal.alarm(0)
    assert held is None and out == "done\n"  # no writer: the session reads EOF


def test_pipe_stays_open_until_we_close_it(tmp_path: Path) -> None:
    out, held = _run(tmp_path, "pipe", "cat >/dev/null; echo got-eof")
    assert held is not None and out == "got-eof\n"


@pytest.mark.parametrize("policy", ["null", b"x", "pipe"])
def test_no_stdin_fd_leaks_into_the_parent(tmp_path: Path, policy: StdinPolicy) -> None:
    before = set(os.listdir("/proc/self/fd"))
    _run(tmp_path, policy, "true")
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_session_gets_the_soft_open_files_limit_we_started_with(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import resource
    from ralph_systemd import spawn
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    monkeypatch.setattr(spawn, "SESSION_NOFILE_SOFT", 256)  # "we started with 256, then raised it to `soft`"
    out, _ = _run(tmp_path, "null", "ulimit -Sn; ulimit -Hn")
    assert out.split() == ["256", str(hard)] and resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
