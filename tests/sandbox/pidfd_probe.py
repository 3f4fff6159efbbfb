#!/usr/bin/env python3
"""Probe: a scope's process named by a pidfd (`PIDFDs`, systemd 255+) instead of a PID (`PIDs`).

Not a test: a measurement for the launch code's owner, run inside the test bed. Three parts:

    sdbox run -- python tests/sandbox/pidfd_probe.py support        does this manager take PIDFDs?
    sdbox run -- python tests/sandbox/pidfd_probe.py latency [N]    launch latency, PIDs vs PIDFDs, interleaved
    sdbox root-run -- /opt/ralph-venv/bin/python tests/sandbox/pidfd_probe.py reuse
        the PID-reuse window for real: our child dies, a stranger gets its PID, then the scope is asked for.
        Root only creates the stranger with that PID (clone3 set_tid) and drops to the test user in it;
        everything that talks to the manager, and every process it could move, is the unprivileged user's.

The StartTransientUnit call is built the way ralph_systemd.bus builds it (pystemd's apply_signature for
each property's value); `PIDFDs` has signature `ah`, and pystemd appends an `h` with
sd_bus_message_append("h", fd), which sends a duplicate of the fd over the bus (SCM_RIGHTS).
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time
import uuid
from typing import Any

from pystemd.dbuslib import DBus, apply_signature

SYSTEMD = b"org.freedesktop.systemd1"
MANAGER = b"/org/freedesktop/systemd1"
MANAGER_IFACE = b"org.freedesktop.systemd1.Manager"
UID = 1000


def start_scope(bus: DBus, name: str, props: list[tuple[str, bytes, Any]]) -> Any:
    args = apply_signature(b"ss", [name.encode(), b"fail"])
    args += [(ord("a"), b"(sv)")]
    for prop, sig, value in props:
        args += [(ord("r"), b"sv"), (ord("s"), prop.encode()), (ord("v"), sig)]
        args += apply_signature(sig, [value])
        args += [(-1, None), (-1, None)]
    args += [(-1, None), (ord("a"), b"(sa(sv))"), (-1, None)]
    return bus.call_method(SYSTEMD, MANAGER, MANAGER_IFACE, b"StartTransientUnit", args).body


def version(bus: DBus) -> str:
    v = bus.call_method(SYSTEMD, MANAGER, b"org.freedesktop.DBus.Properties", b"Get",
                        apply_signature(b"ss", [MANAGER_IFACE, b"Version"])).body
    return v.decode() if isinstance(v, bytes) else str(v)


def gated_child() -> tuple[int, int]:
    """A child blocked on a pipe (as the project's are until their scope exists): (pid, write end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    return pid, w


def cgroup_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f.read().strip()
    except OSError:
        return ""


def base_props(how: str, pid: int, pidfd: int) -> list[tuple[str, bytes, Any]]:
    props: list[tuple[str, bytes, Any]] = [
        ("Description", b"s", b"pidfd probe"),
        ("CollectMode", b"s", b"inactive-or-failed"),
        ("KillMode", b"s", b"control-group"),
    ]
    props.append(("PIDs", b"au", [pid]) if how == "PIDs" else ("PIDFDs", b"ah", [pidfd]))
    return props


def try_start(bus: DBus, name: str, props: list[tuple[str, bytes, Any]]) -> str:
    try:
        start_scope(bus, name, props)
        return "accepted"
    except Exception as e:   # pystemd raises DBusError subclasses; the text is what we report
        return f"refused: {e}"


def cmd_support(bus: DBus) -> int:
    pid, w = gated_child()
    pidfd = os.pidfd_open(pid)
    name = f"probe-{uuid.uuid4().hex[:8]}.scope"
    outcome = try_start(bus, name, base_props("PIDFDs", pid, pidfd))
    deadline = time.monotonic() + 5
    while outcome == "accepted" and not cgroup_of(pid).endswith(name) and time.monotonic() < deadline:
        time.sleep(0.001)
    moved = cgroup_of(pid).endswith(name)
    os.write(w, b"x")
    os.waitpid(pid, 0)
    print(f"systemd {version(bus)}: StartTransientUnit with PIDFDs (ah): {outcome}; child in the scope: {moved}")
    return 0


def one_launch(bus: DBus, how: str) -> tuple[float, float]:
    """(ms until the StartTransientUnit reply, ms until the child is in its scope's cgroup)."""
    pid, w = gated_child()
    pidfd = os.pidfd_open(pid)
    name = f"probe-{uuid.uuid4().hex[:8]}.scope"
    props = base_props(how, pid, pidfd)
    t0 = time.perf_counter()
    start_scope(bus, name, props)
    t1 = time.perf_counter()
    while not cgroup_of(pid).endswith(name):
        time.sleep(0.0002)
    t2 = time.perf_counter()
    os.close(pidfd)
    os.write(w, b"x")
    os.close(w)
    os.waitpid(pid, 0)
    return (t1 - t0) * 1000, (t2 - t0) * 1000


def cmd_latency(bus: DBus, n: int) -> int:
    res: dict[str, list[tuple[float, float]]] = {"PIDs": [], "PIDFDs": []}
    for i in range(n):
        for how in (("PIDs", "PIDFDs") if i % 2 else ("PIDFDs", "PIDs")):
            res[how].append(one_launch(bus, how))
    print(f"systemd {version(bus)}, {n} launches each, interleaved (ms):")
    for how, vals in res.items():
        for k, label in ((0, "reply"), (1, "in scope")):
            xs = sorted(v[k] for v in vals)
            p90 = xs[int(0.9 * (len(xs) - 1))]
            print(f"  {how:7} {label:9} median {statistics.median(xs):6.2f}  p90 {p90:6.2f}  min {xs[0]:6.2f}")
    return 0


def clone_with_pid(target: int) -> int:
    """Fork (raw clone3) a child that gets PID `target` in this PID namespace (set_tid: needs root here)."""
    import ctypes

    class CloneArgs(ctypes.Structure):
        _fields_ = [(f, ctypes.c_uint64) for f in ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal",
                                                    "stack", "stack_size", "tls", "set_tid", "set_tid_size")]

    tid = (ctypes.c_int32 * 1)(target)
    args = CloneArgs(exit_signal=signal.SIGCHLD, set_tid=ctypes.addressof(tid), set_tid_size=1)
    libc = ctypes.CDLL(None, use_errno=True)
    pid = libc.syscall(435, ctypes.byref(args), ctypes.sizeof(args))   # SYS_clone3 on x86_64
    if pid < 0:
        raise OSError(ctypes.get_errno(), f"clone3(set_tid={target})")
    return int(pid)


