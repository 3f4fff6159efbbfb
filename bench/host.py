"""The cgroup2 `favordynmods` option, for the benchmark: read it, and switch it for one run only, restored.

Why: moving a process into a new cgroup (what the manager does for every scope) takes the kernel's
cgroup_threadgroup_rwsem for writing, and that writer waits for an RCU grace period unless another
migration happened moments before. So a scope created after ~200 ms of quiet costs 11-15 ms instead of
3-4 ms. `favordynmods` keeps the rwsem on its slow-reader path for good (forks and exits pay a little
more) and removes that wait.

The option belongs to the cgroup2 superblock: it is HOST-WIDE. So it is switched only by a process that
restores the previous state on every exit path (finally + SIGINT/SIGTERM/SIGHUP), and each switch is
verified in /proc/mounts. `mount -o remount,favordynmods` cannot undo itself (util-linux merges the old
options back in), and a bare MS_REMOUNT would also clear nsdelegate & co.: we call mount(2) with exactly
the previous per-mount flags and superblock options, minus or plus favordynmods.

The test bed's user cannot remount anything, so a root process on the host serves the bench:

    python -m bench.host serve --dir DIR --uid UID   (host, root; DIR is visible in the bed)
    python -m bench --favordynmods both --toggle-dir DIR_AS_SEEN_IN_THE_BED

The server makes two FIFOs in DIR owned by UID (0600), applies "on"/"off" requests, answers with the
state read back from /proc/mounts, and restores the original state when the bench closes its end (or dies),
on a signal, or after --max-seconds.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import os
import select
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Protocol

from bench.stats import CGROUP2_FS_OPTIONS, Mount, cgroup2_mount

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT = 32
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
_MNT_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
              "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}


def read_mounts() -> str:
    return Path("/proc/mounts").read_text()


def current_mount() -> Mount | None:
    return cgroup2_mount(read_mounts())


def remount_args(m: Mount, favordynmods: bool) -> tuple[int, str]:
    """(mountflags, data) for mount(2) that keep every current option of `m` and set favordynmods as asked."""
    flags = MS_REMOUNT
    for opt in m.options:
        flags |= _MNT_FLAGS.get(opt, 0)
    if not flags & (MS_NOATIME | MS_RELATIME):
        flags |= MS_STRICTATIME
    data = [o for o in m.options if o in CGROUP2_FS_OPTIONS and o != "favordynmods"]
    if favordynmods:
        data.append("favordynmods")
    return flags, ",".join(data)


def set_favordynmods(on: bool) -> Mount:
    """Remount cgroup2 with favordynmods on/off, keeping its other options; verify; return the new mount.
    Root in the initial cgroup namespace only (elsewhere the kernel ignores the superblock options)."""
    m = current_mount()
    if m is None:
        raise RuntimeError("no cgroup2 mount in /proc/mounts: favordynmods does not apply here")
    if ("favordynmods" in m.options) == on:
        return m
    flags, data = remount_args(m, on)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(None, m.target.encode(), None, ctypes.c_ulong(flags), data.encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"remounting {m.target} with {data or '(no options)'}: {os.strerror(e)}")
    after = current_mount()
    if after is None or ("favordynmods" in after.options) != on:
        raise RuntimeError(f"remounted {m.target} but /proc/mounts shows {after and ','.join(after.options)}")
    if set(after.options) - {"favordynmods"} != set(m.options) - {"favordynmods"}:
        raise RuntimeError(f"remounting {m.target} changed other options: {','.join(m.options)} -> "
                           f"{','.join(after.options)}")
    return after


class _Interrupted(BaseException):
    pass


@contextmanager
def restored_on_exit() -> Iterator[bool]:
    """Remember the favordynmods state; restore it when the block ends, by any path (SIGINT, SIGTERM and
    SIGHUP end the block like an exception). Yields the original state."""
    m = current_mount()
    if m is None:
        raise RuntimeError("no cgroup2 mount in /proc/mounts")
    original = "favordynmods" in m.options

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted(signum)

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield original
    except _Interrupted as e:
        print(f"bench.host: signal {e.args[0]}: restoring favordynmods={'on' if original else 'off'}",
              file=sys.stderr)
    finally:
        try:
            # a second signal while restoring must not skip the restore
            for s in old:
                signal.signal(s, signal.SIG_IGN)
            set_favordynmods(original)
        finally:
            for s, h in old.items():
                signal.signal(s, h)


# -- the bench's side ------------------------------------------------------------------------------------------


class Toggle(Protocol):
    def set(self, on: bool) -> bool: ...

    def close(self) -> None: ...


class LocalToggle:
    """For a bench that runs as root in the host's namespaces: switches directly; close() restores."""

    def __init__(self) -> None:
        m = current_mount()
        if m is None:
            raise RuntimeError("no cgroup2 mount")
        self.original = "favordynmods" in m.options
        self._old = {s: signal.signal(s, self._interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds through the bench's finally, which calls close()

    def set(self, on: bool) -> bool:
        return "favordynmods" in set_favordynmods(on).options

    def close(self) -> None:
        try:
            set_favordynmods(self.original)
        finally:
            for s, h in self._old.items():
                signal.signal(s, h)


class RemoteToggle:
    """Asks a `bench.host serve` process (root, on the host) through its FIFOs. Closing, or dying, makes
    the server restore the original state."""

    def __init__(self, ctl_dir: str, timeout: float = 30.0, connect_timeout: float = 10.0) -> None:
        self.timeout = timeout
        deadline = time.monotonic() + connect_timeout
        while True:  # the server may still be starting (its FIFOs not made yet, or not reading yet)
            try:
                self._ack = os.open(os.path.join(ctl_dir, "ack"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    self._req = os.open(os.path.join(ctl_dir, "req"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError:
                    os.close(self._ack)
                    raise
                break
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENXIO) or time.monotonic() >= deadline:
                    raise RuntimeError(f"no favordynmods server listening in {ctl_dir} ({e.strerror}): start "
                                       "`python -m bench.host serve` on the host as root") from None
                time.sleep(0.05)
        self._buf = b""

    def set(self, on: bool) -> bool:
        return self._ask(b"on" if on else b"off")

    def _ask(self, req: bytes) -> bool:
        os.write(self._req, req + b"\n")
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._ack], [], [], left)[0]:
                raise RuntimeError("the favordynmods server did not answer")
            chunk = os.read(self._ack, 256)
            if not chunk:
                raise RuntimeError("the favordynmods server went away")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        words = line.decode().split()
        if words[:1] != ["ok"]:
            raise RuntimeError(f"favordynmods server: {line.decode()}")
        return words[1] == "on"

    def close(self) -> None:
        """Ask for the original state back and wait for it (closing alone would also make the server
        restore, but later than our last look at /proc/mounts)."""
        try:
            self._ask(b"restore")
        except (OSError, RuntimeError) as e:
            print(f"bench: the favordynmods server did not confirm the restore: {e}", file=sys.stderr)
        for fd in (self._req, self._ack):
            try:
                os.close(fd)
            except OSError:
                pass


# -- the host's side -------------------------------------------------------------------------------------------


def serve(ctl_dir: Path, uid: int, max_seconds: float) -> int:
    """Serve on/off requests from one bench; restore the original state when it is done."""
    ctl_dir.mkdir(mode=0o711, exist_ok=True)
    os.chmod(ctl_dir, 0o711)  # the bed's user must reach the FIFOs, and only them
    for name in ("ack", "req"):  # "req" last: once it exists, both do
        p = ctl_dir / name
        if p.exists() or p.is_symlink():
            p.unlink()
        os.mkfifo(p, 0o600)
        os.chown(p, uid, -1)
    req = os.open(ctl_dir / "req", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    ack: int | None = None
    deadline = time.monotonic() + max_seconds
    with restored_on_exit() as original:
        print(f"bench.host: serving favordynmods requests in {ctl_dir} (now {'on' if original else 'off'})",
              file=sys.stderr)
        buf = b""
        connected = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                print("bench.host: --max-seconds reached", file=sys.stderr)
                break
            r, _, _ = select.select([req], [], [], min(left, 1.0))
            if not r:
                continue
            chunk = os.read(req, 256)
            if not chunk:
                if connected:  # the bench closed its end (or died)
                    break
                time.sleep(0.05)  # no writer yet
                continue
            connected = True
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = line.decode(errors="replace").strip()
                if ack is None:
                    ack = os.open(ctl_dir / "ack", os.O_WRONLY | os.O_CLOEXEC)
                if cmd in ("on", "off", "restore"):
                    try:
                        want = original if cmd == "restore" else cmd == "on"
                        state = "on" if "favordynmods" in set_favordynmods(want).options else "off"
                        reply = f"ok {state}"
                    except (OSError, RuntimeError) as e:
                        reply = f"error {e}"
                else:
                    reply = f"error unknown request {cmd[:40]!r}"
                print(f"bench.host: {cmd} -> {reply}", file=sys.stderr)
                try:
                    os.write(ack, (reply + "\n").encode())
                except OSError as e:
                    if e.errno != errno.EPIPE:
                        raise
    os.close(req)
    if ack is not None:
        os.close(ack)
    for name in ("req", "ack"):
        (ctl_dir / name).unlink(missing_ok=True)
    final = current_mount()
    print(f"bench.host: restored; favordynmods is {'on' if final and 'favordynmods' in final.options else 'off'}",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.host", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status", help="print the cgroup2 mount and whether favordynmods is on")
    t = sub.add_parser("set", help="(root, host) switch favordynmods on or off now, verified (for a caller's "
                                   "exit trap that puts back what it recorded)")
    t.add_argument("state", choices=("on", "off"))
    s = sub.add_parser("serve", help="(root, host) switch favordynmods for one bench run, then restore")
    s.add_argument("--dir", required=True, type=Path, help="directory for the two FIFOs (visible to the bench)")
    s.add_argument("--uid", required=True, type=int, help="the uid the bench runs as")
    s.add_argument("--max-seconds", type=float, default=1800.0, help="restore and stop after this long")
    args = ap.parse_args(argv)
    if args.cmd == "status":
        m = current_mount()
        if m is None:
            print("no cgroup2 mount")
            return 1
        print(f"{m.target} {','.join(m.options)}: favordynmods {'on' if 'favordynmods' in m.options else 'off'}")
        return 0
    if os.geteuid() != 0:
        print(f"bench.host {args.cmd}: needs root on the host (it remounts cgroup2)", file=sys.stderr)
        return 2
    if args.cmd == "set":
        m = set_favordynmods(args.state == "on")
        print(f"{m.target} {','.join(m.options)}")
        return 0
    return serve(args.dir, args.uid, args.max_seconds)


if __name__ == "__main__":
    raise SystemExit(main())
