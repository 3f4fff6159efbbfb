"""Where a ralph-systemd launch spends its milliseconds, measured without editing the package.

The probe wraps, in this process only and only while it runs, the functions a launch goes through (looked
up by name in whichever of supervisor.py / launch.py has them, so it fits today's code and an older copy):
resolve_executable, open_session_log, fork_gated, scope_properties, the bus's start_transient_scope and
drain (to see when JobRemoved arrives), GatedChild.release or open_gate + exec_failure (open the gate,
wait for the exec). gate_open_to_return: from opening the gate until launch() returned (newer code returns
before the exec is confirmed); gate_open_to_exec_confirmed: until the exec was. For each
launch it also reads the manager's ActiveEnterTimestampMonotonic over a second connection: the moment the
scope went active, i.e. the child was already inside the scope's cgroup.

It also times the fork itself against posix_spawn, at this process's size and with 50 MB more touched
memory, since fork copies page tables and posix_spawn (vfork-style) does not.
"""

from __future__ import annotations

import importlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from ralph_systemd.bench_ralph import RalphBench, mono_us, rss_mb

_FUNCS = ("resolve_executable", "open_session_log", "fork_gated", "scope_properties")


class _Recorder:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0 = 0.0
        self.unit = ""
        self.spans: dict[str, tuple[float, float]] = {}
        self.marks: dict[str, float] = {}

    def span(self, name: str, a: float, b: float) -> None:
        if name not in self.spans:  # the first call of the launch (retries would add, not replace)
            self.spans[name] = ((a - self.t0) * 1e3, (b - self.t0) * 1e3)

    def mark(self, name: str) -> None:
        if name not in self.marks:
            self.marks[name] = (time.perf_counter() - self.t0) * 1e3


def _wrap(rec: _Recorder, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            rec.span(name, t, time.perf_counter())
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def _drain_wrapper(rec: _Recorder, fn: Callable[..., Any]) -> Callable[..., Any]:
    def drain(self: Any) -> Any:
        events = fn(self)
        for ev in events:
            if getattr(ev, "kind", "") == "job-removed" and getattr(ev, "unit", None) == rec.unit:
                rec.mark("job_removed_seen")
        return events
    return drain


def _patch(rec: _Recorder) -> list[tuple[Any, str, Any]]:
    """Install the wrappers; return what to put back."""
    undo: list[tuple[Any, str, Any]] = []

    def put(obj: Any, attr: str, new: Any) -> None:
        undo.append((obj, attr, obj.__dict__[attr] if isinstance(obj, type) else getattr(obj, attr)))
        setattr(obj, attr, new)

    for modname in ("ralph_systemd.supervisor", "ralph_systemd.launch"):
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        for fname in _FUNCS:
            if hasattr(mod, fname):
                put(mod, fname, _wrap(rec, fname, getattr(mod, fname)))
    bus = importlib.import_module("ralph_systemd.bus")
    cls = bus.PystemdUserBus
    put(cls, "start_transient_scope", _wrap(rec, "start_transient_scope", cls.__dict__["start_transient_scope"]))
    put(cls, "drain", _drain_wrapper(rec, cls.__dict__["drain"]))
    spawn = importlib.import_module("ralph_systemd.spawn")
    for meth in ("release", "open_gate", "exec_failure"):  # release = open_gate + exec_failure, in older code
        if meth in spawn.GatedChild.__dict__:
            put(spawn.GatedChild, meth, _wrap(rec, meth, spawn.GatedChild.__dict__[meth]))
    return undo


def _unpatch(undo: list[tuple[Any, str, Any]]) -> None:
    for obj, attr, old in reversed(undo):
        setattr(obj, attr, old)


def _med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x == x]
    return round(statistics.median(xs), 3) if xs else None


