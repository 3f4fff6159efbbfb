"""The operator subcommands: ls, status, stop, logs, gc, install-units. Each returns the exit code."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ralph_systemd.bus import NoUserBusError, PystemdUserBus, SystemdBus
from ralph_systemd.cli_run import last_line, print_pairs
from ralph_systemd.durations import format_duration, format_size
from ralph_systemd.follow import copy_new, follow
from ralph_systemd.inspect import DispatchInfo, dispatch_info, list_dispatches, resolve_unit
from ralph_systemd.naming import UNIT_PREFIX, UNIT_SUFFIX, escape, ticket_from_unit_name
from ralph_systemd.spec import default_log_dir
from ralph_systemd.supervisor import Supervisor
from ralph_systemd.units import install_units, user_unit_dir

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_SUCH_DISPATCH = 4


class CliError(Exception):
    """A one-line error for stderr, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _chatty(args: argparse.Namespace, out: TextIO) -> bool:
    """Confirmations and headers: on a terminal, or when asked with -v."""
    return bool(args.verbose) or out.isatty()


def _unit_of(target: str) -> str:
    try:
        return resolve_unit(target)
    except ValueError as e:
        raise CliError(f"{target!r} is neither a ticket id nor a ralph-*.scope unit: {e}", EXIT_USAGE) from None


def _no_such(target: str, unit: str) -> CliError:
    return CliError(f"no live dispatch for {target!r} (unit {unit} is not loaded): "
                    "`ralph-systemd ls` lists the live ones", EXIT_NO_SUCH_DISPATCH)


def _with_bus(fn: Callable[[SystemdBus], int]) -> int:
    bus = PystemdUserBus()
    try:
        return fn(bus)
    finally:
        bus.close()


def table(headers: list[str], rows: list[list[str]], out: TextIO, *, header: bool) -> None:
    """Left-aligned columns; the last column is not padded (and is cut to the terminal width on a TTY)."""
    shown = ([headers] if header else []) + rows
    if not shown:
        return
    widths = [max(len(r[i]) for r in shown) for i in range(len(headers) - 1)]
    cols = shutil.get_terminal_size((10_000, 20)).columns if out.isatty() else None
    for r in shown:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]
        print(line[:cols] if cols else line.rstrip(), file=out)


# -- ls / status ---------------------------------------------------------------------------------------------

def _state(i: DispatchInfo) -> str:
    return i.state if i.state != "failed" else f"failed/{i.result}"


def cmd_ls(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    def run(bus: SystemdBus) -> int:
        infos = list_dispatches(bus)
        if args.json:
            print(json.dumps([i.to_json() for i in infos]), file=out)
            return 0
        if not infos:
            if _chatty(args, out):
                print("no ralph dispatches are running", file=err)
            return 0
        rows = [[i.ticket, i.session or "-", _state(i), format_duration(i.age_s), format_duration(i.time_left_s),
                 format_size(i.memory_bytes), format_duration(i.cpu_s), i.command or "-"] for i in infos]
        table(["TICKET", "SESSION", "STATE", "AGE", "LEFT", "MEMORY", "CPU", "COMMAND"], rows, out,
              header=_chatty(args, out))
        return 0
    return _with_bus(run)


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    unit = _unit_of(args.target)

    def run(bus: SystemdBus) -> int:
        info = dispatch_info(bus, unit, with_pids=True)
        if info is None:
            raise _no_such(args.target, unit)
        if args.json:
            print(json.dumps(info.to_json()), file=out)
            return 0
        timeout = "none" if info.timeout_s is None else \
            f"{format_duration(info.timeout_s)} ({format_duration(info.time_left_s)} left)"
        print_pairs([
            ("ticket", info.ticket), ("unit", info.unit), ("session", info.session or "-"),
            ("state", f"{info.state} ({info.sub_state})" + (f", result {info.result}" if info.result != "success" else "")),
            ("command", info.command or "-"), ("running", format_duration(info.age_s)), ("timeout", timeout),
            ("grace", format_duration(info.grace_s)), ("memory", format_size(info.memory_bytes)),
            ("cpu", format_duration(info.cpu_s)), ("pids", " ".join(map(str, info.pids)) or "-"),
            ("log", info.log_path or "-"), ("last line", last_line(info.log_path, 200) or "-"),
        ], out)
        return 0
    return _with_bus(run)


# -- stop ----------------------------------------------------------------------------------------------------

def cmd_stop(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.all == (args.target is not None):
        raise CliError("give one TICKET or UNIT to stop, or --all (not both)", EXIT_USAGE)
    unit = None if args.all else _unit_of(args.target)
    if unit is not None and _with_bus(lambda bus: dispatch_info(bus, unit) is None):
        raise _no_such(args.target, unit)
    with Supervisor() as sup:
        if unit is None:
            dispatches = sup.attach_all()
        else:
            try:
                dispatches = [sup.attach(unit)]
            except LookupError:
                raise _no_such(args.target, unit) from None
        # Each stop goes through systemd: its controller (the launcher, if alive) gets RequestStop and runs
        # the ladder; with no controller systemd SIGTERMs the cgroup and SIGKILLs it after the grace.
        t0 = time.monotonic()
        sup.stop_all()
        results = sup.wait_all(dispatches)
        took = time.monotonic() - t0
    if args.json:
        print(json.dumps([r.to_json() for r in results]), file=out)
    elif _chatty(args, out):
        if not results:
            print("no ralph dispatches were running", file=err)
        for r in results:
            print(f"stopped {r.ticket} ({r.unit}, session {r.session}; ran {format_duration(r.duration_s)}), "
                  f"systemd result {r.systemd_result or '-'}", file=out)
        if results:
            print(f"stop took {format_duration(took)}", file=err)
    return 0


# -- logs ----------------------------------------------------------------------------------------------------

def _log_from_dir(log_dir: Path, ticket: str, session: str | None) -> str | None:
    """The newest `<escaped ticket>.<session>.log` in log_dir (that session's, when one is given)."""
    prefix = f"{escape(ticket)}."
    try:
        entries = [e for e in os.scandir(log_dir) if e.is_file(follow_symlinks=False) and e.name.endswith(".log")
                   and e.name.startswith(prefix) and (session is None or e.name == f"{prefix}{session}.log")]
    except OSError:
        return None
    return max(entries, key=lambda e: e.stat(follow_symlinks=False).st_mtime).path if entries else None


def cmd_logs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    unit = _unit_of(args.target)
    ticket = ticket_from_unit_name(unit) or args.target
    try:
        bus: SystemdBus | None = PystemdUserBus()
    except NoUserBusError:
        if args.follow:
            raise
        bus = None  # finished dispatches' logs need no manager
    try:
        info = dispatch_info(bus, unit) if bus is not None else None
        if info is not None and args.session not in (None, info.session):
            info = None
        path = info.log_path if info is not None else None
        if path is None:
            log_dir = Path(args.log_dir) if args.log_dir else default_log_dir()
            path = _log_from_dir(log_dir, ticket, args.session)
            if path is None:
                raise CliError(f"no log for {args.target!r}: no live dispatch, and no {escape(ticket)}."
                               f"{args.session or '*'}.log in {log_dir} (pass --log-dir if it used another one)",
                               EXIT_NO_SUCH_DISPATCH)
        sink = out.buffer if hasattr(out, "buffer") else sys.stdout.buffer
        out.flush()
        if args.follow and info is not None and bus is not None:
            follow(path, bus, unit, sink)
            return 0
        try:
            with open(path, "rb") as f:
                if args.lines is not None:
                    f.seek(0, os.SEEK_END)
                    data = _tail(f.tell(), f, args.lines)
                    sink.write(data)
                    sink.flush()
                else:
                    copy_new(f, sink)
        except OSError as e:
            raise CliError(f"cannot read the log {path}: {e.strerror}") from None
        return 0
    finally:
        if bus is not None:
            bus.close()


def _tail(size: int, f: Any, lines: int) -> bytes:
    f.seek(max(0, size - max(4096, lines * 512)))
    data: bytes = f.read()
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:]) if lines > 0 else b""


