"""The operator subcommands: ls, status, stop, logs, gc, install-units. Each returns the exit code.

A TICKET names a dispatch in the project of the current directory (or --project DIR); when it has no live
dispatch there, the one live dispatch of that ticket in any project; a unit name always works. Everything
that came from a session or a unit is printed escaped (text.escape).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ralph_systemd.bus import NoUserBusError, PystemdUserBus, SystemdBus
from ralph_systemd.cli.format import TerminalSink, last_line, print_pairs, table
from ralph_systemd.text import escape
from ralph_systemd.durations import format_duration, format_size
from ralph_systemd.journal_read import LaunchRecord, find_launch, write_lines
from ralph_systemd.journal_read import follow as follow_journal
from ralph_systemd.follow import FollowError, copy_new, follow
from ralph_systemd.unit_info import (
    UNIT_PATTERN,
    AmbiguousTicket,
    DispatchInfo,
    dispatch_info,
    find_unit,
    list_dispatches,
    looks_like_unit,
    resolve_unit,
)
from ralph_systemd.logs import LogFile, is_ours, open_log_dir, session_logs
from ralph_systemd.scope import facts_from_unit
from ralph_systemd.naming import is_unit_name_of_ours, project_key
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


def _project(args: argparse.Namespace) -> str:
    """The project key a ticket is looked up in: --project DIR, else the current directory's project."""
    directory = getattr(args, "project", None) or "."
    if not os.path.isdir(directory):
        raise CliError(f"--project {directory!r} is not a directory: give a directory of the project", EXIT_USAGE)
    return project_key(directory)


def _check_target(target: str, key: str) -> None:
    """Usage error (rc 2) for a target that can be neither a unit name of ours nor a ticket id."""
    try:
        resolve_unit(target, key)
    except ValueError as e:
        raise CliError(f"{target!r} is neither a ticket id nor a ralph-systemd unit name: {e}", EXIT_USAGE) from None


def _find(bus: SystemdBus, target: str, key: str) -> str:
    try:
        return find_unit(bus, target, key)
    except AmbiguousTicket as e:
        raise CliError(str(e), EXIT_USAGE) from None


def _no_such(target: str, unit: str) -> CliError:
    return CliError(f"no live dispatch for {target!r} (unit {unit} is not loaded): "
                    "`ralph-systemd ls` lists the live ones", EXIT_NO_SUCH_DISPATCH)


def _with_bus(fn: Callable[[SystemdBus], int]) -> int:
    bus = PystemdUserBus()
    try:
        return fn(bus)
    finally:
        bus.close()


