"""Admission: once a call is authenticated and its body is in, it bounds the calls the sidecar checks at
once, queues a few more, and sheds the rest with its own error (503 `overloaded` + `retry-after`,
docs/errors.md), before the PII workers, the store or the policy are touched, so nothing is half-applied
(a rate-limit count, a budget reservation).

A call holds its slot while the sidecar works on it (inspect ... enforce) and gives it back when it is
forwarded: waiting for the upstream, possibly minutes for a stream, is not the sidecar's load; nor is
waiting for a slow caller's body, which would let one caller's dribbled bodies shed every other tenant.
Calls over SIDECAR_MAX_CONCURRENCY wait in a FIFO queue; a call that finds SIDECAR_MAX_QUEUE calls
already waiting, or that waits longer than SIDECAR_QUEUE_TIMEOUT, is shed. Shedding is decided by these
counts and that wait only, so it is deterministic: event-loop lag is not a trigger (the concurrency
limit is what bounds it), it is only kept out of the dependency timeouts (sidecar.deadline).
"""

from __future__ import annotations

import asyncio
from collections import Counter

from sidecar.config import Settings
from sidecar.errors import overloaded
from sidecar.pipeline.context import Call

RETRY_AFTER = 1  # seconds: the queue turns over in about that long when the sidecar is busy, not stuck


class Admission:
    def __init__(self, max_concurrency: int, max_queue: int, queue_timeout: float) -> None:
        self.max_concurrency, self.max_queue, self.queue_timeout = max_concurrency, max_queue, queue_timeout
        self._slots = asyncio.Semaphore(max_concurrency)
        self._holders: set[str] = set()  # ids of the calls holding a slot
        self.queued = 0
        self.shed: Counter[str] = Counter()  # per reason: queue_full, queue_timeout

    @classmethod
    def of(cls, settings: Settings) -> Admission:
        return cls(settings.max_concurrency, settings.max_queue, settings.queue_timeout)

    @property
    def active(self) -> int:
        return len(self._holders)

    async def enter(self, call: Call) -> None:
        """Take a slot for `call`, waiting in the queue if need be; raise 503 `overloaded` to shed it."""
        if self._slots.locked() and self.queued >= self.max_queue:
            self._refuse(call, "queue_full", f"{self.queued} calls are already waiting")
        self.queued += 1
        try:
            async with asyncio.timeout(self.queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            self._refuse(call, "queue_timeout", f"no slot within {self.queue_timeout:g} s")
        finally:
            self.queued -= 1
        self._holders.add(call.id)

    def done(self, call: Call) -> None:
        """Give back `call`'s slot, if it holds one (called when it is forwarded, and when it ends)."""
        if call.id in self._holders:
            self._holders.remove(call.id)
            self._slots.release()

    def _refuse(self, call: Call, reason: str, detail: str) -> None:
        self.shed[reason] += 1
        call.outcome = "shed"
        raise overloaded(
            f"The sidecar is overloaded ({self.max_concurrency} calls in progress, {detail}).", RETRY_AFTER
        )
