"""Span attributes: GenAI semantic conventions plus the sidecar's own, built from a finished `Call`.

Only names, counts, codes and ids: never prompt text, PII values, the provider key or the caller's
credential (the tenant is a policy label, PII appears as counts per entity type).
"""

from __future__ import annotations

from typing import Any

from sidecar.pipeline.context import Call

# gen_ai.operation.name for the operations that are model calls.
GENAI_OPERATIONS = {
    "responses.create": "chat",
    "chat.completions.create": "chat",
    "completions.create": "text_completion",
    "embeddings.create": "embeddings",
}


def genai(call: Call) -> dict[str, Any]:
    """What the GenAI conventions say about the request (both provider attributes: `gen_ai.system` is
    the older name many back ends still index)."""
    attrs: dict[str, Any] = {"gen_ai.provider.name": "openai", "gen_ai.system": "openai"}
    if operation := GENAI_OPERATIONS.get(call.operation):
        attrs["gen_ai.operation.name"] = operation
    if call.model:
        attrs["gen_ai.request.model"] = call.model
    return attrs


def request(call: Call, operation: str, decision: str, code: str, status: int) -> dict[str, Any]:
    """The SERVER span's attributes once the call is over."""
    attrs: dict[str, Any] = {
        **genai(call),
        "http.response.status_code": status,
        "sidecar.operation": operation,
        "sidecar.decision": decision,
        "sidecar.outcome": call.outcome,
        "sidecar.stream": call.stream,
    }
    if call.subject.tenant:
        attrs["sidecar.tenant"] = call.subject.tenant
    if code:
        attrs["sidecar.code"] = attrs["error.type"] = code
    if call.decision is not None:
        attrs["sidecar.policy.allow"] = call.decision.allow
        attrs["sidecar.policy.require_approval"] = call.decision.require_approval
    if call.usage is not None:
        attrs["gen_ai.usage.input_tokens"] = call.usage.input_tokens
        attrs["gen_ai.usage.output_tokens"] = call.usage.output_tokens
    if call.reserved_tokens:
        attrs["sidecar.budget.reserved_tokens"] = call.reserved_tokens
        attrs["sidecar.budget.refunded_tokens"] = call.refunded_tokens
    if call.fail_open:
        attrs["sidecar.fail_open"] = list(call.fail_open)
    for entity, count in call.pii_found.items():
        attrs[f"sidecar.pii.found.{entity}"] = count
    for entity, count in call.pii_masked.items():
        attrs[f"sidecar.pii.masked.{entity}"] = count
    return attrs
