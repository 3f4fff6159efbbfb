"""What the benchmark measures on a ralph-systemd Supervisor, written against the PUBLIC API only, so the
same code times today's package and an older copy side by side in one run (the older one in a worker
process: bench/worker.py).

Nothing here imports ralph_systemd or another bench module at module level: the package is passed in.
"""

from __future__ import annotations

import os
import resource
import select
import threading
import time
import types
import uuid
from pathlib import Path
from typing import Any

EPOCH = "session-start"


def mono_us() -> int:
    """CLOCK_MONOTONIC in µs: the clock of the manager's *TimestampMonotonic properties."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def wait_fifo_opened(fd: int, timeout: float = 10.0) -> float:
    """Block until a writer has opened and closed the FIFO (POLLHUP); return that moment (perf_counter)."""
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLHUP)
    if not p.poll(timeout * 1000):
        raise TimeoutError("the session never opened its FIFO")
    t = time.perf_counter()
    os.read(fd, 64)
    return t


def helpers_cpu() -> dict[str, float]:
    """CPU seconds used so far by this user's systemd manager and bus daemon (the other two processes every
    launch goes through), from /proc; empty when they cannot be read."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    uid = os.getuid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        if comm in ("systemd", "dbus-daemon", "dbus-broker"):
            f = stat[stat.rindex(")") + 2:].split()
            key = "manager" if comm == "systemd" else "bus daemon"
            out[key] = out.get(key, 0.0) + (int(f[11]) + int(f[12])) / tick
    return out


