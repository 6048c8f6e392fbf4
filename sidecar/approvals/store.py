"""Where approvals live: in process memory (the embedded default) or in Redis (shared by every replica).

Both stores offer the same small set of atomic steps; the rules of the lifecycle are in `model`, applied
inside each step, so the two stores cannot drift apart. Approvals are rare (high-risk operations only),
so the Redis store uses optimistic WATCH/MULTI transactions rather than scripts.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from sidecar.approvals.model import Approval, ApprovalError, Status, keep_until, lookup
from sidecar.config import Settings
from sidecar.redis_conn import PooledRedis, bounded, connect

_T = TypeVar("_T")
# A mutation: change the approval in place (as of `now`); return a result and whether to unlink its
# fingerprint. Raise ApprovalError to change nothing.
Mutation = Callable[[Approval, float], tuple[_T, bool]]


class ApprovalStore(Protocol):
    ttl: float

    async def find(self, fingerprint: str) -> Approval | None:
        """The approval an identical request would use (see model.lookup); forgets lapsed ones."""
        ...

    async def create(self, approval: Approval) -> Approval:
        """Store a new pending approval, unless one is already live for its fingerprint: then that one."""
        ...

    async def get(self, approval_id: str) -> Approval | None: ...

    async def list(self, status: Status | None = None, tenant: str | None = None) -> list[Approval]: ...

    async def update(self, approval_id: str, mutate: Mutation[_T]) -> _T:
        """Apply `mutate` atomically; ApprovalError('approval_not_found') for an unknown id."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _not_found(approval_id: str) -> ApprovalError:
    return ApprovalError("approval_not_found", f"No approval {approval_id} (unknown, or long expired).")


def _matches(approval: Approval, now: float, status: Status | None, tenant: str | None) -> bool:
    return (status is None or approval.current(now) == status) and (
        tenant is None or approval.tenant == tenant
    )


