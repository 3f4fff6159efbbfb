"""limits.preflight: the soft fd limit is raised where we may; every limit that would bite is named at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ralph_systemd import limits


def _cgroups(root: Path, slice_max: str, slice_cur: int) -> None:
    uid = os.getuid()
    manager = root / "user.slice" / f"user-{uid}.slice" / f"user@{uid}.service"
    (manager / "ralph.slice").mkdir(parents=True)
    (manager / "ralph.slice" / "pids.max").write_text(f"{slice_max}\n")
    (manager / "ralph.slice" / "pids.current").write_text(f"{slice_cur}\n")
    (manager / "pids.max").write_text("max\n")
    (manager / "pids.current").write_text("40\n")


def test_a_full_slice_is_named_with_its_numbers_and_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cgroups(tmp_path, "300", 290)
    monkeypatch.setattr(limits, "CGROUP_ROOT", tmp_path)
    with pytest.raises(limits.HostLimitError) as e:
        limits.preflight(100, live=50)
    msg = str(e.value)
    assert "tasks in ralph.slice (its pids.max): 100 needed, 10 available" in msg
    assert "systemctl --user set-property ralph.slice TasksMax=" in msg
    assert "Nothing was launched" in msg


def test_room_enough_and_no_limit_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cgroups(tmp_path, "max", 290)
    monkeypatch.setattr(limits, "CGROUP_ROOT", tmp_path)
    limits.preflight(100, live=50)


def test_small_launches_only_look_at_open_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cgroups(tmp_path, "1", 1)  # full, but a handful of dispatches is not checked against it
    monkeypatch.setattr(limits, "CGROUP_ROOT", tmp_path)
    limits.preflight(2, live=3)


def test_the_soft_fd_limit_is_raised_to_the_hard_one_when_needed() -> None:
    code = ("import resource; from ralph_systemd import limits; h = resource.getrlimit(resource.RLIMIT_NOFILE)[1];"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, h)); limits.preflight(100);"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE) == (h, h))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_a_hard_fd_limit_too_low_is_an_error_before_anything() -> None:
    code = ("import resource; from ralph_systemd import limits;"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200));"
            "\ntry:\n limits.preflight(100)\nexcept limits.HostLimitError as e:\n print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "open files (RLIMIT_NOFILE): 264 needed, 200 available" in out.stdout


def test_too_few_inotify_watches_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = limits._read_int

    def fake(path: Path) -> int | None:
        return 1000 if path.name == "max_user_watches" else real(path)
    monkeypatch.setattr(limits, "_read_int", fake)
    monkeypatch.setattr(limits, "CGROUP_ROOT", tmp_path)
    with pytest.raises(limits.HostLimitError, match=r"inotify watches .*: 1200 needed"):
        limits.preflight(400)
