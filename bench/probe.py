"""Where a ralph-systemd launch spends its milliseconds, read from the package's own instrumentation points.

The package marks named points on its launch and completion paths (ralph_systemd/instrument.py: no-ops
unless a hook is installed); the probe installs a hook, in this process only and only while it runs, and
turns the marks of one launch into phases: the log file (launch.begin -> launch.log_opened), the gated fork
(-> launch.forked), the scope's properties (-> bus.start_call), StartTransientUnit's reply
(-> bus.start_reply), JobRemoved seen by the dispatch, the gate opened, the exec reported. For each launch it
also reads the manager's ActiveEnterTimestampMonotonic over a second connection: the moment the scope went
active, i.e. the child was already inside the scope's cgroup. A package without the instrument module (an
older baseline) gives the outside view only (total, active_since_call).

`counting()` counts points instead (the loop's turns and deadline computations, for the scale curve).

It also times the fork itself against posix_spawn, at this process's size and with 50 MB more touched
memory, since fork copies page tables and posix_spawn (vfork-style) does not.
"""

from __future__ import annotations

import importlib
import os
import select
import statistics
import sys
import threading
import time
import types
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.ralph import RalphBench, mono_us, rss_mb


def _instrument(pkg: types.ModuleType) -> Any | None:
    """The package's instrument module, or None (a copy older than it)."""
    try:
        return importlib.import_module(f"{pkg.__name__}.instrument")
    except ImportError:
        return None


class _Marks:
    """The first time (CLOCK_MONOTONIC, µs) each point was reached for one unit."""

    def __init__(self) -> None:
        self.unit = ""
        self.at: dict[str, int] = {}

    def __call__(self, name: str, key: str) -> None:
        if key == self.unit and name not in self.at:
            self.at[name] = mono_us()

    def reset(self, unit: str) -> None:
        self.unit, self.at = unit, {}


@contextmanager
def _hooked(pkg: types.ModuleType, hook: Any) -> Iterator[bool]:
    """Install `hook` on the package's instrument points for the block; yields False if it has none."""
    ins = _instrument(pkg)
    if ins is None:
        yield False
        return
    previous = ins.set_hook(hook)
    try:
        yield True
    finally:
        ins.set_hook(previous)


@contextmanager
def counting(pkg: types.ModuleType, names: tuple[str, ...] = ("loop.turn", "loop.deadline")) -> Iterator[Counter[str]]:
    """Count how often each of `names` is reached during the block (empty for a package without points)."""
    counts: Counter[str] = Counter()
    wanted = frozenset(names)

    def hook(name: str, key: str) -> None:
        if name in wanted:
            counts[name] += 1
    with _hooked(pkg, hook):
        yield counts


def _med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x == x]
    return round(statistics.median(xs), 3) if xs else None


# (phase name, from point, to point): each a difference of two marks, in ms
_PHASES = (
    ("log_file", "launch.begin", "launch.log_opened"),
    ("fork_gated", "launch.log_opened", "launch.forked"),
    ("scope_properties", "launch.forked", "bus.start_call"),
    ("stu_reply", "bus.start_call", "bus.start_reply"),
    ("stu_reply_to_jobremoved", "bus.start_reply", "dispatch.job_removed"),
    ("jobremoved_to_gate_open", "dispatch.job_removed", "dispatch.gate_open"),
    ("gate_open_to_exec_confirmed", "dispatch.gate_open", "dispatch.exec_reported"),
)


