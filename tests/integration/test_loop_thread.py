"""Issue 10 against the real user manager: the ladder never waits on its caller, and stops hold under races.

Each check records its figure for the reliability table (`./dev faults` prints it; the everyday suite runs
the quick ones). Sessions report what they saw with CLOCK_MONOTONIC timestamps (programs/ladder_session.py),
so the assertions are about what the session experienced, not about our own bookkeeping.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from faults_util import ladder_events as events

from ralph_systemd import DispatchSpec, Status, Supervisor, Termination
from ralph_systemd.bus import NoSuchUnitError, PystemdUserBus

pytest_plugins = ["faults_table"]

Figure = Callable[[str, str], None]
PROGRAMS = Path(__file__).parent / "programs"
LADDER = str(PROGRAMS / "ladder_session.py")


def ticket(name: str) -> str:
    return f"loop-{name}-{uuid.uuid4().hex[:8]}"


def test_a_busy_caller_still_gives_eof_then_sigterm_before_the_sigkill(tmp_path: Path, figure: Figure) -> None:
    """The caller computes for 3x the grace and never calls in; the timeout fires meanwhile."""
    n, timeout, grace, eof_grace = 5, 1.0, 2.0, 0.5
    specs = [DispatchSpec(argv=[LADDER, "kill"], ticket=ticket("busy"), cwd=tmp_path, log_dir=tmp_path,
                          timeout=timeout, grace=grace, stdin="pipe", eof_grace=eof_grace) for _ in range(n)]
    with Supervisor() as sup:
        ds = sup.launch_many(specs)
        launched = time.monotonic()
        x = 0
        while time.monotonic() < launched + 3 * grace:  # busy in Python: holds the GIL between switches
            x += 1
        results = [sup.wait(d, timeout=10) for d in ds]
    laddered = 0
    for r in results:
        ev = events(r.log_path)
        if "EOF" in ev and "TERM" in ev and ev["EOF"] < ev["TERM"] and r.termination_method is Termination.SIGKILL:
            laddered += 1
    figure("busy caller (3x grace without calling in)",
           f"{laddered}/{n} sessions got EOF then SIGTERM before systemd's SIGKILL")
    for r in results:
        ev = events(r.log_path)
        assert (r.status, r.termination_method) == (Status.TIMEOUT, Termination.SIGKILL)
        assert "EOF" in ev and "TERM" in ev, f"the session saw {sorted(ev)}: the ladder waited for its caller"
        assert ev["TERM"] - ev["EOF"] == pytest.approx(eof_grace, abs=0.4)
        assert ev["EOF"] - launched < timeout + 1.0  # at the timeout, not when the caller came back at +6 s


def _stop_as_soon_as_it_exists(bus: PystemdUserBus, unit: str, sent: list[float], errors: list[Exception]) -> None:
    """An operator racing the launch: StopUnit the moment the unit exists (NoSuchUnit until then)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            bus.stop_unit(unit)
        except NoSuchUnitError:
            time.sleep(0.0002)  # pacing, so the launcher's threads get the GIL too (not synchronisation)
            continue
        except Exception as e:
            errors.append(e)
            return
        sent.append(time.monotonic())
        return