def cmd_reuse() -> int:
    """As root: fork the unprivileged probe; make 'strangers' (processes of the test user) with the PIDs it asks."""
    if os.geteuid() != 0:
        print("reuse needs root (clone3 with set_tid); run it with `sdbox root-run`", file=sys.stderr)
        return 2
    req_r, req_w = os.pipe()
    ack_r, ack_w = os.pipe()
    probe = os.fork()
    if probe == 0:
        os.close(req_r)
        os.close(ack_w)
        drop_to_user()
        os.environ.update(XDG_RUNTIME_DIR=f"/run/user/{UID}", DBUS_SESSION_BUS_ADDRESS=f"unix:path=/run/user/{UID}/bus")
        rc = reuse_as_user(req_w, ack_r)
        sys.stdout.flush()
        os._exit(rc)
    os.close(req_w)
    os.close(ack_r)
    strangers = []
    while data := os.read(req_r, 32):
        ready_r, ready_w = os.pipe()
        try:
            pid = clone_with_pid(int(data.decode()))
        except OSError as e:
            os.write(ack_w, f"-{e.errno}".encode())
            continue
        if pid == 0:                      # the stranger: an ordinary process of the test user
            drop_to_user()
            os.write(ready_w, b"r")
            signal.pause()
            os._exit(0)
        os.close(ready_w)
        os.read(ready_r, 1)               # it is the test user's now
        os.close(ready_r)
        strangers.append(pid)
        os.write(ack_w, str(pid).encode())
    for pid in strangers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(probe, 0)
    for pid in strangers:
        os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def drop_to_user() -> None:
    os.setgroups([])
    os.setresgid(UID, UID, UID)
    os.setresuid(UID, UID, UID)


def stranger_with_pid(target: int, req_w: int, ack_r: int) -> int | None:
    """A process of the test user (a 'stranger' to the dispatch) that has PID `target`, or None."""
    os.write(req_w, str(target).encode())
    pid = int(os.read(ack_r, 32).decode())
    return pid if pid == target else None


def reuse_as_user(req_w: int, ack_r: int) -> int:
    bus = DBus(user_mode=True)
    bus.open()
    print(f"systemd {version(bus)}: PID reuse between fork and StartTransientUnit")
    rc = 0
    for how in ("PIDs", "PIDFDs"):
        pid, w = gated_child()
        pidfd = os.pidfd_open(pid)
        os.kill(pid, signal.SIGKILL)     # our child dies before the manager acts on it...
        os.waitpid(pid, 0)
        stranger = stranger_with_pid(pid, req_w, ack_r)   # ...and its PID goes to another process
        if stranger is None:
            print(f"  {how}: could not get PID {pid} again (something else took it); no result")
            rc = 1
            continue
        name = f"probe-reuse-{uuid.uuid4().hex[:8]}.scope"
        outcome = try_start(bus, name, base_props(how, pid, pidfd))
        deadline = time.monotonic() + 2
        while outcome == "accepted" and not cgroup_of(stranger).endswith(name) and time.monotonic() < deadline:
            time.sleep(0.001)
        captured = cgroup_of(stranger).endswith(name)
        print(f"  {how:7} child {pid} died, stranger got PID {stranger}: StartTransientUnit {outcome}; "
              f"stranger put in the dispatch's scope: {captured}")
        os.kill(stranger, signal.SIGKILL)
        os.close(pidfd)
        os.close(w)
    return rc


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "support"
    if cmd == "reuse":
        return cmd_reuse()
    bus = DBus(user_mode=True)
    bus.open()
    if cmd == "support":
        return cmd_support(bus)
    if cmd == "latency":
        return cmd_latency(bus, int(argv[1]) if len(argv) > 1 else 60)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
