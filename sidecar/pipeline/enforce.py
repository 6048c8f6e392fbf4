"""Stage 5: act on the decision.

Order matters and is fixed here: deny → request masking → output cap (pure rewrites of the body) →
approval → rate limit and budget reservation (the gates with side effects, last, so that a call refused
by an earlier step has reserved or consumed nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from sidecar.documents import Decision
from sidecar.errors import no_retry
from sidecar.pipeline.context import Call
from sidecar.pipeline.inspect import Payload, Summary
from sidecar.pipeline.settle import request_stream_usage

if TYPE_CHECKING:
    from sidecar.approvals.spool import SpooledBody

# Where each operation takes its output limit when the caller set none.
_CAP_FIELD = {
    "responses.create": "max_output_tokens",
    "chat.completions.create": "max_completion_tokens",
    "completions.create": "max_tokens",
}


@dataclass(slots=True)
class Plan:
    """What the forward stage sends, and what the relay must undo or settle afterwards."""

    body: bytes | None  # None: stream the caller's body through untouched
    doc: dict[str, Any] | None
    restore: dict[str, str] | None = None  # placeholder -> original value, for this request only
    reservation: object | None = None
    hide_usage_chunk: bool = False  # the sidecar asked for Chat stream usage; the caller did not
    # A gated upload read in full (its approval binds its bytes): sent instead of the caller's stream.
    upload: SpooledBody | None = None


class ApprovalGate(Protocol):
    async def check(self, call: Call, decision: Decision, payload: Payload) -> None:
        """Return when the call may pass (claiming its approval); raise a 403 while none is approved."""
        ...

    async def finish(self, call: Call, succeeded: bool) -> None:
        """Consume the claimed approval on success; release it for a retry on failure."""
        ...


class BudgetGate(Protocol):
    async def admit(self, call: Call, decision: Decision, summary: Summary) -> object | None:
        """Apply rate limits and reserve tokens; raise 429 when the call does not fit."""
        ...


class RequestMasker(Protocol):
    async def mask(self, call: Call, decision: Decision, plan: Plan, payload: Payload) -> None:
        """Rewrite `plan.doc` per `decision.mask.request` using `payload.pii`, filling `plan.restore`."""
        ...


def deny_message(decision: Decision) -> str:
    reasons = "; ".join(decision.reasons) if decision.reasons else "no reason given"
    return f"Denied by policy: {reasons}"


def apply_output_cap(doc: dict[str, Any], summary: Summary, operation: str, cap: int | None) -> bool:
    """Make the upstream output limit min(requested, cap). Returns whether the body changed."""
    if cap is None:
        return False
    field = summary.output_limit_field or _CAP_FIELD.get(operation)
    if field is None:
        return False
    requested = summary.max_output_tokens
    if requested is not None and requested <= cap:
        return False
    doc[field] = cap
    return True


class Enforcer:
    def __init__(
        self,
        approvals: ApprovalGate,
        budget: BudgetGate | None = None,
        masker: RequestMasker | None = None,
    ) -> None:
        self._approvals = approvals
        self._budget = budget
        self._masker = masker

    async def enforce(self, call: Call, decision: Decision, payload: Payload, summary: Summary) -> Plan:
        if not decision.allow:
            raise no_retry(403, decision.code or "policy_violation", deny_message(decision))
        plan = Plan(
            body=payload.raw if payload.kind == "json" else None,
            doc=payload.doc,
            upload=call.approval.upload if call.approval is not None else None,
        )
        if plan.doc is not None:
            changed = False
            if self._masker is not None and decision.mask.request.entities:
                await self._masker.mask(call, decision, plan, payload)
                changed = True
            changed = (
                apply_output_cap(plan.doc, summary, call.operation, decision.max_output_tokens) or changed
            )
            if call.operation == "chat.completions.create" and summary.stream:
                plan.hide_usage_chunk = request_stream_usage(plan.doc)
                changed = changed or plan.hide_usage_chunk
            if changed:
                plan.body = orjson.dumps(plan.doc)
        if call.approval is not None:  # the first decision asked for an approval (see Proxy)
            await self._approvals.check(call, decision, payload)
        if self._budget is not None:
            try:
                plan.reservation = await self._budget.admit(call, decision, summary)
            except BaseException:
                await self._approvals.finish(call, succeeded=False)  # a refused call keeps no approval
                raise
        return plan
