"""One timer queue for every dispatch of a loop: a heap (as asyncio's loop keeps), so finding the next
deadline and firing what is due cost O(log N) per timer, not a pass over every live dispatch per turn.

Re-arming or cancelling a timer marks its old entry dead (lazy deletion); dead entries are dropped as they
reach the top, and the heap is rebuilt when they outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Protocol

from ralph_systemd import instrument
from ralph_systemd.states import Timer


class TimerOwner(Protocol):
    def on_timer(self, timer: Timer, now: float) -> None: ...


class _Entry:
    __slots__ = ("when", "seq", "owner", "timer")

    def __init__(self, when: float, seq: int, owner: TimerOwner | None, timer: Timer) -> None:
        self.when, self.seq, self.owner, self.timer = when, seq, owner, timer

    def __lt__(self, other: _Entry) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class TimerQueue:
    """Timers keyed by (owner, what for). `operations` counts heap pushes and pops (the work per event)."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._live: dict[tuple[int, Timer], _Entry] = {}
        self._seq = itertools.count()
        self.operations = 0

    def arm(self, owner: TimerOwner, timer: Timer, when: float) -> None:
        """Fire owner.on_timer(timer) at `when` (monotonic seconds); replaces that timer if armed."""
        self.disarm(owner, timer)
        entry = _Entry(when, next(self._seq), owner, timer)
        self._live[(id(owner), timer)] = entry
        heapq.heappush(self._heap, entry)
        self.operations += 1
        instrument.mark("loop.deadline", timer.value)
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._live):
            self._heap = [e for e in self._heap if e.owner is not None]
            heapq.heapify(self._heap)

    def disarm(self, owner: TimerOwner, timer: Timer) -> None:
        entry = self._live.pop((id(owner), timer), None)
        if entry is not None:
            entry.owner = None

    def disarm_all(self, owner: TimerOwner) -> None:
        for timer in Timer:
            self.disarm(owner, timer)

    def deadline(self, owner: TimerOwner, timer: Timer) -> float | None:
        entry = self._live.get((id(owner), timer))
        return entry.when if entry is not None else None

    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0].owner is None:
            heapq.heappop(self._heap)
            self.operations += 1
        return self._heap[0].when if self._heap else None

    def fire_due(self, now: float) -> None:
        """Call on_timer for every live timer due by `now`, earliest first (one that a callback arms for
        `now` or earlier fires in this call too)."""
        while self._heap and self._heap[0].when <= now:
            entry = heapq.heappop(self._heap)
            self.operations += 1
            owner = entry.owner
            if owner is None:
                continue
            del self._live[(id(owner), entry.timer)]
            owner.on_timer(entry.timer, now)

    def __len__(self) -> int:
        return len(self._live)
