"""Mimics the launcher's child step for the journal output mode, inside a real scope.

    journal_stream_child.py TAG

Run as a dispatch's session (so it is inside its scope). It starts busy threads (one logging, one
importing and allocating) so the fork happens in a threaded process, forks, and in the child calls
JournalOutput.connect(), dup2()s the fds onto 1 and 2 and execs `sh -c 'echo ...'`. It prints
"child-exit <status>" to its own stdout (the private log) and then waits for EOF on stdin, so the
scope stays alive for `systemctl --user status`; only then is the child reaped.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from ralph_systemd import journal

tag = sys.argv[1]
out = journal.journal_output("/bin/sh")  # in the parent, before the fork
if out is None:
    print("journal-off", flush=True)
    sys.exit(3)

stop = threading.Event()


def chatter() -> None:
    logging.basicConfig(stream=open(os.devnull, "w"))
    while not stop.is_set():
        logging.getLogger("busy").error("x" * 100)


def churn() -> None:
    while not stop.is_set():
        __import__("json").dumps({"a": list(range(200))})


threads = [threading.Thread(target=f, daemon=True) for f in (chatter, churn)]
for t in threads:
    t.start()
pid = os.fork()
if pid == 0:
    try:
        fd_out, fd_err = out.connect()
        os.dup2(fd_out, 1)
        os.dup2(fd_err, 2)
        os.execv("/bin/sh", ["sh", "-c", f"echo 'out {tag}'; echo 'err {tag}' >&2; printf 'esc {tag} \\033[31mred\\n'"])
    except BaseException as e:  # noqa: BLE001 - the child reports and dies
        os.write(2, f"child failed: {e}\n".encode())
    os._exit(127)
stop.set()
# Exit status without reaping: the child stays a zombie (whose /proc/PID/cgroup still names the scope) until
# we are stopped. journald looks up a stream's unit lazily, from the writer's /proc/PID, when it handles its
# first line; a writer already reaped by then has its lines logged without a unit (seen on systemd 257 for
# a child that exited within milliseconds). See the README's "The journal".
info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
print(f"child-exit {info.si_status}", flush=True)
sys.stdin.read()  # until the launcher closes stdin (the EOF step of a stop)
os.waitpid(pid, 0)
