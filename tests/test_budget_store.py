"""The budget store: both implementations against one suite, the Redis one on a real redis-server.

Time is pinned with `now` (epoch seconds) so windows are deterministic; one test uses the real clocks
(Redis `TIME`, the process clock) with a 1 s reservation TTL.
"""

from __future__ import annotations

import asyncio
import calendar
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
import redis

from bench.budget import reserve_settle_latency
from sidecar.budget.memory_store import MemoryBudgetStore
from sidecar.budget.redis_store import RedisBudgetStore
from sidecar.budget.store import (
    EXPIRE_MARGIN,
    RECORD_GRACE,
    WINDOWS,
    BudgetStore,
    Refusal,
    Reservation,
    StoreUnavailable,
    budget_doc,
    window_end,
    window_start,
)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: float = 0.0) -> float:
    return calendar.timegm((year, month, day, hour, minute, 0)) + second


T0 = at(2026, 11, 24, 10, 0, 30)  # a Tuesday, 10:00:30 UTC
BIG = {"minute": 10**9, "hour": 10**9, "day": 10**9, "month": 10**9}


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BudgetStore]:
    if request.param == "memory":
        yield MemoryBudgetStore()
        return
    redis_store = RedisBudgetStore(request.getfixturevalue("redis_url"))
    try:
        yield redis_store
    finally:
        await redis_store.close()


async def reserved(
    store: BudgetStore, amount: int, rid: str, now: float, limits: dict[str, int] | None = None, ttl: int = 60
) -> Reservation:
    result = await store.reserve("acme", BIG if limits is None else limits, amount, rid, ttl, now=now)
    assert isinstance(result, Reservation), result
    return result


async def used(store: BudgetStore, now: float, tenant: str = "acme") -> dict[str, int]:
    return {name: row.used for name, row in (await store.show(tenant, now=now)).items()}


# -- windows --


def test_window_maths_is_calendar_aligned_in_utc() -> None:
    now = at(2028, 2, 29, 23, 59, 59.5)  # leap day
    assert window_start("minute", now) == at(2028, 2, 29, 23, 59)
    assert window_start("hour", now) == at(2028, 2, 29, 23)
    assert window_start("day", now) == at(2028, 2, 29)
    assert window_start("month", now) == at(2028, 2, 1)
    assert window_end("month", int(at(2028, 2, 1))) == at(2028, 3, 1)
    assert window_end("month", int(at(2026, 12, 1))) == at(2027, 1, 1)
    assert window_end("day", int(at(2028, 2, 29))) == at(2028, 3, 1)
    with pytest.raises(ValueError, match="week"):
        window_start("week", now)


@pytest.mark.parametrize(
    "now",
    [
        at(2026, 11, 24, 10, 0, 59.999),
        at(2026, 11, 24, 10, 1, 0.0),
        at(2026, 11, 24, 23, 59, 59.5),
        at(2026, 11, 25),
        at(2026, 11, 30, 23, 59, 59.999),
        at(2026, 12, 1),
        at(2026, 12, 31, 23, 59, 59.999999),
        at(2027, 1, 1),
        at(2028, 2, 29, 12),
        at(2100, 2, 28, 23, 59, 59),  # not a leap year
    ],
)
async def test_resets_at_is_the_start_of_the_next_calendar_window(store: BudgetStore, now: float) -> None:
    states = await store.snapshot("acme", {"minute": 10, "hour": 10, "day": 10, "month": 10}, now=now)
    for name in WINDOWS:
        expected = window_end(name, window_start(name, now))
        assert states[name].resets_at == datetime.fromtimestamp(expected, UTC), name
        assert states[name].resets_at.tzinfo is UTC


async def test_lua_window_maths_matches_python_on_random_times(store: BudgetStore) -> None:
    rng = random.Random(4)
    for _ in range(150):
        now = round(rng.uniform(0, at(2200, 1, 1)), 3)
        rows = await store.show("acme", now=now)
        for name in WINDOWS:
            expected = window_end(name, window_start(name, now))
            assert rows[name].resets_at.timestamp() == expected, (now, name)


