"""Why every dispatch scope has KillMode=control-group (and Controller=), measured on this bed's manager.

The design asked for KillMode=mixed: SIGTERM first, SIGKILL to the whole cgroup last. On a *scope* the
manager does something else: a scope has no main process, so `mixed` sends SIGTERM to nobody and SIGKILLs
every process the moment the stop begins (here: RuntimeMaxSec firing). `control-group` gives every process
SIGTERM, then SIGKILL after TimeoutStopSec: that is the graceful, bounded, complete stop we want when no
Controller is there to run our own ladder. These tests run in whichever bed runs the suite (systemd 252
and 257), with plain `systemd-run --user --scope`, and assert what the processes themselves recorded.
If one fails, systemd changed scope kill semantics: the message says what changed and what to reconsider.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

RECONSIDER = ("reconsider the KillMode in ralph_systemd's scope properties (launch.scope_properties) and the "
              "README section 'How it behaves on timeouts and crashes'")

# The scope's first process and a setsid'd child of it. Each records SIGTERM in a file and carries on (as a
# session that cleans up slowly would), records it is still alive after the TERM, and records an exit of its
# own if it ever gets that far: only SIGKILL ends them before that.
PROGRAM = textwrap.dedent("""
    import os, signal, sys, time
    out, role = sys.argv[1], "first"

    def on_term(signum, frame):
        with open(os.path.join(out, role + ".term"), "w") as f:
            f.write(str(time.monotonic()))

    signal.signal(signal.SIGTERM, on_term)
    child = os.fork()
    if child == 0:
        os.setsid()
        role = "child"
    else:
        with open(os.path.join(out, "child.pid"), "w") as f:
            f.write(str(child))
    open(os.path.join(out, role + ".ready"), "w").close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if os.path.exists(os.path.join(out, role + ".term")) and \\
                not os.path.exists(os.path.join(out, role + ".alive-after-term")):
            time.sleep(0.3)
            open(os.path.join(out, role + ".alive-after-term"), "w").close()
    open(os.path.join(out, role + ".exited"), "w").close()
""")


def _manager_version() -> str:
    out = subprocess.run(["busctl", "--user", "get-property", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                          "org.freedesktop.systemd1.Manager", "Version"], capture_output=True, text=True, check=True)
    return out.stdout.split(None, 1)[1].strip().strip('"')


def _wait_gone(pid: int, timeout: float) -> bool:
    """Whether process `pid` (not our child) is gone within `timeout`: woken by its pidfd, no polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _run_scope(tmp_path: Path, kill_mode: str, timeout_stop_s: int) -> tuple[dict[str, bool], float, str]:
    """Run PROGRAM in a scope with RuntimeMaxSec=1; return which record files exist, how long after the
    runtime limit fired the last process died, and the scope's Result."""
    unit = f"killmode-{kill_mode}-{uuid.uuid4().hex[:8]}"
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    try:
        t0 = time.monotonic()
        r = subprocess.run(["systemd-run", "--user", "--scope", "-q", f"--unit={unit}",
                            "-p", f"KillMode={kill_mode}", "-p", "RuntimeMaxSec=1",
                            "-p", f"TimeoutStopSec={timeout_stop_s}", sys.executable, str(prog), str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
        assert (tmp_path / "child.pid").exists(), f"the scope's program did not start: {r.stderr}"
        child = int((tmp_path / "child.pid").read_text())
        assert _wait_gone(child, 30), f"the setsid'd child {child} outlived its scope"
        last_death = time.monotonic() - t0 - 1.0    # seconds after RuntimeMaxSec fired
        result = subprocess.run(["systemctl", "--user", "show", f"{unit}.scope", "-pResult", "--value"],
                                capture_output=True, text=True).stdout.strip()
    finally:
        subprocess.run(["systemctl", "--user", "reset-failed", f"{unit}.scope"], capture_output=True)
        subprocess.run(["systemctl", "--user", "stop", f"{unit}.scope"], capture_output=True)
    files = {f"{role}.{what}": (tmp_path / f"{role}.{what}").exists()
             for role in ("first", "child") for what in ("ready", "term", "alive-after-term", "exited")}
    assert files["first.ready"] and files["child.ready"], files
    return files, last_death, result


def test_mixed_on_a_scope_sends_no_sigterm_and_sigkills_everything_at_once(tmp_path: Path) -> None:
    files, last_death, result = _run_scope(tmp_path, "mixed", timeout_stop_s=20)
    version = _manager_version()
    got_term = [r for r in ("first", "child") if files[f"{r}.term"]]
    assert not got_term, (
        f"systemd {version} changed KillMode=mixed on a scope: {' and '.join(got_term)} got SIGTERM "
        f"(252 and 257 sent none; a scope had no main process). If mixed is now graceful on scopes, {RECONSIDER}.")
    assert not files["first.exited"] and not files["child.exited"], files   # killed, not ended on their own
    assert last_death < 10, (
        f"systemd {version}: with KillMode=mixed the scope's processes died {last_death:.1f} s after RuntimeMaxSec "
        f"(252 and 257: at once, not after TimeoutStopSec=20); {RECONSIDER}.")
    assert result == "timeout", result


def test_control_group_on_a_scope_sends_sigterm_to_all_then_sigkill_after_the_grace(tmp_path: Path) -> None:
    files, last_death, result = _run_scope(tmp_path, "control-group", timeout_stop_s=2)
    version = _manager_version()
    missed = [r for r in ("first", "child") if not files[f"{r}.term"]]
    assert not missed, (
        f"systemd {version}: KillMode=control-group on a scope no longer sends SIGTERM to {' and '.join(missed)} "
        f"(252 and 257 sent it to every process, setsid'd ones too); the graceful stop without a Controller is "
        f"gone: {RECONSIDER}.")
    assert files["first.alive-after-term"] and files["child.alive-after-term"], (
        f"systemd {version}: processes did not survive their SIGTERM for the grace: {files}")
    assert not files["first.exited"] and not files["child.exited"], (
        f"systemd {version}: a process outlived TimeoutStopSec=2 without SIGKILL: {files}; {RECONSIDER}.")
    assert 1.5 < last_death < 15, f"SIGKILL came {last_death:.1f} s after RuntimeMaxSec, not after the 2 s grace"
    assert result == "timeout", result
