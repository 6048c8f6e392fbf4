"""Stage 4: build the policy input (docs/policy-input.md), ask the engine, and validate its answer
(docs/decision.md).

Fail closed: an engine that cannot answer is a 503 `policy_unavailable`, and an undefined or malformed
decision is a deny. With `SIDECAR_FAIL_MODE=open`, an unreachable engine lets the call through with an
allow-only decision, and the audit says so.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import orjson
from aiohttp import web

from sidecar.config import Settings
from sidecar.documents import (
    ApprovalDoc,
    BudgetDoc,
    Decision,
    MalformedDecision,
    PolicyInput,
    SubjectDoc,
)
from sidecar.errors import invalid_request, policy_unavailable
from sidecar.pipeline.context import Call, Subject
from sidecar.pipeline.inspect import Payload, Summary, estimate_input_tokens
from sidecar.policy.engine import EngineError, PolicyEngine

log = logging.getLogger(__name__)

NO_APPROVAL: ApprovalDoc = {"id": None, "status": "none"}


def subject_doc(subject: Subject) -> SubjectDoc:
    return {
        "authenticated": subject.authenticated,
        "sub": subject.sub,
        "tenant": subject.tenant,
        "groups": list(subject.groups),
        "issuer": subject.issuer,
        "user": subject.user,
    }


def build_input(
    call: Call,
    request: web.Request,
    payload: Payload,
    summary: Summary,
    settings: Settings,
    *,
    budget: BudgetDoc | None = None,
    approval: ApprovalDoc = NO_APPROVAL,
) -> PolicyInput:
    headers = request.headers
    return {
        "version": 1,
        "request": {
            "id": call.id,
            "method": call.method,
            "path": call.path,
            "query": call.query,  # the upstream acts on it (`?stream=true`, `include[]`, list filters)
            "operation": call.operation,
            "model": summary.model,
            "stream": summary.stream,
            "max_output_tokens": summary.max_output_tokens,
            "tools": summary.tools,
            "body_bytes": max(payload.size, 0),
            "estimated_input_tokens": estimate_input_tokens(payload, summary.model),
            "headers": {name: headers[name] for name in settings.input_headers if name in headers},
        },
        "subject": subject_doc(call.subject),
        "pii": {"request": dict(call.pii_found)},
        "budget": budget or {"tenant": call.subject.tenant, "windows": {}},
        "approval": approval,
        "time": {"now": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
    }


class Decider:
    def __init__(self, engine: PolicyEngine, fail_open: bool) -> None:
        self.engine = engine
        self._fail_open = fail_open

    async def decide(self, call: Call, doc: PolicyInput) -> Decision:
        started = time.perf_counter()
        try:
            # The engine only ever sees a document that serialises as JSON: a lone surrogate (from a
            # header, a token claim, ...) crashed the embedded engine. orjson refuses it in under 1 µs.
            orjson.dumps(doc)
        except TypeError as exc:
            raise invalid_request(f"The request carries a value that is not valid UTF-8 ({exc}).") from None
        try:
            raw = await self.engine.evaluate(doc)
        except EngineError as exc:
            log.error("policy engine failed", extra={"request_id": call.id, "error": str(exc)})
            if not self._fail_open:
                raise policy_unavailable(f"the {self.engine.name} engine did not answer") from None
            call.fail_open.append("policy")
            return Decision(
                allow=True, reasons=("policy engine unavailable; allowed by SIDECAR_FAIL_MODE=open",)
            )
        finally:
            call.timed("policy", started)
        try:
            return Decision.parse(raw)
        except MalformedDecision as exc:
            log.warning("policy decision rejected", extra={"request_id": call.id, "error": str(exc)})
            return Decision.deny(f"No valid policy decision ({exc}); denied by default.")