async def test_usage_rolls_over_at_minute_day_and_month_boundaries(store: BudgetStore) -> None:
    first = await reserved(store, 100, "req_1", now=at(2026, 11, 24, 10, 0, 59.9))
    assert await used(store, at(2026, 11, 24, 10, 0, 59.95)) == {
        "minute": 100,
        "hour": 100,
        "day": 100,
        "month": 100,
    }
    assert await used(store, at(2026, 11, 24, 10, 1, 0.0)) == {
        "minute": 0,
        "hour": 100,
        "day": 100,
        "month": 100,
    }
    assert await store.settle(first, 100, now=at(2026, 11, 24, 10, 1, 1)) == 0

    await reserved(store, 7, "req_2", now=at(2026, 11, 30, 23, 59, 59.5))
    assert await used(store, at(2026, 11, 30, 23, 59, 59.9)) == {
        "minute": 7,
        "hour": 7,
        "day": 7,
        "month": 107,
    }
    assert await used(store, at(2026, 12, 1)) == {"minute": 0, "hour": 0, "day": 0, "month": 0}


async def test_snapshot_reports_only_limited_windows_as_input_budget(store: BudgetStore) -> None:
    await reserved(store, 1500, "req_1", now=T0)
    states = await store.snapshot("acme", {"day": 2000}, now=T0)
    assert list(states) == ["day"]
    day = states["day"]
    assert (day.limit, day.used, day.remaining) == (2000, 1500, 500)
    assert budget_doc("acme", states) == {
        "tenant": "acme",
        "windows": {
            "day": {"limit": 2000, "used": 1500, "remaining": 500, "resets_at": "2026-11-25T00:00:00Z"}
        },
    }


async def test_redis_keys_expire_after_their_window(redis_url: str) -> None:
    store = RedisBudgetStore(redis_url)
    try:
        await reserved(store, 10, "req_1", now=T0, ttl=30)
        assert await store.rate_limit("acme", 5, now=T0) == 0
        await store.set_limit_usage("acme", limits={"day": 100}, now=T0)
    finally:
        await store.close()
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        ttls = {key: raw.ttl(key) for key in raw.scan_iter("*")}
    finally:
        raw.close()
    base = "sidecar:bud:{acme}:"
    for name in WINDOWS:
        key = f"{base}w:{name}:{window_start(name, T0)}"
        expected = window_end(name, window_start(name, T0)) - T0 + EXPIRE_MARGIN
        assert expected - 3 <= ttls.pop(key) <= expected, name
    assert 30 + RECORD_GRACE - 3 <= ttls.pop(base + "r:req_1") <= 30 + RECORD_GRACE
    month_left = window_end("month", window_start("month", T0)) - T0
    assert month_left - 3 <= ttls.pop(base + "exp") <= month_left + EXPIRE_MARGIN
    assert 55 <= ttls.pop("sidecar:rl:{acme}") <= 61
    assert ttls.pop(base + "lim:day") == -1  # stored limits are configuration: they do not expire
    assert ttls == {}, "every other key expires"


# -- reserve --