def probe_launches(b: RalphBench, runs: int) -> dict[str, Any]:
    """`runs` instrumented launches of a `sleep 0.1` session; medians of each phase in ms."""
    bus_mod = importlib.import_module(f"{b.pkg.__name__}.bus")
    side = bus_mod.PystemdUserBus()  # our own connection: reads the manager's timestamps
    marks = _Marks()
    rows: list[dict[str, float]] = []
    try:
        with _hooked(b.pkg, marks):
            for _ in range(runs):
                spec = b.pkg.DispatchSpec(argv=["sleep", "0.1"], ticket=f"probe-{uuid.uuid4().hex[:12]}",
                                          cwd=b.workdir, log_dir=b.workdir / "logs")
                marks.reset(spec.unit)
                t0_us = mono_us()
                d = b.sup.launch(spec)
                total = (mono_us() - t0_us) / 1e3
                if d.pid is None:
                    raise RuntimeError(f"probe dispatch did not start: {d.result}")
                st = side.unit_state(spec.unit)
                b.sup.wait(d, timeout=30)
                at = {k: (v - t0_us) / 1e3 for k, v in marks.at.items()}
                row = {"total": total}
                for name, a, z in _PHASES:
                    if a in at and z in at:
                        row[name] = at[z] - at[a]
                active = (st.active_enter_monotonic_us - t0_us) / 1e3 if st.active_enter_monotonic_us else float("nan")
                row["active_since_call"] = active
                if "bus.start_call" in at:
                    row["before_stu"] = at["bus.start_call"]
                    row["stu_call_to_active"] = active - at["bus.start_call"]
                if "bus.start_reply" in at:
                    row["stu_reply_after_active"] = at["bus.start_reply"] - active
                if "dispatch.job_removed" in at:
                    row["active_to_jobremoved_seen"] = at["dispatch.job_removed"] - active
                if "dispatch.gate_open" in at:
                    row["gate_open_to_return"] = total - at["dispatch.gate_open"]
                    # The gate opens on the first of JobRemoved and the scope's PropertiesChanged(active):
                    # from the manager's "active" is the robust figure (jobremoved_to_gate_open < 0 when the
                    # PropertiesChanged came first).
                    row["active_to_gate_open"] = at["dispatch.gate_open"] - active
                rows.append(row)
    finally:
        side.close()
    keys = sorted({k for r in rows for k in r})
    return {"runs": len(rows), "median_ms": {k: _med([r.get(k, float("nan")) for r in rows]) for k in keys}}


def probe_completion(b: RalphBench, runs: int, lifetime: float = 0.0) -> dict[str, Any]:
    """Where completion time goes, seen from outside and from the package's points: the session's exit (a
    pidfd, watched by a thread of ours), the kernel's `populated 0` on the scope's cgroup.events (inotify,
    same thread), the manager's InactiveEnterTimestampMonotonic (its PropertiesChanged, read over a second
    connection), the supervisor's dispatch.main_exited and dispatch.end points, and the moment sup.wait()
    returned. Medians in ms, each from the session's exit."""
    bus_mod = importlib.import_module(f"{b.pkg.__name__}.bus")
    ino_mod = importlib.import_module(f"{b.pkg.__name__}.inotify")
    side = bus_mod.PystemdUserBus()
    rows: list[dict[str, float]] = []
    marks = _Marks()
    try:
        with _hooked(b.pkg, marks):
            for _ in range(runs):
                row = _one_completion(b, side, bus_mod, ino_mod, marks, lifetime)
                if row is not None:
                    rows.append(row)
    finally:
        side.close()
    keys = sorted({k for r in rows for k in r})
    return {"runs": len(rows), "lifetime_s": lifetime,
            "median_ms": {k: _med([r.get(k, float("nan")) for r in rows]) for k in keys}}


