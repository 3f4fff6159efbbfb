"""The `ralph-systemd` argument parser: every subcommand, its options and help, the exit codes (EPILOG).

A usage error is ONE line on stderr naming what was wrong, exit 2 (`_Parser.error`)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import NoReturn, TextIO

from ralph_systemd.cli.ops import EXIT_USAGE, CliError, cmd_gc, cmd_install_units, cmd_logs, cmd_ls, cmd_status, cmd_stop
from ralph_systemd.cli.run import cmd_run, parse_stdin
from ralph_systemd.durations import DURATION_HELP, parse_count, parse_duration, parse_percent, parse_size

PROG = "ralph-systemd"

EPILOG = """\
exit codes:
  0      success (run: the session exited 0 by itself)
  1      the user manager could not do it (no user bus, D-Bus error); run: the session's own exit code
  2      bad usage: unknown flag, bad time span/size, bad ticket id or unit name; nothing was changed
  4      status/stop/logs: no such dispatch (no live unit, no log)
  N      run: the session's exit code N
  124    run: the timeout (--timeout) or the idle timeout (--idle-timeout) fired
  125    run: the dispatch could not be launched (missing program or cwd, ticket already running, no user bus)
  128+N  run: the session was killed by signal N (137 = SIGKILL)
  130    run: interrupted by SIGINT (Ctrl-C) and the session stopped; other commands: interrupted
  143    run: the dispatch was stopped (`ralph-systemd stop`, `systemctl --user stop`, SIGTERM to run),
         whatever the session's own exit code; a stopped run never exits 0

A TICKET means that ticket in the project of the current directory (or --project DIR): the directory holding
the git common dir, so every worktree of a repository is one project. If it has no live dispatch there, the
one live dispatch of that ticket in another project is used; a unit name always works.