async def test_reserve_refuses_when_any_window_would_overflow_and_charges_nothing(store: BudgetStore) -> None:
    limits = {"minute": 1000, "day": 2000}
    await reserved(store, 800, "req_1", now=T0, limits=limits, ttl=3600)

    refusal = await store.reserve("acme", limits, 300, "req_2", 60, now=T0)
    assert isinstance(refusal, Refusal)
    assert refusal.window == "minute"
    assert (refusal.state.limit, refusal.state.used, refusal.state.remaining) == (1000, 800, 200)
    assert refusal.retry_after == 30  # 10:00:30 -> 10:01:00
    assert refusal.state.resets_at == datetime(2026, 11, 24, 10, 1, tzinfo=UTC)
    assert await used(store, T0) == {"minute": 800, "hour": 800, "day": 800, "month": 800}

    # The day overflows while the minute has room: the refusal names the day, retry after midnight.
    later = T0 + 120
    await reserved(store, 900, "req_3", now=later, limits=limits, ttl=3600)
    refusal = await store.reserve("acme", limits, 900, "req_4", 60, now=later + 60)
    assert isinstance(refusal, Refusal)
    assert refusal.window == "day"
    assert refusal.retry_after == int(at(2026, 11, 25) - (later + 60))
    assert await used(store, later + 60) == {"minute": 0, "hour": 1700, "day": 1700, "month": 1700}

    # Both overflow: the longest window is named, since only its reset lets the retry fit.
    refusal = await store.reserve("acme", {"minute": 10, "day": 10}, 50, "req_5", 60, now=later + 60)
    assert isinstance(refusal, Refusal)
    assert refusal.window == "day"


async def test_retry_after_is_at_least_one_second(store: BudgetStore) -> None:
    refusal = await store.reserve("acme", {"minute": 5}, 10, "req_1", 60, now=at(2026, 11, 24, 10, 0, 59.8))
    assert isinstance(refusal, Refusal)
    assert refusal.retry_after == 1


async def test_a_refused_id_can_reserve_again_and_a_held_one_is_idempotent(store: BudgetStore) -> None:
    assert isinstance(await store.reserve("acme", {"day": 100}, 500, "req_1", 60, now=T0), Refusal)
    first = await reserved(store, 50, "req_1", now=T0, limits={"day": 100})
    again = await store.reserve("acme", {"day": 100}, 50, "req_1", 60, now=T0 + 1)
    assert again == first  # a retried reserve of a held reservation is not charged twice
    assert (await used(store, T0))["day"] == 50
    await store.settle(first, 20, now=T0 + 2)
    with pytest.raises(ValueError, match="already"):
        await store.reserve("acme", {"day": 100}, 50, "req_1", 60, now=T0 + 3)


async def test_stored_limits_apply_where_the_decision_has_none_and_the_stricter_wins(
    store: BudgetStore,
) -> None:
    await store.set_limit_usage("acme", limits={"day": 1000, "minute": 10**6}, now=T0)
    assert await store.stored_limits("acme") == {"minute": 10**6, "day": 1000}
    states = await store.snapshot("acme", {"day": 5000, "hour": 300}, now=T0)
    assert {k: s.limit for k, s in states.items()} == {"minute": 10**6, "hour": 300, "day": 1000}
    refusal = await store.reserve("acme", {"day": 5000}, 1001, "req_1", 60, now=T0)
    assert isinstance(refusal, Refusal)
    assert refusal.window == "day"
    assert refusal.state.limit == 1000
    await store.set_limit_usage("acme", limits={"day": None}, now=T0)
    assert await store.stored_limits("acme") == {"minute": 10**6}
    await reserved(store, 1001, "req_1", now=T0, limits={"day": 5000})


async def test_invalid_arguments_are_value_errors(store: BudgetStore) -> None:
    with pytest.raises(ValueError, match="week"):
        await store.reserve("acme", {"week": 10}, 1, "req_1", 60, now=T0)
    with pytest.raises(ValueError, match="non-negative"):
        await store.snapshot("acme", {"day": -1}, now=T0)
    with pytest.raises(ValueError):
        await store.reserve("acme", {}, -1, "req_1", 60, now=T0)
    with pytest.raises(ValueError):
        await store.set_limit_usage("acme", limits={"fortnight": None}, now=T0)


# -- settle --