class MemoryApprovalStore:
    """Approvals in this process only: an approver must reach this very sidecar (its admin API)."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self._clock = clock
        self._records: dict[str, Approval] = {}
        self._by_fingerprint: dict[str, str] = {}

    def _sweep(self, now: float) -> None:
        for approval_id in [i for i, a in self._records.items() if keep_until(a, self.ttl) <= now]:
            gone = self._records.pop(approval_id)
            if self._by_fingerprint.get(gone.fingerprint) == approval_id:
                del self._by_fingerprint[gone.fingerprint]

    async def find(self, fingerprint: str) -> Approval | None:
        now = self._clock()
        self._sweep(now)
        approval_id = self._by_fingerprint.get(fingerprint)
        found, unlink = lookup(self._records.get(approval_id or ""), now)
        if unlink:
            self._by_fingerprint.pop(fingerprint, None)
        return found

    async def create(self, approval: Approval) -> Approval:
        live = await self.find(approval.fingerprint)
        if live is not None:
            return live
        self._records[approval.id] = approval
        self._by_fingerprint[approval.fingerprint] = approval.id
        return approval

    async def get(self, approval_id: str) -> Approval | None:
        self._sweep(self._clock())
        return self._records.get(approval_id)

    async def list(self, status: Status | None = None, tenant: str | None = None) -> list[Approval]:
        now = self._clock()
        self._sweep(now)
        found = [a for a in self._records.values() if _matches(a, now, status, tenant)]
        return sorted(found, key=lambda a: a.created_at)

    async def update(self, approval_id: str, mutate: Mutation[_T]) -> _T:
        approval = self._records.get(approval_id)
        if approval is None:
            raise _not_found(approval_id)
        now = self._clock()
        draft = Approval.from_json(approval.to_json())  # all or nothing: mutate a copy
        result, unlink = mutate(draft, now)
        self._records[approval_id] = draft
        if unlink and self._by_fingerprint.get(draft.fingerprint) == approval_id:
            del self._by_fingerprint[draft.fingerprint]
        return result

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisApprovalStore:
    """Approvals in Redis, for every replica: `P apr:<id>` (the record as JSON), `P aprfp:<fingerprint>`
    (the live approval's id) and `P apr:index` (ids by creation time, for listing). Records and
    fingerprints expire with `model.keep_until`."""

    def __init__(
        self,
        redis: Redis,
        ttl: float,
        timeout: float,
        prefix: str = "sidecar:",
        clock: Callable[[], float] = time.time,
        *,
        owns_client: bool = True,
    ) -> None:
        self.ttl = ttl
        self._redis = redis
        self._owns_client = owns_client  # False: the client is the budget store's, which closes it
        self._timeout = timeout
        self._prefix = prefix
        self._clock = clock

    def _record(self, approval_id: str) -> str:
        return f"{self._prefix}apr:{approval_id}"

    def _fp(self, fingerprint: str) -> str:
        return f"{self._prefix}aprfp:{fingerprint}"

    @property
    def _index(self) -> str:
        return f"{self._prefix}apr:index"

    async def _bounded(self, work: Callable[[], Awaitable[_T]]) -> _T:
        # On the budget store's client, its connection slots: the pool has no connection beyond them.
        slots = self._redis.slots if isinstance(self._redis, PooledRedis) else None
        return await bounded(work, max(self._timeout, 2.0), slots)

    async def _transact(self, keys: list[str], body: Callable[[Pipeline], Awaitable[_T]]) -> _T:
        """Run `body(pipe)` under WATCH of `keys`, retrying when another replica changed them meanwhile."""

        async def attempt() -> _T:
            async with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(*keys)
                        return await body(pipe)
                    except WatchError:
                        continue

        return await self._bounded(attempt)

    async def _load(self, pipe: Pipeline, approval_id: str | None) -> Approval | None:
        if not approval_id:
            return None
        blob = await pipe.get(self._record(approval_id))
        return Approval.from_json(blob) if blob else None

    def _write(self, pipe: Pipeline, approval: Approval, link: bool, unlink: bool) -> None:
        until = int(keep_until(approval, self.ttl)) + 1
        pipe.set(self._record(approval.id), approval.to_json(), exat=until)
        if link:
            pipe.set(self._fp(approval.fingerprint), approval.id, exat=until)
            pipe.zadd(self._index, {approval.id: approval.created_at})
        if unlink:
            pipe.delete(self._fp(approval.fingerprint))

    async def _find_in(self, pipe: Pipeline, fingerprint: str) -> tuple[Approval | None, bool, bool]:
        """(approval, unlink, changed) for the fingerprint, read inside a WATCHed pipeline."""
        approval_id = await pipe.get(self._fp(fingerprint))
        stored = await self._load(pipe, _text(approval_id) if approval_id else None)
        before = stored.status if stored else None
        found, unlink = lookup(stored, self._clock())
        return (
            found,
            unlink or (approval_id is not None and stored is None),
            bool(found and found.status != before),
        )

    async def find(self, fingerprint: str) -> Approval | None:
        async def body(pipe: Pipeline) -> Approval | None:
            found, unlink, changed = await self._find_in(pipe, fingerprint)
            if unlink or changed:
                pipe.multi()  # type: ignore[no-untyped-call]
                if found is not None:
                    self._write(pipe, found, link=False, unlink=unlink)
                else:
                    pipe.delete(self._fp(fingerprint))
                await pipe.execute()
            return found

        return await self._transact([self._fp(fingerprint)], body)

    async def create(self, approval: Approval) -> Approval:
        async def body(pipe: Pipeline) -> Approval:
            found, unlink, _ = await self._find_in(pipe, approval.fingerprint)
            if found is not None and not unlink:
                return found
            pipe.multi()  # type: ignore[no-untyped-call]
            if found is not None:
                self._write(pipe, found, link=False, unlink=False)  # the expired one, recorded as such
            self._write(pipe, approval, link=True, unlink=False)
            await pipe.execute()
            return approval

        return await self._transact([self._fp(approval.fingerprint)], body)

    async def get(self, approval_id: str) -> Approval | None:
        async def read() -> Approval | None:
            blob = await self._redis.get(self._record(approval_id))
            return Approval.from_json(blob) if blob else None

        return await self._bounded(read)

    async def list(self, status: Status | None = None, tenant: str | None = None) -> list[Approval]:
        async def read() -> list[Approval]:
            ids = await self._redis.zrange(self._index, 0, -1)
            if not ids:
                return []
            blobs = await self._redis.mget([self._record(_text(i)) for i in ids])
            gone = [i for i, b in zip(ids, blobs, strict=True) if b is None]
            if gone:
                await self._redis.zrem(self._index, *[_text(i) for i in gone])
            now = self._clock()
            found = [Approval.from_json(b) for b in blobs if b is not None]
            return [a for a in found if _matches(a, now, status, tenant)]

        return await self._bounded(read)

    async def update(self, approval_id: str, mutate: Mutation[_T]) -> _T:
        key = self._record(approval_id)

        async def body(pipe: Pipeline) -> _T:
            approval = await self._load(pipe, approval_id)
            if approval is None:
                raise _not_found(approval_id)
            result, unlink = mutate(approval, self._clock())
            if unlink:
                # Only if the fingerprint still points here (a newer approval may own it by now).
                await pipe.watch(self._fp(approval.fingerprint))
                owner = await pipe.get(self._fp(approval.fingerprint))
                unlink = owner is not None and _text(owner) == approval_id
            pipe.multi()  # type: ignore[no-untyped-call]
            self._write(pipe, approval, link=False, unlink=unlink)
            await pipe.execute()
            return result

        return await self._transact([key], body)

    async def ping(self) -> None:
        await self._bounded(self._redis.ping)

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()


def build_store(settings: Settings, redis: Redis | None = None) -> ApprovalStore:
    """Redis when SIDECAR_REDIS_URL is set (shared by every replica; on the budget store's pool when given
    `redis`), else this process's memory."""
    if not settings.redis_url:
        return MemoryApprovalStore(settings.approval_ttl)
    client = redis if redis is not None else connect(settings.redis_url)
    return RedisApprovalStore(
        client, settings.approval_ttl, settings.redis_timeout, owns_client=redis is None
    )
