"""Who may approve: a second policy query, about the approver, at SIDECAR_APPROVER_DECISION_PATH.

The input names the approver (the admin caller's verified identity), the action and the approval (ids,
tenant, requester, operation and the `approvers` the original decision named; never request content):

    {"version": 1, "action": "approve" | "deny",
     "approver": {"sub", "tenant", "groups", "issuer"},
     "approval": {"id", "tenant", "sub", "method", "path", "operation", "model", "approvers", "status", ...},
     "time": {"now": "..."}}

and the answer is `{"allow": bool, "reasons": [...]}`. Undefined or malformed is a refusal, like any
decision; an engine that cannot answer is a 503.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sidecar.approvals import model
from sidecar.approvals.model import Approval, ApprovalError, Status
from sidecar.approvals.store import ApprovalStore
from sidecar.errors import SidecarError, no_retry
from sidecar.pipeline.context import Subject
from sidecar.policy.engine import EngineError, PolicyEngine


class ApproverCheck:
    def __init__(self, engine: PolicyEngine, path: str) -> None:
        self._engine = engine
        self._path = path

    async def refusals(self, approver: Subject, action: str, approval: Approval) -> list[str]:
        """Why the approver may not act ([] when allowed)."""
        now = time.time()
        doc: dict[str, Any] = {
            "version": 1,
            "action": action,
            "approver": {
                "sub": approver.sub,
                "tenant": approver.tenant,
                "groups": list(approver.groups),
                "issuer": approver.issuer,
            },
            "approval": approval.public(now),
            "time": {"now": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
        }
        try:
            answer = await self._engine.query(self._path, doc)
        except EngineError as exc:
            raise SidecarError(
                503, "policy_unavailable", f"The approver policy cannot answer: {exc}"
            ) from None
        if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
            return [f"the approver policy at {self._path} gave no decision"]
        if answer["allow"]:
            return []
        reasons = answer.get("reasons")
        texts = [str(r) for r in reasons] if isinstance(reasons, list) else []
        return texts or ["the approver policy refused"]


_HTTP = {"approval_not_found": 404, "approval_conflict": 409, "approval_expired": 409}


def approval_error(exc: ApprovalError) -> SidecarError:
    return no_retry(_HTTP.get(exc.code, 409), exc.code, str(exc))


async def act(
    store: ApprovalStore,
    check: ApproverCheck,
    approval_id: str,
    verdict: Status,
    *,
    approver: Subject,
    reason: str | None = None,
) -> Approval:
    """Approve or deny, when the policy allows this approver to; raises SidecarError otherwise."""
    approval = await store.get(approval_id)
    if approval is None:
        raise approval_error(ApprovalError("approval_not_found", f"No approval {approval_id}."))
    action = "approve" if verdict == "approved" else "deny"
    refusals = await check.refusals(approver, action, approval)
    if refusals:
        raise no_retry(
            403,
            "policy_violation",
            f"{approver.sub or 'this caller'} may not {action} {approval_id}: " + "; ".join(refusals),
        )

    def apply(draft: Approval, now: float) -> tuple[Approval, bool]:
        model.decide(draft, verdict, by=approver.sub or "", reason=reason, now=now, ttl=store.ttl)
        return draft, False

    try:
        return await store.update(approval_id, apply)
    except ApprovalError as exc:
        raise approval_error(exc) from None
