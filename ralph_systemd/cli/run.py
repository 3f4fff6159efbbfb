"""`ralph-systemd run`: launch one dispatch, and wait for it (with progress on a TTY) or leave it running."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import signal
import time
from pathlib import Path
from typing import Any, TextIO

from ralph_systemd.bus import NoUserBusError
from ralph_systemd.cli.format import drop_stdout, last_line, print_pairs
from ralph_systemd.text import one_line
from ralph_systemd.dispatch import Dispatch
from ralph_systemd.durations import format_duration
from ralph_systemd.result import DispatchResult
from ralph_systemd.retry import BusError
from ralph_systemd.spec import STDIN_NULL, STDIN_PIPE, DispatchSpec, StdinPolicy
from ralph_systemd.supervisor import Supervisor

EXIT_LAUNCH_FAILED = 125
EXIT_STOPPED = 128 + signal.SIGTERM  # 143: the dispatch was stopped (any stop), whatever the session returned
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130: `run` got SIGINT (Ctrl-C) and stopped the dispatch
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


def parse_stdin(text: str) -> StdinPolicy:
    """`--stdin`: null, pipe, text:TEXT (its UTF-8 bytes) or file:PATH; ValueError saying what is accepted."""
    if text in (STDIN_NULL, STDIN_PIPE):
        return text
    kind, sep, rest = text.partition(":")
    if sep and kind == "text":
        return rest.encode("utf-8", "surrogateescape")
    if sep and kind == "file":
        if not rest:
            raise ValueError("file: needs a path, e.g. --stdin file:prompt.txt")
        return Path(rest)
    raise ValueError(f"{text!r} is not a stdin policy: give null, pipe, text:TEXT or file:PATH")


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
    if args.detach and args.stdin == STDIN_PIPE:
        raise RunError("--stdin pipe needs us attached to hold the pipe (it would close as we return): drop "
                       "--detach, or give the input with --stdin text:TEXT or file:PATH", 2)
    if args.ticket is not None and args.ticket.startswith("-"):
        raise RunError(f"ticket id {args.ticket!r} starts with '-', so `status`, `logs` and `stop` would read it as "
                       "an option: use an id that starts with a letter or digit", 2)
    timeout = None if args.timeout is None or math.isinf(args.timeout) else args.timeout
    try:
        return DispatchSpec(
            argv=command, ticket=args.ticket if args.ticket is not None else default_ticket(command),
            session=args.session, cwd=args.cwd, timeout=timeout, idle_timeout=args.idle_timeout,
            grace=args.grace if args.grace is not None else 10.0, log_dir=args.log_dir,
            memory_max=args.memory_max, tasks_max=args.tasks_max, cpu_quota=args.cpu_quota, output=args.output,
            stdin=args.stdin)
    except ValueError as e:
        raise RunError(str(e), 2) from None


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
            line = last_line(d.log_path, cols - len(head) - 4)  # escaped: no control byte reaches the terminal
            err.write(f"\r\x1b[K{head}" + (f" | {line}" if line else ""))
            err.flush()
    finally:
        err.write("\r\x1b[K")
        err.flush()


def _summary(r: DispatchResult, code: int) -> list[tuple[str, str]]:
    how = f"exit {r.exit_code}" if r.exit_code is not None else (f"signal {r.signal_name}" if r.signal else "-")
    rows = [("ticket", r.ticket), ("unit", r.unit), ("session", r.session),
            ("status", f"{r.status} ({how}, {r.termination_method}, systemd result {r.systemd_result or '-'})"),
            ("duration", format_duration(r.duration_s)), ("log", r.log_path or "-"), ("exit status", str(code))]
    if r.leftovers_killed:
        rows.append(("leftovers", f"{r.leftovers_killed} process(es) left behind were stopped"))
    if r.error:
        rows.append(("error", r.error))
    return rows


class _Warnings:
    """Warnings for stderr, each one escaped line, each said once."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.said: list[str] = []

    def add(self, text: str | None) -> None:
        if text and text not in self.said:
            self.said.append(text)
            print(f"ralph-systemd run: warning: {one_line(text)}", file=self.err)


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    spec = build_spec(args)
    try:
        sup = Supervisor()
    except NoUserBusError as e:
        raise RunError(str(e), EXIT_LAUNCH_FAILED) from None
    except BusError as e:
        raise RunError(f"cannot reach the systemd user manager: {e}", EXIT_LAUNCH_FAILED) from None
    warnings = _Warnings(err)
    detached = False
    try:
        if not args.detach:
            # Before the launch: a Ctrl-C as soon as the session runs must reach the ladder, not raise.
            sup.handle_signals(action="stop")
        d = sup.launch(spec)
        if d.result is not None:  # the launch failed; nothing was left behind
            if args.json:
                print(json.dumps(_json(d.result, EXIT_LAUNCH_FAILED, [])), file=out)
            raise RunError(d.result.error or "the launch failed", EXIT_LAUNCH_FAILED)
        for w in d.warnings:  # e.g. the log's file system is full
            warnings.add(w)
        if args.detach:
            info = _detached(d)
            info["warnings"] = list(warnings.said)
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
    for w in result.warnings:
        warnings.add(w)
    code = exit_code(result, sup.signals_received)
    try:
        if args.json:
            print(json.dumps(_json(result, code, warnings.said)), file=out)
        elif args.verbose or out.isatty():
            print_pairs(_summary(result, code), out)
        out.flush()
    except BrokenPipeError:  # `run --json ... | true`: the result is still in the unit's log; the code is ours
        drop_stdout(out)
    return code


def exit_code(result: DispatchResult, signals: list[int]) -> int:
    """The documented exit status of `run`: 130 when we were interrupted by SIGINT, 143 when the dispatch was
    stopped (by `ralph-systemd stop`, `systemctl --user stop`, SIGTERM to us), else the result's own code.
    A stopped or interrupted run never exits 0, whatever the session returned (`cat` exits 0 on EOF)."""
    if signal.SIGINT in signals:
        return EXIT_INTERRUPTED
    if str(result.status) == "stopped":
        return EXIT_STOPPED
    return result.exit_status_for_shell()


def _json(r: DispatchResult, code: int, warnings: list[str]) -> dict[str, Any]:
    d = r.to_json()
    d["exit_status"] = code
    d["warnings"] = list(warnings)
    return d


def _detached(d: Dispatch) -> dict[str, Any]:
    return {"ticket": d.ticket, "session": d.session, "unit": d.unit, "invocation_id": d.invocation_id,
            "status": "running", "pid": d.pid, "log_path": d.log_path,
            "timeout_s": d.spec.timeout if d.spec else None}

