"""Redis budget store: one truth for every sidecar replica (`SIDECAR_REDIS_URL`).

Every check-and-reserve, settle, snapshot/show/set and rate-limit check is ONE Lua script (EVALSHA), so it
is atomic across replicas. The scripts read the clock with Redis `TIME` unless a `now` is passed (tests pin
it), so replicas with skewed clocks agree on window boundaries and expiries. Needs Redis >= 6 (KEEPTTL;
script effects replication). The scripts keep their Redis calls few (about 10 for a reserve, 8 for a
settle): on Redis 7 each call inside a script costs a few microseconds.

Key layout, with P = key_prefix and T = tenant (the `{T}` hash tag keeps a tenant's keys in one slot):
- `P bud:{T}:w:<window>:<start>` integer: tokens used in that window, settled + held by reservations in
  flight; expires EXPIRE_MARGIN seconds after the window ends.
- `P bud:{T}:exp` sorted set of the held reservations, score = when they expire, member =
  "<amount> <minute start> <hour start> <day start> <month start> <id>": everything needed to release one,
  even after its record is gone. Every budget script first releases the members whose time has come.
  Expires after the current month window (+ margin).
- `P bud:{T}:r:<id>` "<state> <amount> <4 window starts>", state h (reserved), x (expired unsettled) or s
  (settled late); expires ttl + RECORD_GRACE seconds after the reservation. It makes reserve idempotent per id
  and lets a late settle of an expired reservation record its usage once. A held reservation is settled by
  removing its member from `exp` (the record is left as it is).
- `P bud:{T}:lim:<window>` integer: the limit stored by `sidecar budget set`; no expiry.
- `P rl:{key}` sorted set: the rate limit's sliding-window log (score = request time); expires after 61 s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import reduce
from typing import Any, TypeVar

from sidecar.budget import store
from sidecar.budget.store import WINDOWS, Refusal, Reservation, UsageRow, WindowState
from sidecar.redis_conn import bounded, connect

_CLOCK = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# What every budget script shares: calendar windows in UTC (after Hinnant's civil_from_days),
# key names, and the release of expired reservations. KEYS[1] is always '<base>exp'. Numbers go to
# redis.call as they are (Redis formats them with %.17g); string building is kept to a minimum, as each new
# Lua string costs a fraction of a microsecond.
_BUDGET = (
    _CLOCK
    + """
local WINDOWS, SPAN = {'minute', 'hour', 'day', 'month'}, {60, 3600, 86400}
local MARGIN, GRACE = @MARGIN@, @GRACE@
local floor = math.floor
local function month_start(t)
  local days = floor(t / 86400)
  local doe = (days + 719468) % 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  return (days - doy + floor((153 * floor((5 * doy + 2) / 153) + 2) / 5)) * 86400
end
local function wstart(i, t)
  if i < 4 then return floor(t / SPAN[i]) * SPAN[i] end
  return month_start(t)
end
local function wend(i, start)
  if i < 4 then return start + SPAN[i] end
  return month_start(start + 32 * 86400)
end
local base = string.sub(KEYS[1], 1, -4)
local function wkey(i, start) return string.format('%sw:%s:%d', base, WINDOWS[i], start) end
local function life(i, start) return math.ceil(wend(i, start) - now) + MARGIN end
local function four(text) return string.match(text, '^(%S+) (%S+) (%S+) (%S+)$') end
local function stricter(a, b)
  if a and b then return math.min(a, b) end
  return a or b
end
local function purge()
  local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  if #members == 0 then return end
  for _, m in ipairs(members) do
    local a, s1, s2, s3, s4, id = string.match(m, '^(%d+) (%d+) (%d+) (%d+) (%d+) (.*)$')
    local keys = {wkey(1, s1), wkey(2, s2), wkey(3, s3), wkey(4, s4)}
    local vals = redis.call('MGET', unpack(keys))
    for i = 1, 4 do
      if vals[i] then redis.call('SET', keys[i], math.max(0, vals[i] - a), 'KEEPTTL') end
    end
    local rkey = base .. 'r:' .. id
    local rec = redis.call('GET', rkey)
    if rec and string.sub(rec, 1, 1) == 'h' then
      redis.call('SET', rkey, 'x' .. string.sub(rec, 2), 'KEEPTTL')
    end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
