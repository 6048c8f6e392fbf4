"""Timeouts that measure a dependency (Redis, the OPA daemon, the PII workers), not the sidecar's own load.

A plain `asyncio.timeout(0.5)` around a Redis command also counts the time its reply waited for the event
loop: under a burst, the loop runs hundreds of other calls' callbacks before the reply's, and a healthy
Redis got blamed (503 `store_unavailable`). `within` stops the clock while the loop is stalled: a meter
ticks every TICK seconds while any timed operation is in flight, and how late each tick runs is time the
loop (or the whole process, descheduled by the kernel) could not have noticed an answer. That stall is not
charged to the dependency. Waiting for a local slot (a pooled connection, a worker) is kept outside
`within` by its callers, for the same reason: it is queueing inside the sidecar.

Only the time the loop ran late is deducted, so a dependency that does not answer still times out: after
`seconds` (up to TICK later) on an idle loop, somewhat later on a busy one; only while the loop is blocked
outright does the clock stand still, as nothing could tell a slow dependency from a busy sidecar then.
Admission control (sidecar.pipeline.admit) bounds how busy the loop gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

_T = TypeVar("_T")
TICK = 0.05  # seconds between the meter's ticks: finer costs more callbacks, coarser misses short stalls


class _Deadline:
    __slots__ = ("seconds", "stalled_at_start", "start", "timer")

    def __init__(self, seconds: float, start: float, stalled: float, timer: asyncio.Timeout) -> None:
        self.seconds, self.start, self.stalled_at_start, self.timer = seconds, start, stalled, timer


class StallMeter:
    """One event loop's stalls, measured while operations are timed on it, and their deadlines.

    A tick every TICK seconds adds how late it ran to `stalled`, then expires the deadlines whose
    operation has had its `seconds` of unstalled time, so a deadline fires up to TICK late (one shorter
    than the next tick gets its own timer). One timer for every operation in flight, where a timer each
    (schedule, cancel) cost twice as much per operation."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stalled = 0.0
        self._due = 0.0
        self._ticking = False
        self._deadlines: set[_Deadline] = set()

    def stalled(self) -> float:
        """Stalls so far, including a tick that is due but has not run yet (the loop is late right now)."""
        pending = self._loop.time() - self._due if self._ticking else 0.0
        return self._stalled + max(0.0, pending)

    def watch(self, seconds: float, timer: asyncio.Timeout) -> _Deadline:
        now = self._loop.time()
        deadline = _Deadline(seconds, now, self.stalled(), timer)
        self._deadlines.add(deadline)
        if not self._ticking:
            self._ticking = True
            self._schedule(now)
        if now + seconds < self._due:  # due before the next tick: a timer of its own, not TICK late
            self._loop.call_at(now + seconds, self._expire)
        return deadline

    def unwatch(self, deadline: _Deadline) -> None:
        self._deadlines.discard(deadline)  # the next tick stops the meter if it was the last

    def _schedule(self, now: float) -> None:
        self._due = now + TICK
        self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        self._stalled += max(0.0, now - self._due)
        self._due = now  # (until rescheduled: nothing pending)
        self._expire()
        if self._deadlines:
            self._schedule(now)
        else:
            self._ticking = False

    def _expire(self) -> None:
        """Expire the deadlines whose operation has had its `seconds` of time the loop was not stalled."""
        now, stalled = self._loop.time(), self.stalled()
        for d in [d for d in self._deadlines if now - d.start - (stalled - d.stalled_at_start) >= d.seconds]:
            self._deadlines.discard(d)
            d.timer.reschedule(now)  # expire now: asyncio.timeout cancels the work, raises TimeoutError


class PerLoop(Generic[_T]):
    """One value per event loop, for state bound to a loop (a meter, a semaphore) in an object that
    outlives loops. Loops are not always weak-referenceable: closed ones are dropped when a new one comes."""

    def __init__(self, make: Callable[[asyncio.AbstractEventLoop], _T]) -> None:
        self._make = make
        self._values: dict[asyncio.AbstractEventLoop, _T] = {}

    def get(self) -> _T:
        loop = asyncio.get_running_loop()
        found = self._values.get(loop)
        if found is None:
            for old in [old for old in self._values if old.is_closed()]:
                del self._values[old]
            found = self._values[loop] = self._make(loop)
        return found


meter = PerLoop(StallMeter).get  # the running loop's meter


async def within(seconds: float, work: Callable[[], Awaitable[_T]]) -> _T:
    """Await `work()`; TimeoutError once it has taken `seconds` of time the loop was not stalled."""
    clock = meter()
    async with asyncio.timeout(None) as timer:
        deadline = clock.watch(seconds, timer)
        try:
            return await work()
        finally:
            clock.unwatch(deadline)
