"""Log files and directories on the host: private, marked as ours, never a chmod of a directory we did not
create, and a one-line note when the file system is full."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from ralph_systemd import logs
from ralph_systemd.logs import ensure_private_dir, is_ours, log_space_problem, open_session_log, session_logs

KEY = "0123abcd"


def test_a_session_log_is_private_marked_and_found_back(tmp_path: Path) -> None:
    fd, path = open_session_log(tmp_path / "logs", "T-1/x", "s1", project=KEY)
    os.close(fd)
    assert path.name == rf"{KEY}.T\x2d1-x@s1.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (found,) = session_logs(dir_fd)
        assert (found.project, found.ticket, found.session) == (KEY, "T-1/x", "s1")
        try:
            marked = bool(os.getxattr(path, logs.MARKER_XATTR))
        except OSError:
            marked = False  # no user xattrs on this file system: gc would leave the log alone
        assert is_ours(dir_fd, found) == marked
        forged = path.parent / f"{KEY}.other@s1.log"
        forged.write_text("")
        assert not is_ours(dir_fd, next(lf for lf in session_logs(dir_fd) if lf.ticket == "other"))
    finally:
        os.close(dir_fd)


@pytest.mark.parametrize("mode, who", [(0o755, "group and others"), (0o750, "its group"), (0o701, "others")])
def test_an_existing_open_directory_is_refused_and_never_chmodded(tmp_path: Path, mode: int, who: str) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(ValueError, match=f"open to {who}.*chmod 700"):
        ensure_private_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == mode


def test_log_space_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert log_space_problem(tmp_path) is None

    def fake(free_blocks: int, favail: int = 100, flag: int = 0) -> None:
        st = SimpleNamespace(f_bavail=free_blocks, f_frsize=4096, f_files=1000, f_favail=favail, f_flag=flag)
        monkeypatch.setattr(os, "statvfs", lambda p: st)
        monkeypatch.setattr(os, "fstatvfs", lambda fd: st)

    fake(0)
    msg = log_space_problem(tmp_path)
    assert msg is not None and "is full" in msg and "\n" not in msg and str(tmp_path) in msg
    fake(10)
    assert "nearly full (40 KiB free)" in (log_space_problem(0) or "")
    fake(10_000, favail=0)
    assert "no free inodes" in (log_space_problem(tmp_path) or "")
    fake(10_000, flag=os.ST_RDONLY)
    assert "read-only" in (log_space_problem(tmp_path) or "")
