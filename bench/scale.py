"""The scale curve (issue 21): what a dispatch costs as the number of live ones grows, with the manager's floor.

    ./dev bench --scale 1,64,256,1024,4096 [--json] [--scale-extra K]
    (or: python -m bench --scale ..., where a user manager is reachable)

For each N, in one run and one process:
- ralph-systemd: launch_many of N sleeping sessions; the time until all run inside their scopes (launch_many
  returns then; each is checked once in /proc afterwards); the CPU of this process, of the user manager and
  of the bus daemon per dispatch; RSS; the loop's work (turns and deadline computations, counted at the
  package's instrumentation points) per dispatch; then K more dispatches, one at a time, while the N are
  live: their launch and completion latency and the loop work each costs (per-event work that grows with N
  shows here), and the probe's breakdown of one such launch; then stop_all until every result is in, with
  its CPU (stdin is /dev/null, the default: the ladder starts with SIGTERM);
- the manager's floor: a bare client (bench/floor.py) puts N `sleep` children in bare scopes (PIDs only), back
  to back, until every JobRemoved is seen; its CPU and the manager's and the bus daemon's per scope; K more
  scopes one at a time while the N are live (the manager's call -> active); StopUnit for all until every
  scope is gone.
Figures are printed (or --json), never asserted. Medians and p90 where there are samples.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from bench.floor import Floor
from bench.probe import counting, probe_launches
from bench.ralph import RalphBench, helpers_cpu, rss_mb
from bench.stats import in_unit, render_table, summarize

SESSION_TIMEOUT_S = 1800  # bounds a session the bench could not stop


def _cpu() -> dict[str, float]:
    return {"ours": time.process_time(), **helpers_cpu()}


def _per_dispatch_ms(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {k: (after[k] - before.get(k, 0.0)) * 1e3 / n for k in after}


def ralph_point(rb: RalphBench, n: int, extra: int) -> dict[str, Any]:
    """N live dispatches of this tree's Supervisor: launch, K more while they live, stop_all."""
    pkg = rb.pkg
    tag = uuid.uuid4().hex[:6]
    specs = [pkg.DispatchSpec(argv=["sleep", "3600"], ticket=f"scale-{n}-{i}-{tag}", cwd=rb.workdir,
                              log_dir=rb.workdir / "logs", timeout=SESSION_TIMEOUT_S)
             for i in range(n)]
    with counting(pkg) as work:
        c0, t0 = _cpu(), time.perf_counter()
        ds = rb.sup.launch_many(specs)
        all_running = time.perf_counter() - t0
        c1 = _cpu()
        launch_work = dict(work)
    failed = sum(1 for d in ds if d.pid is None)
    elsewhere = 0
    for d in ds:
        if d.pid is not None:
            try:
                elsewhere += not in_unit(Path(f"/proc/{d.pid}/cgroup").read_text(), d.unit)
            except OSError:
                elsewhere += 1
    rss = rss_mb()
    with counting(pkg) as work:
        one = [rb.one(0.0) for _ in range(extra)]
        one_work = dict(work)
    breakdown = probe_launches(rb, extra)["median_ms"]  # where one more launch's time goes, N live
    c2, t2 = _cpu(), time.perf_counter()
    rb.sup.stop_all()
    results = rb.sup.wait_all(ds, timeout=600)
    stop_s = time.perf_counter() - t2
    c3 = _cpu()
    stopped = sum(1 for r in results if r.status is pkg.Status.STOPPED)
    turns, deadlines = launch_work.get("loop.turn", 0), launch_work.get("loop.deadline", 0)
    return {
        "n": n, "failed": failed, "not_in_scope": elsewhere, "stopped": stopped,
        "all_running_s": all_running, "launch_cpu_ms_per_dispatch": _per_dispatch_ms(c0, c1, n),
        "rss_mb": rss,
        "loop_turns_per_dispatch": turns / n, "deadline_computations": deadlines,
        "deadline_computations_per_dispatch": deadlines / n,
        "deadline_computations_per_turn": deadlines / turns if turns else None,
        "one_more": {"launch": summarize(r["launch"] for r in one), "completion": summarize(r["completion"] for r in one),
                     "deadline_computations_per_dispatch": one_work.get("loop.deadline", 0) / max(extra, 1),
                     "turns_per_dispatch": one_work.get("loop.turn", 0) / max(extra, 1), "breakdown_ms": breakdown},
        "stop_all_s": stop_s, "stop_cpu_ms_per_dispatch": _per_dispatch_ms(c2, c3, n),
    }


def floor_point(floor: Floor, n: int, extra: int) -> dict[str, Any]:
    """The bare client: N scopes of sleeping children, K more while they live, StopUnit for all."""
    c0 = _cpu()
    kids, all_running = floor.fanout(n)
    c1 = _cpu()
    one = [floor.one() for _ in range(extra)]
    c2 = _cpu()
    stop_s = floor.stop_all(kids)
    c3 = _cpu()
    return {"n": n, "all_running_s": all_running, "launch_cpu_ms_per_dispatch": _per_dispatch_ms(c0, c1, n),
            "one_more": {"launch": summarize(r["launch"] for r in one), "notify": summarize(r["notify"] for r in one)},
            "stop_all_s": stop_s, "stop_cpu_ms_per_dispatch": _per_dispatch_ms(c2, c3, n)}


