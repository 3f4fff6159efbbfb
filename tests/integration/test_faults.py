"""Issue 7, processes: nothing a session leaves behind survives it, not even when its launcher dies.

Every figure is read from /proc (the sessions record their descendants' PIDs and start times
themselves), never from the supervisor's own bookkeeping.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from faults_util import (
    DESCENDANTS_PER_SESSION,
    DESCENDANTS_SESSION,
    loaded_units,
    processes_in_units,
    read_records,
    survivors,
    ticket,
    write_script,
)

from ralph_systemd import Dispatch, DispatchSpec, Status, Supervisor

pytest_plugins = ["faults_table"]
pytestmark = pytest.mark.slow

Figure = Callable[[str, str], None]
REPO = Path(__file__).resolve().parents[2]


def test_escaped_descendants_never_survive(tmp_path: Path, figure: Figure) -> None:
    """200 dispatches (half exit, half time out), each leaving setsid, nohup'ed and double-forked
    children: once a dispatch has its result, none of its processes is alive."""
    total, concurrency = 200, 50
    script = write_script(tmp_path / "session.sh", DESCENDANTS_SESSION)
    prefix = ticket("desc")
    jobs = [(f"{prefix}_{i}", "exit" if i % 2 == 0 else "hang") for i in range(total)]
    modes = dict(jobs)
    pending = list(jobs)
    live: list[Dispatch] = []
    results: dict[str, tuple[str, Status]] = {}
    alive_at_completion = 0
    t0 = time.monotonic()
    with Supervisor() as sup:
        while pending or live:
            while pending and len(live) < concurrency:
                t, mode = pending.pop(0)
                d = sup.launch(DispatchSpec(argv=["sh", str(script), str(tmp_path / f"{t}.rec"), mode], ticket=t,
                                            cwd=tmp_path, log_dir=tmp_path / "logs", timeout=2.0, grace=1.0,
                                            stdin="pipe", eof_grace=0.2))
                live.append(d)
            done = sup.wait_any(live, timeout=60)
            assert done, f"no dispatch finished within 60 s: {live[:3]}"
            for d in done:
                live.remove(d)
                assert d.result is not None
                results[d.ticket] = (modes[d.ticket], d.result.status)
                # Checked at the moment the result is known: the scope's processes must all be gone.
                recs, _ = read_records(tmp_path / f"{d.ticket}.rec")
                alive_at_completion += len(survivors(recs))
    elapsed = time.monotonic() - t0
    all_recs, unfinished = [], []
    for t, _ in jobs:
        recs, complete = read_records(tmp_path / f"{t}.rec")
        all_recs += recs
        if not complete:
            unfinished.append(t)
    left = survivors(all_recs)
    wrong = {t: r for t, r in results.items()
             if r[1] is not (Status.COMPLETED if r[0] == "exit" else Status.TIMEOUT)}
    figure("escaped descendants",
           f"{len(left)} survivors of {len(all_recs)} recorded processes ({total} dispatches, {concurrency} at a "
           f"time, half exit/half timeout; alive when result returned: {alive_at_completion}; wrong status: "
           f"{len(wrong)}; {elapsed:.1f} s)")
    assert not unfinished, f"sessions that did not record all their descendants: {unfinished[:5]}"
    assert len(all_recs) == total * DESCENDANTS_PER_SESSION
    assert left == [] and alive_at_completion == 0
    assert not wrong, list(wrong.items())[:5]
    assert loaded_units(prefix) == []


LAUNCHER = r"""
import json, sys
from ralph_systemd import DispatchSpec, Supervisor
ticket, rec, log_dir, script, timeout = sys.argv[1:6]
sup = Supervisor()
print("ready", flush=True)
sys.stdin.readline()  # go
d = sup.launch(DispatchSpec(argv=["sh", script, rec, "hang"], ticket=ticket, log_dir=log_dir, cwd=log_dir,
                            timeout=float(timeout), grace=1.0, stdin="pipe", eof_grace=0.2))