def _short_path(path: str | None) -> str:
    if not path:
        return "-"
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if path == home or path.startswith(home + "/") else path


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
        rows = [[i.ticket, _short_path(i.project_root) if i.project_root else (i.project or "-"), i.session or "-",
                 _state(i), format_duration(i.age_s), format_duration(i.time_left_s), format_size(i.memory_bytes),
                 format_duration(i.cpu_s), i.command or "-"] for i in infos]
        table(["TICKET", "PROJECT", "SESSION", "STATE", "AGE", "LEFT", "MEMORY", "CPU", "COMMAND"], rows, out,
              header=_chatty(args, out))
        return 0
    return _with_bus(run)


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    key = _project(args)
    _check_target(args.target, key)

    def run(bus: SystemdBus) -> int:
        unit = _find(bus, args.target, key)
        info = dispatch_info(bus, unit, with_pids=True)
        if info is None:
            raise _no_such(args.target, unit)
        if args.json:
            print(json.dumps(info.to_json()), file=out)
            return 0
        timeout = "none" if info.timeout_s is None else \
            f"{format_duration(info.timeout_s)} ({format_duration(info.time_left_s)} left)"
        print_pairs([
            ("ticket", info.ticket), ("unit", info.unit),
            ("project", f"{info.project_root or '-'} (key {info.project or '-'})"), ("session", info.session or "-"),
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
    unit: str | None = None
    if not args.all:
        key = _project(args)
        _check_target(args.target, key)

        def look_up(bus: SystemdBus) -> int:
            nonlocal unit
            unit = _find(bus, args.target, key)
            if dispatch_info(bus, unit) is None:
                raise _no_such(args.target, unit)
            return 0
        _with_bus(look_up)  # our own short-lived connection: the supervisor's bus is its own business
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
            print(escape(f"stopped {r.ticket} ({r.unit}, session {r.session}; ran {format_duration(r.duration_s)}), "
                       f"systemd result {r.systemd_result or '-'}"), file=out)
        if results:
            print(f"stop took {format_duration(took)}", file=err)
    return 0


# -- logs ----------------------------------------------------------------------------------------------------

def _finished_log(log_dir: Path, ticket: str, key: str, session: str | None) -> str | None:
    """The newest log of exactly (key, ticket[, session]) in log_dir; when this project has none, the newest of
    the one other project that has that ticket (CliError listing them when several do)."""
    try:
        dir_fd = open_log_dir(log_dir)
    except OSError:
        return None
    try:
        logs = [lf for lf in session_logs(dir_fd) if lf.ticket == ticket and session in (None, lf.session)]
        mine = [lf for lf in logs if lf.project == key]
        if not mine:
            projects = sorted({lf.project for lf in logs})
            if len(projects) > 1:
                raise CliError(f"no log of ticket {ticket!r} from this project, but logs from {len(projects)} other "
                               f"projects (keys {', '.join(projects)}) in {log_dir}: pass --project DIR",
                               EXIT_USAGE)
            mine = logs

        def mtime(lf: LogFile) -> float:
            try:
                return os.stat(lf.name, dir_fd=dir_fd, follow_symlinks=False).st_mtime
            except OSError:
                return 0.0
        return str(log_dir / max(mine, key=mtime).name) if mine else None
    finally:
        os.close(dir_fd)


def cmd_logs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    key = _project(args)
    _check_target(args.target, key)
    try:
        bus: SystemdBus | None = PystemdUserBus()
    except NoUserBusError:
        if args.follow:
            raise
        bus = None  # finished dispatches' logs need no manager
    try:
        if looks_like_unit(args.target):
            unit = args.target
        else:
            unit = _find(bus, args.target, key) if bus is not None else resolve_unit(args.target, key)
        facts = facts_from_unit(unit, "", ())
        assert facts is not None  # resolve_unit/find_unit give only names of ours
        unit_key, ticket = facts.project or key, facts.ticket
        info = dispatch_info(bus, unit) if bus is not None else None
        if info is not None and args.session not in (None, info.session):
            info = None
        path = info.log_path if info is not None else None  # the unit's own Documentation URI while it lives
        try:  # its launched line in the journal says where its output went (the file, or the journal)
            launch = find_launch(ticket, info.session if info is not None else args.session, unit=unit)
        except OSError:  # no journal to read: the log file is all there is
            launch = None
        sink: Any = out.buffer if hasattr(out, "buffer") else sys.stdout.buffer
        if launch is not None and launch.output == "journal":
            out.flush()
            return _journal_logs(args, launch, bus if info is not None else None, unit, path or launch.log_path,
                                 sink)
        if path is None:
            log_dir = Path(args.log_dir) if args.log_dir else default_log_dir()
            path = _finished_log(log_dir, ticket, unit_key, args.session)
            if path is None:
                raise CliError(f"no log for {args.target!r}: no live dispatch, and no log of ticket "
                               f"{ticket!r}{' session ' + args.session if args.session else ''} in {log_dir} "
                               "(pass --log-dir if it used another one)", EXIT_NO_SUCH_DISPATCH)
        out.flush()
        if out.isatty() and not args.raw:  # a session's bytes never drive the terminal (colours pass)
            sink = TerminalSink(sink)
        if args.follow and info is not None and bus is not None:
            try:
                follow(path, bus, unit, sink)
            except FollowError as e:
                raise CliError(str(e)) from None
            except OSError as e:
                if isinstance(e, BrokenPipeError):
                    raise
                raise CliError(f"cannot follow the log {path}: {e.strerror}") from None
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
        except BrokenPipeError:
            raise
        except OSError as e:
            raise CliError(f"cannot read the log {path}: {e.strerror}") from None
        return 0
    finally:
        if bus is not None:
            bus.close()


def _journal_logs(args: argparse.Namespace, launch: LaunchRecord, bus: SystemdBus | None, unit: str,
                  path: str | None, sink: Any) -> int:
    """A dispatch that sent its output to the journal: its own lines there (escaped), and the private file
    too if the session fell back to it (its journal stream could not be opened)."""
    try:
        uj = launch.open_output(lines=args.lines)
    except OSError as e:
        raise CliError(f"cannot read the journal: {e.strerror or e}") from None
    with uj:
        if path and os.path.exists(path) and os.path.getsize(path) > 0:
            fallback: Any = sink if args.raw else TerminalSink(sink)
            with open(path, "rb") as f:
                copy_new(f, fallback)
        if args.follow and bus is not None:
            bus.ref_unit(unit)  # its PropertiesChanged now reaches us

            def ended() -> bool:
                assert bus is not None
                bus.drain()
                st = bus.unit_state(unit)
                return st.ended or not st.exists

            follow_journal(uj, sink, ended=ended, wake_fd=bus.fileno())
        else:
            write_lines(uj.read(), sink)
    sink.flush()
    return 0


def _tail(size: int, f: Any, lines: int) -> bytes:
    f.seek(max(0, size - max(4096, lines * 512)))
    data: bytes = f.read()
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:]) if lines > 0 else b""