def run_scale(pkg: Any, workdir: Path, ns: list[int], extra: int) -> dict[str, Any]:
    import os
    import platform

    meta = {"kernel": platform.release(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
            "package": pkg.__file__, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ns": ns, "extra": extra}
    points: list[dict[str, Any]] = []
    (workdir / "ralph").mkdir()
    rb = RalphBench(pkg, workdir / "ralph")
    floor = Floor(workdir)
    try:
        for _ in range(2):  # warm-up: imports, page cache, the manager's caches
            rb.one(0.0)
            floor.one()
        for n in ns:  # ralph then floor at each N: the same machine state for both, as far as it goes
            points.append({"ralph": ralph_point(rb, n, extra), "floor": floor_point(floor, n, extra)})
    finally:
        floor.close()
        rb.close()
    meta["loadavg_end"] = os.getloadavg()
    return {"meta": meta, "points": points}


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _cpu_cell(c: dict[str, float]) -> str:
    return " / ".join(_f(c.get(k)) for k in ("ours", "manager", "bus daemon"))


def render_scale(res: dict[str, Any]) -> str:
    meta = res["meta"]
    out = [f"ralph-systemd scale curve, {meta['started_utc']}; kernel {meta['kernel']}, {meta['cpus']} CPUs, load "
           f"{' '.join(f'{x:.2f}' for x in meta['loadavg_start'])} at start, "
           f"{' '.join(f'{x:.2f}' for x in meta['loadavg_end'])} at end; {meta['extra']} more dispatches at each N",
           ""]
    rows, rows2 = [], []
    for p in res["points"]:
        r, f = p["ralph"], p["floor"]
        n = str(r["n"])
        ok = f"{r['n'] - r['failed']}/{r['n']}" + (f", {r['not_in_scope']} not in scope" if r["not_in_scope"] else "")
        rows.append([n, f"{r['all_running_s']:.2f} / {f['all_running_s']:.2f}",
                     _cpu_cell(r["launch_cpu_ms_per_dispatch"]), _cpu_cell(f["launch_cpu_ms_per_dispatch"]),
                     f"{r['rss_mb']:.1f}", ok])
        rl, rc, fl, fn = (r["one_more"]["launch"], r["one_more"]["completion"], f["one_more"]["launch"],
                          f["one_more"]["notify"])
        rows2.append([n, f"{_m(rl)} / {_m(fl)}", f"{_m(rc)} / {_m(fn)}",
                      f"{r['stop_all_s']:.2f} / {f['stop_all_s']:.2f}",
                      _cpu_cell(r["stop_cpu_ms_per_dispatch"]), _cpu_cell(f["stop_cpu_ms_per_dispatch"]),
                      f"{r['stopped']}/{r['n']}"])
    out.append(render_table(["N live", "all in scopes s: ralph / floor", "launch CPU ms per dispatch, ralph: ours / "
                             "manager / bus", "floor: client / manager / bus", "RSS MB", "launched"], rows))
    out += ["", render_table(["N live", "one more: launch ms ralph / floor (median, p90)",
                              "one more: completion ms ralph / floor notify", "stop all s: ralph / floor",
                              "stop CPU ms per dispatch, ralph: ours / manager / bus", "floor: client / manager / bus",
                              "stopped"], rows2)]
    out += ["", render_table(["N live", "loop turns per dispatch (fan-out)", "deadline computations (fan-out)",
                              "per dispatch", "per turn", "one more: deadline computations", "one more: turns"],
                             [[str(p["ralph"]["n"]), f"{p['ralph']['loop_turns_per_dispatch']:.1f}",
                               str(p["ralph"]["deadline_computations"]),
                               f"{p['ralph']['deadline_computations_per_dispatch']:.1f}",
                               _f(p["ralph"]["deadline_computations_per_turn"], ".1f"),
                               f"{p['ralph']['one_more']['deadline_computations_per_dispatch']:.0f}",
                               f"{p['ralph']['one_more']['turns_per_dispatch']:.1f}"] for p in res["points"]])]
    out += ["", "one more launch while N are live, where its time goes (medians, ms; bench/probe.py):"]
    for p in res["points"]:
        b = p["ralph"]["one_more"]["breakdown_ms"]
        out.append(f"  N={p['ralph']['n']}: " + ", ".join(f"{k} {v}" for k, v in b.items() if v is not None))
    return "\n".join(out)


def _m(s: Any) -> str:
    return "n/a" if s is None else f"{s.median:.2f}, {s.p90:.2f}"


def to_json(res: dict[str, Any]) -> dict[str, Any]:
    """The result with every Summary as a dict."""
    def conv(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, list):
            return [conv(v) for v in x]
        if hasattr(x, "as_dict"):
            return x.as_dict()
        return x
    out: dict[str, Any] = conv(res)
    out["table"] = render_scale(res)
    return out
