"""The budget store interface, its shared types and the calendar window maths.

Semantics shared by every implementation (`RedisBudgetStore`, `MemoryBudgetStore`):

- Windows are calendar-aligned in UTC: minute, hour and day start at the unit boundary, month at the 1st,
  00:00 UTC. `resets_at` is the start of the next window.
- Usage is tracked in all four windows on every reservation, whether or not a limit is set for the window, so
  `show` reports real usage and a limit added later applies to usage already made. Limits are checked only
  for the windows that have one.
- Effective limits: the limits passed in (from the policy decision) merged with the limits stored for the
  tenant by `sidecar budget set`: a stored limit applies where the decision has none for that window, and
  caps the decision's limit where it has one (the stricter wins). An operator can tighten a budget at once,
  on every replica; loosening one past the policy is a policy change.
- `used` = settled usage + tokens held by reservations in flight. `reserve` checks `used + amount <= limit`
  for every limited window, from the longest window to the shortest, so a refusal names the window whose reset
  actually lets a retry fit; it charges every window or none.
- A reservation holds its tokens for `ttl_seconds`. After that it stops counting (a crashed sidecar's
  reservation is released instead of leaking); its record stays `RECORD_GRACE` seconds longer, so a late
  settle still records the real usage (in the windows it was charged to) exactly once. A settle after that,
  a second settle, or a settle of an id the store never saw (or that `reset` dropped) changes nothing and
  returns 0.
- `settle` returns `amount - actual` on the first settle of a reservation (also when it had expired: its
  tokens were released then), so per request reserved = used + refunded.
- Rate limits are a sliding-window log: at most `per_minute` requests in any 60 s; a refused request is not
  counted and is told to wait until the oldest counted request leaves the window.
- Window data expires `EXPIRE_MARGIN` seconds after its window ends.
- Time: `now` (epoch seconds) pins the clock, for tests and tools. When it is None, the Redis store uses the
  Redis server's clock (`TIME` inside the scripts: one clock for every replica, no skew); the memory store
  uses this process's clock.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sidecar.documents import WINDOWS, BudgetDoc, WindowDoc

__all__ = [
    "EXPIRE_MARGIN",
    "RATE_WINDOW",
    "RECORD_GRACE",
    "WINDOWS",
    "BudgetStore",
    "Refusal",
    "Reservation",
    "StoreUnavailable",
    "UsageRow",
    "WindowState",
    "budget_doc",
    "check_limits",
    "limit_changes",
    "merge_limits",
    "retry_after",
    "to_utc",
    "window_end",
    "window_start",
]

EXPIRE_MARGIN = 120  # seconds window data outlives its window (late settles, clock skew)
RECORD_GRACE = 3600  # seconds a reservation record outlives its TTL (late settles are still recorded)
RATE_WINDOW = 60  # the rate limit's sliding window, seconds
_SPAN = {"minute": 60, "hour": 3600, "day": 86400}


def window_start(window: str, now: float) -> int:
    """Start (epoch seconds) of the calendar window holding `now`."""
    span = _SPAN.get(window)
    if span is not None:
        return math.floor(now / span) * span
    if window != "month":
        raise ValueError(f"unknown budget window {window!r}")
    day = datetime.fromtimestamp(math.floor(now / 86400) * 86400, UTC)
    return calendar.timegm((day.year, day.month, 1, 0, 0, 0))


def window_end(window: str, start: int) -> int:
    """Start of the window after the one starting at `start` (its `resets_at`)."""
    span = _SPAN.get(window)
    if span is not None:
        return start + span
    return window_start(window, start + 32 * 86400)  # the 1st + 32 days is in the next month


def retry_after(end: float, now: float) -> int:
    """Whole seconds from `now` until `end`, at least 1."""
    return max(1, math.ceil(end - now))


def to_utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def check_limits(limits: Mapping[str, int] | None) -> dict[str, int]:
    """Validated copy of a window -> token limit mapping (ValueError on unknown windows or bad values)."""
    out: dict[str, int] = {}
    for window, value in (limits or {}).items():
        if window not in WINDOWS:
            raise ValueError(f"unknown budget window {window!r} (expected one of {', '.join(WINDOWS)})")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"budget limit for {window} must be a non-negative integer, not {value!r}")
        out[window] = value
    return out


def limit_changes(limits: Mapping[str, int | None] | None) -> tuple[dict[str, int], list[str]]:
    """(limits to store, windows whose stored limit is removed) from a `set_limit_usage` argument."""
    changes = dict(limits or {})
    drop = [window for window, value in changes.items() if value is None]
    check_limits({window: 0 for window in drop})
    return check_limits({w: v for w, v in changes.items() if v is not None}), drop


def merge_limits(given: Mapping[str, int], stored: Mapping[str, int]) -> dict[str, int]:
    """Effective limits: every window limited by either side, the stricter where both are."""
    out: dict[str, int] = {}
    for window in WINDOWS:
        values = [m[window] for m in (given, stored) if window in m]
        if values:
            out[window] = min(values)
    return out


@dataclass(frozen=True, slots=True)
class WindowState:
    window: str
    limit: int
    used: int  # settled usage + tokens currently reserved by calls in flight
    remaining: int  # max(0, limit - used)
    resets_at: datetime  # UTC, start of the next window

    @classmethod
    def of(cls, window: str, limit: int, used: int, resets_at: float) -> WindowState:
        return cls(window, limit, used, max(0, limit - used), to_utc(resets_at))

    def as_doc(self) -> WindowDoc:
        """This window as `input.budget.windows.<window>` (docs/policy-input.md)."""
        return {
            "limit": self.limit,
            "used": self.used,
            "remaining": self.remaining,
            "resets_at": _iso(self.resets_at),
        }


def budget_doc(tenant: str | None, states: Mapping[str, WindowState]) -> BudgetDoc:
    """`input.budget` (docs/policy-input.md) from a snapshot."""
    return {"tenant": tenant, "windows": {name: state.as_doc() for name, state in states.items()}}


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str  # the request id ("req_...")
    tenant: str
    amount: int
    windows: dict[str, int]  # window name -> window start (epoch seconds) the reservation was charged to


@dataclass(frozen=True, slots=True)
class Refusal:
    window: str  # the first window that did not fit (checked from the longest to the shortest)
    state: WindowState
    retry_after: int  # whole seconds until that window resets (>= 1)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One window for `sidecar budget show`: usage is known in every window, a limit maybe not."""

    window: str
    limit: int | None  # None: no limit stored or given for this window
    used: int
    remaining: int | None
    resets_at: datetime

    @classmethod
    def of(cls, window: str, limit: int | None, used: int, resets_at: float) -> UsageRow:
        remaining = None if limit is None else max(0, limit - used)
        return cls(window, limit, used, remaining, to_utc(resets_at))

    def to_json(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "used": self.used,
            "remaining": self.remaining,
            "resets_at": _iso(self.resets_at),
        }


