"""The `ralph-systemd` command line (also `python -m ralph_systemd`): parse, run the subcommand, report.

Every user error ends as ONE line on stderr saying what was wrong and how to fix it, with a documented exit
code (see parser.EPILOG); tracebacks are for bugs only. The parser lives in `parser`, `run` in `run`, the
operator commands in `ops`, the table and line rendering in `format`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TextIO

from ralph_systemd.cli.format import drop_stdout
from ralph_systemd.cli.ops import EXIT_FAILED, CliError
from ralph_systemd.cli.parser import PROG, build_parser, cmd_tf
from ralph_systemd.cli.run import EXIT_LAUNCH_FAILED, RunError
from ralph_systemd.retry import BusError
from ralph_systemd.text import one_line

__all__ = ["main", "build_parser"]


#: Options that take a value: a value that starts with '-' (`--timeout -1s`, `--ticket -rf`) is joined to its
#: option before argparse sees it, so the message says what is wrong with the value instead of "expected one
#: argument".
_VALUE_OPTIONS = frozenset({"--ticket", "-t", "--session", "--timeout", "--idle-timeout", "--grace", "--cwd",
                            "--log-dir", "--memory-max", "--tasks-max", "--cpu-quota", "--older-than", "--lines",
                            "-n", "--dir", "--project"})


_SHORT_FLAGS = frozenset({"-v", "-d", "-t", "-n", "-f", "-h"})


def _join_dash_values(argv: list[str]) -> list[str]:
    """argv with `--opt -value` written `--opt=-value` (`-n -5` as `-n-5`); stops at `--` and at run's command."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--" or (not a.startswith("-") and _command_of(out) == "run"):
            return out + argv[i:]  # the session's own argv is not ours to touch
        if a in _VALUE_OPTIONS and i + 1 < len(argv):
            v = argv[i + 1]
            if v.startswith("-") and v != "--" and not v.startswith("--") and v not in _SHORT_FLAGS:
                out.append(f"{a}={v}" if a.startswith("--") else a + v)
            else:
                out += [a, v]
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _command_of(tokens: list[str]) -> str | None:
    return next((t for t in tokens if not t.startswith("-")), None)


class _OneLineWarnings(logging.Handler):
    """Library warnings (retries, launch notes) as one escaped line each on stderr, named by the command.

    A burst of the same warning (one per unit during a manager re-exec, say) is shown once, then counted;
    -v shows every one."""

    def __init__(self, name: str, err: TextIO, verbose: bool) -> None:
        super().__init__(logging.WARNING)
        self.name_ = name
        self.err = err
        self.verbose = verbose
        self.seen: set[tuple[str, object]] = set()
        self.suppressed = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            key = (record.name, record.msg)
            if key in self.seen and not self.verbose:
                self.suppressed += 1
                return
            self.seen.add(key)
            level = "error" if record.levelno >= logging.ERROR else "warning"
            print(f"{self.name_}: {level}: {one_line(record.getMessage())}", file=self.err)
        except Exception:  # logging must never break the command
            pass

    def finish(self) -> None:
        if self.suppressed:
            try:
                print(f"{self.name_}: warning: {self.suppressed} more warning(s) like the above not shown "
                      "(-v shows them)", file=self.err)
            except Exception:
                pass


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the command line; return the exit code (see EPILOG)."""
    out = out or sys.stdout
    err = err or sys.stderr
    raw = sys.argv[1:] if argv is None else list(argv)
    if _command_of(raw) == "tf":  # everything after `tf` is tf's, including --help
        i = next(k for k, t in enumerate(raw) if t == "tf")
        args = argparse.Namespace(tf_args=raw[i + 1:], command_name="tf", func=cmd_tf,
                                  verbose="-v" in raw[:i] or "--verbose" in raw[:i])
    else:
        args = build_parser().parse_args(_join_dash_values(raw))
        args.verbose = args.verbose or args.verbose_top
    name = f"{PROG} {args.command_name}"
    launch = args.command_name == "run"
    handler = _OneLineWarnings(name, err, bool(args.verbose))
    lib_log = logging.getLogger("ralph_systemd")
    lib_log.addHandler(handler)
    propagate, lib_log.propagate = lib_log.propagate, False
    code = EXIT_FAILED
    try:
        code = int(args.func(args, out, err))
        out.flush()
        return code
    except (CliError, RunError) as e:
        print(f"{name}: error: {one_line(e)}", file=err)
        return e.code
    except BusError as e:  # NoUserBusError's message says how to get a user bus
        print(f"{name}: error: {one_line(e)}", file=err)
        return EXIT_LAUNCH_FAILED if launch else EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=err)
        return 130
    except BrokenPipeError:  # `ralph-systemd logs T | head`, `run --json ... | true`
        drop_stdout(out)
        return code if launch else 0
    finally:
        lib_log.removeHandler(handler)
        lib_log.propagate = propagate
        handler.finish()