async def test_settle_refunds_the_difference(store: BudgetStore) -> None:
    reservation = await reserved(store, 1000, "req_1", now=T0, limits={"day": 5000})
    assert reservation.amount == 1000
    assert set(reservation.windows) == set(WINDOWS)
    assert reservation.windows["day"] == at(2026, 11, 24)
    assert await store.settle(reservation, 300, now=T0 + 1) == 700
    assert await used(store, T0 + 1) == {"minute": 300, "hour": 300, "day": 300, "month": 300}


async def test_a_failed_call_settles_zero_and_is_refunded_fully(store: BudgetStore) -> None:
    reservation = await reserved(store, 1000, "req_1", now=T0)
    assert await store.settle(reservation, 0, now=T0 + 1) == 1000
    assert await used(store, T0 + 1) == dict.fromkeys(WINDOWS, 0)


async def test_usage_beyond_the_reservation_is_recorded_not_refused(store: BudgetStore) -> None:
    limits = {"day": 1000}
    reservation = await reserved(store, 600, "req_1", now=T0, limits=limits)
    assert await store.settle(reservation, 1400, now=T0 + 1) == -800
    state = (await store.snapshot("acme", limits, now=T0 + 1))["day"]
    assert (state.used, state.remaining) == (1400, 0)
    assert isinstance(await store.reserve("acme", limits, 0, "req_2", 60, now=T0 + 2), Refusal)


async def test_settle_is_idempotent(store: BudgetStore) -> None:
    reservation = await reserved(store, 1000, "req_1", now=T0)
    assert await store.settle(reservation, 400, now=T0 + 1) == 600
    assert await store.settle(reservation, 400, now=T0 + 2) == 0
    assert await store.settle(reservation, 900, now=T0 + 3) == 0
    assert (await used(store, T0 + 3))["day"] == 400
    stranger = Reservation("req_unknown", "acme", 100, dict(reservation.windows))
    assert await store.settle(stranger, 50, now=T0 + 4) == 0
    assert (await used(store, T0 + 4))["day"] == 400


async def test_settle_after_the_window_rolled_over_charges_the_original_window(store: BudgetStore) -> None:
    reservation = await reserved(store, 500, "req_1", now=at(2026, 11, 24, 10, 59, 59.5))
    assert await store.settle(reservation, 120, now=at(2026, 11, 24, 11, 0, 5)) == 380
    assert await used(store, at(2026, 11, 24, 11, 0, 6)) == {"minute": 0, "hour": 0, "day": 120, "month": 120}
    before = await used(store, at(2026, 11, 24, 10, 59, 59.9))  # the windows it was charged to
    assert before == {"minute": 120, "hour": 120, "day": 120, "month": 120}


# -- expiry --


async def test_an_unsettled_reservation_stops_counting_after_its_ttl(store: BudgetStore) -> None:
    limits = {"day": 1000}
    reservation = await reserved(store, 800, "req_1", now=T0, limits=limits, ttl=5)
    assert isinstance(await store.reserve("acme", limits, 500, "req_2", 5, now=T0 + 4.9), Refusal)
    assert (await used(store, T0 + 4.9))["day"] == 800
    assert (await used(store, T0 + 5.1))["day"] == 0
    other = await reserved(store, 500, "req_2", now=T0 + 5.2, limits=limits, ttl=5)

    # The late settle of the expired reservation still records its real usage, once.
    assert await store.settle(reservation, 300, now=T0 + 6) == 500
    assert (await used(store, T0 + 6))["day"] == 800  # 500 held + 300 used
    assert await store.settle(reservation, 300, now=T0 + 7) == 0
    assert await store.settle(other, 500, now=T0 + 8) == 0
    assert (await used(store, T0 + 8))["day"] == 800
    with pytest.raises(ValueError, match="already settled"):
        await store.reserve("acme", limits, 1, "req_1", 5, now=T0 + 9)


