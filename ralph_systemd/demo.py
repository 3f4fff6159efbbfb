"""The one-minute demo: a Ralph-like loop runs four tickets in parallel, each in its own transient scope.

    python -m ralph_systemd.demo          (or ./dev demo, which brings up a user manager when needed)

The agent is examples/fake-agent (no network, no model). One ticket finishes, one fails with exit 3, one
hangs past its wall-clock timeout, one goes quiet past its idle timeout and leaves a setsid daemon behind.
A fifth is worked by the REAL pi (installed by `./dev setup`, see tests/agents) against a scripted model server
on loopback that the demo starts and stops: a real tool call writes and commits a file in the ticket's worktree.
Events are printed as they happen; at the end, one row per ticket. Colour only on a terminal (NO_COLOR=1
turns it off); piped, it is plain text.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ralph_systemd import journal
from ralph_systemd.text import escape
from ralph_systemd.journal_read import wait_for_entry
from ralph_systemd.result import DispatchResult, Status
from ralph_systemd.spec import DispatchSpec, default_log_dir
from ralph_systemd.dispatch import Dispatch
from ralph_systemd.supervisor import Supervisor

HANG_TIMEOUT_S, GRACE_S, EOF_GRACE_S = 8.0, 3.0, 1.0
# When to show `systemctl --user status` of the hanging ticket: inside its kill ladder, after the EOF step
# (at its timeout) and before the SIGTERM (EOF_GRACE_S later), so its journal lines show the ladder so far.
STATUS_SHOW_AT_S = HANG_TIMEOUT_S + EOF_GRACE_S / 2
STATUS_LINES = 10  # journal lines under the status (systemctl's default is 10 as well)


@dataclass(frozen=True)
class Ticket:
    name: str
    story: str
    flags: str
    timeout: float = 60.0
    idle_timeout: float | None = None
    expect: Status = Status.COMPLETED
    real_pi: bool = False


TICKETS = [
    Ticket("works", "does its work for 2 s and exits 0", "--fake-work=2", expect=Status.COMPLETED),
    Ticket("fails", "works 3 s, then gives up with exit 3", "--fake-work=3 --fake-exit=3", expect=Status.FAILED),
    Ticket("hangs", "never finishes; deaf to EOF; 8 s timeout", "--fake-work=0 --fake-hang", timeout=HANG_TIMEOUT_S,
           expect=Status.TIMEOUT),
    Ticket("idles", "starts a daemon, then goes quiet; 3 s idle timeout", "--fake-work=1 --fake-daemon --fake-idle",
           idle_timeout=3.0, expect=Status.IDLE_TIMEOUT),
    Ticket("realpi", "the REAL pi: a scripted model has it write + commit a file", "", expect=Status.COMPLETED,
           real_pi=True),
]
REAL_PI_FILE = "pi-was-here.txt"


class RealPi:
    """The real pi of tests/agents (a checkout's), a scripted model server for it and a throw-away git project."""

    def __init__(self, stack: ExitStack) -> None:
        agents_dir = Path(__file__).resolve().parents[1] / "tests" / "agents"
        if not agents_dir.is_dir():
            raise LookupError("the real pi needs a checkout (tests/agents)")
        sys.path.insert(0, str(agents_dir))
        self.agents: Any = importlib.import_module("agents")
        try:
            self.agents.agents_dir()
            self.agents.node_dir()
        except self.agents.AgentsMissing as e:
            raise LookupError(str(e)) from None
        server_mod: Any = importlib.import_module("openai_server")
        self.server = stack.enter_context(server_mod.OpenAIServer(command=self.agents.commit_command(REAL_PI_FILE)))
        self.tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ralph-demo-")))

    def spec_for(self, ticket: str, t: Ticket, log_dir: str) -> DispatchSpec:
        root = self.tmp / "project"
        git = ["git", "-c", "user.name=demo", "-c", "user.email=demo@localhost"]
        root.mkdir()
        subprocess.run([*git, "init", "-q", "-b", "main", str(root)], check=True)
        subprocess.run([*git, "-C", str(root), "commit", "-q", "--allow-empty", "-m", "init"], check=True)
        self.worktree = self.tmp / f"wt-{ticket}"
        subprocess.run([*git, "-C", str(root), "worktree", "add", "-q", "-b", f"ralph/{ticket}", str(self.worktree)],
                       check=True)
        env = self.agents.pi_env(self.tmp / "home", self.server.base_url)
        return DispatchSpec(argv=self.agents.pi_argv(f"/tf {ticket} --auto"), ticket=ticket, cwd=self.worktree,
                            env=env, timeout=t.timeout, grace=GRACE_S, log_dir=log_dir)

    def show_work(self, out: "Out", ticket: str) -> bool:
        """The commit the real pi made in the ticket's worktree (git's words, escaped); True if it is there."""
        r = subprocess.run(["git", "-C", str(self.worktree), "log", "-1", "--stat", "--format=%h %s"],
                           capture_output=True, text=True)
        out.line()
        out.line(out.c("bold", f"  The real pi's work: git -C <worktree of {ticket}> log -1 --stat   "
                               f"({len(self.server.requests)} requests to the scripted model)"))
        for text in (r.stdout or r.stderr).rstrip().splitlines():
            out.line(out.c("dim", "  | ") + escape(text))
        return r.returncode == 0 and REAL_PI_FILE in r.stdout


class Out:
    """Terminal-aware printing: colour on a tty, plain text when piped."""

    COLORS = {"completed": "32", "failed": "31", "timeout": "33", "idle-timeout": "33", "stopped": "35",
              "error": "31;1", "dim": "2", "bold": "1", "cyan": "36"}

    def __init__(self, color: bool) -> None:
        self.color = color
        self.t0 = time.monotonic()

    def c(self, key: str, text: str) -> str:
        code = self.COLORS.get(key)
        return f"\033[{code}m{text}\033[0m" if self.color and code else text

    def line(self, text: str = "") -> None:
        print(text, flush=True)

    def event(self, what: str, text: str, key: str = "bold") -> None:
        stamp = self.c("dim", f"{time.monotonic() - self.t0:5.1f}s")
        self.line(f"  {stamp}  {self.c(key, f'{what:<9}')} {text}")


class LadderEvents(logging.Handler):
    """The supervisor's own log lines (EOF sent, SIGTERM, idle, leftovers) shown as events."""

    def __init__(self, out: Out, names: dict[str, str]) -> None:
        super().__init__(logging.INFO)
        self.out, self.names = out, names

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        unit, _, rest = msg.partition(": ")
        first = rest.split(" ", 1)[0]
        if unit not in self.names or first == "launched" or first in {s.value for s in Status}:
            return  # the launch and the result ("<status> (exit code ...") are printed by the loop itself
        self.out.event("ladder", f"{self.names[unit]:<11} {self.out.c('dim', rest)}", "cyan")


def find_agent() -> str:
    env = os.environ.get("RALPH_SYSTEMD_DEMO_AGENT")
    candidates = [env, str(Path(__file__).resolve().parents[1] / "examples" / "fake-agent"), shutil.which("fake-agent")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise SystemExit("demo: examples/fake-agent not found; run from a checkout or set RALPH_SYSTEMD_DEMO_AGENT")


def show_status(out: Out, d: Dispatch, ticket: str) -> None:
    """What an operator's first command shows mid-ladder: the unit, and under it its journal lines."""
    out.line()
    out.line(out.c("bold", f"  While it runs: systemctl --user status {d.unit}   ({ticket}, inside its kill ladder)"))
    r = subprocess.run(["systemctl", "--user", "status", "--no-pager", f"--lines={STATUS_LINES}", "--full", d.unit],
                       capture_output=True, text=True, env={**os.environ, "SYSTEMD_COLORS": "0"})
    for text in (r.stdout or r.stderr).rstrip().splitlines():
        out.line(out.c("dim", "  | ") + escape(text))
    out.line()


def show_journal(out: Out, unit: str, ticket: str) -> None:
    """After the end the unit is gone; the journal still has its story (our lines, attributed to it)."""
    out.line()
    out.line(out.c("bold", f"  After it ended: journalctl --user -u {unit}   ({ticket})"))
    wait_for_entry(3.0, RALPH_TICKET=ticket, RALPH_EVENT="result")  # journald stores it a moment after it is sent
    r = subprocess.run(["journalctl", "--user", "--no-pager", "--no-hostname", "-o", "short", "-u", unit],
                       capture_output=True, text=True, env={**os.environ, "SYSTEMD_COLORS": "0"})
    lines = (r.stdout or r.stderr).rstrip().splitlines()
    for text in lines[-STATUS_LINES:]:
        out.line(out.c("dim", "  | ") + escape(text))
    out.line(out.c("dim", f"  (filter on a field: journalctl --user RALPH_TICKET={ticket} RALPH_EVENT=result)"))


def table(out: Out, rows: list[tuple[str, DispatchResult]]) -> None:
    home = os.path.expanduser("~")
    header = ["ticket", "status", "exit", "termination", "leftovers killed", "duration", "log"]
    body = []
    for name, r in rows:
        code = str(r.exit_code) if r.exit_code is not None else (r.signal_name or "-")
        log = (r.log_path or "-").replace(home, "~", 1)
        body.append([name, str(r.status), code, str(r.termination_method), str(r.leftovers_killed),
                     f"{r.duration_s:.1f} s", log])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def fmt(row: list[str], color_status: bool = False) -> str:
        cells = [cell.ljust(w) if i < len(row) - 1 else cell for i, (cell, w) in enumerate(zip(row, widths))]
        if color_status:
            cells[1] = out.c(row[1], cells[1])
        return "  " + "  ".join(cells)

    out.line(out.c("bold", fmt(header)))
    out.line("  " + "  ".join("-" * w for w in widths))
    for row in body:
        out.line(fmt(row, color_status=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ralph_systemd.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-color", action="store_true", help="plain text even on a terminal")
    ap.add_argument("--log-dir", default=str(default_log_dir()), help="where session logs go (default: %(default)s)")
    args = ap.parse_args(argv)
    out = Out(color=sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR"))
    agent = find_agent()
    run = uuid.uuid4().hex[:4]  # ticket ids unique to this run, so two demos never collide

    stack = ExitStack()
    try:
        real: RealPi | None = RealPi(stack)
        real_note = ""
    except LookupError as e:
        real, real_note = None, str(e)
    tickets = [t for t in TICKETS if real is not None or not t.real_pi]
    out.line(out.c("bold", f"ralph-systemd demo: a Ralph-like loop runs {len(tickets)} tickets in parallel, one "
                           "transient scope each"))
    out.line(out.c("dim", f"  agent: {agent}   (invoked like pi:  fake-agent -p \"/tf <ticket> <flags> --auto\")"))
    if real is not None:
        out.line(out.c("dim", f"  and the real pi {real.agents.PI_VERSION} (pi -p \"/tf <ticket> --auto\") against "
                              f"a scripted model at {real.server.base_url}"))
    else:
        out.line(out.c("dim", f"  (no ticket for the real pi: {real_note})"))
    for t in tickets:
        out.line(f"  {t.name}_{run:<6} {out.c('dim', t.story)}")
    out.line(out.c("dim", f"  stop ladder: EOF on stdin -> SIGTERM after {EOF_GRACE_S:g} s -> systemd SIGKILLs the "
                          f"whole cgroup after {GRACE_S:g} s; each step is a line in the scope's journal"))
    out.line()

    names: dict[str, str] = {}
    handler = LadderEvents(out, names)
    logger = logging.getLogger("ralph_systemd")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    rows: dict[str, DispatchResult] = {}
    status_shown = False
    hang: Dispatch | None = None
    state = journal.journal_state()  # says once why, when there is no journal to show
    try:
        with stack, Supervisor() as sup:
            sup.handle_signals(action="stop")  # Ctrl-C stops every session with the ladder, then the table
            pending: dict[Dispatch, Ticket] = {}
            for t in tickets:
                ticket = f"{t.name}_{run}"
                if t.real_pi:  # stdin null (the default): pi -p reads piped stdin to EOF before it starts
                    assert real is not None
                    spec = real.spec_for(ticket, t, args.log_dir)
                else:
                    spec = DispatchSpec(argv=[agent, "-p", f"/tf {ticket} {t.flags} --auto"], ticket=ticket,
                                        timeout=t.timeout, idle_timeout=t.idle_timeout, grace=GRACE_S,
                                        stdin="pipe", eof_grace=EOF_GRACE_S, log_dir=args.log_dir)
                d = sup.launch(spec)
                names[d.unit] = ticket
                if d.result is not None:
                    out.event("error", f"{ticket:<11} {d.result.error}", "error")
                    rows[ticket] = d.result
                    continue
                pending[d] = t
                out.event("launched", f"{ticket:<11} pid {d.pid:<7} {out.c('dim', d.unit)}")
            hang = next((d for d, t in pending.items() if t.name == "hangs"), None)
            while pending:
                wait_s = None if status_shown or hang is None else max(0.0, STATUS_SHOW_AT_S - (time.monotonic() - out.t0))
                for d in sup.wait_any(list(pending), timeout=wait_s):
                    t = pending.pop(d)
                    r = d.result
                    assert r is not None
                    rows[r.ticket] = r
                    code = f"exit {r.exit_code}" if r.exit_code is not None else (r.signal_name or "no exit code")
                    extra = f", killed {r.leftovers_killed} leftover process(es)" if r.leftovers_killed else ""
                    out.event("finished", f"{r.ticket:<11} {out.c(str(r.status), str(r.status))} "
                                          f"({code}, {r.termination_method}{extra})", str(r.status))
                if not status_shown and hang is not None and time.monotonic() - out.t0 >= STATUS_SHOW_AT_S:
                    status_shown = True
                    if hang.result is None:
                        show_status(out, hang, names[hang.unit])
            work_ok = real is None or real.show_work(out, f"realpi_{run}")
    finally:
        logger.removeHandler(handler)
    if hang is not None:
        if state.enabled:
            show_journal(out, hang.unit, names[hang.unit])
        else:
            out.line(out.c("dim", f"  journal off: {state.reason}"))
    out.line()
    table(out, [(k, rows[k]) for k in (f"{t.name}_{run}" for t in tickets) if k in rows])
    expected = {f"{t.name}_{run}": t.expect for t in tickets}
    ok = work_ok and all(rows.get(k) is not None and rows[k].status is v for k, v in expected.items())
    out.line()
    out.line(out.c("dim", "  Each session ran in its own scope; nothing it started outlived it (leftovers killed)."))
    out.line(out.c("dim", "  The logs stay where the log column says. For tf's Ralph loop: ralph_systemd.tf is a drop-in "
                          "backend"))
    out.line(out.c("dim", "  (executionBackend: \"systemd\")."))
    if not ok:
        out.line(out.c("failed", "  Unexpected outcome: see the table above."))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