def _one_completion(b: RalphBench, side: Any, bus_mod: Any, ino_mod: Any, marks: _Marks,
                    lifetime: float) -> dict[str, float] | None:
    # The session waits for a line on a FIFO (so we watch it before it can exit), then exits at once or
    # after `lifetime`; a threaded supervisor would otherwise reap a `true` before we could look.
    fifo = str(b.workdir / f"go-{uuid.uuid4().hex[:8]}")
    os.mkfifo(fifo)
    script = 'read x < "$0"' + (f"; exec sleep {lifetime}" if lifetime else "")
    spec = b.pkg.DispatchSpec(argv=["/bin/sh", "-c", script, fifo], ticket=f"probe-{uuid.uuid4().hex[:12]}",
                              cwd=b.workdir, log_dir=b.workdir / "logs")
    side.drain()
    seen: dict[str, int] = {}
    marks.reset(spec.unit)
    d = b.sup.launch(spec)
    if d.pid is None:
        raise RuntimeError(f"probe dispatch did not start: {d.result}")
    try:
        pidfd = os.pidfd_open(d.pid)
        cg = open(f"/proc/{d.pid}/cgroup").read()
    except (ProcessLookupError, FileNotFoundError):
        b.sup.wait(d, timeout=30)
        return None  # gone before we could watch it: no figure for this one
    rel = next((ln[3:] for ln in cg.splitlines() if ln.startswith("0::")), "")
    events = next((p for p in (f"/sys/fs/cgroup/unified{rel}/cgroup.events", f"/sys/fs/cgroup{rel}/cgroup.events")
                   if os.path.exists(p)), None)
    watch = ino_mod.Inotify(events, ino_mod.IN_MODIFY) if events else None

    def watcher() -> None:
        fds = [pidfd] + ([watch.fd] if watch else [])
        deadline = time.monotonic() + 30
        while ("exit" not in seen or (watch and "empty" not in seen)) and time.monotonic() < deadline:
            r, _, _ = select.select(fds, [], [], 1.0)
            now = mono_us()
            if pidfd in r and "exit" not in seen:
                seen["exit"] = now
                fds.remove(pidfd)
            if watch and watch.fd in r:
                watch.drain()
                try:
                    populated = "populated 1" in open(events or "").read()
                except OSError:
                    populated = False
                if not populated and "empty" not in seen:
                    seen["empty"] = now
                    fds.remove(watch.fd)

    th = threading.Thread(target=watcher, daemon=True)
    th.start()
    with open(fifo, "w") as go:  # blocks until the session opened its end
        go.write("go\n")
    os.unlink(fifo)
    b.sup.wait(d, timeout=30)
    seen["done"] = mono_us()
    th.join(5)
    os.close(pidfd)
    if watch:
        watch.close()
    path = bus_mod.unit_path(spec.unit)
    inactive = 0
    t_end = time.monotonic() + 2
    while not inactive and time.monotonic() < t_end:
        for ev in side.drain():
            if ev.kind == "unit-changed" and ev.path == path and ev.changes:
                inactive = int(ev.changes.get("InactiveEnterTimestampMonotonic") or inactive)
        if not inactive:
            select.select([side.fileno()], [], [], 0.05)
    ex = seen.get("exit")
    if ex is None:
        return None
    row = {"exit_to_done": (seen["done"] - ex) / 1e3}
    if "empty" in seen:
        row["exit_to_cgroup_empty_seen"] = (seen["empty"] - ex) / 1e3
    if inactive:
        row["exit_to_manager_inactive"] = (inactive - ex) / 1e3
        row["manager_inactive_to_done"] = (seen["done"] - inactive) / 1e3
    for point, label in (("dispatch.main_exited", "exit_to_main_exit_seen"), ("dispatch.end", "exit_to_result_set")):
        if point in marks.at:
            row[label] = (marks.at[point] - ex) / 1e3
    return row


def profile_fanout(pkg: Any, workdir: Any, n: int, sleep_s: float, top: int = 20) -> str:
    """cProfile of every thread of a fresh Supervisor (its loop thread included) over an n-session fan-out
    with launch_many (or launch); the `top` entries by own time, as text."""
    import cProfile
    import io
    import pstats
    import threading

    profiles: list[cProfile.Profile] = []
    orig_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        pr = cProfile.Profile()
        pr.enable()
        try:
            orig_run(self)
        finally:
            pr.disable()
            profiles.append(pr)
    threading.Thread.run = run  # type: ignore[method-assign]
    try:
        rb = RalphBench(pkg, workdir)
    finally:
        threading.Thread.run = orig_run  # type: ignore[method-assign]
    caller = cProfile.Profile()
    caller.enable()
    try:
        res = rb.fanout(n, sleep_s, hasattr(rb.sup, "launch_many"))
    finally:
        caller.disable()
        rb.close()
    out = io.StringIO()
    out.write(f"fan-out of {n} ({res['api']}): all in scopes after {res['all_running_s']:.2f} s; CPU s during "
              f"it: {', '.join(f'{k} {v:.2f}' for k, v in res['fanout_cpu_s'].items())}\n")
    for label, prof in [("caller thread", caller)] + [(f"thread {i + 1}", p) for i, p in enumerate(profiles)]:
        out.write(f"\n-- {label}, by own time --\n")
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def probe_all(b: RalphBench, runs: int) -> dict[str, Any]:
    """The launch breakdown and the completion timeline (exits at once; lives 50 ms)."""
    return {"launch": probe_launches(b, runs), "completion, exits at once": probe_completion(b, runs),
            "completion, lives 50 ms": probe_completion(b, runs, 0.05)}