# -- gc ------------------------------------------------------------------------------------------------------

def cmd_gc(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    log_dir = Path(args.log_dir) if args.log_dir else default_log_dir()

    def run(bus: SystemdBus) -> int:
        reset: list[str] = []
        for unit in bus.list_units([f"{UNIT_PREFIX}*{UNIT_SUFFIX}"]):
            if bus.unit_state(unit).active_state == "failed":
                if not args.dry_run:
                    bus.reset_failed(unit)
                reset.append(unit)
        live = {i.log_path for i in list_dispatches(bus) if i.log_path}
        cutoff = time.time() - args.older_than
        removed: list[str] = []
        try:
            entries = sorted(os.scandir(log_dir), key=lambda e: e.name)
        except FileNotFoundError:
            entries = []
        except OSError as exc:
            raise CliError(f"cannot read the log directory {log_dir}: {exc.strerror}; pass --log-dir") from None
        for entry in entries:
            if not (entry.name.endswith(".log") and entry.is_file(follow_symlinks=False)) or entry.path in live:
                continue
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                if not args.dry_run:
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        continue
                removed.append(entry.path)
        if args.json:
            print(json.dumps({"reset_units": reset, "removed_logs": removed, "dry_run": args.dry_run}), file=out)
            return 0
        verb = "would " if args.dry_run else ""
        for u in reset:
            print(f"{verb}reset failed unit {u}", file=out)
        for p in removed:
            print(f"{verb}remove {p}" if args.dry_run else f"removed {p}", file=out)
        if _chatty(args, out):
            print(f"gc: {len(reset)} failed unit(s) {verb}reset, {len(removed)} log file(s) older than "
                  f"{format_duration(args.older_than)} {verb}removed from {log_dir}", file=err)
        return 0
    return _with_bus(run)


# -- install-units -------------------------------------------------------------------------------------------

def _reload(bus: SystemdBus) -> int:
    bus.reload()
    return 0


def cmd_install_units(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    dest = Path(args.dir) if args.dir else user_unit_dir()
    try:
        installed = install_units(dest)
    except ValueError as e:
        raise CliError(str(e)) from None
    for i in installed:
        if i.changed or _chatty(args, out):
            print(f"{'installed' if i.changed else 'unchanged'} {i.path}", file=out)
    if not args.no_reload:
        try:
            _with_bus(_reload)
        except NoUserBusError as e:
            raise CliError(f"the units are in {dest}, but the user manager could not be reloaded: {e}") from None
        if _chatty(args, out):
            print("reloaded the user manager (systemctl --user daemon-reload)", file=err)
    return 0
