"""What to run: DispatchSpec, validated when it is made, so bad input fails before anything starts."""

from __future__ import annotations

import math
import os
import stat
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ralph_systemd.durations import MAX_CPU_PERCENT, MAX_LIMIT
from ralph_systemd.text import escape
from ralph_systemd.naming import (
    check_ticket_fits,
    find_project_root,
    project_key,
    unit_name_for_ticket,
    validate_session,
    validate_ticket,
)

DEFAULT_SLICE = "ralph.slice"
OUTPUT_MODES = ("file", "journal")
STDIN_NULL = "null"  # stdin at EOF from the start (/dev/null), as systemd starts a service
STDIN_PIPE = "pipe"  # an open pipe we hold: closing it (EOF) is the ladder's first step
StdinPolicy = str | bytes | os.PathLike[str]
# Variables that change an agent's behaviour when it is started from inside another agent's session: a
# `claude` that sees CLAUDECODE refuses to start ("nested session"), and loops that pass it on spin for ever
# (umputun/ralphex#156). The tf backend leaves these out of every dispatch's environment.
NESTED_AGENT_ENV = ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT")
MAX_TIMEOUT_S = 10 * 365 * 24 * 3600.0  # ten years: beyond that a "timeout" is a typo


def default_eof_grace(grace: float) -> float:
    """With stdin "pipe", EOF to SIGTERM when not given: a quarter of the grace, at most 2 s."""
    return min(2.0, grace / 4)