def _exited(pid: int) -> bool:
    """A zombie (or gone): its /proc/PID/cgroup no longer names the cgroup it ran in."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].split()[0] in ("Z", "X")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _watch(fifo_fd: int, pidfd: int | None, seen: dict[str, float]) -> None:
    """Record (perf_counter) when the FIFO's writer has come and gone ("run") and when the session exited
    ("exit", its pidfd became readable)."""
    p = select.poll()
    p.register(fifo_fd, select.POLLIN | select.POLLHUP)
    if pidfd is not None:
        p.register(pidfd, select.POLLIN)
    deadline = time.monotonic() + 20
    while ("run" not in seen or (pidfd is not None and "exit" not in seen)) and time.monotonic() < deadline:
        for fd, _ev in p.poll(1000):
            now = time.perf_counter()
            if fd == fifo_fd and "run" not in seen:
                seen["run"] = now
                p.unregister(fifo_fd)
            elif fd == pidfd and "exit" not in seen:
                seen["exit"] = now
                p.unregister(pidfd)


class RalphBench:
    """Launch/completion, fan-out and waiting cost for one copy of the package."""

    def __init__(self, pkg: types.ModuleType, workdir: Path) -> None:
        self.pkg = pkg
        self.workdir = workdir
        self.sup: Any = pkg.Supervisor()
        self.touch = "/usr/bin/touch" if os.path.exists("/usr/bin/touch") else "touch"
        self.version = getattr(pkg, "__file__", "?")

    def _spec(self, argv: list[str], ticket: str | None = None) -> Any:
        return self.pkg.DispatchSpec(argv=argv, ticket=ticket or f"bench-{uuid.uuid4().hex[:12]}",
                                     cwd=self.workdir, log_dir=self.workdir / "logs")

    def one(self, lifetime: float = 0.0) -> dict[str, float]:
        """Launch one session that opens a FIFO, lives `lifetime` s and exits. launch: from the call until the
        session opened the FIFO (running, inside its scope); completion: from its exit until sup.wait()
        returned the result (the scope has ended, the unit name is free again). The caller is in
        sup.wait() the whole time, as a caller waiting for its sessions is; a thread of ours watches the
        FIFO and a pidfd of the session."""
        path = str(self.workdir / f"fifo-{uuid.uuid4().hex[:8]}")
        os.mkfifo(path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        argv = [self.touch, path] if not lifetime else ["/bin/sh", "-c", f'touch "$0"; exec sleep {lifetime}', path]
        try:
            spec = self._spec(argv)
            t0 = time.perf_counter()
            d = self.sup.launch(spec)
            t_launched = time.perf_counter()
            if d.pid is None:
                raise RuntimeError(f"benchmark dispatch did not start: {d.result}")
            try:
                pidfd: int | None = os.pidfd_open(d.pid)
            except ProcessLookupError:  # already exited and reaped (a threaded supervisor can be that quick)
                pidfd = None
            seen: dict[str, float] = {}
            watcher = threading.Thread(target=_watch, args=(fd, pidfd, seen), daemon=True)
            watcher.start()
            try:
                r = self.sup.wait(d, timeout=30)
                t_done = time.perf_counter()
            finally:
                watcher.join(10)
                if pidfd is not None:
                    os.close(pidfd)
            if r.status is not self.pkg.Status.COMPLETED:
                raise RuntimeError(f"benchmark dispatch did not complete: {r}")
            if "run" not in seen:
                raise RuntimeError("the session never opened its FIFO")
            t_exit = seen.get("exit", seen["run"])
            return {"launch": (seen["run"] - t0) * 1e3, "call": (t_launched - t0) * 1e3,
                    "completion": (t_done - t_exit) * 1e3}
        finally:
            os.close(fd)
            os.unlink(path)

    def fanout(self, n: int, sleep_s: float, use_many: bool) -> dict[str, Any]:
        """Launch n sessions of `sleep sleep_s`; time until all run inside their scopes (/proc/PID/cgroup);
        then the caller-thread and process CPU while they sleep, and RSS; then wait for all."""
        from bench.stats import in_unit  # the bench's own pure helper, whatever package is measured
        specs = [self._spec(["sleep", str(sleep_s)], ticket=f"fan-{i}-{uuid.uuid4().hex[:6]}") for i in range(n)]
        helpers0, own0 = helpers_cpu(), time.process_time()
        t0 = time.perf_counter()
        if use_many:
            ds = list(self.sup.launch_many(specs))
        else:
            ds = [self.sup.launch(s) for s in specs]
        t_returned = time.perf_counter()
        failed = [d for d in ds if d.pid is None]
        pending = {d.pid: d.unit for d in ds if d.pid is not None}
        exited = 0  # ended before we looked (a slow fan-out on a loaded machine): not checked
        while pending:  # launch returns with the child in its scope; launch_many may not: look
            for pid, unit in list(pending.items()):
                try:
                    if in_unit(Path(f"/proc/{pid}/cgroup").read_text(), unit):
                        del pending[pid]
                    elif _exited(pid):
                        del pending[pid]
                        exited += 1
                except OSError:
                    del pending[pid]
                    exited += 1
            if pending:
                if time.perf_counter() - t0 > 60:
                    raise RuntimeError(f"{len(pending)} sessions not in their scopes after 60 s")
                time.sleep(0.001)
        t_all = time.perf_counter()
        own1, helpers1 = time.process_time(), helpers_cpu()
        fan_cpu = {"supervisor": own1 - own0, **{k: helpers1[k] - helpers0.get(k, 0.0) for k in helpers1}}
        # waiting cost: while every session sleeps, the caller blocks in wait_all with a timeout
        window = max(0.5, sleep_s - (t_all - t0) - 1.0)
        rss = rss_mb()
        th0, pr0, w0 = time.thread_time(), time.process_time(), time.perf_counter()
        try:
            self.sup.wait_all(ds, timeout=window)
        except TimeoutError:
            pass
        th1, pr1, w1 = time.thread_time(), time.process_time(), time.perf_counter()
        results = self.sup.wait_all(ds, timeout=sleep_s + 60)
        t_end = time.perf_counter()
        ok = sum(1 for r in results if r.status is self.pkg.Status.COMPLETED)
        return {"n": n, "api": "launch_many" if use_many else "launch", "failed": len(failed), "exited_early": exited,
                "returned_s": t_returned - t0, "all_running_s": t_all - t0,
                "window_s": w1 - w0, "caller_cpu_s": th1 - th0, "process_cpu_s": pr1 - pr0,
                "rss_mb": rss, "rss_max_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "completed": ok, "all_done_s": t_end - t0, "fanout_cpu_s": fan_cpu}

    def close(self) -> None:
        self.sup.close()