def test_an_immediate_timeout_or_stop_still_runs_the_ladder(tmp_path: Path, figure: Figure) -> None:
    """RuntimeMaxSec=1us fires before the launch returns; a StopUnit races the launch itself. Both used to be
    lost (the unit was not routed yet): no EOF, no SIGTERM, SIGKILL only after the full grace, `failed`."""
    n = 50
    specs = [DispatchSpec(argv=["sleep", "30"], ticket=ticket("imm"), cwd=tmp_path, log_dir=tmp_path,
                          timeout=1e-6, grace=5, stdin="pipe", eof_grace=0.2) for _ in range(n)]
    other = PystemdUserBus()  # the "operator": another connection, like systemctl
    try:
        with Supervisor() as sup:
            timed = sup.wait_all(sup.launch_many(specs), timeout=60)
            ds, gaps = [], []
            for _ in range(n):
                spec = DispatchSpec(argv=["sleep", "30"], ticket=ticket("stp"), cwd=tmp_path, log_dir=tmp_path,
                                    timeout=60, grace=5, stdin="pipe", eof_grace=0.2)
                sent: list[float] = []
                errors: list[Exception] = []
                racer = threading.Thread(target=_stop_as_soon_as_it_exists, args=(other, spec.unit, sent, errors))
                racer.start()
                d = sup.launch(spec)
                returned = time.monotonic()
                racer.join()
                assert sent, f"{spec.unit} never appeared: {errors}, {d.result}"
                gaps.append(sent[0] - returned)
                ds.append(d)
            stopped = sup.wait_all(ds, timeout=60)
    finally:
        other.close()
    ok_t = sum((r.status, r.termination_method) == (Status.TIMEOUT, Termination.SIGTERM) for r in timed)
    laddered = sum((r.status, r.termination_method) == (Status.STOPPED, Termination.SIGTERM) for r in stopped)
    before_start = sum((r.status, r.termination_method) == (Status.STOPPED, Termination.NATURAL) and r.pid is None
                       or (r.status is Status.STOPPED and "before it started" in (r.error or "")) for r in stopped)
    gaps.sort()
    figure("timeout of 1 us", f"{ok_t}/{n} ended timeout with the ladder (sigterm), none by bare SIGKILL")
    figure("StopUnit racing the launch",
           f"{laddered + before_start}/{n} ended stopped: {laddered} with the ladder (sigterm), {before_start} "
           f"before the session started; stop sent {gaps[n // 2] * 1000:+.2f} ms (median) from launch's return")
    assert ok_t == n, [(r.status, r.termination_method, r.error) for r in timed if r.status is not Status.TIMEOUT]
    assert laddered + before_start == n, [(r.status, r.termination_method, r.exit_code, r.signal, r.error)
                                          for r in stopped if r.termination_method is not Termination.SIGTERM]
    assert all(r.termination_method is not Termination.SIGKILL for r in stopped)


class _Seen(logging.Handler):
    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.event.set()


def test_a_forged_request_stop_changes_nothing(tmp_path: Path, figure: Figure) -> None:
    """Any process of the user can address Scope.RequestStop to our connection; only the manager's count."""
    seen = _Seen("ignored a request-stop signal")
    logging.getLogger("ralph_systemd").addHandler(seen)
    try:
        with Supervisor() as sup:
            d = sup.launch(DispatchSpec(argv=[LADDER, "eof"], ticket=ticket("forged"), cwd=tmp_path,
                                        log_dir=tmp_path, timeout=120, grace=5, stdin="pipe"))
            controller = subprocess.run(["systemctl", "--user", "show", "-p", "Controller", "--value", d.unit],
                                        capture_output=True, text=True, check=True).stdout.strip()
            assert controller.startswith(":")
            forge = ["busctl", "--user", "emit", f"--destination={controller}", d.path,
                     "org.freedesktop.systemd1.Scope", "RequestStop"]
            subprocess.run(forge, check=True)
            # ... and from inside another dispatch, as a hostile session would
            attacker = sup.launch(DispatchSpec(argv=forge, ticket=ticket("attacker"), cwd=tmp_path, log_dir=tmp_path))
            assert sup.wait(attacker, timeout=30).status is Status.COMPLETED
            assert seen.event.wait(10), "the forged signal never reached the supervisor"
            sup.poll()
            untouched = d.result is None and "EOF" not in events(d.log_path)
            sup.stop(d)
            r = sup.wait(d, timeout=30)
    finally:
        logging.getLogger("ralph_systemd").removeHandler(seen)
    figure("forged RequestStop (busctl emit --destination, from a shell and from a dispatch)",
           "0 sessions stopped or sent EOF" if untouched else "the forged stop reached the session")
    assert untouched
    assert (r.status, r.termination_method, r.systemd_result) == (Status.STOPPED, Termination.EOF, "success")


