"""Start a session's process so that it cannot run, or fork, before it is inside its scope.

The child is forked, sets up its stdio and session, then blocks reading a "gate" pipe. Only after the
scope's start job has completed does the parent write to the gate; the child then execs. An exec failure
comes back on a close-on-exec error pipe (as subprocess does it), so "it did not start" is never
mistaken for "it started". Aborting a launch kills and reaps the child and closes every FD.
"""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import stat
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ralph_systemd.limits import SESSION_NOFILE_SOFT
from ralph_systemd.spec import STDIN_NULL, STDIN_PIPE, StdinPolicy

if TYPE_CHECKING:
    from ralph_systemd.journal import JournalOutput

_MAXFD = os.sysconf("SC_OPEN_MAX")
NOTICE_PREFIX = "journal: "  # on the report pipe: not an exec failure, a note (the journal was unreachable)
_CAUGHT = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def resolve_executable(program: str, env_path: str | None, cwd: str) -> str:
    """Absolute path of the program the way execvp would find it, or ValueError saying what is wrong."""
    def check(path: str) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(f"program {program!r} is a directory ({path}), not an executable")
        if not os.access(path, os.X_OK):
            raise ValueError(f"program {program!r} ({path}) is not executable: chmod +x it")
        return path

    if "/" in program:
        path = program if os.path.isabs(program) else os.path.join(cwd, program)
        found = check(path)
        if found is None:
            raise ValueError(f"program {program!r} does not exist ({path})")
        return found
    search = env_path if env_path is not None else os.defpath
    for d in search.split(os.pathsep):
        found = check(os.path.join(d or ".", program))
        if found is not None:
            return os.path.abspath(found)
    raise ValueError(f"program {program!r} was not found in PATH={search}: install it or give its full path")