async def test_expiry_on_the_real_clocks(redis_url: str) -> None:
    """now=None: Redis `TIME` and the process clock. One 1.1 s sleep for both stores."""
    stores: list[BudgetStore] = [MemoryBudgetStore(), RedisBudgetStore(redis_url)]
    try:
        for index, s in enumerate(stores):
            result = await s.reserve("acme", {"day": 10**9}, 700, f"req_{index}", 1)
            assert isinstance(result, Reservation)
            assert (await s.snapshot("acme", {"day": 10**9}))["day"].used >= 700
            assert abs(datetime.now(UTC).timestamp() - result.windows["minute"]) < 61
        await asyncio.sleep(1.1)
        for s in stores:
            states = await s.snapshot("acme", {"minute": 10**9, "day": 10**9})
            assert states["day"].used == 0
            assert states["day"].resets_at.timestamp() == window_end("day", window_start("day", time.time()))
    finally:
        await stores[1].close()


# -- concurrency --


async def test_concurrent_reserves_never_overspend(store: BudgetStore) -> None:
    limits = {"minute": 10**9, "day": 10_500}
    results = await asyncio.gather(
        *(store.reserve("acme", limits, 1000, f"req_{i}", 60, now=T0) for i in range(40))
    )
    granted = [r for r in results if isinstance(r, Reservation)]
    assert len(granted) == 10  # floor(10_500 / 1000)
    assert all(isinstance(r, Refusal) and r.window == "day" for r in results if r not in granted)
    assert (await used(store, T0))["day"] == 10_000


async def test_two_redis_stores_with_separate_pools_share_one_budget(redis_url: str) -> None:
    first, second = RedisBudgetStore(redis_url), RedisBudgetStore(redis_url)
    limits = {"day": 10_500}
    try:
        results = await asyncio.gather(
            *(
                (first if i % 2 else second).reserve("acme", limits, 1000, f"req_{i}", 60, now=T0)
                for i in range(40)
            )
        )
        granted = [r for r in results if isinstance(r, Reservation)]
        assert len(granted) == 10
        settled = await asyncio.gather(*(second.settle(r, 400, now=T0 + 1) for r in granted))
        assert settled == [600] * 10
        assert (await first.snapshot("acme", limits, now=T0 + 1))["day"].used == 4000
    finally:
        await first.close()
        await second.close()


# -- rate limits --


async def test_rate_limit_allows_n_per_minute_then_says_when(store: BudgetStore) -> None:
    assert [await store.rate_limit("acme", 3, now=T0 + dt) for dt in (0, 10, 20)] == [0, 0, 0]
    assert await store.rate_limit("acme", 3, now=T0 + 30) == 30  # until the first leaves the window
    assert await store.rate_limit("acme", 3, now=T0 + 59.5) == 1
    assert await store.rate_limit("acme", 3, now=T0 + 60) == 0  # refused calls were not counted
    assert await store.rate_limit("acme", 3, now=T0 + 61) == 9
    assert await store.rate_limit("acme:bot", 3, now=T0 + 61) == 0  # counted per key
    assert await store.rate_limit("globex", 1, now=T0 + 61) == 0
    assert await store.rate_limit("globex", 1, now=T0 + 61) == 60
    assert await store.rate_limit("nobody", 0, now=T0) == 60


async def test_rate_limit_under_concurrency(store: BudgetStore) -> None:
    results = await asyncio.gather(*(store.rate_limit("acme", 7, now=T0) for _ in range(30)))
    assert results.count(0) == 7
    assert all(r == 60 for r in results if r)


# -- CLI operations --