def test_an_escaped_daemon_killed_by_the_final_sigkill_is_counted(tmp_path: Path, figure: Figure) -> None:
    script = ("trap '' TERM; setsid sh -c 'trap \"\" TERM; exec sleep 300' </dev/null >/dev/null 2>&1 & "
              "exec sleep 300")
    with Supervisor() as sup:
        r = sup.wait(sup.launch(DispatchSpec(argv=["sh", "-c", script], ticket=ticket("daemon"), cwd=tmp_path,
                                             log_dir=tmp_path, timeout=1, grace=1.5, stdin="pipe", eof_grace=0.3)), timeout=30)
    figure("escaped daemon in a SIGKILL ending", f"leftovers_killed={r.leftovers_killed} (1 daemon planted)")
    assert (r.status, r.termination_method) == (Status.TIMEOUT, Termination.SIGKILL)
    assert r.leftovers_killed == 1


# The main process exits and leaves a daemon deaf to SIGTERM: the dispatch is then in its last phase, with a
# watch on the scope's cgroup, when it is detached (the case a reading of the old code suspected of leaking).
# (The main process waits, on the FIFO in $0, until the daemon has set its trap: our SIGTERM must not win.)
LEFTOVER = "setsid sh -c 'trap \"\" TERM; echo >\"$0\"; exec sleep 60' \"$0\" </dev/null >/dev/null 2>&1 & read x <\"$0\""


def _detach_attach_cycles(tmp_path: Path, cycles: int) -> tuple[int, int]:
    """FDs of this process before and after `cycles` launch / detach / attach / stop rounds, half of them
    detached while waiting for a leftover process (a cgroup watch held), half while the session runs."""
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def one(i: int) -> None:
        sup = Supervisor()
        sup.handle_signals(action="detach")
        seen = _Seen("left in the scope")
        logger = logging.getLogger("ralph_systemd")
        level = logger.level
        logger.setLevel(logging.INFO)  # the lifecycle lines are at INFO
        logger.addHandler(seen)
        try:
            ready = tmp_path / f"ready-{uuid.uuid4().hex[:8]}"
            os.mkfifo(ready)
            argv = ["sh", "-c", LEFTOVER, str(ready)] if i % 2 else ["sleep", "60"]
            d = sup.launch(DispatchSpec(argv=argv, ticket=ticket("det"), cwd=tmp_path, log_dir=tmp_path,
                                        timeout=60, grace=20))
            if i % 2:
                assert seen.event.wait(10), "the session's leftover was never seen"
        finally:
            logger.removeHandler(seen)
            logger.setLevel(level)
        os.kill(os.getpid(), 15)  # SIGTERM to us: detach, as a Ralph being restarted would
        r = sup.wait(d, timeout=10)
        assert r.status is Status.RUNNING
        sup.close()
        with Supervisor() as again:
            a = again.attach(d.unit)
            again.kill(a, 9)  # the leftover is deaf to SIGTERM: do not wait out the grace
            again.stop(a)
            assert again.wait(a, timeout=30).status in (Status.STOPPED, Status.UNKNOWN)

    import signal
    old = signal.getsignal(signal.SIGTERM)
    try:
        one(0)  # warm-up: imports, caches
        one(1)
        before = fds()
        for i in range(cycles):
            one(i)
        return before, fds()
    finally:
        signal.signal(signal.SIGTERM, old)


def test_detach_and_attach_leak_no_fds(tmp_path: Path, figure: Figure) -> None:
    before, after = _detach_attach_cycles(tmp_path, 10)
    figure("detach/attach cycles", f"10 cycles: FDs {before} -> {after}")
    assert after == before


@pytest.mark.slow
def test_detach_and_attach_leak_no_fds_over_200_cycles(tmp_path: Path, figure: Figure) -> None:
    before, after = _detach_attach_cycles(tmp_path, 200)
    figure("detach/attach cycles", f"200 cycles: FDs {before} -> {after}")
    assert after == before