"""
)

# KEYS: exp, record. ARGV: now, amount, id, ttl, "minute hour day month" limits ('-' = none).
# -> {1, amount, minute start} | {2, amount, minute start} (held already) | {-1, state}
#  | {0, i, limit, used, end, retry} (refused). The minute start gives the other windows' starts.
_RESERVE = (
    _BUDGET
    + """
local amt, id, ttl = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local given = {four(ARGV[5])}
purge()
local s = {wstart(1, now), wstart(2, now), wstart(3, now), wstart(4, now)}
local head = string.format('%d %d %d %d %d', amt, s[1], s[2], s[3], s[4])
if not redis.call('SET', KEYS[2], 'h ' .. head, 'NX', 'EX', ttl + GRACE) then
  local rec = redis.call('GET', KEYS[2])
  local st, a, r1 = string.match(rec, '^(%a) (%d+) (%d+) ')
  if st == 'h' and redis.call('ZSCORE', KEYS[1], string.sub(rec, 3) .. ' ' .. id) then
    return {2, tonumber(a), tonumber(r1)}
  end
  return {-1, st}
end
local keys = {wkey(1, s[1]), wkey(2, s[2]), wkey(3, s[3]), wkey(4, s[4])}
local vals = redis.call('MGET', keys[1], keys[2], keys[3], keys[4],
  base .. 'lim:minute', base .. 'lim:hour', base .. 'lim:day', base .. 'lim:month')
for i = 4, 1, -1 do
  local lim, used = stricter(tonumber(given[i]), tonumber(vals[4 + i])), tonumber(vals[i]) or 0
  if lim and used + amt > lim then
    redis.call('DEL', KEYS[2])
    local e = wend(i, s[i])
    return {0, i, lim, used, e, math.max(1, math.ceil(e - now))}
  end
end
for i = 1, 4 do
  redis.call('SET', keys[i], (tonumber(vals[i]) or 0) + amt, 'EX', life(i, s[i]))
end
redis.call('ZADD', KEYS[1], now + ttl, head .. ' ' .. id)
redis.call('EXPIRE', KEYS[1], math.max(ttl + MARGIN, life(4, s[4])))
return {1, amt, s[1]}
"""
)

# KEYS: exp, record. ARGV: now, actual, member (as in exp: "amount starts x4 id").
# -> tokens refunded (0 when there is nothing to settle)
_SETTLE = (
    _BUDGET
    + """
local actual = tonumber(ARGV[2])
local a, s1, s2, s3, s4 = string.match(ARGV[3], '^(%d+) (%d+) (%d+) (%d+) (%d+) ')
local amt, s = tonumber(a), {tonumber(s1), tonumber(s2), tonumber(s3), tonumber(s4)}
purge()
local held = amt ~= nil and redis.call('ZREM', KEYS[1], ARGV[3]) == 1
if not held then
  local rec = redis.call('GET', KEYS[2])
  if not rec or string.sub(rec, 1, 1) ~= 'x' then return 0 end
  local _, ra, r1, r2, r3, r4 = string.match(rec, '^(%a) (%d+) (%d+) (%d+) (%d+) (%d+)$')
  amt, s = tonumber(ra), {tonumber(r1), tonumber(r2), tonumber(r3), tonumber(r4)}
  redis.call('SET', KEYS[2], 's' .. string.sub(rec, 2), 'KEEPTTL')
