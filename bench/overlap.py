"""Would overlapping StartTransientUnit calls pay? The bare floor client, N scopes, with the calls made by
1, 2, 4 ... clients at once: as threads of one process (each its own pystemd connection) and as processes.

    python -m bench.overlap [--n 256] [--clients 1,2,4] [--rounds 3]

pystemd's `call_method` is sd_bus_call without releasing the GIL, so threads cannot overlap their calls;
processes can. If K processes put N scopes in place in much less time than one, the manager can absorb
overlapping calls and pipelining them (one connection, or a helper) would pay; if not, the manager (or the
machine) is the bound. The children are spawned before the clock starts; the clock stops when every scope's
JobRemoved was seen. Figures printed (or --json), never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.floor import Floor, spawn_sleepers
from bench.ralph import helpers_cpu


def _child(n: int, workdir: Path) -> int:
    """One client process: spawn n sleepers, say ready, start their scopes on "go", stop them on "stop"."""
    floor = Floor(workdir)
    kids = spawn_sleepers(n)
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    floor.start_scopes(kids)
    print(json.dumps({"s": time.perf_counter() - t0}), flush=True)
    sys.stdin.readline()
    floor.stop_all(kids)
    floor.close()
    print("done", flush=True)
    return 0


def with_processes(n: int, k: int, workdir: Path) -> dict[str, float]:
    procs = [subprocess.Popen([sys.executable, "-m", "bench.overlap", "--child", str(n // k), str(workdir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1) for _ in range(k)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        h0, t0 = helpers_cpu(), time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout is not None
            json.loads(p.stdout.readline())
        wall = time.perf_counter() - t0
        h1 = helpers_cpu()
        for p in procs:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write("stop\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout is not None
            p.stdout.readline()
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
            p.wait(60)
    return {"wall_s": wall, **{f"{key} CPU ms per scope": (h1[key] - h0.get(key, 0.0)) * 1e3 / n for key in h1}}


def with_threads(n: int, k: int, workdir: Path) -> dict[str, float]:
    floors = [Floor(workdir) for _ in range(k)]
    kids = [spawn_sleepers(n // k) for _ in range(k)]
    go = threading.Barrier(k + 1)

    def client(i: int) -> None:
        go.wait()
        floors[i].start_scopes(kids[i])
    threads = [threading.Thread(target=client, args=(i,)) for i in range(k)]
    for t in threads:
        t.start()
    h0, c0 = helpers_cpu(), time.process_time()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    h1, c1 = helpers_cpu(), time.process_time()
    for f, ks in zip(floors, kids):
        f.stop_all(ks)
        f.close()
    return {"wall_s": wall, "client CPU ms per scope": (c1 - c0) * 1e3 / n,
            **{f"{key} CPU ms per scope": (h1[key] - h0.get(key, 0.0)) * 1e3 / n for key in h1}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.overlap", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="scopes per measurement (default 256)")
    ap.add_argument("--clients", default="1,2,4", help="numbers of concurrent clients (default 1,2,4)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, interleaved (default 3)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(int(args.child[0]), Path(args.child[1]))
    ks = [int(x) for x in args.clients.split(",")]
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ralph-overlap-") as tmp:
        for _ in range(args.rounds):
            for k in ks:
                for how, fn in (("threads", with_threads), ("processes", with_processes)):
                    rows.setdefault((how, k), []).append(fn(args.n, k, Path(tmp)))
    out: dict[str, Any] = {"n": args.n, "rounds": args.rounds, "loadavg": os.getloadavg(), "results": []}
    for (how, k), rs in rows.items():
        keys = sorted({key for r in rs for key in r})
        out["results"].append({"clients": f"{k} {how}", **{key: statistics.median(r[key] for r in rs if key in r)
                                                            for key in keys},
                               "wall_s_all": [round(r["wall_s"], 3) for r in rs]})
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{args.n} bare scopes, medians of {args.rounds} rounds; load {out['loadavg']}")
        for r in out["results"]:
            print("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
