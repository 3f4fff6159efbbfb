"""Launch and completion latency of ralph-systemd, with the manager's own floor beside it, in one run.

    ./dev bench [--quick] [--json] [--baseline OLD_TREE] [--favordynmods keep|both|on|off]
    (or: python -m bench ..., where a user manager is reachable)

Contenders, interleaved round-robin (each iteration runs every contender once, in a rotating order, so
machine noise hits all alike):
- floor: a bare client forks a child blocked on a pipe, calls StartTransientUnit with PIDs=[child] and
  nothing else (through ralph_systemd.bus), and reads the scope's ActiveEnterTimestampMonotonic: the
  manager's own time from our call to "scope active". Releasing the child (it writes its CLOCK_MONOTONIC
  and exits) gives the manager's notification floor: InactiveEnterTimestampMonotonic minus that exit.
- ralph-systemd (this tree) and, with --baseline, an older copy in a worker process: Supervisor.launch of
  a session that opens a FIFO; launch = call -> the session opened the FIFO (running, in its scope);
  completion = its exit (our pidfd) -> sup.wait() returned. Once for a session that exits at once, once
  for one that lives 50 ms (the kernel sends cgroup.events at most every 10 ms).
- `systemd-run --user --scope`, and a bare subprocess.Popen (no scope at all).

Two regimes: back to back, and with 250 ms of idle before each call: the kernel's cgroup migration waits
for an RCU grace period unless another migration happened moments before (see host.py), so the
floor is bimodal. With --favordynmods both (root on the host, or a `bench.host serve` process) the run is
repeated with the option on and off, and the previous state is restored on every exit path.

Then: fan-out (N sessions launched; time until all run inside their scopes, per-launch and launch_many
when the package has it), the waiting cost while they sleep (caller-thread and process CPU, RSS), and an
instrumented breakdown of one launch (bench/probe.py). Figures are printed (or --json), never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ralph_systemd
from bench import host as bench_host
from bench.probe import fork_costs, inotify_costs, probe_all, profile_fanout
from bench.floor import Floor
from bench.ralph import RalphBench, wait_fifo_opened
from bench.worker import Worker
from bench.stats import (
    Summary,
    TargetLine,
    cell,
    completion_targets,
    fanout_target,
    favordynmods_on,
    launch_targets,
    ratio,
    render_table,
    summarize,
    waiting_targets,
)

IDLE_GAP_S = 0.25
Measure = Callable[[], dict[str, float]]


class Plain:
    """systemd-run --user --scope, and bare Popen: the same FIFO-opening session."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.touch = "/usr/bin/touch" if os.path.exists("/usr/bin/touch") else "touch"

    def _run(self, argv_prefix: list[str]) -> dict[str, float]:
        path = str(self.workdir / f"fifo-{uuid.uuid4().hex[:8]}")
        os.mkfifo(path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            t0 = time.perf_counter()
            p = subprocess.Popen([*argv_prefix, self.touch, path])
            t_run = wait_fifo_opened(fd)
            rc = p.wait()
            if rc != 0:
                raise RuntimeError(f"{argv_prefix[:1] or ['touch']} exited {rc}")
            return {"launch": (t_run - t0) * 1e3}
        finally:
            os.close(fd)
            os.unlink(path)

    def systemd_run(self) -> dict[str, float]:
        return self._run(["systemd-run", "--user", "--scope", "--quiet", "--collect",
                          f"--unit=bench-sr-{uuid.uuid4().hex[:12]}", "--"])

    def popen(self) -> dict[str, float]:
        return self._run([])

    @staticmethod
    def fork_exit(rounds: int = 20) -> dict[str, float]:
        """Mean ms of os.fork + _exit + waitpid, and of starting + joining a thread: what favordynmods makes
        dearer (forks, exits and new threads take the cgroup rwsem's reader side)."""
        t = time.perf_counter()
        for _ in range(rounds):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                os._exit(0)
            os.waitpid(pid, 0)
        fork_ms = (time.perf_counter() - t) * 1e3 / rounds
        t = time.perf_counter()
        for _ in range(rounds):
            th = threading.Thread(target=int)
            th.start()
            th.join()
        return {"fork": fork_ms, "thread": (time.perf_counter() - t) * 1e3 / rounds}


# -- the run --------------------------------------------------------------------------------------------------

Key = tuple[str, str, str, str]  # (phase, regime, contender, metric)


def _phases(mode: str, now_on: bool | None) -> list[bool | None]:
    if mode == "keep" or now_on is None:
        return [now_on]
    if mode == "both":
        return [False, True]
    return [mode == "on"]


def _can_remount_here() -> bool:
    """Root in the host's cgroup namespace: the only place a remount of cgroup2 changes the option."""
    try:
        return os.geteuid() == 0 and os.stat("/proc/self/ns/cgroup").st_ino == os.stat("/proc/1/ns/cgroup").st_ino
    except OSError:
        return False


def _make_toggle(args: argparse.Namespace) -> bench_host.Toggle | None:
    if args.favordynmods == "keep":
        return None
    if args.toggle_dir:
        return bench_host.RemoteToggle(args.toggle_dir)
    return bench_host.LocalToggle()


def _fd_label(on: bool | None) -> str:
    return {True: "favordynmods on", False: "favordynmods off", None: "no cgroup2"}[on]


def run(args: argparse.Namespace) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "kernel": platform.release(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
        "package": ralph_systemd.__file__, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "favordynmods_at_start": favordynmods_on(Path("/proc/mounts").read_text()),
        "iterations": {"back-to-back": args.iterations, "idle": args.idle_iterations}, "idle_gap_s": IDLE_GAP_S,
    }
    samples: dict[Key, list[float]] = defaultdict(list)
    extra: dict[str, Any] = {"fanout": [], "probe": {}, "fork": {}, "inotify": {}}
    toggle = _make_toggle(args)
    with tempfile.TemporaryDirectory(prefix="ralph-bench-") as tmp:
        work = Path(tmp)
        floor, plain = Floor(work), Plain(work)
        rb = RalphBench(ralph_systemd, work / "cur")
        (work / "cur").mkdir()
        base: Worker | None = None
        try:
            if args.baseline:
                (work / "old").mkdir()
                base = Worker(args.baseline, work / "old")
                meta["baseline"] = base.package
            contenders: list[tuple[str, Measure]] = [
                ("floor (bare StartTransientUnit)", floor.one),
                ("floor with ralph's properties", lambda: floor.one(full=True)),
                ("ralph-systemd", lambda: rb.one(0.0)),
                ("ralph-systemd, lives 50 ms", lambda: rb.one(0.05)),
            ]
            if base is not None:
                b = base
                contenders += [("baseline ralph-systemd", lambda: b.one(0.0)),
                               ("baseline, lives 50 ms", lambda: b.one(0.05))]
            contenders += [("systemd-run --user --scope", plain.systemd_run), ("subprocess.Popen", plain.popen),
                           ("fork + exit + wait; thread start + join", plain.fork_exit)]
            meta["contenders"] = [c for c, _ in contenders]
            phases = _phases(args.favordynmods, meta["favordynmods_at_start"])
            meta["phases"] = []
            for pi, want in enumerate(phases):
                if toggle is not None and want is not None:
                    got = toggle.set(want)
                    if got != want:
                        raise RuntimeError(f"asked favordynmods {want}, /proc/mounts says {got}")
                seen = favordynmods_on(Path("/proc/mounts").read_text())
                phase = _fd_label(seen)
                meta["phases"].append(phase)
                for _name, fn in contenders:  # warm-up: imports, page cache, the manager's caches
                    for _ in range(1 if args.quick else 3):
                        fn()
                for regime, iters, gap in (("back-to-back", args.iterations, 0.0),
                                           (f"idle {int(IDLE_GAP_S * 1000)} ms", args.idle_iterations, IDLE_GAP_S)):
                    for i in range(iters):
                        k = i % len(contenders)
                        for name, fn in contenders[k:] + contenders[:k]:
                            if gap:
                                time.sleep(gap)
                            for metric, v in fn().items():
                                samples[(phase, regime, name, metric)].append(v)
                if pi == 0:
                    _extras(args, rb, base, extra, phase)
        finally:
            try:
                if toggle is not None:
                    toggle.close()
            finally:
                if base is not None:
                    base.close()
                rb.close()
                floor.close()
    meta["favordynmods_at_end"] = favordynmods_on(Path("/proc/mounts").read_text())
    meta["loadavg_end"] = os.getloadavg()
    return {"meta": meta, "samples": samples, **extra}


def _extras(args: argparse.Namespace, rb: RalphBench, base: Worker | None, extra: dict[str, Any], phase: str) -> None:
    """Fan-out + waiting cost, and the launch breakdown, for this tree and the baseline."""
    apis = [False] + ([True] if hasattr(rb.sup, "launch_many") else [])
    for many in apis:
        extra["fanout"].append({"code": "current", "phase": phase, **rb.fanout(args.fanout, args.sleep, many)})
    if base is not None:
        for many in [False] + ([True] if base.has_launch_many else []):
            extra["fanout"].append({"code": "baseline", "phase": phase,
                                    **base.call(op="fanout", n=args.fanout, sleep=args.sleep, many=many)})
    extra["probe"]["current"] = probe_all(rb, args.probe_runs)
    if base is not None:
        extra["probe"]["baseline"] = base.call(op="probe", runs=args.probe_runs)
    extra["fork"] = fork_costs(rb, args.probe_runs)
    extra["inotify"] = inotify_costs(args.probe_runs)


# -- the report -----------------------------------------------------------------------------------------------

METRIC_LABEL = {"launch": "launch", "completion": "completion", "client": "call -> JobRemoved seen",
                "notify": "notification floor (exit -> inactive)", "reply": "StartTransientUnit reply",
                "call": "launch() returned", "fork": "fork, mean of 20", "thread": "thread, mean of 20"}


def report(res: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    samples: dict[Key, list[float]] = res["samples"]
    meta = res["meta"]
    cols = sorted({(p, r) for p, r, _, _ in samples}, key=lambda pr: (meta["phases"].index(pr[0]), "idle" in pr[1]))
    rowkeys: list[tuple[str, str]] = []
    for c in meta["contenders"]:
        for m in ("launch", "reply", "client", "call", "completion", "notify", "fork", "thread"):
            if any((p, r, c, m) in samples for p, r in cols) and (c, m) not in rowkeys:
                rowkeys.append((c, m))
    summ = {k: summarize(v) for k, v in samples.items()}
    headers = ["ms, median / p90", *[f"{p}, {r}" for p, r in cols]]
    rows = [[f"{c}: {METRIC_LABEL.get(m, m)}", *[cell(summ.get((p, r, c, m))) for p, r in cols]] for c, m in rowkeys]
    out = [f"ralph-systemd benchmark, {meta['started_utc']}; kernel {meta['kernel']}, {meta['cpus']} CPUs, load "
           f"{' '.join(f'{x:.2f}' for x in meta['loadavg_start'])} at start, "
           f"{' '.join(f'{x:.2f}' for x in meta['loadavg_end'])} at end",
           f"favordynmods at start: {meta['favordynmods_at_start']}, at end: {meta['favordynmods_at_end']}; "
           f"iterations per regime: {meta['iterations']}",
           "", render_table(headers, rows), ""]
    derived: list[dict[str, Any]] = []
    targets: list[TargetLine] = []
    for p, r in cols:
        def g(c: str, m: str) -> Summary | None:
            return summ.get((p, r, c, m))
        fl, ra, sr = g("floor (bare StartTransientUnit)", "launch"), g("ralph-systemd", "launch"), \
            g("systemd-run --user --scope", "launch")
        bl = g("baseline ralph-systemd", "launch")
        over = None if fl is None or ra is None else ra.median - fl.median
        vs_floor, vs_sr, vs_base = ratio(ra, fl), ratio(sr, ra), ratio(bl, ra)
        derived.append({"phase": p, "regime": r, "ralph_over_floor_ms": over, "ralph_vs_floor": vs_floor,
                        "systemd_run_vs_ralph": vs_sr, "baseline_vs_current": vs_base})
        line = (f"{p}, {r}: ralph {cell(ra)} = floor + {_f(over)} ms ({_x(vs_floor)} the floor); "
                f"systemd-run takes {_x(vs_sr)} ralph's time")
        if bl is not None:
            line += f"; baseline {cell(bl)} ({_x(vs_base)} the current)"
        out.append(line)
        tl = launch_targets(ra, fl, sr) + completion_targets(
            g("ralph-systemd, lives 50 ms", "completion"), g("ralph-systemd", "completion"),
            g("floor (bare StartTransientUnit)", "notify"))
        out += [f"  [{p}, {r}]{t.render()[1:]}" for t in tl]
        targets += tl
    if res["fanout"]:
        out += ["", render_table(
            ["fan-out + waiting", "n", "returned s", "all in scopes s", "CPU s: ours / manager / bus",
             "caller CPU % core", "process CPU % core", "RSS MB", "completed"],
            [[f"{f['code']} {f['api']}", str(f["n"]), f"{f['returned_s']:.2f}", f"{f['all_running_s']:.2f}",
              " / ".join(f"{f['fanout_cpu_s'].get(k, float('nan')):.2f}" for k in ("supervisor", "manager", "bus daemon")),
              f"{100 * f['caller_cpu_s'] / f['window_s']:.3f}", f"{100 * f['process_cpu_s'] / f['window_s']:.3f}",
              f"{f['rss_mb']:.1f}", f"{f['completed']}/{f['n']}"] for f in res["fanout"]])]
        late = sum(f.get("exited_early", 0) for f in res["fanout"])
        if late:
            out.append(f"  ({late} session(s) had ended before their scope was checked: the fan-out took longer "
                       "than they sleep; give --sleep more)")
        for f in res["fanout"]:
            if f["code"] == "current":
                out.append(f"  [{f['api']}]{fanout_target(f['n'], f['all_running_s']).render()[1:]}")
                for t in waiting_targets(f["caller_cpu_s"] / f["window_s"], f["rss_mb"], f["n"]):
                    out.append(f"  [{f['api']}]{t.render()[1:]}")
    for code, probes in res["probe"].items():
        for what, pr in probes.items():
            med = pr["median_ms"]
            head = (f"{what} breakdown ({code}, {pr['runs']} runs, medians in ms" +
                    ("; 'active' = the manager's ActiveEnterTimestamp: the child is inside the scope's cgroup by then)"
                     if what == "launch" else ", from the session's exit)"))
            out += ["", head + ":", "  " + ", ".join(f"{k} {v}" for k, v in med.items() if v is not None)]
    if res["fork"]:
        out += ["", "fork of the session: " + "; ".join(
            f"{k}: fork_gated {v['fork_gated_ms']} ms, posix_spawn {v['posix_spawn_ms']} ms at RSS {v['rss_mb']} MB"
            if isinstance(v, dict) else f"{k}: {v}" for k, v in res["fork"].items())]
    if res["inotify"]:
        out.append("inotify: " + ", ".join(f"{k} {v}" for k, v in res["inotify"].items()))
    js = {"meta": meta, "summaries": [{"phase": p, "regime": r, "contender": c, "metric": m,
                                       **(s.as_dict() if s else {})} for (p, r, c, m), s in summ.items()],
          "derived": derived, "targets": [t.__dict__ for t in targets], "fanout": res["fanout"],
          "probe": res["probe"], "fork": res["fork"], "inotify": res["inotify"]}
    text = "\n".join(out)
    js["table"] = text  # the same report as text, so a --json run needs no second run for the table
    return text, js


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _scale_main(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from bench.scale import render_scale, run_scale, to_json

    try:
        ns = [int(x) for x in args.scale.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--scale {args.scale!r}: give numbers separated by commas, e.g. 1,64,256,1024,4096")
    if not ns or min(ns) <= 0 or args.scale_extra <= 0:
        ap.error("--scale needs numbers > 0 (e.g. 1,64,256,1024,4096) and --scale-extra a number > 0")
    with tempfile.TemporaryDirectory(prefix="ralph-scale-") as tmp:
        try:
            res = run_scale(ralph_systemd, Path(tmp), ns, args.scale_extra)
        except (RuntimeError, OSError) as e:
            print(f"bench: {e}", file=sys.stderr)
            return 1
    print(json.dumps(to_json(res), indent=1, default=str) if args.json else render_scale(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a ~20 s run (fewer iterations, 64-session fan-out)")
    ap.add_argument("--iterations", type=int, help="back-to-back iterations per phase (default 60; quick 10)")
    ap.add_argument("--idle-iterations", type=int, help="iterations with 250 ms idle before each call "
                                                         "(default 15; quick 3)")
    ap.add_argument("--fanout", type=int, help="sessions in the fan-out (default 256; quick 64)")
    ap.add_argument("--sleep", type=float, help="how long fan-out sessions sleep, s (default 10; quick 3)")
    ap.add_argument("--probe-runs", type=int, help="instrumented launches (default 30; quick 6)")
    ap.add_argument("--baseline", metavar="TREE", help="a directory holding an older `ralph_systemd` package: "
                    "measured in a worker process, interleaved with this one")
    ap.add_argument("--favordynmods", choices=("keep", "both", "on", "off"), default="keep",
                    help="keep (default: report the host's setting), or run with it off and on / on / off and "
                         "restore it afterwards (host-wide: needs root on the host or --toggle-dir)")
    ap.add_argument("--toggle-dir", help="FIFO directory of a `python -m bench.host serve` (host)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--profile-fanout", type=int, metavar="N", help="only profile (cProfile, every thread) a "
                    "fan-out of N sessions with this tree's Supervisor, print where its CPU goes, and stop")
    ap.add_argument("--scale", metavar="N,N,...", help="only the scale curve (bench/scale.py): for each N live "
                    "dispatches, launch, CPU, RSS, one more dispatch, stop_all, beside the manager's floor")
    ap.add_argument("--scale-extra", type=int, default=5, metavar="K",
                    help="with --scale: dispatches launched one at a time while N are live (default 5)")
    args = ap.parse_args(argv)
    if args.scale is not None:
        return _scale_main(ap, args)
    q = args.quick
    for name, normal, quick in (("iterations", 60, 10), ("idle_iterations", 15, 3), ("fanout", 256, 64),
                                ("sleep", 10.0, 3.0), ("probe_runs", 30, 6)):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else normal)
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0")
    if args.profile_fanout is not None:
        if args.profile_fanout <= 0:
            ap.error("--profile-fanout must be > 0")
        with tempfile.TemporaryDirectory(prefix="ralph-bench-") as tmp:
            print(profile_fanout(ralph_systemd, Path(tmp), args.profile_fanout, 3.0))
        return 0
    if args.toggle_dir and args.favordynmods == "keep":
        ap.error("--toggle-dir is only for --favordynmods both|on|off")
    if args.favordynmods != "keep" and not args.toggle_dir and not _can_remount_here():
        ap.error("--favordynmods both|on|off needs root in the host's cgroup namespace (the option is "
                 "host-wide), or --toggle-dir of a `python -m bench.host serve` run as root on "
                 "the host")
    if args.baseline and not (Path(args.baseline) / "ralph_systemd" / "__init__.py").is_file():
        ap.error(f"--baseline {args.baseline}: no ralph_systemd/__init__.py in it; give the directory that "
                 "holds the old package (e.g. an exported checkout)")
    try:
        res = run(args)
    except (RuntimeError, OSError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    text, js = report(res)
    if args.json:
        print(json.dumps(js, indent=1, default=str))
    else:
        print(text)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