class StoreUnavailable(Exception):
    """The store could not be reached, or it failed: fail closed (503 `store_unavailable`) or open."""


class BudgetStore(Protocol):
    async def snapshot(
        self, tenant: str, limits: dict[str, int], now: float | None = None
    ) -> dict[str, WindowState]:
        """The state of every window with an effective limit (for `input.budget`)."""
        ...

    async def reserve(  # noqa: PLR0917  (the BudgetStore interface)
        self,
        tenant: str,
        limits: dict[str, int],
        amount: int,
        reservation_id: str,
        ttl_seconds: int,
        now: float | None = None,
    ) -> Reservation | Refusal:
        """One atomic check-and-charge of `amount` in every window, or a refusal that charges nothing.

        Idempotent per `reservation_id` while the reservation is held (a retried call returns it again);
        ValueError if the id was already settled or expired."""
        ...

    async def settle(self, reservation: Reservation, actual: int, now: float | None = None) -> int:
        """Replace the reservation by the real usage in the windows it was charged to; tokens refunded."""
        ...

    async def rate_limit(self, key: str, per_minute: int, now: float | None = None) -> int:
        """0 when allowed (and counted), else the seconds to wait (>= 1), not counted."""
        ...

    async def show(
        self, tenant: str, limits: Mapping[str, int] | None = None, now: float | None = None
    ) -> dict[str, UsageRow]:
        """Every window's usage, with the effective limit of the stored limits and `limits`, if any."""
        ...

    async def set_limit_usage(
        self,
        tenant: str,
        *,
        used: Mapping[str, int] | None = None,
        limits: Mapping[str, int | None] | None = None,
        now: float | None = None,
    ) -> dict[str, UsageRow]:
        """Set the current windows' used values and/or store limits (None removes one); then `show`.

        `used` is what `show` reports (in flight included); a reservation in flight later settles by its
        difference (actual - reserved), never below 0."""
        ...

    async def stored_limits(self, tenant: str) -> dict[str, int]:
        """The limits stored for the tenant by `set_limit_usage`."""
        ...

    async def reset(self, tenant: str) -> None:
        """Zero the tenant's usage in every window and drop its reservations; stored limits stay."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""
        ...

    async def close(self) -> None: ...
