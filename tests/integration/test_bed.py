"""The test bed is real: scopes, timeouts and cgroup-wide kills of the user manager behave as systemd's do."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path



def _unit(prefix: str) -> str:
    return f"bedtest-{prefix}-{uuid.uuid4().hex[:8]}"


def _show(unit: str, *props: str) -> dict[str, str]:
    out = subprocess.run(["systemctl", "--user", "show", unit, *(f"-p{p}" for p in props)],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_scope_process_is_in_its_own_scope_in_the_user_managers_tree() -> None:
    unit = _unit("cg")
    out = subprocess.run(["systemd-run", "--user", "--scope", "-q", f"--unit={unit}", "cat", "/proc/self/cgroup"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    cgroup = [line for line in out.splitlines() if line.startswith("0::")][0][3:]
    assert f"/user@{os.getuid()}.service/" in cgroup
    assert cgroup.endswith(f"/{unit}.scope")
    assert cgroup != Path("/proc/self/cgroup").read_text().splitlines()[-1][3:]


def test_runtime_max_sec_ends_a_scope_failed_with_result_timeout() -> None:
    unit = _unit("timeout")
    r = subprocess.run(["systemd-run", "--user", "--scope", "-q", f"--unit={unit}", "-p", "RuntimeMaxSec=1",
                        "sleep", "60"], capture_output=True, timeout=30)
    try:
        assert r.returncode != 0
        assert _show(f"{unit}.scope", "ActiveState", "Result") == {"ActiveState": "failed", "Result": "timeout"}
    finally:
        subprocess.run(["systemctl", "--user", "reset-failed", f"{unit}.scope"], check=False)


def test_setsid_double_forked_grandchild_dies_with_its_scope(tmp_path: Path) -> None:
    unit = _unit("daemon")
    pidfile = tmp_path / "daemon.pid"
    # The session double-forks a setsid daemon (escapes its process group and session), then waits to be
    # timed out. systemd-run --scope returns when the scope's main process has ended.
    script = f"setsid sh -c 'sleep 300 & echo $! > {pidfile}' & wait; exec sleep 60"
    subprocess.run(["systemd-run", "--user", "--scope", "-q", f"--unit={unit}", "-p", "RuntimeMaxSec=2",
                    "sh", "-c", script], capture_output=True, timeout=30)
    subprocess.run(["systemctl", "--user", "reset-failed", f"{unit}.scope"], check=False)
    pid = int(pidfile.read_text())
    # Its cgroup was the scope's; the scope is gone, and so is the daemon (a zombie would still have /proc/PID).
    assert not Path(f"/proc/{pid}").exists(), f"daemon {pid} survived its scope"
