"""Named points on the launch, completion and loop paths, for measuring tools; they cost one call when off.

The package calls `mark(name, key)` where a tool may want a timestamp or a count (key: the unit, or ""),
and nothing else happens unless a tool has installed a hook with `set_hook`. The benchmark's probe
(bench/probe.py, not shipped) reads its launch breakdown and its loop-work counts from here instead of
wrapping private functions. The hook runs in the thread that reached the point (usually the loop thread):
it must be quick and must not raise. This is a leaf module: it imports nothing of the package.

Points (name: where, key):
    launch.begin            Launch.start entered (unit)
    launch.log_opened       the session's log file exists (unit)
    launch.forked           the gated child is forked (unit)
    bus.start_call          StartTransientUnit about to be sent, properties built (unit)
    bus.start_reply         StartTransientUnit answered (unit)
    dispatch.job_removed    the scope's start job ended, as the dispatch learns it (unit)
    dispatch.gate_open      the child is told to exec (unit)
    dispatch.exec_reported  the child's exec report was read (unit)
    dispatch.main_exited    the session's main process has exited (unit)
    dispatch.end            the dispatch's result is set (unit)
    loop.turn               one turn of the supervisor's loop ("")
    loop.deadline           one computation of a dispatch's next deadline (unit)
"""

from __future__ import annotations

from collections.abc import Callable

Hook = Callable[[str, str], None]

_hook: Hook | None = None


def mark(name: str, key: str = "") -> None:
    """The point `name` was reached (for `key`). A no-op unless a hook is installed."""
    if _hook is not None:
        _hook(name, key)


def set_hook(hook: Hook | None) -> Hook | None:
    """Install `hook` (None: none); returns the one it replaces, to be put back when done."""
    global _hook
    previous, _hook = _hook, hook
    return previous