def fork_costs(b: RalphBench, runs: int, ballast_mb: int = 50) -> dict[str, Any]:
    """Median ms of the package's fork_gated (then aborted) vs os.posix_spawn of /bin/true, at this process's
    size and with `ballast_mb` more touched memory."""
    spawn = importlib.import_module("ralph_systemd.spawn")
    true = "/bin/true"
    out: dict[str, Any] = {}

    def measure(label: str) -> None:
        fk, ps = [], []
        for i in range(runs + 2):  # the first two warm up (page cache, allocator)
            fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            try:
                t = time.perf_counter()
                child = spawn.fork_gated(true, (true,), "/", dict(os.environ), fd)
                if i >= 2:
                    fk.append((time.perf_counter() - t) * 1e3)
                child.abort()
            finally:
                os.close(fd)
            t = time.perf_counter()
            pid = os.posix_spawn(true, [true], os.environ)
            if i >= 2:
                ps.append((time.perf_counter() - t) * 1e3)
            os.waitpid(pid, 0)
        out[label] = {"rss_mb": round(rss_mb(), 1), "fork_gated_ms": _med(fk), "posix_spawn_ms": _med(ps)}

    try:
        measure("as is")
        ballast = bytearray(ballast_mb * 1024 * 1024)
        for i in range(0, len(ballast), 4096):
            ballast[i] = 1
        measure(f"+{ballast_mb} MB")
        del ballast
    except TypeError as e:  # fork_gated's signature changed: say so rather than guess
        out["error"] = f"fork_gated signature: {e}"
    return out


def inotify_costs(runs: int) -> dict[str, float | None]:
    """Median ms to close an inotify fd without a watch, with one watch, and to remove a watch: closing an
    instance that has watches waits for an SRCU grace period in the kernel (fsnotify_destroy_group)."""
    import ctypes
    import ctypes.util
    import tempfile

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    bare, watched, rm = [], [], []
    with tempfile.NamedTemporaryFile() as f:
        target = f.name.encode()
        for _ in range(runs):
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            t = time.perf_counter()
            os.close(fd)
            bare.append((time.perf_counter() - t) * 1e3)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            wd = libc.inotify_add_watch(fd, target, 2)
            t = time.perf_counter()
            libc.inotify_rm_watch(fd, wd)
            rm.append((time.perf_counter() - t) * 1e3)
            libc.inotify_add_watch(fd, target, 2)
            t = time.perf_counter()
            os.close(fd)
            watched.append((time.perf_counter() - t) * 1e3)
    return {"close_without_watch_ms": _med(bare), "close_with_watch_ms": _med(watched), "rm_watch_ms": _med(rm)}


if __name__ == "__main__":  # pragma: no cover - a quick look: python -m bench.probe [RUNS]
    import json
    import tempfile
    from pathlib import Path

    import ralph_systemd

    with tempfile.TemporaryDirectory(prefix="ralph-probe-") as tmp:
        rb = RalphBench(ralph_systemd, Path(tmp))
        try:
            n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
            print(json.dumps({**probe_all(rb, n), "fork": fork_costs(rb, n), "inotify": inotify_costs(n)}, indent=1))
        finally:
            rb.close()
