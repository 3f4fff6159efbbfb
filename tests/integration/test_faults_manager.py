"""Issue 7, the manager restarting under us: daemon-reexec and daemon-reload while dispatches are launched
and waited on. No completion may be lost or wrong."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from faults_util import loaded_units, ticket

from ralph_systemd import Dispatch, DispatchSpec, Status, Supervisor

pytest_plugins = ["faults_table"]
pytestmark = pytest.mark.slow

Figure = Callable[[str, str], None]


def _expected(i: int) -> tuple[Status, int | None]:
    if i % 5 == 4:
        return Status.TIMEOUT, None
    code = i % 4
    return (Status.COMPLETED if code == 0 else Status.FAILED), code


def test_manager_reexec_and_reload_lose_nothing(tmp_path: Path, figure: Figure) -> None:
    n = 50
    prefix = ticket("reexec")
    stop_restarts = threading.Event()
    restarts: list[str] = []
    restart_errors: list[str] = []

    def restarter() -> None:
        # Alternate re-exec and reload for as long as dispatches are being launched and waited on.
        i = 0
        while not stop_restarts.is_set():
            cmd = "daemon-reexec" if i % 2 == 0 else "daemon-reload"
            r = subprocess.run(["systemctl", "--user", cmd], capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                restart_errors.append(f"{cmd}: {r.stderr.strip()}")
            restarts.append(cmd)
            i += 1
            stop_restarts.wait(0.25)

    thread = threading.Thread(target=restarter, daemon=True)
    dispatches: list[tuple[int, Dispatch]] = []
    t0 = time.monotonic()
    with Supervisor() as sup:
        thread.start()
        try:
            for i in range(n):
                status, code = _expected(i)
                delay = 0.3 + (i % 10) * 0.3
                argv = ["sleep", "300"] if status is Status.TIMEOUT else ["sh", "-c", f"sleep {delay}; exit {code}"]
                d = sup.launch(DispatchSpec(argv=argv, ticket=f"{prefix}_{i}", cwd=tmp_path, log_dir=tmp_path,
                                            timeout=2.0 + (i % 3) * 0.5 if status is Status.TIMEOUT else 60.0,
                                            grace=1.0, stdin="pipe", eof_grace=0.2))
                dispatches.append((i, d))
            try:
                sup.wait_all([d for _, d in dispatches], timeout=60)
            except TimeoutError:
                pass
        finally:
            stop_restarts.set()
            thread.join(60)
        lost = [d for _, d in dispatches if d.result is None]
        wrong = []
        for i, d in dispatches:
            if d.result is None:
                continue
            status, code = _expected(i)
            if d.result.status is not status or (code is not None and d.result.exit_code != code):
                wrong.append((i, d.result.to_json()))
    elapsed = time.monotonic() - t0
    n_reexec = sum(c == "daemon-reexec" for c in restarts)
    figure("manager restarts",
           f"{len(lost)} lost, {len(wrong)} wrong of {n} dispatches launched and waited on during "
           f"{n_reexec} daemon-reexec + {len(restarts) - n_reexec} daemon-reload ({elapsed:.1f} s)")
    assert not restart_errors, restart_errors
    assert n_reexec >= 2
    assert not lost, lost[:5]
    assert not wrong, wrong[:5]
    assert loaded_units(prefix) == []