end
local keys, live = {}, {}
for i = 1, 4 do
  if life(i, s[i]) > 0 then
    keys[#keys + 1] = wkey(i, s[i])
    live[#live + 1] = i
  end
end
if #keys > 0 then
  local vals = redis.call('MGET', unpack(keys))
  local delta = actual - (held and amt or 0)
  for j, k in ipairs(keys) do
    local i = live[j]
    redis.call('SET', k, math.max(0, (tonumber(vals[j]) or 0) + delta), 'EX', life(i, s[i]))
  end
end
return amt - actual
"""
)

# KEYS: exp. ARGV: now, all (0|1), then "minute hour day month" strings: limits ('-' = none), used values to
# set ('-' = keep), stored limits to set ('-' = keep, 'x' = remove).
# -> flat {i, limit or -1, used, end} per window reported (all, or those with a limit).
_STATE = (
    _BUDGET
    + """
local given, set_used, set_lim = {four(ARGV[3])}, {four(ARGV[4])}, {four(ARGV[5])}
purge()
local keys, s = {}, {}
for i, w in ipairs(WINDOWS) do
  s[i] = wstart(i, now)
  keys[i] = wkey(i, s[i])
  keys[4 + i] = base .. 'lim:' .. w
  local l, u = set_lim[i], set_used[i]
  if l == 'x' then redis.call('DEL', keys[4 + i]) elseif l ~= '-' then redis.call('SET', keys[4 + i], l) end
  if u ~= '-' then redis.call('SET', keys[i], u, 'EX', life(i, s[i])) end
end
local vals = redis.call('MGET', unpack(keys))
local out = {}
for i = 1, 4 do
  local lim = stricter(tonumber(given[i]), tonumber(vals[4 + i]))
  if lim or ARGV[2] == '1' then
    local row = {i, lim or -1, tonumber(vals[i]) or 0, wend(i, s[i])}
    for _, v in ipairs(row) do out[#out + 1] = v end
  end
end
return out
"""
)

# KEYS: log. ARGV: now, per_minute. -> 0 (allowed, counted) | seconds to wait (not counted)
_RATE = (
    _CLOCK
    + """
local n, span = tonumber(ARGV[2]), @RATE@
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
local count = redis.call('ZCARD', KEYS[1])
if count < n then
  redis.call('ZADD', KEYS[1], now, string.format('%.6f:%d', now, count))
  redis.call('EXPIRE', KEYS[1], span + 1)
  return 0
end
if n < 1 then return span end
local oldest = redis.call('ZRANGE', KEYS[1], count - n, count - n, 'WITHSCORES')
return math.max(1, math.ceil(tonumber(oldest[2]) + span - now))
"""
)


def _lua(source: str) -> str:
    constants = {"@MARGIN@": store.EXPIRE_MARGIN, "@GRACE@": store.RECORD_GRACE, "@RATE@": store.RATE_WINDOW}
    return reduce(lambda text, item: text.replace(item[0], str(item[1])), constants.items(), source)


def _four(values: Mapping[str, int]) -> str:
    return " ".join(str(values.get(w, "-")) for w in WINDOWS)


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


_T = TypeVar("_T")
# A record's state letter, as a reserve of a used id reports it ('h' with no member in exp: settled).
_STATES = {"h": "settled", "x": "expired", "s": "settled"}


class RedisBudgetStore:
    def __init__(
        self, url: str, key_prefix: str = "sidecar:", *, timeout: float = 0.5, max_connections: int = 64
    ) -> None:
        self.redis = connect(url, max_connections)
        self._slots = self.redis.slots  # shared with the approval store on this client
        self._timeout = timeout
        self._prefix = key_prefix
        self._reserve = self.redis.register_script(_lua(_RESERVE))
        self._settle = self.redis.register_script(_lua(_SETTLE))
        self._state = self.redis.register_script(_lua(_STATE))
        self._rate = self.redis.register_script(_lua(_RATE))

    def _base(self, tenant: str) -> str:
        return f"{self._prefix}bud:{{{tenant}}}:"

    @staticmethod
    def _now(now: float | None) -> str:
        return "" if now is None else f"{now:.6f}"

    async def _call(self, call: Callable[[], Awaitable[_T]], seconds: float | None = None) -> _T:
        return await bounded(call, seconds or self._timeout, self._slots)

    async def _run(self, script: Any, keys: list[str], args: list[str | int]) -> Any:
        return await self._call(lambda: script(keys=keys, args=args))

    async def _rows(
        self,
        tenant: str,
        limits: Mapping[str, int] | None,
        now: float | None,
        *,
        every_window: bool = True,
        used: Mapping[str, int] | None = None,
        set_limits: Mapping[str, int | None] | None = None,
    ) -> list[tuple[str, int | None, int, int]]:
        given, new_used = store.check_limits(limits), store.check_limits(used)
        stored, dropped = store.limit_changes(set_limits)
        args: list[str | int] = [
            self._now(now),
            "1" if every_window else "0",
            _four(given),
            _four(new_used),
            " ".join("x" if w in dropped else str(stored.get(w, "-")) for w in WINDOWS),
        ]
        reply: list[Any] = await self._run(self._state, [self._base(tenant) + "exp"], args)
        rows = [tuple(int(v) for v in reply[at : at + 4]) for at in range(0, len(reply), 4)]
        return [(WINDOWS[i - 1], None if limit < 0 else limit, used_, end) for i, limit, used_, end in rows]

    async def snapshot(
        self, tenant: str, limits: dict[str, int], now: float | None = None
    ) -> dict[str, WindowState]:
        rows = await self._rows(tenant, limits, now, every_window=False)
        return {w: WindowState.of(w, limit, used, end) for w, limit, used, end in rows if limit is not None}

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
        given = store.check_limits(limits)
        base = self._base(tenant)
        args: list[str | int] = [self._now(now), amount, reservation_id, ttl_seconds, _four(given)]
        reply: list[Any] = await self._run(self._reserve, [base + "exp", base + "r:" + reservation_id], args)
        status = int(reply[0])
        if status == -1:
            state = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            raise ValueError(f"reservation {reservation_id!r} was already {_STATES.get(state, state)}")
        if status == 0:
            index, limit, used, end, wait = (int(v) for v in reply[1:6])
            window = WINDOWS[index - 1]
            return Refusal(window, WindowState.of(window, limit, used, end), wait)
        minute = int(reply[2])  # the windows nest: the minute's start gives every window's start
        starts = {w: minute if w == "minute" else store.window_start(w, minute) for w in WINDOWS}
        return Reservation(reservation_id, tenant, int(reply[1]), starts)

    async def settle(self, reservation: Reservation, actual: int, now: float | None = None) -> int:
        if actual < 0:
            raise ValueError("settle needs actual >= 0")
        base = self._base(reservation.tenant)
        starts = " ".join(str(reservation.windows.get(w, -1)) for w in WINDOWS)
        member = f"{reservation.amount} {starts} {reservation.id}"  # as in exp; a forged one matches nothing
        keys = [base + "exp", base + "r:" + reservation.id]
        return int(await self._run(self._settle, keys, [self._now(now), actual, member]))

    async def rate_limit(self, key: str, per_minute: int, now: float | None = None) -> int:
        log = f"{self._prefix}rl:{{{key}}}"
        return int(await self._run(self._rate, [log], [self._now(now), per_minute]))

    async def show(
        self, tenant: str, limits: Mapping[str, int] | None = None, now: float | None = None
    ) -> dict[str, UsageRow]:
        rows = await self._rows(tenant, limits, now)
        return {w: UsageRow.of(w, limit, used, end) for w, limit, used, end in rows}

    async def set_limit_usage(
        self,
        tenant: str,
        *,
        used: Mapping[str, int] | None = None,
        limits: Mapping[str, int | None] | None = None,
        now: float | None = None,
    ) -> dict[str, UsageRow]:
        rows = await self._rows(tenant, None, now, used=used, set_limits=limits)
        return {w: UsageRow.of(w, limit, used_, end) for w, limit, used_, end in rows}

    async def stored_limits(self, tenant: str) -> dict[str, int]:
        base = self._base(tenant)
        values = await self._call(lambda: self.redis.mget([base + "lim:" + w for w in WINDOWS]))
        return {w: int(v) for w, v in zip(WINDOWS, values, strict=True) if v is not None}

    async def reset(self, tenant: str) -> None:
        """Unlink every key of the tenant but its stored limits (SCAN: not atomic with concurrent calls)."""
        base = self._base(tenant)
        keep = (base + "lim:").encode()

        async def unlink_all() -> None:
            batch: list[bytes] = []
            async for key in self.redis.scan_iter(match=_glob_escape(base) + "*", count=500):
                if not key.startswith(keep):
                    batch.append(key)
                if len(batch) >= 500:
                    await self.redis.unlink(*batch)
                    batch.clear()
            if batch:
                await self.redis.unlink(*batch)

        await self._call(unlink_all, max(10.0, 20 * self._timeout))

    async def ping(self) -> None:
        await self._call(self.redis.ping)

    async def close(self) -> None:
        await self.redis.aclose()
