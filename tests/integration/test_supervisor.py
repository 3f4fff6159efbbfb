"""The Supervisor at scale and across our own death: fan-out, signals to the launcher, SIGKILL + re-attach.

Everything runs against the real user manager (the test bed). Outcomes are asserted: processes gone
from /proc, no `ralph-*` unit left, statuses as systemd and the kernel report them.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from ralph_systemd import DispatchSpec, Status, Supervisor, Termination


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _units(pattern: str) -> list[str]:
    """Loaded units matching `pattern` (any state), as `systemctl --user list-units --all` shows them."""
    out = subprocess.run(["systemctl", "--user", "list-units", "--all", "--plain", "--no-legend", pattern],
                         capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _alive_in(pid: int, unit: str) -> bool:
    """True if `pid` is a live (non-zombie) process inside `unit`'s cgroup (robust to PID reuse)."""
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z" and cgroup.rstrip().endswith("/" + unit)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def _fan_out(n: int, sleep_s: float, tmp_path: Path) -> dict[str, float]:
    """Launch n `sleep` sessions at once over one Supervisor, wait for all; return the figures."""
    tag = _tag()
    # Every session first blocks on a FIFO (the gate), so all n are running at once however slow the
    # launches are on a loaded machine; opening the gate lets them all sleep.
    gate = tmp_path / "gate.fifo"
    os.mkfifo(gate)
    # We hold the FIFO open for writing from the start, so a session's open never blocks and none can miss
    # the go: each `read` takes exactly one of the n lines we write, whenever it gets there.
    gate_fd = os.open(gate, os.O_RDWR)
    argv = ["sh", "-c", f'read x < "$0"; exec sleep {sleep_s}', str(gate)]
    with Supervisor() as sup:
        t0 = time.monotonic()
        ds = [sup.launch(DispatchSpec(argv=argv, ticket=f"fan{tag}.{i}", log_dir=tmp_path, timeout=sleep_s + 120,
                                      grace=5)) for i in range(n)]
        launch_s = time.monotonic() - t0
        errors = [d.result.error for d in ds if d.result is not None and d.result.status is Status.ERROR]
        assert not errors, errors[:3]
        assert all(d.pid for d in ds)
        # All sessions are running at once, each in its own scope.
        assert [d for d in ds if d.done] == []
        assert len(_units(f"ralph-*-fan{tag}.*")) == n
        cpu0, wall0 = _cpu_s(), time.monotonic()
        os.write(gate_fd, b"go\n" * n)  # one line for each reader: they all go to sleep now
        results = sup.wait_all(ds, timeout=sleep_s + 120)
        os.close(gate_fd)
        cpu_s, wait_s = _cpu_s() - cpu0, time.monotonic() - wall0
        rss = _rss_kib()
    assert len(results) == n
    statuses = {r.status for r in results}
    assert statuses == {Status.COMPLETED}, [r for r in results if r.status is not Status.COMPLETED][:3]
    assert all(r.exit_code == 0 and r.termination_method is Termination.NATURAL for r in results)
    survivors = [r.pid for r in results if r.pid is not None and _alive_in(r.pid, r.unit)]
    left = _units(f"ralph-*-fan{tag}.*")
    assert survivors == [] and left == []
    return {"n": n, "launch_s": launch_s, "wait_s": wait_s, "cpu_s": cpu_s, "rss_kib": rss,
            "survivors": len(survivors), "units_left": len(left)}


