"""The timer queue and the state table: what fires when, and which moves a dispatch may make."""

from __future__ import annotations

from ralph_systemd.states import LIVE, TRANSITIONS, State, Timer
from ralph_systemd.timers import TimerQueue


class Owner:
    def __init__(self, name: str, log: list[tuple[str, Timer, float]]) -> None:
        self.name, self.log = name, log

    def on_timer(self, timer: Timer, now: float) -> None:
        self.log.append((self.name, timer, now))


def test_timers_fire_in_deadline_order_once_and_rearming_replaces() -> None:
    log: list[tuple[str, Timer, float]] = []
    q, a, b = TimerQueue(), Owner("a", log), Owner("b", log)
    q.arm(a, Timer.IDLE, 5.0)
    q.arm(b, Timer.SIGTERM, 3.0)
    q.arm(a, Timer.IDLE, 4.0)  # re-armed: the 5.0 entry is dead
    q.arm(a, Timer.RECHECK, 9.0)
    q.disarm(a, Timer.RECHECK)
    assert q.next_deadline() == 3.0 and len(q) == 2
    q.fire_due(4.5)
    assert [(n, t) for n, t, _ in log] == [("b", Timer.SIGTERM), ("a", Timer.IDLE)]
    q.fire_due(100.0)
    assert len(log) == 2 and q.next_deadline() is None and len(q) == 0


def test_the_work_per_timer_does_not_grow_with_the_number_of_owners() -> None:
    def ops_for(n: int) -> float:
        q = TimerQueue()
        owners = [Owner(str(i), []) for i in range(n)]
        for i, o in enumerate(owners):
            q.arm(o, Timer.RECHECK, float(i))
            q.arm(o, Timer.RECHECK, float(i) + 0.5)  # each re-armed once
        q.fire_due(float(n))
        return q.operations / n
    assert ops_for(10) == ops_for(10_000) == 4.0  # two pushes, two pops per owner, whatever N


def test_the_state_table() -> None:
    assert TRANSITIONS[State.DONE] == frozenset() and State.DONE not in LIVE
    assert State.STARTING not in TRANSITIONS[State.RUNNING]  # no way back
    assert all(State.DONE in TRANSITIONS[s] for s in LIVE)  # any live dispatch can end (a detach, a failure)