Human output is a table or "key: value" lines; headers and confirmations appear only when stdout is a
terminal, or with -v. --json prints one JSON document on stdout. Errors go to stderr, one line each.
"""

RUN_DESCRIPTION = """\
Launch one dispatch: CMD runs in its own transient scope ralph-<project key>-<ticket>.scope under
ralph.slice, its output in a private log file. Waits for it and exits with its exit code (see below); with
--detach it prints the ticket, unit, session and log path and leaves it running, bounded by --timeout
(enforced by systemd). The ticket defaults to the program's name plus 6 random hex digits, e.g. `sleep.3f9a1c`.
Time spans are systemd's: 90, 90s, 500ms, 5min, 1h 30min, 2d. Sizes are 1024-based: 512M, 2G.
The session's stdin (--stdin) is /dev/null by default, at EOF from the start as systemd starts a service:
a print-mode agent (`pi -p`, `claude -p`) reads piped stdin to its end before it starts, so an open stdin
would hang it. `--stdin text:TEXT` or `file:PATH` gives it input, then EOF; `--stdin pipe` keeps an open
pipe for an interactive session, and closing it (EOF) becomes the ladder's first step.
Ctrl-C (or SIGTERM) stops the session with the ladder: SIGTERM (after EOF with --stdin pipe), SIGKILL after
--grace. With --detach a stop (`ralph-systemd stop`, --timeout) is systemd's alone: SIGTERM to every
process, SIGKILL after --grace.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong, where to look) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _arg_type(fn: Callable[[str], object], name: str) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return fn(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = name  # argparse names the type in its messages
    return convert


DURATION = _arg_type(parse_duration, "duration")
TIMEOUT = _arg_type(lambda t: parse_duration(t, allow_infinity=True), "duration")
SIZE = _arg_type(parse_size, "size")
PERCENT = _arg_type(parse_percent, "percentage")
COUNT = _arg_type(parse_count, "count")
STDIN = _arg_type(parse_stdin, "stdin policy")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="headers and confirmations even when stdout is not a terminal")
    js = _Parser(add_help=False)
    js.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    proj = _Parser(add_help=False)
    proj.add_argument("--project", metavar="DIR",
                      help="look a TICKET up in the project of DIR (default: the current directory's)")

    p = _Parser(prog=PROG, description="Run and watch AI coding-agent sessions in transient systemd user scopes.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", dest="verbose_top", action="store_true", help="as -v after the command")
    sub = p.add_subparsers(dest="command_name", metavar="COMMAND", required=True, parser_class=_Parser)

    def add(name: str, help_: str, parents: list[_Parser], description: str | None = None
            ) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=description or help_, parents=parents, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    r = add("run", "launch one dispatch and wait for it (or --detach)", [common, js], RUN_DESCRIPTION)
    r.add_argument("--ticket", "-t", metavar="T", help="ticket id (default: <program>.<6 hex digits>)")
    r.add_argument("--session", metavar="S", help="session id (default: 16 random hex digits)")
    r.add_argument("--timeout", type=TIMEOUT, metavar="DUR",
                   help="wall-clock limit, enforced by systemd (RuntimeMaxSec) even if we die; default none")
    r.add_argument("--idle-timeout", type=DURATION, metavar="DUR",
                   help="stop after this long with no output; needs us watching (not with --detach)")
    r.add_argument("--grace", type=DURATION, metavar="DUR",
                   help="from a stop's start until systemd SIGKILLs everything left (TimeoutStopSec); default 10s")
    r.add_argument("--cwd", metavar="DIR", default=".", help="working directory (default: here)")
    r.add_argument("--log-dir", metavar="DIR", help="log directory (default: ~/.local/state/ralph-systemd/logs)")
    r.add_argument("--memory-max", type=SIZE, metavar="SIZE", help="memory limit (MemoryMax), e.g. 2G")
    r.add_argument("--tasks-max", type=COUNT, metavar="N", help="process/thread limit (TasksMax)")
    r.add_argument("--cpu-quota", type=PERCENT, metavar="PCT", help="CPU limit in %% of one CPU (CPUQuota), e.g. 150%%")
    r.add_argument("--output", choices=("file", "journal"), default="file",
                   help="where the session's stdout/stderr go: its private log file (default), or the user "
                        "journal as the scope's own lines (`ralph-systemd logs` reads either)"),
    r.add_argument("--stdin", type=STDIN, metavar="POLICY", default="null",
                   help="the session's stdin: null (default: /dev/null), pipe (open until the ladder's EOF step), "
                        "text:TEXT (TEXT, then EOF) or file:PATH (the file, then EOF)")
    r.add_argument("--detach", "-d", action="store_true", help="return once it runs; print ticket, unit, session, log")
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...", help="the program and its arguments")
    r.set_defaults(func=cmd_run)

    ls = add("ls", "list live dispatches: ticket, session, state, age, time left, memory, CPU", [common, js])
    ls.set_defaults(func=cmd_ls)

    st = add("status", "show one live dispatch", [common, js, proj])
    st.add_argument("target", metavar="TICKET|UNIT")
    st.set_defaults(func=cmd_status)

    sp = add("stop", "stop dispatches with the ladder (EOF, SIGTERM, SIGKILL after the grace) and wait",
             [common, js, proj])
    sp.add_argument("target", metavar="TICKET|UNIT", nargs="?")
    sp.add_argument("--all", action="store_true", help="stop every live ralph-* dispatch")
    sp.set_defaults(func=cmd_stop)

    lg = add("logs", "print a dispatch's log (live, or the newest finished one in the log directory)",
             [common, proj])
    lg.add_argument("target", metavar="TICKET|UNIT")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new output until the dispatch ends")
    lg.add_argument("-n", "--lines", type=COUNT, metavar="N", help="only the last N lines")
    lg.add_argument("--session", metavar="S", help="that session's log, not the newest")
    lg.add_argument("--raw", action="store_true",
                    help="on a terminal, print control sequences as they are (default: escaped; colours pass)")
    lg.add_argument("--log-dir", metavar="DIR", help="where finished dispatches' logs are (default: the run default)")
    lg.set_defaults(func=cmd_logs)

    gc = add("gc", "reset failed ralph units nobody holds; delete old log files that are provably ours "
                   "(never a live dispatch's, never through a symlink)", [common, js])
    gc.add_argument("--older-than", type=DURATION, metavar="DUR", default=7 * 86400.0,
                    help=f"delete logs last written longer ago than this (default 7d); {DURATION_HELP}")
    gc.add_argument("--log-dir", metavar="DIR", help="log directory (default: ~/.local/state/ralph-systemd/logs)")
    gc.add_argument("--dry-run", "-n", action="store_true", help="only print what would be done")
    gc.set_defaults(func=cmd_gc)

    iu = add("install-units", "install ralph.slice into the user unit directory and reload the user manager",
             [common])
    iu.add_argument("--dir", metavar="DIR", help="unit directory (default: $XDG_CONFIG_HOME/systemd/user)")
    iu.add_argument("--no-reload", action="store_true", help="do not reload the user manager")
    iu.set_defaults(func=cmd_install_units)

    tf = sub.add_parser("tf", help="run tf's own command line with ralph-systemd as its backend (ARGS go to tf)",
                        add_help=False)
    tf.add_argument("tf_args", nargs=argparse.REMAINDER, metavar="ARGS")
    tf.set_defaults(func=cmd_tf)
    return p


def cmd_tf(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`ralph-systemd tf ARGS...`: tf's own CLI (ralph_systemd.tf.cli.main) with ralph-systemd installed."""
    try:  # lazy: tf's code loads only for this command
        tf_main = importlib.import_module("ralph_systemd.tf.cli").main
    except (ImportError, AttributeError) as e:
        raise CliError(f"the tf integration cannot be loaded ({e}); it needs ralph_systemd.tf.cli and tf "
                       "importable (pip install tf, or PYTHONPATH)") from None
    argv = list(args.tf_args)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    return int(tf_main(argv))
