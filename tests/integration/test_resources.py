"""Resource limits are enforced by the kernel on a dispatch's scope: MemoryMax, TasksMax, CPUQuota.

Only a system where the user manager's cgroup gets the memory, pids and cpu controllers can show this: the
Vagrant VM (`./dev vm-test`). The nspawn test bed accepts the properties but enforces none of them (its
controllers stay with the host's cgroup v1), so there these tests skip with the reason; `./dev test`
deselects them (marker `controllers`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ralph_systemd import DispatchSpec, Status, Supervisor, run

pytestmark = pytest.mark.controllers

MiB = 1024 * 1024


def _user_manager_cgroup() -> Path:
    uid = os.getuid()
    return Path(f"/sys/fs/cgroup/user.slice/user-{uid}.slice/user@{uid}.service")


def require_controller(name: str, limit: str) -> None:
    """Skip unless the user manager's cgroup (pure cgroup2) has `name`, without which `limit` is not enforced."""
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip(f"{limit} is not enforced here: /sys/fs/cgroup is not a pure cgroup2 tree (a container whose "
                    f"controllers stay with the host?); run these in the VM: ./dev vm-test")
    path = _user_manager_cgroup() / "cgroup.controllers"
    try:
        available = path.read_text().split()
    except OSError as e:
        pytest.skip(f"{limit} cannot be checked: {path} is unreadable ({e}); run these in the VM: ./dev vm-test")
    if name not in available:
        pytest.skip(f"{limit} is not enforced here: the user manager's cgroup has no {name} controller "
                    f"({path}: {' '.join(available) or 'none'}); run these in the VM: ./dev vm-test")


def _log_text(path: str | None) -> str:
    if not path:
        return "(no log)"
    try:
        return Path(path).read_text(errors="replace")[-2000:]
    except OSError as e:
        return f"(log unreadable: {e})"