# -- gc ------------------------------------------------------------------------------------------------------

def cmd_gc(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Reset failed ralph units nobody holds; remove old logs that are provably ours and not live.

    A log is removed only when its name has our shape AND its marker (written at creation) agrees, it is a
    regular file in the directory itself (a symlinked log directory is refused, entries are never followed),
    it is older than --older-than, and it is not (same device and inode) the log of a live dispatch."""
    log_dir = Path(args.log_dir) if args.log_dir else default_log_dir()
    try:
        dir_fd: int | None = open_log_dir(log_dir)
    except FileNotFoundError:
        dir_fd = None
    except OSError as exc:
        if os.path.islink(log_dir):
            raise CliError(f"log directory {log_dir} is a symlink: gc never follows one (it could point anywhere); "
                           f"pass the real directory: --log-dir {os.path.realpath(log_dir)}", EXIT_USAGE) from None
        raise CliError(f"cannot open the log directory {log_dir}: {exc.strerror}; pass --log-dir") from None

    def run(bus: SystemdBus) -> int:
        reset: list[str] = []
        held: list[tuple[str, tuple[str, ...]]] = []
        for unit in bus.list_units([UNIT_PATTERN]):
            if not is_unit_name_of_ours(unit):
                continue
            st = bus.unit_state(unit)
            if st.active_state != "failed":
                continue
            if st.refs:  # someone (a live supervisor) holds it to read its result: not ours to erase
                held.append((unit, st.refs))
                continue
            if not args.dry_run:
                bus.reset_failed(unit)
            reset.append(unit)
        live: set[tuple[int, int]] = set()
        for i in list_dispatches(bus):
            if i.log_path:
                try:
                    s = os.stat(i.log_path)
                    live.add((s.st_dev, s.st_ino))
                except OSError:
                    pass
        cutoff = time.time() - args.older_than
        removed: list[str] = []
        skipped_foreign = 0
        if dir_fd is not None:
            for lf in sorted(session_logs(dir_fd), key=lambda lf: lf.name):
                try:
                    s = os.stat(lf.name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(s.st_mode) or (s.st_dev, s.st_ino) in live or s.st_mtime >= cutoff:
                    continue
                if not is_ours(dir_fd, lf):
                    skipped_foreign += 1
                    continue
                if not args.dry_run:
                    try:
                        os.unlink(lf.name, dir_fd=dir_fd)
                    except FileNotFoundError:
                        continue
                removed.append(str(log_dir / lf.name))
        if args.json:
            print(json.dumps({"reset_units": reset, "held_units": [u for u, _ in held], "removed_logs": removed,
                              "dry_run": args.dry_run}), file=out)
            return 0
        verb = "would " if args.dry_run else ""
        for u in reset:
            print(escape(f"{verb}reset failed unit {u}"), file=out)
        for u, refs in held:
            print(escape(f"kept failed unit {u}: held by {', '.join(refs)} (a live supervisor reads its result)"),
                  file=out)
        for p in removed:
            print(escape(f"{verb}remove {p}" if args.dry_run else f"removed {p}"), file=out)
        if _chatty(args, out):
            print(escape(f"gc: {len(reset)} failed unit(s) {verb}reset, {len(removed)} log file(s) older than "
                       f"{format_duration(args.older_than)} {verb}removed from {log_dir}"
                       + (f"; {skipped_foreign} old file(s) with our name shape but no marker left alone"
                          if skipped_foreign else "")), file=err)
        return 0
    try:
        return _with_bus(run)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


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
            print(escape(f"{'installed' if i.changed else 'unchanged'} {i.path}"), file=out)
    if not args.no_reload:
        try:
            _with_bus(_reload)
        except NoUserBusError as e:
            raise CliError(f"the units are in {dest}, but the user manager could not be reloaded: {e}") from None
        if _chatty(args, out):
            print("reloaded the user manager (systemctl --user daemon-reload)", file=err)
    return 0