async def test_show_set_and_reset(store: BudgetStore) -> None:
    await reserved(store, 250, "req_1", now=T0)
    rows = await store.set_limit_usage("acme", used={"day": 4000}, limits={"day": 5000}, now=T0)
    assert rows["day"].to_json() == {
        "limit": 5000,
        "used": 4000,
        "remaining": 1000,
        "resets_at": "2026-11-25T00:00:00Z",
    }
    assert rows["minute"].limit is None
    assert rows["minute"].remaining is None
    assert rows["minute"].used == 250
    shown = await store.show("acme", {"minute": 100}, now=T0)
    assert (shown["minute"].limit, shown["minute"].remaining) == (100, 0)
    assert list(shown) == list(WINDOWS)

    await store.reset("acme")
    assert await used(store, T0) == dict.fromkeys(WINDOWS, 0)
    assert await store.stored_limits("acme") == {"day": 5000}  # reset keeps the limits
    assert await used(store, T0, tenant="globex") == dict.fromkeys(WINDOWS, 0)


async def test_reset_drops_reservations_in_flight(store: BudgetStore) -> None:
    reservation = await reserved(store, 300, "req_1", now=T0)
    await reserved(store, 5, "req_other", now=T0)
    await store.reset("acme")
    assert await store.settle(reservation, 100, now=T0 + 1) == 0
    assert await used(store, T0 + 1) == dict.fromkeys(WINDOWS, 0)


async def test_reset_removes_many_keys_in_batches(store: BudgetStore) -> None:
    for i in range(620):  # Redis: more keys than one UNLINK batch
        await reserved(store, 1, f"req_{i}", now=T0)
    await store.reset("acme")
    assert await used(store, T0) == dict.fromkeys(WINDOWS, 0)
    await reserved(store, 1, "req_1", now=T0)  # the ids are free again


async def test_tenants_are_separate(store: BudgetStore) -> None:
    await reserved(store, 300, "req_1", now=T0)
    result = await store.reserve("ac*", {"day": 100}, 100, "req_1", 60, now=T0)  # a glob, for reset's SCAN
    assert isinstance(result, Reservation)
    assert (await used(store, T0))["day"] == 300
    await store.reset("ac*")
    assert (await used(store, T0))["day"] == 300
    assert (await used(store, T0, tenant="ac*"))["day"] == 0


# -- failures --


@pytest.fixture
def dead_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        yield int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # accepts connections (in the backlog) and never answers
        yield int(sock.getsockname()[1])


async def every_method_is_unavailable(store: RedisBudgetStore) -> None:
    reservation = Reservation("req_1", "acme", 10, {name: 0 for name in WINDOWS})
    calls = [
        store.ping(),
        store.snapshot("acme", {"day": 10}),
        store.reserve("acme", {"day": 10}, 1, "req_1", 60),
        store.settle(reservation, 5),
        store.rate_limit("acme", 10),
        store.show("acme"),
        store.set_limit_usage("acme", used={"day": 1}),
        store.stored_limits("acme"),
        store.reset("acme"),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call


async def test_redis_down_raises_store_unavailable_quickly(dead_port: int) -> None:
    store = RedisBudgetStore(f"redis://127.0.0.1:{dead_port}/0")
    start = time.monotonic()
    try:
        await every_method_is_unavailable(store)
    finally:
        await store.close()
    assert time.monotonic() - start < 2.0


async def test_a_redis_that_does_not_answer_times_out(silent_port: int) -> None:
    store = RedisBudgetStore(f"redis://127.0.0.1:{silent_port}/0", timeout=0.05)
    start = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match="Timeout"):
            await store.reserve("acme", {"day": 10}, 1, "req_1", 60)
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
    assert time.monotonic() - start < 1.5


# -- latency (printed, not asserted) --


async def test_reserve_settle_latency_report(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = RedisBudgetStore(redis_url)
    try:
        figures = await reserve_settle_latency(store, n=1000, warmup=100)
    finally:
        await store.close()
    with capsys.disabled():
        print(
            f"\nbudget reserve+settle on loopback Redis: p50 {figures['p50_ms']:.3f} ms, "
            f"p90 {figures['p90_ms']:.3f} ms, p99 {figures['p99_ms']:.3f} ms (target p50 <= 0.5 ms)"
        )
    assert figures["p50_ms"] > 0