def test_fan_out_64_all_complete_and_nothing_is_left(tmp_path: Path) -> None:
    # Each dispatch holds a pidfd and its stdin pipe: with a soft RLIMIT_NOFILE of 96, 64 of them only fit
    # because the Supervisor raises the soft limit towards the hard one when it needs to.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 256, "the test bed's hard RLIMIT_NOFILE is too low for this test"
    resource.setrlimit(resource.RLIMIT_NOFILE, (96, hard))
    try:
        figures = _fan_out(64, 3.0, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(f"\nfan-out 64: {figures}")
    assert figures["survivors"] == 0


@pytest.mark.slow
def test_fan_out_256_figures(tmp_path: Path) -> None:
    """256 sessions sleeping 10 s at once on 2 cores: launch time, RSS, CPU while they sleep, survivors."""
    f = _fan_out(256, 10.0, tmp_path)
    print(f"\nfan-out 256: launch {f['launch_s']:.2f} s ({f['launch_s'] / 256 * 1000:.1f} ms each), "
          f"supervisor RSS {f['rss_kib'] / 1024:.1f} MiB, supervisor CPU {f['cpu_s']:.2f} s during "
          f"{f['wait_s']:.1f} s of waiting, survivors {f['survivors']}, units left {f['units_left']}")
    assert f["survivors"] == 0
    # The wait is event-driven: far less CPU than wall time even with 256 children.
    assert f["cpu_s"] < f["wait_s"] / 2


# -- our own death and signals --------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]

# Runs as a separate process: launches the dispatches given as JSON on argv[1], prints one JSON line
# {"units": [...], "pids": [...]} once they all run, then waits for all of them (optionally with
# handle_signals) and prints their results as JSON lines.
LAUNCHER = textwrap.dedent("""
    import json, sys
    from ralph_systemd import DispatchSpec, Supervisor
    plan = json.loads(sys.argv[1])
    sup = Supervisor()
    if plan.get("signals"):
        sup.handle_signals(action=plan["signals"])
    ds = [sup.launch(DispatchSpec(**spec)) for spec in plan["specs"]]
    print(json.dumps({"units": [d.unit for d in ds], "pids": [d.pid for d in ds],
                      "errors": [d.result.error for d in ds if d.result]}), flush=True)
    for r in sup.wait_all(ds):
        print(json.dumps(r.to_json()), flush=True)
    print(json.dumps({"signals": sup.signals_received}), flush=True)
    sup.close()
""")


class Launcher:
    """The launching process, run as a child of the test so we can signal or SIGKILL it."""

    def __init__(self, specs: list[dict[str, object]], signals: str | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, json.dumps({"specs": specs, "signals": signals})],
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        assert self.proc.stdout is not None
        first = json.loads(self.proc.stdout.readline())  # blocks until every dispatch has been launched
        assert first["errors"] == [], first
        self.units: list[str] = first["units"]
        self.pids: list[int] = first["pids"]

    def results(self) -> list[dict[str, object]]:
        assert self.proc.stdout is not None
        out, _ = self.proc.communicate(timeout=60)
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        return lines


def _sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_sigkill_of_the_launcher_leaves_dispatches_visible_and_a_new_supervisor_reattaches(tmp_path: Path) -> None:
    tag = _tag()
    # The two sessions that end by themselves wait for a line on their FIFO: they end when we say so.
    fifos = {name: tmp_path / f"{name}.fifo" for name in ("done", "fail")}
    for f in fifos.values():
        os.mkfifo(f)
    specs: list[dict[str, object]] = [
        # ends by itself (exit 0, but that code was the dead launcher's to see)
        {"argv": _sh(f"read x < {fifos['done']}; exit 0"), "ticket": f"re{tag}.done", "log_dir": str(tmp_path),
         "session": "s-done"},
        # fails by itself with exit 3: not our child either
        {"argv": _sh(f"echo working; read x < {fifos['fail']}; exit 3"), "ticket": f"re{tag}.fail",
         "log_dir": str(tmp_path)},
        # runs past its wall-clock timeout, enforced by systemd with the launcher dead
        {"argv": ["sleep", "60"], "ticket": f"re{tag}.slow", "log_dir": str(tmp_path), "timeout": 3, "grace": 2},
    ]
    t_launch = time.monotonic()  # before the launcher starts: its units cannot be older than this
    launcher = Launcher(specs)
    launcher.proc.send_signal(signal.SIGKILL)
    launcher.proc.wait(timeout=10)
    # The dispatches outlive their launcher and stay visible.
    assert sorted(_units(f"ralph-*-re{tag}.*")) == sorted(launcher.units)
    assert all(_alive_in(pid, unit) for pid, unit in zip(launcher.pids, launcher.units))

    with Supervisor() as sup:
        attached = [d for d in sup.attach_all() if d.unit in launcher.units]
        assert sorted(d.unit for d in attached) == sorted(launcher.units)
        by_ticket = {d.ticket: d for d in attached}
        # What the unit carries: ticket, session, log path, start time.
        done = by_ticket[f"re{tag}.done"]
        assert done.session == "s-done"
        assert done.log_path is not None and Path(done.log_path).parent == tmp_path
        assert Path(done.log_path).exists()
        age = time.monotonic() - done.started
        assert 0 <= age <= time.monotonic() - t_launch + 0.5
        assert done.pid in launcher.pids
        # Attaching twice gives the same handle.
        assert sup.attach(f"re{tag}.done") is done
        for f in fifos.values():
            f.write_text("go\n")
        results = {r.ticket: r for r in sup.wait_all(attached, timeout=30)}

    # Natural ends are reported, but never as success: their exit codes died with the launcher.
    for t in ("done", "fail"):
        r = results[f"re{tag}.{t}"]
        assert r.status is Status.UNKNOWN and r.exit_code is None and not r.ok, r
        assert r.termination_method is Termination.UNKNOWN
    slow = results[f"re{tag}.slow"]
    assert slow.status is Status.TIMEOUT and slow.systemd_result == "timeout", slow
    # It was bounded by its timeout (3 s) plus grace (2 s), not by the 60 s it wanted.
    assert slow.duration_s < 3 + 2 + 3
    assert all(not _alive_in(pid, unit) for pid, unit in zip(launcher.pids, launcher.units))
    assert _units(f"ralph-*-re{tag}.*") == []


def test_attach_to_a_unit_that_is_not_there_says_so(tmp_path: Path) -> None:
    with Supervisor() as sup:
        with pytest.raises(LookupError, match="no live dispatch"):
            sup.attach(f"nothere{_tag()}")
        assert sup.live == []


def test_sigterm_to_the_launcher_stops_every_dispatch_with_the_ladder(tmp_path: Path) -> None:
    tag = _tag()
    specs: list[dict[str, object]] = [
        # a session that ends on EOF: the first rung of the ladder stops it
        {"argv": _sh("cat >/dev/null; echo got-eof"), "ticket": f"st{tag}.eof", "log_dir": str(tmp_path),
         "grace": 5, "stdin": "pipe", "eof_grace": 1},
        # a session deaf to EOF that exits on SIGTERM (the second rung)
        {"argv": _sh("trap 'echo got-term; exit 0' TERM; while :; do sleep 0.1; done"), "ticket": f"st{tag}.term",
         "log_dir": str(tmp_path), "grace": 5, "stdin": "pipe", "eof_grace": 0.5},
        # a session that leaves a setsid daemon behind: the cgroup goes with it
        {"argv": _sh("setsid sleep 300 & cat >/dev/null"), "ticket": f"st{tag}.daemon", "log_dir": str(tmp_path),
         "grace": 5, "stdin": "pipe", "eof_grace": 1},
    ]
    launcher = Launcher(specs, signals="stop")
    launcher.proc.send_signal(signal.SIGTERM)
    lines = launcher.results()
    assert launcher.proc.returncode == 0
    assert lines[-1] == {"signals": [signal.SIGTERM]}
    results = {r["ticket"]: r for r in lines[:-1]}
    assert len(results) == 3
    assert {r["status"] for r in results.values()} == {"stopped"}
    assert results[f"st{tag}.eof"]["termination_method"] == "eof"
    assert results[f"st{tag}.term"]["termination_method"] == "sigterm"
    assert results[f"st{tag}.daemon"]["termination_method"] == "eof"
    assert results[f"st{tag}.daemon"]["leftovers_killed"] == 1
    for t, word in (("eof", "got-eof"), ("term", "got-term")):
        log_path = results[f"st{tag}.{t}"]["log_path"]
        assert isinstance(log_path, str) and word in Path(log_path).read_text()
    assert all(not _alive_in(pid, unit) for pid, unit in zip(launcher.pids, launcher.units))
    assert _units(f"ralph-*-st{tag}.*") == []
    # ...and no process of any session remains anywhere (the daemon included): their cgroups are gone.
    out = subprocess.run(["pgrep", "-f", "sleep 300"], capture_output=True, text=True).stdout.split()
    assert not [p for p in out if any(u in Path(f"/proc/{p}/cgroup").read_text() for u in launcher.units
                                      if Path(f"/proc/{p}").exists())]


def test_sigterm_with_detach_leaves_dispatches_running_for_a_later_attach(tmp_path: Path) -> None:
    tag = _tag()
    specs: list[dict[str, object]] = [
        {"argv": ["sleep", "60"], "ticket": f"dt{tag}.a", "log_dir": str(tmp_path), "grace": 3},
    ]
    launcher = Launcher(specs, signals="detach")
    launcher.proc.send_signal(signal.SIGTERM)
    lines = launcher.results()
    assert lines[0]["status"] == "running" and "detached" in str(lines[0]["error"])
    assert _units(f"ralph-*-dt{tag}.*") == launcher.units
    assert _alive_in(launcher.pids[0], launcher.units[0])
    with Supervisor() as sup:
        d = sup.attach(launcher.units[0])
        assert d.ticket == f"dt{tag}.a"
        sup.stop(d)
        r = sup.wait(d, timeout=30)
    assert r.status is Status.STOPPED
    assert not _alive_in(launcher.pids[0], launcher.units[0])
    assert _units(f"ralph-*-dt{tag}.*") == []


# -- the demo -----------------------------------------------------------------------------------------------------


def test_demo_runs_end_to_end_with_the_four_outcomes(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "ralph_systemd.demo", "--log-dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=120, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "\033[" not in r.stdout  # piped: plain text
    rows = {}
    for line in r.stdout.splitlines():
        cells = line.split()
        if len(cells) >= 7 and cells[0].split("_")[0] in ("works", "fails", "hangs", "idles") and cells[-1].endswith(".log"):
            rows[cells[0].split("_")[0]] = cells
    assert {k: v[1] for k, v in rows.items()} == {"works": "completed", "fails": "failed", "hangs": "timeout",
                                                  "idles": "idle-timeout"}
    assert rows["fails"][2] == "3"
    assert rows["idles"][4] == "1"  # the daemon it left behind was killed
    assert "launched" in r.stdout and "finished" in r.stdout
    assert "systemctl --user status" in r.stdout and "CGroup:" in r.stdout
    run = rows["works"][0].split("_")[1]
    assert _units(f"ralph-*_{run}.scope") == []  # every scope of this run is gone