@dataclass
class GatedChild:
    """A forked child waiting at its gate. The parent owns every FD here until close_all()."""

    pid: int
    pidfd: int
    stdin_w: int | None  # stdin="pipe": the session's stdin; closing it is the EOF step of the kill ladder
    gate_w: int | None
    err_r: int | None
    notices: list[str] = field(default_factory=list)

    def open_gate(self) -> int:
        """Let the child exec; returns the fd that reports it: readable once the exec succeeded (EOF: the
        write end is close-on-exec) or failed (the reason). Read it with exec_failure()."""
        assert self.gate_w is not None and self.err_r is not None
        os.write(self.gate_w, b"1")
        os.close(self.gate_w)
        self.gate_w = None
        return self.err_r

    def exec_failure(self) -> str | None:
        """None if the program was exec'ed, else why not (the child has then exited). Blocks until the child
        has done one or the other, which takes about a millisecond once the gate is open. Notices the child
        sent on the way (its journal stream failed) are kept in `notices`."""
        assert self.err_r is not None
        chunks = []
        while chunk := os.read(self.err_r, 4096):
            chunks.append(chunk)
        os.close(self.err_r)
        self.err_r = None
        text = b"".join(chunks).decode(errors="replace")
        while text.startswith(NOTICE_PREFIX):
            line, _, text = text.partition("\n")
            self.notices.append(line[len(NOTICE_PREFIX):])
        return text or None

    def abort(self) -> None:
        """Kill and reap a child that must not run; close every FD. Safe to call in any state."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self.close_all()

    def close_stdin(self) -> None:
        if self.stdin_w is not None:
            os.close(self.stdin_w)
            self.stdin_w = None

    def close_all(self) -> None:
        for name in ("stdin_w", "gate_w", "err_r", "pidfd"):
            fd = getattr(self, name)
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None if name != "pidfd" else -1)


def open_stdin(policy: StdinPolicy) -> tuple[int, int | None]:
    """(the fd the child reads as its stdin, our write end or None) for a stdin policy (see DispatchSpec).

    Input bytes go into a sealed in-memory file (memfd) that the child reads at its own pace: nothing is
    written from our loop, so a slow reader blocks nobody. A file is opened non-blocking (a FIFO without a
    writer would otherwise block the open), then made blocking again for the session."""
    if isinstance(policy, bytes):
        fd = os.memfd_create("ralph-stdin", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(policy)
            while view:
                view = view[os.write(fd, view):]
            os.lseek(fd, 0, os.SEEK_SET)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
                        | fcntl.F_SEAL_SEAL)
        except BaseException:
            os.close(fd)
            raise
        return fd, None
    if policy == STDIN_PIPE:
        r, w = os.pipe2(os.O_CLOEXEC)
        return r, w
    path = os.devnull if policy == STDIN_NULL else os.fspath(policy)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    os.set_blocking(fd, True)
    return fd, None


def fork_gated(executable: str, argv: tuple[str, ...], cwd: str, env: dict[str, str], log_fd: int,
               journal: JournalOutput | None = None, stdin: StdinPolicy = STDIN_PIPE) -> GatedChild:
    """Fork a child that will exec `executable` with argv once released; stdin as the policy says (see
    DispatchSpec.stdin); stdout+stderr go to log_fd, or, with `journal`, to journald streams the child
    opens once it is inside its scope (so journald attributes its lines to the scope); if that fails it
    keeps log_fd and says why on the report pipe."""
    fds: list[int] = []
    try:
        stdin_r, stdin_w = open_stdin(stdin)
        fds += [stdin_r] + ([stdin_w] if stdin_w is not None else [])
        gate_r, gate_w = os.pipe(); fds += [gate_r, gate_w]  # noqa: E702
        err_r, err_w = os.pipe(); fds += [err_r, err_w]  # noqa: E702
        env_b = [f"{k}={v}".encode() for k, v in env.items()]
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() in a multi-threaded process (our loop thread forks while the
            # caller's thread runs). The child only calls os functions (no locks, no logging) until exec.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    if pid == 0:  # child: only async-signal-safe-ish os calls from here on, and never return
        _child(executable, argv, cwd, env_b, stdin_r, log_fd, gate_r, err_w, journal, SESSION_NOFILE_SOFT)
    os.close(stdin_r)
    os.close(gate_r)
    os.close(err_w)
    try:
        pidfd = os.pidfd_open(pid)
    except BaseException:
        child = GatedChild(pid, -1, stdin_w, gate_w, err_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        child.close_all()
        raise
    return GatedChild(pid, pidfd, stdin_w, gate_w, err_r)


def _child(executable: str, argv: tuple[str, ...], cwd: str, env_b: list[bytes],
           stdin_r: int, log_fd: int, gate_r: int, err_w: int, journal: JournalOutput | None,
           nofile_soft: int) -> None:
    stage = "setup"
    try:
        os.setsid()  # its own session: a Ctrl-C to our terminal reaches us, and we run the ladder
        os.dup2(stdin_r, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        keep = sorted({gate_r, err_w})
        low = 3
        for fd in keep:
            if fd > low:
                os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, _MAXFD)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != nofile_soft:  # ours was raised for many dispatches: the session gets the one we started with
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile_soft, hard))
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; a program expects defaults
            signal.signal(sig, signal.SIG_DFL)
        for sig in _CAUGHT:  # a SIGTERM between the gate and exec must kill, not run our parent's handler
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        stage = "gate"
        if os.read(gate_r, 1) != b"1":  # the parent went away or aborted the launch
            os._exit(126)
        os.close(gate_r)
        if journal is not None:
            stage = "journal"
            try:
                out, err = journal.connect()
                os.dup2(out, 1)
                os.dup2(err, 2)
            except OSError as e:  # stdout and stderr are still the private log: say so, and go on
                os.write(err_w, f"{NOTICE_PREFIX}{e.strerror or e}\n".encode()[:500])
        stage = "chdir"
        os.chdir(cwd)
        stage = "exec"
        os.execve(executable, argv, dict(e.split(b"=", 1) for e in env_b))
    except BaseException as e:
        try:
            os.write(err_w, f"{stage} {argv[0]!r}: {e}".encode()[:1000])
        finally:
            os._exit(127)
    os._exit(127)
