"""The Redis connection both stores share (budgets and approvals): one pool per sidecar, one timeout rule,
and one mapping of Redis and network failures to StoreUnavailable (503 store_unavailable, or fail-open)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from sidecar.budget.store import StoreUnavailable
from sidecar.deadline import within

_T = TypeVar("_T")


class PooledRedis(Redis):
    """A client whose `slots` bound the connections in use (cheaper than BlockingConnectionPool, and the
    wait for one stays outside the operation's timeout). Every store on this client shares them."""

    def __init__(self, pool: ConnectionPool, max_connections: int) -> None:
        super().__init__(connection_pool=pool)
        self.auto_close_connection_pool = True  # it owns the pool, as with Redis.from_pool
        self.slots = asyncio.Semaphore(max_connections)


def connect(url: str, max_connections: int = 64) -> PooledRedis:
    # Each operation is bounded as a whole by `bounded`, on a clock that skips the event loop's stalls
    # (sidecar.deadline); redis-py's socket_timeout would wrap every send in asyncio.wait_for, a task per
    # command, on the wall clock.
    pool = ConnectionPool.from_url(
        url,
        max_connections=max_connections,
        # redis-py 8 defaults to 5 s; the operation-wide timeout replaces both, connecting included (a
        # timer of redis-py's own would count the loop's stalls: a cold burst opens 64 connections at once).
        socket_timeout=None,
        socket_connect_timeout=None,
        retry=Retry(NoBackoff(), 1),  # one immediate retry, e.g. on a stale pooled connection
    )
    return PooledRedis(pool, max_connections)


async def bounded(
    work: Callable[[], Awaitable[_T]], seconds: float, slots: asyncio.Semaphore | None = None
) -> _T:
    """Run one store operation on a connection slot, within `seconds` of Redis's time (see
    sidecar.deadline: neither the wait for a slot nor the event loop's stalls count); any failure is
    StoreUnavailable. A cancelled call drops its connection."""
    try:
        if slots is None:
            return await within(seconds, work)
        async with slots:
            return await within(seconds, work)
    except (RedisError, OSError) as exc:  # refused/reset connections, timeouts, script or server errors
        raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
