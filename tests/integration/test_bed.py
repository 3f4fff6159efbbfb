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


def _manager_version() -> str:
    out = subprocess.run(["busctl", "--user", "get-property", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                          "org.freedesktop.systemd1.Manager", "Version"], capture_output=True, text=True, check=True)
    return out.stdout.split(None, 1)[1].strip().strip('"')


def _start_scope_with(prop: str, sig: bytes, value: object) -> str:
    """StartTransientUnit for a scope of a live process of ours plus one property; "" or the manager's error.

    pystemd, not busctl: busctl 252 cannot send a unix fd (`h`) at all.
    """
    from pystemd.dbuslib import DBus, apply_signature

    unit = f"{_unit('feature')}.scope"
    child = subprocess.Popen(["sleep", "30"])
    bus = DBus(user_mode=True)
    bus.open()
    try:
        args = apply_signature(b"ss", [unit.encode(), b"fail"]) + [(ord("a"), b"(sv)")]
        for name, s, v in (("PIDs", b"au", [child.pid]), ("CollectMode", b"s", b"inactive-or-failed"),
                           (prop, sig, value)):
            args += [(ord("r"), b"sv"), (ord("s"), name.encode()), (ord("v"), s)]
            args += apply_signature(s, [v]) + [(-1, None), (-1, None)]
        args += [(-1, None), (ord("a"), b"(sa(sv))"), (-1, None)]
        try:
            bus.call_method(b"org.freedesktop.systemd1", b"/org/freedesktop/systemd1",
                            b"org.freedesktop.systemd1.Manager", b"StartTransientUnit", args)
            return ""
        except Exception as e:  # pystemd's DBusError: its text is the manager's answer
            return str(e) or type(e).__name__
    finally:
        bus.close()
        child.kill()
        child.wait()


def test_manager_features_says_what_this_manager_really_accepts() -> None:
    """The version gates of ralph_systemd.manager_features, checked against the bed's real manager (252 and 257
    in CI): a feature the version promises is accepted; PIDFDs is refused exactly where the gate says so."""
    from ralph_systemd.manager_features import features

    version = _manager_version()
    f = features(version)
    assert f.supported, version
    # PIDFDs (255+): a pidfd of a live process of ours, passed over the bus.
    holder = subprocess.Popen(["sleep", "30"])
    pidfd = os.pidfd_open(holder.pid)
    try:
        err = _start_scope_with("PIDFDs", b"ah", [pidfd])
    finally:
        os.close(pidfd)
        holder.kill()
        holder.wait()
    assert (err == "") == f.scope_pidfds, f"systemd {version}, PIDFDs on a scope: {err or 'accepted'}"
    if err:
        assert "PIDFDs" in err, err      # refused for the property, not for something else
    # OOMPolicy= on a scope: 253+ surely; Debian's 252.39 has it too (a stable backport), so below 253 the
    # gate only promises nothing.
    err = _start_scope_with("OOMPolicy", b"s", b"continue")
    if f.scope_oom_policy:
        assert err == "", f"systemd {version}, OOMPolicy on a scope: {err}"
    elif err:
        assert "OOMPolicy" in err, err
