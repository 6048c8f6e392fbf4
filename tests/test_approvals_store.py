"""The approval lifecycle in both stores (process memory and a real redis-server): bound to a fingerprint,
decided once, used once, released by a failed call, expired, and race-free across replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from sidecar.approvals import model
from sidecar.approvals.model import Approval, ApprovalError
from sidecar.approvals.store import ApprovalStore, MemoryApprovalStore, RedisApprovalStore

TTL = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


StoreFactory = Callable[[], ApprovalStore]


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[StoreFactory]:
    """Make stores sharing one truth: the same dict-backed memory store, or new clients of one Redis."""
    made: list[ApprovalStore] = []
    if request.param == "memory":
        shared = MemoryApprovalStore(TTL, clock)

        def make() -> ApprovalStore:
            return shared
    else:
        url = request.getfixturevalue("redis_url")

        def make() -> ApprovalStore:
            store = RedisApprovalStore(Redis.from_url(url), TTL, 1.0, clock=clock)
            made.append(store)
            return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def fresh(clock: Clock, body: bytes = b'{"a": 1}') -> Approval:
    binding = model.Binding(
        "POST", "/v1/batches", "", "acme", None, None, "application/json", model.body_hash(body)
    )
    return Approval(
        id=model.new_approval_id(),
        fingerprint=model.fingerprint(binding),
        tenant="acme",
        sub="bot",
        method="POST",
        path="/v1/batches",
        operation="batches.create",
        model=None,
        approvers=["group:ml-leads"],
        created_at=clock.now,
        expires_at=clock.now + TTL,
    )


async def approve(store: ApprovalStore, approval_id: str, verdict: model.Status = "approved") -> Approval:
    def apply(draft: Approval, now: float) -> tuple[Approval, bool]:
        model.decide(draft, verdict, by="alice", reason=None, now=now, ttl=TTL)
        return draft, False

    return await store.update(approval_id, apply)


async def claim(store: ApprovalStore, approval_id: str, request_id: str) -> bool:
    return await store.update(approval_id, lambda a, now: (model.claim(a, request_id, now, 30), False))


async def finish(store: ApprovalStore, approval_id: str, request_id: str, ok: bool) -> bool:
    return await store.update(approval_id, lambda a, now: (model.finish(a, request_id, ok, now),) * 2)


async def test_one_live_approval_per_fingerprint(stores: StoreFactory, clock: Clock) -> None:
    first = await stores().create(fresh(clock))
    again = await stores().create(fresh(clock))  # another replica, the identical request
    assert again.id == first.id and again.status == "pending"
    other = await stores().create(fresh(clock, b'{"a": 2}'))
    assert other.id != first.id
    found = await stores().find(first.fingerprint)
    assert found is not None and found.id == first.id


async def test_approved_passes_once_and_then_a_new_approval_is_needed(
    stores: StoreFactory, clock: Clock
) -> None:
    store = stores()
    approval = await store.create(fresh(clock))
    assert (await approve(store, approval.id)).status == "approved"
    with pytest.raises(ApprovalError) as twice:
        await approve(stores(), approval.id, "denied")
    assert twice.value.code == "approval_conflict"
    assert await claim(store, approval.id, "req_1")
    assert not await claim(stores(), approval.id, "req_2")  # in flight: nobody else
    assert await finish(store, approval.id, "req_1", ok=True)
    assert await store.find(approval.fingerprint) is None  # used: the next identical request starts over
    stored = await store.get(approval.id)
    assert stored is not None and stored.status == "used" and stored.used_by == "req_1"
    newer = await store.create(fresh(clock))
    assert newer.id != approval.id and newer.status == "pending"


async def test_a_failed_call_releases_its_claim(stores: StoreFactory, clock: Clock) -> None:
    store = stores()
    approval = await store.create(fresh(clock))
    await approve(store, approval.id)
    assert await claim(store, approval.id, "req_1")
    assert not await finish(store, approval.id, "req_1", ok=False)
    found = await store.find(approval.fingerprint)
    assert found is not None and found.current(clock.now) == "approved" and not found.claimed(clock.now)
    assert await claim(store, approval.id, "req_2")  # the agent's retry


async def test_a_crashed_holders_claim_lapses(stores: StoreFactory, clock: Clock) -> None:
    store = stores()
    approval = await store.create(fresh(clock))
    await approve(store, approval.id)
    assert await claim(store, approval.id, "req_crashed")
    clock.now += 31
    assert await claim(store, approval.id, "req_2")


async def test_pending_and_approved_approvals_expire(stores: StoreFactory, clock: Clock) -> None:
    store = stores()
    pending = await store.create(fresh(clock))
    clock.now += TTL + 1
    found = await store.find(pending.fingerprint)
    assert found is not None and found.id == pending.id and found.status == "expired"  # reported once
    assert await store.find(pending.fingerprint) is None  # then forgotten
    with pytest.raises(ApprovalError) as late:
        await approve(store, pending.id)
    assert late.value.code == "approval_expired"

    approved = await store.create(fresh(clock))
    await approve(store, approved.id)
    clock.now += TTL + 1
    assert not await claim(store, approved.id, "req_late")
    found = await store.find(approved.fingerprint)
    assert found is not None and found.status == "expired"


async def test_a_denial_answers_for_its_time_then_is_forgotten(stores: StoreFactory, clock: Clock) -> None:
    store = stores()
    approval = await store.create(fresh(clock))
    await approve(store, approval.id, "denied")
    found = await store.find(approval.fingerprint)
    assert found is not None and found.status == "denied"
    clock.now += TTL + 1
    assert await store.find(approval.fingerprint) is None
    assert (await store.create(fresh(clock))).id != approval.id


async def test_list_filters_by_status_and_tenant(stores: StoreFactory, clock: Clock) -> None:
    store = stores()
    one = await store.create(fresh(clock, b"1"))
    two = await store.create(fresh(clock, b"2"))
    await approve(store, two.id)
    assert [a.id for a in await store.list("pending")] == [one.id]
    assert [a.id for a in await store.list("approved", "acme")] == [two.id]
    assert await store.list(None, "globex") == []
    with pytest.raises(ApprovalError) as unknown:
        await approve(store, "apr_unknown")
    assert unknown.value.code == "approval_not_found"


async def test_concurrent_claims_across_replicas_let_exactly_one_through(
    stores: StoreFactory, clock: Clock
) -> None:
    store = stores()
    approval = await store.create(fresh(clock))
    await approve(store, approval.id)
    replicas = [stores() for _ in range(8)]
    won = await asyncio.gather(*(claim(r, approval.id, f"req_{i}") for i, r in enumerate(replicas)))
    assert sum(won) == 1