def default_log_dir() -> Path:
    """$XDG_STATE_HOME/ralph-systemd/logs (~/.local/state/ralph-systemd/logs)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "ralph-systemd" / "logs"


def _seconds(name: str, value: float | None, *, allow_none: bool, allow_zero: bool = False) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} is required: give a number of seconds")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, not {type(value).__name__} {value!r}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name} is NaN: give a number of seconds")
    if math.isinf(v):
        hint = "leave it out (None) for no limit" if allow_none else "give a finite number of seconds"
        raise ValueError(f"{name} is infinite: {hint}")
    if v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} seconds, got {value!r}")
    if v > MAX_TIMEOUT_S:
        raise ValueError(f"{name} of {value!r} s is over ten years: give seconds, not milliseconds?")
    return v


def _no_nul(what: str, text: str) -> None:
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL character, which cannot be passed to a program: {text!r}")


@dataclass(frozen=True)
class DispatchSpec:
    """One session to run in its own transient scope.

    argv        the program and its arguments; never run through a shell.
    ticket      the ticket id; names the unit `ralph-<project key>-<escaped ticket>.scope` (one live dispatch
                per ticket and project).
    cwd         working directory (the ticket's worktree).
    project     the project key (naming.project_key(dir)); None = the key of cwd's project (the directory
                holding its git common dir, or cwd itself outside git). After construction: always the key.
    env         the full environment of the session; None inherits this process's environment.
    unset_env   names removed from that environment (inherited or given), e.g. NESTED_AGENT_ENV.
    stdin       what the session reads: "null" (default: /dev/null, at EOF from the start, as systemd's
                StandardInput=null; a print-mode agent such as `pi -p` reads piped stdin to EOF before it
                starts, so an open stdin is a hang), "pipe" (an open pipe for interactive sessions; closing it
                is the ladder's first step), bytes (the session reads them, then EOF) or a path (a file, or a
                FIFO, opened read-only as its stdin). Only "pipe" has an EOF step in the ladder.
    session     session id; generated when None.
    timeout     wall-clock limit in seconds, enforced by systemd (RuntimeMaxSec) even if we die; None = none.
    idle_timeout  stop after this many seconds with nothing written to the session's log; None = off.
    grace       seconds from the start of a stop until systemd SIGKILLs the whole cgroup (TimeoutStopSec).
    eof_grace   with stdin="pipe": seconds between closing the session's stdin (EOF) and SIGTERM to it;
                must be < grace. None: a quarter of grace, at most 2 s. Other stdin policies have no EOF
                step: it is then 0 (a positive value is an error).
    log_dir     where the per-session log goes (0700 directory, 0600 file).
    memory_max, tasks_max, cpu_quota  optional limits (bytes, tasks, percent of one CPU).
    slice       parent slice of the scope.
    project     the project key (8 hex digits) that scopes the unit name; None = the project of `cwd`.
    output      "file" (default): stdout and stderr go to the private log file; "journal": to the user's
                journal as the scope's own lines (the log file then stays empty; see README "The journal").
    """

    argv: Sequence[str]
    ticket: str
    cwd: str | os.PathLike[str] = "."
    env: Mapping[str, str] | None = None
    session: str | None = None
    timeout: float | None = None
    idle_timeout: float | None = None
    grace: float = 10.0
    eof_grace: float | None = None
    log_dir: str | os.PathLike[str] | None = None
    memory_max: int | None = None
    tasks_max: int | None = None
    cpu_quota: float | None = None
    slice: str = DEFAULT_SLICE
    project: str | None = None
    output: str = "file"
    stdin: StdinPolicy = STDIN_NULL
    unset_env: Sequence[str] = ()
    unit: str = field(init=False)
    project_root: str | None = field(init=False, default=None)  # when the key was derived from cwd

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_MODES:
            raise ValueError(f"output {self.output!r} is not one of {', '.join(OUTPUT_MODES)}")
        if isinstance(self.argv, (str, bytes)) or not isinstance(self.argv, Sequence):
            raise ValueError(f"argv must be a list of strings, not {type(self.argv).__name__} (no shell is used)")
        if not self.argv or not self.argv[0]:
            raise ValueError("argv is empty: give the program to run, e.g. ['pi', '-p', '/tf T1 --auto']")
        for i, arg in enumerate(self.argv):
            if not isinstance(arg, str):
                raise ValueError(f"argv[{i}] must be a string, not {type(arg).__name__} {arg!r}")
            _no_nul(f"argv[{i}]", arg)
        object.__setattr__(self, "argv", tuple(self.argv))
        validate_ticket(self.ticket)
        object.__setattr__(self, "session", validate_session(self.session) if self.session is not None
                           else uuid.uuid4().hex[:16])
        assert self.session is not None
        check_ticket_fits(self.ticket, self.session)  # unit name AND log file name, before anything exists
        cwd = os.fspath(self.cwd)
        _no_nul("cwd", cwd)
        object.__setattr__(self, "cwd", os.path.abspath(cwd))
        if self.project is None:
            root = find_project_root(self.cwd)
            object.__setattr__(self, "project_root", os.fspath(root))
            object.__setattr__(self, "project", project_key(root))
        object.__setattr__(self, "unit", unit_name_for_ticket(self.ticket, self.project))
        if self.env is not None:
            env = dict(self.env)
            for k, v in env.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise ValueError(f"env entries must be str=str, got {k!r}={v!r}")
                if not k or "=" in k:
                    raise ValueError(f"env name {k!r} is invalid: it must be non-empty and contain no '='")
                _no_nul(f"env name {k!r}", k)
                _no_nul(f"env[{k!r}]", v)
            object.__setattr__(self, "env", env)
        _seconds("timeout", self.timeout, allow_none=True)
        _seconds("idle_timeout", self.idle_timeout, allow_none=True)
        grace = _seconds("grace", self.grace, allow_none=False)
        assert grace is not None
        self._check_stdin()
        self._check_unset_env()
        if self.stdin != STDIN_PIPE:
            if self.eof_grace:
                raise ValueError(f"eof_grace ({self.eof_grace!r} s) applies only with stdin='pipe': with "
                                 f"stdin={self.stdin_label} the session's stdin is not ours to close, so the "
                                 "ladder starts with SIGTERM; leave eof_grace out")
            object.__setattr__(self, "eof_grace", 0.0)
        elif self.eof_grace is None:
            object.__setattr__(self, "eof_grace", default_eof_grace(grace))
        eof_grace = _seconds("eof_grace", self.eof_grace, allow_none=False, allow_zero=True)
        assert eof_grace is not None
        if eof_grace >= grace:
            raise ValueError(f"eof_grace ({eof_grace} s) must be shorter than grace ({grace} s): after EOF the "
                             "session still needs time for SIGTERM before systemd's SIGKILL")
        for name in ("memory_max", "tasks_max"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.cpu_quota is not None:
            q = self.cpu_quota
            if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or q <= 0 \
                    or q > MAX_CPU_PERCENT:
                raise ValueError(f"cpu_quota must be a percentage of one CPU above 0 and at most {MAX_CPU_PERCENT:.0f} "
                                 f"(e.g. 50 or 200 for two CPUs), got {q!r}")
        for name in ("memory_max", "tasks_max"):
            v = getattr(self, name)
            if v is not None and v > MAX_LIMIT:
                raise ValueError(f"{name} of {v} is too large: systemd takes at most {MAX_LIMIT}; leave it out "
                                 "for no limit")
        if not (self.slice.endswith(".slice") and unit_name_is_plain(self.slice)):
            raise ValueError(f"slice {self.slice!r} is not a slice unit name like 'ralph.slice'")
        if self.log_dir is not None:
            _no_nul("log_dir", os.fspath(self.log_dir))

    def _check_stdin(self) -> None:
        value = self.stdin
        if isinstance(value, str):
            if value not in (STDIN_NULL, STDIN_PIPE):
                raise ValueError(f"stdin {value!r} is not a policy: give 'null', 'pipe', bytes to send, or a "
                                 "pathlib.Path of a file to read")
            return
        if isinstance(value, (bytes, bytearray, memoryview)):
            object.__setattr__(self, "stdin", bytes(value))
            return
        if not isinstance(value, os.PathLike):
            raise ValueError(f"stdin must be 'null', 'pipe', bytes or a path, not {type(value).__name__}")
        path = os.path.abspath(os.fspath(value))
        _no_nul("stdin path", path)
        try:
            st = os.stat(path)
        except OSError as e:
            raise ValueError(f"stdin file {path}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(f"stdin file {path} is a directory: give a file to read")
        if not os.access(path, os.R_OK):
            raise ValueError(f"stdin file {path} is not readable by this user")
        object.__setattr__(self, "stdin", Path(path))

    def _check_unset_env(self) -> None:
        names = self.unset_env
        if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
            raise ValueError(f"unset_env must be a list of variable names, not {type(names).__name__}")
        for name in names:
            if not isinstance(name, str) or not name or "=" in name or "\0" in name:
                raise ValueError(f"unset_env entry {name!r} is not a variable name")
        object.__setattr__(self, "unset_env", tuple(names))

    @property
    def stdin_label(self) -> str:
        """How the session's stdin is set up, for operators: null, pipe, input (N bytes), file PATH."""
        if isinstance(self.stdin, bytes):
            return f"input ({len(self.stdin)} bytes)"
        if isinstance(self.stdin, os.PathLike):
            return f"file {escape(os.fspath(self.stdin))}"
        return self.stdin

    @property
    def stdin_kind(self) -> str:
        """"null", "pipe", "input" or "file": the journal's RALPH_STDIN field."""
        if isinstance(self.stdin, bytes):
            return "input"
        return "file" if isinstance(self.stdin, os.PathLike) else self.stdin

    @property
    def log_directory(self) -> Path:
        return Path(os.path.abspath(os.fspath(self.log_dir))) if self.log_dir is not None else default_log_dir()

    @property
    def environment(self) -> dict[str, str]:
        """The session's environment: env (or ours), less unset_env."""
        env = dict(os.environ) if self.env is None else dict(self.env)
        for name in self.unset_env:
            env.pop(name, None)
        return env

    def describe(self) -> str:
        """The unit Description: what an operator sees in `systemctl --user status`.

        `ralph ticket=<ticket> session=<session> project=<root or key>: <command>`, every part with control
        characters escaped (so it is harmless on a terminal) and ':' escaped in the project, so
        scope.facts_from_unit can split it back."""
        cmd = " ".join(self.argv)
        if len(cmd) > 160:
            cmd = cmd[:157] + "..."
        project = escape(self.project_root if self.project_root is not None else self.project).replace(":", "\\x3a")
        return f"ralph ticket={escape(self.ticket)} session={self.session} project={project}: {escape(cmd)}"


def unit_name_is_plain(name: str) -> bool:
    return bool(name) and len(name) <= 255 and all(c.isascii() and (c.isalnum() or c in ":_.-\\@") for c in name)
