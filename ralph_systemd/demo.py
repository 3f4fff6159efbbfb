"""The one-minute demo: a Ralph-like loop runs four tickets in parallel, each in its own transient scope.

    python -m ralph_systemd.demo          (or ./dev demo, which brings up a user manager when needed)

The agent is examples/fake-agent (no network, no model). One ticket finishes, one fails with exit 3, one
hangs past its wall-clock timeout, one goes quiet past its idle timeout and leaves a setsid daemon behind.
Events are printed as they happen; at the end, one row per ticket. Colour only on a terminal (NO_COLOR=1
turns it off); piped, it is plain text.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

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


TICKETS = [
    Ticket("works", "does its work for 2 s and exits 0", "--fake-work=2", expect=Status.COMPLETED),
    Ticket("fails", "works 3 s, then gives up with exit 3", "--fake-work=3 --fake-exit=3", expect=Status.FAILED),
    Ticket("hangs", "never finishes; deaf to EOF; 8 s timeout", "--fake-work=0 --fake-hang", timeout=HANG_TIMEOUT_S,
           expect=Status.TIMEOUT),
    Ticket("idles", "starts a daemon, then goes quiet; 3 s idle timeout", "--fake-work=1 --fake-daemon --fake-idle",
           idle_timeout=3.0, expect=Status.IDLE_TIMEOUT),
]


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

    out.line(out.c("bold", "ralph-systemd demo: a Ralph-like loop runs 4 tickets in parallel, one transient scope each"))
    out.line(out.c("dim", f"  agent: {agent}   (invoked like pi:  fake-agent -p \"/tf <ticket> <flags> --auto\")"))
    for t in TICKETS:
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
        with Supervisor() as sup:
            sup.handle_signals(action="stop")  # Ctrl-C stops every session with the ladder, then the table
            pending: dict[Dispatch, Ticket] = {}
            for t in TICKETS:
                ticket = f"{t.name}_{run}"
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
    finally:
        logger.removeHandler(handler)
    if hang is not None:
        if state.enabled:
            show_journal(out, hang.unit, names[hang.unit])
        else:
            out.line(out.c("dim", f"  journal off: {state.reason}"))
    out.line()
    table(out, [(k, rows[k]) for k in (f"{t.name}_{run}" for t in TICKETS) if k in rows])
    expected = {f"{t.name}_{run}": t.expect for t in TICKETS}
    ok = all(rows.get(k) is not None and rows[k].status is v for k, v in expected.items())
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
