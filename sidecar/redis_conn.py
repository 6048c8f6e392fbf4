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

_T = TypeVar("_T")


def connect(url: str, timeout: float, max_connections: int = 64) -> Redis:
    # Each call is bounded as a whole by `bounded` (asyncio.timeout: one timer, where redis-py's own
    # socket_timeout wraps every send in asyncio.wait_for, a task per command).
    return Redis.from_pool(
        ConnectionPool.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=None,  # redis-py 8 defaults to 5 s; the call-wide timeout replaces it
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),  # one immediate retry, e.g. on a stale pooled connection
        )
    )


async def bounded(
    work: Callable[[], Awaitable[_T]], seconds: float, slots: asyncio.Semaphore | None = None
) -> _T:
    """Run one store operation within `seconds` (and a connection slot); any failure is StoreUnavailable.
    A cancelled call drops its connection."""
    try:
        async with asyncio.timeout(seconds):
            if slots is None:
                return await work()
            async with slots:
                return await work()
    except (RedisError, OSError) as exc:  # refused/reset connections, timeouts, script or server errors
        raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
