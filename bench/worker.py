"""The baseline worker: an older copy of ralph_systemd, measured by this tree's bench code in a subprocess.

    python -P bench/worker.py --package-root OLD_TREE --workdir DIR

(-P: the script's own directory must not shadow the stdlib.) The worker imports `ralph_systemd` from
OLD_TREE first, then this checkout's `bench` package (added at the END of sys.path, so it cannot shadow the
old package), and answers one JSON request per line on stdin with one JSON line on stdout. `Worker` is the
bench's handle on it. This module is the only one that imports both bench.ralph and bench.probe besides
bench.run: the probe depends on bench.ralph, never the reverse.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_ROOT = Path(__file__).resolve().parents[1]  # the checkout that holds bench/


def _worker(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--package-root", required=True)
    ap.add_argument("--workdir", required=True, type=Path)
    args = ap.parse_args(argv)
    sys.path.insert(0, args.package_root)
    pkg = importlib.import_module("ralph_systemd")
    sys.path.append(str(BENCH_ROOT))  # the bench's own code comes from this checkout, the package from OLD_TREE
    from bench.probe import probe_all
    from bench.ralph import RalphBench

    b = RalphBench(pkg, args.workdir)
    print(json.dumps({"ready": True, "package": pkg.__file__, "launch_many": hasattr(b.sup, "launch_many")}),
          flush=True)
    try:
        for line in sys.stdin:
            req = json.loads(line)
            try:
                if req["op"] == "one":
                    out: dict[str, Any] = b.one(req.get("lifetime", 0.0))
                elif req["op"] == "fanout":
                    out = b.fanout(req["n"], req["sleep"], req.get("many", False))
                elif req["op"] == "probe":
                    out = probe_all(b, req["runs"])
                else:
                    out = {"error": f"unknown op {req['op']!r}"}
            except Exception as e:  # report, keep serving
                out = {"error": f"{type(e).__name__}: {e}"}
            print(json.dumps(out), flush=True)
    finally:
        b.close()
    return 0


class Worker:
    """The bench's handle on a worker subprocess running an older copy of the package."""

    def __init__(self, package_root: str, workdir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-P", str(Path(__file__).resolve()), "--package-root",
                                      package_root, "--workdir", str(workdir)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        hello = self._read()
        if not hello.get("ready"):
            raise RuntimeError(f"baseline worker did not start: {hello}")
        self.package = hello["package"]
        self.has_launch_many = bool(hello["launch_many"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"baseline worker exited ({self.proc.wait()})")
        out: dict[str, Any] = json.loads(line)
        return out

    def call(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if "error" in out:
            raise RuntimeError(f"baseline worker: {out['error']}")
        return out

    def one(self, lifetime: float = 0.0) -> dict[str, float]:
        return self.call(op="one", lifetime=lifetime)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1:]))
