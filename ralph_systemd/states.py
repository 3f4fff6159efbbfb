"""A dispatch's states, the transitions allowed between them, and the timers it can arm.

A leaf module (the model is supervisord's `states.py`): the table below is the whole of a dispatch's life;
`Dispatch._enter` refuses any move not in it.

    STARTING --> RUNNING --> STOPPING --> EXITED --> DONE
        |           |  \\________________/^          ^
        |           \\__________________________________/   (an attached dispatch's scope ends; a detach)
        \\______________________________________________/   (the launch failed, or was cancelled by a stop)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class State(enum.Enum):
    STARTING = "starting"  # forked and gated; the scope is being created (a stop now is kept until it runs)
    RUNNING = "running"  # exec'ed inside its scope; nobody has asked it to stop
    STOPPING = "stopping"  # the ladder is under way: EOF or SIGTERM sent, systemd's SIGKILL due at the grace's end
    EXITED = "exited"  # the main process has ended; the scope has not (what is left in it is being stopped)
    DONE = "done"  # the result is set: finished, failed to launch, or detached


TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.STARTING: frozenset({State.RUNNING, State.DONE}),
    State.RUNNING: frozenset({State.STOPPING, State.EXITED, State.DONE}),
    State.STOPPING: frozenset({State.EXITED, State.DONE}),
    State.EXITED: frozenset({State.DONE}),
    State.DONE: frozenset(),
}

#: The states in which the session may still be running (a stop, a detach still apply).
LIVE = frozenset({State.STARTING, State.RUNNING, State.STOPPING, State.EXITED})


class Timer(enum.Enum):
    """What a dispatch's timer is for: each kind is armed at most once at a time."""

    START_JOB = "start-job"  # the scope's start job must end by then (a wedged manager)
    SIGTERM = "sigterm"  # the EOF grace is over: SIGTERM the session
    IDLE = "idle"  # the earliest moment the session can have been idle for idle_timeout
    RECHECK = "recheck"  # look at the unit again (a read failed, or a signal may have been lost)
    STUCK = "stuck"  # the scope ended this long ago and our child has still not exited
