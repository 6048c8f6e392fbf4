"""Budgets and rate limits in the request path: `input.budget` for the policy, the reservation before
forwarding (enforce), and settlement with the real usage afterwards (settle).

Nothing is forwarded without a reservation when the decision sets limits: the reservation is the input
tokens (counted with the model's tokenizer) plus the effective output cap, checked and charged in one
atomic store operation. Settlement replaces it with the real usage (`usage`, or the streamed text counted
when no usage arrived) and refunds the rest; a failed call refunds everything. A settle that never happens
expires with the reservation's TTL.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from sidecar.budget.store import BudgetStore, Refusal, Reservation, StoreUnavailable, budget_doc
from sidecar.config import Settings
from sidecar.documents import BudgetDoc, Decision
from sidecar.errors import SidecarError, no_retry
from sidecar.pipeline.context import Call, Usage
from sidecar.pipeline.inspect import Summary

log = logging.getLogger(__name__)

# The output a reservation counts when neither the request, nor the decision's cap, nor the decision's
# per-model `budget.default_output_tokens` (from the bundle's data) says: generating operations only.
_FALLBACK_OUTPUT = {"responses.create": 4096, "chat.completions.create": 4096, "completions.create": 4096}


def store_unavailable() -> SidecarError:
    return SidecarError(503, "store_unavailable", "The budget store is unavailable.")


class Budgets:
    def __init__(
        self, store: BudgetStore, settings: Settings, count_tokens: Callable[[str, str | None], int]
    ) -> None:
        self.store = store
        self._settings = settings
        self._count = count_tokens
        self._limits: dict[str, dict[str, int]] = {}  # the last decision's limits per tenant
        # Running totals per (tenant, model, "reserved" | "used" | "refunded"): the hook the metrics
        # exporter reads (tokens reserved, used and refunded per tenant and model).
        self.tokens: Counter[tuple[str, str, str]] = Counter()
        # Calls this gate refused, per (tenant, code): budget_exceeded, rate_limited, store_unavailable.
        self.rejections: Counter[tuple[str, str]] = Counter()

    def _guard(self, call: Call, what: str) -> None:
        """Pass over a store failure when failing open (recorded in the audit); raise 503 otherwise."""
        if not self._settings.fail_open:
            self.rejections[(call.subject.tenant or "", "store_unavailable")] += 1
            raise store_unavailable()
        if "store" not in call.fail_open:
            call.fail_open.append("store")
        log.warning(
            "budget store unavailable; allowed by fail-open", extra={"request_id": call.id, "step": what}
        )

    async def input_doc(self, call: Call) -> BudgetDoc:
        tenant = call.subject.tenant
        if not tenant:
            return {"tenant": tenant, "windows": {}}
        try:
            states = await self.store.snapshot(tenant, self._limits.get(tenant, {}))
        except StoreUnavailable:
            self._guard(call, "snapshot")
            return {"tenant": tenant, "windows": {}}
        return budget_doc(tenant, states)

    def amount(self, call: Call, decision: Decision, summary: Summary, input_tokens: int) -> int:
        caps = [c for c in (summary.max_output_tokens, decision.max_output_tokens) if c is not None]
        if caps:
            output = min(caps)
        elif call.operation in _FALLBACK_OUTPUT:
            output = decision.default_output_tokens or _FALLBACK_OUTPUT[call.operation]
        else:
            output = 0
        return input_tokens + output

    async def admit(self, call: Call, decision: Decision, summary: Summary) -> Reservation | None:
        tenant = call.subject.tenant
        if not tenant:
            return None
        started = time.perf_counter()
        try:
            if decision.requests_per_minute:
                key = tenant if decision.rate_limit_per == "tenant" else f"{tenant}/{call.subject.sub}"
                wait = await self.store.rate_limit(key, decision.requests_per_minute)
                if wait:
                    self.rejections[(tenant, "rate_limited")] += 1
                    raise SidecarError(
                        429,
                        "rate_limited",
                        f"Rate limit of {decision.requests_per_minute} requests per minute reached "
                        f"for {'tenant' if decision.rate_limit_per == 'tenant' else 'caller'} '{key}'; "
                        f"retry in {wait} s.",
                        {"retry-after": str(wait)},
                    )
            if not decision.budget_limits:
                return None
            self._limits[tenant] = dict(decision.budget_limits)
            amount = self.amount(call, decision, summary, call.estimated_input_tokens)
            result = await self.store.reserve(
                tenant, decision.budget_limits, amount, call.id, self._settings.budget_reservation_ttl
            )
        except StoreUnavailable:
            self._guard(call, "reserve")
            return None
        finally:
            call.timed("budget", started)
        if isinstance(result, Refusal):
            self.rejections[(tenant, "budget_exceeded")] += 1
            state = result.state
            raise no_retry(
                429,
                "budget_exceeded",
                f"Token budget exhausted for tenant '{tenant}': the {result.window} window has "
                f"{state.remaining} of {state.limit} tokens left and this call needs up to {amount}. "
                f"It resets at {state.resets_at.strftime('%Y-%m-%dT%H:%M:%SZ')}.",
                **{"retry-after": str(result.retry_after)},
            )
        call.reserved_tokens = result.amount
        self.tokens[(tenant, call.model or "", "reserved")] += result.amount
        call.streamed = []  # count the streamed text, for settling a call whose usage never arrives
        return result

    def actual(self, call: Call, usage: Usage | None) -> int:
        """What the call really used: the upstream's usage; else, for a stream the upstream accepted (200)
        that ended without usage (the caller left, or the stream broke off), the prompt as estimated plus
        the streamed text counted; else nothing (a failed call, or one that generates no tokens)."""
        if usage is not None:
            return usage.total
        if call.stream and call.upstream_status == 200:
            return call.estimated_input_tokens + self._count("".join(call.streamed or ()), call.model)
        return 0

    async def settle(self, call: Call, reservation: object | None, usage: Usage | None, ok: bool) -> None:
        if not isinstance(reservation, Reservation):
            return
        actual = self.actual(call, usage if ok or usage is not None else None)
        started = time.perf_counter()
        try:
            call.refunded_tokens = await self.store.settle(reservation, actual)
            key = (reservation.tenant, call.model or "")
            self.tokens[(*key, "used")] += actual
            self.tokens[(*key, "refunded")] += call.refunded_tokens
        except StoreUnavailable:
            # The reservation expires with its TTL instead; the audit shows the settle did not happen.
            log.error("budget settle failed; the reservation will expire", extra={"request_id": call.id})
            call.fail_open.append("settle")
        finally:
            call.timings_ms["budget"] = call.timings_ms.get("budget", 0.0) + round(
                (time.perf_counter() - started) * 1000, 3
            )