print(json.dumps({"unit": d.unit, "error": d.result.error if d.result else None}), flush=True)
sys.stdin.readline()  # block: the test SIGKILLs us mid-dispatch
"""


def _readline(p: subprocess.Popen[str], timeout: float) -> str:
    assert p.stdout is not None
    r, _, _ = select.select([p.stdout], [], [], timeout)
    assert r, f"launcher {p.pid} said nothing within {timeout} s"
    return p.stdout.readline()


def test_launcher_death_leaves_nothing_and_is_reattached(tmp_path: Path, figure: Figure) -> None:
    """20 launchers SIGKILLed mid-dispatch: a new supervisor re-attaches to every dispatch still live,
    and nothing of theirs survives the timeout (RuntimeMaxSec is systemd's, not ours)."""
    n, timeout = 20, 4.0
    script = write_script(tmp_path / "session.sh", DESCENDANTS_SESSION)
    helper = tmp_path / "launcher.py"
    helper.write_text(LAUNCHER)
    prefix = ticket("launcher")
    tickets = [f"{prefix}_{i}" for i in range(n)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, str(helper), t, str(tmp_path / f"{t}.rec"), str(tmp_path), str(script),
                               str(timeout)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for t in tickets]
    units: list[str] = []
    try:
        for p in procs:
            assert _readline(p, 60).strip() == "ready"
        launched_at = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            info = json.loads(_readline(p, 30))
            assert info["error"] is None, info
            units.append(info["unit"])
            p.send_signal(signal.SIGKILL)  # mid-dispatch: its session is running
        for p in procs:
            assert p.wait(10) == -signal.SIGKILL
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    killed_at = time.monotonic()
    with Supervisor() as sup:
        live_before = set(loaded_units(prefix)) & set(units)
        attached = [d for d in sup.attach_all() if d.unit in set(units)]
        results = sup.wait_all(attached, timeout=timeout + 30)
        ended_at = time.monotonic()
    statuses = sorted({str(r.status) for r in results})
    all_recs = []
    for t in tickets:
        recs, _ = read_records(tmp_path / f"{t}.rec")
        all_recs += recs
    left = survivors(all_recs) + [(pid, "", unit) for pid, unit in processes_in_units(set(units))]
    figure("launcher death",
           f"{len(left)} processes survive of {len(all_recs)} recorded ({n} launchers SIGKILLed "
           f"{killed_at - launched_at:.1f} s into {timeout:.0f} s dispatches); re-attached "
           f"{len(attached)}/{len(live_before)} still live ({100 * len(attached) // max(1, len(live_before))}%); "
           f"results {statuses}; all ended {ended_at - launched_at:.1f} s after launch")
    assert len(live_before) == n, "the launchers were killed too late: some dispatches had already timed out"
    assert {d.unit for d in attached} == live_before
    assert all(r.status is Status.TIMEOUT for r in results), [r.to_json() for r in results]
    assert left == []
    assert len(all_recs) == n * DESCENDANTS_PER_SESSION
    assert ended_at - launched_at < timeout + 1.0 + 5.0  # timeout + grace + slack for 2 shared cores
    assert loaded_units(prefix) == []


VFORK_C = r"""
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
/* The parent blocks in vfork() until its child execs or exits: the kernel shows it in state D
   (TASK_KILLABLE: uninterruptible except by a fatal signal). Both ignore SIGTERM/SIGHUP/SIGINT (so those
   are not fatal) and the child never execs: only SIGKILL ends either of them. */
int main(void) {
    signal(SIGTERM, SIG_IGN); signal(SIGHUP, SIG_IGN); signal(SIGINT, SIG_IGN);
    printf("parent %d\n", getpid());
    fflush(stdout);
    pid_t p = vfork();
    if (p == 0) {
        for (;;) pause();
    }
    return 0;
}
"""


def _wait_state(pid: int, want: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    state = "?"
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return "gone"
        if state == want:
            return state
        time.sleep(0.01)  # polling /proc: there is no event for "entered state D"
    return state


def test_d_state_session_waits_stay_bounded(tmp_path: Path, figure: Figure) -> None:
    """A session in uninterruptible sleep (a vfork parent, state D) that ignores EOF and SIGTERM: a short
    wait() raises TimeoutError on time, and the timeout still ends it (systemd's SIGKILL of the cgroup)."""
    src = tmp_path / "vfork.c"
    src.write_text(VFORK_C)
    exe = tmp_path / "vfork"
    subprocess.run(["gcc", "-O0", "-o", str(exe), str(src)], check=True, capture_output=True, timeout=60)
    timeout, grace = 2.0, 1.5
    with Supervisor() as sup:
        d = sup.launch(DispatchSpec(argv=[str(exe)], ticket=ticket("dstate"), cwd=tmp_path, log_dir=tmp_path,
                                    timeout=timeout, grace=grace, stdin="pipe", eof_grace=0.2))
        assert d.result is None, d.result
        assert d.pid is not None
        state = _wait_state(d.pid, "D", 5)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            sup.wait(d, timeout=0.5)
        short_wait = time.monotonic() - t0
        os.kill(d.pid, signal.SIGTERM)  # pending: a task in D does not act on it
        still = _wait_state(d.pid, "X", 0.3)
        r = sup.wait(d, timeout=timeout + grace + 10)
        total = time.monotonic() - d.started
    figure("D-state session",
           f"main process state {state!r}, after SIGTERM still {still!r}; wait(timeout=0.5) raised after "
           f"{short_wait:.2f} s; ended {r.status}/{r.termination_method} by systemd's SIGKILL "
           f"{total:.2f} s after launch (timeout {timeout:.0f} s + grace {grace} s)")
    assert state == "D" and still == "D"
    assert 0.5 <= short_wait < 1.0
    assert r.status is Status.TIMEOUT and r.signal == signal.SIGKILL
    assert total < timeout + grace + 2.0


def test_stopped_session_is_still_killed_on_time(tmp_path: Path, figure: Figure) -> None:
    """A SIGSTOPped session (SIGTERM stays pending on it) still ends at timeout + grace: SIGKILL reaches
    stopped processes."""
    with Supervisor() as sup:
        d = sup.launch(DispatchSpec(argv=["sleep", "300"], ticket=ticket("stopped"), cwd=tmp_path, log_dir=tmp_path,
                                    timeout=1.5, grace=1.0, stdin="pipe", eof_grace=0.2))
        assert d.pid is not None
        os.kill(d.pid, signal.SIGSTOP)
        state = _wait_state(d.pid, "T", 5)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            sup.wait(d, timeout=0.3)
        short_wait = time.monotonic() - t0
        r = sup.wait(d, timeout=20)
        total = time.monotonic() - d.started
    figure("SIGSTOPped session",
           f"state {state!r}; wait(timeout=0.3) raised after {short_wait:.2f} s; ended {r.status}/"
           f"{r.termination_method} (signal {r.signal_name}) {total:.2f} s after launch (timeout 1.5 s + grace 1 s)")
    assert state == "T"
    assert r.status is Status.TIMEOUT and r.signal == signal.SIGKILL
    assert total < 1.5 + 1.0 + 2.0
