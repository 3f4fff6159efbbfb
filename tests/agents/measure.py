"""Measure the real agents alone vs under ralph-systemd (run where a user manager is: in the bed).

    python tests/agents/measure.py [-n 7]

pi: the scripted tool call (write + commit a file) and answer; alone with </dev/null, under `ralph-systemd run`
(the CLI, its start-up included) and under Supervisor (library, one supervisor for all runs). claude: not
logged in (exit 1), alone and under Supervisor. Prints median and p90 of each; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agents  # noqa: E402
from openai_server import OpenAIServer  # noqa: E402

from ralph_systemd import DispatchSpec, Status, Supervisor  # noqa: E402


def p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


def repo(base: Path) -> Path:
    r = base / f"wt-{uuid.uuid4().hex[:6]}"
    r.mkdir()
    for a in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "init"]):
        subprocess.run(["git", "-C", str(r), "-c", "user.name=t", "-c", "user.email=t@t", *a], check=True)
    return r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=7)
    n = ap.parse_args().n
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, OpenAIServer(command=agents.commit_command("f.txt")) as srv, \
            Supervisor() as sup:
        base = Path(tmp)
        env = agents.pi_env(base / "home", srv.base_url)
        cenv = agents.claude_env(base / "chome", None)
        for i in range(n):
            for how in ("pi alone", "pi under ralph-systemd run", "pi under Supervisor", "claude (no login) alone",
                        "claude (no login) under Supervisor"):
                wt = repo(base)
                argv = agents.pi_argv("/tf T --auto") if how.startswith("pi") else agents.claude_argv("hello")
                e = env if how.startswith("pi") else cenv
                t0 = time.monotonic()
                if how.endswith("alone"):
                    rc = subprocess.run(argv, cwd=wt, env=e, stdin=subprocess.DEVNULL, capture_output=True).returncode
                elif how.endswith("run"):
                    rc = subprocess.run([sys.executable, "-m", "ralph_systemd", "run", "--timeout", "60s", "--ticket",
                                         f"m-{i}-{uuid.uuid4().hex[:4]}", "--log-dir", str(base / "logs"), "--cwd",
                                         str(wt), "--", *argv], env=e, stdin=subprocess.DEVNULL,
                                        capture_output=True).returncode
                else:
                    res = sup.wait(sup.launch(DispatchSpec(argv=argv, ticket=f"m-{i}-{uuid.uuid4().hex[:4]}", cwd=wt,
                                                           env=e, timeout=60, log_dir=base / "logs")))
                    rc = res.exit_code if res.status in (Status.COMPLETED, Status.FAILED) else -1
                took = time.monotonic() - t0
                want = 0 if how.startswith("pi") else 1
                if rc != want:
                    print(f"{how}: exit {rc}, expected {want}", file=sys.stderr)
                    return 1
                rows.setdefault(how, []).append(took)
    for how, xs in rows.items():
        print(f"{how:<38} median {statistics.median(xs):5.2f} s   p90 {p90(xs):5.2f} s   (n={len(xs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