def probe_launches(b: RalphBench, runs: int) -> dict[str, Any]:
    """`runs` instrumented launches of a `sleep 0.1` session; medians of each phase in ms."""
    bus_mod = importlib.import_module("ralph_systemd.bus")
    side = bus_mod.PystemdUserBus()  # our own connection: reads the manager's timestamps
    rec = _Recorder()
    rows: list[dict[str, float]] = []
    undo = _patch(rec)
    try:
        for _ in range(runs):
            rec.reset()
            spec = b.pkg.DispatchSpec(argv=["sleep", "0.1"], ticket=f"probe-{uuid.uuid4().hex[:12]}",
                                      cwd=b.workdir, log_dir=b.workdir / "logs")
            rec.unit = spec.unit
            t0_us = mono_us()
            rec.t0 = time.perf_counter()
            d = b.sup.launch(spec)
            total = (time.perf_counter() - rec.t0) * 1e3
            if d.pid is None:
                raise RuntimeError(f"probe dispatch did not start: {d.result}")
            st = side.unit_state(spec.unit)
            b.sup.wait(d, timeout=30)
            row = {"total": total}
            for name, (a, z) in rec.spans.items():
                row[name] = z - a
            stu = rec.spans.get("start_transient_scope")
            rel = rec.spans.get("release")  # older code: open the gate and wait for the exec, in one call
            if rel is None and "open_gate" in rec.spans:
                gate = rec.spans["open_gate"][0]
                rel = (gate, gate)  # newer code: launch() may return before the exec is confirmed
                if "exec_failure" in rec.spans:
                    row["gate_open_to_exec_confirmed"] = rec.spans["exec_failure"][1] - gate
            elif rel is not None:
                row["gate_open_to_exec_confirmed"] = rel[1] - rel[0]
            jr = rec.marks.get("job_removed_seen")
            active = (st.active_enter_monotonic_us - t0_us) / 1e3 if st.active_enter_monotonic_us else float("nan")
            row["active_since_call"] = active
            if stu:
                row["stu_call_to_active"] = active - stu[0]
                row["stu_reply_after_active"] = stu[1] - active
                row["before_stu"] = stu[0]
                if jr is not None:
                    row["stu_reply_to_jobremoved"] = jr - stu[1]
            if jr is not None:
                row["active_to_jobremoved_seen"] = jr - active
                if rel:
                    row["jobremoved_to_gate_open"] = rel[0] - jr
            if rel:
                row["gate_open_to_return"] = total - rel[0]
            rows.append(row)
    finally:
        _unpatch(undo)
        side.close()
    keys = sorted({k for r in rows for k in r})
    return {"runs": len(rows), "median_ms": {k: _med([r.get(k, float("nan")) for r in rows]) for k in keys}}


def probe_completion(b: RalphBench, runs: int, lifetime: float = 0.0) -> dict[str, Any]:
    """Where completion time goes, seen from outside: the session's exit (a pidfd, watched by a thread of
    ours), the kernel's `populated 0` on the scope's cgroup.events (inotify, same thread), the manager's
    InactiveEnterTimestampMonotonic (its PropertiesChanged, read over a second connection), and the
    moment sup.wait() returned. Medians in ms, each from the session's exit."""
    import select
    import threading

    bus_mod = importlib.import_module("ralph_systemd.bus")
    ino_mod = importlib.import_module("ralph_systemd.inotify")
    side = bus_mod.PystemdUserBus()
    rows: list[dict[str, float]] = []
    closes: list[float] = []
    orig_close = ino_mod.Inotify.__dict__.get("close")

    def timed_close(self: Any) -> None:
        t = time.perf_counter()
        try:
            orig_close(self)
        finally:
            closes.append((time.perf_counter() - t) * 1e3)
    if orig_close is not None:
        ino_mod.Inotify.close = timed_close
    try:
        for _ in range(runs):
            # The session waits for a line on a FIFO (so we watch it before it can exit), then exits at once or
            # after `lifetime`; a threaded supervisor would otherwise reap a `true` before we could look.
            fifo = str(b.workdir / f"go-{uuid.uuid4().hex[:8]}")
            os.mkfifo(fifo)
            script = 'read x < "$0"' + (f"; exec sleep {lifetime}" if lifetime else "")
            spec = b.pkg.DispatchSpec(argv=["/bin/sh", "-c", script, fifo], ticket=f"probe-{uuid.uuid4().hex[:12]}",
                                      cwd=b.workdir, log_dir=b.workdir / "logs")
            side.drain()
            seen: dict[str, int] = {}
            d = b.sup.launch(spec)
            if d.pid is None:
                raise RuntimeError(f"probe dispatch did not start: {d.result}")
            try:
                pidfd = os.pidfd_open(d.pid)
                cg = open(f"/proc/{d.pid}/cgroup").read()
            except (ProcessLookupError, FileNotFoundError):
                b.sup.wait(d, timeout=30)
                continue  # gone before we could watch it: no figure for this one
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
            closes.clear()
            th.start()
            with open(fifo, "w") as go:  # blocks until the session opened its end
                go.write("go\n")
            os.unlink(fifo)
            b.sup.wait(d, timeout=30)
            seen["done"] = mono_us()
            closed_ms = sum(closes)  # the supervisor's own inotify closes on the way to the result
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
                continue
            row = {"exit_to_done": (seen["done"] - ex) / 1e3, "supervisor_inotify_close": closed_ms}
            if "empty" in seen:
                row["exit_to_cgroup_empty_seen"] = (seen["empty"] - ex) / 1e3
            if inactive:
                row["exit_to_manager_inactive"] = (inactive - ex) / 1e3
                row["manager_inactive_to_done"] = (seen["done"] - inactive) / 1e3
            rows.append(row)
    finally:
        if orig_close is not None:
            ino_mod.Inotify.close = orig_close
        side.close()
    keys = sorted({k for r in rows for k in r})
    return {"runs": len(rows), "lifetime_s": lifetime,
            "median_ms": {k: _med([r.get(k, float("nan")) for r in rows]) for k in keys}}


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


if __name__ == "__main__":  # pragma: no cover - a quick look: python -m ralph_systemd.bench_probe [RUNS]
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
