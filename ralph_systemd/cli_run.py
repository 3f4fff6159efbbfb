"""`ralph-systemd run`: launch one dispatch, and wait for it (with progress on a TTY) or leave it running."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import time
from typing import Any, TextIO

from ralph_systemd.bus import NoUserBusError
from ralph_systemd.durations import format_duration
from ralph_systemd.result import DispatchResult
from ralph_systemd.retry import BusError
from ralph_systemd.spec import DispatchSpec
from ralph_systemd.dispatch import Dispatch
from ralph_systemd.supervisor import Supervisor

EXIT_LAUNCH_FAILED = 125
PROGRESS_REFRESH_S = 1.0


class RunError(Exception):
    """A run that could not start: message for stderr, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def default_ticket(argv: list[str]) -> str:
    """`<program name>.<6 hex digits>`, e.g. `pi.3f9a1c`: readable in `ls`, unique, and needing no escaping."""
    stem = re.sub(r"[^A-Za-z0-9_:]+", "_", os.path.basename(argv[0]))[:40].strip("_") or "run"
    return f"{stem}.{secrets.token_hex(3)}"


def build_spec(args: argparse.Namespace) -> DispatchSpec:
    """The DispatchSpec for `run`'s arguments; RunError (exit 2) for bad input, before anything starts."""
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise RunError("no command given: put it after --, e.g. `ralph-systemd run --timeout 1h -- pi -p '/tf T-1'`", 2)
    if args.detach and args.idle_timeout is not None:
        raise RunError("--idle-timeout needs a supervisor watching the log, so it cannot be used with --detach: "
                       "drop --detach, or use --timeout (enforced by systemd)", 2)
    timeout = None if args.timeout is None or math.isinf(args.timeout) else args.timeout
    try:
        return DispatchSpec(
            argv=command, ticket=args.ticket if args.ticket is not None else default_ticket(command),
            session=args.session, cwd=args.cwd, timeout=timeout, idle_timeout=args.idle_timeout,
            grace=args.grace if args.grace is not None else 10.0, log_dir=args.log_dir,
            memory_max=args.memory_max, tasks_max=args.tasks_max, cpu_quota=args.cpu_quota)
    except ValueError as e:
        raise RunError(str(e), 2) from None


def last_line(path: str | None, width: int) -> str:
    """The last non-empty line the session wrote (from the log's last 4 KiB), printable and cut to width."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    text = "".join(c if c.isprintable() else " " for c in (lines[-1] if lines else ""))
    return text[:max(0, width)]


def wait_with_progress(sup: Supervisor, d: Dispatch, spec: DispatchSpec, err: TextIO) -> DispatchResult:
    """Wait for d; on a TTY, redraw one status line on stderr each second and on each supervisor wake-up."""
    if not err.isatty():
        return sup.wait(d)
    try:
        while True:
            try:
                return sup.wait(d, timeout=PROGRESS_REFRESH_S)
            except TimeoutError:
                pass
            elapsed = time.monotonic() - d.started
            left = f", {format_duration(spec.timeout - elapsed)} left" if spec.timeout is not None else ""
            head = f"{d.unit}: running {format_duration(elapsed)}{left}"
            cols = shutil.get_terminal_size((100, 20)).columns
            line = last_line(d.log_path, cols - len(head) - 4)
            err.write(f"\r\x1b[K{head}" + (f" | {line}" if line else ""))
            err.flush()
    finally:
        err.write("\r\x1b[K")
        err.flush()


def _summary(r: DispatchResult) -> list[tuple[str, str]]:
    how = f"exit {r.exit_code}" if r.exit_code is not None else (f"signal {r.signal_name}" if r.signal else "-")
    rows = [("ticket", r.ticket), ("unit", r.unit), ("session", r.session),
            ("status", f"{r.status} ({how}, {r.termination_method}, systemd result {r.systemd_result or '-'})"),
            ("duration", format_duration(r.duration_s)), ("log", r.log_path or "-")]
    if r.leftovers_killed:
        rows.append(("leftovers", f"{r.leftovers_killed} process(es) left behind were stopped"))
    if r.error:
        rows.append(("error", r.error))
    return rows


def print_pairs(rows: list[tuple[str, str]], out: TextIO) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k + ':':<{width + 1}} {v}", file=out)


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    spec = build_spec(args)
    try:
        sup = Supervisor()
    except NoUserBusError as e:
        raise RunError(str(e), EXIT_LAUNCH_FAILED) from None
    except BusError as e:
        raise RunError(f"cannot reach the systemd user manager: {e}", EXIT_LAUNCH_FAILED) from None
    detached = False
    try:
        if not args.detach:
            # Before the launch: a Ctrl-C as soon as the session runs must reach the ladder, not raise.
            sup.handle_signals(action="stop")
        d = sup.launch(spec)
        if d.result is not None:  # the launch failed; nothing was left behind
            if args.json:
                print(json.dumps(_json(d.result)), file=out)
            raise RunError(d.result.error or "the launch failed", EXIT_LAUNCH_FAILED)
        if args.detach:
            info = _detached(sup, d)
            sup.close(stop_running=False)
            detached = True
            if args.json:
                print(json.dumps(info), file=out)
            else:
                print_pairs([("ticket", info["ticket"]), ("unit", info["unit"]), ("session", info["session"]),
                             ("log", info["log_path"])], out)
            return 0
        result = wait_with_progress(sup, d, spec, err)
    finally:
        if not detached:
            sup.close(stop_running=True)
    if args.json:
        print(json.dumps(_json(result)), file=out)
    elif args.verbose or out.isatty():
        print_pairs(_summary(result), out)
    return result.exit_status_for_shell()


def _json(r: DispatchResult) -> dict[str, Any]:
    d = r.to_json()
    d["exit_status"] = r.exit_status_for_shell()
    return d


def _detached(sup: Supervisor, d: Dispatch) -> dict[str, Any]:
    inv = d.invocation_id
    return {"ticket": d.ticket, "session": d.session, "unit": d.unit, "invocation_id": inv, "status": "running",
            "pid": d.pid, "log_path": d.log_path, "timeout_s": d.spec.timeout if d.spec else None}