def _show(unit: str, prop: str) -> str:
    r = subprocess.run(["systemctl", "--user", "show", "-P", prop, unit], capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


# ------------------------------------------------------------------------------------------------- memory

ALLOCATE = """
    import sys
    chunks = []
    for i in range(1, 513):                     # 512 MiB in 1 MiB chunks, each written (resident)
        chunks.append(b"x" * (1 << 20))
        if i % 16 == 0:
            print(f"allocated {i} MiB", flush=True)
    print("survived: allocated 512 MiB", flush=True)
"""


def test_memory_max_ends_a_dispatch_that_allocates_past_it_as_oom(tmp_path: Path) -> None:
    require_controller("memory", "MemoryMax")
    spec = DispatchSpec(argv=_py(ALLOCATE), ticket=f"oom-{os.getpid()}", timeout=120, memory_max=64 * MiB,
                        log_dir=tmp_path / "logs", cwd=tmp_path, grace=5.0)
    result = run(spec)
    log = _log_text(result.log_path)
    print(f"\nMemoryMax=64M, session allocating 512 MiB: status={result.status} "
          f"systemd_result={result.systemd_result} signal={result.signal} exit_code={result.exit_code} "
          f"after {result.duration_s:.1f} s; log ends: {log.strip().splitlines()[-1:] if log.strip() else []}")
    assert "survived" not in log, f"the session allocated 512 MiB under MemoryMax=64M:\n{log}"
    assert result.status == Status.OOM, f"{result}\n{log}"
    assert result.systemd_result == "oom-kill", result
    assert result.signal in (None, signal.SIGKILL), result  # the kernel's OOM killer sends SIGKILL
    assert result.exit_code is None or result.exit_code != 0, result
    assert result.unit == spec.unit
    assert result.duration_s < 100, result


# --------------------------------------------------------------------------------------------------- pids

# A fork bomb, bounded in time: every process forks as fast as it can (children too) until the deadline,
# tolerating EAGAIN from the pids controller; then each waits for its own children. The first process
# reports what the kernel counted in its scope's pids.events ("max N": forks refused at the limit).
FORK_BOMB = """
    import json, os, sys, time
    deadline = time.monotonic() + float(sys.argv[1])
    report = sys.argv[2]
    first = os.getpid()
    kids, refused = [], 0
    while time.monotonic() < deadline:
        try:
            pid = os.fork()
        except OSError:
            refused += 1
            time.sleep(0.01)
            continue
        if pid == 0:
            kids, refused = [], 0      # a child is a bomb too
        else:
            kids.append(pid)
    for k in kids:
        os.waitpid(k, 0)
    if os.getpid() == first:
        cgroup = open("/proc/self/cgroup").read().splitlines()[-1].split("::", 1)[1]
        events = open(f"/sys/fs/cgroup{cgroup}/pids.events").read().split()
        with open(report, "w") as f:
            json.dump({"children": len(kids), "refused_here": refused,
                       "pids_events_max": int(events[events.index("max") + 1])}, f)
    os._exit(0)
"""

# Runs beside the bomb, without a TasksMax: 30 concurrent children (more than the bomb's limit).
NEIGHBOUR = "for i in $(seq 30); do sleep 3 & done; wait; echo neighbour-ok"


def test_tasks_max_stops_a_fork_bomb_and_leaves_its_neighbours_alone(tmp_path: Path) -> None:
    require_controller("pids", "TasksMax")
    report = tmp_path / "bomb.json"
    bomb = DispatchSpec(argv=[*_py(FORK_BOMB), "6", str(report)], ticket=f"bomb-{os.getpid()}", timeout=120,
                        tasks_max=20, log_dir=tmp_path / "logs", cwd=tmp_path, grace=5.0)
    neighbour = DispatchSpec(argv=["sh", "-c", NEIGHBOUR], ticket=f"neighbour-{os.getpid()}", timeout=120,
                             log_dir=tmp_path / "logs", cwd=tmp_path, grace=5.0)
    peak = 0
    own_forks_ok = 0
    with Supervisor() as sup:
        a = sup.launch(bomb)
        b = sup.launch(neighbour)
        # While the bomb goes off: its scope never holds more than 20 tasks, and this process can fork.
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            current = _show(bomb.unit, "TasksCurrent")
            if current.isdigit():
                peak = max(peak, int(current))
            if subprocess.run(["true"]).returncode == 0:
                own_forks_ok += 1
            time.sleep(0.2)
        ra = sup.wait(a)
        rb = sup.wait(b)
    figures = json.loads(report.read_text()) if report.exists() else None
    print(f"\nTasksMax=20 fork bomb: status={ra.status} exit={ra.exit_code} after {ra.duration_s:.1f} s, "
          f"TasksCurrent peak seen {peak}, bomb's report {figures}; neighbour (30 children, no limit): "
          f"status={rb.status} exit={rb.exit_code}; forks by the test process during the bomb: {own_forks_ok} ok")
    assert figures is not None, f"the bomb wrote no report: {ra}\n{_log_text(ra.log_path)}"
    assert figures["pids_events_max"] > 0, f"the pids controller never refused a fork: {figures}"
    assert 0 < peak <= 20, f"TasksCurrent of {bomb.unit} peaked at {peak} (TasksMax=20)"
    assert ra.status == Status.COMPLETED, f"{ra}\n{_log_text(ra.log_path)}"
    assert rb.status == Status.COMPLETED and rb.exit_code == 0, f"{rb}\n{_log_text(rb.log_path)}"
    assert "neighbour-ok" in _log_text(rb.log_path)
    assert own_forks_ok > 0


# ---------------------------------------------------------------------------------------------------- cpu

# Spin for `seconds` of wall time, then report the CPU time this process got meanwhile.
BUSY = """
    import json, sys, time
    started, report, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    w0, c0 = time.monotonic(), time.process_time()
    open(started, "w").close()
    x = 0
    while time.monotonic() - w0 < seconds:
        for _ in range(1000):
            x += 1
    w1, c1 = time.monotonic(), time.process_time()
    with open(report, "w") as f:
        json.dump({"wall": w1 - w0, "cpu": c1 - c0}, f)
"""


def _usage_ns(unit: str) -> int | None:
    v = _show(unit, "CPUUsageNSec")
    return int(v) if v.isdigit() else None


def test_cpu_quota_holds_a_busy_loop_near_its_quota(tmp_path: Path) -> None:
    require_controller("cpu", "CPUQuota")
    seconds = 5.0
    specs, started, reports = {}, {}, {}
    for name, quota in (("quota", 20.0), ("free", None)):   # "free": the same loop without a quota, as control
        started[name], reports[name] = tmp_path / f"{name}.started", tmp_path / f"{name}.json"
        specs[name] = DispatchSpec(argv=[*_py(BUSY), str(started[name]), str(reports[name]), str(seconds)],
                                   ticket=f"cpu-{name}-{os.getpid()}", timeout=120, cpu_quota=quota,
                                   log_dir=tmp_path / "logs", cwd=tmp_path, grace=5.0)
    scope_share: float | None = None
    with Supervisor() as sup:
        handles = {name: sup.launch(spec) for name, spec in specs.items()}
        # The scope's own CPU time (cgroup cpu.stat via systemd) over ~3 s of wall time, while it spins.
        _wait_for(started["quota"], 60)
        time.sleep(0.5)
        w0, u0 = time.monotonic(), _usage_ns(specs["quota"].unit)
        time.sleep(3.0)
        w1, u1 = time.monotonic(), _usage_ns(specs["quota"].unit)
        if u0 is not None and u1 is not None and u1 >= u0:
            scope_share = (u1 - u0) / 1e9 / (w1 - w0)
        results = {name: sup.wait(h) for name, h in handles.items()}
    shares = {}
    for name in specs:
        r = results[name]
        assert r.status == Status.COMPLETED, f"{r}\n{_log_text(r.log_path)}"
        figures = json.loads(reports[name].read_text())
        shares[name] = figures["cpu"] / figures["wall"]
    print(f"\nCPUQuota=20%: busy loop got {shares['quota']:.1%} of {seconds:.0f} s wall by its own clock; "
          f"scope CPUUsageNSec over ~3 s: {'n/a' if scope_share is None else f'{scope_share:.1%}'}; "
          f"the same loop without a quota: {shares['free']:.1%}")
    assert shares["free"] > 0.5, f"the control loop got only {shares['free']:.1%} of a CPU: this measurement " \
                                 "cannot tell a quota from a busy machine"
    assert 0.05 < shares["quota"] < 0.35, f"under CPUQuota=20% the loop got {shares['quota']:.1%} of a CPU"
    if scope_share is not None:
        assert scope_share < 0.35, f"under CPUQuota=20% the scope used {scope_share:.1%} of a CPU"
