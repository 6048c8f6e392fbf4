"""In-process budget store: the embedded default (`SIDECAR_REDIS_URL` unset).

The same semantics as the Redis store (see `sidecar.budget.store`) within one process: every method runs to
completion without awaiting, so on one event loop each operation is atomic. Budgets are per process: two
sidecar replicas with this store each enforce the full limit. Time defaults to this process's clock.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.budget.store import (
    EXPIRE_MARGIN,
    RATE_WINDOW,
    RECORD_GRACE,
    WINDOWS,
    Refusal,
    Reservation,
    UsageRow,
    WindowState,
    check_limits,
    limit_changes,
    merge_limits,
    retry_after,
    window_end,
    window_start,
)

_SWEEP_EVERY = 60.0  # seconds of store time between sweeps of expired window data and records


@dataclass(slots=True)
class _Window:
    expires: float  # end of the window + EXPIRE_MARGIN
    used: int = 0  # settled + held by reservations in flight


@dataclass(slots=True)
class _Record:
    amount: int
    expires: float  # the reservation stops counting at this time
    drop_at: float  # the record is forgotten at this time
    windows: dict[str, int]
    state: str = "held"  # held | expired | settled


@dataclass(slots=True)
class _Tenant:
    windows: dict[tuple[str, int], _Window] = field(default_factory=dict)
    records: dict[str, _Record] = field(default_factory=dict)
    expiries: list[tuple[float, str]] = field(default_factory=list)  # heap of (expires, id) of held ones
    limits: dict[str, int] = field(default_factory=dict)
    next_sweep: float = 0.0


class MemoryBudgetStore:
    def __init__(self) -> None:
        self._tenants: dict[str, _Tenant] = {}
        self._rates: dict[str, deque[float]] = {}
        self._next_rate_sweep = 0.0

    # -- internals (no awaits: each public method is atomic on the event loop) --

    def _tenant(self, tenant: str, now: float) -> _Tenant:
        state = self._tenants.setdefault(tenant, _Tenant())
        while state.expiries and state.expiries[0][0] <= now:
            _, rid = heapq.heappop(state.expiries)
            record = state.records.get(rid)
            if record is not None and record.state == "held" and record.expires <= now:
                self._release(state, record)
                record.state = "expired"
        if now >= state.next_sweep:
            state.next_sweep = now + _SWEEP_EVERY
            state.windows = {k: w for k, w in state.windows.items() if w.expires > now}
            state.records = {k: r for k, r in state.records.items() if r.drop_at > now}
        return state

    @staticmethod
    def _release(state: _Tenant, record: _Record) -> None:
        for name, start in record.windows.items():
            window = state.windows.get((name, start))
            if window is not None:
                window.used = max(0, window.used - record.amount)

    @staticmethod
    def _window(state: _Tenant, name: str, start: int, now: float) -> _Window:
        window = state.windows.get((name, start))
        if window is None or window.expires <= now:
            window = state.windows[(name, start)] = _Window(window_end(name, start) + EXPIRE_MARGIN)
        return window

    def _used(self, state: _Tenant, name: str, now: float) -> tuple[int, int]:
        """(used incl. in-flight, end) of the current window."""
        start = window_start(name, now)
        window = state.windows.get((name, start))
        used = 0 if window is None or window.expires <= now else window.used
        return used, window_end(name, start)

    @staticmethod
    def _now(now: float | None) -> float:
        return time.time() if now is None else now

    # -- the BudgetStore interface --

    async def snapshot(
        self, tenant: str, limits: dict[str, int], now: float | None = None
    ) -> dict[str, WindowState]:
        t = self._now(now)
        state = self._tenant(tenant, t)
        out: dict[str, WindowState] = {}
        for name, limit in merge_limits(check_limits(limits), state.limits).items():
            used, end = self._used(state, name, t)
            out[name] = WindowState.of(name, limit, used, end)
        return out

    async def reserve(  # noqa: PLR0917  (the BudgetStore interface)
        self,
        tenant: str,
        limits: dict[str, int],
        amount: int,
        reservation_id: str,
        ttl_seconds: int,
        now: float | None = None,
    ) -> Reservation | Refusal:
        if amount < 0 or ttl_seconds < 1:
            raise ValueError("reserve needs amount >= 0 and ttl_seconds >= 1")
        t = self._now(now)
        given = check_limits(limits)
        state = self._tenant(tenant, t)
        existing = state.records.get(reservation_id)
        if existing is not None:
            if existing.state != "held":
                raise ValueError(f"reservation {reservation_id!r} was already {existing.state}")
            return Reservation(reservation_id, tenant, existing.amount, dict(existing.windows))
        effective = merge_limits(given, state.limits)
        for name in reversed(WINDOWS):
            if name in effective:
                used, end = self._used(state, name, t)
                if used + amount > effective[name]:
                    window_state = WindowState.of(name, effective[name], used, end)
                    return Refusal(name, window_state, retry_after(end, t))
        starts = {name: window_start(name, t) for name in WINDOWS}
        for name, start in starts.items():
            self._window(state, name, start, t).used += amount
        expires = t + ttl_seconds
        state.records[reservation_id] = _Record(amount, expires, expires + RECORD_GRACE, starts)
        heapq.heappush(state.expiries, (expires, reservation_id))
        return Reservation(reservation_id, tenant, amount, dict(starts))

    async def settle(self, reservation: Reservation, actual: int, now: float | None = None) -> int:
        if actual < 0:
            raise ValueError("settle needs actual >= 0")
        t = self._now(now)
        state = self._tenant(reservation.tenant, t)
        record = state.records.get(reservation.id)
        if record is None or record.state == "settled":
            return 0
        delta = actual - (record.amount if record.state == "held" else 0)
        for name, start in record.windows.items():
            if math.ceil(window_end(name, start) - t) + EXPIRE_MARGIN <= 0:
                continue  # that window is over and its data gone, as its Redis key would be
            window = self._window(state, name, start, t)
            window.used = max(0, window.used + delta)
        record.state = "settled"
        return record.amount - actual

    async def rate_limit(self, key: str, per_minute: int, now: float | None = None) -> int:
        t = self._now(now)
        if t >= self._next_rate_sweep:  # forget idle keys
            self._next_rate_sweep = t + _SWEEP_EVERY
            self._rates = {k: q for k, q in self._rates.items() if q and q[-1] > t - RATE_WINDOW}
        log = self._rates.setdefault(key, deque())
        while log and log[0] <= t - RATE_WINDOW:
            log.popleft()
        if len(log) < per_minute:
            log.append(t)
            return 0
        if per_minute < 1:
            return RATE_WINDOW
        return retry_after(log[len(log) - per_minute] + RATE_WINDOW, t)

    async def show(
        self, tenant: str, limits: Mapping[str, int] | None = None, now: float | None = None
    ) -> dict[str, UsageRow]:
        t = self._now(now)
        given = check_limits(limits)
        state = self._tenant(tenant, t)
        effective = merge_limits(given, state.limits)
        rows: dict[str, UsageRow] = {}
        for name in WINDOWS:
            used, end = self._used(state, name, t)
            rows[name] = UsageRow.of(name, effective.get(name), used, end)
        return rows

    async def set_limit_usage(
        self,
        tenant: str,
        *,
        used: Mapping[str, int] | None = None,
        limits: Mapping[str, int | None] | None = None,
        now: float | None = None,
    ) -> dict[str, UsageRow]:
        t = self._now(now)
        new_used = check_limits(used)
        new_limits, dropped = limit_changes(limits)
        state = self._tenant(tenant, t)
        for name, value in new_used.items():
            self._window(state, name, window_start(name, t), t).used = value
        state.limits.update(new_limits)
        for name in dropped:
            state.limits.pop(name, None)
        return await self.show(tenant, now=t)

    async def stored_limits(self, tenant: str) -> dict[str, int]:
        state = self._tenants.get(tenant)
        return dict(state.limits) if state is not None else {}

    async def reset(self, tenant: str) -> None:
        state = self._tenants.get(tenant)
        if state is not None:
            self._tenants[tenant] = _Tenant(limits=state.limits)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
